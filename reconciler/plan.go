// Package reconciler decides and carries out the transitions that bring a
// cluster's encryption at rest to what cluster.yml asks for. Plan is the
// decision: a pure function of the desired state, what the nodes run, what
// etcd stores and what the keyring holds. It plans from observation, not from
// memory of what it did, so a reconcile that stopped anywhere resumes by
// planning again.
package reconciler

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/atrest-io/atrest/cluster"
)

// Desired is what Git asks for, with the policy applied.
type Desired struct {
	Mode cluster.Mode
	// Provider of managed keys.
	Provider cluster.Provider
	// Custom is custom_config's chains, for Mode Custom.
	Custom cluster.Chains
	// RotateRequest, when set, names a request for a new managed key
	// ("commit:<hash>" for rotate_encryption_key, "cron:<time>",
	// "cli:<time>"). Reconcile serves each request once: the keyring
	// records the last one served.
	RotateRequest string
	// RotateRequested is the planner's input: a request not yet served.
	// Reconcile computes it from RotateRequest and the keyring.
	RotateRequested bool
	// CustomConfig is the parsed custom_config, for Mode Custom: where the
	// material of keys written inline in Git comes from.
	CustomConfig *cluster.EncryptionConfig
	// Revision is the Git revision the desired state comes from.
	Revision string
	// EtcdPrefix is the --etcd-prefix cluster.yml gives kube-apiserver
	// (extra_args, or services.etcd.path), "" when it gives none.
	EtcdPrefix string
	// Schedule is atrest.yaml's rotation.schedule as written ("" for
	// none), ScheduleGap the shortest gap between two of its firings, and
	// Retention its snapshots.retention: what the operator's Limits bound.
	Schedule    string
	ScheduleGap time.Duration
	Retention   int
}

// Live is what the cluster runs and stores.
type Live struct {
	Nodes []NodeLive
	// Census counts stored objects per resource by storage prefix, under
	// EtcdPrefix. Nil when the nodes disagree on their prefix.
	Census map[string]map[string]int64
	// EtcdPrefix is the --etcd-prefix every node's kube-apiserver runs
	// with, when they agree ("" when they do not).
	EtcdPrefix string
	// Unmanaged names the kube-apiservers that serve the cluster but are
	// none of the controlplane nodes atrest manages; Silent the managed
	// nodes whose kube-apiserver does not show as serving.
	Unmanaged, Silent []string
	// ServingUnproven: no kube-apiserver holds an identity lease
	// (APIServerIdentity off), so only the endpoints say which serve.
	ServingUnproven bool
	// KeyIDs counts the objects a KMS v2 provider stored by the key_id in
	// their envelope: resource -> storage prefix -> key_id -> count.
	KeyIDs map[string]map[string]map[string]int64
	// Transit is the managed vault-transit provider's Transit key.
	Transit TransitLive
}

// NodeLive is one controlplane node as observed.
type NodeLive struct {
	Name  string
	Ready bool
	// Flag: kube-apiserver runs with --encryption-provider-config.
	Flag bool
	// File: the provider file exists; Chains is its content, FileError why
	// it could not be parsed.
	File      bool
	Chains    cluster.Chains
	FileError string
	// Unloaded: the file was written after kube-apiserver started, so what
	// it runs is unknown until it is restarted.
	Unloaded bool
	// EtcdPrefix is the node's kube-apiserver --etcd-prefix.
	EtcdPrefix string
	// Reloads: kube-apiserver runs with the provider file and
	// --encryption-provider-config-automatic-reload, so a deploy reloads
	// it without a restart. RestartOnly: atrest will not set that flag
	// (ssh.restartOnly, or cluster.yml turns it off).
	Reloads, RestartOnly bool
	// Unsynced: not Ready only because its informers cannot sync
	// (controlplane.NodeState.Unsynced), as when it cannot decrypt what
	// etcd stores: see starved.
	Unsynced bool
	// Plugin is the node's KMS plugin, when the vault-transit provider is
	// in use (nil when it was not observed).
	Plugin *PluginLive
}

// Running is the config the node's kube-apiserver uses: its file when the
// flag is set, else nothing (everything plain).
func (n NodeLive) Running() cluster.Chains {
	if !n.Flag || !n.File {
		return cluster.Chains{}
	}
	return n.Chains
}

// Key roles in the keyring.
const (
	RolePrimary = "primary" // the managed key that should write
	RoleReader  = "reader"  // may be in a deployed config
	RoleRetired = "retired" // in no config; kept for snapshots
)

// KeyState is a keyring key as the planner sees it: no material.
type KeyState struct {
	Name     string
	Provider cluster.Provider
	Role     string
	// Fingerprint identifies the key's material in Vault.
	Fingerprint string
	// Outside names the node an outside writer left this key on
	// (keystore.KeyInfo.Outside); "" when atrest made or was given it.
	Outside string
}

// entry is the key's chain entry.
func (k KeyState) entry() cluster.ProviderEntry {
	return cluster.KeyEntry(k.Provider, k.Name, k.Fingerprint)
}

// Keyring is the keyring's state relevant to planning.
type Keyring struct {
	Keys []KeyState
	// Snapshot is the verified snapshot taken for the transition in flight
	// ("" when none has been taken yet), SnapshotTaken when, and
	// SnapshotFor the desired state (DesiredID) that transition carries out.
	Snapshot      string
	SnapshotTaken time.Time
	SnapshotFor   string
}

// MaxSnapshotAge is how old the snapshot of a transition in flight may be
// before a step that touches the nodes: one older misses the writes since,
// so a transition resumed after a day takes a new one.
const MaxSnapshotAge = 24 * time.Hour

// snapshotCovers reports whether the transition in flight's snapshot
// stands for the change in.Desired asks for: taken for that desired state
// (revision, config and rotation request), and not older than
// MaxSnapshotAge at in.Now.
func snapshotCovers(in Input) bool {
	k := in.Keyring
	if k.Snapshot == "" || k.SnapshotFor != DesiredID(in.Desired) {
		return false
	}
	return in.Now.IsZero() || in.Now.Sub(k.SnapshotTaken) <= MaxSnapshotAge
}

func (k Keyring) find(name string) (KeyState, bool) {
	i := slices.IndexFunc(k.Keys, func(s KeyState) bool { return s.Name == name })
	if i < 0 {
		return KeyState{}, false
	}
	return k.Keys[i], true
}

// StepKind names what a step does.
type StepKind string

// The steps a plan is made of.
const (
	// StepImportKeys stores keys found on the nodes or in custom_config in
	// Vault, as readers (or as primary, to adopt a managed key).
	StepImportKeys StepKind = "import-keys"
	// StepSnapshot saves and verifies an etcd snapshot bound to the keyring.
	StepSnapshot StepKind = "snapshot"
	// StepGenerateKey writes a new managed key to Vault as the primary.
	StepGenerateKey StepKind = "generate-key"
	// StepDeploy rolls a config out to every node, canary-verified.
	StepDeploy StepKind = "deploy"
	// StepRewrite updates every object of the resources, unchanged, so the
	// apiserver re-encrypts stale values with the current writer.
	StepRewrite StepKind = "rewrite"
	// StepVerify checks with the census that every object of the resources
	// is stored under the writer.
	StepVerify StepKind = "verify"
	// StepRemoveConfig clears the flag and removes the provider file.
	StepRemoveConfig StepKind = "remove-config"
	// StepReload restarts one node's kube-apiserver so that it loads the
	// provider file it has, written after it started.
	StepReload StepKind = "reload"
)

// PendingKey stands for the key a generate-key step will create, in the
// steps after it. Only a plan's first step is ever executed, and a deploy
// never comes first while a key is pending.
const PendingKey = "(new key)"

// Step is one step of a plan.
type Step struct {
	Kind StepKind
	// Chains is the config to deploy.
	Chains cluster.Chains
	// Expect is the storage prefix the canary secret must get, for deploy.
	Expect string
	// Resources to rewrite or verify.
	Resources []string
	// Writers maps each verified resource to the only prefix allowed.
	Writers map[string]string
	// Provider of the key to generate.
	Provider cluster.Provider
	// Keys to import, and which of them becomes primary ("" for none).
	Keys    []string
	Primary string
	// Reason recorded in the snapshot's manifest.
	Reason string
	// Node to reload.
	Node string
	// Restarts names the nodes a deploy restarts kube-apiserver on; the
	// others reload the file without a restart, all at once.
	Restarts []string
	// Unsynced names the nodes a deploy may change although they are not
	// ready: they cannot read what etcd stores, and this deploy gives them
	// the keys they lack (starved).
	Unsynced []string
	// Nodes the KMS plugin is deployed to.
	Nodes []string
	// KeyID, for a rewrite: the KMS v2 key_id every node must be proven to
	// write with before anything is rewritten (a rotated Transit key).
	KeyID string
	// KeyIDs, for a verify: the only key_id allowed under each resource's
	// KMS v2 writer.
	KeyIDs map[string]string
}

// TouchesNodes reports whether the step changes a node.
func (s Step) TouchesNodes() bool {
	return s.Kind == StepDeploy || s.Kind == StepRemoveConfig || s.Kind == StepReload || s.Kind == StepDeployPlugin
}

// needsSnapshot reports whether a snapshot must come before the step: it
// changes what a node runs, or what every object will be written with.
func (s Step) needsSnapshot() bool {
	return s.TouchesNodes() || s.Kind == StepRotateTransit
}

// String describes the step without key material.
func (s Step) String() string {
	switch s.Kind {
	case StepImportKeys:
		if len(s.Keys) == 0 {
			return "adopt " + s.Primary + " as the primary key (every node writes with it; Vault holds it)"
		}
		d := "import keys " + strings.Join(s.Keys, ", ") + " into Vault"
		if s.Primary != "" {
			d += " (" + s.Primary + " as primary)"
		}
		return d
	case StepSnapshot:
		return "snapshot etcd (" + s.Reason + ") and verify it"
	case StepGenerateKey:
		return "generate a new " + string(s.Provider) + " key in Vault"
	case StepDeploy:
		var parts []string
		for _, r := range s.Chains.Resources() {
			parts = append(parts, r+" "+s.Chains[r].String())
		}
		d := "deploy " + strings.Join(parts, ", ")
		if len(s.Unsynced) > 0 {
			d += " (first to " + strings.Join(s.Unsynced, ", ") + ", not ready until they can read what etcd stores)"
		}
		if len(s.Restarts) == 0 {
			return d + " to every node at once, reloaded without a restart and proven by each node's metrics; canary must be " + s.Expect
		}
		return d + " to every node, one at a time, restarting kube-apiserver on " + strings.Join(s.Restarts, ", ") +
			" (no --encryption-provider-config-automatic-reload yet: this restart sets it where the version proves reloads, unless restart-only); canary must be " + s.Expect
	case StepRewrite:
		if s.KeyID != "" {
			return "prove every node writes with key_id " + s.KeyID + " (a canary through each), then rewrite every object of " + strings.Join(s.Resources, ", ")
		}
		return "rewrite every object of " + strings.Join(s.Resources, ", ")
	case StepVerify:
		var parts []string
		for _, r := range s.Resources {
			w := r + " under " + s.Writers[r]
			if id := s.KeyIDs[r]; id != "" {
				w += " with key_id " + id
			}
			parts = append(parts, w)
		}
		return "verify with the census: " + strings.Join(parts, ", ")
	case StepCreateTransitKey:
		return "create the Transit key in Vault (aes256-gcm96, not exportable)"
	case StepRotateTransit:
		return "rotate the Transit key in Vault: a new version wraps every data key from now on"
	case StepDeployPlugin:
		return "start the KMS plugin (" + "atrest-kms" + ") with a fresh Vault credential on " + strings.Join(s.Nodes, ", ") + ", one at a time, each proven healthy (the plugin, then kube-apiserver's KMS checks)"
	case StepRemovePlugin:
		return "remove the KMS plugin from every node and revoke its Vault credentials: nothing is stored under it and no node reads with it"
	case StepRemoveConfig:
		return "clear --encryption-provider-config and remove the provider file on every node, one at a time"
	case StepReload:
		return "restart kube-apiserver on " + s.Node + " so that it loads its provider file, written after it started; canary must be " + s.Expect
	}
	return string(s.Kind)
}

// Plan is the steps from the observed state to the desired one.
type Plan struct {
	// Transition names what the plan does: enable, rotate, custom,
	// disable, converge (drift or an interrupted transition), or "" when
	// there is nothing to do.
	Transition string
	Steps      []Step
	// Drift describes nodes that disagree or run what atrest did not deploy.
	Drift []string
	// Outside are the nodes that run keys an outside writer put there
	// (a plain `rke up`, a hand edit), with those keys.
	Outside []OutsideRun
	// Warnings are requests the plan declines, with the reason.
	Warnings []string
}

// Empty reports whether there is nothing to do.
func (p *Plan) Empty() bool { return len(p.Steps) == 0 }

// Input is everything Plan decides from.
type Input struct {
	Desired Desired
	Live    Live
	Keyring Keyring
	// Now is the time the plan is made at, for the age of the snapshot in
	// flight; the zero time leaves age out.
	Now time.Time
	// Limits are the operator's bounds on what Desired may ask for.
	Limits Limits
}

// MakePlan decides the steps from in.Live to in.Desired. It refuses, with a
// *Refusal that says why, when going on could lose data or would act on a
// cluster it cannot see: the rules of refusalRules (a node not ready, a
// config that does not parse, nodes that disagree on their etcd prefix, an
// apiserver that serves but is not managed, a key name with two materials),
// then the operator's limits (limitRules: a commit that asks for more than
// in.Limits allow), or objects stored under a key that no config and no
// keyring holds.
func MakePlan(in Input) (*Plan, error) {
	p := &Plan{}
	for _, rule := range append(slices.Clip(refusalRules), limitRules...) {
		if err := rule(in); err != nil {
			return nil, err
		}
	}
	live := mergedLive(in.Live.Nodes)
	p.Outside = outsideRuns(in)
	p.Drift = drift(in.Live.Nodes)
	for _, o := range p.Outside {
		p.Drift = append(p.Drift, o.String())
	}
	p.Warnings = append(p.Warnings, servingWarnings(in.Live)...)

	// Every key a node reads with must be in Vault before anything changes,
	// so no later step can drop one it never knew.
	var imports []string
	importEntries := func(cs cluster.Chains) {
		for _, name := range cs.KeyNames() {
			if _, ok := in.Keyring.find(name); !ok && !slices.Contains(imports, name) {
				imports = append(imports, name)
			}
		}
	}
	for _, n := range in.Live.Nodes {
		importEntries(n.Running())
	}
	if in.Desired.Mode == cluster.Custom {
		importEntries(in.Desired.Custom)
	}
	// Objects stored under an entry no chain holds must be made readable:
	// a key of the keyring (say, after etcd was restored from a snapshot) is
	// added back as a reader; anything else cannot be read and stops us.
	census := in.Live.Census
	extraReaders := map[string]cluster.Chain{}
	for _, r := range sortedKeys(census) {
		for _, prefix := range sortedKeys(census[r]) {
			if census[r][prefix] == 0 || prefix == cluster.PrefixIdentity || live[r].Has(prefix) || anyHas(in.Live.Nodes, r, prefix) {
				continue
			}
			e, ok := entryForPrefix(prefix, in.Keyring)
			if !ok {
				return nil, refuse(ReasonUnreadableObjects, "%d %s stored under %s, which no node's config and no key in Vault can read; restore that key (or its KMS plugin) before atrest changes anything",
					census[r][prefix], r, prefix)
			}
			extraReaders[r] = append(extraReaders[r], e)
		}
	}

	// The target: what every node should run at the end.
	target := cluster.Chains{}
	var generate, createTransit, rotateTransit bool
	primary := ""
	switch in.Desired.Mode {
	case cluster.Disabled:
		if in.Desired.RotateRequested {
			p.Warnings = append(p.Warnings, "key rotation requested, but encryption is disabled: nothing to rotate")
		}
	case cluster.Custom:
		target = in.Desired.Custom
		if in.Desired.RotateRequested {
			p.Warnings = append(p.Warnings, "key rotation requested, but cluster.yml has a custom_config: rotate by committing a new custom_config (as with RKE, atrest rotates managed keys only)")
		}
	case cluster.Managed:
		if in.Desired.Provider == cluster.VaultTransit {
			createTransit = !in.Live.Transit.Exists
			rotateTransit = in.Desired.RotateRequested && !createTransit
			chain := cluster.Chain{cluster.TransitEntry(), cluster.Identity}
			for _, r := range cluster.ManagedResources {
				target[r] = chain
			}
			break
		}
		var primaryEntry cluster.ProviderEntry
		for _, k := range in.Keyring.Keys {
			if k.Role == RolePrimary && k.Provider == in.Desired.Provider {
				primary, primaryEntry = k.Name, k.entry()
			}
		}
		if primary == "" && !in.Desired.RotateRequested {
			// Adopt the key the cluster already writes with, when atrest
			// meets it for the first time (RKE deployed it), rather than
			// rotate a cluster that is already encrypted as asked. A key
			// the keyring knows is not adopted: it came from a custom_config
			// in Git, or was retired, and a managed key must be fresh.
			// A key imported from the nodes before this plan (an outside
			// writer's, ImportOutsideKeys) is met for the first time too.
			if w := live["secrets"]; len(w) > 0 && w[0].Kind == string(in.Desired.Provider) && agreeOnWriter(in.Live.Nodes, "secrets") {
				if k, known := in.Keyring.find(w[0].KeyName); !known || k.Outside != "" && k.Role == RoleReader {
					primary, primaryEntry = w[0].KeyName, w[0]
				}
			}
		}
		if primary == "" || in.Desired.RotateRequested {
			generate, primary = true, PendingKey
			primaryEntry = cluster.KeyEntry(in.Desired.Provider, PendingKey, "")
		}
		chain := cluster.Chain{primaryEntry, cluster.Identity}
		for _, r := range cluster.ManagedResources {
			target[r] = chain
		}
	default:
		return nil, fmt.Errorf("unknown desired mode %q", in.Desired.Mode)
	}

	// Keys to import, and whether the adopted writer becomes the primary.
	step := Step{Kind: StepImportKeys, Keys: imports}
	if in.Desired.Mode == cluster.Managed && in.Desired.Provider != cluster.VaultTransit && !generate && !isPrimary(in.Keyring, primary) {
		step.Primary = primary
	}
	if len(step.Keys) > 0 || step.Primary != "" {
		p.Steps = append(p.Steps, step)
	}
	// The Transit key, then its plugin on every node, before any config
	// that names it is written or loaded.
	if createTransit {
		p.Steps = append(p.Steps, Step{Kind: StepCreateTransitKey})
	}
	p.Steps = append(p.Steps, pluginSteps(in)...)
	// A node whose file changed after its kube-apiserver started runs
	// something unknown: it is restarted on its file first, when that is
	// safe, and the rest is planned once what it runs is known.
	if reloads, err := reloadSteps(in); err != nil {
		return nil, err
	} else if len(reloads) > 0 {
		p.Steps = append(p.Steps, reloads...)
		p.Drift = append(p.Drift, unloadedDrift(in.Live.Nodes)...)
		p.Transition = "converge"
		p.insertSnapshot(in, false)
		return p, nil
	}
	if generate {
		p.Steps = append(p.Steps, Step{Kind: StepGenerateKey, Provider: in.Desired.Provider})
	}
	if rotateTransit {
		p.Steps = append(p.Steps, Step{Kind: StepRotateTransit})
	}
	resources := unionResources(target, live, census)

	// Stage 1, readers first: every node must be able to read with each
	// target writer (and every key the census still needs) before any
	// node writes with it.
	stage1 := cluster.Chains{}
	changed1 := false
	for _, r := range resources {
		c := slices.Clone(live[r])
		add := append(cluster.Chain{writerEntry(target[r])}, extraReaders[r]...)
		for _, e := range add {
			if e.Kind == cluster.KindIdentity && len(c) == 0 {
				continue // an empty chain already reads plain values
			}
			c = withReader(c, e)
		}
		if !allNodesRun(in.Live.Nodes, r, c) {
			changed1 = true
		}
		stage1[r] = c
	}
	current := stage1
	if changed1 {
		p.Steps = append(p.Steps, deploy(stage1))
	}

	// Stage 2, then writers: the target writer first, every reader of
	// stage 1 kept.
	stage2 := cluster.Chains{}
	changed2 := false
	for _, r := range resources {
		w := writerEntry(target[r])
		c := current[r]
		if c.Writer() == w.Prefix() {
			stage2[r] = c
			continue
		}
		next := cluster.Chain{w}
		for _, e := range append(slices.Clone(c), target[r]...) {
			if !next.Has(e.Prefix()) && e.Kind != cluster.KindIdentity {
				next = append(next, e)
			}
		}
		if w.Kind != cluster.KindIdentity && (c.Has(cluster.PrefixIdentity) || len(c) == 0 || target[r].Has(cluster.PrefixIdentity)) {
			next = append(next, cluster.Identity)
		}
		stage2[r] = next
		changed2 = true
	}
	if changed2 {
		current = stage2
		p.Steps = append(p.Steps, deploy(stage2))
	}

	// Stage 3: rewrite what is not stored under its writer, and prove it.
	// Under the vault-transit writer, that is also what a version other
	// than the Transit key's latest wraps (a rotation).
	var rewrite []string
	writers := map[string]string{}
	keyID := in.Live.Transit.KeyID
	if rotateTransit || createTransit {
		keyID = PendingVersion
	}
	keyIDs := map[string]string{}
	for _, r := range resources {
		w := current[r].Writer()
		for prefix, n := range census[r] {
			if n > 0 && prefix != w {
				rewrite = append(rewrite, r)
				break
			}
		}
		writers[r] = w
		if w == cluster.TransitPrefix && keyID != "" {
			keyIDs[r] = keyID
			if (rotateTransit || staleKeyIDs(in, r, w, keyID)) && !slices.Contains(rewrite, r) && total(census[r]) > 0 {
				rewrite = append(rewrite, r)
			}
		}
	}
	if changed2 {
		// Objects written by a node before it switched writers are not in
		// the census taken before the switch.
		for _, r := range resources {
			if stage1[r].Writer() != stage2[r].Writer() && !slices.Contains(rewrite, r) && total(census[r]) > 0 {
				rewrite = append(rewrite, r)
			}
		}
	}
	slices.Sort(rewrite)
	if len(rewrite) > 0 {
		verifyWriters, verifyIDs := map[string]string{}, map[string]string{}
		rw := Step{Kind: StepRewrite, Resources: rewrite}
		for _, r := range rewrite {
			verifyWriters[r] = writers[r]
			if id := keyIDs[r]; id != "" {
				verifyIDs[r], rw.KeyID = id, id
			}
		}
		vf := Step{Kind: StepVerify, Resources: rewrite, Writers: verifyWriters}
		if len(verifyIDs) > 0 {
			vf.KeyIDs = verifyIDs
		}
		p.Steps = append(p.Steps, rw, vf)
	}

	// Stage 4: the target, readers no longer needed dropped.
	final := cluster.Chains{}
	for _, r := range resources {
		if len(target[r]) > 0 {
			final[r] = target[r]
		}
	}
	if len(final) == 0 {
		if anyConfig(in.Live.Nodes) || len(p.Steps) > 0 && hasDeploy(p.Steps) {
			p.Steps = append(p.Steps, Step{Kind: StepRemoveConfig})
		}
	} else if !final.Equal(nonEmpty(current)) {
		p.Steps = append(p.Steps, deploy(final))
	}
	p.Steps = append(p.Steps, removePlugin(in, final)...)

	p.insertSnapshot(in, generate || rotateTransit)
	markRestarts(p.Steps, in.Live.Nodes)
	if err := p.feedStarved(in); err != nil {
		return nil, err
	}
	return p, nil
}

// markRestarts says, on each deploy, which nodes it restarts: the first
// restarts every node whose kube-apiserver does not reload (and sets the
// reload flag there, unless atrest runs restart-only); the later ones
// restart only the nodes that stay on the restart path.
func markRestarts(steps []Step, nodes []NodeLive) {
	first := true
	for i := range steps {
		if steps[i].Kind != StepDeploy {
			continue
		}
		steps[i].Restarts = nil
		for _, n := range nodes {
			if !n.Reloads && (first || n.RestartOnly) {
				steps[i].Restarts = append(steps[i].Restarts, n.Name)
			}
		}
		first = false
	}
}

// insertSnapshot puts a snapshot before the first step that touches a
// node (after imports, so that the snapshot's keys are all in Vault, before
// anything else), unless the transition in flight has one that covers it
// (snapshotCovers), and names the transition.
func (p *Plan) insertSnapshot(in Input, generate bool) {
	if len(p.Steps) > 0 && p.Transition == "" {
		p.Transition = transition(in, generate)
	}
	if i := slices.IndexFunc(p.Steps, Step.needsSnapshot); i >= 0 && !snapshotCovers(in) {
		snap := Step{Kind: StepSnapshot, Reason: "before " + p.Transition}
		// After the imports and the Transit key: the snapshot's keys are
		// all in Vault. Before anything else.
		at := 0
		for at < len(p.Steps) && (p.Steps[at].Kind == StepImportKeys || p.Steps[at].Kind == StepCreateTransitKey) {
			at++
		}
		p.Steps = slices.Insert(p.Steps, at, snap)
	}
}

func isPrimary(k Keyring, name string) bool {
	s, ok := k.find(name)
	return ok && s.Role == RolePrimary
}

func transition(in Input, generate bool) string {
	anyRunning := anyConfig(in.Live.Nodes)
	switch in.Desired.Mode {
	case cluster.Disabled:
		return "disable"
	case cluster.Custom:
		return "custom"
	}
	if !anyRunning {
		return "enable"
	}
	transit := in.Desired.Provider == cluster.VaultTransit
	onTransit := false
	for _, n := range in.Live.Nodes {
		onTransit = onTransit || runsTransit(n)
		for r, c := range n.Running() {
			for _, e := range c {
				if e.Kind == cluster.KindKMS && !e.IsTransit() || !slices.Contains(cluster.ManagedResources, r) {
					return "managed" // from a custom config back to managed keys
				}
			}
		}
	}
	if transit != onTransit {
		return "managed" // to or from the keys that never leave Vault
	}
	if generate {
		return "rotate"
	}
	return "converge"
}

func deploy(cs cluster.Chains) Step {
	clean := nonEmpty(cs)
	return Step{Kind: StepDeploy, Chains: clean, Expect: clean["secrets"].Writer()}
}

func hasDeploy(steps []Step) bool {
	return slices.ContainsFunc(steps, func(s Step) bool { return s.Kind == StepDeploy })
}

func writerEntry(c cluster.Chain) cluster.ProviderEntry {
	if len(c) == 0 {
		return cluster.Identity
	}
	return c[0]
}

// withReader adds e to c as a reader: before a trailing identity, so that
// identity stays the last resort, and after everything else.
func withReader(c cluster.Chain, e cluster.ProviderEntry) cluster.Chain {
	if c.Has(e.Prefix()) {
		return c
	}
	if len(c) == 0 {
		return cluster.Chain{cluster.Identity, e}
	}
	if c[len(c)-1].Kind == cluster.KindIdentity && len(c) > 1 {
		out := slices.Clone(c[:len(c)-1])
		return append(out, e, cluster.Identity)
	}
	return append(slices.Clone(c), e)
}

// mergedLive is every resource's chain as the nodes run it: the first node's
// chain with every entry another node has appended, so a config built from
// it reads whatever any node may have written.
func mergedLive(nodes []NodeLive) cluster.Chains {
	out := cluster.Chains{}
	for _, n := range nodes {
		for r, c := range n.Running() {
			cur, seen := out[r]
			if !seen {
				out[r] = slices.Clone(c)
				continue
			}
			for _, e := range c {
				cur = withReader(cur, e)
			}
			out[r] = cur
		}
	}
	return out
}

func drift(nodes []NodeLive) []string {
	var out []string
	first := nodes[0].Running()
	for _, n := range nodes[1:] {
		if !n.Running().Equal(first) {
			out = append(out, fmt.Sprintf("node %s runs %s, node %s runs %s", nodes[0].Name, describe(first), n.Name, describe(n.Running())))
		}
	}
	return out
}

func describe(cs cluster.Chains) string {
	if len(cs) == 0 {
		return "no encryption config"
	}
	var parts []string
	for _, r := range cs.Resources() {
		parts = append(parts, r+" "+cs[r].String())
	}
	return strings.Join(parts, ", ")
}

func anyHas(nodes []NodeLive, r, prefix string) bool {
	for _, n := range nodes {
		if n.Running()[r].Has(prefix) {
			return true
		}
	}
	return false
}

func allNodesRun(nodes []NodeLive, r string, c cluster.Chain) bool {
	for _, n := range nodes {
		if !n.Running()[r].Equal(c) {
			return false
		}
	}
	return true
}

// nonEmpty drops resources with no provider: they are stored plain either way.
func nonEmpty(cs cluster.Chains) cluster.Chains {
	out := cluster.Chains{}
	for r, c := range cs {
		if len(c) > 0 {
			out[r] = c
		}
	}
	return out
}

func agreeOnWriter(nodes []NodeLive, r string) bool {
	w := nodes[0].Running()[r].Writer()
	for _, n := range nodes[1:] {
		if n.Running()[r].Writer() != w {
			return false
		}
	}
	return true
}

func anyConfig(nodes []NodeLive) bool {
	for _, n := range nodes {
		if n.Flag || n.File {
			return true
		}
	}
	return false
}

// entryForPrefix finds the chain entry of a keyring key by its storage
// prefix ("aescbc:v1:k-abcde").
func entryForPrefix(prefix string, k Keyring) (cluster.ProviderEntry, bool) {
	parts := strings.SplitN(prefix, ":", 3)
	if len(parts) != 3 {
		return cluster.ProviderEntry{}, false
	}
	ks, ok := k.find(parts[2])
	if !ok || string(ks.Provider) != parts[0] {
		return cluster.ProviderEntry{}, false
	}
	return ks.entry(), true
}

func unionResources(target, live cluster.Chains, census map[string]map[string]int64) []string {
	var rs []string
	for _, m := range []cluster.Chains{target, live} {
		for r := range m {
			if !slices.Contains(rs, r) {
				rs = append(rs, r)
			}
		}
	}
	for r, counts := range census {
		if !slices.Contains(rs, r) && total(counts) > 0 {
			rs = append(rs, r)
		}
	}
	slices.Sort(rs)
	return rs
}

func total(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
