package cluster

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
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
	if !IsKeyed(p) {
		return Key{}, fmt.Errorf("generate key: provider %q cannot be managed: use one of %v", p, KeyedProviders)
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

// Chains returns the phase's chain for the managed resources.
func (m ManagedConfig) Chains() Chains {
	var chain Chain
	for _, k := range m.Keys {
		chain = append(chain, EntryOf(k))
	}
	if m.IdentityFirst {
		chain = append(Chain{Identity}, chain...)
	} else {
		chain = append(chain, Identity)
	}
	cs := Chains{}
	for _, r := range ManagedResources {
		cs[r] = chain
	}
	return cs
}

// Render returns the EncryptionConfiguration file for the phase: consecutive
// keys of one provider share one provider entry, in order. The same phase
// always renders to the same bytes. The bytes hold key material.
func (m ManagedConfig) Render() ([]byte, error) {
	if len(m.Keys) == 0 {
		return nil, fmt.Errorf("render managed config: no keys")
	}
	byName := map[string]Key{}
	for _, k := range m.Keys {
		if !IsKeyed(k.Provider) {
			return nil, fmt.Errorf("render managed config: key %s: provider %q cannot be managed", k.Name, k.Provider)
		}
		if _, dup := byName[k.Name]; dup {
			return nil, fmt.Errorf("render managed config: key %s given twice", k.Name)
		}
		byName[k.Name] = k
	}
	return RenderChains(m.Chains(), func(name string) (Key, error) { return byName[name], nil })
}
