package reconciler

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/keystore"
)

// rkeKey is a key as a plain `rke up` generates one.
var rkeKey = cluster.Key{Name: "key-x7k2p", Provider: cluster.AESCBC, Secret: []byte("E73F1C830C0205ADE842A1FE48B7397B")}

func fileOf(t *testing.T, keys ...cluster.Key) []byte {
	t.Helper()
	chain := cluster.Chain{}
	byName := map[string]cluster.Key{}
	for _, k := range keys {
		chain = append(chain, cluster.EntryOf(k))
		byName[k.Name] = k
	}
	data, err := cluster.RenderChains(cluster.Chains{"secrets": append(chain, cluster.Identity)}, func(n string) (cluster.Key, error) { return byName[n], nil })
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func stateWith(node string, file []byte) controlplane.NodeState {
	s := controlplane.NodeState{Node: node, Ready: true}
	if file != nil {
		sum := sha256.Sum256(file)
		s.File = controlplane.ProviderFile{Present: true, Data: file, SHA256: hex.EncodeToString(sum[:])}
	}
	return s
}

func TestOutsideKeys(t *testing.T) {
	known := cluster.Key{Name: "k-known", Provider: cluster.AESCBC, Secret: []byte("0123456789abcdef0123456789abcdef")}
	other := rkeKey
	other.Secret = []byte("fedcba9876543210fedcba9876543210")
	kr := &keystore.Keyring{Keys: []keystore.KeyInfo{keystore.InfoOf(known, keystore.RolePrimary)}}
	for _, tc := range []struct {
		name   string
		states []controlplane.NodeState
		want   []string // node:key
	}{
		{"none", []controlplane.NodeState{stateWith("cp1", nil), stateWith("cp2", fileOf(t, known))}, nil},
		{"once per key, first node", []controlplane.NodeState{stateWith("cp1", fileOf(t, known)), stateWith("cp2", fileOf(t, rkeKey, known)), stateWith("cp3", fileOf(t, rkeKey))}, []string{"cp2:key-x7k2p"}},
		{"other material under one name: both", []controlplane.NodeState{stateWith("cp1", fileOf(t, rkeKey)), stateWith("cp2", fileOf(t, other))}, []string{"cp1:key-x7k2p", "cp2:key-x7k2p"}},
		{"a file that does not parse holds nothing", []controlplane.NodeState{stateWith("cp1", []byte("not: [a config"))}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, f := range outsideKeys(kr, tc.states, "") {
				got = append(got, f.node+":"+f.key.Name)
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// A plain `rke up` replaced the nodes' file with its own fresh key while a
// stall stands: the key goes to Vault all the same, and once the stall is
// lifted the cluster converges back, readers first, retiring the key.
func TestOutsideKeyImportedFirst(t *testing.T) {
	e := newExecutor()
	d := enable("r1")
	if _, err := e.r.Reconcile(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	ours := e.etcd.stored
	e.nodes.file = fileOf(t, rkeKey)
	e.etcd.stored = cluster.EntryOf(rkeKey).Prefix()
	kr, _ := e.keys.Keyring(context.Background())
	kr.Stall = &keystore.Stall{Reason: ReasonStepFailedRepeatedly, Inputs: inputsOf(d), Since: time.Now()}
	if err := e.keys.UpdateKeyring(context.Background(), kr); err != nil {
		t.Fatal(err)
	}
	_, err := e.r.Reconcile(context.Background(), d)
	var stall *StallError
	if !errors.As(err, &stall) {
		t.Fatalf("want the stall to stand, got %v", err)
	}
	if _, err := e.keys.Key(context.Background(), rkeKey.Name); err != nil {
		t.Fatalf("the outside key is not in Vault under a stall: %v", err)
	}
	kr, _ = e.keys.Keyring(context.Background())
	k, ok := kr.Find(rkeKey.Name)
	if !ok || k.Outside != "cp1" || k.Role != keystore.RoleReader {
		t.Fatalf("keyring entry %+v, %v", k, ok)
	}
	// The drift says who did it.
	live, kr2, err := e.r.Observe(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	kr2.Stall = nil
	plan, err := MakePlan(e.r.Input(d, live, kr2, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(plan.Drift, "\n"), "node cp1 runs key key-x7k2p, which an outside writer") {
		t.Errorf("drift: %v", plan.Drift)
	}
	if plan.Steps[0].Kind != StepSnapshot || !strings.Contains(plan.Steps[1].String(), rkeKey.Name) {
		t.Errorf("plan: %v", plan.Steps)
	}

	if _, err := Resume(context.Background(), e.keys); err != nil {
		t.Fatal(err)
	}
	if _, err := e.r.Reconcile(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if e.etcd.stored != ours {
		t.Errorf("stored under %s, want %s", e.etcd.stored, ours)
	}
	kr, _ = e.keys.Keyring(context.Background())
	if k, _ := kr.Find(rkeKey.Name); k.Role != keystore.RoleRetired {
		t.Errorf("the outside key is %s after convergence, want retired", k.Role)
	}

	// A stale cluster.rkestate: plain `rke up` puts the retired key back.
	// Vault has it: nothing to import, but the drift names it.
	e.nodes.file = fileOf(t, rkeKey)
	live, kr2, err = e.r.Observe(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	plan, err = MakePlan(e.r.Input(d, live, kr2, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Outside) != 2 || plan.Outside[0].Node != "cp1" || plan.Outside[0].Keys[0] != rkeKey.Name {
		t.Errorf("outside runs %v", plan.Outside)
	}
	if _, err := e.r.Reconcile(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if e.etcd.stored != ours {
		t.Errorf("stored under %s, want %s", e.etcd.stored, ours)
	}
}

// After a plain `rke up` with a fresh key, no node can read what atrest's
// key wrote: each serves, but its secrets cache never fills, so /readyz
// fails on informer-sync alone. The plan's first change is the deploy
// that gives every such node the key it lacks, readers first; a node not
// ready for any other reason still refuses everything.
func TestStarvedNodesFedFirst(t *testing.T) {
	rke := testKey(cluster.AESCBC, "key-x7k2p")
	w := newWorld(t, 3, cluster.Chains{"secrets": {rke, cluster.Identity}}, map[string]map[string]int64{
		"secrets": {testKey(cluster.AESCBC, "k-ours").Prefix(): 500, rke.Prefix(): 7},
	})
	for i := range w.nodes {
		w.nodes[i].Ready, w.nodes[i].Unsynced = false, true
	}
	w.keyring = Keyring{Keys: []KeyState{
		{Name: "k-ours", Provider: cluster.AESCBC, Role: RolePrimary, Fingerprint: testFP("k-ours")},
		{Name: "key-x7k2p", Provider: cluster.AESCBC, Role: RoleReader, Fingerprint: testFP("key-x7k2p"), Outside: "node1"},
	}}
	w.desired = Desired{Mode: cluster.Managed, Provider: cluster.AESCBC, Revision: "r1"}
	first := w.converge()
	i := slices.IndexFunc(first.Steps, Step.TouchesNodes)
	if d := first.Steps[i]; d.Kind != StepDeploy || len(d.Unsynced) != 3 || d.Chains["secrets"].Writer() != rke.Prefix() ||
		!strings.Contains(d.String(), "not ready until they can read what etcd stores") {
		t.Fatalf("first change: %s", first.Steps[i])
	}
	if len(first.Outside) != 3 {
		t.Errorf("outside runs: %v", first.Outside)
	}
	w.assertConverged(managed("k-ours"))

	// Not ready for another reason: refused.
	w = newWorld(t, 2, cluster.Chains{"secrets": {rke, cluster.Identity}}, map[string]map[string]int64{
		"secrets": {rke.Prefix(): 7},
	})
	w.nodes[1].Ready, w.nodes[1].Unsynced = false, true // its census is readable: a cache still filling
	w.keyring = Keyring{Keys: []KeyState{{Name: "key-x7k2p", Provider: cluster.AESCBC, Role: RolePrimary, Fingerprint: testFP("key-x7k2p")}}}
	w.desired = Desired{Mode: cluster.Managed, Provider: cluster.AESCBC, Revision: "r1", RotateRequested: true}
	if _, err := MakePlan(Input{Desired: w.desired, Live: Live{Nodes: w.nodes, Census: w.census}, Keyring: w.keyring, Limits: unlimited}); ReasonOf(err) != ReasonNodeNotReady {
		t.Fatalf("a node not ready but not starved: %v", err)
	}
}

// Two nodes an outside writer left other material under one new name:
// the first is imported, the second kept apart in Vault (the planner then
// refuses, KeyMaterialConflict); both are reported.
func TestOutsideKeysOtherMaterial(t *testing.T) {
	e := newExecutor()
	other := rkeKey
	other.Secret = []byte("fedcba9876543210fedcba9876543210")
	states := []controlplane.NodeState{stateWith("cp1", fileOf(t, rkeKey)), stateWith("cp2", fileOf(t, other))}
	got, err := e.r.importOutside(context.Background(), states)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Node != "cp2" || got[0].Preserved == "" || got[1].Node != "cp1" || got[1].Preserved != "" {
		t.Fatalf("reported %+v", got)
	}
	if k, _ := e.keys.Key(context.Background(), rkeKey.Name); k.Fingerprint() != rkeKey.Fingerprint() {
		t.Error("the first node's material is not the one imported")
	}
	if k := e.keys.preserved[got[0].Preserved]; k.Fingerprint() != other.Fingerprint() {
		t.Error("the second node's material is not preserved")
	}
	// Imported once: a second look finds nothing new.
	if again, err := e.r.importOutside(context.Background(), states); err != nil || len(again) != 0 {
		t.Errorf("again: %v, %v", again, err)
	}
}

// A cluster RKE encrypts, met for the first time: its key is imported
// before the plan (ImportOutsideKeys), and the plan still adopts it as the
// primary, changing no node, where a key from Git or a retired one would
// be replaced by a fresh one.
func TestOutsideKeyAdopted(t *testing.T) {
	rke := testKey(cluster.AESCBC, "key-x7k2p")
	w := newWorld(t, 2, cluster.Chains{"secrets": {rke, cluster.Identity}}, map[string]map[string]int64{"secrets": {rke.Prefix(): 9}})
	w.keyring = Keyring{Keys: []KeyState{{Name: "key-x7k2p", Provider: cluster.AESCBC, Role: RoleReader, Fingerprint: testFP("key-x7k2p"), Outside: "node1"}}}
	w.desired = Desired{Mode: cluster.Managed, Provider: cluster.AESCBC, Revision: "r1"}
	p := w.plan()
	if len(p.Steps) != 1 || p.Steps[0].Kind != StepImportKeys || p.Steps[0].Primary != "key-x7k2p" || len(p.Outside) != 2 ||
		p.Steps[0].String() != "adopt key-x7k2p as the primary key (every node writes with it; Vault holds it)" {
		t.Fatalf("plan: %v, outside %v", p.Steps, p.Outside)
	}
	w.exec(p.Steps[0])
	if p := w.plan(); !p.Empty() || len(p.Outside) != 0 {
		t.Fatalf("after adoption: %v, outside %v", p.Steps, p.Outside)
	}
	// Retired: not adopted, replaced.
	w.keyring.Keys[0].Role = RoleRetired
	w.keyring.Keys[0].Outside = "node1"
	if p := w.plan(); !slices.ContainsFunc(p.Steps, func(s Step) bool { return s.Kind == StepGenerateKey }) {
		t.Fatalf("a retired key was adopted: %v", p.Steps)
	}
}
