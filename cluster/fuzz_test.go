package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, and that whatever it accepts
// renders to an EncryptionConfiguration that validates: for a managed
// cluster, every phase with generated keys; for a custom one, its canonical
// form. The seed corpus (testdata and testdata/fuzz) runs as a normal test.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(withConfig("        resources:\n          - resources: [secrets, configmaps]\n            providers:\n              - aesgcm:\n                  keys:\n                    - name: a\n                      secret: " + key32 + "\n              - identity: {}\n")))
	f.Add([]byte("nodes: [{address: a, user: u, role: [controlplane]}]\nservices: {kube-api: {secrets_encryption_config: {enabled: true}}}\n"))
	f.Add([]byte("- a\n"))
	f.Add([]byte("nodes:\n\t- a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("cluster.yml", data)
		if err != nil {
			if cfg != nil {
				t.Fatal("config returned with an error")
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "cluster.yml: ") {
					t.Fatalf("error line does not name the file: %q", line)
				}
			}
			return
		}
		switch cfg.Desired.Mode {
		case Managed:
			a, err := NewKey(AESCBC, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, err := NewKey(AESCBC, []string{a.Name})
			if err != nil {
				t.Fatal(err)
			}
			for _, phase := range []ManagedConfig{
				{IdentityFirst: true, Keys: []Key{a}}, {Keys: []Key{a}}, {Keys: []Key{a, b}}, {Keys: []Key{b, a}},
			} {
				rendered, err := phase.Render()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := ParseEncryptionConfig("rendered", "", rendered, ""); err != nil {
					t.Fatalf("rendered managed phase does not validate: %v", err)
				}
			}
		case Custom:
			if _, err := ParseEncryptionConfig("rendered", "", cfg.Desired.Custom.Render(), cfg.KubeAPI.ExtraArgs["feature-gates"]); err != nil {
				t.Fatalf("accepted custom config does not validate once rendered: %v", err)
			}
		case Disabled:
		default:
			t.Fatalf("unknown mode %q", cfg.Desired.Mode)
		}
	})
}
