package etcdsnap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/atrest-io/atrest/cluster"
)

// ManifestFormat is the version of the manifest layout written by Save.
const ManifestFormat = 1

// Manifest describes one snapshot: what it holds, why it was taken, and
// which keys read it. It never holds key material.
type Manifest struct {
	Format int    `json:"format"`
	Name   string `json:"name"`
	// Cluster is the cluster (its keyring) the snapshot belongs to: Prune
	// and restore-config act on a cluster's own snapshots only, so that
	// clusters sharing a directory never prune each other's. "" in
	// manifests written before atrest recorded it.
	Cluster string `json:"cluster,omitempty"`
	// Time is when the snapshot stream was opened (UTC).
	Time time.Time `json:"time"`
	// Reason says why: "before rotate", "scheduled", "manual", ...
	Reason string `json:"reason"`
	// Transition names the transition (its journal entry) this snapshot
	// was taken before, if any; Prune's keep function uses it to keep the
	// snapshot until that transition has finished.
	Transition  string `json:"transition,omitempty"`
	GitRevision string `json:"gitRevision,omitempty"`
	// KeyringVersion is the keystore's keyring version at that moment.
	KeyringVersion int `json:"keyringVersion"`
	// Keys are the keys deployed at that moment, in the order of the
	// deployed config: together they read every object in the snapshot.
	Keys []KeyRef `json:"keys"`
	// Resources are the resources the deployed config covered (default
	// secrets).
	Resources []string `json:"resources"`
	// Config is the encryption config the snapshot was taken under, by
	// resource list, as BuildConfig makes it: the keys of Keys, KMS
	// providers and identity, per resource. A restore config is rendered
	// from it; manifests without it (older atrest) get one list of
	// Resources read by Keys and identity.
	Config []ResourceList `json:"config,omitempty"`
	// Unreadable counts objects under prefixes no provider of Config
	// reads: a restore from this snapshot cannot read them.
	Unreadable []Unreadable `json:"unreadable,omitempty"`
	// EtcdPrefix is the --etcd-prefix the kube-apiservers stored under
	// ("" for the default, /registry): a restored cluster's apiservers need
	// the same.
	EtcdPrefix string `json:"etcdPrefix,omitempty"`
	// Transit names the Transit key of the vault-transit provider and the
	// versions of it the snapshot's objects were wrapped with: each must
	// still decrypt in Vault (min_decryption_version at most the oldest)
	// for as long as the snapshot is kept.
	Transit *TransitRef `json:"transit,omitempty"`

	// Filled in by Save.
	Endpoint     string `json:"endpoint"`     // the member the snapshot came from
	EtcdVersion  string `json:"etcdVersion"`  // that member's server version
	EtcdRevision int64  `json:"etcdRevision"` // its revision just before the snapshot: the snapshot holds at least this
	Size         int64  `json:"size"`         // bytes of <name>.db, etcd's trailing sha256 included
	SHA256       string `json:"sha256"`       // sha256 of <name>.db, hex
}

// TransitRef is a Transit key and the versions of it a snapshot needs.
type TransitRef struct {
	Mount    string `json:"mount"`
	Key      string `json:"key"`
	Versions []int  `json:"versions"`
}

// KeyRef names a key without holding it.
type KeyRef struct {
	Name        string `json:"name"`
	Provider    string `json:"provider"`
	Fingerprint string `json:"fingerprint"` // cluster.Key.Fingerprint
}

// reasonAfter starts the reason of a snapshot saved after a change.
const reasonAfter = "after "

// ReasonAfter is the reason of the snapshot saved once transition
// completes: the newest state, which needs only the keys in force.
func ReasonAfter(transition string) string { return reasonAfter + transition }

// IsAfter says whether m was saved after a change (ReasonAfter).
func (m Manifest) IsAfter() bool { return strings.HasPrefix(m.Reason, reasonAfter) }

// RefOf returns the reference to k that a manifest records.
func RefOf(k cluster.Key) KeyRef {
	return KeyRef{Name: k.Name, Provider: string(k.Provider), Fingerprint: k.Fingerprint()}
}

// KeyNames returns the names of the keys m references, in order.
func (m Manifest) KeyNames() []string {
	names := make([]string, len(m.Keys))
	for i, k := range m.Keys {
		names[i] = k.Name
	}
	return names
}

// resources returns m.Resources, or what a managed config covers.
func (m Manifest) resources() []string {
	if len(m.Resources) == 0 {
		return slices.Clone(cluster.ManagedResources)
	}
	return m.Resources
}

// Object names of a snapshot in a Store.
func dbObject(name string) string       { return name + ".db" }
func manifestObject(name string) string { return name + ".json" }
func drillObject(name string) string    { return name + ".drill" }

var (
	nameRE        = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,126}$`)
	fingerprintRE = regexp.MustCompile(`^sha256:[0-9a-f]{32}$`)
	sha256RE      = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

func checkName(name string) error {
	if !nameRE.MatchString(name) || strings.Contains(name, "..") || strings.HasSuffix(name, partSuffix) {
		return fmt.Errorf("snapshot name %q: use letters, digits, '.', '_' and '-' (at most 127, starting with a letter or digit)", name)
	}
	return nil
}

// NewName returns a snapshot name for time t: "etcd-20260102T150405.000Z".
// Names sort by time.
func NewName(t time.Time) string {
	return "etcd-" + t.UTC().Format("20060102T150405.000Z")
}

// checkRequest checks what the caller of Save fills in.
func (m Manifest) checkRequest() error {
	var errs []error
	if m.Name != "" {
		if err := checkName(m.Name); err != nil {
			errs = append(errs, err)
		}
	}
	if strings.TrimSpace(m.Reason) == "" {
		errs = append(errs, errors.New("manifest reason: required (for example \"before rotate\", \"scheduled\", \"manual\")"))
	}
	if m.KeyringVersion < 0 {
		errs = append(errs, fmt.Errorf("manifest keyringVersion: %d is negative", m.KeyringVersion))
	}
	seen := map[string]bool{}
	for i, k := range m.Keys {
		switch {
		case k.Name == "":
			errs = append(errs, fmt.Errorf("manifest keys[%d].name: required", i))
		case k.Provider == "":
			errs = append(errs, fmt.Errorf("manifest keys[%d] (%s).provider: required", i, k.Name))
		case !fingerprintRE.MatchString(k.Fingerprint):
			// Never echo the value: a caller that put key material here by
			// mistake must not see it in an error.
			errs = append(errs, fmt.Errorf("manifest keys[%d] (%s).fingerprint: must be cluster.Key.Fingerprint() (sha256: and 32 hex digits)", i, k.Name))
		case seen[k.Provider+":"+k.Name]:
			errs = append(errs, fmt.Errorf("manifest keys[%d]: key %s (%s) listed twice", i, k.Name, k.Provider))
		}
		seen[k.Provider+":"+k.Name] = true
	}
	for i, r := range m.Resources {
		if strings.TrimSpace(r) == "" {
			errs = append(errs, fmt.Errorf("manifest resources[%d]: empty", i))
		}
	}
	if m.Cluster != "" && !nameRE.MatchString(m.Cluster) {
		errs = append(errs, fmt.Errorf("manifest cluster %q: letters, digits, '.', '_' and '-'", m.Cluster))
	}
	errs = append(errs, m.checkConfig()...)
	return errors.Join(errs...)
}

// checkStored checks a manifest read back from the store for snapshot name.
func (m Manifest) checkStored(name string) error {
	var errs []error
	if m.Format != ManifestFormat {
		errs = append(errs, fmt.Errorf("format %d: this atrest reads format %d", m.Format, ManifestFormat))
	}
	if m.Name != name {
		errs = append(errs, fmt.Errorf("name %q does not match its file name %q", m.Name, name))
	}
	if m.Time.IsZero() {
		errs = append(errs, errors.New("time: missing"))
	}
	if m.Size <= 0 {
		errs = append(errs, fmt.Errorf("size: %d", m.Size))
	}
	if !sha256RE.MatchString(m.SHA256) {
		errs = append(errs, errors.New("sha256: not 64 lowercase hex digits"))
	}
	if err := m.checkRequest(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (m Manifest) encode() ([]byte, error) {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

// maxManifestSize bounds what ReadManifest reads: a manifest is a few KB.
const maxManifestSize = 1 << 20

// ReadManifest reads and checks the manifest of snapshot name.
func ReadManifest(ctx context.Context, store Store, name string) (Manifest, error) {
	if err := checkName(name); err != nil {
		return Manifest{}, err
	}
	object := manifestObject(name)
	r, err := store.Open(ctx, object)
	if err != nil {
		return Manifest{}, fmt.Errorf("snapshot %s: manifest %s: %w", name, object, err)
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, maxManifestSize+1))
	if err != nil {
		return Manifest{}, fmt.Errorf("snapshot %s: read manifest %s: %w", name, object, err)
	}
	if len(data) > maxManifestSize {
		return Manifest{}, fmt.Errorf("snapshot %s: manifest %s: larger than %d bytes", name, object, maxManifestSize)
	}
	// Unknown fields are allowed: Format says what this atrest can read,
	// and a later atrest may add optional fields within a format.
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return Manifest{}, fmt.Errorf("snapshot %s: manifest %s: %w", name, object, err)
	}
	if err := m.checkStored(name); err != nil {
		return Manifest{}, fmt.Errorf("snapshot %s: manifest %s: %w", name, object, err)
	}
	return m, nil
}

// writeManifest stores m as "<name>.json".
func writeManifest(ctx context.Context, store Store, m Manifest) error {
	data, err := m.encode()
	if err != nil {
		return fmt.Errorf("snapshot %s: encode manifest: %w", m.Name, err)
	}
	up, err := store.Create(ctx, manifestObject(m.Name))
	if err != nil {
		return fmt.Errorf("snapshot %s: manifest: %w", m.Name, err)
	}
	if _, err := up.Write(data); err != nil {
		return errors.Join(fmt.Errorf("snapshot %s: write manifest: %w", m.Name, err), up.Abort())
	}
	if err := up.Commit(); err != nil {
		return fmt.Errorf("snapshot %s: commit manifest: %w", m.Name, err)
	}
	return nil
}
