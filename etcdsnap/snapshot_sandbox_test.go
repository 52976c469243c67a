//go:build sandbox

package etcdsnap_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"github.com/atrest-io/atrest/internal/leaktest"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/etcdsnap"
)

func TestSaveVerifyPrune(t *testing.T) {
	leaks := leaktest.New(t)
	ctx := testCtx(t, 3*time.Minute)
	keys := newVaultKeys(t, "etcdsnap-test/save")
	var refs []etcdsnap.KeyRef
	for range 2 {
		k, err := cluster.NewKey(cluster.AESCBC, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := keys.put(ctx, leaks.Key(k)); err != nil {
			t.Fatal(err)
		}
		refs = append(refs, etcdsnap.RefOf(k))
	}
	c := dial(t, etcdConfig(leaks.Logger()))
	dir := filepath.Join(t.TempDir(), "snapshots")
	store, err := etcdsnap.NewLocalDir(dir)
	if err != nil {
		t.Fatal(err)
	}

	// Three snapshots, oldest first: the one before a transition that is
	// still running, a scheduled one, a manual one.
	reqs := []etcdsnap.Manifest{
		{Reason: "before rotate", Transition: "rotate-1", GitRevision: "0123abc", KeyringVersion: 4, Keys: refs},
		{Reason: "scheduled", KeyringVersion: 5, Keys: refs[:1]},
		{Reason: "manual", KeyringVersion: 5, Keys: refs[:1]},
	}
	var saved []*etcdsnap.Manifest
	for _, req := range reqs {
		m, err := c.Save(ctx, store, keys, req)
		leaks.Note(err)
		if err != nil {
			t.Fatal(err)
		}
		leaks.Note(m)
		saved = append(saved, m)
		time.Sleep(5 * time.Millisecond) // distinct names
	}
	m := saved[0]
	if m.Endpoint != sb.EtcdEndpoint || m.EtcdVersion == "" || m.EtcdRevision <= 0 || m.Size <= 0 ||
		len(m.SHA256) != 64 || m.Reason != "before rotate" || m.GitRevision != "0123abc" ||
		m.KeyringVersion != 4 || !slices.Equal(m.Keys, refs) || !slices.Equal(m.Resources, []string{"secrets"}) {
		t.Errorf("manifest %+v", m)
	}

	// On disk: 0600 files in a 0700 directory, no part files, and the
	// manifest holds fingerprints, never keys.
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("snapshot directory mode %v", st.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 6 {
		t.Errorf("snapshot directory holds %d files, want 3 snapshots and 3 manifests", len(entries))
	}
	for _, e := range entries {
		info, _ := e.Info()
		if info.Mode().Perm() != 0o600 || strings.HasSuffix(e.Name(), ".part") {
			t.Errorf("%s: mode %v", e.Name(), info.Mode().Perm())
		}
		if strings.HasSuffix(e.Name(), ".json") {
			data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
			leaks.Note(string(data))
		}
	}

	// etcd's own tool reads the file, and its hash check passes.
	db := store.Path(m.Name + ".db")
	out, err := exec.CommandContext(ctx, "etcdctl", "snapshot", "status", db, "--write-out=json").CombinedOutput()
	if err != nil {
		t.Fatalf("etcdctl snapshot status: %v: %s", err, out)
	}
	var status struct {
		Revision int64 `json:"revision"`
		TotalKey int64 `json:"totalKey"`
	}
	if err := json.Unmarshal(out, &status); err != nil {
		t.Fatalf("etcdctl snapshot status: %v: %s", err, out)
	}
	if status.Revision < m.EtcdRevision || status.TotalKey == 0 {
		t.Errorf("etcdctl sees revision %d with %d keys; the manifest says revision >= %d", status.Revision, status.TotalKey, m.EtcdRevision)
	}

	list, err := etcdsnap.List(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range list {
		names = append(names, l.Name)
		if err := etcdsnap.Verify(ctx, store, l.Name); err != nil {
			t.Errorf("verify %s: %v", l.Name, err)
		}
	}
	if want := []string{saved[2].Name, saved[1].Name, saved[0].Name}; !slices.Equal(names, want) {
		t.Errorf("List = %v, want newest first %v", names, want)
	}
	if got := keys.refs(t); len(got) != 3 || !slices.Equal(got[saved[0].Name], m.KeyNames()) {
		t.Errorf("references in Vault: %v", got)
	}

	t.Run("corrupted and truncated copies are refused", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			tamper func([]byte) []byte
		}{
			{"flipped byte", func(b []byte) []byte { b[len(b)/2] ^= 0x40; return b }},
			{"truncated", func(b []byte) []byte { return b[:len(b)-4096] }},
			{"trailer cut off", func(b []byte) []byte { return b[:len(b)-32] }},
		} {
			other, _ := etcdsnap.NewLocalDir(t.TempDir())
			data, _ := os.ReadFile(db)
			manifest, _ := os.ReadFile(store.Path(m.Name + ".json"))
			os.WriteFile(other.Path(m.Name+".db"), tc.tamper(data), 0o600)
			os.WriteFile(other.Path(m.Name+".json"), manifest, 0o600)
			err := etcdsnap.Verify(ctx, other, m.Name)
			leaks.Note(err)
			if !errors.Is(err, etcdsnap.ErrVerify) {
				t.Errorf("%s: Verify = %v, want ErrVerify", tc.name, err)
			}
		}
	})

	t.Run("bad requests change nothing", func(t *testing.T) {
		before := keys.refs(t)
		for _, tc := range []struct {
			name string
			req  etcdsnap.Manifest
			refs etcdsnap.KeyRefs
		}{
			{"no reason", etcdsnap.Manifest{Keys: refs}, keys},
			{"name taken", etcdsnap.Manifest{Name: m.Name, Reason: "manual", Keys: refs}, keys},
			{"keys but no keystore", etcdsnap.Manifest{Reason: "manual", Keys: refs}, nil},
			{"keystore refuses", etcdsnap.Manifest{Name: "refused", Reason: "manual", Keys: refs}, brokenRefs{keys}},
		} {
			_, err := c.Save(ctx, store, tc.refs, tc.req)
			leaks.Note(err)
			if err == nil {
				t.Errorf("%s: Save succeeded", tc.name)
			}
		}
		if after, _ := os.ReadDir(dir); len(after) != 6 {
			t.Errorf("the directory changed: %d files", len(after))
		}
		if after := keys.refs(t); len(after) != len(before) {
			t.Errorf("references changed: %v -> %v", before, after)
		}
	})

	// A store that loses bytes between the stream and the disk (a bad
	// disk, a broken volume): only reading it back can tell.
	t.Run("what the store holds is read back", func(t *testing.T) {
		bad, err := etcdsnap.NewLocalDir(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		before := keys.refs(t)
		_, err = c.Save(ctx, corruptingStore{bad}, keys, etcdsnap.Manifest{Reason: "manual", Keys: refs[:1]})
		leaks.Note(err)
		if !errors.Is(err, etcdsnap.ErrVerify) || !strings.Contains(err.Error(), "read back") {
			t.Fatalf("Save into a store that corrupts what it commits: %v, want ErrVerify on read-back", err)
		}
		if left, _ := bad.List(ctx); len(left) != 0 {
			t.Errorf("left in the store: %v", left)
		}
		if after := keys.refs(t); len(after) != len(before) {
			t.Errorf("the reference was not released: %v -> %v", before, after)
		}
	})

	t.Run("prune keeps the newest and the unfinished transition's", func(t *testing.T) {
		unfinished := etcdsnap.KeepTransitions("rotate-1")
		removed, err := etcdsnap.Prune(ctx, store, keys, "", 1, unfinished)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(removed, []string{saved[1].Name}) {
			t.Errorf("removed %v, want %v", removed, saved[1].Name)
		}
		refs := keys.refs(t)
		if _, ok := refs[saved[1].Name]; ok || len(refs) != 2 {
			t.Errorf("references after prune: %v", refs)
		}
		// The transition finished: its snapshot goes too.
		removed, err = etcdsnap.Prune(ctx, store, keys, "", 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(removed, []string{saved[0].Name}) {
			t.Errorf("removed %v, want %v", removed, saved[0].Name)
		}
		if refs := keys.refs(t); len(refs) != 1 || refs[saved[2].Name] == nil {
			t.Errorf("references after the second prune: %v", refs)
		}
		if files, _ := os.ReadDir(dir); len(files) != 2 {
			t.Errorf("%d files left, want the newest snapshot and its manifest", len(files))
		}
		if _, err := etcdsnap.Prune(ctx, store, keys, "", 0, nil); err == nil {
			t.Error("prune with retention 0 succeeded")
		}
		if err := etcdsnap.Verify(ctx, store, saved[2].Name); err != nil {
			t.Error(err)
		}
	})

	t.Run("raw get", func(t *testing.T) {
		if _, err := c.RawGet(ctx, "/registry/namespaces/default"); err != nil {
			t.Error(err)
		}
		if _, err := c.RawGet(ctx, "/registry/no/such/key"); !errors.Is(err, etcdsnap.ErrNotFound) {
			t.Errorf("RawGet of a missing key: %v", err)
		}
	})
}

// corruptingStore flips one byte of every snapshot file it commits.
type corruptingStore struct{ *etcdsnap.LocalDir }

func (c corruptingStore) Create(ctx context.Context, object string) (etcdsnap.Upload, error) {
	up, err := c.LocalDir.Create(ctx, object)
	if err != nil || !strings.HasSuffix(object, ".db") {
		return up, err
	}
	return &corruptingUpload{Upload: up}, nil
}

type corruptingUpload struct {
	etcdsnap.Upload
	n int
}

func (u *corruptingUpload) Write(p []byte) (int, error) {
	q := bytes.Clone(p)
	if u.n <= 4096 && u.n+len(q) > 4096 {
		q[4096-u.n] ^= 0xff
	}
	u.n += len(q)
	return u.Upload.Write(q)
}

// brokenRefs is the keystore failing to record a reference (Vault
// refusing the write): Save must not keep a snapshot whose keys are not
// protected.
type brokenRefs struct{ *vaultKeys }

func (b brokenRefs) AddSnapshotRef(ctx context.Context, snapshot string, keyNames []string) error {
	// A path outside the KV mount: Vault really refuses it.
	_, err := b.c.Logical().WriteWithContext(ctx, "no-such-mount/refs/"+snapshot, map[string]any{"keys": keyNames})
	if err == nil {
		return errors.New("vault accepted a write to a missing mount")
	}
	return err
}

func TestDialFailsClearly(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	for _, tc := range []struct {
		name string
		edit func(*etcdsnap.Config)
		want string
	}{
		{"no endpoints", func(c *etcdsnap.Config) { c.Endpoints = nil }, "no endpoints"},
		{"not a URL", func(c *etcdsnap.Config) { c.Endpoints = []string{"127.0.0.1:2379"} }, "not an http(s)://"},
		{"https without CA", func(c *etcdsnap.Config) { c.CAFile = "" }, "CA file"},
		{"missing key file", func(c *etcdsnap.Config) { c.KeyFile = "/nonexistent/key.pem" }, "/nonexistent/key.pem"},
		{"nobody listening", func(c *etcdsnap.Config) {
			c.Endpoints = []string{"https://127.0.0.1:1"}
			c.DialTimeout = 2 * time.Second
		}, "no etcd endpoint answers"},
	} {
		cfg := etcdConfig(nil)
		tc.edit(&cfg)
		_, err := etcdsnap.Dial(ctx, cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Dial = %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
}

var _ io.Closer = (*etcdsnap.Client)(nil)

// Save takes its snapshot from the first member that answers; a dead
// endpoint ahead of it in the list costs a timeout, not the snapshot.
func TestSaveFromFirstAnsweringMember(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	cfg := etcdConfig(nil)
	cfg.Endpoints = []string{"https://127.0.0.1:1", sb.EtcdEndpoint}
	cfg.DialTimeout, cfg.RequestTimeout = 3*time.Second, 3*time.Second
	c := dial(t, cfg)
	store, _ := etcdsnap.NewLocalDir(t.TempDir())
	m, err := c.Save(ctx, store, nil, etcdsnap.Manifest{Reason: "manual"})
	if err != nil {
		t.Fatal(err)
	}
	if m.Endpoint != sb.EtcdEndpoint || len(m.Keys) != 0 {
		t.Errorf("manifest %+v", m)
	}
	if err := etcdsnap.Verify(ctx, store, m.Name); err != nil {
		t.Error(err)
	}
}
