package cluster

import (
	"slices"
	"testing"

	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
)

// TestKeyedKinds: every row of the table renders, parses back through
// kube-apiserver's validation, and is told apart from the other rows.
func TestKeyedKinds(t *testing.T) {
	if len(KeyedProviders) != len(keyedKinds) {
		t.Fatalf("KeyedProviders %v, table %d rows", KeyedProviders, len(keyedKinds))
	}
	for _, p := range KeyedProviders {
		t.Run(string(p), func(t *testing.T) {
			if !IsKeyed(p) || !slices.Contains(KeySizes(p), KeySize) {
				t.Fatalf("IsManaged %v, sizes %v: want true and %d among them", IsKeyed(p), KeySizes(p), KeySize)
			}
			k, err := NewKey(p, nil)
			if err != nil {
				t.Fatal(err)
			}
			data, err := ManagedConfig{Keys: []Key{k}}.Render()
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := ParseEncryptionConfig("test.yaml", "", data, "")
			if err != nil {
				t.Fatal(err)
			}
			got := cfg.Keys()
			if len(got) != 1 || got[0].Name != k.Name || got[0].Provider != p || got[0].Fingerprint() != k.Fingerprint() {
				t.Errorf("parsed keys %v, want %s %s", got, p, k.Name)
			}
			entry := newKeyProvider(p, apiserverv1.Key{Name: k.Name})
			if prov, keys := V1ProviderKeys(entry); prov != p || len(keys) != 1 {
				t.Errorf("V1ProviderKeys of a %s entry: %s %v", p, prov, keys)
			}
			for _, other := range KeyedProviders {
				if other != p && keyList(&entry, other) != nil {
					t.Errorf("a %s entry has a %s key list", p, other)
				}
			}
		})
	}
	for _, p := range []Provider{"identity", "kms", "aes"} {
		if IsKeyed(p) || KeySizes(p) != nil {
			t.Errorf("%s: managed %v, sizes %v", p, IsKeyed(p), KeySizes(p))
		}
	}
	if prov, keys := V1ProviderKeys(apiserverv1.ProviderConfiguration{Identity: &apiserverv1.IdentityConfiguration{}}); prov != "" || keys != nil {
		t.Errorf("identity: %s %v", prov, keys)
	}
}
