//go:build sandbox

package keystore

import (
	"slices"
	"testing"
	"time"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/internal/leaktest"
)

// TestDestroyRetired: a retired key no kept snapshot needs is destroyed
// (its material and every version gone from Vault, nothing to undelete)
// and dropped from the keyring; a retired key the snapshot references in
// Vault need, or a manifest on disk needs although Vault does not list it,
// is kept and says which snapshots keep it; primary and reader keys are
// never touched; a dry run changes nothing.
func TestDestroyRetired(t *testing.T) {
	w := leaktest.New(t)
	ctx := testCtx(t)
	s := openStore(t, baseConfig(t, w))
	primary := mustNewKey(t, w, s, cluster.AESCBC)
	reader := mustNewKey(t, w, s, cluster.AESCBC)
	free := mustNewKey(t, w, s, cluster.AESCBC)
	inVault := mustNewKey(t, w, s, cluster.Secretbox)
	onDisk := mustNewKey(t, w, s, cluster.AESGCM)
	sameName := mustNewKey(t, w, s, cluster.AESCBC) // a manifest names it, with other material
	kr := mustKeyring(t, w, s)
	kr.Keys = []KeyInfo{InfoOf(primary, RolePrimary), InfoOf(reader, RoleReader), InfoOf(free, RoleRetired),
		InfoOf(inVault, RoleRetired), InfoOf(onDisk, RoleRetired), InfoOf(sameName, RoleRetired)}
	mustUpdate(t, w, s, kr)
	if err := s.AddSnapshotRef(ctx, "etcd-in-vault", []string{primary.Name, inVault.Name}); err != nil {
		t.Fatal(w.Err(err))
	}
	disk := map[string][]NeededKey{
		"etcd-on-disk":  {{Name: primary.Name, Fingerprint: primary.Fingerprint()}, {Name: onDisk.Name, Fingerprint: onDisk.Fingerprint()}},
		"etcd-by-name":  {{Name: onDisk.Name}},
		"etcd-other-fp": {{Name: sameName.Name, Fingerprint: "sha256:" + "00112233445566778899aabbccddeeff"}},
	}
	want := func(action string) []RetiredKey {
		return []RetiredKey{
			{Name: free.Name, Action: action},
			{Name: inVault.Name, Action: RetiredKept, ReferencedBy: []string{"etcd-in-vault"}},
			{Name: onDisk.Name, Action: RetiredKept, ReferencedBy: []string{"etcd-by-name", "etcd-on-disk"}},
			{Name: sameName.Name, Action: action},
		}
	}
	check := func(got, want []RetiredKey) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
		for i := range got {
			if got[i].Name != want[i].Name || got[i].Action != want[i].Action || !slices.Equal(got[i].ReferencedBy, want[i].ReferencedBy) {
				t.Errorf("key %d: %s %s %v, want %s %s %v", i, got[i].Name, got[i].Action, got[i].ReferencedBy, want[i].Name, want[i].Action, want[i].ReferencedBy)
			}
		}
	}

	got, err := s.DestroyRetired(ctx, DestroyRetiredOptions{Snapshots: disk, DryRun: true})
	if err != nil {
		t.Fatal(w.Err(err))
	}
	check(got, want(RetiredWouldDestroy))
	if after := mustKeyring(t, w, s); after.Version != kr.Version {
		t.Errorf("the dry run wrote the keyring (version %d -> %d)", kr.Version, after.Version)
	}
	if _, err := s.Key(ctx, free.Name); err != nil {
		t.Fatalf("the dry run destroyed %s: %v", free.Name, w.Err(err))
	}

	// Asking for a key that is not retired is refused before anything.
	_, err = s.DestroyRetired(ctx, DestroyRetiredOptions{Holder: "test", Names: []string{reader.Name}})
	wantErr(t, w, err, ErrReferenced, "lists "+reader.Name+" as reader")
	_, err = s.DestroyRetired(ctx, DestroyRetiredOptions{Holder: "test", Names: []string{"k-nope"}})
	wantErr(t, w, err, ErrNotFound, "has no key k-nope")

	// The lock is the transition lock: held elsewhere, nothing happens.
	other, err := s.AcquireLock(ctx, "a running apply", time.Minute)
	if err != nil {
		t.Fatal(w.Err(err))
	}
	_, err = s.DestroyRetired(ctx, DestroyRetiredOptions{Holder: "test", Snapshots: disk})
	wantErr(t, w, err, ErrLocked, "a running apply")
	if err := other.Release(ctx); err != nil {
		t.Fatal(w.Err(err))
	}

	got, err = s.DestroyRetired(ctx, DestroyRetiredOptions{Holder: "test", Snapshots: disk})
	if err != nil {
		t.Fatal(w.Err(err))
	}
	check(got, want(RetiredDestroyed))
	for _, k := range []cluster.Key{free, sameName} {
		_, err := s.Key(ctx, k.Name)
		wantErr(t, w, err, ErrNotFound)
		for _, kind := range []string{"data", "metadata"} {
			sec, err := root(t).Logical().ReadWithContext(ctx, s.path(kind, keyRel(k.Name)))
			if err != nil || sec != nil {
				t.Errorf("%s of destroyed key %s: %v %v, want nothing left", kind, k.Name, sec, err)
			}
		}
	}
	for _, k := range []cluster.Key{primary, reader, inVault, onDisk} {
		if got, err := s.Key(ctx, k.Name); err != nil || got.Fingerprint() != k.Fingerprint() {
			t.Errorf("key %s after destroy-retired: %v", k.Name, w.Err(err))
		}
	}
	after := mustKeyring(t, w, s)
	var names []string
	for _, k := range after.Keys {
		names = append(names, k.Name+":"+string(k.Role))
	}
	if wantNames := []string{primary.Name + ":primary", reader.Name + ":reader", inVault.Name + ":retired", onDisk.Name + ":retired"}; !slices.Equal(names, wantNames) {
		t.Errorf("keyring after: %v, want %v", names, wantNames)
	}
	if info, err := s.LockState(ctx); err != nil || info.Held {
		t.Errorf("lock after: %+v %v, want it released", info, err)
	}

	// Once the snapshots are gone, the rest goes too; a second run is a no-op.
	if err := s.ReleaseSnapshotRef(ctx, "etcd-in-vault"); err != nil {
		t.Fatal(w.Err(err))
	}
	got, err = s.DestroyRetired(ctx, DestroyRetiredOptions{Holder: "test"})
	if err != nil {
		t.Fatal(w.Err(err))
	}
	check(got, []RetiredKey{{Name: inVault.Name, Action: RetiredDestroyed}, {Name: onDisk.Name, Action: RetiredDestroyed}})
	if got, err := s.DestroyRetired(ctx, DestroyRetiredOptions{Holder: "test"}); err != nil || len(got) != 0 {
		t.Errorf("a run with nothing retired: %+v %v", got, w.Err(err))
	}
	if kr := mustKeyring(t, w, s); len(kr.Keys) != 2 {
		t.Errorf("keyring after: %+v", kr.Keys)
	}

	// A transition in flight: refused, nothing destroyed.
	kr = mustKeyring(t, w, s)
	kr.Keys = append(kr.Keys, InfoOf(free, RoleRetired))
	kr.Journal = NewJournal("rotate", "rev", "", "step")
	mustUpdate(t, w, s, kr)
	_, err = s.DestroyRetired(ctx, DestroyRetiredOptions{Holder: "test"})
	wantErr(t, w, err, ErrConflict, "a transition is in flight")
}
