package settings

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Plain http, VAULT_SKIP_VERIFY and plaintext etcd are refused unless the
// DANGEROUS setting that names them allows them; the error names the
// setting or variable and the fix.
func TestValidateInsecure(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	ca := filepath.Join(dir, "ca.pem")
	writeFile(t, token, "s.x")
	writeFile(t, ca, "")
	vault := func(args ...string) []string { return append([]string{"--vault-token-file", token}, args...) }
	tests := []struct {
		name  string
		args  []string
		env   map[string]string // real environment (the Vault client reads it)
		needs []Need
		want  []string // empty: valid
		not   []string // must not be said
	}{
		{name: "vault https", args: vault("--vault-address", "https://vault.example:8200"), needs: []Need{NeedVault}},
		{name: "vault http refused", args: vault("--vault-address", "http://vault.example:8200"), needs: []Need{NeedVault},
			want: []string{`vault.address: "http://vault.example:8200" is plain http`, "use an https:// address", "DANGEROUS, allow it with vault.insecureAllowHTTP (--vault-insecure-allow-http, ATREST_VAULT_INSECURE_ALLOW_HTTP)", "(from flag --vault-address)"}},
		{name: "vault HTTP in capitals refused", args: vault("--vault-address", "HTTP://vault.example:8200"), needs: []Need{NeedVault},
			want: []string{"is plain http"}},
		{name: "vault http allowed", args: vault("--vault-address", "http://vault.example:8200", "--vault-insecure-allow-http"), needs: []Need{NeedVault}},
		{name: "VAULT_ADDR http refused", args: vault(), env: map[string]string{"VAULT_ADDR": "http://vault.example:8200"}, needs: []Need{NeedVault},
			want: []string{`VAULT_ADDR: "http://vault.example:8200" (environment variable) is plain http`, "vault.insecureAllowHTTP"}},
		{name: "VAULT_ADDR http allowed", args: vault("--vault-insecure-allow-http"), env: map[string]string{"VAULT_ADDR": "http://vault.example:8200"}, needs: []Need{NeedVault}},
		{name: "VAULT_AGENT_ADDR http refused", args: vault(), env: map[string]string{"VAULT_ADDR": "https://vault.example:8200", "VAULT_AGENT_ADDR": "http://127.0.0.1:8100"}, needs: []Need{NeedVault},
			want: []string{`VAULT_AGENT_ADDR: "http://127.0.0.1:8100" (environment variable) is plain http`}},
		{name: "vault.address wins over an http VAULT_ADDR", args: vault("--vault-address", "https://vault.example:8200"), env: map[string]string{"VAULT_ADDR": "http://x:8200", "VAULT_AGENT_ADDR": "http://y:8100"}, needs: []Need{NeedVault}},
		{name: "VAULT_ADDR unix socket", args: vault(), env: map[string]string{"VAULT_ADDR": "unix:///run/vault-agent.sock"}, needs: []Need{NeedVault}},
		{name: "VAULT_SKIP_VERIFY refused", args: vault("--vault-address", "https://vault.example:8200"), env: map[string]string{"VAULT_SKIP_VERIFY": "true"}, needs: []Need{NeedVault},
			want: []string{`VAULT_SKIP_VERIFY: "true" (environment variable) turns off the verification of Vault's certificate`, "unset it and give Vault's CA with vault.caFile (or VAULT_CACERT)", "DANGEROUS, allow it with vault.insecureSkipTLSVerify (--vault-insecure-skip-tls-verify, ATREST_VAULT_INSECURE_SKIP_TLS_VERIFY)"}},
		{name: "VAULT_SKIP_VERIFY=1 refused", args: vault("--vault-address", "https://vault.example:8200"), env: map[string]string{"VAULT_SKIP_VERIFY": "1"}, needs: []Need{NeedVault},
			want: []string{"VAULT_SKIP_VERIFY"}},
		{name: "VAULT_SKIP_VERIFY false", args: vault("--vault-address", "https://vault.example:8200"), env: map[string]string{"VAULT_SKIP_VERIFY": "false"}, needs: []Need{NeedVault}},
		{name: "VAULT_SKIP_VERIFY garbage", args: vault("--vault-address", "https://vault.example:8200"), env: map[string]string{"VAULT_SKIP_VERIFY": "sure"}, needs: []Need{NeedVault},
			want: []string{`VAULT_SKIP_VERIFY: "sure" (environment variable) is not true or false`}},
		{name: "VAULT_SKIP_VERIFY allowed", args: vault("--vault-address", "https://vault.example:8200", "--vault-insecure-skip-tls-verify"), env: map[string]string{"VAULT_SKIP_VERIFY": "true"}, needs: []Need{NeedVault}},
		// One allowance does not stand for the other.
		{name: "skip verify does not allow http", args: vault("--vault-address", "http://vault.example:8200", "--vault-insecure-skip-tls-verify"), needs: []Need{NeedVault},
			want: []string{"vault.address", "is plain http"}},
		{name: "http does not allow VAULT_SKIP_VERIFY", args: vault("--vault-address", "https://vault.example:8200", "--vault-insecure-allow-http"), env: map[string]string{"VAULT_SKIP_VERIFY": "true"}, needs: []Need{NeedVault},
			want: []string{"VAULT_SKIP_VERIFY"}},
		{name: "vault not needed", args: vault("--vault-address", "http://vault.example:8200", "--snapshots-dir", dir), env: map[string]string{"VAULT_SKIP_VERIFY": "true"}, needs: []Need{NeedSnapshots}},

		// The vault-transit provider's plugins reach Vault from the nodes:
		// their address is checked as atrest's own is.
		{name: "kms off: nothing checked", args: vault("--vault-address", "https://vault.example:8200", "--kms-vault-address", "http://x:8200"), needs: []Need{NeedVault}},
		{name: "kms plugins over https", args: vault("--vault-address", "https://vault.example:8200", "--kms-image", "atrest:v1", "--kms-vault-ca-file", "/etc/ssl/vault.pem"), needs: []Need{NeedVault}},
		{name: "kms plugins over http refused", args: vault("--vault-address", "https://vault.example:8200", "--kms-image", "atrest:v1", "--kms-vault-address", "http://10.0.0.5:8200"), needs: []Need{NeedVault},
			want: []string{`kms.vaultAddress: "http://10.0.0.5:8200" is plain http`, "DANGEROUS, allow it with kms.vaultInsecureAllowHTTP (--kms-vault-insecure-allow-http, ATREST_KMS_VAULT_INSECURE_ALLOW_HTTP)"}},
		{name: "kms plugins over http allowed", args: vault("--vault-address", "https://vault.example:8200", "--kms-image", "atrest:v1", "--kms-vault-address", "http://10.0.0.5:8200", "--kms-vault-insecure-allow-http"), needs: []Need{NeedVault}},
		{name: "kms plugins take vault.address, and its allowance does not stand for theirs", args: vault("--vault-address", "http://vault.example:8200", "--vault-insecure-allow-http", "--kms-image", "atrest:v1"), needs: []Need{NeedVault},
			want: []string{`kms.vaultAddress: "http://vault.example:8200" is plain http`}},
		{name: "kms names and paths", args: vault("--vault-address", "https://vault.example:8200", "--kms-image", "atrest:v1", "--kms-transit-key", "a/b", "--kms-transit-mount", "/transit", "--kms-vault-ca-file", "vault.pem", "--kms-await-timeout", "30s"), needs: []Need{NeedVault},
			want: []string{`kms.transitKey: "a/b" must be letters`, `kms.transitMount: "/transit" must be a path`, `kms.vaultCAFile: "vault.pem" must be an absolute path on the nodes`, "kms.awaitTimeout: must be at least 1m10s"}},

		{name: "etcd https with CA", args: []string{"--etcd-endpoints", "https://10.0.0.1:2379", "--etcd-ca-file", ca}, needs: []Need{NeedEtcd}},
		{name: "etcd http refused", args: []string{"--etcd-endpoints", "https://10.0.0.1:2379,http://10.0.0.2:2379", "--etcd-ca-file", ca}, needs: []Need{NeedEtcd},
			want: []string{`etcd.endpoints: "http://10.0.0.2:2379" is plaintext`, "use https:// with etcd.caFile", "DANGEROUS, allow it with etcd.insecureAllowHTTP (--etcd-insecure-allow-http, ATREST_ETCD_INSECURE_ALLOW_HTTP)", "(from flag --etcd-endpoints)"},
			not:  []string{"10.0.0.1"}},
		{name: "etcd http allowed", args: []string{"--etcd-endpoints", "http://10.0.0.2:2379", "--etcd-insecure-allow-http"}, needs: []Need{NeedEtcd}},
		// https is always verified: against etcd.caFile, which it needs.
		{name: "etcd https without CA", args: []string{"--etcd-endpoints", "https://10.0.0.1:2379", "--etcd-insecure-allow-http"}, needs: []Need{NeedEtcd},
			want: []string{"etcd.caFile: required for https"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"VAULT_ADDR", "VAULT_AGENT_ADDR", "VAULT_TOKEN", "VAULT_SKIP_VERIFY", "KUBECONFIG"} {
				t.Setenv(k, tt.env[k])
			}
			s, err := load(t, tt.args, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = s.Validate(tt.needs...)
			msg := ""
			if err != nil {
				msg = err.Error()
			}
			if len(tt.want) == 0 && err != nil {
				t.Fatalf("unexpected: %v", err)
			}
			if len(tt.want) > 0 && err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not contain %q:\n%s", w, msg)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(msg, n) {
					t.Errorf("error says %q:\n%s", n, msg)
				}
			}
		})
	}
}

// The settings file takes the DANGEROUS settings like any other.
func TestInsecureFromFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "settings.yaml")
	writeFile(t, file, "vault:\n  insecureAllowHTTP: true\n  insecureSkipTLSVerify: true\netcd:\n  insecureAllowHTTP: true\nkubernetes:\n  insecureSkipTLSVerify: true\n  insecureAllowHTTP: true\n")
	s, err := load(t, []string{"--settings", file}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Vault.InsecureAllowHTTP || !s.Vault.InsecureSkipTLSVerify || !s.Etcd.InsecureAllowHTTP || !s.Kubernetes.InsecureSkipTLSVerify || !s.Kubernetes.InsecureAllowHTTP {
		t.Errorf("not all read: %+v %+v %+v", s.Vault, s.Etcd, s.Kubernetes)
	}
	for _, f := range s.fields() {
		if strings.Contains(f.key, ".insecure") && !strings.HasPrefix(f.help, "DANGEROUS: ") {
			t.Errorf("%s: help %q does not start with DANGEROUS:", f.key, f.help)
		}
	}
}

// Insecure lists what is in effect, for the warning at start, and nothing
// that is merely allowed.
func TestInsecureList(t *testing.T) {
	t.Setenv("VAULT_ADDR", "")
	t.Setenv("VAULT_AGENT_ADDR", "")
	keys := func(args ...string) []string {
		s, err := load(t, args, nil)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, in := range s.Insecure(NeedVault, NeedEtcd) {
			out = append(out, in.Key)
		}
		return out
	}
	if got := keys("--vault-address", "https://v:8200", "--vault-insecure-allow-http", "--etcd-endpoints", "https://e:2379", "--etcd-insecure-allow-http"); len(got) != 0 {
		t.Errorf("allowed but not in effect: %v", got)
	}
	got := keys("--vault-address", "http://v:8200", "--vault-insecure-allow-http", "--vault-insecure-skip-tls-verify", "--etcd-endpoints", "http://e:2379", "--etcd-insecure-allow-http",
		"--kms-image", "atrest:v1", "--kms-vault-insecure-allow-http")
	if want := []string{"vault.insecureAllowHTTP", "kms.vaultInsecureAllowHTTP", "vault.insecureSkipTLSVerify", "etcd.insecureAllowHTTP"}; !slices.Equal(got, want) {
		t.Errorf("Insecure = %v, want %v", got, want)
	}
}
