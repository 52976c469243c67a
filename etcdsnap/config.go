package etcdsnap

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/atrest-io/atrest/cluster"
)

// ResourceList is one resource list of the encryption config a snapshot
// was taken under: the resources and the providers that read them, in
// order (the first wrote). It holds no key material.
type ResourceList struct {
	Resources []string      `json:"resources"`
	Providers []ProviderRef `json:"providers"`
}

// ProviderRef is one provider of a resource list: a key by name and
// fingerprint, a KMS plugin by its settings, or identity.
type ProviderRef struct {
	// Kind is aescbc, aesgcm, secretbox, kms or identity.
	Kind        string  `json:"kind"`
	Name        string  `json:"name,omitempty"`        // the key's, or the KMS provider's
	Fingerprint string  `json:"fingerprint,omitempty"` // a key's: cluster.Key.Fingerprint
	KMS         *KMSRef `json:"kms,omitempty"`
}

// KMSRef is what a restore config needs of a KMS provider: the plugin
// itself, and the key it holds, must still be there.
type KMSRef struct {
	APIVersion string `json:"apiVersion"`
	Endpoint   string `json:"endpoint"`
	Timeout    string `json:"timeout,omitempty"` // a Go duration
	CacheSize  *int32 `json:"cacheSize,omitempty"`
}

// Unreadable counts objects of a resource stored under a prefix that no
// provider of the manifest's config reads: a key no keystore holds, an
// unknown KMS plugin. A restore config cannot read them.
type Unreadable struct {
	Resource string `json:"resource"`
	Prefix   string `json:"prefix"`
	Count    int64  `json:"count"`
}

// refOfEntry is the manifest's reference to a chain entry.
func refOfEntry(e cluster.ProviderEntry) ProviderRef {
	switch e.Kind {
	case cluster.KindIdentity:
		return ProviderRef{Kind: cluster.KindIdentity}
	case cluster.KindKMS:
		k := &KMSRef{APIVersion: e.KMS.APIVersion, Endpoint: e.KMS.Endpoint, CacheSize: e.KMS.CacheSize}
		if e.KMS.Timeout > 0 {
			k.Timeout = e.KMS.Timeout.String()
		}
		return ProviderRef{Kind: cluster.KindKMS, Name: e.KMS.Name, KMS: k}
	}
	return ProviderRef{Kind: e.Kind, Name: e.KeyName, Fingerprint: e.Fingerprint}
}

// Keyed reports whether the provider is a key whose material atrest's
// keystore holds.
func (p ProviderRef) Keyed() bool { return p.Kind != cluster.KindIdentity && p.Kind != cluster.KindKMS }

// Prefix is the storage prefix the provider writes under.
func (p ProviderRef) Prefix() string { return p.entry().Prefix() }

func (p ProviderRef) String() string {
	switch {
	case p.Kind == cluster.KindKMS:
		return fmt.Sprintf("KMS %s provider %s at %s", p.KMS.APIVersion, p.Name, p.KMS.Endpoint)
	case p.Keyed():
		return fmt.Sprintf("%s (%s, %s)", p.Name, p.Kind, p.Fingerprint)
	}
	return p.Kind
}

// entry is the chain entry p records (a timeout that does not parse is
// left out: checkConfig refuses it).
func (p ProviderRef) entry() cluster.ProviderEntry {
	switch p.Kind {
	case cluster.KindIdentity:
		return cluster.Identity
	case cluster.KindKMS:
		k := &cluster.KMS{Name: p.Name}
		if p.KMS != nil {
			k.APIVersion, k.Endpoint, k.CacheSize = p.KMS.APIVersion, p.KMS.Endpoint, p.KMS.CacheSize
			k.Timeout, _ = time.ParseDuration(p.KMS.Timeout)
		}
		return cluster.ProviderEntry{Kind: cluster.KindKMS, KMS: k}
	}
	return cluster.KeyEntry(cluster.Provider(p.Kind), p.Name, p.Fingerprint)
}

func (p ProviderRef) equal(o ProviderRef) bool { return p.entry().Equal(o.entry()) }

// Resolver finds the keyed provider that writes under a storage prefix
// among the keys the keystore holds ("aescbc:v1:k-abcde"), for objects the
// census finds under a key no node runs.
type Resolver func(prefix string) (cluster.ProviderEntry, bool)

// BuildConfig is the config a snapshot records: for every resource, the
// providers of every node's running config (the first node's order, then
// what the others add: mid-transition they differ), then a provider for
// every prefix the census finds objects under that those do not read
// (resolved among the keystore's keys; after an etcd restore a key may be
// in the census and in no config), then identity, which reads plain
// objects. Resources with equal providers share a list, as they do in a
// config kube-apiserver accepts (a resource is in one list). Objects under
// a prefix that nothing resolves are returned as unreadable.
func BuildConfig(nodes []cluster.Chains, census Census, resolve Resolver) ([]ResourceList, []Unreadable) {
	chains := map[string][]ProviderRef{}
	add := func(res string, p ProviderRef) {
		if !slices.ContainsFunc(chains[res], p.equal) {
			chains[res] = append(chains[res], p)
		}
	}
	for _, n := range nodes {
		for res, c := range n {
			for _, e := range c {
				add(res, refOfEntry(e))
			}
		}
	}
	var unreadable []Unreadable
	for _, res := range sortedResources(census) {
		prefixes := make([]string, 0, len(census[res]))
		for p, n := range census[res] {
			if n > 0 {
				prefixes = append(prefixes, p)
			}
		}
		slices.Sort(prefixes)
		for _, prefix := range prefixes {
			if slices.ContainsFunc(chains[res], func(p ProviderRef) bool { return p.Prefix() == prefix }) {
				continue
			}
			if prefix == cluster.PrefixIdentity {
				continue // identity is added to every list below
			}
			if e, ok := resolve(prefix); ok && e.Keyed() {
				add(res, refOfEntry(e))
				continue
			}
			unreadable = append(unreadable, Unreadable{Resource: res, Prefix: prefix, Count: census[res][prefix]})
		}
	}
	for res := range chains {
		add(res, ProviderRef{Kind: cluster.KindIdentity})
	}
	var lists []ResourceList
	for _, res := range sortedResources(chains) {
		i := slices.IndexFunc(lists, func(l ResourceList) bool {
			return slices.EqualFunc(l.Providers, chains[res], ProviderRef.equal)
		})
		if i < 0 {
			lists = append(lists, ResourceList{Providers: chains[res]})
			i = len(lists) - 1
		}
		lists[i].Resources = append(lists[i].Resources, res)
	}
	return lists, unreadable
}

// sortedResources is the map's resources, secrets first, then by name:
// the order a restore config lists them in.
func sortedResources[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for r := range m {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b string) int {
		if (a == "secrets") != (b == "secrets") {
			if a == "secrets" {
				return -1
			}
			return 1
		}
		return cmp.Compare(a, b)
	})
	return out
}

// ConfigKeys is the keyed providers of lists, each once, in order of first
// appearance: the keys a snapshot needs from the keystore.
func ConfigKeys(lists []ResourceList) []KeyRef {
	var out []KeyRef
	for _, l := range lists {
		for _, p := range l.Providers {
			if p.Keyed() && !slices.ContainsFunc(out, func(k KeyRef) bool { return k.Name == p.Name && k.Provider == p.Kind }) {
				out = append(out, KeyRef{Name: p.Name, Provider: p.Kind, Fingerprint: p.Fingerprint})
			}
		}
	}
	return out
}

// ConfigResources is every resource of lists, in order.
func ConfigResources(lists []ResourceList) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l.Resources...)
	}
	return out
}

// checkConfig checks a manifest's config: every resource in one list, every
// keyed provider in Keys with the same fingerprint, KMS providers complete.
func (m Manifest) checkConfig() []error {
	var errs []error
	seen := map[string]bool{}
	for i, l := range m.Config {
		if len(l.Resources) == 0 || len(l.Providers) == 0 {
			errs = append(errs, fmt.Errorf("manifest config[%d]: needs resources and providers", i))
		}
		for _, r := range l.Resources {
			if strings.TrimSpace(r) == "" || strings.Contains(r, "*") {
				errs = append(errs, fmt.Errorf("manifest config[%d]: resource %q: a resource name, no wildcard", i, r))
			}
			if seen[r] {
				errs = append(errs, fmt.Errorf("manifest config[%d]: resource %s is in two lists", i, r))
			}
			seen[r] = true
		}
		for j, p := range l.Providers {
			switch {
			case p.Kind == cluster.KindIdentity:
			case p.Kind == cluster.KindKMS:
				if p.Name == "" || p.KMS == nil || p.KMS.Endpoint == "" || p.KMS.APIVersion == "" {
					errs = append(errs, fmt.Errorf("manifest config[%d].providers[%d]: a KMS provider needs name, apiVersion and endpoint", i, j))
				} else if p.KMS.Timeout != "" {
					if _, err := time.ParseDuration(p.KMS.Timeout); err != nil {
						errs = append(errs, fmt.Errorf("manifest config[%d].providers[%d] (%s).kms.timeout: %q is not a duration", i, j, p.Name, p.KMS.Timeout))
					}
				}
			case !cluster.IsKeyed(cluster.Provider(p.Kind)):
				errs = append(errs, fmt.Errorf("manifest config[%d].providers[%d]: kind %q: want aescbc, aesgcm, secretbox, kms or identity", i, j, p.Kind))
			case !slices.ContainsFunc(m.Keys, func(k KeyRef) bool {
				return k.Name == p.Name && k.Provider == p.Kind && k.Fingerprint == p.Fingerprint
			}):
				errs = append(errs, fmt.Errorf("manifest config[%d].providers[%d]: key %s (%s) is not among the manifest's keys with that fingerprint", i, j, p.Name, p.Kind))
			}
		}
	}
	return errs
}
