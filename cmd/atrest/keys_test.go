package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/atrest-io/atrest/keystore"
	"github.com/atrest-io/atrest/settings"
	"sigs.k8s.io/yaml"
)

// TestManifestKeys: the manifests in snapshots.dir that keep retired keys
// are this cluster's and those naming no cluster, each with the keys it
// needs; another cluster's keep nothing here, and a manifest that cannot
// be read stops everything (a key it needs would otherwise be destroyed).
func TestManifestKeys(t *testing.T) {
	dir := t.TempDir()
	fp := func(c byte) string { return "sha256:" + strings.Repeat(string(c), 32) }
	manifest := func(name, cluster string, keys ...string) {
		var refs []map[string]string
		for i, k := range keys {
			refs = append(refs, map[string]string{"name": k, "provider": "aescbc", "fingerprint": fp("abcdef"[i])})
		}
		m := map[string]any{"format": 1, "name": name, "cluster": cluster, "time": time.Now().UTC(), "reason": "manual",
			"keys": refs, "size": 10, "sha256": strings.Repeat("0", 64)}
		data, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	manifest("etcd-ours", "demo", "k-aaaaa", "k-bbbbb")
	manifest("etcd-unlabelled", "", "k-ccccc")
	manifest("etcd-other", "other", "k-ddddd")
	manifest("etcd-keyless", "demo")
	s := settings.Default()
	s.Cluster.Name = "demo"
	s.Snapshots.Dir = dir
	got, err := manifestKeys(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]keystore.NeededKey{
		"etcd-ours":       {{Name: "k-aaaaa", Fingerprint: fp('a')}, {Name: "k-bbbbb", Fingerprint: fp('b')}},
		"etcd-unlabelled": {{Name: "k-ccccc", Fingerprint: fp('a')}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("manifestKeys = %v, want %v", got, want)
	}

	if err := os.WriteFile(filepath.Join(dir, "etcd-broken.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := manifestKeys(context.Background(), s); err == nil || !strings.Contains(err.Error(), "no key was destroyed") {
		t.Errorf("a broken manifest: %v, want an error saying no key was destroyed", err)
	}
}

// TestDestroyRetiredReport: the three outputs say what happened to each
// key, and only names and fingerprints.
func TestDestroyRetiredReport(t *testing.T) {
	created := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	r := destroyRetiredReport{Cluster: "demo", DryRun: true, Keys: []keystore.RetiredKey{
		{Name: "k-aaaaa", Provider: "aescbc", Fingerprint: "sha256:00", Created: created, Action: keystore.RetiredWouldDestroy},
		{Name: "k-bbbbb", Provider: "secretbox", Fingerprint: "sha256:11", Created: created, Action: keystore.RetiredKept, ReferencedBy: []string{"etcd-1", "etcd-2"}},
	}}
	var text, js, ym bytes.Buffer
	for _, o := range []struct {
		format string
		buf    *bytes.Buffer
	}{{"text", &text}, {"json", &js}, {"yaml", &ym}} {
		if err := printDoc(o.buf, o.format, r, r.text); err != nil {
			t.Fatal(err)
		}
	}
	wantText := "k-aaaaa (aescbc sha256:00, created 2026-11-01T12:00:00Z): would destroy\n" +
		"k-bbbbb (secretbox sha256:11, created 2026-11-01T12:00:00Z): kept, referenced by snapshots [etcd-1 etcd-2]\n" +
		"dry run: nothing was changed\n"
	if text.String() != wantText {
		t.Errorf("text:\n%s\nwant\n%s", text.String(), wantText)
	}
	for name, data := range map[string][]byte{"json": js.Bytes(), "yaml": ym.Bytes()} {
		var back destroyRetiredReport
		if err := yaml.Unmarshal(data, &back); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(back, r) {
			t.Errorf("%s round trip: %+v, want %+v", name, back, r)
		}
	}
	code, _, stderr := runCLI(t, "keys", "destroy-retired", "-o", "table")
	if code != exitError || !strings.Contains(stderr, `--output "table": use text, json or yaml`) {
		t.Errorf("-o table: exit %d, %s", code, stderr)
	}
}
