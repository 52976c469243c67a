package reconciler

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/keystore"
)

// fakeTransit is Vault's Transit key for the executor's bookkeeping tests.
type fakeTransit struct {
	st      keystore.TransitState
	rotates int
	sets    []int
}

func (f *fakeTransit) Mount() string { return "transit" }
func (f *fakeTransit) Key() string   { return "atrest-c" }
func (f *fakeTransit) State(context.Context) (keystore.TransitState, error) {
	return f.st, nil
}
func (f *fakeTransit) Create(context.Context) (keystore.TransitState, error) {
	f.st = keystore.TransitState{Exists: true, Latest: 1, MinDecryption: 1}
	return f.st, nil
}
func (f *fakeTransit) Rotate(context.Context) (keystore.TransitState, error) {
	f.rotates++
	f.st.Latest++
	return f.st, nil
}
func (f *fakeTransit) SetMinDecryption(_ context.Context, v int) error {
	f.sets = append(f.sets, v)
	f.st.MinDecryption = v
	return nil
}

// writeManifest puts a manifest for a snapshot needing Transit versions in
// dir, as Save writes one.
func writeManifest(t *testing.T, dir, clusterName string, at time.Time, versions ...int) {
	t.Helper()
	m := etcdsnap.Manifest{Format: etcdsnap.ManifestFormat, Name: etcdsnap.NewName(at), Cluster: clusterName, Time: at, Reason: "before rotate",
		Resources: []string{"secrets"}, Size: 1, SHA256: strings.Repeat("0", 64),
		Transit: &etcdsnap.TransitRef{Mount: "transit", Key: "atrest-c", Versions: versions}}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/"+m.Name+".json", b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestTrimTransit: min_decryption_version rises to the oldest version any
// stored object or kept snapshot of this cluster needs, never past it,
// and never falls.
func TestTrimTransit(t *testing.T) {
	objects := func(versions ...int) Live {
		ids := map[string]int64{}
		for _, v := range versions {
			ids[cluster.TransitKeyID("transit", "atrest-c", v)] = 10
		}
		return Live{KeyIDs: map[string]map[string]map[string]int64{"secrets": {cluster.TransitPrefix: ids}}}
	}
	now := time.Now().UTC()
	for _, tc := range []struct {
		name      string
		latest    int
		min       int
		live      Live
		snapshots [][]int // versions each kept snapshot needs
		other     []int   // another cluster's snapshot in the same directory
		want      int     // min_decryption_version after; 0: unchanged
	}{
		{name: "a kept snapshot needs version 1", latest: 3, min: 1, live: objects(3), snapshots: [][]int{{1}, {2}}, want: 0},
		{name: "the oldest needed is 2", latest: 3, min: 1, live: objects(3), snapshots: [][]int{{2}, {3}}, want: 2},
		{name: "objects still under 2", latest: 3, min: 1, live: objects(2, 3), snapshots: [][]int{{3}}, want: 2},
		{name: "nothing needs an older one", latest: 3, min: 1, live: objects(3), want: 3},
		{name: "another cluster's snapshot does not count", latest: 3, min: 1, live: objects(3), other: []int{1}, want: 3},
		{name: "never lowered", latest: 3, min: 3, live: objects(3), snapshots: [][]int{{1}}, want: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			store, err := etcdsnap.NewLocalDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for i, vs := range tc.snapshots {
				writeManifest(t, dir, "c", now.Add(time.Duration(i)*time.Minute), vs...)
			}
			if tc.other != nil {
				writeManifest(t, dir, "other", now.Add(-time.Hour), tc.other...)
			}
			ft := &fakeTransit{st: keystore.TransitState{Exists: true, Latest: tc.latest, MinDecryption: tc.min}}
			r := &Reconciler{Cluster: "c", Snapshots: store, KMS: &KMS{Transit: ft}}
			if err := r.trimTransit(t.Context(), tc.live); err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.want == 0 && len(ft.sets) > 0:
				t.Errorf("min_decryption_version set to %v, want it left at %d", ft.sets, tc.min)
			case tc.want != 0 && (len(ft.sets) != 1 || ft.sets[0] != tc.want):
				t.Errorf("min_decryption_version set to %v, want %d", ft.sets, tc.want)
			}
		})
	}
}

// TestRotateTransitOnce: a rotation is journaled in the keyring before
// Vault is asked, so a run cut short after Vault rotated does not rotate
// again, and still records the request served.
func TestRotateTransitOnce(t *testing.T) {
	ft := &fakeTransit{st: keystore.TransitState{Exists: true, Latest: 1, MinDecryption: 1}}
	keys := newFakeKeys()
	r := &Reconciler{Keys: keys, KMS: &KMS{Transit: ft}}
	d := Desired{Mode: cluster.Managed, Provider: cluster.VaultTransit, RotateRequest: "cli:1"}
	if err := r.rotateTransit(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	kr, _ := keys.Keyring(t.Context())
	if ft.rotates != 1 || !kr.RotationServed("cli:1") || kr.Transit == nil || kr.Transit.Rotating != nil {
		t.Fatalf("after one rotation: %d rotations, keyring %+v", ft.rotates, kr.Transit)
	}
	// Cut short: the keyring says a rotation from version 2 started for
	// cli:2, and Vault rotated (3), but nothing recorded it.
	kr.Transit.Rotating = &keystore.TransitRotation{Request: "cli:2", From: 2, Started: time.Now()}
	if err := keys.UpdateKeyring(t.Context(), kr); err != nil {
		t.Fatal(err)
	}
	ft.st.Latest = 3
	d.RotateRequest = "cli:2"
	if err := r.rotateTransit(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	kr, _ = keys.Keyring(t.Context())
	if ft.rotates != 1 || ft.st.Latest != 3 || !kr.RotationServed("cli:2") || kr.Transit.Rotating != nil {
		t.Fatalf("the resumed rotation rotated again (%d rotations, latest %d) or forgot the request (%+v)", ft.rotates, ft.st.Latest, kr.Transit)
	}
}
