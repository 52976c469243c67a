package reconciler

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/atrest-io/atrest/cluster"
)

// ReasonBeyondOperatorLimit: the commit asks for more than the operator's
// settings (policy.*) allow: a rotation schedule too frequent, too few
// snapshots kept, encryption turned off, a custom config or a KMS
// provider. Nothing changes until a commit within them (or the setting
// changes).
const ReasonBeyondOperatorLimit = "BeyondOperatorLimit"

// Limits are the operator's bounds on what a commit may ask for, from the
// settings' policy group. Git decides what the cluster runs; whoever can
// push to it should not decide alone how often every secret is rewritten,
// how few restore points are kept, or that encryption goes off. The zero
// value bounds the most: nothing may be disabled, no custom config, no
// KMS; so a Reconciler built without its limits refuses rather than
// obeys.
type Limits struct {
	// MinRotationInterval is the shortest gap between two firings a
	// rotation schedule may have; 0 sets no floor.
	MinRotationInterval time.Duration
	// MinSnapshotRetention is the fewest snapshots the policy may keep; 0
	// sets no floor.
	MinSnapshotRetention int
	// AllowDisable lets a commit stop encrypting what is encrypted now.
	AllowDisable bool
	// AllowCustomConfig lets a commit give a custom_config at all.
	AllowCustomConfig bool
	// AllowKMS lets a custom_config name a kms provider.
	AllowKMS bool
}

// limitRules are the refusal rules of the operator's limits. They come
// after the rules of the world's state, so that a key material conflict
// is still preserved in Vault while a commit beyond the limits stands.
var limitRules = []func(Input) error{
	ruleRotationInterval,
	ruleSnapshotRetention,
	ruleCustomConfig,
	ruleKMS,
	ruleDisable,
}

func beyond(format string, args ...any) *Refusal {
	return refuse(ReasonBeyondOperatorLimit, format, args...)
}

// ruleRotationInterval: the rotation schedule does not fire more often
// than policy.minRotationInterval. A schedule is refused whatever the
// mode: the commit that sets it is the one beyond the bound, not the one
// that later turns managed keys on.
func ruleRotationInterval(in Input) error {
	d, floor := in.Desired, in.Limits.MinRotationInterval
	if d.Schedule == "" || floor <= 0 || d.ScheduleGap >= floor {
		return nil
	}
	how := fmt.Sprintf("fires every %s", d.ScheduleGap)
	if !strings.HasPrefix(strings.TrimSpace(d.Schedule), "@every") {
		how = fmt.Sprintf("fires as little as %s apart", d.ScheduleGap)
	}
	return beyond("atrest.yaml: rotation.schedule %q %s, more often than the operator allows (settings policy.minRotationInterval %s): each rotation is a snapshot, a deploy and a full rewrite; schedule less often or lower the setting",
		d.Schedule, how, floor)
}

// ruleSnapshotRetention: the policy keeps at least
// policy.minSnapshotRetention snapshots.
func ruleSnapshotRetention(in Input) error {
	d, floor := in.Desired, in.Limits.MinSnapshotRetention
	if floor <= 0 || d.Retention >= floor {
		return nil
	}
	return beyond("atrest.yaml: snapshots.retention %d keeps fewer snapshots than the operator allows (settings policy.minSnapshotRetention %d): each is the restore point from before a transition, and keeps the keys that read it; keep at least %d or lower the setting",
		d.Retention, floor, floor)
}

// ruleCustomConfig: a custom_config only where policy.allowCustomConfig.
func ruleCustomConfig(in Input) error {
	if in.Desired.Mode != cluster.Custom || in.Limits.AllowCustomConfig {
		return nil
	}
	return beyond("cluster.yml: services.kube-api.secrets_encryption_config.custom_config is given, but the operator allows managed keys only (settings policy.allowCustomConfig false): remove custom_config and let atrest manage the keys, or set policy.allowCustomConfig true")
}

// ruleKMS: a kms provider only where policy.allowKMS: its keys are in a
// plugin outside atrest's custody, which no snapshot of atrest's restores.
func ruleKMS(in Input) error {
	if in.Desired.Mode != cluster.Custom || in.Limits.AllowKMS {
		return nil
	}
	for _, r := range in.Desired.Custom.Resources() {
		for _, e := range in.Desired.Custom[r] {
			if e.Kind == cluster.KindKMS {
				return beyond("cluster.yml: custom_config gives %s the kms provider %s, but the operator does not allow KMS (settings policy.allowKMS false): its keys are outside atrest's custody and snapshots; use aescbc, aesgcm or secretbox keys, or set policy.allowKMS true",
					r, e.Prefix())
			}
		}
	}
	return nil
}

// ruleDisable: a commit stops encrypting what is encrypted now only where
// policy.allowDisable. A resource is encrypted now when a node writes it
// with a provider other than identity, or the census finds it stored
// under one; the commit stops it with enabled: false, with a custom_config
// that writes it plain (identity first, or the resource not listed), or
// with managed keys, which encrypt secrets only, where a custom config
// encrypted more.
func ruleDisable(in Input) error {
	if in.Limits.AllowDisable {
		return nil
	}
	for _, r := range observedResources(in.Live) {
		if writesEncrypted(in.Desired, r) {
			continue
		}
		how, ok := encryptedNow(in.Live, r)
		if !ok {
			continue
		}
		const bound = "the operator does not allow turning encryption off (settings policy.allowDisable false)"
		switch in.Desired.Mode {
		case cluster.Disabled:
			return beyond("cluster.yml: services.kube-api.secrets_encryption_config.enabled is false, but encryption at rest is in force (%s %s): %s; enable it again in cluster.yml, or set policy.allowDisable true",
				r, how, bound)
		case cluster.Custom:
			return beyond("cluster.yml: custom_config writes %s plain (its first provider is identity, or it lists no provider for them), but they are encrypted now (%s): %s; put an encrypting provider first for %s, or set policy.allowDisable true",
				r, how, bound, r)
		default:
			return beyond("cluster.yml: managed keys encrypt %s only, but %s are encrypted now (%s): %s; keep the custom_config that encrypts them, or set policy.allowDisable true",
				strings.Join(cluster.ManagedResources, ", "), r, how, bound)
		}
	}
	return nil
}

// writesEncrypted reports whether d has resource r written encrypted.
func writesEncrypted(d Desired, r string) bool {
	switch d.Mode {
	case cluster.Custom:
		return d.Custom[r].Writer() != cluster.PrefixIdentity
	case cluster.Managed:
		return slices.Contains(cluster.ManagedResources, r)
	}
	return false
}

// observedResources are the resources a node's config names or the census
// counts, sorted.
func observedResources(l Live) []string {
	live := cluster.Chains{}
	for _, n := range l.Nodes {
		for r, c := range n.Running() {
			live[r] = c
		}
	}
	return unionResources(cluster.Chains{}, live, l.Census)
}

// encryptedNow says how resource r is encrypted now, if it is: a node
// writes it with a provider other than identity, or the census counts
// objects of it stored under one.
func encryptedNow(l Live, r string) (string, bool) {
	for _, n := range l.Nodes {
		if w := n.Running()[r].Writer(); w != cluster.PrefixIdentity {
			return fmt.Sprintf("written with %s on node %s", w, n.Name), true
		}
	}
	for _, prefix := range sortedKeys(l.Census[r]) {
		if count := l.Census[r][prefix]; count > 0 && prefix != cluster.PrefixIdentity {
			return fmt.Sprintf("%d stored under %s", count, prefix), true
		}
	}
	return "", false
}
