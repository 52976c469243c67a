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
			[]string{"secrets,configmaps: aesgcm:v1:k-gcm01, aesgcm:v1:k-gcm02, aescbc:v1:k-cbc01, secretbox:v1:k-box01, identity"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := renderRestoreConfig(tt.resources, tt.keys)
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
	m.Keys = nil
	if got := RestoreInstructions(m, "r.yaml"); !strings.Contains(got, "identity only") {
		t.Errorf("instructions for a plain snapshot:\n%s", got)
	}
}
