package reconciler

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/keystore"
)

// Status is what `atrest status` shows: names, providers, hashes, counts
// and fingerprints, never key material.
type Status struct {
	Nodes        []NodeStatus                `json:"nodes"`
	Census       map[string]map[string]int64 `json:"census"`
	Keys         []keystore.KeyInfo          `json:"keys"`
	Journal      *keystore.Journal           `json:"journal,omitempty"`
	LastRotation time.Time                   `json:"lastRotation,omitzero"`
	LastSnapshot *SnapshotStatus             `json:"lastSnapshot,omitempty"`
	// DeployedHash identifies the config atrest last deployed
	// ("sha256:<hex>"; "" when none): a node whose file differs drifted.
	DeployedHash string `json:"deployedHash,omitempty"`
	// Daemons is what every `atrest run` last reported.
	Daemons []keystore.DaemonState `json:"daemons,omitempty"`
	Plan    []string               `json:"plan"`
	Drift   []string               `json:"drift,omitempty"`
	// Outside are the nodes running keys an outside writer put there.
	Outside   []OutsideRun `json:"outside,omitempty"`
	PlanError string       `json:"planError,omitempty"`
	// PlanReason is the refusal's stable reason (KeyMaterialConflict,
	// EtcdPrefixMismatch, ...) when the planner refused; "" otherwise.
	PlanReason string `json:"planReason,omitempty"`
	// Stall is the stall that stops every change for this desired state,
	// nil when none stands; Failure the last step's consecutive failures.
	Stall   *keystore.Stall   `json:"stall,omitempty"`
	Failure *keystore.Failure `json:"failure,omitempty"`
	// RotationPending is true when the desired state's rotation request has
	// not been served yet.
	RotationPending bool `json:"rotationPending,omitempty"`
	// Snapshots are the cluster's kept snapshots, newest first, with what
	// their last decryption drill proved; SnapshotsError says why they
	// could not be listed.
	Snapshots      []SnapshotProof `json:"snapshots,omitempty"`
	SnapshotsError string          `json:"snapshotsError,omitempty"`
	// Transit is the vault-transit provider's Transit key, when atrest
	// runs the provider; KeyIDs counts the objects by the key_id (Transit
	// version) that wraps their data key.
	Transit *TransitStatus                         `json:"transit,omitempty"`
	KeyIDs  map[string]map[string]map[string]int64 `json:"keyIDs,omitempty"`
}

// TransitStatus is the Transit key of the vault-transit provider.
type TransitStatus struct {
	Mount         string `json:"mount"`
	Key           string `json:"key"`
	Exists        bool   `json:"exists"`
	Latest        int    `json:"latest,omitempty"`
	MinDecryption int    `json:"minDecryption,omitempty"`
	KeyID         string `json:"keyID,omitempty"`
	Problem       string `json:"problem,omitempty"`
}

// NodeStatus is one node's state.
type NodeStatus struct {
	Name       string `json:"name"`
	Ready      bool   `json:"ready"`
	NotReady   string `json:"notReady,omitempty"`
	Flag       bool   `json:"flag"`
	FileSHA256 string `json:"fileSHA256,omitempty"`
	// ConfigHash identifies the config in the file by its content
	// (keystore.ConfigHash of its canonical rendering), as DeployedHash
	// does: "" when there is no file or it does not parse.
	ConfigHash string `json:"configHash,omitempty"`
	Config     string `json:"config"`
	Error      string `json:"error,omitempty"`
	// Plugin is the node's KMS plugin, when the vault-transit provider is
	// in use.
	Plugin *PluginLive `json:"plugin,omitempty"`
}

// SnapshotStatus describes a snapshot.
type SnapshotStatus struct {
	Name   string    `json:"name"`
	Time   time.Time `json:"time"`
	Reason string    `json:"reason"`
	SHA256 string    `json:"sha256"`
	Keys   []string  `json:"keys"`
}

// StatusOf observes the cluster for d and says where it stands.
func StatusOf(ctx context.Context, r *Reconciler, d Desired) (*Status, error) {
	states, err := r.Nodes.Observe(ctx)
	if err != nil && len(states) == 0 {
		return nil, err
	}
	return StatusFrom(ctx, r, states, err, d)
}

// StatusFrom is StatusOf from an observation of the nodes already made
// (states, and what could not be observed): one observation serves the
// whole status. The census is the live one when r has it.
func StatusFrom(ctx context.Context, r *Reconciler, states []controlplane.NodeState, observeErr error, d Desired) (*Status, error) {
	st := &Status{}
	for _, s := range states {
		ns := NodeStatus{Name: s.Node, Ready: s.Ready, NotReady: s.NotReady, Flag: s.APIServer.ProviderConfigSet(), FileSHA256: s.File.SHA256}
		if s.Err != nil {
			ns.Error = s.Err.Error()
		}
		ns.Config, ns.ConfigHash = nodeConfig(r, s)
		st.Nodes = append(st.Nodes, ns)
	}
	if observeErr != nil {
		st.PlanError = fmt.Sprintf("observe the nodes: %v", observeErr)
		return st, nil
	}
	live, kr, err := r.observe(ctx, d, states, false)
	if err != nil {
		st.PlanError = err.Error()
		return st, nil
	}
	st.Census = live.Census
	for i := range st.Nodes {
		for _, n := range live.Nodes {
			if n.Name == st.Nodes[i].Name {
				st.Nodes[i].Plugin = n.Plugin
			}
		}
	}
	if r.KMS != nil {
		t := live.Transit
		st.Transit = &TransitStatus{Mount: r.KMS.Transit.Mount(), Key: r.KMS.Transit.Key(), Exists: t.Exists, Latest: t.Latest, MinDecryption: t.MinDecryption, KeyID: t.KeyID, Problem: t.Problem}
		st.KeyIDs = live.KeyIDs
	}
	st.Keys = kr.Keys
	st.Journal = kr.Journal
	st.LastRotation = kr.LastRotation
	st.DeployedHash = kr.DeployedHash
	st.Stall, st.Failure = standingStall(kr, d), kr.Failure
	in := r.Input(d, live, kr, time.Time{})
	st.RotationPending = in.Desired.RotateRequested
	if plan, err := MakePlan(in); err != nil {
		st.PlanError, st.PlanReason = err.Error(), ReasonOf(err)
	} else {
		st.Drift, st.Outside = plan.Drift, plan.Outside
		for _, s := range plan.Steps {
			st.Plan = append(st.Plan, s.String())
		}
	}
	if ms, err := r.ownSnapshots(ctx); err == nil && len(ms) > 0 {
		m := ms[0]
		st.LastSnapshot = &SnapshotStatus{Name: m.Name, Time: m.Time, Reason: m.Reason, SHA256: m.SHA256, Keys: m.KeyNames()}
	}
	if proofs, err := r.Proofs(ctx); err != nil {
		st.SnapshotsError = err.Error()
	} else {
		st.Snapshots = proofs
		if st.Stall == nil {
			st.Stall = snapshotStall(proofs)
		}
	}
	return st, nil
}

func shortRevision(r string) string {
	if r == "" {
		return "(none yet)"
	}
	return r[:min(len(r), 12)]
}

// nodeConfig describes what the node runs, and the hash of its file's
// config.
func nodeConfig(r *Reconciler, s controlplane.NodeState) (string, string) {
	n := NodeLive{Flag: s.APIServer.ProviderConfigSet(), File: s.File.Present}
	hash := ""
	if s.File.Present {
		cfg, err := cluster.ParseEncryptionConfig("node "+s.Node+" provider file", "", s.File.Data, r.FeatureGates)
		if err != nil {
			return "unreadable provider file: " + err.Error(), ""
		}
		n.Chains, hash = cfg.Chains(), keystore.ConfigHash(cfg.Render())
	}
	return describe(n.Running()), hash
}

// Text renders the status for people.
func (st *Status) Text() string {
	var b strings.Builder
	for _, n := range st.Nodes {
		ready := "ready"
		if !n.Ready {
			ready = "NOT READY (" + n.NotReady + ")"
		}
		file := "no provider file"
		if n.FileSHA256 != "" {
			file = "file sha256 " + n.FileSHA256[:16]
		}
		flag := "flag off"
		if n.Flag {
			flag = "flag on"
		}
		fmt.Fprintf(&b, "node %s: %s, %s, %s: %s\n", n.Name, ready, flag, file, n.Config)
		if n.Error != "" {
			fmt.Fprintf(&b, "  error: %s\n", n.Error)
		}
		if p := n.Plugin; p != nil {
			switch {
			case !p.Present:
				b.WriteString("  kms plugin: none\n")
			case !p.Healthy:
				fmt.Fprintf(&b, "  kms plugin: NOT HEALTHY: %s\n", p.Problem)
			case !p.Current:
				fmt.Fprintf(&b, "  kms plugin: healthy, key_id %s, but not the image or flags atrest deploys\n", p.KeyID)
			default:
				fmt.Fprintf(&b, "  kms plugin: healthy, key_id %s\n", p.KeyID)
			}
		}
	}
	for _, r := range sortedKeys(st.Census) {
		var parts []string
		for _, p := range sortedKeys(st.Census[r]) {
			parts = append(parts, fmt.Sprintf("%d under %s", st.Census[r][p], p))
		}
		fmt.Fprintf(&b, "census %s: %s\n", r, strings.Join(parts, ", "))
	}
	if t := st.Transit; t != nil && (t.Exists || t.Problem != "") {
		if t.Exists {
			fmt.Fprintf(&b, "transit key %s/%s: latest version %d (key_id %s), decrypts from version %d\n", t.Mount, t.Key, t.Latest, t.KeyID, t.MinDecryption)
		}
		if t.Problem != "" {
			fmt.Fprintf(&b, "transit: %s\n", t.Problem)
		}
	}
	for _, r := range sortedKeys(st.KeyIDs) {
		for _, p := range sortedKeys(st.KeyIDs[r]) {
			var parts []string
			for _, id := range sortedKeys(st.KeyIDs[r][p]) {
				parts = append(parts, fmt.Sprintf("%d with key_id %s", st.KeyIDs[r][p][id], id))
			}
			fmt.Fprintf(&b, "census %s under %s: %s\n", r, p, strings.Join(parts, ", "))
		}
	}
	for _, k := range st.Keys {
		outside := ""
		if k.Outside != "" {
			outside = ", found on node " + k.Outside + " (an outside writer)"
		}
		fmt.Fprintf(&b, "key %s: %s, %s, created %s, fingerprint %s%s\n", k.Name, k.Provider, k.Role, k.Created.UTC().Format(time.RFC3339), k.Fingerprint, outside)
	}
	if !st.LastRotation.IsZero() {
		fmt.Fprintf(&b, "last rotation: %s\n", st.LastRotation.UTC().Format(time.RFC3339))
	}
	if st.LastSnapshot != nil {
		fmt.Fprintf(&b, "last snapshot: %s (%s, %s), keys %s\n", st.LastSnapshot.Name, st.LastSnapshot.Reason, st.LastSnapshot.Time.UTC().Format(time.RFC3339), strings.Join(st.LastSnapshot.Keys, ", "))
	}
	for _, p := range st.Snapshots {
		proof := "never drilled yet"
		if p.Summary != "" {
			proof = p.Summary
		}
		if p.Verdict != "" {
			proof = fmt.Sprintf("drilled %s: %s", p.Proven.UTC().Format(time.RFC3339), p.Summary)
		}
		fmt.Fprintf(&b, "snapshot %s (%s, %s): %s\n", p.Name, p.Reason, p.Time.UTC().Format(time.RFC3339), proof)
		for _, f := range p.Failures {
			fmt.Fprintf(&b, "  cannot restore %s (%s): %s\n", f.Object, f.Prefix, f.Reason)
		}
	}
	if st.SnapshotsError != "" {
		fmt.Fprintf(&b, "snapshots: %s\n", st.SnapshotsError)
	}
	if j := st.Journal; j != nil {
		fmt.Fprintf(&b, "transition in flight: %s for revision %s, snapshot %s, started %s\n", j.Transition, j.Revision, j.Snapshot, j.Started.UTC().Format(time.RFC3339))
		for _, s := range j.Steps {
			line := fmt.Sprintf("  %s: %s", s.State, s.Detail)
			if s.Error != "" {
				line += " (error: " + s.Error + ")"
			}
			b.WriteString(line + "\n")
		}
	}
	for _, d := range st.Drift {
		fmt.Fprintf(&b, "drift: %s\n", d)
	}
	now := time.Now()
	for _, d := range st.Daemons {
		fmt.Fprintf(&b, "daemon %s", d.Instance)
		if d.Version != "" {
			fmt.Fprintf(&b, " (%s)", d.Version)
		}
		fmt.Fprintf(&b, ": last seen %s ago", now.Sub(d.Heartbeat).Round(time.Second))
		if d.Stale(now) {
			b.WriteString(" (STALE: not running, or cannot reach Vault)")
		}
		fmt.Fprintf(&b, ", revision %s", shortRevision(d.Revision))
		if d.Suspended {
			b.WriteString(", SUSPENDED")
		}
		if d.Stalled != "" {
			fmt.Fprintf(&b, ", STALLED (%s)", d.Stalled)
		}
		if d.Result != "" {
			fmt.Fprintf(&b, ", last reconcile %s at %s", d.Result, d.LastReconcile.UTC().Format(time.RFC3339))
		}
		b.WriteString("\n")
		if d.Step != "" {
			fmt.Fprintf(&b, "  running: %s\n", d.Step)
		}
		switch {
		case d.Error != "" && d.Stalled != "":
			fmt.Fprintf(&b, "  stalled: %s\n", d.Error)
		case d.Error != "":
			fmt.Fprintf(&b, "  error (%d in a row, next try %s): %s\n", d.Failures, d.NextRetry.UTC().Format(time.RFC3339), d.Error)
		}
		if d.Refused != "" {
			fmt.Fprintf(&b, "  refused a newer revision: %s\n", d.Refused)
		}
		switch {
		case d.Schedule != "" && !d.NextRotation.IsZero():
			fmt.Fprintf(&b, "  rotation schedule %q, next rotation %s\n", d.Schedule, d.NextRotation.UTC().Format(time.RFC3339))
		case d.Schedule != "":
			fmt.Fprintf(&b, "  rotation schedule %q (no managed key to rotate)\n", d.Schedule)
		}
	}
	if f := st.Failure; f != nil && st.Stall == nil {
		fmt.Fprintf(&b, "last step failed %d time(s) in a row (daemon.stallAfter stalls it): %s\n", f.Count, f.Step)
	}
	switch {
	case st.Stall != nil:
		lift := "the desired state changes or `atrest resume` after the cause is fixed"
		if st.Stall.Reason == ReasonSnapshotNotRestorable {
			lift = "a drill proves the snapshot restorable again or it is removed"
		}
		fmt.Fprintf(&b, "STALLED (%s) since %s: %s\n  no node is changed until %s\n",
			st.Stall.Reason, st.Stall.Since.UTC().Format(time.RFC3339), st.Stall.Message, lift)
	case st.PlanError != "":
		fmt.Fprintf(&b, "cannot plan: %s\n", st.PlanError)
	case len(st.Plan) == 0:
		b.WriteString("in sync: nothing to do\n")
	default:
		b.WriteString("to do:\n")
		for i, s := range st.Plan {
			fmt.Fprintf(&b, "  %d. %s\n", i+1, s)
		}
	}
	return b.String()
}
