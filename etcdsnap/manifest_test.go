package etcdsnap

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestManifestRequestChecks(t *testing.T) {
	good := testManifest("")
	tests := []struct {
		name    string
		edit    func(*Manifest)
		wantErr string
	}{
		{"good", func(*Manifest) {}, ""},
		{"no keys (encryption off)", func(m *Manifest) { m.Keys = nil }, ""},
		{"no reason", func(m *Manifest) { m.Reason = " " }, "reason: required"},
		{"bad name", func(m *Manifest) { m.Name = "../etc" }, "snapshot name"},
		{"name ending .part", func(m *Manifest) { m.Name = "x.part" }, "snapshot name"},
		{"negative keyring version", func(m *Manifest) { m.KeyringVersion = -1 }, "keyringVersion"},
		{"key without name", func(m *Manifest) { m.Keys[0].Name = "" }, "keys[0].name: required"},
		{"key without provider", func(m *Manifest) { m.Keys[0].Provider = "" }, "provider: required"},
		{"key material as fingerprint", func(m *Manifest) {
			m.Keys[0].Fingerprint = "c2VjcmV0LWtleS1tYXRlcmlhbC0zMi1ieXRlcy0hISE="
		}, "fingerprint: must be"},
		{"key twice", func(m *Manifest) { m.Keys = append(m.Keys, m.Keys[0]) }, "listed twice"},
		{"empty resource", func(m *Manifest) { m.Resources = []string{""} }, "resources[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := good
			m.Keys = slices.Clone(good.Keys)
			tt.edit(&m)
			err := m.checkRequest()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "c2VjcmV0") {
				t.Errorf("the error echoes what may be key material: %v", err)
			}
		})
	}
}

func TestReadManifest(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d, _ := NewLocalDir(dir)
	m := testManifest("snap-1")
	m.Size, m.SHA256 = 1024+32, strings.Repeat("ab", 32)
	if err := writeManifest(ctx, d, m); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(filepath.Join(dir, "snap-1.json"))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("manifest mode %v", st.Mode().Perm())
	}
	got, err := ReadManifest(ctx, d, "snap-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != m.Name || !got.Time.Equal(m.Time) || got.Keys[0] != m.Keys[0] || got.SHA256 != m.SHA256 {
		t.Errorf("read back %+v, wrote %+v", got, m)
	}
	if err := writeManifest(ctx, d, m); err == nil {
		t.Error("a second manifest under the same name was written")
	}

	bad := map[string]string{
		"wrong-name":   strings.Replace(mustEncode(t, m), `"snap-1"`, `"other"`, 1),
		"future":       strings.Replace(mustEncode(t, m), `"format": 1`, `"format": 2`, 1),
		"not-json":     "{",
		"no-sha":       strings.Replace(mustEncode(t, m), m.SHA256, "", 1),
		"bad-key-hash": strings.Replace(mustEncode(t, m), m.Keys[0].Fingerprint, "secret", 1),
	}
	for name, content := range bad {
		os.WriteFile(filepath.Join(dir, name+".json"), []byte(content), 0o600)
		if _, err := ReadManifest(ctx, d, name); err == nil || !strings.Contains(err.Error(), name+".json") {
			t.Errorf("%s: ReadManifest = %v, want an error naming the file", name, err)
		}
	}
	if _, err := List(ctx, d); err == nil || !strings.Contains(err.Error(), "fix or remove") {
		t.Errorf("List with broken manifests: %v", err)
	}
}

func mustEncode(t *testing.T, m Manifest) string {
	data, err := m.encode()
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestNewNameSortsByTime(t *testing.T) {
	t0 := time.Date(2026, 12, 31, 23, 59, 59, 999e6, time.UTC)
	names := []string{NewName(t0.Add(time.Millisecond)), NewName(t0), NewName(t0.Add(-time.Hour))}
	if !slices.IsSorted([]string{names[2], names[1], names[0]}) {
		t.Errorf("names do not sort by time: %v", names)
	}
	for _, n := range names {
		if err := checkName(n); err != nil {
			t.Error(err)
		}
	}
	if names[1] != "etcd-20261231T235959.999Z" {
		t.Errorf("NewName = %s", names[1])
	}
}
