package reconciler

import (
	"strings"
	"testing"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/keystore"
)

// A keyring written before DeployedHash was the canonical rendering's
// hash holds the hash of RenderChains' bytes: for keys (no KMS, whose
// defaults a parse fills in) they are the same bytes.
func TestRenderChainsIsCanonical(t *testing.T) {
	file := fileOf(t, rkeKey, cluster.Key{Name: "k-b", Provider: cluster.AESCBC, Secret: []byte("0123456789abcdef")})
	cfg, err := cluster.ParseEncryptionConfig("f", "", file, "")
	if err != nil {
		t.Fatal(err)
	}
	if string(cfg.Render()) != string(file) {
		t.Fatalf("RenderChains:\n%s\ncanonical:\n%s", file, cfg.Render())
	}
}

func TestConfigInForce(t *testing.T) {
	file := fileOf(t, rkeKey)
	cfg, err := cluster.ParseEncryptionConfig("f", "", file, "")
	if err != nil {
		t.Fatal(err)
	}
	// The same config as RKE lays it out: other bytes.
	rkeLayout := []byte("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n  - secrets\n  providers:\n  - aescbc:\n      keys:\n      - name: key-x7k2p\n        secret: RTczRjFDODMwQzAyMDVBREU4NDJBMUZFNDhCNzM5N0I=\n  - identity: {}\n\n")
	deployed := keystore.ConfigHash(cfg.Render())
	vault := func(name string) (cluster.Key, error) {
		if name == rkeKey.Name {
			return rkeKey, nil
		}
		return cluster.Key{}, keystore.ErrNotFound
	}
	reloading := func(s controlplane.NodeState) controlplane.NodeState {
		s.APIServer.EncryptionProviderConfig = fakeFile
		s.APIServer.ProviderFileInContainer = fakeFile
		s.APIServer.AutomaticReload = true
		s.Load = controlplane.LoadInForce
		return s
	}
	ok := []controlplane.NodeState{reloading(stateWith("cp1", file)), reloading(stateWith("cp2", rkeLayout))}
	for _, tc := range []struct {
		name   string
		states []controlplane.NodeState
		kr     keystore.Keyring
		keys   func(string) (cluster.Key, error)
		want   string // "" for in force
	}{
		{"in force, either layout", ok, keystore.Keyring{DeployedHash: deployed}, vault, ""},
		{"none in force", []controlplane.NodeState{stateWith("cp1", nil)}, keystore.Keyring{}, vault, ""},
		{"in flight", ok, keystore.Keyring{DeployedHash: deployed, Journal: &keystore.Journal{Transition: "rotate", Revision: "r2"}}, vault, "a transition is in flight (rotate"},
		{"not ready", []controlplane.NodeState{{Node: "cp1", NotReady: "readyz: 503"}}, keystore.Keyring{}, vault, "node cp1 is not ready (readyz: 503)"},
		{"unloaded", []controlplane.NodeState{func() controlplane.NodeState {
			s := reloading(stateWith("cp1", file))
			s.Load = controlplane.LoadUnknown
			return s
		}()}, keystore.Keyring{DeployedHash: deployed}, vault, "not proven to run its provider file"},
		{"nodes differ", []controlplane.NodeState{reloading(stateWith("cp1", file)), stateWith("cp2", nil)}, keystore.Keyring{DeployedHash: deployed}, vault, "node cp1 and node cp2 run different configs"},
		{"not atrest's", ok, keystore.Keyring{DeployedHash: "sha256:other"}, vault, "not the one atrest last deployed"},
		{"key not in Vault", ok, keystore.Keyring{DeployedHash: deployed}, func(string) (cluster.Key, error) { return cluster.Key{}, keystore.ErrNotFound }, "is not in Vault"},
		{"other material", ok, keystore.Keyring{DeployedHash: deployed}, func(string) (cluster.Key, error) {
			k := rkeKey
			k.Secret = []byte("fedcba9876543210fedcba9876543210")
			return k, nil
		}, "the nodes hold other material"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ConfigInForce(tc.states, &tc.kr, "", tc.keys)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tc.kr.DeployedHash != "" && (got.Config == nil || !got.Reload) {
					t.Fatalf("got %+v", got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
			if ReasonOf(err) == "" {
				t.Errorf("no reason: %v", err)
			}
		})
	}
}
