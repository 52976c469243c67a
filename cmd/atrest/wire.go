package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/gitsource"
	"github.com/atrest-io/atrest/keystore"
	"github.com/atrest-io/atrest/reconciler"
	"github.com/atrest-io/atrest/settings"
)

// source is where a command reads cluster.yml and atrest.yaml: a local
// file (--config) or, without one, the Git source of the settings.
type source struct {
	configFile, policyFile string
	// record makes the revision read from Git the revision in force in
	// Vault (gitsource.Ledger): set by the commands that act on it.
	// Every command refuses a revision that does not descend from it.
	record bool
	// agent forces SSH agent auth for every node (rotate-key's
	// --ssh-agent-auth), as ssh_agent_auth: true in cluster.yml would.
	agent bool
}

func (src *source) bind(cmd *cobra.Command) {
	cmd.Flags().StringVar(&src.configFile, "config", os.Getenv("RKE_CONFIG"), "RKE cluster.yml to act on (env RKE_CONFIG); empty: read it from the Git source (--git-url)")
	cmd.Flags().StringVar(&src.policyFile, "policy", "", "atrest.yaml policy (default: atrest.yaml beside cluster.yml, if there is one)")
}

// desired is cluster.yml and the policy, at a revision.
type desired struct {
	cfg      *cluster.Config
	policy   *cluster.Policy
	revision string
	origin   string // the file or the Git revision, for people
}

// load reads the desired state, from the local file or from Git.
func (src *source) load(ctx context.Context, s *settings.Settings, log *slog.Logger) (*desired, error) {
	d, err := src.read(ctx, s, log)
	if err != nil {
		return nil, err
	}
	if src.agent {
		for i := range d.cfg.Nodes {
			d.cfg.Nodes[i].SSHAgentAuth = true
		}
	}
	return d, nil
}

func (src *source) read(ctx context.Context, s *settings.Settings, log *slog.Logger) (*desired, error) {
	if src.configFile != "" {
		cfg, err := cluster.Load(src.configFile)
		if err != nil {
			return nil, err
		}
		np, err := loadPolicy(src.configFile, src.policyFile, src.policyFile != "")
		if err != nil {
			return nil, err
		}
		policy := cluster.DefaultPolicy()
		if np != nil {
			policy = np.Policy
		}
		return &desired{cfg: cfg, policy: policy, origin: src.configFile}, nil
	}
	if err := s.Validate(settings.NeedGit, settings.NeedCluster, settings.NeedVault); err != nil {
		return nil, fmt.Errorf("no --config given, and the Git source is not usable: %w", err)
	}
	// A cache of its own: the daemon owns the settings' cache directory,
	// and two processes must never write one cache at once.
	cache, err := os.MkdirTemp("", "atrest-git-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(cache)
	gs, err := gitSource(s, log, cache)
	if err != nil {
		return nil, err
	}
	rev, _, err := gs.Poll(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the Git source: %w", err)
	}
	ledger, err := openLedger(ctx, s, log)
	if err != nil {
		return nil, err
	}
	defer ledger.Close()
	var d *desired
	accept := func() (err error) {
		if d, err = desiredFromRevision(rev); err != nil {
			return err
		}
		return checkIdentity(s, d.cfg, d.origin)
	}
	if src.record {
		err = gs.Admit(ctx, rev, ledger, accept)
	} else if err = gs.CheckLineage(ctx, rev, ledger); err == nil {
		err = accept()
	}
	if err != nil {
		return nil, err
	}
	return d, nil
}

func desiredFromRevision(rev *gitsource.Revision) (*desired, error) {
	data, ok := rev.Files["cluster.yml"]
	if !ok {
		return nil, fmt.Errorf("revision %s has no cluster.yml", rev.Commit)
	}
	where := "cluster.yml@" + shortRev(rev.Commit)
	cfg, err := cluster.Parse(where, data)
	if err != nil {
		return nil, err
	}
	policy := cluster.DefaultPolicy()
	if p, ok := rev.Files["atrest.yaml"]; ok {
		if policy, err = cluster.ParsePolicy("atrest.yaml@"+shortRev(rev.Commit), p); err != nil {
			return nil, err
		}
	}
	return &desired{cfg: cfg, policy: policy, revision: rev.Commit, origin: where}, nil
}

func shortRev(r string) string { return r[:min(len(r), 12)] }

// gitSource opens the settings' Git source, caching in cache, or else in
// git.cacheDir or its default.
func gitSource(s *settings.Settings, log *slog.Logger, cache string) (*gitsource.Source, error) {
	switch {
	case cache != "":
	case s.Git.CacheDir != "":
		cache = s.Git.CacheDir
	case s.Snapshots.Dir != "":
		cache = filepath.Join(s.Snapshots.Dir, ".git-cache")
	default:
		cache = filepath.Join(os.TempDir(), "atrest-git-cache")
	}
	return gitsource.New(gitsource.Config{
		URL: s.Git.URL, Ref: s.Git.Ref, Path: s.Git.Path,
		SSHKeyFile: s.Git.SSHKeyFile, KnownHostsFile: s.Git.KnownHostsFile, UseSSHAgent: s.Git.SSHKeyFile == "" && settings.GitTransport(s.Git.URL) == "ssh",
		Username: s.Git.Username, PasswordFile: s.Git.PasswordFile, BearerTokenFile: s.Git.BearerTokenFile, CAFile: s.Git.CAFile,
		InsecureSkipHostKeyVerification: s.Git.InsecureSkipHostKeyVerification, InsecureSkipTLSVerify: s.Git.InsecureSkipTLSVerify,
		AllowedSignersFile: s.Git.AllowedSignersFile, OpenPGPKeyringFile: s.Git.OpenPGPKeyringFile, Timeout: s.Git.Timeout,
		AllowRevision: s.Git.AllowRevision, CacheDir: cache, Logger: log,
	})
}

// env is everything a reconcile drives, opened from the settings.
type env struct {
	settings *settings.Settings
	cfg      *cluster.Config
	keys     *keystore.Store
	nodes    *controlplane.Cluster
	etcd     *etcdsnap.Client
	snaps    *etcdsnap.LocalDir
	rest     *rest.Config
	rec      *reconciler.Reconciler
	log      *slog.Logger
	// live is the daemon's live census (daemon.liveCensus), nil elsewhere.
	live *etcdsnap.LiveCensus
}

func (e *env) Close() {
	if e.live != nil {
		e.live.Close()
	}
	if e.nodes != nil {
		_ = e.nodes.Close()
	}
	if e.etcd != nil {
		_ = e.etcd.Close()
	}
	if e.keys != nil {
		e.keys.Close()
	}
}

// open connects to Vault, etcd, the Kubernetes API and every controlplane
// node of cfg. Anything unreachable is an error before anything changes.
func open(ctx context.Context, s *settings.Settings, cfg *cluster.Config, policy *cluster.Policy, log *slog.Logger) (_ *env, err error) {
	if err := s.Validate(settings.NeedVault, settings.NeedEtcd, settings.NeedKubernetes, settings.NeedSSH, settings.NeedSnapshots); err != nil {
		return nil, err
	}
	e := &env{settings: s, cfg: cfg, log: log}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	if e.rest, err = restConfig(s, log); err != nil {
		return nil, err
	}
	if e.keys, err = openKeystore(ctx, s, cfg, log); err != nil {
		return nil, err
	}
	if e.etcd, err = etcdsnap.Dial(ctx, etcdsnap.Config{Endpoints: s.Etcd.Endpoints, CAFile: s.Etcd.CAFile, CertFile: s.Etcd.CertFile, KeyFile: s.Etcd.KeyFile,
		InsecureAllowHTTP: s.Etcd.InsecureAllowHTTP, Logger: log}); err != nil {
		return nil, err
	}
	if e.snaps, err = etcdsnap.NewLocalDir(s.Snapshots.Dir); err != nil {
		return nil, err
	}
	if e.nodes, err = controlplane.Connect(ctx, cfg, controlplane.Options{
		KnownHostsFile: s.SSH.KnownHostsFile, InsecureSkipHostKeyVerification: s.SSH.InsecureSkipHostKeyVerification,
		KeyFile: s.SSH.KeyFile, Timeout: s.SSH.Timeout, ReadyTimeout: s.SSH.ReadyTimeout, APIServer: e.rest,
		ReloadTimeout: s.SSH.ReloadTimeout, RestartOnly: s.SSH.RestartOnly,
		Failpoint: failpoint(), Storage: e.etcd, Logger: log,
	}); err != nil {
		return nil, err
	}
	rw, err := reconciler.NewRewriter(e.rest, reconciler.RewriteOptions{Workers: s.Kubernetes.RewriteWorkers, Logger: log, Progress: os.Stderr, Terminal: isTerminal(os.Stderr)})
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	e.rec = &reconciler.Reconciler{
		Nodes: e.nodes, Keys: e.keys, Etcd: e.etcd, Snapshots: e.snaps, Rewriter: rw, Locks: reconciler.StoreLocker(e.keys), Cluster: s.Cluster.Name,
		Holder:       fmt.Sprintf("atrest %s pid %d on %s", version, os.Getpid(), host),
		FeatureGates: cfg.KubeAPI.ExtraArgs["feature-gates"], Retention: policy.Retention, StallAfter: s.Daemon.StallAfter, Logger: log,
		Limits: limits(s), KMS: kmsOf(s, e.keys, e.nodes),
	}
	return e, nil
}

// kmsOf is the vault-transit provider the settings give (kms.*), nil when
// kms.image is not set; plugins is nil for commands that reach no node
// (the snapshot drill needs Vault alone).
func kmsOf(s *settings.Settings, keys *keystore.Store, plugins reconciler.Plugins) *reconciler.KMS {
	if s.KMS.Image == "" {
		return nil
	}
	transit := keys.Transit(s.KMS.TransitMount, s.TransitKey())
	return &reconciler.KMS{
		Plugins: plugins, Transit: transit, Credentials: keys.PluginRole(s.KMS.AppRoleMount, s.PluginRole()),
		Spec: pluginSpec(s), AwaitTimeout: s.KMS.AwaitTimeout, Service: keystore.NewKMSService(transit, nil),
	}
}

// pluginSpec is the container every node runs `atrest kms-plugin` in.
func pluginSpec(s *settings.Settings) controlplane.PluginSpec {
	k := s.KMS
	args := []string{"--transit-mount", k.TransitMount, "--transit-key", s.TransitKey(), "--vault-address", s.KMSVaultAddress(),
		"--auth", keystore.AuthAppRole, "--approle-mount", k.AppRoleMount,
		"--approle-role-id-file", controlplane.KMSRoleIDFile, "--approle-secret-id-file", controlplane.KMSSecretIDFile,
		"--log-format", "json"}
	var binds []string
	if k.VaultCAFile != "" {
		args = append(args, "--vault-ca-file", k.VaultCAFile)
		binds = append(binds, k.VaultCAFile+":"+k.VaultCAFile+":ro")
	}
	if s.Vault.Namespace != "" {
		args = append(args, "--vault-namespace", s.Vault.Namespace)
	}
	if k.VaultInsecureAllowHTTP {
		args = append(args, "--vault-insecure-allow-http")
	}
	return controlplane.PluginSpec{Image: k.Image, Args: args, Binds: binds}
}

// limits are the operator's bounds on commits, from the settings' policy
// group: the one place they reach the planner, for every command and the
// daemon.
func limits(s *settings.Settings) reconciler.Limits {
	p := s.Policy
	return reconciler.Limits{
		MinRotationInterval: p.MinRotationInterval, MinSnapshotRetention: p.MinSnapshotRetention,
		AllowDisable: p.AllowDisable, AllowCustomConfig: p.AllowCustomConfig, AllowKMS: p.AllowKMS,
	}
}

// openKeystore logs in to Vault and opens the keyring of cluster.name, the
// cluster cfg describes. Its callers have checked cfg's identity before
// opening anything else; it checks again because this is where the
// keyring is named.
func openKeystore(ctx context.Context, s *settings.Settings, cfg *cluster.Config, log *slog.Logger) (*keystore.Store, error) {
	if err := s.Validate(settings.NeedCluster, settings.NeedVault); err != nil {
		return nil, err
	}
	if err := checkIdentity(s, cfg, "cluster.yml"); err != nil {
		return nil, err
	}
	return openLedger(ctx, s, log)
}

// openLedger logs in to Vault and opens cluster.name's documents, without
// a cluster.yml to check against: the ledger of the revision in force
// (gitsource.Ledger) is read before a revision's cluster.yml is trusted.
func openLedger(ctx context.Context, s *settings.Settings, log *slog.Logger) (*keystore.Store, error) {
	if err := s.Validate(settings.NeedCluster, settings.NeedVault); err != nil {
		return nil, err
	}
	v := s.Vault
	return keystore.Open(ctx, keystore.Config{
		Address: v.Address, CAFile: v.CAFile, ClientCertFile: v.ClientCertFile, ClientKeyFile: v.ClientKeyFile, Namespace: v.Namespace,
		InsecureAllowHTTP: v.InsecureAllowHTTP, InsecureSkipTLSVerify: v.InsecureSkipTLSVerify,
		AuthMethod: v.AuthMethod, TokenFile: v.TokenFile,
		AppRoleMount: v.AppRoleMount, AppRoleID: v.AppRoleID, AppRoleSecretIDFile: v.AppRoleSecretIDFile, AppRoleWrapped: v.AppRoleWrapped,
		KubernetesMount: v.KubernetesMount, KubernetesRole: v.KubernetesRole, KubernetesTokenFile: v.KubernetesTokenFile,
		KVMount: v.KVMount, Prefix: v.Prefix, Cluster: s.Cluster.Name, Logger: log,
	})
}

// The keystore is where the revision in force is kept.
var _ gitsource.Ledger = (*keystore.Store)(nil)

// restConfig reaches the cluster's API: the kubeconfig, or the pod's
// service account. It reads only the kubeconfig, and refuses one that
// does not verify the API (see checkREST) before anything is reached.
func restConfig(s *settings.Settings, log *slog.Logger) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	origin := "the in-cluster config"
	if s.Kubernetes.InCluster {
		cfg, err = rest.InClusterConfig()
	} else {
		kubeconfig := s.Kubernetes.Kubeconfig
		origin = "kubeconfig " + kubeconfig + " (kubernetes.kubeconfig, " + s.Source("kubernetes.kubeconfig") + ")"
		if kubeconfig == "" {
			kubeconfig = os.Getenv("KUBECONFIG")
			origin = "kubeconfig " + kubeconfig + " (environment variable KUBECONFIG)"
		}
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err == nil {
			origin += kubeCluster(kubeconfig)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	if err := checkREST(s, cfg, origin, log); err != nil {
		return nil, err
	}
	reconciler.SetRateLimit(cfg, s.Kubernetes.QPS, s.Kubernetes.Burst)
	cfg.UserAgent = "atrest/" + version
	return cfg, nil
}

// kubeCluster names the cluster entry of a kubeconfig's current context,
// for messages: `, cluster "c" of context "x"`.
func kubeCluster(kubeconfig string) string {
	raw, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil || raw.Contexts[raw.CurrentContext] == nil {
		return ""
	}
	return fmt.Sprintf(", cluster %q of context %q", raw.Contexts[raw.CurrentContext].Cluster, raw.CurrentContext)
}

// checkREST refuses a client config that would not verify the API: a
// server reached over http (client-go picks http for a bare host:port
// without a CA or a client certificate), or insecure-skip-tls-verify,
// unless kubernetes.insecureAllowHTTP or kubernetes.insecureSkipTLSVerify
// admits it; then it warns. The API's answers include every Secret, and
// its credentials are sent with every request.
func checkREST(s *settings.Settings, cfg *rest.Config, origin string, log *slog.Logger) error {
	u, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client config: %s: server %q: %w", origin, cfg.Host, err)
	}
	hint := func(key string) string {
		return fmt.Sprintf("or, DANGEROUS, allow it with %s (--%s, %s)", key, settings.FlagName(key), settings.EnvName(key))
	}
	var problems []string
	if u.Scheme == "http" {
		if !s.Kubernetes.InsecureAllowHTTP {
			problems = append(problems, fmt.Sprintf("%s: server %s is plain http: every Secret atrest reads and rewrites, and its credentials, would cross the network unencrypted; use the API's https:// address with its certificate-authority(-data) %s",
				origin, u.Redacted(), hint("kubernetes.insecureAllowHTTP")))
		} else {
			log.Warn("INSECURE: the Kubernetes API is reached over plain http: anyone who can see the traffic gets every Secret and the credentials",
				"server", u.Redacted(), "setting", "kubernetes.insecureAllowHTTP")
		}
	}
	if cfg.Insecure {
		if !s.Kubernetes.InsecureSkipTLSVerify {
			problems = append(problems, fmt.Sprintf("%s: insecure-skip-tls-verify: true turns off the verification of the API's certificate, so anyone on the path could pose as the API; remove it and give the cluster's certificate-authority(-data) %s",
				origin, hint("kubernetes.insecureSkipTLSVerify")))
		} else {
			log.Warn("INSECURE: TLS certificate verification of the Kubernetes API is OFF: anyone who can intercept the connection can pose as the API",
				"server", u.Redacted(), "setting", "kubernetes.insecureSkipTLSVerify")
		}
	}
	if len(problems) > 0 {
		return errors.New("invalid settings:\n  " + strings.Join(problems, "\n  "))
	}
	return nil
}

func newLogger(s *settings.Settings, w io.Writer) *slog.Logger {
	return loggerFor(s.Log.Format, s.Log.Level, w)
}

// loggerFor logs in format (text or json) at level to w.
func loggerFor(format, lvl string, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(lvl))
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if format == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	// client-go and apiserver's transformers log through klog, which is
	// process-wide: send it to the same handler, less the transformers'
	// one line per object that does not decrypt, which the drill's
	// report already names (and a drill of a snapshot whose key is gone
	// would print once per secret).
	klog.SetSlogLogger(slog.New(klogFilter{h}))
	return slog.New(h)
}

// klogFilter drops klog's per-object transform errors.
type klogFilter struct{ slog.Handler }

func (f klogFilter) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "failed to decrypt data" || r.Message == "failed to encrypt data" {
		return nil
	}
	return f.Handler.Handle(ctx, r)
}

func (f klogFilter) WithAttrs(as []slog.Attr) slog.Handler {
	return klogFilter{f.Handler.WithAttrs(as)}
}
func (f klogFilter) WithGroup(name string) slog.Handler { return klogFilter{f.Handler.WithGroup(name)} }

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// session is what every command that acts on a cluster starts from.
type session struct {
	s   *settings.Settings
	log *slog.Logger
	d   *desired
}

// begin loads the settings and the desired state, of the cluster that
// cluster.name pins (every command that begins opens its keyring).
func begin(cmd *cobra.Command, loader *settings.Loader, src *source) (*session, error) {
	s, err := loader.Load()
	if err != nil {
		return nil, err
	}
	log := newLogger(s, cmd.ErrOrStderr())
	d, err := src.pinned(cmd.Context(), s, log)
	if err != nil {
		return nil, err
	}
	return &session{s: s, log: log, d: d}, nil
}

// connect begins and opens everything a reconcile drives.
func connect(cmd *cobra.Command, loader *settings.Loader, src *source) (*session, *env, error) {
	ss, err := begin(cmd, loader, src)
	if err != nil {
		return nil, nil, err
	}
	e, err := open(cmd.Context(), ss.s, ss.d.cfg, ss.d.policy, ss.log)
	if err != nil {
		return nil, nil, err
	}
	return ss, e, nil
}

// withSettings binds the runtime settings to cmd and returns a loader.
func withSettings(cmd *cobra.Command) *settings.Loader {
	l := settings.Bind(cmd.Flags())
	// The ~50 settings flags every such command shares would bury its own
	// in --help: they are listed once, by `atrest options`, as kubectl
	// lists its global flags.
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if settings.IsSettingFlag(f) {
			f.Hidden = true
		}
	})
	cmd.SetUsageTemplate(cmd.UsageTemplate() + settingsUsage)
	return l
}

// settingsUsage ends the help of every command that reads the settings.
const settingsUsage = `
Settings: every runtime setting is also a flag of this command, an ATREST_*
variable or a key of --settings FILE (flag > variable > file > default).
Use "atrest options" for the list.
`

// errorExit wraps err with exit code 2, the code for "could not do it".
func errorExit(err error) error {
	if err == nil {
		return nil
	}
	var ec *exitCodeError
	if errors.As(err, &ec) {
		return err
	}
	return &exitCodeError{code: exitError, err: fmt.Errorf("error: %w", err)}
}

// describeChains renders chains for people: "secrets [aescbc:v1:k-abcde, identity]".
func describeChains(cs cluster.Chains) string {
	if len(cs) == 0 {
		return "no encryption config (everything stored plain)"
	}
	var parts []string
	for _, r := range cs.Resources() {
		parts = append(parts, r+" "+cs[r].String())
	}
	return strings.Join(parts, "; ")
}
