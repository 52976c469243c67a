package reconciler

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/atrest-io/atrest/cluster"
)

// Reasons a plan is refused: stable CamelCase names for status, metrics
// and scripts. The message says the rest.
const (
	ReasonNoNodes             = "NoControlPlaneNode"
	ReasonNodeNotReady        = "NodeNotReady"
	ReasonUnreadableFile      = "UnreadableProviderFile"
	ReasonMissingFile         = "MissingProviderFile"
	ReasonEtcdPrefix          = "EtcdPrefixMismatch"
	ReasonUnmanagedAPIServer  = "UnmanagedAPIServer"
	ReasonKeyMaterialConflict = "KeyMaterialConflict"
	ReasonUnreadableObjects   = "UnreadableObjects"
	ReasonUnloadedConfig      = "UnloadedConfig"
	// ReasonPreflightFailed: the plan needs something the cluster lacks
	// (a permission, a served resource, a mount, a KMS socket, sudo);
	// found before the first step, so nothing was changed.
	ReasonPreflightFailed = "PreflightFailed"
	// ReasonNotInForce: no one config runs on every node as atrest
	// deployed it, so `atrest rke up` has none to give RKE.
	ReasonNotInForce = "ConfigNotInForce"
	// ReasonTransitUnavailable: the vault-transit provider is needed, but
	// atrest has no plugin image or cannot read the Transit key.
	ReasonTransitUnavailable = "TransitUnavailable"
)

// Refusal is a plan MakePlan will not make, because going on could lose
// data or would act on a cluster atrest cannot see. Nothing changes until
// its cause does; Preserve lists key material the executor saves in Vault
// first, so that refusing never leaves the only copy of a key on a node.
type Refusal struct {
	Reason   string
	Message  string
	Preserve []PreserveKey
}

func (r *Refusal) Error() string { return r.Message }

// PreserveKey is key material found on a node under a name Vault holds
// with other material: the executor copies it into Vault under its own
// identity (name and fingerprint).
type PreserveKey struct {
	Node        string
	Name        string
	Provider    cluster.Provider
	Fingerprint string
}

func refuse(reason, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// ReasonOf returns the reason of a refusal in err's chain, "" when err is
// no refusal.
func ReasonOf(err error) string {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Reason
	}
	return ""
}

// refusalRules are the checks every plan passes first, in order: each
// refuses a state of the world that no step may act on.
var refusalRules = []func(Input) error{
	ruleNodesHealthy,
	ruleEtcdPrefix,
	ruleServing,
	ruleKeyMaterial,
	ruleTransitReady,
}

// ruleNodesHealthy: every node is seen, ready, and runs a config atrest
// can read.
func ruleNodesHealthy(in Input) error {
	if len(in.Live.Nodes) == 0 {
		return refuse(ReasonNoNodes, "no controlplane node observed")
	}
	for _, n := range in.Live.Nodes {
		if !n.Ready && len(starved(in, n)) == 0 && !pluginDown(n) {
			return refuse(ReasonNodeNotReady, "node %s: kube-apiserver is not ready; nothing will change until it is", n.Name)
		}
		if n.Flag && n.FileError != "" {
			return refuse(ReasonUnreadableFile, "node %s: kube-apiserver runs with a provider file atrest cannot read (%s); fix or restore it by hand", n.Name, n.FileError)
		}
		if n.Flag && !n.File {
			return refuse(ReasonMissingFile, "node %s: kube-apiserver runs with --encryption-provider-config but the file is missing", n.Name)
		}
	}
	return nil
}

// ruleEtcdPrefix: every kube-apiserver stores under one --etcd-prefix,
// the one cluster.yml gives when it gives one. The census counts there: at
// any other prefix it would count nothing, and a key would be dropped that
// every object still needs.
func ruleEtcdPrefix(in Input) error {
	var prefixes []string
	for _, n := range in.Live.Nodes {
		prefixes = append(prefixes, n.Name+" "+n.EtcdPrefix)
	}
	first := in.Live.Nodes[0].EtcdPrefix
	for _, n := range in.Live.Nodes[1:] {
		if n.EtcdPrefix != first {
			return refuse(ReasonEtcdPrefix, "the kube-apiservers store under different --etcd-prefix values (%s): they are not one cluster's apiservers, or one is misconfigured; fix the flags (services.kube-api.extra_args.etcd-prefix or services.etcd.path) and run rke up",
				strings.Join(prefixes, ", "))
		}
	}
	if want := in.Desired.EtcdPrefix; want != "" && cleanPrefix(want) != cleanPrefix(first) {
		return refuse(ReasonEtcdPrefix, "cluster.yml gives kube-apiserver --etcd-prefix %s (services.etcd.path or extra_args.etcd-prefix), but the kube-apiservers run with %s: run rke up, or fix cluster.yml", want, first)
	}
	if in.Live.Census == nil {
		return refuse(ReasonEtcdPrefix, "no census was taken at --etcd-prefix %s", first)
	}
	return nil
}

func cleanPrefix(p string) string { return "/" + strings.Trim(p, "/") }

// ruleServing: the apiservers atrest keeps readers-before-writers for are
// the ones that serve. One that serves and is not a managed node would
// miss every new key, and could not read what the others write with it.
func ruleServing(in Input) error {
	if len(in.Live.Unmanaged) > 0 {
		return refuse(ReasonUnmanagedAPIServer, "kube-apiservers serve this cluster that are no controlplane node of cluster.yml: %s; they would not get the keys the others write with. Add their nodes to cluster.yml (with the controlplane role), or remove them from the cluster, before atrest changes anything",
			strings.Join(in.Live.Unmanaged, ", "))
	}
	return nil
}

// servingWarnings says what the check of serving apiservers could not
// prove: managed nodes that do not show as serving, or no identity lease
// at all.
func servingWarnings(l Live) []string {
	var out []string
	for _, n := range l.Silent {
		out = append(out, "node "+n+": its kube-apiserver holds no fresh identity lease, so it does not show as serving (down, or another host name than the node's?)")
	}
	if l.ServingUnproven {
		out = append(out, "no kube-apiserver holds an identity lease (is the APIServerIdentity feature gate off?): which apiservers serve is proven by the kubernetes Service's endpoints alone")
	}
	return out
}

// sighting is one keyed entry as one source holds it.
type sighting struct {
	source string // "Vault", "node cp-1's provider file", "cluster.yml's custom_config"
	node   string // the node, for a node's file
	entry  cluster.ProviderEntry
}

// ruleKeyMaterial: a key is its material. The same key name with other
// material in any two sources (Vault, a node's provider file, Git's
// custom_config) is refused before anything changes: values written with
// one can be read only with that one. Material found on a node is
// preserved in Vault first, since the node may hold its only copy.
func ruleKeyMaterial(in Input) error {
	var seen []sighting
	for _, k := range in.Keyring.Keys {
		seen = append(seen, sighting{source: "Vault", entry: k.entry()})
	}
	for _, n := range in.Live.Nodes {
		if !n.File {
			continue
		}
		for _, c := range chainsInOrder(n.Chains) {
			for _, e := range c {
				if e.Keyed() {
					seen = append(seen, sighting{source: "node " + n.Name + "'s provider file", node: n.Name, entry: e})
				}
			}
		}
	}
	if in.Desired.Mode == cluster.Custom {
		for _, c := range chainsInOrder(in.Desired.Custom) {
			for _, e := range c {
				if e.Keyed() {
					seen = append(seen, sighting{source: "cluster.yml's custom_config", entry: e})
				}
			}
		}
	}
	var problems []string
	var preserve []PreserveKey
	for i, s := range seen {
		for _, first := range seen[:i] {
			if first.entry.KeyName != s.entry.KeyName || first.source == s.source {
				continue
			}
			if first.entry.Kind == s.entry.Kind && first.entry.Fingerprint == s.entry.Fingerprint {
				continue
			}
			what := fmt.Sprintf("other material (fingerprint %s) than %s (fingerprint %s)", s.entry.Fingerprint, first.source, first.entry.Fingerprint)
			if first.entry.Kind != s.entry.Kind {
				what = fmt.Sprintf("a %s key, %s a %s key", s.entry.Kind, first.source, first.entry.Kind)
			}
			msg := fmt.Sprintf("key %s: %s holds %s", s.entry.KeyName, s.source, what)
			// Either side may be the only copy of what etcd holds.
			for _, side := range []sighting{first, s} {
				if side.node != "" && !slices.ContainsFunc(preserve, func(p PreserveKey) bool {
					return p.Name == side.entry.KeyName && p.Fingerprint == side.entry.Fingerprint
				}) {
					preserve = append(preserve, PreserveKey{Node: side.node, Name: side.entry.KeyName, Provider: cluster.Provider(side.entry.Kind), Fingerprint: side.entry.Fingerprint})
				}
			}
			if !slices.Contains(problems, msg) {
				problems = append(problems, msg)
			}
			break
		}
	}
	if len(problems) == 0 {
		return nil
	}
	r := refuse(ReasonKeyMaterialConflict, "a key is its material, and one key name has two: %s. Nothing was changed. Give the new key a new name, and keep the old one as a reader until every object is rewritten",
		strings.Join(problems, "; "))
	if len(preserve) > 0 {
		r.Message += "; material found on a node is kept in Vault (preserved/<name>/<fingerprint>) and stays on the node: decide which material the cluster's data needs before you change the file by hand"
	}
	r.Preserve = preserve
	return r
}

// chainsInOrder returns the chains of cs in resource order, for stable
// messages.
func chainsInOrder(cs cluster.Chains) []cluster.Chain {
	out := make([]cluster.Chain, 0, len(cs))
	for _, r := range cs.Resources() {
		out = append(out, cs[r])
	}
	return out
}

// reloadSteps restarts every node whose provider file changed after its
// kube-apiserver started, so that it runs what its file says. It is safe
// only when what the file writes with, every other node reads (by its own
// file), and what the census holds, the file reads; otherwise it refuses.
func reloadSteps(in Input) ([]Step, error) {
	var steps []Step
	for _, n := range in.Live.Nodes {
		if !n.Unloaded {
			continue
		}
		file := n.Running()
		resources := file.Resources()
		for r := range in.Live.Census {
			if !slices.Contains(resources, r) {
				resources = append(resources, r)
			}
		}
		slices.Sort(resources)
		for _, r := range resources {
			w := file[r].Writer()
			for _, o := range in.Live.Nodes {
				if o.Name != n.Name && !o.Running()[r].Has(w) {
					return nil, refuse(ReasonUnloadedConfig, "node %s: its provider file was written after its kube-apiserver started, so what it runs is unknown; restarting it on that file would write %s with %s, which node %s cannot read; restore the file atrest deployed, or restart it by hand once every node reads %s",
						n.Name, r, w, o.Name, w)
				}
			}
			for prefix, count := range in.Live.Census[r] {
				if count > 0 && !file[r].Has(prefix) {
					return nil, refuse(ReasonUnloadedConfig, "node %s: its provider file was written after its kube-apiserver started, and it cannot read the %d %s stored under %s: restore the file atrest deployed",
						n.Name, count, r, prefix)
				}
			}
		}
		steps = append(steps, Step{Kind: StepReload, Node: n.Name, Expect: file["secrets"].Writer()})
	}
	return steps, nil
}

func unloadedDrift(nodes []NodeLive) []string {
	var out []string
	for _, n := range nodes {
		if n.Unloaded {
			out = append(out, "node "+n.Name+": the provider file changed after kube-apiserver started, so what it runs is unknown")
		}
	}
	return out
}
