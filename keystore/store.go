// Package keystore keeps a cluster's encryption keys in HashiCorp Vault, with
// the keyring that says what each key is for, the journal of the transition
// in flight, the transition lock, and the references retained etcd snapshots
// hold on keys.
//
// Layout in a KV v2 mount (default "secret"), under a prefix (default
// "atrest") and the cluster's name:
//
//	<prefix>/<cluster>/keyring       the Keyring: keys, roles, config hashes, journal
//	<prefix>/<cluster>/keys/<name>   one key's material, written once, never overwritten
//	<prefix>/<cluster>/lock          the transition lock
//	<prefix>/<cluster>/snapshots     which retained snapshots need which keys
//
// Key material lives only at keys/<name>, at its own path, so keeping an old
// key alive never depends on KV version history: KV v2 prunes old versions
// of a path (10 by default) as it is updated. Every write is a check-and-set
// against the version read; a lost race is ErrConflict and writes nothing.
//
// A token needs, under the cluster's <mount>/data/<prefix>/<cluster>, read
// and update on keyring, lock, snapshots, keys/* and daemons/*, and under
// <mount>/metadata/..., create and update on each (list on keys/*, delete
// and list on daemons/*): every document's metadata is written first, so
// its data write is an update. examples/vault-policy.hcl is that policy,
// tested against a real Vault. Only DestroyKey (and DestroyRetired, for
// `atrest keys destroy-retired`) deletes key material, which needs delete
// on metadata keys/*: examples/vault-policy-destroy.hcl, an operator's.
package keystore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// Auth methods.
const (
	AuthToken      = "token"
	AuthAppRole    = "approle"
	AuthKubernetes = "kubernetes"
)

// Config says how to reach Vault, how to log in, and where the cluster's
// keys live. Empty connection fields fall back to the usual VAULT_*
// environment variables (VAULT_ADDR, VAULT_CACERT, VAULT_CAPATH,
// VAULT_CLIENT_CERT, VAULT_CLIENT_KEY, VAULT_NAMESPACE, VAULT_TOKEN, ...).
type Config struct {
	Address        string // https://vault.example:8200
	CAFile         string // PEM bundle of CAs that verify Vault
	ClientCertFile string // client certificate for TLS client auth
	ClientKeyFile  string
	Namespace      string // Vault Enterprise namespace

	// InsecureAllowHTTP admits an http:// address (vault.insecureAllowHTTP);
	// without it Open refuses one, wherever it came from.
	InsecureAllowHTTP bool
	// InsecureSkipTLSVerify accepts any certificate from Vault
	// (vault.insecureSkipTLSVerify); without it Open refuses
	// VAULT_SKIP_VERIFY.
	InsecureSkipTLSVerify bool

	AuthMethod string // AuthToken (default), AuthAppRole or AuthKubernetes
	TokenFile  string // token auth: file holding the token; empty: VAULT_TOKEN

	AppRoleMount        string // default "approle"
	AppRoleID           string
	AppRoleSecretIDFile string // holds the secret id, or with AppRoleWrapped a response-wrapping token for it
	AppRoleWrapped      bool

	KubernetesMount     string // default "kubernetes"
	KubernetesRole      string
	KubernetesTokenFile string // default the pod's projected service-account token; re-read at every login

	KVMount string // KV v2 mount, default "secret"
	Prefix  string // path prefix inside the mount, default "atrest"
	Cluster string // the cluster's name: its keyring is <Prefix>/<Cluster>

	Logger *slog.Logger // default slog.Default()
}

// DefaultKubernetesTokenFile is where a pod's service-account token is.
const DefaultKubernetesTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// opTimeout bounds each Vault call (the client retries transport errors
// and 5xx answers within it).
const opTimeout = 30 * time.Second

var segmentRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// withDefaults fills in defaults and checks cfg for a Store: a session's
// checks, plus where the cluster's documents live. The error names every
// problem and its fix.
func (cfg Config) withDefaults() (Config, error) {
	cfg, problems := cfg.sessionDefaults()
	if cfg.KVMount == "" {
		cfg.KVMount = "secret"
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "atrest"
	}
	cfg.KVMount = strings.Trim(cfg.KVMount, "/")
	cfg.Prefix = strings.Trim(cfg.Prefix, "/")
	switch {
	case cfg.Cluster == "":
		problems = append(problems, "cluster: required: the cluster's name, which names its keyring in Vault")
	case !segmentRE.MatchString(cfg.Cluster):
		problems = append(problems, fmt.Sprintf("cluster: %q must be letters, digits, '.', '_' or '-', starting with a letter or digit", cfg.Cluster))
	}
	problems = append(problems, checkPaths(map[string]string{"kvMount": cfg.KVMount, "prefix": cfg.Prefix})...)
	return cfg, configError(problems)
}

// sessionDefaults fills in the defaults of reaching Vault and logging in,
// and lists what is wrong with them.
func (cfg Config) sessionDefaults() (Config, []string) {
	if cfg.AuthMethod == "" {
		cfg.AuthMethod = AuthToken
	}
	if cfg.AppRoleMount == "" {
		cfg.AppRoleMount = "approle"
	}
	if cfg.KubernetesMount == "" {
		cfg.KubernetesMount = "kubernetes"
	}
	if cfg.KubernetesTokenFile == "" {
		cfg.KubernetesTokenFile = DefaultKubernetesTokenFile
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.AppRoleMount = strings.Trim(cfg.AppRoleMount, "/")
	cfg.KubernetesMount = strings.Trim(cfg.KubernetesMount, "/")

	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	problems = append(problems, checkPaths(map[string]string{"approleMount": cfg.AppRoleMount, "kubernetesMount": cfg.KubernetesMount})...)
	if (cfg.ClientCertFile == "") != (cfg.ClientKeyFile == "") {
		bad("clientCertFile and clientKeyFile: give both or neither")
	}
	switch cfg.AuthMethod {
	case AuthToken:
	case AuthAppRole:
		if cfg.AppRoleID == "" {
			bad("approleRoleID: required for authMethod approle")
		}
		if cfg.AppRoleSecretIDFile == "" {
			bad("approleSecretIDFile: required for authMethod approle: a file holding the secret id (or, with approleWrapped, a response-wrapping token for it)")
		}
	case AuthKubernetes:
		if cfg.KubernetesRole == "" {
			bad("kubernetesRole: required for authMethod kubernetes: the Vault role bound to atrest's service account")
		}
	default:
		bad("authMethod: %q is not one of token, approle, kubernetes", cfg.AuthMethod)
	}
	return cfg, problems
}

// checkPaths lists the fields whose value is not a Vault path, in field
// order.
func checkPaths(fields map[string]string) []string {
	var problems []string
	for _, field := range slices.Sorted(maps.Keys(fields)) {
		for seg := range strings.SplitSeq(fields[field], "/") {
			if !segmentRE.MatchString(seg) {
				problems = append(problems, fmt.Sprintf("%s: %q is not a Vault path: each '/'-separated part must be letters, digits, '.', '_' or '-', starting with a letter or digit", field, fields[field]))
				break
			}
		}
	}
	return problems
}

func configError(problems []string) error {
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w vault settings:\n  %s", ErrInvalid, strings.Join(problems, "\n  "))
}

// Session is a Vault client that stays logged in: it renews its token
// while it can be extended and logs in again when it cannot. A Store is
// one; so is the KMS plugin's connection to Vault Transit. It is safe for
// concurrent use. Close it to stop renewing.
type Session struct {
	cfg    Config
	log    *slog.Logger
	client *vault.Client
	auth   *authenticator

	loggedIn  chan *vault.Secret // logins made outside keepLoggedIn (see call)
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// OpenSession connects to Vault, logs in and starts renewing the token in
// the background. Only cfg's connection and login settings are used.
func OpenSession(ctx context.Context, cfg Config) (*Session, error) {
	cfg, problems := cfg.sessionDefaults()
	if err := configError(problems); err != nil {
		return nil, err
	}
	return openSession(ctx, cfg, cfg.Logger)
}

func openSession(ctx context.Context, cfg Config, log *slog.Logger) (*Session, error) {
	client, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	s := &Session{
		cfg:      cfg,
		log:      log,
		client:   client,
		loggedIn: make(chan *vault.Secret, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	s.auth = &authenticator{cfg: cfg, client: client, log: log}
	lctx, cancel := context.WithTimeout(ctx, opTimeout)
	secret, err := s.auth.login(lctx)
	cancel()
	if err != nil {
		return nil, err
	}
	go s.keepLoggedIn(secret)
	return s, nil
}

// Close stops renewing the Vault token.
func (s *Session) Close() {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
	})
}

// Store is a cluster's key custody in Vault: a Session and where the
// cluster's documents live. It is safe for concurrent use. Close it to
// stop renewing its Vault token.
type Store struct {
	*Session
	base string // <prefix>/<cluster>
}

// Open connects to Vault, logs in, checks that the KV mount is there and is
// version 2, and starts renewing the token in the background: when renewal
// can no longer extend it (its max TTL is reached, or renewal fails), it
// logs in again.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	sess, err := openSession(ctx, cfg, cfg.Logger.With("cluster", cfg.Cluster))
	if err != nil {
		return nil, err
	}
	s := &Store{Session: sess, base: cfg.Prefix + "/" + cfg.Cluster}
	if err := s.checkMount(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// newClient builds a Vault client from the VAULT_* environment with cfg's
// settings on top.
func newClient(cfg Config) (*vault.Client, error) {
	vc := vault.DefaultConfig() // reads the VAULT_* environment
	if vc.Error != nil {
		return nil, fmt.Errorf("vault client from VAULT_* environment: %w", vc.Error)
	}
	if cfg.Address != "" {
		// The address given wins over VAULT_AGENT_ADDR too, which the
		// client would otherwise prefer.
		vc.Address, vc.AgentAddress = cfg.Address, ""
	}
	if cfg.CAFile != "" || cfg.ClientCertFile != "" {
		// ConfigureTLS adds to the TLS settings read from the environment.
		if err := vc.ConfigureTLS(&vault.TLSConfig{CACert: cfg.CAFile, ClientCert: cfg.ClientCertFile, ClientKey: cfg.ClientKeyFile}); err != nil {
			return nil, fmt.Errorf("vault TLS (caFile %q, clientCertFile %q): %w", cfg.CAFile, cfg.ClientCertFile, err)
		}
	}
	if cfg.InsecureSkipTLSVerify {
		if err := vc.ConfigureTLS(&vault.TLSConfig{Insecure: true}); err != nil {
			return nil, fmt.Errorf("vault TLS: %w", err)
		}
	}
	// What the client will do, not what the settings say: the VAULT_*
	// environment may have turned verification off, or named the address.
	skip := false
	if t, ok := vc.HttpClient.Transport.(*http.Transport); ok && t.TLSClientConfig != nil {
		skip = t.TLSClientConfig.InsecureSkipVerify
	}
	if skip && !cfg.InsecureSkipTLSVerify {
		return nil, fmt.Errorf("%w vault settings: VAULT_SKIP_VERIFY turns off the verification of Vault's certificate, so anyone on the path could pose as Vault: unset it and give Vault's CA (vault.caFile or VAULT_CACERT), or, DANGEROUS, allow it with vault.insecureSkipTLSVerify", ErrInvalid)
	}
	client, err := vault.NewClient(vc)
	if err != nil {
		return nil, fmt.Errorf("vault client for %s: %w", vc.Address, err)
	}
	// As NewClient picks it. A unix:// socket (a local Vault Agent) is
	// guarded by the file's permissions, not by TLS.
	addr := vc.Address
	if vc.AgentAddress != "" {
		addr = vc.AgentAddress
	}
	if u, err := url.Parse(addr); err == nil && u.Scheme == "http" {
		if !cfg.InsecureAllowHTTP {
			return nil, fmt.Errorf("%w vault settings: address %s is plain http: the Vault token and every key would cross the network unencrypted; use https:// (vault.address, VAULT_AGENT_ADDR or VAULT_ADDR), or, DANGEROUS, allow it with vault.insecureAllowHTTP", ErrInvalid, addr)
		}
		cfg.Logger.Warn("INSECURE: Vault is reached over plain http: anyone who can see the traffic gets the Vault token and every key",
			"address", addr, "setting", "vault.insecureAllowHTTP")
	}
	if skip {
		cfg.Logger.Warn("INSECURE: TLS certificate verification of Vault is OFF: anyone who can intercept the connection can pose as Vault and be handed the token and every key",
			"address", addr, "setting", "vault.insecureSkipTLSVerify")
	}
	if cfg.Namespace != "" {
		client.SetNamespace(cfg.Namespace)
	}
	return client, nil
}

// checkMount makes sure the KV mount exists, is version 2 and is usable by
// the token: on a KV version 1 mount, writes to "<mount>/data/..." would
// silently create plain secrets without versions or check-and-set, and on a
// missing mount reads would find nothing and look like an empty keyring.
// Vault answers 403 alike for a missing mount and for a token with no
// capability anywhere under it; both leave atrest unable to work.
func (s *Store) checkMount(ctx context.Context) error {
	const op = "check KV mount"
	p := "sys/internal/ui/mounts/" + s.cfg.KVMount
	sec, err := s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return s.client.Logical().ReadWithContext(ctx, p)
	})
	if err != nil {
		err = classify(err, capRead, s.client.Address())
		if errors.Is(err, ErrPermissionDenied) {
			err = fmt.Errorf("%w: there is no secrets engine at %q, or the token's policy grants nothing under it: check kvMount, and that the policy covers %s and %s",
				ErrPermissionDenied, s.cfg.KVMount, s.path("data", "*"), s.path("metadata", "*"))
		}
		return &OpError{Op: op, Path: p, Err: err}
	}
	if sec == nil || sec.Data == nil {
		return &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: no secrets engine is mounted at %q: enable one with `vault secrets enable -path=%s kv-v2`", ErrNotFound, s.cfg.KVMount, s.cfg.KVMount)}
	}
	typ, _ := sec.Data["type"].(string)
	opts, _ := sec.Data["options"].(map[string]any)
	version, _ := opts["version"].(string)
	if typ != "kv" || version != "2" {
		return &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: the secrets engine at %q is %q version %q, not kv version 2: atrest needs KV v2 for versions and check-and-set", ErrInvalid, s.cfg.KVMount, typ, version)}
	}
	return nil
}

// path returns the KV v2 API path of a document: kind is "data" or
// "metadata", rel is relative to <prefix>/<cluster>.
func (s *Store) path(kind, rel string) string {
	return path.Join(s.cfg.KVMount, kind, s.base, rel)
}
