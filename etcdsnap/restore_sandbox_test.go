//go:build sandbox

package etcdsnap_test

import (
	"encoding/json"
	"fmt"
	"github.com/atrest-io/atrest/internal/leaktest"
	"maps"
	"net/http"
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

// TestRestoreAfterRotationAndDisable is the promise of the package: a
// snapshot stays restorable after the keys it was written with have left
// the nodes. Along the way the census proves each step reached every object.
//
//	plain secrets -> enable K1 -> encrypted secrets -> census -> snapshot S1
//	rotate K1 -> K2 ([K1,K2] -> [K2,K1] -> rewrite -> [K2]) -> census
//	restore S1 with its restore config (K1 from Vault): every secret reads back
//	snapshot S2 -> disable ([identity,K2] -> rewrite -> no file) -> census
//	restore S2 with its restore config (K2 from Vault): every secret reads back
//	snapshots S0 (before the enable) and S3 (after the disable) restore too
//
// Before each restore, the decryption drill proves the snapshot readable
// offline and counts what the census counted; with K1 destroyed in Vault it
// names the objects a restore loses, and a real restore loses exactly those.
func TestRestoreAfterRotationAndDisable(t *testing.T) {
	if os.Getenv("ATREST_KUBE_APISERVER") == "" {
		t.Fatal("set ATREST_KUBE_APISERVER to the kube-apiserver binary: the restore test runs one on the host")
	}
	leaks := leaktest.New(t)
	ctx := testCtx(t, 15*time.Minute)
	keys := newVaultKeys(t, "etcdsnap-test/restore")
	newKey := func() cluster.Key {
		k, err := cluster.NewKey(cluster.AESCBC, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Key first, then change: the key is in Vault before any node has it.
		if err := keys.put(ctx, leaks.Key(k)); err != nil {
			t.Fatal(err)
		}
		return k
	}
	c := dial(t, etcdConfig(leaks.Logger()))
	store, err := etcdsnap.NewLocalDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	resources := []string{"secrets", "configmaps", "deployments.apps"}
	census := func(c *etcdsnap.Client) etcdsnap.Census {
		t.Helper()
		// A page size far below the number of objects: many pages.
		got, err := c.Census(ctx, "", resources, 2)
		leaks.Note(err)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	want := census(c) // what the cluster holds before the test writes anything
	add := func(resource, prefix string, n int64) {
		if want[resource] == nil {
			want[resource] = map[string]int64{}
		}
		want[resource][prefix] += n
	}
	checkCensus := func(c *etcdsnap.Client, step string, want etcdsnap.Census) {
		t.Helper()
		got := census(c)
		for _, r := range resources {
			w, g := nonZero(want[r]), nonZero(got[r])
			if !maps.Equal(w, g) {
				t.Errorf("%s: census of %s = %v, want %v", step, r, g, w)
			}
		}
	}
	values := map[string]string{} // namespace/name -> value, everything the test wrote

	// Plain objects of three resources, written with encryption off.
	for i := range 3 {
		name := fmt.Sprintf("plain-%d", i)
		createSecret(t, name, "plain value "+name)
		values["default/"+name] = "plain value " + name
		add("secrets", cluster.PrefixIdentity, 1)
	}
	for i := range 4 {
		mustKube(t, sb.Nodes[0].APIServerURL, http.MethodPost, "/api/v1/namespaces/default/configmaps", map[string]any{
			"metadata": map[string]string{"name": fmt.Sprintf("cm-%d", i)}, "data": map[string]string{"k": "v"},
		}, http.StatusCreated)
		add("configmaps", cluster.PrefixIdentity, 1)
	}
	mustKube(t, sb.Nodes[0].APIServerURL, http.MethodPost, "/apis/apps/v1/namespaces/default/deployments", deployment("web"), http.StatusCreated)
	add("deployments.apps", cluster.PrefixIdentity, 1)

	// S0, before the enable: everything plain.
	s0, err := c.Save(ctx, store, keys, etcdsnap.Manifest{
		Reason: "before enable", Transition: "enable-test", Resources: []string{"secrets"},
	})
	leaks.Note(err)
	if err != nil {
		t.Fatal(err)
	}
	wantS0, valuesS0 := cloneCensus(want), maps.Clone(values)

	// Enable with K1 (a single node: the reader phase is not needed).
	k1 := newKey()
	deployProviderConfig(t, render(t, cluster.ManagedConfig{Keys: []cluster.Key{k1}}))
	for i := range 5 {
		name := fmt.Sprintf("enc-k1-%d", i)
		createSecret(t, name, "encrypted with k1 "+name)
		values["default/"+name] = "encrypted with k1 " + name
		add("secrets", k1.Prefix(), 1)
	}
	checkCensus(c, "after enabling with "+k1.Name, want)
	wantS1 := cloneCensus(want)

	s1, err := c.Save(ctx, store, keys, etcdsnap.Manifest{
		Reason: "before rotate", Transition: "rotate-test", KeyringVersion: 1,
		Keys: []etcdsnap.KeyRef{etcdsnap.RefOf(k1)}, Resources: []string{"secrets"},
	})
	leaks.Note(err)
	if err != nil {
		t.Fatal(err)
	}
	leaks.Note(s1)
	valuesS1 := maps.Clone(values)
	// What an etcd restore of S1 would put back, for two of its secrets.
	restoredKeys := []string{"/registry/secrets/default/enc-k1-0", "/registry/secrets/default/enc-k1-1"}
	underK1 := map[string][]byte{}
	for _, key := range restoredKeys {
		if underK1[key], err = c.RawGet(ctx, key); err != nil {
			t.Fatal(err)
		}
	}

	// Rotate K1 -> K2, outside the snapshot; then K1 leaves the node.
	k2 := newKey()
	deployProviderConfig(t, render(t, cluster.ManagedConfig{Keys: []cluster.Key{k1, k2}}))
	deployProviderConfig(t, render(t, cluster.ManagedConfig{Keys: []cluster.Key{k2, k1}}))
	rewriteSecrets(t)
	total := want.Total("secrets")
	want["secrets"] = map[string]int64{k2.Prefix(): total}
	checkCensus(c, "after the rewrite to "+k2.Name, want)
	deployProviderConfig(t, render(t, cluster.ManagedConfig{Keys: []cluster.Key{k2}}))
	onNode, _ := os.ReadFile(filepath.Join(sb.Nodes[0].Dir, "etc-kubernetes", "ssl", "encryption.yaml"))
	if strings.Contains(string(onNode), k1.Name) {
		t.Fatal("k1 is still on the node")
	}
	createSecret(t, "enc-k2-0", "encrypted with k2")
	values["default/enc-k2-0"] = "encrypted with k2"
	add("secrets", k2.Prefix(), 1)

	t.Run("restore the snapshot from before the rotation", func(t *testing.T) {
		verifyRestore(t, leaks, store, keys, s1, valuesS1, wantS1, resources)
	})

	// After an etcd restore, objects are stored under K1 again while the
	// node runs only K2: the snapshot taken then needs K1 too, found by
	// the census alone.
	t.Run("a snapshot after an etcd restore names the census-only key", func(t *testing.T) {
		raw, err := sb.EtcdClient()
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		underK2 := map[string][]byte{}
		for _, key := range restoredKeys {
			if underK2[key], err = c.RawGet(ctx, key); err != nil {
				t.Fatal(err)
			}
			if _, err := raw.Put(ctx, key, string(underK1[key])); err != nil {
				t.Fatal(err)
			}
		}
		defer func() {
			// Back to what the node reads, for the rest of the test.
			for _, key := range restoredKeys {
				if _, err := raw.Put(ctx, key, string(underK2[key])); err != nil {
					t.Error(err)
				}
			}
		}()
		now := cloneCensus(want)
		now["secrets"][k2.Prefix()] -= int64(len(restoredKeys))
		now["secrets"][k1.Prefix()] = int64(len(restoredKeys))
		checkCensus(c, "after putting back S1's "+k1.Name+" values", now)

		cfg, err := cluster.ParseEncryptionConfig("node file", "", onNode, "")
		if err != nil {
			t.Fatal(err)
		}
		inVault := func(prefix string) (cluster.ProviderEntry, bool) {
			for _, k := range []cluster.Key{k1, k2} {
				if e := cluster.EntryOf(k); e.Prefix() == prefix {
					return e, true
				}
			}
			return cluster.ProviderEntry{}, false
		}
		lists, unreadable := etcdsnap.BuildConfig([]cluster.Chains{cfg.Chains()}, census(c), inVault)
		if len(unreadable) != 0 {
			t.Fatalf("unreadable: %v", unreadable)
		}
		s, err := c.Save(ctx, store, keys, etcdsnap.Manifest{
			Reason: "manual", Cluster: "restore-test", KeyringVersion: 2,
			Keys: etcdsnap.ConfigKeys(lists), Resources: etcdsnap.ConfigResources(lists), Config: lists,
		})
		leaks.Note(err)
		if err != nil {
			t.Fatal(err)
		}
		leaks.Note(s)
		if got := s.KeyNames(); !slices.Equal(got, []string{k2.Name, k1.Name}) {
			t.Fatalf("the manifest names keys %v, want %s (the node's) and %s (the census')", got, k2.Name, k1.Name)
		}
		verifyRestore(t, leaks, store, keys, s, maps.Clone(values), now, resources)
	})

	s2, err := c.Save(ctx, store, keys, etcdsnap.Manifest{
		Reason: "before disable", Transition: "disable-test", KeyringVersion: 2,
		Keys: []etcdsnap.KeyRef{etcdsnap.RefOf(k2)}, Resources: []string{"secrets"},
	})
	leaks.Note(err)
	if err != nil {
		t.Fatal(err)
	}
	leaks.Note(s2)
	wantS2 := cloneCensus(want)
	valuesS2 := maps.Clone(values)

	// Disable: identity writes, rewrite everything plain, then no file and
	// no flag: K2 is gone from the node too.
	deployProviderConfig(t, render(t, cluster.ManagedConfig{IdentityFirst: true, Keys: []cluster.Key{k2}}))
	rewriteSecrets(t)
	deployProviderConfig(t, nil)
	want["secrets"] = map[string]int64{cluster.PrefixIdentity: want.Total("secrets")}
	checkCensus(c, "after disabling", want)
	if got := secretValues(t, sb.Nodes[0].APIServerURL); !maps.Equal(got, values) {
		t.Errorf("after disabling the cluster reads %v, want %v", got, values)
	}

	t.Run("restore the snapshot taken while encryption was on", func(t *testing.T) {
		verifyRestore(t, leaks, store, keys, s2, valuesS2, wantS2, resources)
	})

	// S3, after the disable: it needs no key at all.
	s3, err := c.Save(ctx, store, keys, etcdsnap.Manifest{Reason: "after disable-test", Resources: []string{"secrets"}})
	leaks.Note(err)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("restore the snapshots from before the enable and after the disable", func(t *testing.T) {
		verifyRestore(t, leaks, store, keys, s0, valuesS0, wantS0, resources)
		verifyRestore(t, leaks, store, keys, s3, maps.Clone(values), cloneCensus(want), resources)
	})

	// A key destroyed by hand in Vault: the drill names every object
	// only that key could read, and a real restore agrees (atrest cannot
	// render the config; without the key kube-apiserver fails exactly
	// those secrets).
	t.Run("a key removed from Vault by hand fails the drill, naming its objects", func(t *testing.T) {
		ctx := testCtx(t, 5*time.Minute)
		if err := keys.kv.DeleteMetadata(ctx, keys.base+"/keys/"+k1.Name); err != nil {
			t.Fatal(err)
		}
		restored := false
		defer func() {
			if !restored { // for the subtests after this one
				_ = keys.put(testCtx(t, time.Minute), k1)
			}
		}()
		rep, err := etcdsnap.Drill(ctx, store, s1.Name, keys, etcdsnap.DrillOptions{})
		leaks.Note(err)
		if err != nil {
			t.Fatal(err)
		}
		leaks.Note(rep.Text())
		var lost []string
		for key := range valuesS1 {
			if strings.HasPrefix(key, "default/enc-k1-") {
				lost = append(lost, "/registry/secrets/"+key)
			}
		}
		slices.Sort(lost)
		var failed []string
		for _, f := range rep.Failures {
			failed = append(failed, f.Object)
			if f.Prefix != k1.Prefix() || !strings.Contains(f.Reason, k1.Name) {
				t.Errorf("failure %+v: want prefix %s and a reason naming %s", f, k1.Prefix(), k1.Name)
			}
		}
		slices.Sort(failed)
		if rep.Verdict != etcdsnap.NotRestorable || rep.Failed != int64(len(lost)) || !slices.Equal(failed, lost) {
			t.Errorf("drill of %s without %s: %s, failures %v; want NotRestorable naming %v", s1.Name, k1.Name, rep.Summary(), failed, lost)
		}
		if len(rep.Keys) != 1 || rep.Keys[0].Problem == "" {
			t.Errorf("the report's keys %+v: want %s with its problem", rep.Keys, k1.Name)
		}

		// The real restore.
		if _, err := etcdsnap.RestoreConfig(ctx, *s1, keys); err == nil || !strings.Contains(err.Error(), k1.Name) {
			t.Errorf("RestoreConfig without %s: %v, want an error naming it", k1.Name, err)
		}
		plainOnly := filepath.Join(t.TempDir(), "identity.yaml")
		if err := os.WriteFile(plainOnly, []byte("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - identity: {}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		// It never gets ready (its secrets cache cannot list): it is live,
		// and serves each secret it can read.
		r := restoreSnapshotUntil(t, store.Path(s1.Name+".db"), plainOnly, leaks.Logger(), "/livez")
		if code, _ := kube(t, r.apiserver, http.MethodGet, "/readyz", nil); code == http.StatusOK {
			t.Errorf("the cluster restored without %s is ready", k1.Name)
		}
		for key := range valuesS1 {
			ns, name, _ := strings.Cut(key, "/")
			code, _ := kube(t, r.apiserver, http.MethodGet, "/api/v1/namespaces/"+ns+"/secrets/"+name, nil)
			if lostToo := slices.Contains(lost, "/registry/secrets/"+key); lostToo != (code != http.StatusOK) {
				t.Errorf("restored without %s: GET secret %s = %d; the drill says lost: %v", k1.Name, key, code, lostToo)
			}
		}

		// The key put back: proven again.
		if err := keys.put(ctx, k1); err != nil {
			t.Fatal(err)
		}
		restored = true
		if rep, err := etcdsnap.Drill(ctx, store, s1.Name, keys, etcdsnap.DrillOptions{}); err != nil || rep.Verdict != etcdsnap.Restorable {
			t.Errorf("drill with %s back in Vault: %v %v", k1.Name, rep.Summary(), err)
		}
	})

	t.Run("a corrupted file fails the drill and the restore", func(t *testing.T) {
		ctx := testCtx(t, 2*time.Minute)
		path := store.Path(s3.Name + ".db")
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		b := []byte{0}
		if _, err := f.ReadAt(b, st.Size()/2); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0xff
		if _, err := f.WriteAt(b, st.Size()/2); err != nil {
			t.Fatal(err)
		}
		f.Close()
		rep, err := etcdsnap.Drill(ctx, store, s3.Name, keys, etcdsnap.DrillOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Verdict != etcdsnap.NotRestorable || !strings.Contains(rep.Problem, "sha256") {
			t.Errorf("drill of the corrupted %s: %s, want NotRestorable for its hash", s3.Name, rep.Summary())
		}
		out, err := exec.CommandContext(ctx, "etcdctl", "snapshot", "restore", path, "--data-dir="+filepath.Join(t.TempDir(), "data")).CombinedOutput()
		if err == nil {
			t.Errorf("etcdctl restores the corrupted %s:\n%s", s3.Name, out)
		}
	})

	t.Run("the restore config refuses a different key under the same name", func(t *testing.T) {
		impostor := newVaultKeys(t, "etcdsnap-test/impostor")
		other, err := cluster.NewKey(cluster.AESCBC, nil)
		if err != nil {
			t.Fatal(err)
		}
		other.Name = k1.Name
		if err := impostor.put(ctx, leaks.Key(other)); err != nil {
			t.Fatal(err)
		}
		_, err = etcdsnap.RestoreConfig(ctx, *s1, impostor)
		leaks.Note(err)
		if err == nil || !strings.Contains(err.Error(), "fingerprint") {
			t.Errorf("RestoreConfig with another key named %s: %v", k1.Name, err)
		}
		kms := *s1
		kms.Keys = append(kms.Keys, etcdsnap.KeyRef{Name: "vault-kms", Provider: "kms", Fingerprint: s1.Keys[0].Fingerprint})
		_, err = etcdsnap.RestoreConfig(ctx, kms, keys)
		leaks.Note(err)
		if err == nil || !strings.Contains(err.Error(), "custom config") {
			t.Errorf("RestoreConfig with a KMS key: %v", err)
		}
	})
}

// verifyRestore restores snapshot m as an operator would: verify it, write
// its restore config, restore it with etcdctl into a fresh data directory,
// run etcd and kube-apiserver on it, and read every secret back.
func verifyRestore(t *testing.T, leaks *leaktest.Watch, store *etcdsnap.LocalDir, keys etcdsnap.KeySource,
	m *etcdsnap.Manifest, values map[string]string, census etcdsnap.Census, resources []string) {
	ctx := testCtx(t, 5*time.Minute)
	if err := etcdsnap.Verify(ctx, store, m.Name); err != nil {
		t.Fatal(err)
	}
	manifest, err := etcdsnap.ReadManifest(ctx, store, m.Name)
	if err != nil {
		t.Fatal(err)
	}
	data, err := etcdsnap.RestoreConfig(ctx, manifest, keys)
	leaks.Note(err)
	if err != nil {
		t.Fatal(err)
	}
	configPath := filepath.Join(t.TempDir(), "restore-"+m.Name+".yaml")
	if err := etcdsnap.WriteRestoreConfig(configPath, data, false); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(configPath); st.Mode().Perm() != 0o600 {
		t.Errorf("restore config mode %v", st.Mode().Perm())
	}
	instructions := etcdsnap.RestoreInstructionsIn(store, manifest, configPath)
	leaks.Note(instructions)
	for _, k := range manifest.Keys {
		if !strings.Contains(instructions, k.Name) {
			t.Errorf("the instructions do not name key %s", k.Name)
		}
	}

	// The drill's verdict, before the real restore says the same.
	rep, err := etcdsnap.Drill(ctx, store, m.Name, keys, etcdsnap.DrillOptions{})
	leaks.Note(err)
	if err != nil {
		t.Fatal(err)
	}
	leaks.Note(rep.Text())
	if rep.Verdict != etcdsnap.Restorable || rep.Failed != 0 {
		t.Errorf("drill of %s: %s", m.Name, rep.Text())
	}
	drilled := etcdsnap.Census{}
	for _, cnt := range rep.Objects {
		if drilled[cnt.Resource] == nil {
			drilled[cnt.Resource] = map[string]int64{}
		}
		drilled[cnt.Resource][cnt.Prefix] += cnt.Objects
	}
	if drilled["secrets"] == nil {
		t.Errorf("drill of %s read no secret: %s", m.Name, rep.Text())
	}
	for res, got := range drilled {
		if w := nonZero(census[res]); !maps.Equal(w, got) {
			t.Errorf("drill of %s counts %s %v, the census when it was taken %v", m.Name, res, got, w)
		}
	}

	r := restoreSnapshot(t, store.Path(m.Name+".db"), configPath, leaks.Logger())

	// The restored etcd holds what the census counted when the snapshot
	// was taken: objects under keys the node no longer has.
	rc := dial(t, r.etcd)
	got, err := rc.Census(ctx, "", resources, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range resources {
		if w, g := nonZero(census[res]), nonZero(got[res]); !maps.Equal(w, g) {
			t.Errorf("census of the restored %s = %v, want %v", res, g, w)
		}
	}

	// Every secret, listed (a list fails on any object it cannot decrypt)
	// and read one by one, has its original value.
	if got := secretValues(t, r.apiserver); !maps.Equal(got, values) {
		t.Errorf("the restored cluster lists %v, want %v", got, values)
	}
	for key, want := range values {
		ns, name, _ := strings.Cut(key, "/")
		var s struct {
			Data map[string][]byte `json:"data"`
		}
		body := mustKube(t, r.apiserver, http.MethodGet, "/api/v1/namespaces/"+ns+"/secrets/"+name, nil, http.StatusOK)
		if err := json.Unmarshal(body, &s); err != nil {
			t.Fatal(err)
		}
		if string(s.Data["value"]) != want {
			t.Errorf("restored secret %s = %q, want %q", key, s.Data["value"], want)
		}
	}
}

func nonZero(m map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

func cloneCensus(c etcdsnap.Census) etcdsnap.Census {
	out := etcdsnap.Census{}
	for r, m := range c {
		out[r] = maps.Clone(m)
	}
	return out
}

func deployment(name string) map[string]any {
	labels := map[string]string{"app": name}
	return map[string]any{
		"metadata": map[string]any{"name": name},
		"spec": map[string]any{
			"selector": map[string]any{"matchLabels": labels},
			"template": map[string]any{
				"metadata": map[string]any{"labels": labels},
				"spec":     map[string]any{"containers": []map[string]any{{"name": "web", "image": "nginx"}}},
			},
		},
	}
}
