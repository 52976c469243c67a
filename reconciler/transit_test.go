package reconciler

import (
	"slices"
	"strings"
	"testing"

	"github.com/atrest-io/atrest/cluster"
)

func transitChains() cluster.Chains {
	return cluster.Chains{"secrets": {cluster.TransitEntry(), cluster.Identity}}
}

// newTransitWorld is a world with Vault Transit configured; key says
// whether its key exists (at version 1) and live what the nodes run.
func newTransitWorld(t *testing.T, nodes int, live cluster.Chains, census map[string]map[string]int64, key bool) *world {
	w := newWorld(t, nodes, live, census)
	w.transit = &transitSim{uses: map[string]int{}, plugins: map[string]bool{}, keyIDs: map[string]map[string]int64{}}
	if key {
		w.transit.exists, w.transit.latest = true, 1
	}
	w.desired = Desired{Mode: cluster.Managed, Provider: cluster.VaultTransit}
	return w
}

// converged brings w to transit from scratch (enable from identity).
func convergedTransit(t *testing.T) *world {
	w := newTransitWorld(t, 3, nil, map[string]map[string]int64{"secrets": {cluster.PrefixIdentity: 40}}, false)
	w.converge()
	return w
}

func TestTransitEnableFromIdentity(t *testing.T) {
	w := newTransitWorld(t, 3, nil, map[string]map[string]int64{"secrets": {cluster.PrefixIdentity: 40}}, false)
	first := w.converge()
	if first.Transition != "enable" {
		t.Errorf("transition %q, want enable", first.Transition)
	}
	kinds := stepKinds(first.Steps)
	want := []StepKind{StepCreateTransitKey, StepSnapshot, StepDeployPlugin, StepDeploy, StepDeploy, StepRewrite, StepVerify}
	if !slices.Equal(kinds, want) {
		t.Errorf("plan %v, want %v", kinds, want)
	}
	w.assertConverged(transitChains())
	for id, n := range w.transit.keyIDs["secrets"] {
		if id != w.transit.keyID(1) || n == 0 {
			t.Errorf("%d secrets under %s, want all under %s", n, id, w.transit.keyID(1))
		}
	}
}

func TestTransitFromAESCBC(t *testing.T) {
	w := newTransitWorld(t, 3, managed("k1"), map[string]map[string]int64{"secrets": {"aescbc:v1:k1": 25, cluster.PrefixIdentity: 3}}, true)
	w.keyring.Keys = []KeyState{{Name: "k1", Provider: cluster.AESCBC, Role: RolePrimary, Fingerprint: testFP("k1")}}
	first := w.converge()
	if first.Transition != "managed" {
		t.Errorf("transition %q, want managed", first.Transition)
	}
	w.assertConverged(transitChains())
	// The old key stays a reader until the census is clean: the world
	// checked every node change; and the plugin came before any file
	// that names it.
	if i, j := slices.Index(w.executed, StepDeployPlugin), slices.Index(w.executed, StepDeploy); i < 0 || i > j {
		t.Errorf("steps %v: the plugin must be deployed before the first provider file", w.executed)
	}
}

func TestTransitRotation(t *testing.T) {
	w := convergedTransit(t)
	w.executed = nil
	w.desired.RotateRequest, w.desired.RotateRequested = "cli:now", true
	first := w.converge()
	if first.Transition != "rotate" {
		t.Errorf("transition %q, want rotate", first.Transition)
	}
	want := []StepKind{StepSnapshot, StepRotateTransit, StepRewrite, StepVerify}
	if kinds := stepKinds(first.Steps); !slices.Equal(kinds, want) {
		t.Errorf("plan %v, want %v", kinds, want)
	}
	if !strings.Contains(first.Steps[2].String(), "prove every node writes with key_id "+PendingVersion) {
		t.Errorf("rewrite step: %s", first.Steps[2])
	}
	if w.transit.latest != 2 {
		t.Fatalf("Transit key at version %d, want 2", w.transit.latest)
	}
	// No deploy: the config is the same; every object now needs v2 only.
	if slices.Contains(w.executed, StepDeploy) {
		t.Errorf("a rotation deployed a config: %v", w.executed)
	}
	for id, n := range w.transit.keyIDs["secrets"] {
		if n > 0 && id != w.transit.keyID(2) {
			t.Errorf("%d secrets still under %s after the rotation", n, id)
		}
	}
}

func TestTransitRotatedOutsideIsRewritten(t *testing.T) {
	w := convergedTransit(t)
	w.transit.latest = 2 // `vault write -f transit/keys/.../rotate` by hand
	p := w.plan()
	if kinds := stepKinds(p.Steps); !slices.Equal(kinds, []StepKind{StepRewrite, StepVerify}) {
		t.Fatalf("plan %v, want a rewrite proven with the new key_id", kinds)
	}
	if p.Steps[0].KeyID != w.transit.keyID(2) || p.Steps[1].KeyIDs["secrets"] != w.transit.keyID(2) {
		t.Errorf("steps %s / %s: want key_id %s", p.Steps[0], p.Steps[1], w.transit.keyID(2))
	}
	w.converge()
}

func TestTransitBackToAESCBC(t *testing.T) {
	w := convergedTransit(t)
	w.executed = nil
	w.desired = Desired{Mode: cluster.Managed, Provider: cluster.AESCBC}
	first := w.converge()
	if first.Transition != "managed" {
		t.Errorf("transition %q, want managed", first.Transition)
	}
	if last := w.executed[len(w.executed)-1]; last != StepRemovePlugin {
		t.Errorf("steps %v: the plugin goes last, once nothing needs it", w.executed)
	}
	for _, n := range w.nodes {
		if got := n.Running()["secrets"].Writer(); !strings.HasPrefix(got, "aescbc:v1:") || runsTransit(n) {
			t.Errorf("%s runs %s", n.Name, n.Running())
		}
	}
	if len(w.transit.plugins) != 0 {
		t.Errorf("plugins left: %v", w.transit.plugins)
	}
}

func TestTransitPluginDownIsRepaired(t *testing.T) {
	w := convergedTransit(t)
	w.transit.plugins["node2"] = false
	w.nodes[1].Ready = false // kube-apiserver's kms-providers check fails
	p := w.plan()
	i := slices.IndexFunc(p.Steps, func(s Step) bool { return s.Kind == StepDeployPlugin })
	if i < 0 || !slices.Equal(p.Steps[i].Nodes, []string{"node2"}) || slices.ContainsFunc(p.Steps, func(s Step) bool { return s.Kind == StepDeploy }) {
		t.Fatalf("plan %v: want the plugin redeployed on node2 alone", p.Steps)
	}
	w.converge()
	if !w.transit.plugins["node2"] || !w.nodes[1].Ready {
		t.Error("node2's plugin not repaired")
	}
}

func TestTransitRefusedWithoutPlugin(t *testing.T) {
	w := newTransitWorld(t, 1, nil, nil, false)
	in := w.input()
	in.Live.Transit = TransitLive{Problem: "no plugin image (settings kms.image)"}
	_, err := MakePlan(in)
	if ReasonOf(err) != ReasonTransitUnavailable || !strings.Contains(err.Error(), "kms.image") {
		t.Fatalf("plan without a plugin image: %v", err)
	}
	// What is stored under the provider needs it too, whatever is asked.
	w = convergedTransit(t)
	w.desired = Desired{Mode: cluster.Managed, Provider: cluster.AESCBC}
	in = w.input()
	in.Live.Transit = TransitLive{Problem: "Vault: permission denied"}
	if _, err := MakePlan(in); ReasonOf(err) != ReasonTransitUnavailable {
		t.Fatalf("plan away from transit without it: %v", err)
	}
}

func stepKinds(steps []Step) []StepKind {
	out := make([]StepKind, len(steps))
	for i, s := range steps {
		out[i] = s.Kind
	}
	return out
}
