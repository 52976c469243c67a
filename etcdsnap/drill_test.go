package etcdsnap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	storagevalue "k8s.io/apiserver/pkg/storage/value"

	"github.com/atrest-io/atrest/cluster"
)

// The drill's unit tier: snapshots built in etcd's own bolt layout, their
// values written by kube-apiserver's own transformers. The sandbox tier
// (TestDrill*) runs it on real etcd snapshots beside a real restore.

type drillKeySource map[string]cluster.Key

func (s drillKeySource) Key(_ context.Context, name string) (cluster.Key, error) {
	if k, ok := s[name]; ok {
		return k, nil
	}
	return cluster.Key{}, fmt.Errorf("read key %s: %w", name, errNotStored)
}

var errNotStored = errors.New("not found")

func drillKey(name string, p cluster.Provider, b byte) cluster.Key {
	return cluster.Key{Name: name, Provider: p, Secret: bytes.Repeat([]byte{b}, 32)}
}

// secretObject is a Secret as kube-apiserver stores it in protobuf.
func secretObject(t *testing.T, ns, name, data string) []byte {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: map[string][]byte{"v": []byte(data)}}
	raw, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	u := &runtime.Unknown{TypeMeta: runtime.TypeMeta{APIVersion: "v1", Kind: "Secret"}, Raw: raw}
	b, err := u.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte("k8s\x00"), b...)
}

// snapWriter builds an etcd database revision by revision.
type snapWriter struct {
	t    *testing.T
	revs []struct {
		rev []byte
		kv  []byte
	}
	main int64
}

func (w *snapWriter) put(key string, value []byte) {
	w.add(key, value, false)
}

func (w *snapWriter) del(key string) { w.add(key, nil, true) }

func (w *snapWriter) add(key string, value []byte, tombstone bool) {
	w.main++
	rev := make([]byte, revBytes, revBytes+1)
	binary.BigEndian.PutUint64(rev, uint64(w.main))
	rev[8] = '_'
	if tombstone {
		rev = append(rev, tombstoneMark)
	}
	kv := &mvccpb.KeyValue{Key: []byte(key), Value: value, ModRevision: w.main, CreateRevision: w.main, Version: 1}
	b, err := proto.Marshal(kv)
	if err != nil {
		w.t.Fatal(err)
	}
	w.revs = append(w.revs, struct {
		rev []byte
		kv  []byte
	}{rev, b})
}

// save writes the database as snapshot name of store, with etcd's
// trailing sha256, and its manifest m.
func (w *snapWriter) save(store *LocalDir, m Manifest) {
	t := w.t
	path := filepath.Join(t.TempDir(), "db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(keyBucket)
		if err != nil {
			return err
		}
		for _, r := range w.revs {
			if err := b.Put(r.rev, r.kv); err != nil {
				return err
			}
		}
		_, err = tx.CreateBucket([]byte("meta"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	data = append(data, sum[:]...)
	file := sha256.Sum256(data)
	if err := os.WriteFile(store.Path(dbObject(m.Name)), data, 0o600); err != nil {
		t.Fatal(err)
	}
	m.Format, m.Size, m.SHA256 = ManifestFormat, int64(len(data)), hex.EncodeToString(file[:])
	if m.Time.IsZero() {
		m.Time = time.Now().UTC()
	}
	if err := writeManifest(context.Background(), store, m); err != nil {
		t.Fatal(err)
	}
}

// writer encrypts as a kube-apiserver whose config is lists does.
func writer(t *testing.T, lists []ResourceList, keys ...cluster.Key) func(resource, key string, plain []byte) []byte {
	t.Helper()
	ring := &drillRing{lists: lists, keys: map[string]cluster.Key{}}
	for _, k := range keys {
		ring.keys[k.Name] = k
	}
	tr, err := ring.load(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return func(resource, key string, plain []byte) []byte {
		out, err := tr.TransformerForResource(schema.ParseGroupResource(resource)).TransformToStorage(t.Context(), plain, storagevalue.DefaultContext(key))
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
}

func list(resources []string, providers ...ProviderRef) ResourceList {
	return ResourceList{Resources: resources, Providers: providers}
}

func keyRef(k cluster.Key) ProviderRef {
	return ProviderRef{Kind: string(k.Provider), Name: k.Name, Fingerprint: k.Fingerprint()}
}

var identityRef = ProviderRef{Kind: cluster.KindIdentity}

func TestDrill(t *testing.T) {
	k1 := drillKey("k-one", cluster.AESCBC, 1)
	k2 := drillKey("k-two", cluster.AESGCM, 2)
	kOld := drillKey("k-old", cluster.Secretbox, 3)
	const content = "TOP-SECRET-CONTENT"
	secrets := []string{"secrets"}
	// The config the snapshot was taken under: k1 writes, k2 reads,
	// identity reads what is plain.
	lists := []ResourceList{list(secrets, keyRef(k1), keyRef(k2), identityRef)}
	byK1 := writer(t, lists, k1, k2)
	byK2 := writer(t, []ResourceList{list(secrets, keyRef(k2))}, k2)
	byOld := writer(t, []ResourceList{list(secrets, keyRef(kOld))}, kOld)
	manifest := func(name string) Manifest {
		return Manifest{Name: name, Reason: "test", Resources: secrets, Config: lists,
			Keys: []KeyRef{RefOf(k1), RefOf(k2)}}
	}
	key := func(ns, name string) string { return "/registry/secrets/" + ns + "/" + name }
	// build writes the world every case starts from, then the case's own.
	build := func(t *testing.T, extra func(w *snapWriter)) *snapWriter {
		w := &snapWriter{t: t}
		w.put(key("a", "one"), byK1("secrets", key("a", "one"), secretObject(t, "a", "one", content)))
		w.put(key("a", "two"), byK2("secrets", key("a", "two"), secretObject(t, "a", "two", content)))
		w.put(key("b", "plain"), secretObject(t, "b", "plain", content))
		// Older revisions under a key nobody holds, superseded: a restore
		// serves the newest revision only.
		w.put(key("b", "rewritten"), byOld("secrets", key("b", "rewritten"), secretObject(t, "b", "rewritten", content)))
		w.put(key("b", "rewritten"), byK1("secrets", key("b", "rewritten"), secretObject(t, "b", "rewritten", content)))
		// Deleted: its last value is gone from a restore.
		w.put(key("b", "gone"), byOld("secrets", key("b", "gone"), secretObject(t, "b", "gone", content)))
		w.del(key("b", "gone"))
		// Not a covered resource: not drilled.
		w.put("/registry/configmaps/a/c", []byte("not an object, not encrypted"))
		if extra != nil {
			extra(w)
		}
		return w
	}
	all := drillKeySource{k1.Name: k1, k2.Name: k2}
	cases := []struct {
		name     string
		keys     drillKeySource
		extra    func(w *snapWriter)
		corrupt  bool
		verdict  string
		total    int64
		failures []string // objects, in order
		reason   string   // in every failure
		problem  string
	}{
		{name: "every object decrypts", keys: all, verdict: Restorable, total: 4},
		{name: "a key removed from Vault", keys: drillKeySource{k2.Name: k2}, verdict: NotRestorable, total: 4,
			failures: []string{key("a", "one"), key("b", "rewritten")}, reason: "key k-one: Vault does not give it"},
		{name: "other material under a key's name", keys: drillKeySource{k1.Name: k1, k2.Name: drillKey(k2.Name, cluster.AESGCM, 9)},
			verdict: NotRestorable, total: 4, failures: []string{key("a", "two")}, reason: "other material under that name"},
		{name: "a value moved to another key fails its authenticated data", keys: all, verdict: NotRestorable, total: 5,
			extra: func(w *snapWriter) {
				w.put(key("c", "moved"), byK2("secrets", key("a", "two"), secretObject(t, "c", "moved", content)))
			}, failures: []string{key("c", "moved")}, reason: "does not decrypt"},
		{name: "a value under a prefix no provider reads", keys: all, verdict: NotRestorable, total: 5,
			extra: func(w *snapWriter) {
				w.put(key("c", "old"), byOld("secrets", key("c", "old"), secretObject(t, "c", "old", content)))
			}, failures: []string{key("c", "old")}, reason: "does not decrypt"},
		{name: "a plaintext of another object", keys: all, verdict: NotRestorable, total: 5,
			extra: func(w *snapWriter) {
				w.put(key("c", "swapped"), byK1("secrets", key("c", "swapped"), secretObject(t, "c", "other", content)))
			}, failures: []string{key("c", "swapped")}, reason: "not what its key names"},
		{name: "a plaintext that is no object", keys: all, verdict: NotRestorable, total: 5,
			extra: func(w *snapWriter) {
				w.put(key("c", "junk"), byK1("secrets", key("c", "junk"), []byte(content)))
			}, failures: []string{key("c", "junk")}, reason: "neither protobuf nor JSON"},
		{name: "a JSON object", keys: all, verdict: Restorable, total: 5,
			extra: func(w *snapWriter) {
				w.put(key("c", "json"), byK1("secrets", key("c", "json"),
					[]byte(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"json","namespace":"c"},"data":{"v":"VE9Q"}}`)))
			}},
		{name: "objects under a KMS plugin are unproven", keys: all, verdict: Unproven, total: 5,
			extra: func(w *snapWriter) {
				w.put(key("c", "kms"), []byte("k8s:enc:kms:v2:vault:\x00opaque"))
			}},
		{name: "a corrupted file", keys: all, corrupt: true, verdict: NotRestorable, problem: "does not verify"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			store, err := NewLocalDir(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			m := manifest("snap")
			if strings.Contains(tc.name, "KMS") {
				m.Config = []ResourceList{list(secrets, keyRef(k1), keyRef(k2),
					ProviderRef{Kind: cluster.KindKMS, Name: "vault", KMS: &KMSRef{APIVersion: "v2", Endpoint: "unix:///nowhere.sock", Timeout: "3s"}}, identityRef)}
			}
			build(t, tc.extra).save(store, m)
			if tc.corrupt {
				f, err := os.OpenFile(store.Path("snap.db"), os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.WriteAt([]byte{0xff}, 3*4096+100)
				f.Close()
			}
			rep, err := Drill(t.Context(), store, "snap", tc.keys, DrillOptions{TempDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Verdict != tc.verdict || rep.Total != tc.total || !strings.Contains(rep.Problem, tc.problem) {
				t.Fatalf("verdict %s, %d objects, problem %q; want %s, %d, %q\n%+v", rep.Verdict, rep.Total, rep.Problem, tc.verdict, tc.total, tc.problem, rep)
			}
			var got []string
			for _, f := range rep.Failures {
				got = append(got, f.Object)
				if !strings.Contains(f.Reason, tc.reason) || f.Resource != "secrets" {
					t.Errorf("failure %+v: want the reason to say %q", f, tc.reason)
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.failures, " ") || rep.Failed != int64(len(tc.failures)) {
				t.Errorf("failures %v (%d), want %v", got, rep.Failed, tc.failures)
			}
			// The report names objects and keys; it never holds content
			// or material.
			out := fmt.Sprintf("%+v %s", rep, rep.Summary())
			for _, secret := range []string{content, string(k1.Secret), string(k2.Secret), hex.EncodeToString(k1.Secret)} {
				if strings.Contains(out, secret) {
					t.Fatalf("the report holds content or key material: %s", out)
				}
			}
			if entries, _ := os.ReadDir(store.Dir()); len(entries) != 2 {
				t.Errorf("the drill left files in the store: %v", entries)
			}
		})
	}
}

func TestDrillCountsByResourceAndKey(t *testing.T) {
	k1 := drillKey("k-one", cluster.AESCBC, 1)
	lists := []ResourceList{
		list([]string{"secrets"}, keyRef(k1), identityRef),
		list([]string{"configmaps", "namespaces"}, identityRef),
	}
	enc := writer(t, lists, k1)
	w := &snapWriter{t: t}
	w.put("/registry/secrets/a/s1", enc("secrets", "/registry/secrets/a/s1", secretObject(t, "a", "s1", "x")))
	w.put("/registry/secrets/a/s2", secretObject(t, "a", "s2", "x"))
	w.put("/registry/configmaps/a/c1", []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c1","namespace":"a"}}`))
	w.put("/registry/namespaces/a", []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}}`))
	store, err := NewLocalDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w.save(store, Manifest{Name: "snap", Reason: "test", Config: lists, Keys: []KeyRef{RefOf(k1)}, Resources: []string{"secrets", "configmaps", "namespaces"}})
	rep, err := Drill(t.Context(), store, "snap", drillKeySource{k1.Name: k1}, DrillOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []DrillCount{
		{Resource: "configmaps", Prefix: "identity", Objects: 1},
		{Resource: "namespaces", Prefix: "identity", Objects: 1},
		{Resource: "secrets", Prefix: "aescbc:v1:k-one", Objects: 1},
		{Resource: "secrets", Prefix: "identity", Objects: 1},
	}
	if fmt.Sprint(rep.Objects) != fmt.Sprint(want) || rep.Verdict != Restorable || rep.Revision != 4 {
		t.Fatalf("counts %v, verdict %s, revision %d; want %v, Restorable, 4", rep.Objects, rep.Verdict, rep.Revision, want)
	}
}

func TestDrillTransientKeyErrorIsNoVerdict(t *testing.T) {
	k1 := drillKey("k-one", cluster.AESCBC, 1)
	store, err := NewLocalDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	lists := []ResourceList{list([]string{"secrets"}, keyRef(k1))}
	w := &snapWriter{t: t}
	w.put("/registry/secrets/a/s1", writer(t, lists, k1)("secrets", "/registry/secrets/a/s1", secretObject(t, "a", "s1", "x")))
	w.save(store, Manifest{Name: "snap", Reason: "test", Config: lists, Keys: []KeyRef{RefOf(k1)}})
	_, err = Drill(t.Context(), store, "snap", drillKeySource{}, DrillOptions{Transient: func(err error) bool { return errors.Is(err, errNotStored) }})
	if err == nil || !errors.Is(err, errNotStored) {
		t.Fatalf("a transient key error gave %v, want it returned", err)
	}
}
