package etcdsnap

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/encoding/protowire"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	storagevalue "k8s.io/apiserver/pkg/storage/value"
	kmsservice "k8s.io/kms/pkg/service"

	"github.com/atrest-io/atrest/cluster"
)

// Verdicts of a decryption drill.
const (
	// Restorable: every object of the covered resources decrypted, with
	// the keys Vault holds today, into a Kubernetes object of its name.
	Restorable = "Restorable"
	// NotRestorable: some object did not, or the file does not verify.
	NotRestorable = "NotRestorable"
	// Unproven: nothing failed, but some objects are stored under a KMS
	// provider, which only its plugin can read: the drill cannot vouch
	// for them.
	Unproven = "Unproven"
)

// DrillReport is what a decryption drill found in one snapshot. It names
// objects, never their content, and keys by name and fingerprint only.
type DrillReport struct {
	Snapshot string    `json:"snapshot"`
	Time     time.Time `json:"time"` // when the drill ran
	Seconds  float64   `json:"seconds"`
	Verdict  string    `json:"verdict"`
	// Problem says why the drill read no object at all (the file does not
	// verify, is not an etcd database); "" when it read them.
	Problem string `json:"problem,omitempty"`
	// Revision is the newest revision in the file.
	Revision int64 `json:"revision,omitempty"`
	// Objects counts, per resource and storage prefix (which names the
	// key), the newest revision of every live key under the covered
	// resources: how many, how many failed, how many only a KMS plugin
	// could check.
	Objects []DrillCount `json:"objects,omitempty"`
	// Keys says, for each key of the manifest, whether Vault gave it.
	Keys []DrillKey `json:"keys,omitempty"`
	// Failures are the first maxDrillFailures objects that failed;
	// Failed counts them all.
	Failures []DrillFailure `json:"failures,omitempty"`
	Total    int64          `json:"total"`
	Failed   int64          `json:"failed"`
	// Unchecked counts objects under a KMS provider.
	Unchecked int64 `json:"unchecked,omitempty"`
}

// DrillCount is one resource's objects under one storage prefix.
type DrillCount struct {
	Resource  string `json:"resource"`
	Prefix    string `json:"prefix"`
	Objects   int64  `json:"objects"`
	Failed    int64  `json:"failed,omitempty"`
	Unchecked int64  `json:"unchecked,omitempty"`
}

// DrillKey is one key of the manifest and what Vault gave for it.
type DrillKey struct {
	KeyRef
	// Problem is why the key cannot be used ("" when it was fetched and
	// its fingerprint is the manifest's).
	Problem string `json:"problem,omitempty"`
}

// DrillFailure is one object that would not come back from a restore.
type DrillFailure struct {
	Resource string `json:"resource"`
	// Object is the object's etcd key (its resource path, namespace and
	// name: no content).
	Object string `json:"object"`
	Prefix string `json:"prefix"`
	Reason string `json:"reason"`
}

// maxDrillFailures bounds the failures a report lists: one missing key
// can fail every secret of a cluster.
const maxDrillFailures = 100

// DrillOptions tune a drill.
type DrillOptions struct {
	// Transient reports a key fetch error that says nothing of the
	// snapshot (Vault unreachable or sealed): the drill returns it
	// instead of a verdict, to be run again. Any other fetch error (the
	// key is gone, the policy denies it) fails the key's objects.
	Transient func(error) bool
	// TempDir holds the restore config kube-apiserver's loader reads
	// (mode 0600, removed before Drill returns), and a copy of the
	// snapshot when the store is not a local directory. Default
	// os.TempDir().
	TempDir string
	// KMS serves KMS v2 providers by name for the drill: objects under
	// one are decrypted through it, on a socket of the drill's own, as
	// kube-apiserver would through the plugin (atrest's vault-transit
	// provider, backed by Vault Transit). Objects under any other KMS
	// provider are counted, unchecked.
	KMS map[string]kmsservice.Service
}

// Drill proves snapshot name restorable, changing nothing: it verifies
// the file against its manifest, opens it read-only as etcd's bolt
// database, takes the newest revision of every key under the resources
// the manifest's config covers, and decrypts each value with the keys the
// manifest names, fetched from keys, through kube-apiserver's own
// transformers (k8s.io/apiserver's encryptionconfig loader, with the
// etcd key as authenticated data as kube-apiserver uses it), then checks
// the plaintext is a Kubernetes object (protobuf or JSON) whose name is
// the key's. Values are read one at a time from the file's memory map:
// the heap grows with the number of keys, not with their size.
//
// What the snapshot holds is the report's; Drill's error is for a drill
// that could not run (ctx ended, a Transient key error, no such
// snapshot).
func Drill(ctx context.Context, store Store, name string, keys KeySource, opts DrillOptions) (*DrillReport, error) {
	start := time.Now()
	rep := &DrillReport{Snapshot: name, Time: start.UTC()}
	done := func() (*DrillReport, error) {
		rep.Seconds = time.Since(start).Seconds()
		rep.Verdict = rep.verdict()
		return rep, nil
	}
	m, err := ReadManifest(ctx, store, name)
	if err != nil {
		return nil, fmt.Errorf("drill snapshot %s: %w", name, err)
	}
	if err := Verify(ctx, store, name); err != nil {
		if !errors.Is(err, ErrVerify) {
			return nil, fmt.Errorf("drill snapshot %s: %w", name, err)
		}
		rep.Problem = err.Error()
		return done()
	}
	if opts.TempDir == "" {
		opts.TempDir = os.TempDir()
	}
	work, err := os.MkdirTemp(opts.TempDir, "atrest-drill-")
	if err != nil {
		return nil, fmt.Errorf("drill snapshot %s: %w", name, err)
	}
	defer os.RemoveAll(work)

	ring, err := drillKeys(ctx, m, keys, opts.Transient, rep)
	if err != nil {
		return nil, fmt.Errorf("drill snapshot %s: %w", name, err)
	}
	stop, err := ring.serveKMS(opts.KMS, work)
	defer stop()
	if err != nil {
		return nil, fmt.Errorf("drill snapshot %s: %w", name, err)
	}
	// The transformers live as long as ctx: cancel ends their goroutines.
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tr, err := ring.load(tctx, work)
	if err != nil {
		return nil, fmt.Errorf("drill snapshot %s: %w", name, err)
	}
	db, err := localCopy(ctx, store, dbObject(name), work)
	if err != nil {
		return nil, fmt.Errorf("drill snapshot %s: %w", name, err)
	}
	paths, err := coveredPaths(m)
	if err != nil {
		return nil, fmt.Errorf("drill snapshot %s: %w", name, err)
	}
	if err := drillDB(ctx, db, paths, tr, ring, rep); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("drill snapshot %s: %w", name, ctx.Err())
		}
		rep.Problem = err.Error()
	}
	return done()
}

func (r *DrillReport) verdict() string {
	switch {
	case r.Problem != "" || r.Failed > 0:
		return NotRestorable
	case r.Unchecked > 0:
		return Unproven
	}
	return Restorable
}

// drillRing is the config a drill reads with: the manifest's lists less
// the providers it cannot use, and why, by storage prefix.
type drillRing struct {
	lists []ResourceList
	keys  map[string]cluster.Key
	// cannot maps a storage prefix ("aescbc:v1:k-abc", "kms:v2:vault")
	// to why its objects cannot be read; kms marks those a plugin could.
	cannot map[string]string
	kms    map[string]bool
	// orig is the manifest's config, which lists is built from.
	orig []ResourceList
}

// build makes the lists the drill reads with from the manifest's: every
// provider it has the key of, identity, and the KMS providers served
// (by name, with the drill's own endpoint).
func (r *drillRing) build(served map[string]ProviderRef) {
	r.lists = nil
	for _, l := range r.orig {
		out := ResourceList{Resources: l.Resources}
		for _, p := range l.Providers {
			switch {
			case p.Kind == cluster.KindKMS:
				if local, ok := served[p.Name]; ok {
					out.Providers = append(out.Providers, local)
				}
			case p.Kind == cluster.KindIdentity:
				out.Providers = append(out.Providers, p)
			default:
				if _, ok := r.keys[p.Name]; ok {
					out.Providers = append(out.Providers, p)
				}
			}
		}
		if len(out.Providers) == 0 {
			// Every key is gone: identity reads what is plain, and the
			// rest fails by its prefix.
			out.Providers = []ProviderRef{{Kind: cluster.KindIdentity}}
		}
		r.lists = append(r.lists, out)
	}
}

// serveKMS serves each KMS v2 provider of the config that services has a
// service for, on a socket in dir, and adds it to the lists in place of
// the plugin's endpoint: its objects are then decrypted, not unchecked.
// stop ends the servers.
func (r *drillRing) serveKMS(services map[string]kmsservice.Service, dir string) (stop func(), err error) {
	var servers []*kmsservice.GRPCService
	stop = func() {
		for _, s := range servers {
			s.Close()
		}
	}
	served := map[string]ProviderRef{}
	for _, l := range r.orig {
		for _, p := range l.Providers {
			svc := services[p.Name]
			if _, done := served[p.Name]; done || p.Kind != cluster.KindKMS || svc == nil || p.KMS == nil || p.KMS.APIVersion != "v2" {
				continue
			}
			sock := filepath.Join(dir, fmt.Sprintf("kms-%d.sock", len(servers)))
			srv := kmsservice.NewGRPCService(sock, 30*time.Second, svc)
			servers = append(servers, srv)
			ended := make(chan error, 1)
			go func() { ended <- srv.ListenAndServe() }()
			if err := waitSocket(sock, ended); err != nil {
				return stop, fmt.Errorf("serve KMS provider %s for the drill: %w", p.Name, err)
			}
			k := *p.KMS
			k.Endpoint = "unix://" + sock
			local := p
			local.KMS = &k
			served[p.Name] = local
			delete(r.cannot, "kms:v2:"+p.Name)
		}
	}
	if len(served) > 0 {
		r.build(served)
	}
	return stop, nil
}

// waitSocket waits until a server listens on sock, or says why it stopped.
func waitSocket(sock string, served <-chan error) error {
	for range 100 {
		if _, err := os.Stat(sock); err == nil {
			return nil
		}
		select {
		case err := <-served:
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
	return errors.New("no socket after 2s")
}

func drillKeys(ctx context.Context, m Manifest, keys KeySource, transient func(error) bool, rep *DrillReport) (*drillRing, error) {
	ring := &drillRing{keys: map[string]cluster.Key{}, cannot: map[string]string{}, kms: map[string]bool{}}
	for _, ref := range m.Keys {
		dk := DrillKey{KeyRef: ref}
		prefix := ref.Provider + ":v1:" + ref.Name
		switch {
		case !cluster.IsKeyed(cluster.Provider(ref.Provider)):
			dk.Problem = fmt.Sprintf("provider %q: atrest holds no key of that kind", ref.Provider)
		case keys == nil:
			dk.Problem = "no keystore to fetch it from"
		default:
			k, err := keys.Key(ctx, ref.Name)
			switch {
			case err != nil && (ctx.Err() != nil || (transient != nil && transient(err))):
				return nil, fmt.Errorf("fetch key %s: %w", ref.Name, err)
			case err != nil:
				dk.Problem = "Vault does not give it: " + err.Error()
			case string(k.Provider) != ref.Provider:
				dk.Problem = fmt.Sprintf("Vault holds a %s key under that name, the snapshot needs a %s key", k.Provider, ref.Provider)
			case k.Fingerprint() != ref.Fingerprint:
				dk.Problem = fmt.Sprintf("Vault holds other material under that name (fingerprint %s, the snapshot needs %s)", k.Fingerprint(), ref.Fingerprint)
			default:
				ring.keys[ref.Name] = k
			}
		}
		if dk.Problem != "" {
			ring.cannot[prefix] = "key " + ref.Name + ": " + dk.Problem
		}
		rep.Keys = append(rep.Keys, dk)
	}
	lists := m.Config
	if len(lists) == 0 {
		var fetched []cluster.Key
		for _, ref := range m.Keys {
			if k, ok := ring.keys[ref.Name]; ok {
				fetched = append(fetched, k)
			}
		}
		lists = legacyLists(m.resources(), fetched)
	}
	for _, l := range lists {
		for _, p := range l.Providers {
			if p.Kind == cluster.KindKMS {
				// A KMS plugin holds its key: only it can read these,
				// unless the drill is given a service of its own for it
				// (serveKMS).
				prefix := "kms:" + p.KMS.APIVersion + ":" + p.Name
				ring.kms[prefix] = true
				ring.cannot[prefix] = "KMS provider " + p.Name + ": only its plugin can decrypt it, and the drill has no service for it"
			}
		}
	}
	ring.orig = lists
	ring.build(nil)
	return ring, nil
}

// load builds the transformers kube-apiserver would from ring's config:
// rendered, written 0600 in dir, loaded by encryptionconfig, removed.
func (r *drillRing) load(ctx context.Context, dir string) (encryptionconfig.StaticTransformers, error) {
	data, err := renderRestoreConfig(r.lists, r.keys)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "restore-config.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return nil, err
	}
	defer os.Remove(path)
	cfg, err := encryptionconfig.LoadEncryptionConfig(ctx, path, false, "atrest-drill")
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver's loader refuses the restore config: %w", err)
	}
	// A KMS v2 provider reads only once its plugin's status has been
	// taken (its state holds the key_id): what kube-apiserver's health
	// check does at start.
	for _, hc := range cfg.HealthChecks {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/healthz", nil)
		var err error
		for range 50 {
			if err = hc.Check(req); err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		if err != nil {
			return nil, fmt.Errorf("the KMS provider served for the drill is not healthy: %w", err)
		}
	}
	return encryptionconfig.StaticTransformers(cfg.Transformers), nil
}

// localCopy returns a local file holding object: the store's own file
// when it is a local directory, else a copy in dir.
func localCopy(ctx context.Context, store Store, object, dir string) (string, error) {
	if d, ok := store.(*LocalDir); ok {
		return d.Path(object), nil
	}
	r, err := store.Open(ctx, object)
	if err != nil {
		return "", err
	}
	defer r.Close()
	path := filepath.Join(dir, object)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(f, ctxReader{ctx, r}); err != nil {
		f.Close()
		return "", fmt.Errorf("copy %s: %w", object, err)
	}
	return path, f.Close()
}

// coveredPath is where one resource of the config is stored in etcd.
type coveredPath struct {
	path     string
	resource string
	gr       schema.GroupResource
}

// coveredPaths maps the manifest's resources to their etcd paths, the
// longest first, so that a key belongs to the most specific resource
// ("secrets" before "*.*").
func coveredPaths(m Manifest) ([]coveredPath, error) {
	var out []coveredPath
	resources := ConfigResources(m.Config)
	if len(resources) == 0 {
		resources = m.resources()
	}
	for _, res := range resources {
		p, err := StoragePath(m.EtcdPrefix, res)
		if err != nil {
			return nil, err
		}
		out = append(out, coveredPath{path: p, resource: res, gr: schema.ParseGroupResource(res)})
	}
	slices.SortFunc(out, func(a, b coveredPath) int { return cmp.Compare(len(b.path), len(a.path)) })
	return out, nil
}

func resourceOf(paths []coveredPath, key []byte) (coveredPath, bool) {
	for _, p := range paths {
		if bytes.HasPrefix(key, []byte(p.path)) {
			return p, true
		}
	}
	return coveredPath{}, false
}

// etcd's own layout: bucket "key" maps a revision (8 bytes main, '_', 8
// bytes sub, big-endian; a trailing 't' marks a deletion) to a
// mvccpb.KeyValue.
var keyBucket = []byte("key")

const (
	revBytes      = 17
	tombstoneMark = 't'
	kvKeyField    = 1 // mvccpb.KeyValue.key
	kvValueField  = 5 // mvccpb.KeyValue.value
)

// drillDB reads the bolt file at path and fills rep.
func drillDB(ctx context.Context, path string, paths []coveredPath, tr encryptionconfig.StaticTransformers, ring *drillRing, rep *DrillReport) error {
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		return fmt.Errorf("open the snapshot as etcd's database: %w", err)
	}
	defer db.Close()
	counts := map[[2]string]*DrillCount{}
	count := func(resource, prefix string) *DrillCount {
		k := [2]string{resource, prefix}
		if counts[k] == nil {
			counts[k] = &DrillCount{Resource: resource, Prefix: prefix}
		}
		return counts[k]
	}
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(keyBucket)
		if b == nil {
			return errors.New("the file has no \"key\" bucket: not an etcd v3 database")
		}
		// Pass 1: the newest revision of every covered key. Revisions
		// sort in time, so the last one seen wins.
		latest := map[string]string{}
		c := b.Cursor()
		n := 0
		for rev, kv := c.First(); rev != nil; rev, kv = c.Next() {
			if n++; n%4096 == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			if len(rev) < revBytes {
				return fmt.Errorf("revision key of %d bytes: not etcd's layout", len(rev))
			}
			key, ok := kvField(kv, kvKeyField)
			if !ok {
				return fmt.Errorf("revision %x: not a mvccpb.KeyValue", rev[:revBytes])
			}
			if _, ok := resourceOf(paths, key); ok {
				latest[string(key)] = string(rev)
			}
			rep.Revision = max(rep.Revision, int64(binary.BigEndian.Uint64(rev[:8])))
		}
		// Pass 2, in the same order, over the values that count: the heap
		// holds one value at a time.
		for rev, kv := c.First(); rev != nil; rev, kv = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			key, _ := kvField(kv, kvKeyField)
			want, ok := latest[string(key)]
			if !ok || want != string(rev) {
				continue
			}
			if len(rev) > revBytes && rev[revBytes] == tombstoneMark {
				continue // deleted: a restore does not bring it back
			}
			p, _ := resourceOf(paths, key)
			value, _ := kvField(kv, kvValueField)
			prefix := cluster.StoragePrefix(value)
			cnt := count(p.resource, prefix)
			cnt.Objects++
			rep.Total++
			reason := ""
			if why, ok := ring.cannot[prefix]; ok {
				if ring.kms[prefix] {
					cnt.Unchecked++
					rep.Unchecked++
					continue
				}
				reason = why
			} else {
				reason = decryptObject(ctx, tr, p.gr, key, value)
			}
			if reason == "" {
				continue
			}
			cnt.Failed++
			rep.Failed++
			if len(rep.Failures) < maxDrillFailures {
				rep.Failures = append(rep.Failures, DrillFailure{Resource: p.resource, Object: string(key), Prefix: prefix, Reason: reason})
			}
		}
		return nil
	})
	for _, k := range slices.SortedFunc(maps.Keys(counts), func(a, b [2]string) int {
		return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1]))
	}) {
		rep.Objects = append(rep.Objects, *counts[k])
	}
	return err
}

// decryptObject decrypts one stored value as kube-apiserver reads it and
// checks the plaintext; it returns why it failed, "" when it did not.
// The reason never holds the value or the plaintext.
func decryptObject(ctx context.Context, tr encryptionconfig.StaticTransformers, gr schema.GroupResource, key, value []byte) string {
	plain, _, err := tr.TransformerForResource(gr).TransformFromStorage(ctx, value, storagevalue.DefaultContext(key))
	if err != nil {
		return "does not decrypt: " + err.Error()
	}
	return checkObject(key, plain)
}

// checkObject checks plain is a Kubernetes object (protobuf, as
// kube-apiserver stores built-in types, or JSON) named as its etcd key.
func checkObject(key, plain []byte) string {
	var kind, name, namespace string
	switch {
	case bytes.HasPrefix(plain, protobufMagic):
		var ok bool
		kind, name, namespace, ok = protobufObject(plain[len(protobufMagic):])
		if !ok {
			return "decrypts, but not into a Kubernetes protobuf object"
		}
	case bytes.HasPrefix(bytes.TrimLeft(plain, " \t\r\n"), []byte("{")):
		var obj struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(plain, &obj); err != nil || obj.APIVersion == "" {
			return "decrypts, but not into a Kubernetes JSON object"
		}
		kind, name, namespace = obj.Kind, obj.Metadata.Name, obj.Metadata.Namespace
	default:
		return "decrypts, but into neither protobuf nor JSON"
	}
	want := "/" + name
	if namespace != "" {
		want = "/" + namespace + want
	}
	if kind == "" || name == "" || !bytes.HasSuffix(key, []byte(want)) {
		return fmt.Sprintf("decrypts into a %s object named %q in namespace %q, which is not what its key names", orUnknown(kind), name, namespace)
	}
	return ""
}

// protobufMagic starts every protobuf object kube-apiserver stores.
var protobufMagic = []byte("k8s\x00")

// protobufObject reads a runtime.Unknown (typeMeta = 1 {kind = 2}, raw =
// 2) and, in raw, metadata = 1 {name = 1, namespace = 3}: the layout of
// every Kubernetes protobuf object.
func protobufObject(b []byte) (kind, name, namespace string, ok bool) {
	typeMeta, ok1 := kvField(b, 1)
	raw, ok2 := kvField(b, 2)
	if !ok1 || !ok2 {
		return "", "", "", false
	}
	k, _ := kvField(typeMeta, 2)
	meta, _ := kvField(raw, 1)
	n, _ := kvField(meta, 1)
	ns, _ := kvField(meta, 3)
	return string(k), string(n), string(ns), true
}

// kvField returns the bytes of the first length-delimited field num of the
// protobuf message b; ok is false when b does not parse or has no such
// field.
func kvField(b []byte, num protowire.Number) ([]byte, bool) {
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return nil, false
		}
		b = b[l:]
		if n == num && typ == protowire.BytesType {
			v, l := protowire.ConsumeBytes(b)
			if l < 0 {
				return nil, false
			}
			return v, true
		}
		l = protowire.ConsumeFieldValue(n, typ, b)
		if l < 0 {
			return nil, false
		}
		b = b[l:]
	}
	return nil, false
}

// Summary is one line for logs and status: the verdict and the counts,
// never an object's content.
func (r *DrillReport) Summary() string {
	if r.Problem != "" {
		return fmt.Sprintf("%s: %s", r.Verdict, r.Problem)
	}
	s := fmt.Sprintf("%s: %d objects decrypted", r.Verdict, r.Total-r.Failed-r.Unchecked)
	if r.Failed > 0 {
		s += fmt.Sprintf(", %d failed", r.Failed)
	}
	if r.Unchecked > 0 {
		s += fmt.Sprintf(", %d under a KMS plugin unchecked", r.Unchecked)
	}
	var bad []string
	for _, k := range r.Keys {
		if k.Problem != "" {
			bad = append(bad, "key "+k.Name+": "+k.Problem)
		}
	}
	if len(bad) > 0 {
		s += " (" + strings.Join(bad, "; ") + ")"
	}
	return s
}

// Text is the report for people: the verdict, the counts per resource and
// storage prefix, each key, and each failed object by name.
func (r *DrillReport) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s (%.1fs", r.Snapshot, r.Summary(), r.Seconds)
	if r.Revision > 0 {
		fmt.Fprintf(&b, ", revision %d", r.Revision)
	}
	b.WriteString(")\n")
	if len(r.Objects) > 0 {
		b.WriteString("objects:\n")
		for _, c := range r.Objects {
			fmt.Fprintf(&b, "  %-28s %-28s %8d", c.Resource, c.Prefix, c.Objects)
			if c.Failed > 0 {
				fmt.Fprintf(&b, "  %d failed", c.Failed)
			}
			if c.Unchecked > 0 {
				fmt.Fprintf(&b, "  %d unchecked (KMS)", c.Unchecked)
			}
			b.WriteString("\n")
		}
	}
	if len(r.Keys) > 0 {
		b.WriteString("keys:\n")
		for _, k := range r.Keys {
			state := "fetched, fingerprint matches"
			if k.Problem != "" {
				state = k.Problem
			}
			fmt.Fprintf(&b, "  %s %s: %s\n", k.Provider, k.Name, state)
		}
	}
	if len(r.Failures) > 0 {
		b.WriteString("failed objects:\n")
		for _, f := range r.Failures {
			fmt.Fprintf(&b, "  %s (%s): %s\n", f.Object, f.Prefix, f.Reason)
		}
		if more := r.Failed - int64(len(r.Failures)); more > 0 {
			fmt.Fprintf(&b, "  ... and %d more\n", more)
		}
	}
	return b.String()
}

// maxDrillReportSize bounds what ReadDrillReport reads: a report lists at
// most maxDrillFailures objects.
const maxDrillReportSize = 1 << 20

// WriteDrillReport stores rep beside its snapshot ("<name>.drill"),
// replacing the previous one: it is the proof `atrest status` and the
// daemon's metrics show, and it survives restarts.
func WriteDrillReport(ctx context.Context, store Store, rep *DrillReport) error {
	if err := checkName(rep.Snapshot); err != nil {
		return err
	}
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	object := drillObject(rep.Snapshot)
	// Objects are never overwritten: the old proof goes, then the new one
	// comes. A crash between leaves none, and the snapshot is drilled again.
	if err := store.Remove(ctx, object); err != nil {
		return fmt.Errorf("snapshot %s: replace its drill report: %w", rep.Snapshot, err)
	}
	up, err := store.Create(ctx, object)
	if err != nil {
		return fmt.Errorf("snapshot %s: drill report: %w", rep.Snapshot, err)
	}
	if _, err := up.Write(append(data, '\n')); err != nil {
		return errors.Join(fmt.Errorf("snapshot %s: write drill report: %w", rep.Snapshot, err), up.Abort())
	}
	return up.Commit()
}

// ReadDrillReport reads the last drill report of snapshot name; a snapshot
// never drilled is an error wrapping fs.ErrNotExist.
func ReadDrillReport(ctx context.Context, store Store, name string) (*DrillReport, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	r, err := store.Open(ctx, drillObject(name))
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: drill report: %w", name, err)
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, maxDrillReportSize+1))
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: read drill report: %w", name, err)
	}
	var rep DrillReport
	if len(data) > maxDrillReportSize {
		return nil, fmt.Errorf("snapshot %s: drill report larger than %d bytes", name, maxDrillReportSize)
	}
	if err := json.Unmarshal(data, &rep); err != nil || rep.Snapshot != name {
		return nil, fmt.Errorf("snapshot %s: drill report %s does not parse or names another snapshot: drill it again", name, drillObject(name))
	}
	return &rep, nil
}
