package settings

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Need names a part of the settings a command uses; Validate checks only
// the parts asked for, so `atrest validate` needs no Vault.
type Need int

// The parts of the settings.
const (
	NeedGit Need = iota
	NeedVault
	NeedEtcd
	NeedKubernetes
	NeedSSH
	NeedSnapshots
	NeedListen
	// NeedCluster is cluster.name: every command that opens the keyring.
	NeedCluster
)

// Validate checks the settings the command needs, and the log settings,
// and returns every problem at once. Each names the setting, where its value
// came from, and how to set it. Files named by settings must exist.
func (s *Settings) Validate(needs ...Need) error {
	v := &validator{s: s}
	v.oneOf("log.format", s.Log.Format, "text", "json")
	v.oneOf("log.level", s.Log.Level, "debug", "info", "warn", "error")
	v.policy()
	for _, n := range needs {
		switch n {
		case NeedGit:
			v.git()
		case NeedVault:
			v.vault()
		case NeedEtcd:
			v.etcd()
		case NeedKubernetes:
			v.kubernetes()
		case NeedSSH:
			v.ssh()
		case NeedSnapshots:
			v.required("snapshots.dir", s.Snapshots.Dir, "where etcd snapshots are kept")
		case NeedListen:
			v.listen()
		case NeedCluster:
			v.cluster()
		}
	}
	if len(v.problems) == 0 {
		return nil
	}
	return errors.New("invalid settings:\n  " + strings.Join(v.problems, "\n  "))
}

type validator struct {
	s        *Settings
	problems []string
}

func (v *validator) add(key, format string, args ...any) {
	src := v.s.Source(key)
	where := fmt.Sprintf("set it with --%s, %s or %s in the settings file", FlagName(key), EnvName(key), key)
	if src != "default" {
		where = "from " + src
	}
	v.problems = append(v.problems, fmt.Sprintf("%s: %s (%s)", key, fmt.Sprintf(format, args...), where))
}

func (v *validator) required(key, val, why string) bool {
	if strings.TrimSpace(val) == "" {
		v.add(key, "required: %s", why)
		return false
	}
	return true
}

func (v *validator) oneOf(key, val string, allowed ...string) {
	if !slices.Contains(allowed, val) {
		v.add(key, "%q is not one of %s", val, strings.Join(allowed, ", "))
	}
}

// file checks that an optional file setting, when set, names a readable
// regular file.
func (v *validator) file(key, name string) {
	if name == "" {
		return
	}
	st, err := os.Stat(name)
	switch {
	case err != nil:
		v.add(key, "cannot use file %s: %v", name, errors.Unwrap(err))
	case st.IsDir():
		v.add(key, "%s is a directory, not a file", name)
	}
}

// vaultSegment is one segment of a Vault path, as the keystore accepts it.
var vaultSegment = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func (v *validator) cluster() {
	name := v.s.Cluster.Name
	if !v.required("cluster.name", name, `the cluster atrest manages, as its cluster.yml's cluster_name names it ("local" when it has none); it names the cluster's keyring in Vault`) {
		return
	}
	if !vaultSegment.MatchString(name) {
		v.add("cluster.name", "%q must be letters, digits, '.', '_' or '-', starting with a letter or digit: it is one segment of a Vault path", name)
	}
}

func (v *validator) git() {
	g := v.s.Git
	if !v.required("git.url", g.URL, "the repository that holds cluster.yml") {
		return
	}
	v.required("git.ref", g.Ref, "the branch, tag or commit to follow")
	if path.IsAbs(g.Path) || slices.Contains(strings.Split(path.Clean(g.Path), "/"), "..") {
		v.add("git.path", "%q must be a folder inside the repository (relative, without ..)", g.Path)
	}
	if g.Interval <= 0 {
		v.add("git.interval", "must be positive, not %s", g.Interval)
	}
	if g.Timeout <= 0 {
		v.add("git.timeout", "must be positive, not %s", g.Timeout)
	}
	for _, k := range []struct{ key, val string }{
		{"git.sshKeyFile", g.SSHKeyFile}, {"git.knownHostsFile", g.KnownHostsFile},
		{"git.passwordFile", g.PasswordFile}, {"git.bearerTokenFile", g.BearerTokenFile}, {"git.caFile", g.CAFile},
		{"git.allowedSignersFile", g.AllowedSignersFile}, {"git.openPGPKeyringFile", g.OpenPGPKeyringFile},
	} {
		v.file(k.key, k.val)
	}
	if g.RequireSignatures && g.AllowedSignersFile == "" && g.OpenPGPKeyringFile == "" {
		v.add("git.requireSignatures", "set git.allowedSignersFile or git.openPGPKeyringFile: with neither, no commit is verified, and signatures are required")
	}
	if a := g.AllowRevision; a != "" && (len(a) != 40 || strings.Trim(strings.ToLower(a), "0123456789abcdef") != "") {
		v.add("git.allowRevision", "%q must be the full 40-hex hash of one commit: a rollback is allowed for a named commit, never for a branch or a prefix", a)
	}
	switch GitTransport(g.URL) {
	case "ssh":
		if g.KnownHostsFile == "" && !g.InsecureSkipHostKeyVerification {
			v.add("git.knownHostsFile", "required for Git over SSH: the Git server's host key must be verified")
		}
	case "https", "http":
		if g.PasswordFile != "" && g.Username == "" {
			v.add("git.username", "required with git.passwordFile")
		}
		if g.PasswordFile != "" && g.BearerTokenFile != "" {
			v.add("git.bearerTokenFile", "give either a password or a bearer token, not both")
		}
	case "file":
	default:
		v.add("git.url", "%q is not a Git URL: use ssh://, git@host:path, https:// or a local path", g.URL)
	}
}

// GitTransport classifies a Git URL: "ssh", "https", "http", "file", or ""
// when it is none of them.
func GitTransport(raw string) string {
	if u, err := url.Parse(raw); err == nil && strings.Contains(raw, "://") {
		switch u.Scheme {
		case "ssh", "git+ssh":
			return "ssh"
		case "https", "http", "file":
			return u.Scheme
		}
		return ""
	}
	// scp-like: [user@]host:path, with no slash before the colon.
	if i := strings.Index(raw, ":"); i > 0 && !strings.Contains(raw[:i], "/") {
		return "ssh"
	}
	if strings.HasPrefix(raw, "/") || strings.HasPrefix(raw, ".") {
		return "file"
	}
	return ""
}

// allowHint names a DANGEROUS setting in every form it can be given.
func allowHint(key string) string {
	return fmt.Sprintf("or, DANGEROUS, allow it with %s (--%s, %s)", key, FlagName(key), EnvName(key))
}

// VaultAddress is the address atrest's Vault client uses and where it comes
// from: vault.address, else VAULT_AGENT_ADDR, else VAULT_ADDR (the keystore
// builds its client in that order). from is "vault.address" or the name of
// the environment variable; both are empty when none is set.
func (s *Settings) VaultAddress() (addr, from string) {
	if s.Vault.Address != "" {
		return s.Vault.Address, "vault.address"
	}
	for _, env := range []string{"VAULT_AGENT_ADDR", "VAULT_ADDR"} {
		if a := os.Getenv(env); a != "" {
			return a, env
		}
	}
	return "", ""
}

func (v *validator) vault() {
	vs := v.s.Vault
	addr, from := v.s.VaultAddress()
	switch {
	case addr == "":
		v.add("vault.address", "required (or VAULT_ADDR): where Vault listens")
	case from == "vault.address":
		if u, err := url.Parse(vs.Address); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			v.add("vault.address", "%q is not an http(s):// URL", vs.Address)
		} else if u.Scheme == "http" && !vs.InsecureAllowHTTP {
			v.add("vault.address", "%q is plain http: the Vault token and every key would cross the network unencrypted; use an https:// address (with vault.caFile for a private CA) %s", vs.Address, allowHint("vault.insecureAllowHTTP"))
		}
	default:
		if u, err := url.Parse(addr); err == nil && u.Scheme == "http" && !vs.InsecureAllowHTTP {
			v.problems = append(v.problems, fmt.Sprintf("%s: %q (environment variable) is plain http: the Vault token and every key would cross the network unencrypted; set an https:// address there or in vault.address (with vault.caFile for a private CA) %s", from, addr, allowHint("vault.insecureAllowHTTP")))
		}
	}
	if env := os.Getenv("VAULT_SKIP_VERIFY"); env != "" {
		skip, err := strconv.ParseBool(env)
		switch {
		case err != nil:
			v.problems = append(v.problems, fmt.Sprintf("VAULT_SKIP_VERIFY: %q (environment variable) is not true or false", env))
		case skip && !vs.InsecureSkipTLSVerify:
			v.problems = append(v.problems, fmt.Sprintf("VAULT_SKIP_VERIFY: %q (environment variable) turns off the verification of Vault's certificate, so anyone on the path could pose as Vault and be handed the token and every key; unset it and give Vault's CA with vault.caFile (or VAULT_CACERT) %s", env, allowHint("vault.insecureSkipTLSVerify")))
		}
	}
	for _, k := range []struct{ key, val string }{
		{"vault.caFile", vs.CAFile}, {"vault.clientCertFile", vs.ClientCertFile}, {"vault.clientKeyFile", vs.ClientKeyFile},
		{"vault.tokenFile", vs.TokenFile}, {"vault.approleSecretIDFile", vs.AppRoleSecretIDFile},
	} {
		v.file(k.key, k.val)
	}
	if (vs.ClientCertFile == "") != (vs.ClientKeyFile == "") {
		v.add("vault.clientKeyFile", "vault.clientCertFile and vault.clientKeyFile go together")
	}
	switch vs.AuthMethod {
	case AuthToken:
		if vs.TokenFile == "" && os.Getenv("VAULT_TOKEN") == "" {
			v.add("vault.tokenFile", "required for authMethod token (or VAULT_TOKEN)")
		}
	case AuthAppRole:
		v.required("vault.approleRoleID", vs.AppRoleID, "the AppRole role id")
		v.required("vault.approleSecretIDFile", vs.AppRoleSecretIDFile, "the file with the AppRole secret id")
		v.required("vault.approleMount", vs.AppRoleMount, "the AppRole mount path")
	case AuthKubernetes:
		v.required("vault.kubernetesRole", vs.KubernetesRole, "the Vault role bound to atrest's service account")
		v.required("vault.kubernetesMount", vs.KubernetesMount, "the Kubernetes auth mount path")
		v.required("vault.kubernetesTokenFile", vs.KubernetesTokenFile, "the service-account token file")
	default:
		v.add("vault.authMethod", "%q is not one of token, approle, kubernetes", vs.AuthMethod)
	}
	for _, k := range []struct{ key, val string }{{"vault.kvMount", vs.KVMount}, {"vault.prefix", vs.Prefix}} {
		if v.required(k.key, k.val, "a Vault path") && (strings.HasPrefix(k.val, "/") || strings.HasSuffix(k.val, "/") || strings.Contains(k.val, "..")) {
			v.add(k.key, "%q must be a path without leading or trailing slash or ..", k.val)
		}
	}
	v.kms()
}

// KMSVaultAddress is Vault's address as the KMS plugins reach it.
func (s *Settings) KMSVaultAddress() string {
	if s.KMS.VaultAddress != "" {
		return s.KMS.VaultAddress
	}
	addr, _ := s.VaultAddress()
	return addr
}

// TransitKey is the vault-transit provider's Transit key name.
func (s *Settings) TransitKey() string {
	if s.KMS.TransitKey != "" {
		return s.KMS.TransitKey
	}
	return "atrest-" + s.Cluster.Name
}

// PluginRole is the AppRole role the KMS plugins log in with.
func (s *Settings) PluginRole() string {
	if s.KMS.AppRoleRole != "" {
		return s.KMS.AppRoleRole
	}
	return "atrest-kms-" + s.Cluster.Name
}

// kms checks the vault-transit provider's settings, when it is on.
func (v *validator) kms() {
	k := v.s.KMS
	if k.Image == "" {
		return
	}
	for _, p := range []struct{ key, val string }{{"kms.transitMount", k.TransitMount}, {"kms.approleMount", k.AppRoleMount}} {
		if v.required(p.key, p.val, "a Vault mount path") && (strings.HasPrefix(p.val, "/") || strings.HasSuffix(p.val, "/") || strings.Contains(p.val, "..")) {
			v.add(p.key, "%q must be a path without leading or trailing slash or ..", p.val)
		}
	}
	for _, p := range []struct{ key, val string }{{"kms.transitKey", k.TransitKey}, {"kms.approleRole", k.AppRoleRole}} {
		if p.val != "" && !vaultName.MatchString(p.val) {
			v.add(p.key, "%q must be letters, digits, '.', '_' or '-', starting with a letter or digit", p.val)
		}
	}
	addr := v.s.KMSVaultAddress()
	if u, err := url.Parse(addr); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		v.add("kms.vaultAddress", "%q is not an http(s):// URL: the plugins on the nodes reach Vault there", addr)
	} else if u.Scheme == "http" && !k.VaultInsecureAllowHTTP {
		v.add("kms.vaultAddress", "%q is plain http: every data key and the plugins' token would cross the network unencrypted; use https:// (with kms.vaultCAFile, a CA bundle on the nodes) %s", addr, allowHint("kms.vaultInsecureAllowHTTP"))
	}
	if k.VaultCAFile != "" && !strings.HasPrefix(k.VaultCAFile, "/") {
		v.add("kms.vaultCAFile", "%q must be an absolute path on the nodes", k.VaultCAFile)
	}
	if k.AwaitTimeout < 70*time.Second {
		v.add("kms.awaitTimeout", "must be at least 1m10s (kube-apiserver polls its KMS plugin's status once a minute), not %s", k.AwaitTimeout)
	}
}

var vaultName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func (v *validator) etcd() {
	e := v.s.Etcd
	if len(e.Endpoints) == 0 {
		v.add("etcd.endpoints", "required: the etcd client URLs")
	}
	tls := false
	for _, ep := range e.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			v.add("etcd.endpoints", "%q is not an http(s)://host:port URL", ep)
			continue
		}
		tls = tls || u.Scheme == "https"
		if u.Scheme == "http" && !e.InsecureAllowHTTP {
			v.add("etcd.endpoints", "%q is plaintext: snapshots and every object read from etcd, Secrets included, would cross the network unencrypted, from an etcd nothing authenticates; use https:// with etcd.caFile %s", ep, allowHint("etcd.insecureAllowHTTP"))
		}
	}
	v.file("etcd.caFile", e.CAFile)
	v.file("etcd.certFile", e.CertFile)
	v.file("etcd.keyFile", e.KeyFile)
	if tls && e.CAFile == "" {
		v.add("etcd.caFile", "required for https endpoints: the CA that verifies etcd")
	}
	if (e.CertFile == "") != (e.KeyFile == "") {
		v.add("etcd.keyFile", "etcd.certFile and etcd.keyFile go together")
	}
}

func (v *validator) kubernetes() {
	k := v.s.Kubernetes
	if k.Kubeconfig == "" && !k.InCluster && os.Getenv("KUBECONFIG") == "" {
		v.add("kubernetes.kubeconfig", "required (or KUBECONFIG, or kubernetes.inCluster): how to reach the cluster's API")
	}
	if k.Kubeconfig != "" && k.InCluster {
		v.add("kubernetes.inCluster", "give either a kubeconfig or inCluster, not both")
	}
	v.file("kubernetes.kubeconfig", k.Kubeconfig)
	if k.QPS < 0 {
		v.add("kubernetes.qps", "must be 0 (no cap) or positive, not %v", k.QPS)
	}
	if k.Burst < 0 {
		v.add("kubernetes.burst", "must be 0 (twice kubernetes.qps) or positive, not %d", k.Burst)
	}
	if k.RewriteWorkers < 1 || k.RewriteWorkers > 256 {
		v.add("kubernetes.rewriteWorkers", "must be between 1 and 256, not %d", k.RewriteWorkers)
	}
}

func (v *validator) ssh() {
	s := v.s.SSH
	v.file("ssh.keyFile", s.KeyFile)
	v.file("ssh.knownHostsFile", s.KnownHostsFile)
	if s.KnownHostsFile == "" && !s.InsecureSkipHostKeyVerification {
		v.add("ssh.knownHostsFile", "required: every node's SSH host key must be verified")
	}
	if s.Timeout <= 0 {
		v.add("ssh.timeout", "must be positive, not %s", s.Timeout)
	}
	// A call to a node in flight when the lock is lost must end within
	// the grace a contender waits past the lock's expiry (half its 2m TTL).
	if s.Timeout > time.Minute {
		v.add("ssh.timeout", "must be at most 1m (the lock's takeover grace), not %s", s.Timeout)
	}
	if s.ReadyTimeout <= 0 {
		v.add("ssh.readyTimeout", "must be positive, not %s", s.ReadyTimeout)
	}
	// kube-apiserver polls its provider file once a minute: less could
	// undo a stage that was about to be proven.
	if s.ReloadTimeout < time.Minute+10*time.Second && !s.RestartOnly {
		v.add("ssh.reloadTimeout", "must be at least 1m10s (kube-apiserver polls its provider file once a minute), not %s", s.ReloadTimeout)
	}
	// Where a node is changed, a step that keeps failing must stall.
	if v.s.Daemon.StallAfter < 1 {
		v.add("daemon.stallAfter", "must be at least 1, not %d", v.s.Daemon.StallAfter)
	}
}

func (v *validator) listen() {
	l := v.s.Listen
	for _, k := range []struct{ key, val string }{{"listen.metrics", l.Metrics}, {"listen.webhook", l.Webhook}} {
		if k.val == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(k.val); err != nil {
			v.add(k.key, "%q is not host:port", k.val)
		}
	}
	if l.Webhook != "" {
		v.required("listen.webhookSecretFile", l.WebhookSecretFile, "the webhook's HMAC secret")
	}
	v.file("listen.webhookSecretFile", l.WebhookSecretFile)
	if v.s.Snapshots.DrillInterval < time.Minute {
		v.add("snapshots.drillInterval", "must be at least 1m, not %s (a drill reads every object of every kept snapshot)", v.s.Snapshots.DrillInterval)
	}
	if v.s.Daemon.MaxBackoff <= 0 {
		v.add("daemon.maxBackoff", "must be positive, not %s", v.s.Daemon.MaxBackoff)
	}
	if v.s.Daemon.CensusCrossCheck < time.Minute {
		v.add("daemon.censusCrossCheck", "must be at least 1m, not %s (a cross-check reads every stored value)", v.s.Daemon.CensusCrossCheck)
	}
}

// Insecurity is a DANGEROUS setting in effect: Key names it, What says
// what it lets through.
type Insecurity struct{ Key, What string }

// Insecure lists the DANGEROUS settings of Vault and etcd that are in
// effect for the parts needs names, for a warning at every start (the
// kubeconfig's are known once it is loaded).
func (s *Settings) Insecure(needs ...Need) []Insecurity {
	var out []Insecurity
	for _, n := range needs {
		switch n {
		case NeedVault:
			if addr, _ := s.VaultAddress(); s.Vault.InsecureAllowHTTP && strings.HasPrefix(strings.ToLower(addr), "http://") {
				out = append(out, Insecurity{"vault.insecureAllowHTTP", "Vault at " + addr + " is reached over plain http"})
			}
			if addr := s.KMSVaultAddress(); s.KMS.Image != "" && s.KMS.VaultInsecureAllowHTTP && strings.HasPrefix(strings.ToLower(addr), "http://") {
				out = append(out, Insecurity{"kms.vaultInsecureAllowHTTP", "the KMS plugins reach Vault at " + addr + " over plain http"})
			}
			if s.Vault.InsecureSkipTLSVerify {
				out = append(out, Insecurity{"vault.insecureSkipTLSVerify", "Vault's TLS certificate is not verified"})
			}
		case NeedEtcd:
			for _, ep := range s.Etcd.Endpoints {
				if s.Etcd.InsecureAllowHTTP && strings.HasPrefix(strings.ToLower(ep), "http://") {
					out = append(out, Insecurity{"etcd.insecureAllowHTTP", "etcd at " + ep + " is reached in plaintext"})
				}
			}
		}
	}
	return out
}

// maxMinSnapshotRetention is atrest.yaml's own bound on snapshots.retention:
// a floor above it would refuse every atrest.yaml.
const maxMinSnapshotRetention = 1000

// policy checks the bounds on commits. Every command checks them: plan and
// status refuse by them as apply and the daemon do.
func (v *validator) policy() {
	p := v.s.Policy
	if p.MinRotationInterval < 0 {
		v.add("policy.minRotationInterval", "must not be negative, not %s (0 sets no floor)", p.MinRotationInterval)
	}
	if p.MinSnapshotRetention < 1 || p.MinSnapshotRetention > maxMinSnapshotRetention {
		v.add("policy.minSnapshotRetention", "must be between 1 and %d (atrest.yaml's own bounds on snapshots.retention), not %d", maxMinSnapshotRetention, p.MinSnapshotRetention)
	}
}
