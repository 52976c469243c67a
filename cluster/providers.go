package cluster

import (
	"slices"

	"k8s.io/apiserver/pkg/apis/apiserver"
	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
)

// keyedKind is what one provider kind that holds its keys in the provider
// file is to atrest: the sizes kube-apiserver takes, and where its key list
// sits in a provider entry of either API version. Every switch on such a
// kind reads this table, so a new kind is one row plus its own code.
type keyedKind struct {
	provider Provider
	keySizes []int
	// internal and v1 return the kind's key list in p, false or nil when
	// p is another kind's entry.
	internal func(p *apiserver.ProviderConfiguration) ([]apiserver.Key, bool)
	v1       func(p *apiserverv1.ProviderConfiguration) *[]apiserverv1.Key
	// newV1 is an entry of the kind holding keys.
	newV1 func(keys []apiserverv1.Key) apiserverv1.ProviderConfiguration
}

// keyedKinds are the kinds atrest manages, in the order atrest.yaml lists
// them.
var keyedKinds = []keyedKind{
	{
		provider: AESCBC, keySizes: []int{16, 24, 32},
		internal: func(p *apiserver.ProviderConfiguration) ([]apiserver.Key, bool) {
			if p.AESCBC == nil {
				return nil, false
			}
			return p.AESCBC.Keys, true
		},
		v1: func(p *apiserverv1.ProviderConfiguration) *[]apiserverv1.Key {
			if p.AESCBC == nil {
				return nil
			}
			return &p.AESCBC.Keys
		},
		newV1: func(keys []apiserverv1.Key) apiserverv1.ProviderConfiguration {
			return apiserverv1.ProviderConfiguration{AESCBC: &apiserverv1.AESConfiguration{Keys: keys}}
		},
	},
	{
		provider: AESGCM, keySizes: []int{16, 24, 32},
		internal: func(p *apiserver.ProviderConfiguration) ([]apiserver.Key, bool) {
			if p.AESGCM == nil {
				return nil, false
			}
			return p.AESGCM.Keys, true
		},
		v1: func(p *apiserverv1.ProviderConfiguration) *[]apiserverv1.Key {
			if p.AESGCM == nil {
				return nil
			}
			return &p.AESGCM.Keys
		},
		newV1: func(keys []apiserverv1.Key) apiserverv1.ProviderConfiguration {
			return apiserverv1.ProviderConfiguration{AESGCM: &apiserverv1.AESConfiguration{Keys: keys}}
		},
	},
	{
		provider: Secretbox, keySizes: []int{32},
		internal: func(p *apiserver.ProviderConfiguration) ([]apiserver.Key, bool) {
			if p.Secretbox == nil {
				return nil, false
			}
			return p.Secretbox.Keys, true
		},
		v1: func(p *apiserverv1.ProviderConfiguration) *[]apiserverv1.Key {
			if p.Secretbox == nil {
				return nil
			}
			return &p.Secretbox.Keys
		},
		newV1: func(keys []apiserverv1.Key) apiserverv1.ProviderConfiguration {
			return apiserverv1.ProviderConfiguration{Secretbox: &apiserverv1.SecretboxConfiguration{Keys: keys}}
		},
	},
}

// KeyedProviders are the managed providers whose keys atrest generates
// and keeps in Vault's KV store, and deploys in the provider file.
var KeyedProviders = func() []Provider {
	var out []Provider
	for _, k := range keyedKinds {
		out = append(out, k.provider)
	}
	return out
}()

// ManagedProviders are the providers atrest.yaml may choose: the keyed
// ones, and VaultTransit, whose key never leaves Vault (KMS v2 through
// atrest's plugin).
var ManagedProviders = append(slices.Clone(KeyedProviders), VaultTransit)

// IsManagedProvider says whether atrest.yaml may choose p.
func IsManagedProvider(p Provider) bool { return slices.Contains(ManagedProviders, p) }

func kindOf(p Provider) (keyedKind, bool) {
	i := slices.IndexFunc(keyedKinds, func(k keyedKind) bool { return k.provider == p })
	if i < 0 {
		return keyedKind{}, false
	}
	return keyedKinds[i], true
}

// IsKeyed says whether p is a managed provider whose keys atrest holds
// and deploys in the provider file.
func IsKeyed(p Provider) bool {
	_, ok := kindOf(p)
	return ok
}

// KeySizes are the key sizes, in bytes, kube-apiserver takes for provider
// p; nil for a provider atrest does not manage.
func KeySizes(p Provider) []int {
	k, _ := kindOf(p)
	return slices.Clone(k.keySizes)
}

// providerKeys returns the keyed kind of p and its keys ("" and nil for
// identity, kms, or an empty entry).
func providerKeys(p apiserver.ProviderConfiguration) (Provider, []apiserver.Key) {
	for _, k := range keyedKinds {
		if keys, ok := k.internal(&p); ok {
			return k.provider, keys
		}
	}
	return "", nil
}

// V1ProviderKeys returns the keyed kind of a v1 provider entry and its
// keys ("" and nil for identity, kms, or an empty entry).
func V1ProviderKeys(p apiserverv1.ProviderConfiguration) (Provider, []apiserverv1.Key) {
	for _, k := range keyedKinds {
		if keys := k.v1(&p); keys != nil {
			return k.provider, *keys
		}
	}
	return "", nil
}

// newKeyProvider is a v1 entry of provider p holding entry.
func newKeyProvider(p Provider, entry apiserverv1.Key) apiserverv1.ProviderConfiguration {
	k, ok := kindOf(p)
	if !ok {
		return apiserverv1.ProviderConfiguration{}
	}
	return k.newV1([]apiserverv1.Key{entry})
}

// keyList returns p's key list when p is an entry of provider prov.
func keyList(p *apiserverv1.ProviderConfiguration, prov Provider) *[]apiserverv1.Key {
	if k, ok := kindOf(prov); ok {
		return k.v1(p)
	}
	return nil
}
