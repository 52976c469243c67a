// Package settings is atrest's runtime settings: how it reaches Git, Vault,
// etcd, the Kubernetes API and the nodes, where it keeps snapshots and what
// it listens on. These are not policy and do not live in Git. A setting is
// taken from its flag, else its ATREST_* environment variable, else the YAML
// file given by --settings, else its default. Secrets are never values here:
// only paths to files (or, for Vault, the standard VAULT_TOKEN variable).
package settings

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// Settings is every runtime setting. The YAML keys are the dotted names in
// the field table (git.url, vault.authMethod, ...).
type Settings struct {
	Cluster    Cluster    `json:"cluster"`
	Git        Git        `json:"git"`
	Vault      Vault      `json:"vault"`
	Etcd       Etcd       `json:"etcd"`
	Kubernetes Kubernetes `json:"kubernetes"`
	SSH        SSH        `json:"ssh"`
	Snapshots  Snapshots  `json:"snapshots"`
	KMS        KMS        `json:"kms"`
	Listen     Listen     `json:"listen"`
	Daemon     Daemon     `json:"daemon"`
	Policy     Policy     `json:"policy"`
	Log        Log        `json:"log"`

	// sources records where each set value came from, for error messages.
	sources map[string]string
}

// Cluster is which cluster this atrest manages. Its name is pinned here,
// by the operator, and never taken from a commit: a cluster.yml that names
// another cluster would otherwise open another keyring (and take another
// lock) for the same nodes.
type Cluster struct {
	Name string `json:"name"`
}

// Git is the repository that holds cluster.yml and atrest.yaml.
type Git struct {
	URL                string        `json:"url"`
	Ref                string        `json:"ref"`
	Path               string        `json:"path"`
	SSHKeyFile         string        `json:"sshKeyFile"`
	KnownHostsFile     string        `json:"knownHostsFile"`
	Username           string        `json:"username"`
	PasswordFile       string        `json:"passwordFile"`
	BearerTokenFile    string        `json:"bearerTokenFile"`
	CAFile             string        `json:"caFile"`
	Interval           time.Duration `json:"interval"`
	Timeout            time.Duration `json:"timeout"`
	CacheDir           string        `json:"cacheDir"`
	AllowedSignersFile string        `json:"allowedSignersFile"`
	OpenPGPKeyringFile string        `json:"openPGPKeyringFile"`
	// RequireSignatures refuses to start without a trust file, so that a
	// lost setting cannot turn verification off quietly.
	RequireSignatures bool `json:"requireSignatures"`
	// AllowRevision is the one commit accepted even though it does not
	// descend from the revision in force: a rollback made on purpose.
	AllowRevision                   string `json:"allowRevision"`
	InsecureSkipHostKeyVerification bool   `json:"insecureSkipHostKeyVerification"`
	InsecureSkipTLSVerify           bool   `json:"insecureSkipTLSVerify"`
}

// Vault is where the keys, the journal and the lock live.
type Vault struct {
	Address             string `json:"address"`
	CAFile              string `json:"caFile"`
	ClientCertFile      string `json:"clientCertFile"`
	ClientKeyFile       string `json:"clientKeyFile"`
	Namespace           string `json:"namespace"`
	AuthMethod          string `json:"authMethod"`
	TokenFile           string `json:"tokenFile"`
	AppRoleMount        string `json:"approleMount"`
	AppRoleID           string `json:"approleRoleID"`
	AppRoleSecretIDFile string `json:"approleSecretIDFile"`
	AppRoleWrapped      bool   `json:"approleWrapped"`
	KubernetesMount     string `json:"kubernetesMount"`
	KubernetesRole      string `json:"kubernetesRole"`
	KubernetesTokenFile string `json:"kubernetesTokenFile"`
	KVMount             string `json:"kvMount"`
	Prefix              string `json:"prefix"`
	// InsecureAllowHTTP admits an http:// Vault address (vault.address,
	// VAULT_AGENT_ADDR or VAULT_ADDR); without it one is refused.
	InsecureAllowHTTP bool `json:"insecureAllowHTTP"`
	// InsecureSkipTLSVerify accepts any certificate from Vault; without
	// it VAULT_SKIP_VERIFY is refused.
	InsecureSkipTLSVerify bool `json:"insecureSkipTLSVerify"`
}

// Etcd is the cluster's etcd, for snapshots and the census.
type Etcd struct {
	Endpoints []string `json:"endpoints"`
	CAFile    string   `json:"caFile"`
	CertFile  string   `json:"certFile"`
	KeyFile   string   `json:"keyFile"`
	// InsecureAllowHTTP admits http:// endpoints (plaintext gRPC);
	// without it one is refused.
	InsecureAllowHTTP bool `json:"insecureAllowHTTP"`
}

// Kubernetes is the cluster's API, for the rewrite and the canary.
type Kubernetes struct {
	Kubeconfig string `json:"kubeconfig"`
	InCluster  bool   `json:"inCluster"`
	// QPS caps the client's requests per second; 0 sets no cap: the
	// rewrite's workers and the apiserver's flow control (429 with
	// Retry-After, which the client honours) bound it. Burst goes with a
	// cap (0: twice QPS).
	QPS   float64 `json:"qps"`
	Burst int     `json:"burst"`
	// RewriteWorkers is how many updates the rewrite keeps in flight.
	RewriteWorkers int `json:"rewriteWorkers"`
	// Events makes the daemon record Kubernetes events (transitions, their
	// steps, stalls, drift corrected, drills that failed) on the canary
	// secret in kube-system.
	Events bool `json:"events"`
	// InsecureSkipTLSVerify admits a kubeconfig whose cluster has
	// insecure-skip-tls-verify: true; InsecureAllowHTTP one whose server is
	// http://. Without them such a kubeconfig is refused.
	InsecureSkipTLSVerify bool `json:"insecureSkipTLSVerify"`
	InsecureAllowHTTP     bool `json:"insecureAllowHTTP"`
}

// SSH is how atrest reaches the controlplane nodes of cluster.yml.
type SSH struct {
	KeyFile        string        `json:"keyFile"`
	KnownHostsFile string        `json:"knownHostsFile"`
	Timeout        time.Duration `json:"timeout"`
	// ReadyTimeout bounds the wait for a restarted kube-apiserver's
	// /readyz before the node is rolled back.
	ReadyTimeout time.Duration `json:"readyTimeout"`
	// ReloadTimeout bounds the wait for a node's kube-apiserver to prove,
	// by its metrics, that it reloaded a provider file.
	ReloadTimeout time.Duration `json:"reloadTimeout"`
	// RestartOnly keeps every change on the restart path: atrest never
	// sets --encryption-provider-config-automatic-reload.
	RestartOnly                     bool `json:"restartOnly"`
	InsecureSkipHostKeyVerification bool `json:"insecureSkipHostKeyVerification"`
}

// Snapshots is where etcd snapshots and their manifests are kept.
type Snapshots struct {
	Dir string `json:"dir"`
	// DrillInterval is how often the daemon proves each kept snapshot
	// restorable again (the decryption drill); a new snapshot is drilled
	// at once.
	DrillInterval time.Duration `json:"drillInterval"`
}

// KMS is the vault-transit provider (atrest.yaml provider: vault-transit):
// the Vault Transit key that wraps kube-apiserver's data keys and never
// leaves Vault, and the plugin atrest runs on every controlplane node.
type KMS struct {
	// Image is the plugin's image: atrest's own, which holds atrest at
	// /usr/local/bin/atrest. Empty: the provider is off.
	Image string `json:"image"`
	// TransitMount and TransitKey name the Transit key (default transit,
	// atrest-<cluster.name>).
	TransitMount string `json:"transitMount"`
	TransitKey   string `json:"transitKey"`
	// AppRoleMount and AppRoleRole are the AppRole the plugins log in
	// with (default approle, atrest-kms-<cluster.name>): atrest issues a
	// secret id of it for each node.
	AppRoleMount string `json:"approleMount"`
	AppRoleRole  string `json:"approleRole"`
	// VaultAddress is Vault as the nodes reach it (default vault.address);
	// VaultCAFile a CA bundle on the nodes that verifies it; Namespace
	// its Enterprise namespace (default vault.namespace).
	VaultAddress string `json:"vaultAddress"`
	VaultCAFile  string `json:"vaultCAFile"`
	// VaultInsecureAllowHTTP lets the plugins reach Vault over plain http.
	VaultInsecureAllowHTTP bool `json:"vaultInsecureAllowHTTP"`
	// AwaitTimeout bounds the wait, after a rotation, for every
	// kube-apiserver to wrap with the new version (it polls its plugin's
	// status once a minute).
	AwaitTimeout time.Duration `json:"awaitTimeout"`
}

// Listen is what the daemon serves.
type Listen struct {
	Metrics           string `json:"metrics"`
	Webhook           string `json:"webhook"`
	WebhookSecretFile string `json:"webhookSecretFile"`
}

// Daemon is how `atrest run` behaves.
type Daemon struct {
	Suspend    bool          `json:"suspend"`
	MaxBackoff time.Duration `json:"maxBackoff"`
	// StallAfter is how often one step may fail with the same inputs
	// before the transition stalls (atrest apply too).
	StallAfter int `json:"stallAfter"`
	// LiveCensus keeps the census the daemon observes with current from
	// etcd's watch, rather than reading every stored value at every poll.
	LiveCensus bool `json:"liveCensus"`
	// CensusCrossCheck is how often the live census is compared with a
	// full census of etcd (a mismatch is logged, counted and corrected).
	CensusCrossCheck time.Duration `json:"censusCrossCheck"`
}

// Policy is the operator's bounds on what a commit may ask for. Git holds
// the policy (atrest.yaml, cluster.yml), but whoever can push to it should
// not decide alone how destructive a change may be: a commit beyond these
// bounds is refused, and changes nothing, until a commit within them.
type Policy struct {
	// MinRotationInterval is the shortest gap between two firings that
	// atrest.yaml's rotation.schedule may have: each rotation is a
	// snapshot, a deploy to every node and a rewrite of every object.
	MinRotationInterval time.Duration `json:"minRotationInterval"`
	// MinSnapshotRetention is the fewest snapshots atrest.yaml's
	// snapshots.retention may keep.
	MinSnapshotRetention int `json:"minSnapshotRetention"`
	// AllowDisable lets a commit turn encryption off where it is in force
	// (enabled: false, or a custom_config that writes plain).
	AllowDisable bool `json:"allowDisable"`
	// AllowCustomConfig lets a commit give a custom_config; AllowKMS lets
	// one name a kms provider (a plugin outside atrest's custody).
	AllowCustomConfig bool `json:"allowCustomConfig"`
	AllowKMS          bool `json:"allowKMS"`
}

// DefaultMinSnapshotRetention is policy.minSnapshotRetention's default. A
// snapshot is taken before each transition, so a retention of 1 keeps only
// the restore point of the latest change: a bad commit followed by any
// other transition (a scheduled rotation, say) would leave no snapshot
// from before the bad one. Two keep that one.
const DefaultMinSnapshotRetention = 2

// Log is the shape of atrest's own logs.
type Log struct {
	Format string `json:"format"`
	Level  string `json:"level"`
}

// Vault auth methods.
const (
	AuthToken      = "token"
	AuthAppRole    = "approle"
	AuthKubernetes = "kubernetes"
)

// Default returns the settings before any flag, variable or file.
func Default() *Settings {
	return &Settings{
		Git:        Git{Ref: "main", Path: ".", Interval: time.Minute, Timeout: time.Minute},
		Vault:      Vault{AuthMethod: AuthToken, AppRoleMount: "approle", KubernetesMount: "kubernetes", KubernetesTokenFile: "/var/run/secrets/kubernetes.io/serviceaccount/token", KVMount: "secret", Prefix: "atrest"},
		Kubernetes: Kubernetes{RewriteWorkers: 16},
		SSH:        SSH{Timeout: 30 * time.Second, ReadyTimeout: 3 * time.Minute, ReloadTimeout: 3*time.Minute + 30*time.Second},
		Snapshots:  Snapshots{DrillInterval: 24 * time.Hour},
		KMS:        KMS{TransitMount: "transit", AppRoleMount: "approle", AwaitTimeout: 4 * time.Minute},
		Listen:     Listen{Metrics: "127.0.0.1:9795"},
		Daemon:     Daemon{MaxBackoff: 10 * time.Minute, StallAfter: 3, LiveCensus: true, CensusCrossCheck: 6 * time.Hour},
		Policy:     Policy{MinRotationInterval: time.Hour, MinSnapshotRetention: DefaultMinSnapshotRetention, AllowCustomConfig: true, AllowKMS: true},
		Log:        Log{Format: "text", Level: "info"},
	}
}

// field is one setting: its dotted YAML name, its help, and where it lives.
type field struct {
	key  string
	help string
	ptr  any
}

func (s *Settings) fields() []field {
	return []field{
		{"cluster.name", "the cluster atrest manages: names its keyring in Vault (<vault.prefix>/<name>); cluster.yml's cluster_name must be the same (RKE's default when it has none: local)", &s.Cluster.Name},

		{"git.url", "Git repository holding cluster.yml: ssh://, git@host:path, https:// or a local path", &s.Git.URL},
		{"git.ref", "branch, tag (refs/tags/NAME or NAME) or full commit hash to follow", &s.Git.Ref},
		{"git.path", "folder inside the repository that holds cluster.yml and atrest.yaml", &s.Git.Path},
		{"git.sshKeyFile", "file with the SSH private key for Git over SSH (empty: use the SSH agent)", &s.Git.SSHKeyFile},
		{"git.knownHostsFile", "known_hosts file that verifies the Git server's SSH host key", &s.Git.KnownHostsFile},
		{"git.username", "user name for Git over HTTPS", &s.Git.Username},
		{"git.passwordFile", "file with the password for Git over HTTPS", &s.Git.PasswordFile},
		{"git.bearerTokenFile", "file with a bearer token for Git over HTTPS", &s.Git.BearerTokenFile},
		{"git.caFile", "PEM bundle of CAs that verify the Git server over HTTPS", &s.Git.CAFile},
		{"git.interval", "how often to poll the Git source (and re-observe the cluster, to catch drift)", &s.Git.Interval},
		{"git.timeout", "timeout of each Git network operation (ref listing, fetch)", &s.Git.Timeout},
		{"git.cacheDir", "directory for the Git cache (default: .git-cache in snapshots.dir)", &s.Git.CacheDir},
		{"git.allowedSignersFile", "accept only commits signed by an SSH key in this allowed-signers file (as git's gpg.ssh.allowedSignersFile)", &s.Git.AllowedSignersFile},
		{"git.openPGPKeyringFile", "accept only commits signed by a key in this armored OpenPGP keyring", &s.Git.OpenPGPKeyringFile},
		{"git.requireSignatures", "refuse to start unless git.allowedSignersFile or git.openPGPKeyringFile is set", &s.Git.RequireSignatures},
		{"git.allowRevision", "full hash of one commit to accept although it does not descend from the revision in force recorded in Vault (a rollback or a rewritten history, on purpose); remove it once that commit is in force", &s.Git.AllowRevision},
		{"git.insecureSkipHostKeyVerification", "DANGEROUS: accept any SSH host key from the Git server", &s.Git.InsecureSkipHostKeyVerification},
		{"git.insecureSkipTLSVerify", "DANGEROUS: accept any TLS certificate from the Git server", &s.Git.InsecureSkipTLSVerify},

		{"vault.address", "Vault address (default: VAULT_ADDR)", &s.Vault.Address},
		{"vault.caFile", "PEM bundle of CAs that verify Vault (default: VAULT_CACERT)", &s.Vault.CAFile},
		{"vault.clientCertFile", "client certificate for Vault TLS (default: VAULT_CLIENT_CERT)", &s.Vault.ClientCertFile},
		{"vault.clientKeyFile", "client key for Vault TLS (default: VAULT_CLIENT_KEY)", &s.Vault.ClientKeyFile},
		{"vault.namespace", "Vault Enterprise namespace (default: VAULT_NAMESPACE)", &s.Vault.Namespace},
		{"vault.authMethod", "how atrest logs in to Vault: token, approle or kubernetes", &s.Vault.AuthMethod},
		{"vault.tokenFile", "file with the Vault token, for authMethod token (default: VAULT_TOKEN)", &s.Vault.TokenFile},
		{"vault.approleMount", "mount path of the AppRole auth method", &s.Vault.AppRoleMount},
		{"vault.approleRoleID", "AppRole role id", &s.Vault.AppRoleID},
		{"vault.approleSecretIDFile", "file with the AppRole secret id", &s.Vault.AppRoleSecretIDFile},
		{"vault.approleWrapped", "the secret id file holds a response-wrapping token to unwrap", &s.Vault.AppRoleWrapped},
		{"vault.kubernetesMount", "mount path of the Kubernetes auth method", &s.Vault.KubernetesMount},
		{"vault.kubernetesRole", "Vault role for Kubernetes auth", &s.Vault.KubernetesRole},
		{"vault.kubernetesTokenFile", "service-account token file, re-read at every login", &s.Vault.KubernetesTokenFile},
		{"vault.kvMount", "mount path of the KV v2 secrets engine holding the keyrings", &s.Vault.KVMount},
		{"vault.prefix", "path prefix of atrest's data inside the KV mount", &s.Vault.Prefix},
		{"vault.insecureAllowHTTP", "DANGEROUS: allow an http:// Vault address: tokens and every key cross the network in plaintext", &s.Vault.InsecureAllowHTTP},
		{"vault.insecureSkipTLSVerify", "DANGEROUS: accept any TLS certificate from Vault (VAULT_SKIP_VERIFY is refused without it)", &s.Vault.InsecureSkipTLSVerify},

		{"etcd.endpoints", "etcd client URLs, comma-separated", &s.Etcd.Endpoints},
		{"etcd.caFile", "CA that verifies etcd", &s.Etcd.CAFile},
		{"etcd.certFile", "client certificate for etcd", &s.Etcd.CertFile},
		{"etcd.keyFile", "client key for etcd", &s.Etcd.KeyFile},
		{"etcd.insecureAllowHTTP", "DANGEROUS: allow http:// etcd endpoints: snapshots and every stored object cross the network in plaintext", &s.Etcd.InsecureAllowHTTP},

		{"kubernetes.kubeconfig", "kubeconfig for the cluster's API", &s.Kubernetes.Kubeconfig},
		{"kubernetes.inCluster", "use the pod's service account to reach the cluster's API", &s.Kubernetes.InCluster},
		{"kubernetes.qps", "cap on client requests per second (0: none; the rewrite's workers and the apiserver's flow control, which answers 429 with Retry-After, bound it, as kubectl is bound)", &s.Kubernetes.QPS},
		{"kubernetes.burst", "client burst with kubernetes.qps (0: twice the qps)", &s.Kubernetes.Burst},
		{"kubernetes.rewriteWorkers", "updates the rewrite keeps in flight: how hard it may press the apiserver", &s.Kubernetes.RewriteWorkers},
		{"kubernetes.events", "record Kubernetes events of the daemon (transitions, steps, stalls, drift corrected, drills that failed) on the canary secret kube-system/atrest-canary", &s.Kubernetes.Events},
		{"kubernetes.insecureSkipTLSVerify", "DANGEROUS: allow a kubeconfig whose cluster has insecure-skip-tls-verify: true (accept any certificate from the API)", &s.Kubernetes.InsecureSkipTLSVerify},
		{"kubernetes.insecureAllowHTTP", "DANGEROUS: allow a kubeconfig whose server is http://: Secrets cross the network in plaintext", &s.Kubernetes.InsecureAllowHTTP},

		{"ssh.keyFile", "SSH private key for the nodes; overrides cluster.yml's ssh_key_path", &s.SSH.KeyFile},
		{"ssh.knownHostsFile", "known_hosts file that verifies every node's SSH host key", &s.SSH.KnownHostsFile},
		{"ssh.timeout", "timeout of each SSH or Docker call to a node", &s.SSH.Timeout},
		{"ssh.readyTimeout", "how long a restarted kube-apiserver may take to be ready before its node is rolled back", &s.SSH.ReadyTimeout},
		{"ssh.reloadTimeout", "how long a kube-apiserver may take to prove it reloaded a provider file (it polls once a minute) before the stage is undone", &s.SSH.ReloadTimeout},
		{"ssh.restartOnly", "restart kube-apiserver to load each provider file; never set --encryption-provider-config-automatic-reload", &s.SSH.RestartOnly},
		{"ssh.insecureSkipHostKeyVerification", "DANGEROUS: accept any SSH host key from the nodes", &s.SSH.InsecureSkipHostKeyVerification},

		{"snapshots.dir", "directory for etcd snapshots and their manifests", &s.Snapshots.Dir},
		{"snapshots.drillInterval", "how often the daemon decrypts every kept snapshot again with the keys in Vault, to prove it restorable (a new snapshot is drilled at once)", &s.Snapshots.DrillInterval},

		{"kms.image", "image of the KMS plugin of provider vault-transit (atrest's, holding /usr/local/bin/atrest); empty: vault-transit is off", &s.KMS.Image},
		{"kms.transitMount", "mount path of Vault's Transit secrets engine", &s.KMS.TransitMount},
		{"kms.transitKey", "Transit key that wraps kube-apiserver's data keys (default atrest-<cluster.name>)", &s.KMS.TransitKey},
		{"kms.approleMount", "mount path of the AppRole auth method the plugins log in with", &s.KMS.AppRoleMount},
		{"kms.approleRole", "AppRole role of the plugins, allowed only encrypt and decrypt on the Transit key (default atrest-kms-<cluster.name>)", &s.KMS.AppRoleRole},
		{"kms.vaultAddress", "Vault's address as the controlplane nodes reach it (default vault.address)", &s.KMS.VaultAddress},
		{"kms.vaultCAFile", "path ON THE NODES of the CA bundle that verifies Vault for the plugins", &s.KMS.VaultCAFile},
		{"kms.vaultInsecureAllowHTTP", "DANGEROUS: let the plugins reach Vault over plain http: data keys and their token in plaintext", &s.KMS.VaultInsecureAllowHTTP},
		{"kms.awaitTimeout", "how long every kube-apiserver may take to wrap with a rotated Transit key's new version (it polls its plugin once a minute)", &s.KMS.AwaitTimeout},

		{"listen.metrics", "address for /metrics, /healthz and /readyz", &s.Listen.Metrics},
		{"listen.webhook", "address for the Git webhook (empty: no webhook)", &s.Listen.Webhook},
		{"listen.webhookSecretFile", "file with the webhook's HMAC secret", &s.Listen.WebhookSecretFile},

		{"daemon.suspend", "observe and report, but change nothing (as suspend: true in atrest.yaml)", &s.Daemon.Suspend},
		{"daemon.maxBackoff", "longest wait before retrying after failed reconciles (the wait doubles from git.interval / 4)", &s.Daemon.MaxBackoff},
		{"daemon.stallAfter", "stall a transition once the same step failed this many times with the same inputs (apply too); atrest resume lifts it", &s.Daemon.StallAfter},
		{"daemon.liveCensus", "keep the census the daemon observes with current from etcd's watch (false: read every stored value at every poll); steps are always planned from a full census", &s.Daemon.LiveCensus},
		{"daemon.censusCrossCheck", "how often the live census is compared with a full census of etcd; a mismatch is logged, counted and corrected", &s.Daemon.CensusCrossCheck},

		{"policy.minRotationInterval", "refuse a commit whose atrest.yaml rotation.schedule can fire twice within this (each rotation is a snapshot, a deploy and a rewrite of every object)", &s.Policy.MinRotationInterval},
		{"policy.minSnapshotRetention", "refuse a commit whose atrest.yaml snapshots.retention keeps fewer snapshots than this", &s.Policy.MinSnapshotRetention},
		{"policy.allowDisable", "let a commit turn encryption at rest off where it is in force (enabled: false, or a custom_config that writes plain)", &s.Policy.AllowDisable},
		{"policy.allowCustomConfig", "let a commit give cluster.yml a custom_config (false: managed keys only)", &s.Policy.AllowCustomConfig},
		{"policy.allowKMS", "let a commit's custom_config name a kms provider", &s.Policy.AllowKMS},

		{"log.format", "log format: text or json", &s.Log.Format},
		{"log.level", "log level: debug, info, warn or error", &s.Log.Level},
	}
}

// EnvName is the environment variable of a setting: git.sshKeyFile is
// ATREST_GIT_SSH_KEY_FILE.
func EnvName(key string) string { return "ATREST_" + strings.ToUpper(words(key, "_")) }

// FlagName is the flag of a setting: git.sshKeyFile is --git-ssh-key-file.
func FlagName(key string) string { return strings.ToLower(words(key, "-")) }

// words splits a dotted camelCase key into words joined by sep. Runs of
// capitals stay one word (approleRoleID -> approle-role-id).
func words(key, sep string) string {
	var b strings.Builder
	r := []rune(key)
	for i, c := range r {
		switch {
		case c == '.':
			b.WriteString(sep)
			continue
		case c >= 'A' && c <= 'Z' && i > 0 && r[i-1] != '.':
			prevLower := r[i-1] >= 'a' && r[i-1] <= 'z'
			nextLower := i+1 < len(r) && r[i+1] >= 'a' && r[i+1] <= 'z'
			if prevLower || (nextLower && r[i-1] >= 'A' && r[i-1] <= 'Z') {
				b.WriteString(sep)
			}
		}
		b.WriteRune(c)
	}
	return b.String()
}

// SettingsFlag is the flag that names the settings file.
const SettingsFlag = "settings"

// Loader binds the settings to a command's flags and loads them.
type Loader struct {
	flags *pflag.FlagSet
	env   func(string) string
}

// Bind registers a flag for every setting, and --settings, on fs. Call Load
// after the flags are parsed.
func Bind(fs *pflag.FlagSet) *Loader {
	def := Default()
	fs.String(SettingsFlag, "", "YAML file of runtime settings (env ATREST_SETTINGS); flags and ATREST_* variables override it")
	for _, f := range def.fields() {
		name := FlagName(f.key)
		usage := fmt.Sprintf("%s (env %s)", f.help, EnvName(f.key))
		fs.Var(&flagValue{typ: typeName(f.ptr), v: formatValue(f.ptr)}, name, usage)
		if _, ok := f.ptr.(*bool); ok {
			fs.Lookup(name).NoOptDefVal = "true"
		}
		_ = fs.SetAnnotation(name, SettingAnnotation, []string{f.key})
	}
	return &Loader{flags: fs, env: os.Getenv}
}

// flagValue is a setting's flag. It keeps what it is given as it is: Load
// parses it like the variable and the file, so an error names the setting
// and its source the same way. Its Type is the setting's, for --help
// ("duration", "int", "bool": a bare --daemon-suspend).
type flagValue struct{ typ, v string }

func (f *flagValue) String() string     { return f.v }
func (f *flagValue) Set(v string) error { f.v = v; return nil }
func (f *flagValue) Type() string       { return f.typ }

// typeName is the pflag type name of a setting's field.
func typeName(ptr any) string {
	switch ptr.(type) {
	case *bool:
		return "bool"
	case *int:
		return "int"
	case *float64:
		return "float"
	case *time.Duration:
		return "duration"
	case *[]string:
		return "strings"
	}
	return "string"
}

// SettingAnnotation marks, on each flag Bind registers for a setting, the
// setting's key ("vault.address"): a command's help can list its own
// flags apart from the settings every command shares.
const SettingAnnotation = "atrest-setting"

// IsSettingFlag says whether f is a setting's flag (not --settings).
func IsSettingFlag(f *pflag.Flag) bool {
	_, ok := f.Annotations[SettingAnnotation]
	return ok
}

// Load builds the settings: defaults, then the settings file, then ATREST_*
// variables, then flags. It checks the form of every value it takes, and
// names the setting and its source when one is wrong.
func (l *Loader) Load() (*Settings, error) {
	s := Default()
	s.sources = map[string]string{}
	file, _ := l.flags.GetString(SettingsFlag)
	if file == "" {
		file = l.env("ATREST_SETTINGS")
	}
	if file != "" {
		if err := s.loadFile(file); err != nil {
			return nil, err
		}
	}
	var errs []string
	for _, f := range s.fields() {
		if v := l.env(EnvName(f.key)); v != "" {
			if err := setValue(f.ptr, v); err != nil {
				errs = append(errs, fmt.Sprintf("%s (from environment variable %s): %v", f.key, EnvName(f.key), err))
				continue
			}
			s.sources[f.key] = "environment variable " + EnvName(f.key)
		}
		if fl := l.flags.Lookup(FlagName(f.key)); fl != nil && fl.Changed {
			if err := setValue(f.ptr, fl.Value.String()); err != nil {
				errs = append(errs, fmt.Sprintf("%s (from flag --%s): %v", f.key, fl.Name, err))
				continue
			}
			s.sources[f.key] = "flag --" + fl.Name
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("invalid settings:\n  %s", strings.Join(errs, "\n  "))
	}
	return s, nil
}

func (s *Settings) loadFile(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read settings file: %w", err)
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return fmt.Errorf("settings file %s: not valid YAML: %v", file, err)
	}
	if len(bytes.TrimSpace(j)) == 0 || string(bytes.TrimSpace(j)) == "null" {
		return nil
	}
	// Every value goes through the same parser as flags and variables, so
	// "30s" means the same in all three places.
	var tree map[string]map[string]any
	if err := json.Unmarshal(j, &tree); err != nil {
		return fmt.Errorf("settings file %s: must be a mapping of sections (git, vault, etcd, ...) to mappings: %v", file, err)
	}
	known := map[string]field{}
	for _, f := range s.fields() {
		known[f.key] = f
	}
	var errs []string
	for _, sect := range sortedKeys(tree) {
		for _, name := range sortedKeys(tree[sect]) {
			key := sect + "." + name
			f, ok := known[key]
			if !ok {
				errs = append(errs, fmt.Sprintf("%s: not a setting; see `atrest --help` for the list", key))
				continue
			}
			if err := setValue(f.ptr, fileValue(tree[sect][name])); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", key, err))
				continue
			}
			s.sources[key] = "settings file " + file
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("settings file %s:\n  %s", file, strings.Join(errs, "\n  "))
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// fileValue turns a YAML value into the string form flags use.
func fileValue(v any) string {
	switch t := v.(type) {
	case nil:
		return ""
	case string:
		return t
	case []any:
		parts := make([]string, len(t))
		for i, x := range t {
			parts[i] = fmt.Sprint(x)
		}
		return strings.Join(parts, ",")
	case float64:
		return strconv.FormatFloat(t, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}

func setValue(ptr any, v string) error {
	switch p := ptr.(type) {
	case *string:
		*p = v
	case *bool:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		*p = b
	case *int:
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", v)
		}
		*p = n
	case *float64:
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", v)
		}
		*p = n
	case *time.Duration:
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 30s or 5m", v)
		}
		*p = d
	case *[]string:
		*p = nil
		for part := range strings.SplitSeq(v, ",") {
			if part = strings.TrimSpace(part); part != "" {
				*p = append(*p, part)
			}
		}
	default:
		return fmt.Errorf("unsupported setting type %T", ptr)
	}
	return nil
}

func formatValue(ptr any) string {
	switch p := ptr.(type) {
	case *string:
		return *p
	case *bool:
		return strconv.FormatBool(*p)
	case *int:
		return strconv.Itoa(*p)
	case *float64:
		return strconv.FormatFloat(*p, 'f', -1, 64)
	case *time.Duration:
		return p.String()
	case *[]string:
		return strings.Join(*p, ",")
	}
	return ""
}

// Source says where a setting's value came from: a flag, an environment
// variable, the settings file, or "default".
func (s *Settings) Source(key string) string {
	if src, ok := s.sources[key]; ok {
		return src
	}
	return "default"
}
