package cluster

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func mustKey(t *testing.T, p Provider, taken ...string) Key {
	t.Helper()
	k, err := NewKey(p, taken)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestNewKey(t *testing.T) {
	nameRE := regexp.MustCompile(`^k-[a-z0-9]{5}$`)
	var taken []string
	for range 200 {
		k := mustKey(t, AESCBC, taken...)
		if !nameRE.MatchString(k.Name) {
			t.Fatalf("name %q is not RKE-style", k.Name)
		}
		if slices.Contains(taken, k.Name) {
			t.Fatalf("name %q reused", k.Name)
		}
		if len(k.Secret) != KeySize {
			t.Fatalf("secret is %d bytes", len(k.Secret))
		}
		taken = append(taken, k.Name)
	}
	a, b := mustKey(t, AESCBC), mustKey(t, AESCBC)
	if bytes.Equal(a.Secret, b.Secret) {
		t.Fatal("two keys share material")
	}
	if _, err := NewKey("kms", nil); err == nil {
		t.Fatal("NewKey accepted provider kms")
	}
}

func TestKeyNeverShowsMaterial(t *testing.T) {
	k := mustKey(t, Secretbox)
	material := base64.StdEncoding.EncodeToString(k.Secret)
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	log.Info("key", "key", k, "secret", k.Secret)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("key", "key", k)
	j, _ := json.Marshal(k)
	out := strings.Join([]string{
		logs.String(), string(j),
		fmt.Sprintf("%v %+v %#v %s", k, k, k, k.Secret),
	}, "\n")
	if strings.Contains(out, material) || bytes.Contains([]byte(out), k.Secret) {
		t.Fatalf("key material shown:\n%s", out)
	}
	if !strings.Contains(logs.String(), k.Fingerprint()) || !strings.Contains(logs.String(), k.Name) {
		t.Fatalf("logs should name the key and its fingerprint:\n%s", logs.String())
	}
	if n := Sensitive("-----BEGIN OPENSSH PRIVATE KEY-----"); fmt.Sprint(n) != redacted {
		t.Fatal("Sensitive printed its value")
	}
}

func TestFingerprint(t *testing.T) {
	k := Key{Name: "k-aaaaa", Provider: AESCBC, Secret: bytes.Repeat([]byte{1}, 32)}
	if k.Fingerprint() != Fingerprint(bytes.Repeat([]byte{1}, 32)) {
		t.Fatal("fingerprint not stable")
	}
	if k.Fingerprint() == Fingerprint(bytes.Repeat([]byte{2}, 32)) {
		t.Fatal("fingerprints collide")
	}
	if !strings.HasPrefix(k.Fingerprint(), "sha256:") || len(k.Fingerprint()) != len("sha256:")+32 {
		t.Fatalf("fingerprint %q", k.Fingerprint())
	}
}

// TestManagedPhases renders every phase of every managed transition and
// checks that kube-apiserver's own validation accepts it, that the writer is
// the one the phase needs, and that the bytes are deterministic.
func TestManagedPhases(t *testing.T) {
	old := mustKey(t, AESCBC)
	next := mustKey(t, AESCBC, old.Name)
	box := mustKey(t, Secretbox, old.Name, next.Name)
	tests := []struct {
		name      string
		phase     ManagedConfig
		providers string // EncryptionConfig.Providers()[0]
	}{
		{"enable 1: identity writes, K reads", ManagedConfig{IdentityFirst: true, Keys: []Key{old}},
			"secrets: identity, aescbc:v1:" + old.Name},
		{"enable 2: K writes", ManagedConfig{Keys: []Key{old}},
			"secrets: aescbc:v1:" + old.Name + ", identity"},
		{"rotate 1: new reads", ManagedConfig{Keys: []Key{old, next}},
			"secrets: aescbc:v1:" + old.Name + ", aescbc:v1:" + next.Name + ", identity"},
		{"rotate 2: new writes", ManagedConfig{Keys: []Key{next, old}},
			"secrets: aescbc:v1:" + next.Name + ", aescbc:v1:" + old.Name + ", identity"},
		{"rotate 3: old dropped", ManagedConfig{Keys: []Key{next}},
			"secrets: aescbc:v1:" + next.Name + ", identity"},
		{"provider change: secretbox reads beside aescbc", ManagedConfig{Keys: []Key{next, box}},
			"secrets: aescbc:v1:" + next.Name + ", secretbox:v1:" + box.Name + ", identity"},
		{"disable: identity writes, both read", ManagedConfig{IdentityFirst: true, Keys: []Key{next, old}},
			"secrets: identity, aescbc:v1:" + next.Name + ", aescbc:v1:" + old.Name},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := tt.phase.Render()
			if err != nil {
				t.Fatal(err)
			}
			again, _ := tt.phase.Render()
			if !bytes.Equal(data, again) {
				t.Fatal("render is not deterministic")
			}
			cfg, err := ParseEncryptionConfig("phase", "", data, "")
			if err != nil {
				t.Fatalf("rendered phase does not validate: %v\n", err)
			}
			if got := cfg.Providers(); len(got) != 1 || got[0] != tt.providers {
				t.Errorf("providers = %q, want %q", got, tt.providers)
			}
			if !bytes.Equal(cfg.Render(), data) {
				t.Errorf("canonical render differs from managed render:\n%s\n---\n%s", cfg.Render(), data)
			}
			keys := cfg.Keys()
			if len(keys) != len(tt.phase.Keys) {
				t.Fatalf("parsed %d keys, want %d", len(keys), len(tt.phase.Keys))
			}
			for i, k := range keys {
				w := tt.phase.Keys[i]
				if k.Name != w.Name || k.Provider != w.Provider || !bytes.Equal(k.Secret, w.Secret) {
					t.Errorf("key %d round trip: got %s/%s", i, k.Name, k.Provider)
				}
			}
		})
	}
}

func TestManagedRenderErrors(t *testing.T) {
	k := mustKey(t, AESCBC)
	for name, m := range map[string]ManagedConfig{
		"no keys":      {},
		"same key x2":  {Keys: []Key{k, k}},
		"kms provider": {Keys: []Key{{Name: "x", Provider: "kms", Secret: k.Secret}}},
	} {
		if _, err := m.Render(); err == nil {
			t.Errorf("%s: Render accepted it", name)
		} else if strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(k.Secret)) {
			t.Errorf("%s: error shows key material", name)
		}
	}
}
