package etcdsnap

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/atrest-io/atrest/cluster"
)

func TestRenderRestoreConfig(t *testing.T) {
	key := func(name string, p cluster.Provider, b byte) cluster.Key {
		s := make([]byte, 32)
		for i := range s {
			s[i] = b
		}
		return cluster.Key{Name: name, Provider: p, Secret: s}
	}
	tests := []struct {
		name      string
		resources []string
		keys      []cluster.Key
		want      []string // EncryptionConfig.Providers()
	}{
		{"no keys", []string{"secrets"}, nil, []string{"secrets: identity"}},
		{"one key", []string{"secrets"}, []cluster.Key{key("k-new01", cluster.AESCBC, 1)},
			[]string{"secrets: aescbc:v1:k-new01, identity"}},
		{"rotation in flight", []string{"secrets"},
			[]cluster.Key{key("k-new01", cluster.AESCBC, 1), key("k-old01", cluster.AESCBC, 2)},
			[]string{"secrets: aescbc:v1:k-new01, aescbc:v1:k-old01, identity"}},
		// Keys of one provider share one entry, providers in order of first
		// appearance, the first key first.
		{"providers interleaved", []string{"secrets", "configmaps"},
			[]cluster.Key{key("k-gcm01", cluster.AESGCM, 1), key("k-cbc01", cluster.AESCBC, 2), key("k-gcm02", cluster.AESGCM, 3), key("k-box01", cluster.Secretbox, 4)},
			[]string{"configmaps,secrets: aesgcm:v1:k-gcm01, aesgcm:v1:k-gcm02, aescbc:v1:k-cbc01, secretbox:v1:k-box01, identity"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			byName := map[string]cluster.Key{}
			for _, k := range tt.keys {
				byName[k.Name] = k
			}
			data, err := renderRestoreConfig(legacyLists(tt.resources, tt.keys), byName)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := cluster.ParseEncryptionConfig("restore.yaml", "", data, "")
			if err != nil {
				t.Fatalf("kube-apiserver would refuse it: %v\n%s", err, data)
			}
			if got := cfg.Providers(); !slices.Equal(got, tt.want) {
				t.Errorf("providers %q, want %q", got, tt.want)
			}
			for _, k := range tt.keys {
				if !strings.Contains(string(data), base64.StdEncoding.EncodeToString(k.Secret)) {
					t.Errorf("key %s is not in the config", k.Name)
				}
			}
		})
	}
}

// TestRenderRecordedConfig renders a manifest's recorded config: its lists
// stay as they were, with their writer, KMS providers are written as
// recorded, and kube-apiserver's validation accepts the result.
func TestRenderRecordedConfig(t *testing.T) {
	k1 := cluster.Key{Name: "k-one01", Provider: cluster.AESCBC, Secret: make([]byte, 32)}
	k2 := cluster.Key{Name: "k-two02", Provider: cluster.AESCBC, Secret: append(make([]byte, 31), 1)}
	k3 := cluster.Key{Name: "k-box03", Provider: cluster.Secretbox, Secret: append(make([]byte, 31), 2)}
	keys := map[string]cluster.Key{k1.Name: k1, k2.Name: k2, k3.Name: k3}
	ref := func(k cluster.Key) ProviderRef { return refOfEntry(cluster.EntryOf(k)) }
	id := ProviderRef{Kind: cluster.KindIdentity}
	kms := ProviderRef{Kind: cluster.KindKMS, Name: "vault", KMS: &KMSRef{APIVersion: "v2", Endpoint: "unix:///var/run/kms/vault.sock", Timeout: "3s"}}
	lists := []ResourceList{
		{Resources: []string{"secrets"}, Providers: []ProviderRef{ref(k2), ref(k1), ref(k3), id}},
		{Resources: []string{"configmaps", "events"}, Providers: []ProviderRef{kms, ref(k1), id}},
		{Resources: []string{"deployments.apps"}, Providers: []ProviderRef{id, ref(k3)}},
	}
	data, err := renderRestoreConfig(lists, keys)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := cluster.ParseEncryptionConfig("restore.yaml", "", data, "")
	if err != nil {
		t.Fatalf("kube-apiserver would refuse it: %v\n%s", err, data)
	}
	// Lists in the order the deploy renders them (by resource): without
	// wildcards, a resource is in one list, and their order means nothing.
	want := []string{
		"configmaps,events: kms:v2:vault, aescbc:v1:k-one01, identity",
		"deployments.apps: identity, secretbox:v1:k-box03",
		"secrets: aescbc:v1:k-two02, aescbc:v1:k-one01, secretbox:v1:k-box03, identity",
	}
	if got := cfg.Providers(); !slices.Equal(got, want) {
		t.Errorf("providers %q, want %q", got, want)
	}
	// Consecutive keys of one provider share its entry.
	if n := strings.Count(string(data), "aescbc:"); n != 2 {
		t.Errorf("%d aescbc entries, want 2 (one per list):\n%s", n, data)
	}
	for _, want := range []string{"endpoint: unix:///var/run/kms/vault.sock", "timeout: 3s", "apiVersion: v2"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("the KMS provider lacks %q:\n%s", want, data)
		}
	}
	lists[0].Providers = append(lists[0].Providers, ProviderRef{Kind: "aescbc", Name: "k-gone99"})
	if _, err := renderRestoreConfig(lists, keys); err == nil || !strings.Contains(err.Error(), "k-gone99") {
		t.Errorf("a key not fetched: %v", err)
	}
}

func TestWriteRestoreConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "restore.yaml")
	if err := WriteRestoreConfig(path, []byte("first"), false); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("written file: %v %v", st, err)
	}
	err = WriteRestoreConfig(path, []byte("second"), false)
	if err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("overwrite without asking: %v", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "first" {
		t.Errorf("the refused write changed the file: %q", data)
	}
	// An existing file with loose permissions is replaced by a 0600 one.
	os.Chmod(path, 0o644)
	if err := WriteRestoreConfig(path, []byte("second"), true); err != nil {
		t.Fatal(err)
	}
	st, _ = os.Stat(path)
	if data, _ := os.ReadFile(path); string(data) != "second" || st.Mode().Perm() != 0o600 {
		t.Errorf("after overwrite: %q, mode %v", data, st.Mode().Perm())
	}
	if err := WriteRestoreConfig(filepath.Join(dir, "no", "such", "dir.yaml"), []byte("x"), false); err == nil {
		t.Error("write into a missing directory succeeded")
	}
	if err := WriteRestoreConfig("", []byte("x"), false); err == nil {
		t.Error("write to an empty path succeeded")
	}
	if err := WriteRestoreConfig(dir, []byte("x"), true); err == nil {
		t.Error("overwriting a directory succeeded")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}

func TestRestoreInstructions(t *testing.T) {
	m := testManifest("etcd-20260102T030405.000Z")
	m.Size, m.SHA256, m.EtcdVersion, m.EtcdRevision = 4128, strings.Repeat("0f", 32), "3.5.21", 4242
	d, _ := NewLocalDir(t.TempDir())
	got := RestoreInstructionsIn(d, m, "/root/restore.yaml")
	for _, want := range []string{
		"etcdutl snapshot restore " + d.Path(m.Name+".db"),
		"ETCDCTL_API=3 etcdctl snapshot restore " + d.Path(m.Name+".db"),
		"rke etcd snapshot-restore --config cluster.yml --name " + m.Name,
		"/opt/rke/etcd-snapshots/" + m.Name,
		"--encryption-provider-config=/etc/kubernetes/ssl/encryption.yaml",
		"install -m 0600 /root/restore.yaml /etc/kubernetes/ssl/encryption.yaml",
		"custom_config",
		"k-abcde (aescbc, sha256:0123456789abcdef0123456789abcdef)",
		"atrest snapshot verify " + m.Name,
		m.SHA256, "revision >= 4242",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("instructions lack %q:\n%s", want, got)
		}
	}
	if !strings.Contains(got, "read every object in this snapshot.") {
		t.Errorf("instructions for a snapshot every key of which is known:\n%s", got)
	}
	m.Keys = nil
	if got := RestoreInstructions(m, "r.yaml"); !strings.Contains(got, "identity only") {
		t.Errorf("instructions for a plain snapshot:\n%s", got)
	}
}

// TestRestoreInstructionsClaimOnlyWhatTheyRead: a snapshot with KMS
// objects, or objects under a key nobody holds, is never said to be read
// whole by the file.
func TestRestoreInstructionsClaimOnlyWhatTheyRead(t *testing.T) {
	kms := ProviderRef{Kind: cluster.KindKMS, Name: "vault", KMS: &KMSRef{APIVersion: "v2", Endpoint: "unix:///var/run/kms/vault.sock"}}
	base := testManifest("etcd-20260102T030405.000Z")
	base.Config = []ResourceList{{Resources: []string{"secrets"}, Providers: []ProviderRef{kms, {Kind: "aescbc", Name: "k-abcde", Fingerprint: base.Keys[0].Fingerprint}, {Kind: "identity"}}}}
	for _, tt := range []struct {
		name       string
		unreadable []Unreadable
		want       []string
	}{
		{"kms", nil, []string{"only\nwhile their plugins run", "KMS v2 provider vault at unix:///var/run/kms/vault.sock"}},
		{"kms and unreadable", []Unreadable{{Resource: "secrets", Prefix: "aescbc:v1:k-lost1", Count: 7}},
			[]string{"CANNOT read", "7 secrets under aescbc:v1:k-lost1", "while their plugins run"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := base
			m.Unreadable = tt.unreadable
			got := RestoreInstructions(m, "r.yaml")
			if strings.Contains(got, "read every object in this snapshot.") {
				t.Errorf("the instructions claim the file reads everything:\n%s", got)
			}
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("instructions lack %q:\n%s", w, got)
				}
			}
		})
	}
}
