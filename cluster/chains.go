package cluster

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
)

// Provider kinds of a chain entry beyond the keyed providers.
const (
	KindIdentity = "identity"
	KindKMS      = "kms"
)

// ProviderEntry is one provider in a resource's chain, without key
// material: the planner compares and reorders chains, and the executor
// fetches the material by key name when it renders one.
type ProviderEntry struct {
	// Kind is identity, kms, or a keyed Provider (aescbc, aesgcm, secretbox).
	Kind string
	// KeyName names the key of a keyed provider.
	KeyName string
	// Fingerprint identifies a keyed entry's material (Key.Fingerprint):
	// a key is its material, so two entries with one name and different
	// fingerprints are different keys. "" only for a key not yet created.
	Fingerprint string
	// KMS is the plugin's configuration, for kind kms.
	KMS *KMS
}

// KMS is a KMS provider's configuration (no key material lives here).
type KMS struct {
	APIVersion string
	Name       string
	Endpoint   string
	Timeout    time.Duration
	CacheSize  *int32
}

// Identity is the identity provider entry.
var Identity = ProviderEntry{Kind: KindIdentity}

// KeyEntry is the chain entry of a keyed provider's key, identified by
// its name and the fingerprint of its material ("" for a key not yet
// created).
func KeyEntry(p Provider, name, fingerprint string) ProviderEntry {
	return ProviderEntry{Kind: string(p), KeyName: name, Fingerprint: fingerprint}
}

// EntryOf is the chain entry of k.
func EntryOf(k Key) ProviderEntry { return KeyEntry(k.Provider, k.Name, k.Fingerprint()) }

// Prefix is the storage prefix the entry writes under, as census keys name
// it: "aescbc:v1:k-abcde", "kms:v2:NAME", "identity".
func (e ProviderEntry) Prefix() string {
	switch e.Kind {
	case KindIdentity:
		return PrefixIdentity
	case KindKMS:
		return "kms:" + e.KMS.APIVersion + ":" + e.KMS.Name
	}
	return e.Kind + ":v1:" + e.KeyName
}

// Keyed reports whether the entry holds a key whose material lives in the
// config file (and so in atrest's Vault keyring).
func (e ProviderEntry) Keyed() bool { return e.Kind != KindIdentity && e.Kind != KindKMS }

// Equal reports whether two entries are the same provider: for a keyed
// entry, the same name and the same material.
func (e ProviderEntry) Equal(o ProviderEntry) bool {
	if e.Kind != o.Kind || e.KeyName != o.KeyName || e.Fingerprint != o.Fingerprint {
		return false
	}
	if e.KMS == nil || o.KMS == nil {
		return e.KMS == nil && o.KMS == nil
	}
	return e.KMS.APIVersion == o.KMS.APIVersion && e.KMS.Name == o.KMS.Name && e.KMS.Endpoint == o.KMS.Endpoint &&
		e.KMS.Timeout == o.KMS.Timeout && ((e.KMS.CacheSize == nil) == (o.KMS.CacheSize == nil)) &&
		(e.KMS.CacheSize == nil || *e.KMS.CacheSize == *o.KMS.CacheSize)
}

// Chain is a resource's ordered providers: the first writes, all read.
type Chain []ProviderEntry

// Writer is the prefix new writes get: the first entry's, or identity for
// an empty chain (a resource no config names is stored plain).
func (c Chain) Writer() string {
	if len(c) == 0 {
		return PrefixIdentity
	}
	return c[0].Prefix()
}

// Has reports whether the chain can read values under prefix. An empty
// chain reads only plain values.
func (c Chain) Has(prefix string) bool {
	if len(c) == 0 {
		return prefix == PrefixIdentity
	}
	return slices.ContainsFunc(c, func(e ProviderEntry) bool { return e.Prefix() == prefix })
}

// Equal reports whether two chains are the same providers in the same order.
func (c Chain) Equal(o Chain) bool { return slices.EqualFunc(c, o, ProviderEntry.Equal) }

// String lists the chain's prefixes: "[aescbc:v1:k-abcde, identity]".
func (c Chain) String() string {
	ps := make([]string, len(c))
	for i, e := range c {
		ps[i] = e.Prefix()
	}
	return "[" + strings.Join(ps, ", ") + "]"
}

// Chains maps each resource a config names to its chain.
type Chains map[string]Chain

// Resources returns the resources in sorted order.
func (cs Chains) Resources() []string {
	rs := make([]string, 0, len(cs))
	for r := range cs {
		rs = append(rs, r)
	}
	slices.Sort(rs)
	return rs
}

// Equal reports whether two configs give every resource the same chain.
func (cs Chains) Equal(o Chains) bool {
	if len(cs) != len(o) {
		return false
	}
	for r, c := range cs {
		oc, ok := o[r]
		if !ok || !c.Equal(oc) {
			return false
		}
	}
	return true
}

// KeyNames returns the names of every keyed entry, sorted, once each.
func (cs Chains) KeyNames() []string {
	var names []string
	for _, c := range cs {
		for _, e := range c {
			if e.Keyed() && !slices.Contains(names, e.KeyName) {
				names = append(names, e.KeyName)
			}
		}
	}
	slices.Sort(names)
	return names
}

// Chains returns the config's chain per resource. ParseEncryptionConfig
// refuses wildcards and a resource in two lists, so each resource a config
// names has exactly the chain kube-apiserver gives it.
func (c *EncryptionConfig) Chains() Chains {
	out := Chains{}
	for _, r := range c.internal.Resources {
		var chain Chain
		for _, p := range r.Providers {
			switch {
			case p.Identity != nil:
				chain = append(chain, Identity)
			case p.KMS != nil:
				k := &KMS{APIVersion: p.KMS.APIVersion, Name: p.KMS.Name, Endpoint: p.KMS.Endpoint, CacheSize: p.KMS.CacheSize}
				if p.KMS.Timeout != nil {
					k.Timeout = p.KMS.Timeout.Duration
				}
				chain = append(chain, ProviderEntry{Kind: KindKMS, KMS: k})
			default:
				prov, keys := providerKeys(p)
				for _, key := range keys {
					secret, _ := base64.StdEncoding.DecodeString(key.Secret)
					chain = append(chain, KeyEntry(prov, key.Name, Fingerprint(secret)))
				}
			}
		}
		for _, res := range r.Resources {
			out[res] = chain
		}
	}
	return out
}

// KeyLookup returns the material of a named key.
type KeyLookup func(name string) (Key, error)

// RenderChains renders an EncryptionConfiguration giving each resource its
// chain. Resources with equal chains share one entry, in sorted order, and
// consecutive keys of one provider share one provider entry: the same chains
// always render to the same bytes. Empty chains are left out (plain). The
// bytes hold key material.
func RenderChains(cs Chains, keys KeyLookup) ([]byte, error) {
	type group struct {
		resources []string
		chain     Chain
	}
	var groups []group
	for _, r := range cs.Resources() {
		c := cs[r]
		if len(c) == 0 {
			continue
		}
		i := slices.IndexFunc(groups, func(g group) bool { return g.chain.Equal(c) })
		if i < 0 {
			groups = append(groups, group{chain: c})
			i = len(groups) - 1
		}
		groups[i].resources = append(groups[i].resources, r)
	}
	if len(groups) == 0 {
		return nil, fmt.Errorf("render config: no resource has a provider")
	}
	cfg := &apiserverv1.EncryptionConfiguration{}
	for _, g := range groups {
		var providers []apiserverv1.ProviderConfiguration
		for _, e := range g.chain {
			switch e.Kind {
			case KindIdentity:
				providers = append(providers, apiserverv1.ProviderConfiguration{Identity: &apiserverv1.IdentityConfiguration{}})
			case KindKMS:
				k := &apiserverv1.KMSConfiguration{APIVersion: e.KMS.APIVersion, Name: e.KMS.Name, Endpoint: e.KMS.Endpoint, CacheSize: e.KMS.CacheSize}
				if e.KMS.Timeout > 0 {
					k.Timeout = &metav1.Duration{Duration: e.KMS.Timeout}
				}
				providers = append(providers, apiserverv1.ProviderConfiguration{KMS: k})
			default:
				key, err := keys(e.KeyName)
				if err != nil {
					return nil, fmt.Errorf("render config: key %s: %w", e.KeyName, err)
				}
				if string(key.Provider) != e.Kind {
					return nil, fmt.Errorf("render config: key %s is a %s key, the config needs %s", e.KeyName, key.Provider, e.Kind)
				}
				if e.Fingerprint != "" && key.Fingerprint() != e.Fingerprint {
					// The plan was made for other material under this name:
					// rendering this one would make every value written with
					// the planned key unreadable.
					return nil, fmt.Errorf("render config: key %s: the material found has fingerprint %s, the plan was made for %s; refusing to deploy other material under a known name", e.KeyName, key.Fingerprint(), e.Fingerprint)
				}
				entry := apiserverv1.Key{Name: key.Name, Secret: base64.StdEncoding.EncodeToString(key.Secret)}
				if n := len(providers); n > 0 {
					if list := keyList(&providers[n-1], key.Provider); list != nil {
						*list = append(*list, entry)
						continue
					}
				}
				providers = append(providers, newKeyProvider(key.Provider, entry))
			}
		}
		cfg.Resources = append(cfg.Resources, apiserverv1.ResourceConfiguration{Resources: g.resources, Providers: providers})
	}
	return marshalV1(cfg)
}
