package examples

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/settings"
	"github.com/atrest-io/atrest/settings/settingstest"
)

// TestValidate runs `atrest validate` on every example cluster.yml (with the
// atrest.yaml beside it, if any) and checks the summary says what the
// example is meant to be.
func TestValidate(t *testing.T) {
	tests := []struct {
		config string
		policy string // --policy; "" lets atrest find atrest.yaml beside the config
		want   []string
	}{
		{
			config: "cluster.yml",
			want: []string{
				`cluster.yml: valid: cluster "prod-eu-1", 3 controlplane node(s) (cp-1, cp-2, cp-3), encryption managed;`,
				`atrest.yaml: managed provider aescbc, rotation "CRON_TZ=UTC 0 3 1 * *" (next `,
				"-01T03:00:00Z), snapshot retention 12",
			},
		},
		{
			config: "cluster.yml", policy: "atrest.yaml",
			want: []string{`encryption managed; atrest.yaml: managed provider aescbc, rotation "CRON_TZ=UTC 0 3 1 * *"`},
		},
		{
			config: "custom-aescbc/cluster.yml",
			want:   []string{`valid: cluster "prod-eu-1", 3 controlplane node(s) (cp-1, cp-2, cp-3), encryption custom (secrets: aescbc:v1:k-fw5hn, identity)`},
		},
		{
			config: "custom-aws-kms/cluster.yml",
			want:   []string{`valid: cluster "prod-eu-1", 3 controlplane node(s) (cp-1, cp-2, cp-3), encryption custom (secrets: kms:v2:aws-encryption-provider, identity)`},
		},
	}
	tested := map[string]bool{}
	for _, tt := range tests {
		tested[tt.config], tested[tt.policy] = true, true
		t.Run(tt.config+"+"+tt.policy, func(t *testing.T) {
			args := []string{"validate", "--config", tt.config}
			if tt.policy != "" {
				args = append(args, "--policy", tt.policy)
			}
			code, out := atrest(t, nil, args...)
			if code != 0 {
				t.Fatalf("atrest %s: exit %d:\n%s", strings.Join(args, " "), code, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("atrest %s says\n%s\nwant it to contain %q", strings.Join(args, " "), out, w)
				}
			}
		})
	}
	// An example added without a case here would go unchecked.
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (d.Name() == "cluster.yml" || d.Name() == "atrest.yaml") && !tested[p] {
			t.Errorf("example %s has no case in TestValidate", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSettingsExample loads settings.yaml the way atrest does (unknown keys
// and malformed values are errors) and validates it for everything `atrest
// run` needs. The files it names live on the host that runs atrest, so they
// are checked for form (absolute paths) and then stood in for by empty files:
// what is checked is every rule that does not depend on the files' contents.
func TestSettingsExample(t *testing.T) {
	settingstest.ClearEnv(t)
	t.Setenv("ATREST_SETTINGS", "settings.yaml")
	s, err := settings.Bind(pflag.NewFlagSet("test", pflag.ContinueOnError)).Load()
	if err != nil {
		t.Fatalf("load examples/settings.yaml: %v", err)
	}
	for key, want := range map[string]string{
		"git.url": "settings file settings.yaml", "vault.authMethod": "settings file settings.yaml",
		"etcd.endpoints": "settings file settings.yaml", "daemon.maxBackoff": "settings file settings.yaml",
		"cluster.name": "settings file settings.yaml",
	} {
		if got := s.Source(key); got != want {
			t.Errorf("%s comes from %q, want %q", key, got, want)
		}
	}

	// The example settings are the example cluster's: atrest would refuse
	// its cluster.yml otherwise.
	cfg, err := cluster.Load("cluster.yml")
	if err != nil {
		t.Fatal(err)
	}
	if s.Cluster.Name != cfg.ClusterName {
		t.Errorf("settings.yaml pins cluster.name %q, but cluster.yml's cluster_name is %q", s.Cluster.Name, cfg.ClusterName)
	}

	dir := t.TempDir()
	files := settingstest.Files(s)
	if len(files) < 10 {
		t.Fatalf("found %d file settings in the example, want every credential as a file (at least 10)", len(files))
	}
	for name, p := range files {
		if !filepath.IsAbs(*p) {
			t.Errorf("%s: %q is not an absolute path: atrest's working directory is not the operator's", name, *p)
		}
		stand := filepath.Join(dir, strings.ReplaceAll(name, ".", "-"))
		if err := os.WriteFile(stand, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		*p = stand
	}
	if !filepath.IsAbs(s.Snapshots.Dir) {
		t.Errorf("snapshots.dir %q is not absolute", s.Snapshots.Dir)
	}
	all := []settings.Need{settings.NeedCluster, settings.NeedGit, settings.NeedVault, settings.NeedEtcd, settings.NeedKubernetes, settings.NeedSSH, settings.NeedSnapshots, settings.NeedListen}
	if err := s.Validate(all...); err != nil {
		t.Fatalf("examples/settings.yaml is not what `atrest run` accepts:\n%v", err)
	}
}

// TestVaultPolicyScope checks, without Vault, that the example policies
// (the daemon's and the operator's for destroy-retired) name only the
// example cluster's documents and the token's own: a policy that reached
// other clusters' keys would pass the sandbox test too. Neither reads what
// it should not: the daemon's cannot delete key material, the destroy
// policy reads none. The sandbox tier proves the capabilities with a real
// Vault.
func TestVaultPolicyScope(t *testing.T) {
	cfg, err := cluster.Load("cluster.yml")
	if err != nil {
		t.Fatal(err)
	}
	base := "atrest/" + cfg.ClusterName + "/"
	keys := "secret/metadata/" + base + "keys/*"
	transitKey := "atrest-" + cfg.ClusterName
	plugin := "auth/approle/role/atrest-kms-" + cfg.ClusterName + "/"
	// The vault-transit provider's paths: its one Transit key and its
	// plugins' one AppRole role, never another cluster's.
	transit := map[string]bool{
		"transit/keys/" + transitKey: true, "transit/keys/" + transitKey + "/rotate": true, "transit/keys/" + transitKey + "/config": true,
		"transit/encrypt/" + transitKey: true, "transit/decrypt/" + transitKey: true,
		plugin + "role-id": true, plugin + "secret-id": true, plugin + "secret-id-accessor/destroy": true,
	}
	for _, file := range []string{"vault-policy.hcl", "vault-policy-destroy.hcl", "vault-policy-kms-plugin.hcl"} {
		t.Run(file, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			pathRE := regexp.MustCompile(`(?m)^path "([^"]+)" \{\n  capabilities = \[([^\]]*)\]\n\}`)
			blocks := pathRE.FindAllStringSubmatch(string(data), -1)
			if n := strings.Count(string(data), "\npath "); n != len(blocks) {
				t.Fatalf("%s has %d path blocks, %d of them in the form this test reads", file, n, len(blocks))
			}
			allowed := []string{"secret/data/" + base, "secret/metadata/" + base}
			var paths []string
			caps := map[string]string{}
			for _, b := range blocks {
				p, c := b[1], b[2]
				paths = append(paths, p)
				caps[p] = c
				switch {
				case p == "auth/token/lookup-self" || p == "auth/token/renew-self":
				case transit[p] && file != "vault-policy-destroy.hcl":
					if file == "vault-policy-kms-plugin.hcl" && !strings.HasPrefix(p, "transit/encrypt/") && !strings.HasPrefix(p, "transit/decrypt/") {
						t.Errorf("path %q: the plugin encrypts and decrypts, nothing else", p)
					}
					if strings.Contains(c, "delete") {
						t.Errorf("path %q: capabilities [%s]: atrest never deletes a Transit key or version", p, c)
					}
				case slices.ContainsFunc(allowed, func(a string) bool { return strings.HasPrefix(p, a) }):
					if strings.Contains(strings.TrimPrefix(p, "secret/"), "+") || strings.Count(p, "*") > 1 || (strings.Contains(p, "*") && !strings.HasSuffix(p, "/*")) {
						t.Errorf("path %q: a wildcard other than a trailing /* reaches beyond one cluster's documents", p)
					}
				default:
					t.Errorf("path %q is neither under %v nor the token's own", p, allowed)
				}
				if strings.Contains(c, "sudo") || strings.Contains(c, "deny") {
					t.Errorf("path %q: capabilities [%s]", p, c)
				}
			}
			if len(paths) != len(slices.Compact(slices.Sorted(slices.Values(paths)))) {
				t.Errorf("a path is listed twice: %v", paths)
			}
			switch file {
			case "vault-policy.hcl":
				if c, ok := caps[keys]; !ok || strings.Contains(c, "delete") {
					t.Errorf("%s: the daemon's policy grants [%s] on %s: it must not delete key material", file, c, keys)
				}
			case "vault-policy-kms-plugin.hcl":
				if len(paths) != 2 {
					t.Errorf("%s has paths %v: want encrypt and decrypt on the one Transit key", file, paths)
				}
			case "vault-policy-destroy.hcl":
				if caps[keys] != `"delete"` {
					t.Errorf("%s grants [%s] on %s, want exactly delete", file, caps[keys], keys)
				}
				if c, ok := caps["secret/data/"+base+"keys/*"]; ok {
					t.Errorf("%s grants [%s] on the key material: destroy-retired reads none", file, c)
				}
			}
		})
	}
}

// TestKubernetesAuthScriptParses catches a syntax error in the script
// without Vault; the sandbox tier runs it.
func TestKubernetesAuthScriptParses(t *testing.T) {
	if out, err := exec.Command("bash", "-n", "vault-kubernetes-auth.sh").CombinedOutput(); err != nil {
		t.Fatalf("bash -n vault-kubernetes-auth.sh: %v\n%s", err, out)
	}
	st, err := os.Stat("vault-kubernetes-auth.sh")
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&0o111 == 0 {
		t.Errorf("vault-kubernetes-auth.sh is not executable (%v)", st.Mode())
	}
}
