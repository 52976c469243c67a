package reconciler

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/atrest-io/atrest/cluster"
)

// world is a simulated cluster the tests execute plans against: only the
// first step of each plan runs, then the planner sees the new state, as the
// executor does. It checks the invariants at every node update.
type world struct {
	t       *testing.T
	nodes   []NodeLive
	census  map[string]map[string]int64
	keyring Keyring
	desired Desired
	// journal of steps executed, for assertions.
	executed []StepKind
	keySeq   int
	snapSeq  int
	// crashAfter, when >0, stops the next rolling deploy after that many
	// nodes (a crash mid-rollout); the next plan must resume.
	crashAfter int
	// limits are the operator's; unlimited unless a test bounds them.
	limits Limits
	// transit simulates the vault-transit provider (nil: not configured).
	transit *transitSim
}

// transitSim is Vault's Transit key, each node's plugin, and which
// version each node's kube-apiserver wraps with: it learns a new one only
// at its next status poll, which AwaitKeyID (the rewrite) waits for.
type transitSim struct {
	exists  bool
	latest  int
	uses    map[string]int  // node -> version its kube-apiserver wraps with
	plugins map[string]bool // node -> plugin current and healthy
	keyIDs  map[string]map[string]int64
}

func (ts *transitSim) keyID(v int) string { return cluster.TransitKeyID("transit", "atrest-test", v) }

// unlimited bounds no commit: the planner's own tests plan what they ask.
var unlimited = Limits{AllowDisable: true, AllowCustomConfig: true, AllowKMS: true}

func newWorld(t *testing.T, nodes int, live cluster.Chains, census map[string]map[string]int64) *world {
	w := &world{t: t, census: census, limits: unlimited}
	for i := range nodes {
		n := NodeLive{Name: fmt.Sprintf("node%d", i+1), Ready: true, EtcdPrefix: "/registry"}
		if len(live) > 0 {
			n.Flag, n.File, n.Chains = true, true, cloneChains(live)
		}
		w.nodes = append(w.nodes, n)
	}
	if w.census == nil {
		w.census = map[string]map[string]int64{}
	}
	return w
}

func cloneChains(cs cluster.Chains) cluster.Chains {
	out := cluster.Chains{}
	for r, c := range cs {
		out[r] = slices.Clone(c)
	}
	return out
}

// input is what the planner sees of the world.
func (w *world) input() Input {
	live := Live{Nodes: slices.Clone(w.nodes), Census: w.census}
	if ts := w.transit; ts != nil {
		live.Transit = TransitLive{Configured: true, Exists: ts.exists, Latest: ts.latest, MinDecryption: 1}
		if ts.exists {
			live.Transit.KeyID = ts.keyID(ts.latest)
		}
		live.KeyIDs = map[string]map[string]map[string]int64{}
		for r, ids := range ts.keyIDs {
			live.KeyIDs[r] = map[string]map[string]int64{cluster.TransitPrefix: maps.Clone(ids)}
		}
		for i := range live.Nodes {
			ok := ts.plugins[live.Nodes[i].Name]
			live.Nodes[i].Plugin = &PluginLive{Current: ok, Present: ok, Healthy: ok}
		}
	}
	return Input{Desired: w.desired, Live: live, Keyring: w.keyring, Limits: w.limits}
}

func (w *world) plan() *Plan {
	w.t.Helper()
	p, err := MakePlan(w.input())
	if err != nil {
		w.t.Fatalf("plan: %v", err)
	}
	for _, s := range p.Steps {
		if strings.Contains(s.String(), "REDACTED") {
			w.t.Fatalf("step description mentions material: %s", s)
		}
	}
	return p
}

// converge runs plans until one is empty, and returns the first plan.
func (w *world) converge() *Plan {
	w.t.Helper()
	first := w.plan()
	p := first
	for i := 0; !p.Empty(); i++ {
		if i > 30 {
			w.t.Fatalf("no convergence after 30 steps; last plan: %v", p.Steps)
		}
		w.exec(p.Steps[0])
		// Traffic: every step, each node writes one new secret.
		for _, n := range w.nodes {
			w.write("secrets", n)
		}
		p = w.plan()
	}
	w.keyring.Snapshot = "" // the transition is over: the journal closes
	return first
}

func (w *world) write(r string, n NodeLive) {
	if w.census[r] == nil {
		w.census[r] = map[string]int64{}
	}
	writer := n.Running()[r].Writer()
	if writer == cluster.TransitPrefix && !w.transit.plugins[n.Name] {
		return // no plugin to wrap a data key: the write fails
	}
	w.census[r][writer]++
	if writer == cluster.TransitPrefix {
		ts := w.transit
		if ts.keyIDs[r] == nil {
			ts.keyIDs[r] = map[string]int64{}
		}
		v := ts.uses[n.Name]
		if v == 0 {
			v = ts.latest // its first data key: it asks the plugin, which wraps with the latest
			ts.uses[n.Name] = v
		}
		ts.keyIDs[r][ts.keyID(v)]++
	}
}

func (w *world) exec(s Step) {
	w.t.Helper()
	w.executed = append(w.executed, s.Kind)
	switch s.Kind {
	case StepImportKeys:
		for _, name := range s.Keys {
			e := w.entryOnNodes(name)
			w.keyring.Keys = append(w.keyring.Keys, KeyState{Name: name, Provider: cluster.Provider(e.Kind), Role: RoleReader, Fingerprint: e.Fingerprint})
		}
		if s.Primary != "" {
			w.setPrimary(s.Primary)
		}
	case StepSnapshot:
		w.snapSeq++
		w.keyring.Snapshot = fmt.Sprintf("snap-%d", w.snapSeq)
		w.keyring.SnapshotFor = DesiredID(w.desired)
	case StepGenerateKey:
		w.keySeq++
		name := fmt.Sprintf("k-gen%02d", w.keySeq)
		w.keyring.Keys = append(w.keyring.Keys, KeyState{Name: name, Provider: s.Provider, Fingerprint: testFP(name)})
		w.setPrimary(name)
		// The request is served: the executor records it in the keyring.
		w.desired.RotateRequested = false
	case StepDeploy:
		if w.keyring.Snapshot == "" {
			w.t.Fatal("a node is changed before a snapshot was taken")
		}
		for r, c := range s.Chains {
			if slices.ContainsFunc(c, cluster.ProviderEntry.IsTransit) {
				for _, n := range w.nodes {
					if !w.transit.plugins[n.Name] {
						w.t.Fatalf("a config naming the vault-transit provider for %s is deployed before %s's plugin is healthy", r, n.Name)
					}
				}
			}
		}
		for _, name := range s.Chains.KeyNames() {
			if name == PendingKey {
				w.t.Fatal("a deploy step runs before its key was generated")
			}
			if _, ok := w.keyring.find(name); !ok {
				w.t.Fatalf("key %s reaches the nodes before it is in Vault", name)
			}
		}
		limit := len(w.nodes)
		if w.crashAfter > 0 && w.crashAfter < limit {
			limit, w.crashAfter = w.crashAfter, 0
		}
		for i := range limit {
			if !w.nodes[i].Ready && !slices.Contains(s.Unsynced, w.nodes[i].Name) {
				w.t.Fatalf("a deploy changes %s, which is not ready", w.nodes[i].Name)
			}
			w.checkNodeChange(i, s.Chains)
			w.nodes[i].Flag, w.nodes[i].File, w.nodes[i].Chains = true, true, cloneChains(s.Chains)
			if w.nodes[i].Unsynced && len(starved(Input{Live: Live{Census: w.census}}, w.nodes[i])) == 0 {
				// Its caches fill: it is ready again.
				w.nodes[i].Ready, w.nodes[i].Unsynced = true, false
			}
			w.write("secrets", w.nodes[i]) // the canary
			if got := w.nodes[i].Running()["secrets"].Writer(); got != s.Expect {
				w.t.Fatalf("canary on %s is %s, step expects %s", w.nodes[i].Name, got, s.Expect)
			}
		}
	case StepCreateTransitKey:
		w.transit.exists, w.transit.latest = true, 1
		w.desired.RotateRequested = false // served with the key, as a generate-key serves it
	case StepRotateTransit:
		if w.keyring.Snapshot == "" {
			w.t.Fatal("the Transit key is rotated before a snapshot was taken")
		}
		w.transit.latest++
		w.desired.RotateRequested = false
	case StepDeployPlugin:
		if w.keyring.Snapshot == "" {
			w.t.Fatal("a plugin is deployed before a snapshot was taken")
		}
		if !w.transit.exists {
			w.t.Fatal("a plugin is deployed before its Transit key exists")
		}
		for _, n := range s.Nodes {
			w.transit.plugins[n] = true
		}
		for i := range w.nodes {
			if w.nodes[i].Plugin != nil || !w.nodes[i].Ready && runsTransit(w.nodes[i]) {
				w.nodes[i].Ready = true // a node down only for its plugin is up again
			}
		}
	case StepRemovePlugin:
		for _, n := range w.nodes {
			if runsTransit(n) {
				w.t.Fatalf("the plugin is removed while %s reads with it", n.Name)
			}
		}
		for r, counts := range w.census {
			if counts[cluster.TransitPrefix] > 0 {
				w.t.Fatalf("the plugin is removed while %d %s are stored under it", counts[cluster.TransitPrefix], r)
			}
		}
		w.transit.plugins = map[string]bool{}
	case StepRewrite:
		if s.KeyID != "" {
			if s.KeyID != w.transit.keyID(w.transit.latest) {
				w.t.Fatalf("rewrite proves key_id %s, the Transit key's latest is %s", s.KeyID, w.transit.keyID(w.transit.latest))
			}
			for _, n := range w.nodes {
				w.transit.uses[n.Name] = w.transit.latest // AwaitKeyID: every node takes it up
			}
		}
		for _, r := range s.Resources {
			writer := w.nodes[0].Running()[r].Writer()
			for _, n := range w.nodes {
				if n.Running()[r].Writer() != writer {
					w.t.Fatalf("rewrite of %s while nodes write with different providers", r)
				}
			}
			var all int64
			for _, v := range w.census[r] {
				all += v
			}
			w.census[r] = map[string]int64{writer: all}
			if writer == cluster.TransitPrefix {
				if s.KeyID == "" {
					w.t.Fatalf("rewrite of %s under the vault-transit writer with no key_id proven", r)
				}
				w.transit.keyIDs[r] = map[string]int64{s.KeyID: all}
			} else if w.transit != nil {
				delete(w.transit.keyIDs, r)
			}
		}
	case StepVerify:
		for _, r := range s.Resources {
			for prefix, n := range w.census[r] {
				if n > 0 && prefix != s.Writers[r] {
					w.t.Fatalf("verify: %d %s under %s, want only %s", n, r, prefix, s.Writers[r])
				}
			}
			if id := s.KeyIDs[r]; id != "" {
				for got, n := range w.transit.keyIDs[r] {
					if n > 0 && got != id {
						w.t.Fatalf("verify: %d %s wrapped by %s, want only %s", n, r, got, id)
					}
				}
			}
		}
	case StepReload:
		if w.keyring.Snapshot == "" {
			w.t.Fatal("a node is restarted before a snapshot was taken")
		}
		for i := range w.nodes {
			if w.nodes[i].Name == s.Node {
				w.nodes[i].Unloaded = false
				w.write("secrets", w.nodes[i]) // the canary
			}
		}
	case StepRemoveConfig:
		if w.keyring.Snapshot == "" {
			w.t.Fatal("nodes changed before a snapshot was taken")
		}
		for r, counts := range w.census {
			for prefix, n := range counts {
				if n > 0 && prefix != cluster.PrefixIdentity {
					w.t.Fatalf("config removed while %d %s are stored under %s", n, r, prefix)
				}
			}
		}
		limit := len(w.nodes)
		if w.crashAfter > 0 && w.crashAfter < limit {
			limit, w.crashAfter = w.crashAfter, 0
		}
		for i := range limit {
			w.checkNodeChange(i, cluster.Chains{})
			w.nodes[i].Flag, w.nodes[i].File, w.nodes[i].Chains = false, false, nil
		}
	}
}

// checkNodeChange enforces DESIGN.md's invariants 1 and 2 for node i
// switching to next: its new writer must be readable by every other node
// as they run now, and nothing it stops reading may have stored objects.
func (w *world) checkNodeChange(i int, next cluster.Chains) {
	w.t.Helper()
	resources := map[string]bool{}
	for r := range next {
		resources[r] = true
	}
	for r := range w.nodes[i].Running() {
		resources[r] = true
	}
	for r := range w.census {
		resources[r] = true
	}
	for r := range resources {
		writer := next[r].Writer()
		if writer == w.nodes[i].Running()[r].Writer() {
			// Not a new writer for this node; drift may already have
			// broken the invariant, and this change does not add to it.
			writer = ""
		}
		for j, other := range w.nodes {
			if writer == "" {
				break
			}
			if j != i && !other.Running()[r].Has(writer) {
				w.t.Fatalf("readers before writers broken: %s would write %s with %s, which %s cannot read (it runs %s)",
					w.nodes[i].Name, r, writer, other.Name, other.Running()[r])
			}
		}
		for prefix, n := range w.census[r] {
			if n > 0 && !next[r].Has(prefix) {
				w.t.Fatalf("%s would drop %s for %s while %d objects are stored under it", w.nodes[i].Name, prefix, r, n)
			}
		}
	}
}

func (w *world) setPrimary(name string) {
	for i := range w.keyring.Keys {
		switch {
		case w.keyring.Keys[i].Name == name:
			w.keyring.Keys[i].Role = RolePrimary
		case w.keyring.Keys[i].Role == RolePrimary:
			w.keyring.Keys[i].Role = RoleReader
		}
	}
}

func (w *world) entryOnNodes(name string) cluster.ProviderEntry {
	for _, cs := range append([]cluster.Chains{w.desired.Custom}, func() []cluster.Chains {
		var out []cluster.Chains
		for _, n := range w.nodes {
			out = append(out, n.Running())
		}
		return out
	}()...) {
		for _, c := range cs {
			for _, e := range c {
				if e.KeyName == name {
					return e
				}
			}
		}
	}
	w.t.Fatalf("import of %s, which is on no node and not in custom_config", name)
	return cluster.ProviderEntry{}
}

// assertConverged checks every node runs want and every object is stored
// under its writer.
func (w *world) assertConverged(want cluster.Chains) {
	w.t.Helper()
	for _, n := range w.nodes {
		if got := n.Running(); !got.Equal(want) {
			w.t.Fatalf("%s runs %s, want %s", n.Name, describe(got), describe(want))
		}
	}
	for r, counts := range w.census {
		for prefix, n := range counts {
			if n > 0 && prefix != want[r].Writer() {
				w.t.Fatalf("%d %s still under %s, want all under %s", n, r, prefix, want[r].Writer())
			}
		}
	}
}

// testFP is a key's fingerprint in the simulated world: one material per
// name, unless a test says otherwise.
func testFP(name string) string { return "sha256:test-" + name }

func testKey(p cluster.Provider, name string) cluster.ProviderEntry {
	return cluster.KeyEntry(p, name, testFP(name))
}

func managed(name string) cluster.Chains {
	return cluster.Chains{"secrets": {testKey(cluster.AESCBC, name), cluster.Identity}}
}

func mustChains(yaml string) cluster.Chains {
	cfg, err := cluster.ParseEncryptionConfig("custom", "", []byte(yaml), "")
	if err != nil {
		panic(err)
	}
	return cfg.Chains()
}

func customChains(t *testing.T, yaml string) cluster.Chains {
	t.Helper()
	cfg, err := cluster.ParseEncryptionConfig("custom", "", []byte(yaml), "")
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Chains()
}

const kmsConfig = `apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - kms:
          apiVersion: v2
          name: vault-kms
          endpoint: unix:///var/run/kms.sock
      - identity: {}
`

const customTwoResources = `apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets, configmaps]
    providers:
      - aescbc:
          keys:
            - name: k-git01
              secret: RTczRjFDODMwQzAyMDVBREU4NDJBMUZFNDhCNzM5N0I=
      - identity: {}
`

func kinds(steps []Step) string {
	var out []string
	for _, s := range steps {
		out = append(out, string(s.Kind))
	}
	return strings.Join(out, " ")
}

type scenario struct {
	name       string
	nodes      int
	live       cluster.Chains
	census     map[string]map[string]int64
	keys       []KeyState
	desired    func(t *testing.T) Desired
	transition string
	steps      string // kinds of the first plan
	want       func(w *world) cluster.Chains
}

func scenarios() []scenario {
	managedAESCBC := func(*testing.T) Desired { return Desired{Mode: cluster.Managed, Provider: cluster.AESCBC} }
	return []scenario{
		{
			name: "enable", nodes: 3,
			census:     map[string]map[string]int64{"secrets": {"identity": 40}},
			desired:    managedAESCBC,
			transition: "enable", steps: "snapshot generate-key deploy deploy rewrite verify",
			want: func(w *world) cluster.Chains { return managed("k-gen01") },
		},
		{
			name: "rotate", nodes: 3, live: managed("k-old01"),
			census: map[string]map[string]int64{"secrets": {"aescbc:v1:k-old01": 40}},
			keys:   []KeyState{{Name: "k-old01", Provider: cluster.AESCBC, Role: RolePrimary}},
			desired: func(*testing.T) Desired {
				return Desired{Mode: cluster.Managed, Provider: cluster.AESCBC, RotateRequested: true}
			},
			transition: "rotate", steps: "snapshot generate-key deploy deploy rewrite verify deploy",
			want: func(w *world) cluster.Chains { return managed("k-gen01") },
		},
		{
			name: "provider change rotates", nodes: 2, live: managed("k-old01"),
			census:     map[string]map[string]int64{"secrets": {"aescbc:v1:k-old01": 5}},
			keys:       []KeyState{{Name: "k-old01", Provider: cluster.AESCBC, Role: RolePrimary}},
			desired:    func(*testing.T) Desired { return Desired{Mode: cluster.Managed, Provider: cluster.Secretbox} },
			transition: "rotate", steps: "snapshot generate-key deploy deploy rewrite verify deploy",
			want: func(w *world) cluster.Chains {
				return cluster.Chains{"secrets": {testKey(cluster.Secretbox, "k-gen01"), cluster.Identity}}
			},
		},
		{
			name: "disable", nodes: 3, live: managed("k-old01"),
			census:     map[string]map[string]int64{"secrets": {"aescbc:v1:k-old01": 40, "identity": 2}},
			keys:       []KeyState{{Name: "k-old01", Provider: cluster.AESCBC, Role: RolePrimary}},
			desired:    func(*testing.T) Desired { return Desired{Mode: cluster.Disabled} },
			transition: "disable", steps: "snapshot deploy rewrite verify remove-config",
			want: func(w *world) cluster.Chains { return cluster.Chains{} },
		},
		{
			name: "managed to custom kms", nodes: 3, live: managed("k-old01"),
			census:     map[string]map[string]int64{"secrets": {"aescbc:v1:k-old01": 40}},
			keys:       []KeyState{{Name: "k-old01", Provider: cluster.AESCBC, Role: RolePrimary}},
			desired:    func(t *testing.T) Desired { return Desired{Mode: cluster.Custom, Custom: customChains(t, kmsConfig)} },
			transition: "custom", steps: "snapshot deploy deploy rewrite verify deploy",
			want: func(w *world) cluster.Chains { return customChains(w.t, kmsConfig) },
		},
		{
			name: "custom kms back to managed", nodes: 3, live: mustChains(kmsConfig),
			census:     map[string]map[string]int64{"secrets": {"kms:v2:vault-kms": 40}},
			desired:    managedAESCBC,
			transition: "managed", steps: "snapshot generate-key deploy deploy rewrite verify deploy",
			want: func(w *world) cluster.Chains { return managed("k-gen01") },
		},
		{
			name: "disabled to custom over two resources, key from Git imported", nodes: 3,
			census: map[string]map[string]int64{"secrets": {"identity": 30}, "configmaps": {"identity": 12}},
			desired: func(t *testing.T) Desired {
				return Desired{Mode: cluster.Custom, Custom: customChains(t, customTwoResources)}
			},
			transition: "custom", steps: "import-keys snapshot deploy deploy rewrite verify",
			want: func(w *world) cluster.Chains { return customChains(w.t, customTwoResources) },
		},
		{
			name: "custom over two resources to disabled", nodes: 3,
			census:     map[string]map[string]int64{"secrets": {"aescbc:v1:k-git01": 30}, "configmaps": {"aescbc:v1:k-git01": 12}},
			keys:       []KeyState{{Name: "k-git01", Provider: cluster.AESCBC, Role: RoleReader}},
			desired:    func(*testing.T) Desired { return Desired{Mode: cluster.Disabled} },
			transition: "disable", steps: "snapshot deploy rewrite verify remove-config",
			want: func(w *world) cluster.Chains { return cluster.Chains{} },
		},
		{
			name: "adopt the key RKE deployed, no change on nodes", nodes: 3, live: managed("k-rke01"),
			census:     map[string]map[string]int64{"secrets": {"aescbc:v1:k-rke01": 40}},
			desired:    managedAESCBC,
			transition: "converge", steps: "import-keys",
			want: func(w *world) cluster.Chains { return managed("k-rke01") },
		},
		{
			name: "custom aescbc key from Git back to managed: a fresh key", nodes: 3,
			live:       cluster.Chains{"secrets": {testKey(cluster.AESCBC, "k-git01"), cluster.Identity}},
			census:     map[string]map[string]int64{"secrets": {"aescbc:v1:k-git01": 20}},
			keys:       []KeyState{{Name: "k-git01", Provider: cluster.AESCBC, Role: RoleReader}},
			desired:    managedAESCBC,
			transition: "rotate", steps: "snapshot generate-key deploy deploy rewrite verify deploy",
			want: func(w *world) cluster.Chains { return managed("k-gen01") },
		},
		{
			name: "restored snapshot needs a retired key back", nodes: 3, live: managed("k-new01"),
			census: map[string]map[string]int64{"secrets": {"aescbc:v1:k-old01": 25, "aescbc:v1:k-new01": 3}},
			keys: []KeyState{{Name: "k-new01", Provider: cluster.AESCBC, Role: RolePrimary},
				{Name: "k-old01", Provider: cluster.AESCBC, Role: RoleRetired}},
			desired:    managedAESCBC,
			transition: "converge", steps: "snapshot deploy rewrite verify deploy",
			want: func(w *world) cluster.Chains { return managed("k-new01") },
		},
		{
			name: "converged: nothing to do", nodes: 3, live: managed("k-old01"),
			census:  map[string]map[string]int64{"secrets": {"aescbc:v1:k-old01": 40}},
			keys:    []KeyState{{Name: "k-old01", Provider: cluster.AESCBC, Role: RolePrimary}},
			desired: managedAESCBC,
			steps:   "",
			want:    func(w *world) cluster.Chains { return managed("k-old01") },
		},
		{
			name: "disabled and nothing deployed: nothing to do", nodes: 1,
			census:  map[string]map[string]int64{"secrets": {"identity": 4}},
			desired: func(*testing.T) Desired { return Desired{Mode: cluster.Disabled} },
			steps:   "",
			want:    func(w *world) cluster.Chains { return cluster.Chains{} },
		},
		{
			name: "single node enable", nodes: 1,
			census:     map[string]map[string]int64{"secrets": {"identity": 3}},
			desired:    managedAESCBC,
			transition: "enable", steps: "snapshot generate-key deploy deploy rewrite verify",
			want: func(w *world) cluster.Chains { return managed("k-gen01") },
		},
	}
}

func (sc scenario) world(t *testing.T) *world {
	census := map[string]map[string]int64{}
	for r, m := range sc.census {
		census[r] = maps.Clone(m)
	}
	w := newWorld(t, sc.nodes, sc.live, census)
	w.keyring.Keys = slices.Clone(sc.keys)
	for i := range w.keyring.Keys {
		if w.keyring.Keys[i].Fingerprint == "" {
			w.keyring.Keys[i].Fingerprint = testFP(w.keyring.Keys[i].Name)
		}
	}
	w.desired = sc.desired(t)
	return w
}

func TestPlanTransitions(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			w := sc.world(t)
			first := w.converge()
			if got := kinds(first.Steps); got != sc.steps {
				t.Errorf("first plan: %s\nwant:        %s\nsteps:\n%s", got, sc.steps, stepList(first))
			}
			if first.Transition != sc.transition {
				t.Errorf("transition %q, want %q", first.Transition, sc.transition)
			}
			w.assertConverged(sc.want(w))
			// Converged means converged: planning again changes nothing.
			if p := w.plan(); !p.Empty() {
				t.Errorf("plan after convergence: %s", stepList(p))
			}
		})
	}
}

// TestPlanResumes crashes every transition at every point: after each
// number of executed steps, and inside every rolling deploy after each
// number of nodes; the planner must carry on from what it observes and
// converge to the same end with every invariant kept.
func TestPlanResumes(t *testing.T) {
	for _, sc := range scenarios() {
		length := len(sc.world(t).converge().Steps)
		for stop := 0; stop < length+2; stop++ {
			for crash := 0; crash < max(sc.nodes, 1); crash++ {
				t.Run(fmt.Sprintf("%s/after %d steps/crash at node %d", sc.name, stop, crash), func(t *testing.T) {
					w := sc.world(t)
					// Run stop steps, the last one crashing mid-rollout.
					for i := 0; i < stop; i++ {
						p := w.plan()
						if p.Empty() {
							break
						}
						if i == stop-1 {
							w.crashAfter = crash
						}
						w.exec(p.Steps[0])
					}
					w.crashAfter = 0
					w.converge()
					w.assertConverged(sc.want(w))
				})
			}
		}
	}
}

func stepList(p *Plan) string {
	var b strings.Builder
	for i, s := range p.Steps {
		fmt.Fprintf(&b, "  %d. %s\n", i+1, s)
	}
	return b.String()
}

func TestPlanRefuses(t *testing.T) {
	ok := NodeLive{Name: "node1", Ready: true}
	tests := []struct {
		name string
		in   Input
		want string
	}{
		{"no nodes", Input{Desired: Desired{Mode: cluster.Disabled}}, "no controlplane node"},
		{"node not ready", Input{Desired: Desired{Mode: cluster.Managed, Provider: cluster.AESCBC},
			Live: Live{Nodes: []NodeLive{ok, {Name: "node2"}}}}, "node node2: kube-apiserver is not ready"},
		{"unreadable file in use", Input{Desired: Desired{Mode: cluster.Disabled},
			Live: Live{Nodes: []NodeLive{{Name: "node1", Ready: true, Flag: true, File: true, FileError: "yaml: line 3"}}}}, "node node1: kube-apiserver runs with a provider file atrest cannot read"},
		{"flag without file", Input{Desired: Desired{Mode: cluster.Disabled},
			Live: Live{Nodes: []NodeLive{{Name: "node1", Ready: true, Flag: true}}}}, "the file is missing"},
		{"objects under a key nobody has", Input{Desired: Desired{Mode: cluster.Managed, Provider: cluster.AESCBC},
			Live: Live{Nodes: []NodeLive{ok}, Census: map[string]map[string]int64{"secrets": {"aescbc:v1:k-lost1": 7}}}},
			"7 secrets stored under aescbc:v1:k-lost1, which no node's config and no key in Vault can read"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := MakePlan(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestPlanWarnsOnRotationItCannotDo(t *testing.T) {
	for _, d := range []Desired{
		{Mode: cluster.Disabled, RotateRequested: true},
		{Mode: cluster.Custom, Custom: customChains(t, kmsConfig), RotateRequested: true},
	} {
		w := newWorld(t, 1, nil, nil)
		w.desired = d
		p := w.plan()
		if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], "rotation requested") {
			t.Errorf("%s: warnings %q", d.Mode, p.Warnings)
		}
		if slices.ContainsFunc(p.Steps, func(s Step) bool { return s.Kind == StepGenerateKey }) {
			t.Errorf("%s: plan generates a key", d.Mode)
		}
	}
}

func TestPlanReportsDrift(t *testing.T) {
	w := newWorld(t, 3, managed("k-old01"), map[string]map[string]int64{"secrets": {"aescbc:v1:k-old01": 9}})
	w.keyring.Keys = []KeyState{{Name: "k-old01", Provider: cluster.AESCBC, Role: RolePrimary, Fingerprint: testFP("k-old01")}}
	w.desired = Desired{Mode: cluster.Managed, Provider: cluster.AESCBC}
	// Someone ran `rke up` on node 3 with an older config: flag gone.
	w.nodes[2].Flag = false
	p := w.plan()
	if len(p.Drift) != 1 || !strings.Contains(p.Drift[0], "node node3 runs no encryption config") {
		t.Fatalf("drift = %q", p.Drift)
	}
	w.converge()
	w.assertConverged(managed("k-old01"))
}

func TestSnapshotCovers(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	d := Desired{Mode: cluster.Managed, Provider: cluster.AESCBC, Revision: "r1"}
	other := d
	other.Revision = "r2"
	rotate := d
	rotate.RotateRequest = "cron:2026-12-01T00:00:00Z"
	for _, tt := range []struct {
		name    string
		desired Desired
		keyring Keyring
		now     time.Time
		want    bool
	}{
		{"none taken", d, Keyring{}, now, false},
		{"taken for it, an hour ago", d, Keyring{Snapshot: "s", SnapshotFor: DesiredID(d), SnapshotTaken: now.Add(-time.Hour)}, now, true},
		{"taken for it, a day and a minute ago", d, Keyring{Snapshot: "s", SnapshotFor: DesiredID(d), SnapshotTaken: now.Add(-MaxSnapshotAge - time.Minute)}, now, false},
		{"taken for another revision", other, Keyring{Snapshot: "s", SnapshotFor: DesiredID(d), SnapshotTaken: now}, now, false},
		{"taken before a rotation was asked", rotate, Keyring{Snapshot: "s", SnapshotFor: DesiredID(d), SnapshotTaken: now}, now, false},
		{"by an atrest that did not record what for", d, Keyring{Snapshot: "s", SnapshotTaken: now}, now, false},
		{"no clock: age left out", d, Keyring{Snapshot: "s", SnapshotFor: DesiredID(d)}, time.Time{}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := snapshotCovers(Input{Desired: tt.desired, Keyring: tt.keyring, Now: tt.now}); got != tt.want {
				t.Errorf("snapshotCovers = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMarkRestarts(t *testing.T) {
	deploys := func() []Step {
		return []Step{{Kind: StepSnapshot}, {Kind: StepDeploy, Expect: "identity"}, {Kind: StepRewrite}, {Kind: StepDeploy, Expect: "aescbc:v1:k-1"}}
	}
	cases := []struct {
		name        string
		nodes       []NodeLive
		first, last []string
	}{
		{"every node reloads: no restart", []NodeLive{{Name: "a", Reloads: true}, {Name: "b", Reloads: true}}, nil, nil},
		{"no node reloads yet: the first deploy restarts each and sets the flag", []NodeLive{{Name: "a"}, {Name: "b"}}, []string{"a", "b"}, nil},
		{"one node without the flag", []NodeLive{{Name: "a", Reloads: true}, {Name: "b"}}, []string{"b"}, nil},
		{"restart-only restarts every deploy", []NodeLive{{Name: "a", RestartOnly: true}, {Name: "b", RestartOnly: true}}, []string{"a", "b"}, []string{"a", "b"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			steps := deploys()
			markRestarts(steps, c.nodes)
			if !slices.Equal(steps[1].Restarts, c.first) || !slices.Equal(steps[3].Restarts, c.last) {
				t.Errorf("restarts %v then %v, want %v then %v", steps[1].Restarts, steps[3].Restarts, c.first, c.last)
			}
			if len(c.first) == 0 && !strings.Contains(steps[1].String(), "without a restart") ||
				len(c.first) > 0 && !strings.Contains(steps[1].String(), "restarting kube-apiserver on "+strings.Join(c.first, ", ")) {
				t.Errorf("the plan says %q", steps[1].String())
			}
		})
	}
}
