package reconciler

import (
	"slices"
	"sort"
	"strings"

	"github.com/atrest-io/atrest/cluster"
)

// The managed vault-transit provider: KMS v2 through atrest's plugin on
// every node, which wraps kube-apiserver's data keys with a Vault Transit
// key. Its key never leaves Vault, so there is no key to import, generate
// or deploy: a rotation adds a Transit version, and the census tells which
// version (key_id) each object needs.

// The steps only the vault-transit provider plans.
const (
	// StepCreateTransitKey creates the Transit key in Vault.
	StepCreateTransitKey StepKind = "create-transit-key"
	// StepRotateTransit adds a version to the Transit key.
	StepRotateTransit StepKind = "rotate-transit-key"
	// StepDeployPlugin starts the KMS plugin (with a fresh credential) on
	// the nodes of Step.Nodes, one at a time, each proven healthy.
	StepDeployPlugin StepKind = "deploy-kms-plugin"
	// StepRemovePlugin removes the plugin from every node and revokes its
	// credentials, once nothing is stored under it and no node reads with it.
	StepRemovePlugin StepKind = "remove-kms-plugin"
)

// PendingVersion stands for the Transit version a rotate step will
// create, in the steps after it.
const PendingVersion = "(new version)"

// TransitLive is the managed vault-transit provider as atrest finds it.
type TransitLive struct {
	// Configured: atrest has a plugin image and a Transit key to run the
	// provider with (settings kms.*); Problem says why not, or why Vault
	// could not be read.
	Configured bool
	Problem    string
	// Exists: Vault has the Transit key; Latest is the version new writes
	// use, MinDecryption the oldest Vault still decrypts.
	Exists                bool
	Latest, MinDecryption int
	// KeyID is the key_id of Latest, as the plugin reports it.
	KeyID string
}

// PluginLive is a node's KMS plugin as observed.
type PluginLive struct {
	// Current: it runs the plugin spec atrest deploys, and is healthy.
	Current bool `json:"current"`
	// Present: its container exists; Healthy: its status is ok.
	Present bool   `json:"present"`
	Healthy bool   `json:"healthy"`
	KeyID   string `json:"keyID,omitempty"`
	Problem string `json:"problem,omitempty"`
}

// transitInUse reports whether the vault-transit provider is needed now:
// it is asked for, a node's config names it, or the census finds objects
// it wrote.
func transitInUse(in Input) bool {
	if in.Desired.Mode == cluster.Managed && in.Desired.Provider == cluster.VaultTransit {
		return true
	}
	for _, n := range in.Live.Nodes {
		if runsTransit(n) {
			return true
		}
	}
	for _, byPrefix := range in.Live.Census {
		if byPrefix[cluster.TransitPrefix] > 0 {
			return true
		}
	}
	return false
}

// runsTransit reports whether n's config names the vault-transit provider.
func runsTransit(n NodeLive) bool {
	for _, c := range n.Running() {
		if slices.ContainsFunc(c, cluster.ProviderEntry.IsTransit) {
			return true
		}
	}
	return false
}

// ruleTransitReady: what needs the vault-transit provider needs atrest to
// be able to run it.
func ruleTransitReady(in Input) error {
	if !transitInUse(in) || in.Live.Transit.Configured && in.Live.Transit.Problem == "" {
		return nil
	}
	return refuse(ReasonTransitUnavailable, "the vault-transit provider is asked for, or what the cluster runs or stores needs it, but atrest cannot run it: %s", in.Live.Transit.Problem)
}

// pluginDown reports whether n is not ready because its KMS plugin is not
// healthy while its config needs it: the plugin step repairs that, so it
// is no reason to refuse.
func pluginDown(n NodeLive) bool {
	return !n.Ready && n.Plugin != nil && !n.Plugin.Healthy && runsTransit(n)
}

// pluginSteps deploys the plugin to every node that does not run it
// healthy, before any config that names it (or that is loaded, since
// kube-apiserver checks its KMS plugins' health on load).
func pluginSteps(in Input) []Step {
	if !transitInUse(in) {
		return nil
	}
	var nodes []string
	for _, n := range in.Live.Nodes {
		if n.Plugin == nil || !n.Plugin.Current {
			nodes = append(nodes, n.Name)
		}
	}
	if len(nodes) == 0 {
		return nil
	}
	return []Step{{Kind: StepDeployPlugin, Nodes: nodes}}
}

// removePlugin removes the plugin once nothing needs it: it is not asked
// for, no node's config names it (after this plan), nothing is stored
// under it, and a node still has it.
func removePlugin(in Input, final cluster.Chains) []Step {
	if in.Desired.Mode == cluster.Managed && in.Desired.Provider == cluster.VaultTransit {
		return nil
	}
	for _, c := range final {
		if slices.ContainsFunc(c, cluster.ProviderEntry.IsTransit) {
			return nil
		}
	}
	for _, byPrefix := range in.Live.Census {
		if byPrefix[cluster.TransitPrefix] > 0 {
			return nil
		}
	}
	if !slices.ContainsFunc(in.Live.Nodes, func(n NodeLive) bool { return n.Plugin != nil && n.Plugin.Present }) {
		return nil
	}
	return []Step{{Kind: StepRemovePlugin}}
}

// staleKeyIDs reports whether objects of r stored under prefix need
// another key_id than keyID: written before a rotation of the Transit key.
func staleKeyIDs(in Input, r, prefix, keyID string) bool {
	for id, n := range in.Live.KeyIDs[r][prefix] {
		if n > 0 && id != keyID {
			return true
		}
	}
	return false
}

// TransitVersions are the versions of the Transit key mount/key the
// census's key_ids name, oldest first: what the objects need.
func TransitVersions(keyIDs map[string]map[string]map[string]int64, mount, key string) []int {
	seen := map[int]bool{}
	for _, byPrefix := range keyIDs {
		for id, n := range byPrefix[cluster.TransitPrefix] {
			if m, k, v, ok := cluster.ParseTransitKeyID(id); ok && n > 0 && m == strings.Trim(mount, "/") && k == key {
				seen[v] = true
			}
		}
	}
	out := make([]int, 0, len(seen))
	for v := range seen {
		out = append(out, v)
	}
	sort.Ints(out)
	return out
}
