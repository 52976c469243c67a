package settings

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestNames(t *testing.T) {
	tests := []struct{ key, env, flag string }{
		{"git.url", "ATREST_GIT_URL", "git-url"},
		{"git.sshKeyFile", "ATREST_GIT_SSH_KEY_FILE", "git-ssh-key-file"},
		{"vault.approleRoleID", "ATREST_VAULT_APPROLE_ROLE_ID", "vault-approle-role-id"},
		{"vault.approleSecretIDFile", "ATREST_VAULT_APPROLE_SECRET_ID_FILE", "vault-approle-secret-id-file"},
		{"vault.kvMount", "ATREST_VAULT_KV_MOUNT", "vault-kv-mount"},
		{"kubernetes.qps", "ATREST_KUBERNETES_QPS", "kubernetes-qps"},
		{"git.caFile", "ATREST_GIT_CA_FILE", "git-ca-file"},
		{"cluster.name", "ATREST_CLUSTER_NAME", "cluster-name"},
		{"policy.minRotationInterval", "ATREST_POLICY_MIN_ROTATION_INTERVAL", "policy-min-rotation-interval"},
		{"policy.allowKMS", "ATREST_POLICY_ALLOW_KMS", "policy-allow-kms"},
	}
	for _, tt := range tests {
		if got := EnvName(tt.key); got != tt.env {
			t.Errorf("EnvName(%s) = %s, want %s", tt.key, got, tt.env)
		}
		if got := FlagName(tt.key); got != tt.flag {
			t.Errorf("FlagName(%s) = %s, want %s", tt.key, got, tt.flag)
		}
	}
}

func load(t *testing.T, args []string, env map[string]string) (*Settings, error) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	l := Bind(fs)
	l.env = func(k string) string { return env[k] }
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return l.Load()
}

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "settings.yaml")
	writeFile(t, file, `cluster:
  name: prod-eu-1
git:
  url: file-url
  ref: file-ref
  path: clusters/prod
  interval: 2m
etcd:
  endpoints: [https://127.0.0.1:2379, https://127.0.0.2:2379]
kubernetes:
  qps: 50
ssh:
  insecureSkipHostKeyVerification: true
`)
	s, err := load(t, []string{"--settings", file, "--git-url", "flag-url"}, map[string]string{
		"ATREST_GIT_URL": "env-url",
		"ATREST_GIT_REF": "env-ref",
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.Git.URL != "flag-url" || s.Source("git.url") != "flag --git-url" {
		t.Errorf("flag should win: %q from %s", s.Git.URL, s.Source("git.url"))
	}
	if s.Git.Ref != "env-ref" || s.Source("git.ref") != "environment variable ATREST_GIT_REF" {
		t.Errorf("env should beat the file: %q", s.Git.Ref)
	}
	if s.Git.Path != "clusters/prod" || s.Git.Interval != 2*time.Minute || s.Kubernetes.QPS != 50 || !s.SSH.InsecureSkipHostKeyVerification {
		t.Errorf("file values: %+v %+v", s.Git, s.Kubernetes)
	}
	if len(s.Etcd.Endpoints) != 2 || s.Etcd.Endpoints[1] != "https://127.0.0.2:2379" {
		t.Errorf("endpoints = %v", s.Etcd.Endpoints)
	}
	if s.Cluster.Name != "prod-eu-1" || s.Source("cluster.name") != "settings file "+file {
		t.Errorf("cluster.name from the file: %q from %s", s.Cluster.Name, s.Source("cluster.name"))
	}
	if s.Vault.KVMount != "secret" || s.Source("vault.kvMount") != "default" {
		t.Errorf("default: %q", s.Vault.KVMount)
	}

	// ATREST_SETTINGS names the file when the flag does not.
	s, err = load(t, nil, map[string]string{"ATREST_SETTINGS": file})
	if err != nil || s.Git.URL != "file-url" {
		t.Fatalf("ATREST_SETTINGS: %v %q", err, s.Git.URL)
	}
	// The variable beats the file for cluster.name as for any setting.
	s, err = load(t, []string{"--settings", file}, map[string]string{"ATREST_CLUSTER_NAME": "prod-eu-2"})
	if err != nil || s.Cluster.Name != "prod-eu-2" || s.Source("cluster.name") != "environment variable ATREST_CLUSTER_NAME" {
		t.Fatalf("ATREST_CLUSTER_NAME: %v %q from %s", err, s.Cluster.Name, s.Source("cluster.name"))
	}
	// A bool flag without a value means true.
	s, err = load(t, []string{"--kubernetes-in-cluster"}, nil)
	if err != nil || !s.Kubernetes.InCluster {
		t.Fatalf("bool flag: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, "git:\n  urll: x\n  interval: soon\nvault:\n  token: inline\n")
	_, err := load(t, []string{"--settings", bad}, nil)
	for _, w := range []string{"git.urll: not a setting", "git.interval: \"soon\" is not a duration", "vault.token: not a setting"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error does not say %q: %v", w, err)
		}
	}
	_, err = load(t, nil, map[string]string{"ATREST_KUBERNETES_BURST": "lots"})
	if err == nil || !strings.Contains(err.Error(), "kubernetes.burst (from environment variable ATREST_KUBERNETES_BURST): \"lots\" is not a whole number") {
		t.Errorf("env error: %v", err)
	}
	_, err = load(t, []string{"--settings", filepath.Join(dir, "missing.yaml")}, nil)
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	known := filepath.Join(dir, "known_hosts")
	writeFile(t, known, "")
	tests := []struct {
		name  string
		args  []string
		needs []Need
		want  []string // empty: valid
	}{
		{"nothing needed", nil, nil, nil},
		{"bad log format", []string{"--log-format", "xml"}, nil, []string{"log.format: \"xml\" is not one of text, json (from flag --log-format)"}},
		{"git missing url", nil, []Need{NeedGit}, []string{"git.url: required", "set it with --git-url, ATREST_GIT_URL or git.url in the settings file"}},
		{"git ssh needs known_hosts", []string{"--git-url", "git@example.com:org/repo.git"}, []Need{NeedGit}, []string{"git.knownHostsFile: required for Git over SSH"}},
		{"git ssh ok", []string{"--git-url", "ssh://git@127.0.0.1/repo.git", "--git-known-hosts-file", known}, []Need{NeedGit}, nil},
		{"git path escapes", []string{"--git-url", "/srv/repo", "--git-path", "../x"}, []Need{NeedGit}, []string{"git.path: \"../x\" must be a folder inside the repository"}},
		{"git https password needs user", []string{"--git-url", "https://127.0.0.1/r.git", "--git-password-file", known}, []Need{NeedGit}, []string{"git.username: required with git.passwordFile"}},
		{"git missing file", []string{"--git-url", "https://127.0.0.1/r.git", "--git-ca-file", filepath.Join(dir, "nope.pem")}, []Need{NeedGit}, []string{"git.caFile: cannot use file", "nope.pem"}},
		{"vault approle", []string{"--vault-address", "http://127.0.0.1:8200", "--vault-auth-method", "approle"}, []Need{NeedVault}, []string{"vault.approleRoleID: required", "vault.approleSecretIDFile: required"}},
		{"vault bad method", []string{"--vault-address", "http://127.0.0.1:8200", "--vault-auth-method", "ldap"}, []Need{NeedVault}, []string{"vault.authMethod: \"ldap\" is not one of"}},
		{"vault bad prefix", []string{"--vault-address", "http://127.0.0.1:8200", "--vault-token-file", known, "--vault-prefix", "/atrest/"}, []Need{NeedVault}, []string{"vault.prefix: \"/atrest/\" must be a path"}},
		{"etcd https needs ca", []string{"--etcd-endpoints", "https://127.0.0.1:2379"}, []Need{NeedEtcd}, []string{"etcd.caFile: required for https"}},
		{"etcd bad url", []string{"--etcd-endpoints", "127.0.0.1:2379"}, []Need{NeedEtcd}, []string{"etcd.endpoints: \"127.0.0.1:2379\" is not an http(s)://host:port URL"}},
		{"ssh needs known_hosts", nil, []Need{NeedSSH}, []string{"ssh.knownHostsFile: required"}},
		{"ssh insecure named", []string{"--ssh-insecure-skip-host-key-verification"}, []Need{NeedSSH}, nil},
		{"snapshots", nil, []Need{NeedSnapshots}, []string{"snapshots.dir: required"}},
		{"webhook needs secret", []string{"--listen-webhook", "127.0.0.1:9796"}, []Need{NeedListen}, []string{"listen.webhookSecretFile: required"}},
		{"daemon backoff", []string{"--daemon-max-backoff", "0s"}, []Need{NeedListen}, []string{"daemon.maxBackoff: must be positive"}},
		{"ssh timeout past the lock's grace", []string{"--ssh-timeout", "2m", "--ssh-insecure-skip-host-key-verification"}, []Need{NeedSSH}, []string{"ssh.timeout: must be at most 1m"}},
		{"stall after none", []string{"--daemon-stall-after", "0", "--ssh-insecure-skip-host-key-verification"}, []Need{NeedSSH}, []string{"daemon.stallAfter: must be at least 1"}},
		{"git timeout", []string{"--git-url", "/srv/repo", "--git-timeout", "-1s"}, []Need{NeedGit}, []string{"git.timeout: must be positive"}},
		// Required signatures fail closed: without a trust file nothing
		// could be verified.
		{"signatures required, no trust file", []string{"--git-url", "/srv/repo", "--git-require-signatures"}, []Need{NeedGit}, []string{"git.requireSignatures: set git.allowedSignersFile or git.openPGPKeyringFile"}},
		{"signatures required, allowed signers", []string{"--git-url", "/srv/repo", "--git-require-signatures", "--git-allowed-signers-file", known}, []Need{NeedGit}, nil},
		{"rewrite workers", []string{"--kubernetes-kubeconfig", known, "--kubernetes-rewrite-workers", "0"}, []Need{NeedKubernetes}, []string{"kubernetes.rewriteWorkers: must be between 1 and 256, not 0"}},
		{"kubernetes ok", []string{"--kubernetes-kubeconfig", known, "--kubernetes-rewrite-workers", "64"}, []Need{NeedKubernetes}, nil},
		{"cluster name missing", nil, []Need{NeedCluster}, []string{"cluster.name: required: the cluster atrest manages", "set it with --cluster-name, ATREST_CLUSTER_NAME or cluster.name in the settings file"}},
		{"cluster name blank", []string{"--cluster-name", " "}, []Need{NeedCluster}, []string{"cluster.name: required", "(from flag --cluster-name)"}},
		{"cluster name with a slash", []string{"--cluster-name", "prod/eu-1"}, []Need{NeedCluster}, []string{`cluster.name: "prod/eu-1" must be letters, digits, '.', '_' or '-', starting with a letter or digit: it is one segment of a Vault path (from flag --cluster-name)`}},
		{"cluster name climbing up", []string{"--cluster-name", ".."}, []Need{NeedCluster}, []string{`cluster.name: ".." must be letters`}},
		{"cluster name with a space", []string{"--cluster-name", "prod eu"}, []Need{NeedCluster}, []string{`cluster.name: "prod eu" must be letters`}},
		{"cluster name leading dash", []string{"--cluster-name", "-prod"}, []Need{NeedCluster}, []string{`cluster.name: "-prod" must be letters`}},
		{"cluster name ok", []string{"--cluster-name", "prod-eu-1.example_2"}, []Need{NeedCluster}, nil},
		{"cluster name RKE's default", []string{"--cluster-name", "local"}, []Need{NeedCluster}, nil},
		// The bounds on commits are checked whatever the command needs.
		{"policy negative rotation floor", []string{"--policy-min-rotation-interval", "-1h"}, nil, []string{"policy.minRotationInterval: must not be negative, not -1h0m0s (0 sets no floor) (from flag --policy-min-rotation-interval)"}},
		{"policy no rotation floor", []string{"--policy-min-rotation-interval", "0s"}, nil, nil},
		{"policy retention floor none", []string{"--policy-min-snapshot-retention", "0"}, nil, []string{"policy.minSnapshotRetention: must be between 1 and 1000", "not 0 (from flag --policy-min-snapshot-retention)"}},
		{"policy retention floor past the bound", []string{"--policy-min-snapshot-retention", "1001"}, nil, []string{"policy.minSnapshotRetention: must be between 1 and 1000"}},
		{"policy retention floor 1", []string{"--policy-min-snapshot-retention", "1"}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("VAULT_ADDR", "")
			t.Setenv("VAULT_TOKEN", "")
			t.Setenv("KUBECONFIG", "")
			s, err := load(t, tt.args, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = s.Validate(tt.needs...)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

// The policy group parses from each source, with defaults that bound a
// commit unless the operator says otherwise.
func TestPolicySettings(t *testing.T) {
	s, err := load(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Policy{MinRotationInterval: time.Hour, MinSnapshotRetention: 2, AllowCustomConfig: true, AllowKMS: true}
	if s.Policy != want {
		t.Errorf("defaults = %+v, want %+v", s.Policy, want)
	}
	file := filepath.Join(t.TempDir(), "settings.yaml")
	writeFile(t, file, "policy:\n  minRotationInterval: 10s\n  minSnapshotRetention: 3\n  allowDisable: true\n  allowKMS: false\n")
	s, err = load(t, []string{"--settings", file, "--policy-allow-custom-config=false"}, map[string]string{"ATREST_POLICY_MIN_SNAPSHOT_RETENTION": "4"})
	if err != nil {
		t.Fatal(err)
	}
	want = Policy{MinRotationInterval: 10 * time.Second, MinSnapshotRetention: 4, AllowDisable: true}
	if s.Policy != want || s.Source("policy.allowDisable") != "settings file "+file || s.Source("policy.allowCustomConfig") != "flag --policy-allow-custom-config" {
		t.Errorf("loaded %+v (allowDisable from %s, allowCustomConfig from %s), want %+v", s.Policy, s.Source("policy.allowDisable"), s.Source("policy.allowCustomConfig"), want)
	}
	writeFile(t, file, "policy:\n  minRotationInterval: hourly\n  allowDisable: sometimes\n")
	_, err = load(t, []string{"--settings", file}, nil)
	for _, w := range []string{`policy.minRotationInterval: "hourly" is not a duration`, `policy.allowDisable: "sometimes" is not true or false`} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error does not say %q: %v", w, err)
		}
	}
}

func TestGitTransport(t *testing.T) {
	for url, want := range map[string]string{
		"ssh://git@host:22/org/repo.git": "ssh",
		"git@github.com:org/repo.git":    "ssh",
		"host:repo":                      "ssh",
		"https://host/org/repo.git":      "https",
		"http://127.0.0.1:8080/r.git":    "http",
		"/srv/git/repo":                  "file",
		"./repo":                         "file",
		"file:///srv/git/repo":           "file",
		"ftp://host/repo":                "",
		"repo":                           "",
	} {
		if got := GitTransport(url); got != want {
			t.Errorf("GitTransport(%q) = %q, want %q", url, got, want)
		}
	}
}

func writeFile(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
