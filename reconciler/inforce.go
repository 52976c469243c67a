package reconciler

import (
	"errors"
	"fmt"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/keystore"
)

// InForce is the config that atrest deployed and that every node runs,
// proven so: what `atrest rke up` hands RKE.
type InForce struct {
	// Config is nil when the nodes run none (encryption off).
	Config *cluster.EncryptionConfig
	// Reload is true when every node's kube-apiserver reloads its file
	// (--encryption-provider-config-automatic-reload=true).
	Reload bool
}

// ConfigInForce decides the config in force from what the nodes run and
// the keyring, with keys looking up the material Vault holds. It refuses
// (ReasonNotInForce) unless one config is: no transition in flight, every
// node observed and ready, the same config on every node, loaded, the one
// atrest last deployed, its every key in Vault with the same material.
func ConfigInForce(states []controlplane.NodeState, kr *keystore.Keyring, featureGates string, keys func(name string) (cluster.Key, error)) (*InForce, error) {
	if len(states) == 0 {
		return nil, refuse(ReasonNotInForce, "no controlplane node in cluster.yml")
	}
	if j := kr.Journal; j != nil {
		return nil, refuse(ReasonNotInForce, "a transition is in flight (%s, revision %s): the nodes are between configs; wait until `atrest status` says in sync", j.Transition, j.Revision)
	}
	var cfg *cluster.EncryptionConfig
	reload := true
	for i, s := range states {
		if s.Err != nil || !s.Ready {
			return nil, refuse(ReasonNotInForce, "node %s is not ready (%s): what it runs is not known", s.Node, notReadyWhy(s))
		}
		if s.Unloaded() {
			return nil, refuse(ReasonNotInForce, "node %s: its kube-apiserver is not proven to run its provider file; let atrest converge first", s.Node)
		}
		reload = reload && s.APIServer.AutomaticReload
		var c *cluster.EncryptionConfig
		if s.File.Present {
			var err error
			if c, err = cluster.ParseEncryptionConfig("node "+s.Node+" provider file", "", s.File.Data, featureGates); err != nil {
				return nil, refuse(ReasonNotInForce, "node %s: its provider file does not parse: %v", s.Node, err)
			}
		}
		if i > 0 && !sameConfig(c, cfg) {
			return nil, refuse(ReasonNotInForce, "node %s and node %s run different configs: let atrest converge first", states[0].Node, s.Node)
		}
		cfg = c
	}
	want := ""
	if cfg != nil {
		want = keystore.ConfigHash(cfg.Render())
	}
	if want != kr.DeployedHash {
		return nil, refuse(ReasonNotInForce, "the nodes run a config (%s) that is not the one atrest last deployed (%s): an outside writer changed them; let atrest converge first",
			orNone(want), orNone(kr.DeployedHash))
	}
	if cfg != nil {
		for _, k := range cfg.Keys() {
			have, err := keys(k.Name)
			if errors.Is(err, keystore.ErrNotFound) {
				return nil, refuse(ReasonNotInForce, "key %s runs on the nodes but is not in Vault; let atrest import it first", k.Name)
			}
			if err != nil {
				return nil, fmt.Errorf("read key %s from Vault: %w", k.Name, err)
			}
			if have.Fingerprint() != k.Fingerprint() || have.Provider != k.Provider {
				return nil, refuse(ReasonKeyMaterialConflict, "key %s: the nodes hold other material (fingerprint %s) than Vault (fingerprint %s)", k.Name, k.Fingerprint(), have.Fingerprint())
			}
		}
	}
	return &InForce{Config: cfg, Reload: cfg != nil && reload}, nil
}

func sameConfig(a, b *cluster.EncryptionConfig) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return string(a.Render()) == string(b.Render())
}

func notReadyWhy(s controlplane.NodeState) string {
	if s.Err != nil {
		return s.Err.Error()
	}
	return s.NotReady
}

func orNone(h string) string {
	if h == "" {
		return "none"
	}
	return h
}
