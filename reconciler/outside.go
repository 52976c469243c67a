package reconciler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/keystore"
)

// OutsideKey is a key that a node's provider file held while Vault did
// not: a writer other than atrest put it there (a plain `rke up` deploys
// the key in cluster.rkestate, or one it just generated; a hand edit).
// Anything written through that node since is stored under it, so it is
// imported before anything else is decided.
type OutsideKey struct {
	Node        string           `json:"node"`
	Name        string           `json:"name"`
	Provider    cluster.Provider `json:"provider"`
	Fingerprint string           `json:"fingerprint"`
	// Preserved is the Vault path the material was kept at, when Vault
	// already held other material under its name (the planner then
	// refuses, KeyMaterialConflict); "" when it was imported.
	Preserved string `json:"preserved,omitempty"`
}

// foundKey is a key read from a node's file, and the node.
type foundKey struct {
	node string
	key  cluster.Key
}

// outsideKeys returns, in node order, every key in the nodes' provider
// files that the keyring does not list, once per name and material (the
// first node holding it). A file that does not parse holds nothing here:
// the planner refuses it.
func outsideKeys(kr *keystore.Keyring, states []controlplane.NodeState, featureGates string) []foundKey {
	var out []foundKey
	for _, s := range states {
		if !s.File.Present {
			continue
		}
		cfg, err := cluster.ParseEncryptionConfig("node "+s.Node+" provider file", "", s.File.Data, featureGates)
		if err != nil {
			continue
		}
		for _, k := range cfg.Keys() {
			if _, known := kr.Find(k.Name); known {
				continue
			}
			if slices.ContainsFunc(out, func(f foundKey) bool {
				return f.key.Name == k.Name && f.key.Fingerprint() == k.Fingerprint() && f.key.Provider == k.Provider
			}) {
				continue
			}
			out = append(out, foundKey{node: s.Node, key: k})
		}
	}
	return out
}

// ImportOutsideKeys stores in Vault every key a node's provider file holds
// that the keyring does not, as a reader marked with the node it was found
// on. It runs first in every reconcile (before a standing stall is
// honoured, before recovery, before any plan, so before any snapshot is
// pruned) and in every daemon cycle, suspended or not: it only adds to
// Vault, and until it has run the key exists nowhere but on the nodes.
// The planner then converges readers first, so nothing written under the
// key is lost, and retires it only once the census shows nothing under it.
//
// Other material under a name Vault holds is preserved under its own
// identity (PreserveKey) instead; the planner refuses that state
// (KeyMaterialConflict) until a person resolves it.
func (r *Reconciler) ImportOutsideKeys(ctx context.Context) ([]OutsideKey, error) {
	states, err := r.Nodes.Observe(ctx)
	if err != nil && len(states) == 0 {
		return nil, fmt.Errorf("observe the nodes: %w", err)
	}
	return r.importOutside(ctx, states)
}

// ImportOutsideKeysFrom is ImportOutsideKeys from an observation of the
// nodes already made.
func (r *Reconciler) ImportOutsideKeysFrom(ctx context.Context, states []controlplane.NodeState) ([]OutsideKey, error) {
	return r.importOutside(ctx, states)
}

// maxKeyringRaces bounds the check-and-set retries of one import: another
// writer of the keyring (a reconcile holding the lock) may be mid-step.
const maxKeyringRaces = 3

func (r *Reconciler) importOutside(ctx context.Context, states []controlplane.NodeState) ([]OutsideKey, error) {
	var done []OutsideKey
	for attempt := 1; ; attempt++ {
		kr, err := r.Keys.Keyring(ctx)
		if err != nil {
			return done, err
		}
		found := outsideKeys(kr, states, r.FeatureGates)
		if len(found) == 0 {
			return done, nil
		}
		var added []OutsideKey
		for _, f := range found {
			ok := OutsideKey{Node: f.node, Name: f.key.Name, Provider: f.key.Provider, Fingerprint: f.key.Fingerprint()}
			// Other material under a name: two nodes that disagree on a
			// name Vault lacks (the first is imported), or a name Vault
			// holds but the keyring does not list. Kept apart.
			taken := slices.ContainsFunc(kr.Keys, func(k keystore.KeyInfo) bool { return k.Name == f.key.Name })
			var err error
			if !taken {
				err = r.putOnce(ctx, f.key)
			}
			if taken || errors.Is(err, errOtherMaterial) {
				if ok.Preserved, err = r.Keys.PreserveKey(ctx, f.key, "node "+f.node+"'s provider file"); err != nil {
					return done, err
				}
				done = append(done, ok)
				continue
			}
			if err != nil {
				return done, err
			}
			info := keystore.InfoOf(f.key, keystore.RoleReader)
			info.Outside = f.node
			kr.Keys = append(kr.Keys, info)
			added = append(added, ok)
		}
		if len(added) == 0 {
			r.logOutside(done)
			return done, nil
		}
		err = r.Keys.UpdateKeyring(ctx, kr)
		if errors.Is(err, keystore.ErrConflict) && attempt < maxKeyringRaces {
			continue // the keys are in Vault; list them in the new keyring
		}
		if err != nil {
			return done, fmt.Errorf("list the imported keys in the keyring: %w", err)
		}
		done = append(done, added...)
		r.logOutside(done)
		return done, nil
	}
}

func (r *Reconciler) logOutside(keys []OutsideKey) {
	for _, k := range keys {
		if k.Preserved != "" {
			r.logger().Warn("outside writer: a node's provider file holds other material under a key name Vault holds; the node's material is preserved in Vault",
				"node", k.Node, "key", k.Name, "provider", k.Provider, "fingerprint", k.Fingerprint, "path", k.Preserved)
			continue
		}
		r.logger().Warn("outside writer: a node's provider file holds a key Vault did not; imported it before anything else",
			"node", k.Node, "key", k.Name, "provider", k.Provider, "fingerprint", k.Fingerprint)
	}
}

// OutsideRun is a node running keys an outside writer put there: keys
// found on a node while Vault lacked them (KeyInfo.Outside), or keys atrest
// had retired, put back (a plain `rke up` with a stale cluster.rkestate).
type OutsideRun struct {
	Node string   `json:"node"`
	Keys []string `json:"keys"`
}

// String is the drift line for people.
func (o OutsideRun) String() string {
	return fmt.Sprintf("node %s runs %s, which an outside writer (a plain `rke up`, a hand edit) put there; Vault holds it, and atrest converges back to Git", o.Node, keyWord(o.Keys))
}

// outsideRuns are the nodes that run keys an outside writer put there.
func outsideRuns(in Input) []OutsideRun {
	var out []OutsideRun
	for _, n := range in.Live.Nodes {
		var names []string
		for _, name := range n.Running().KeyNames() {
			k, ok := in.Keyring.find(name)
			if ok && k.Role != RolePrimary && (k.Outside != "" || k.Role == RoleRetired) && !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
		if len(names) > 0 {
			out = append(out, OutsideRun{Node: n.Name, Keys: names})
		}
	}
	return out
}

func keyWord(names []string) string {
	if len(names) == 1 {
		return "key " + names[0]
	}
	return "keys " + strings.Join(names, ", ")
}

// starved are the storage prefixes, by resource, that node n holds
// objects under in etcd (the census) but cannot read, when n is not ready
// only because its informers cannot sync: a plain `rke up` gave it a file
// without atrest's key, so its cache of secrets never fills and /readyz
// fails. Such a node serves; the one change that makes it ready again is
// a readers-first deploy that gives it those keys (feedStarved). nil for
// a node that is ready, or not ready for another reason.
func starved(in Input, n NodeLive) map[string][]string {
	if n.Ready || !n.Unsynced {
		return nil
	}
	out := map[string][]string{}
	for _, r := range sortedKeys(in.Live.Census) {
		for _, prefix := range sortedKeys(in.Live.Census[r]) {
			if in.Live.Census[r][prefix] > 0 && !reads(n.Running()[r], prefix) {
				out[r] = append(out[r], prefix)
			}
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// reads reports whether a chain reads objects stored under prefix.
func reads(c cluster.Chain, prefix string) bool {
	if prefix == cluster.PrefixIdentity && len(c) == 0 {
		return true
	}
	return c.Has(prefix)
}

// feedStarved lets the plan change starved nodes only by the deploy that
// feeds them: the first step that touches a node must be a deploy whose
// chains read every prefix each starved node lacks; that deploy names
// them (Step.Unsynced), and the executor allows the change on them alone.
// Otherwise the plan is refused, as for any node not ready.
func (p *Plan) feedStarved(in Input) error {
	var names []string
	first := slices.IndexFunc(p.Steps, Step.TouchesNodes)
	for _, n := range in.Live.Nodes {
		missing := starved(in, n)
		if missing == nil {
			continue
		}
		if first < 0 || p.Steps[first].Kind != StepDeploy {
			return refuse(ReasonNodeNotReady, "node %s: kube-apiserver is not ready: it cannot read what etcd stores under %s, and the plan's first change does not give it that key", n.Name, describeMissing(missing))
		}
		for r, prefixes := range missing {
			for _, prefix := range prefixes {
				if !reads(p.Steps[first].Chains[r], prefix) {
					return refuse(ReasonNodeNotReady, "node %s: kube-apiserver is not ready: it cannot read %s stored under %s, and no key in Vault or on a node reads them", n.Name, r, prefix)
				}
			}
		}
		names = append(names, n.Name)
	}
	if len(names) > 0 {
		p.Steps[first].Unsynced = names
	}
	return nil
}

func describeMissing(m map[string][]string) string {
	var parts []string
	for _, r := range sortedKeys(m) {
		parts = append(parts, r+" "+strings.Join(m[r], ", "))
	}
	return strings.Join(parts, "; ")
}
