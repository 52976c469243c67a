package cluster

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"

	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
)

// Provider is a kube-apiserver encryption provider that holds its keys in
// the config file: the ones atrest can manage.
type Provider string

// The providers a managed config can use.
const (
	AESCBC    Provider = "aescbc"
	AESGCM    Provider = "aesgcm"
	Secretbox Provider = "secretbox"
)

// DefaultProvider is RKE's managed provider.
const DefaultProvider = AESCBC

// ManagedProviders are the providers atrest.yaml may choose.
var ManagedProviders = []Provider{AESCBC, AESGCM, Secretbox}

// KeySize is the size of every key atrest generates: AES-256, and the only
// size secretbox takes. RKE derives a 32-character hex string and so gets
// 128 bits of entropy; these keys have 256.
const KeySize = 32

// Secret is key material. It prints, logs and marshals as [REDACTED]; only
// Bytes and the config renderers see the value.
type Secret []byte

func (Secret) String() string   { return redacted }
func (Secret) GoString() string { return redacted }

// MarshalText keeps key material out of JSON, YAML and structured logs.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// LogValue keeps key material out of slog output.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// Bytes returns the key material itself.
func (s Secret) Bytes() []byte { return s }

// Key is one named encryption key.
type Key struct {
	Name     string
	Provider Provider
	Secret   Secret
}

// Prefix is the storage prefix kube-apiserver writes values encrypted with
// k under, without the leading "k8s:enc:" ("aescbc:v1:k-abcde").
func (k Key) Prefix() string { return string(k.Provider) + ":v1:" + k.Name }

// Fingerprint identifies the key material without revealing it: the first
// 16 bytes of a domain-separated SHA-256, in hex. Manifests and status use
// it to tell keys apart.
func (k Key) Fingerprint() string { return Fingerprint(k.Secret) }

// Fingerprint hashes key material for display; see Key.Fingerprint.
func Fingerprint(secret []byte) string {
	h := sha256.New()
	h.Write([]byte("atrest key fingerprint v1\x00"))
	h.Write(secret)
	return "sha256:" + hex.EncodeToString(h.Sum(nil)[:16])
}

// LogValue logs a key by name, provider and fingerprint only.
func (k Key) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("name", k.Name),
		slog.String("provider", string(k.Provider)),
		slog.String("fingerprint", k.Fingerprint()),
	)
}

const keyNameChars = "abcdefghijklmnopqrstuvwxyz0123456789"

// NewKeyName returns an RKE-style key name, "k-" and five random lowercase
// alphanumerics, that is not in taken.
func NewKeyName(taken []string) (string, error) {
	for range 100 {
		var b [5]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("generate key name: %w", err)
		}
		name := []byte("k-")
		for _, x := range b {
			// 36 does not divide 256, but the bias (at most 1/256 per
			// character) costs nothing here: names need only be unique.
			name = append(name, keyNameChars[int(x)%len(keyNameChars)])
		}
		if !slices.Contains(taken, string(name)) {
			return string(name), nil
		}
	}
	return "", fmt.Errorf("generate key name: no free name after 100 tries among %d taken", len(taken))
}

// NewKey generates a key for provider p: KeySize bytes from crypto/rand and a
// fresh RKE-style name not in taken.
func NewKey(p Provider, taken []string) (Key, error) {
	if !slices.Contains(ManagedProviders, p) {
		return Key{}, fmt.Errorf("generate key: provider %q cannot be managed: use one of %v", p, ManagedProviders)
	}
	name, err := NewKeyName(taken)
	if err != nil {
		return Key{}, err
	}
	secret := make([]byte, KeySize)
	if _, err := rand.Read(secret); err != nil {
		return Key{}, fmt.Errorf("generate key: %w", err)
	}
	return Key{Name: name, Provider: p, Secret: secret}, nil
}

// ManagedResources are the resources a managed config encrypts, as RKE does.
var ManagedResources = []string{"secrets"}

// ManagedConfig is one phase of a managed config: the keys in order, and
// where identity stands. With IdentityFirst, identity writes and every key
// only reads (enable's first phase, disable); otherwise Keys[0] writes, the
// other keys read, and identity reads last so plain values stay readable.
// Readers come before writers across the phases the reconciler walks:
//
//	enable:  {IdentityFirst, [K]} -> {[K]}
//	rotate:  {[old, new]} -> {[new, old]} -> {[new]}
//	disable: {IdentityFirst, [K]} -> no file
type ManagedConfig struct {
	IdentityFirst bool
	Keys          []Key
}

// Render returns the EncryptionConfiguration file for the phase: consecutive
// keys of one provider share one provider entry, in order. The same phase
// always renders to the same bytes. The bytes hold key material.
func (m ManagedConfig) Render() ([]byte, error) {
	if len(m.Keys) == 0 {
		return nil, fmt.Errorf("render managed config: no keys")
	}
	seen := map[string]bool{}
	var providers []apiserverv1.ProviderConfiguration
	for _, k := range m.Keys {
		if !slices.Contains(ManagedProviders, k.Provider) {
			return nil, fmt.Errorf("render managed config: key %s: provider %q cannot be managed", k.Name, k.Provider)
		}
		if seen[k.Prefix()] {
			return nil, fmt.Errorf("render managed config: key %s (%s) given twice", k.Name, k.Provider)
		}
		seen[k.Prefix()] = true
		entry := apiserverv1.Key{Name: k.Name, Secret: base64.StdEncoding.EncodeToString(k.Secret)}
		if n := len(providers); n > 0 {
			if list := keyList(&providers[n-1], k.Provider); list != nil {
				*list = append(*list, entry)
				continue
			}
		}
		var p apiserverv1.ProviderConfiguration
		switch k.Provider {
		case AESCBC:
			p.AESCBC = &apiserverv1.AESConfiguration{Keys: []apiserverv1.Key{entry}}
		case AESGCM:
			p.AESGCM = &apiserverv1.AESConfiguration{Keys: []apiserverv1.Key{entry}}
		case Secretbox:
			p.Secretbox = &apiserverv1.SecretboxConfiguration{Keys: []apiserverv1.Key{entry}}
		}
		providers = append(providers, p)
	}
	identity := apiserverv1.ProviderConfiguration{Identity: &apiserverv1.IdentityConfiguration{}}
	if m.IdentityFirst {
		providers = append([]apiserverv1.ProviderConfiguration{identity}, providers...)
	} else {
		providers = append(providers, identity)
	}
	cfg := &apiserverv1.EncryptionConfiguration{
		Resources: []apiserverv1.ResourceConfiguration{{
			Resources: slices.Clone(ManagedResources),
			Providers: providers,
		}},
	}
	return marshalV1(cfg)
}

// keyList returns p's key list when p is an entry of provider prov.
func keyList(p *apiserverv1.ProviderConfiguration, prov Provider) *[]apiserverv1.Key {
	switch {
	case prov == AESCBC && p.AESCBC != nil:
		return &p.AESCBC.Keys
	case prov == AESGCM && p.AESGCM != nil:
		return &p.AESGCM.Keys
	case prov == Secretbox && p.Secretbox != nil:
		return &p.Secretbox.Keys
	}
	return nil
}
