package keystore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/atrest-io/atrest/cluster"
)

// Role is what a key is for in the deployed config.
type Role string

// The roles of a key in the keyring.
const (
	// RolePrimary: the key kube-apiserver writes with. At most one.
	RolePrimary Role = "primary"
	// RoleReader: in the config to read values written with it.
	RoleReader Role = "reader"
	// RoleRetired: no longer in the config; kept until nothing needs it.
	RoleRetired Role = "retired"
)

// KeyInfo describes one key in the keyring, without its material.
type KeyInfo struct {
	Name        string           `json:"name"`
	Provider    cluster.Provider `json:"provider"`
	Created     time.Time        `json:"created"`
	Role        Role             `json:"role"`
	Fingerprint string           `json:"fingerprint"` // cluster.Key.Fingerprint of the material
	// Outside names the node whose provider file held this key when Vault
	// did not: a writer other than atrest (a plain `rke up`, a hand edit)
	// put it there. "" for keys atrest made or was given.
	Outside string `json:"outside,omitempty"`
}

// InfoOf describes k with role r, created now.
func InfoOf(k cluster.Key, r Role) KeyInfo {
	return KeyInfo{Name: k.Name, Provider: k.Provider, Created: time.Now().UTC().Truncate(time.Second), Role: r, Fingerprint: k.Fingerprint()}
}

// StepState is where a journal step is.
type StepState string

// The states of a journal step.
const (
	StepPending StepState = "pending"
	StepRunning StepState = "running"
	StepDone    StepState = "done"
	StepFailed  StepState = "failed"
)

// Journal is the transition in flight: written before each step runs and
// after it ends, so that a restarted reconciler resumes where it stopped.
type Journal struct {
	ID         string `json:"id"`
	Transition string `json:"transition"` // enable, disable, rotate, custom, ...
	Revision   string `json:"revision"`   // the Git revision it carries out
	Snapshot   string `json:"snapshot"`   // the verified snapshot taken before it
	// SnapshotTaken is when Snapshot was taken.
	SnapshotTaken time.Time `json:"snapshotTaken,omitzero"`
	// Desired identifies the desired state the transition carries out
	// (reconciler.DesiredID): when it changes, so does the transition.
	Desired string        `json:"desired,omitempty"`
	Started time.Time     `json:"started"`
	Steps   []JournalStep `json:"steps"`
	// Checkpoint is how far the rewrite in flight got, so that it resumes
	// there rather than from the first object.
	Checkpoint *RewriteCheckpoint `json:"checkpoint,omitempty"`
}

// RewriteCheckpoint is where an interrupted rewrite resumes: the
// resources of Step before Resource are done, and Resource's objects up
// to the list continue token Continue.
type RewriteCheckpoint struct {
	Step     string    `json:"step"` // the rewrite step, as the journal details it
	Resource string    `json:"resource"`
	Continue string    `json:"continue,omitempty"` // "" for its first object
	At       time.Time `json:"at"`
}

// JournalStep is one step of a transition.
type JournalStep struct {
	Name     string    `json:"name"`
	Detail   string    `json:"detail,omitempty"`
	State    StepState `json:"state"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	Error    string    `json:"error,omitempty"` // capped: CapText
	// Attempts counts the runs of a step that failed and was run again.
	Attempts int `json:"attempts,omitempty"`
}

// NewJournal starts a journal with a fresh random ID and the given steps,
// all pending.
func NewJournal(transition, revision, snapshot string, steps ...string) *Journal {
	var b [8]byte
	_, _ = rand.Read(b[:])
	j := &Journal{ID: hex.EncodeToString(b[:]), Transition: transition, Revision: revision, Snapshot: snapshot, Started: time.Now().UTC()}
	for _, s := range steps {
		j.Steps = append(j.Steps, JournalStep{Name: s, State: StepPending})
	}
	return j
}

// Keyring is a cluster's keys and the state of its encryption config. It
// holds no key material.
type Keyring struct {
	// Version is the KV version this keyring was read at (0: none yet).
	// UpdateKeyring writes only if it is still the current version.
	Version int `json:"-"`

	Keys []KeyInfo `json:"keys"`
	// DesiredHash and DeployedHash identify rendered configs (ConfigHash):
	// what Git asks for, and what the nodes were last brought to.
	DesiredHash  string `json:"desiredHash,omitempty"`
	DeployedHash string `json:"deployedHash,omitempty"`
	// LastRotation and LastRotationRevision let cron catch up on a missed
	// rotation and let rotate_encryption_key act once per commit.
	LastRotation         time.Time `json:"lastRotation,omitzero"`
	LastRotationRevision string    `json:"lastRotationRevision,omitempty"`
	// RotationRequests are the last requests served (commit:<rev>,
	// cli:<time>, schedule:<time>), oldest first, at most
	// MaxRotationRequests: one kind of request must not make another,
	// served earlier, look new again.
	RotationRequests []string `json:"rotationRequests,omitempty"`
	// Journal is the transition in flight, nil when none.
	Journal *Journal `json:"journal,omitempty"`
	// Failure counts the last step's consecutive failures; nil after a
	// step succeeds.
	Failure *Failure `json:"failure,omitempty"`
	// Stall, when set, stops every change until the desired state changes
	// or `atrest resume`.
	Stall *Stall `json:"stall,omitempty"`
	// Transit is the vault-transit provider's Transit key, once atrest
	// created it (or found it), and its plugins' credentials.
	Transit *TransitRecord `json:"transit,omitempty"`
}

// TransitRecord is what atrest keeps of the vault-transit provider: the
// key's place (its material never leaves Vault), the rotation in flight,
// and the secret ids issued to each node's plugin.
type TransitRecord struct {
	Mount   string    `json:"mount"`
	Key     string    `json:"key"`
	Created time.Time `json:"created"`
	// Rotating is a rotation started from version From to serve Request:
	// written before Vault is asked, so a crash between the two neither
	// rotates twice nor forgets the request.
	Rotating *TransitRotation `json:"rotating,omitempty"`
	// Credentials lists, per node, the accessors of the secret ids issued
	// to its plugin and not yet revoked, the one in use last.
	Credentials map[string][]string `json:"credentials,omitempty"`
}

// TransitRotation is a rotation of the Transit key in flight.
type TransitRotation struct {
	Request string    `json:"request,omitempty"`
	From    int       `json:"from"`
	Started time.Time `json:"started"`
}

// MaxRotationRequests bounds Keyring.RotationRequests.
const MaxRotationRequests = 32

// RotationServed reports whether the rotation request req was served.
func (kr *Keyring) RotationServed(req string) bool {
	return req != "" && (kr.LastRotationRevision == req || slices.Contains(kr.RotationRequests, req))
}

// RecordRotation records a rotation at t serving req ("" for none).
func (kr *Keyring) RecordRotation(t time.Time, req string) {
	kr.LastRotation = t
	if req == "" {
		return
	}
	kr.LastRotationRevision = req
	kr.RotationRequests = append(kr.RotationRequests, req)
	if n := len(kr.RotationRequests); n > MaxRotationRequests {
		kr.RotationRequests = slices.Clone(kr.RotationRequests[n-MaxRotationRequests:])
	}
}

// Primary returns the key kube-apiserver writes with, if there is one.
func (kr *Keyring) Primary() (KeyInfo, bool) {
	for _, k := range kr.Keys {
		if k.Role == RolePrimary {
			return k, true
		}
	}
	return KeyInfo{}, false
}

// Find returns the keyring's entry for the named key.
func (kr *Keyring) Find(name string) (KeyInfo, bool) {
	i := slices.IndexFunc(kr.Keys, func(k KeyInfo) bool { return k.Name == name })
	if i < 0 {
		return KeyInfo{}, false
	}
	return kr.Keys[i], true
}

// Names returns the names of every key in the keyring.
func (kr *Keyring) Names() []string {
	out := make([]string, len(kr.Keys))
	for i, k := range kr.Keys {
		out[i] = k.Name
	}
	return out
}

// ConfigHash identifies a rendered EncryptionConfiguration for DesiredHash
// and DeployedHash: "sha256:" and the hex digest. The digest reveals nothing
// about the 256-bit keys in the config.
func ConfigHash(rendered []byte) string {
	sum := sha256.Sum256(rendered)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// keyringSchema is the layout version of the keyring document; a newer one
// is refused rather than misread and overwritten.
const keyringSchema = 1

type keyringDoc struct {
	Schema int `json:"schema"`
	*Keyring
}

const keyringRel = "keyring"

// Keyring reads the cluster's keyring: an empty one (Version 0) when none
// has been written yet.
func (s *Store) Keyring(ctx context.Context) (*Keyring, error) {
	const op = "read keyring"
	e, err := s.kvRead(ctx, op, keyringRel, 0)
	if err != nil {
		return nil, err
	}
	kr := &Keyring{}
	if e.version == 0 {
		return kr, nil
	}
	doc := keyringDoc{Keyring: kr}
	if err := s.decode(op, keyringRel, e, &doc); err != nil {
		return nil, err
	}
	if doc.Schema > keyringSchema {
		return nil, &OpError{Op: op, Path: s.path("data", keyringRel), Err: fmt.Errorf("%w: written by a newer atrest (schema %d, this one reads %d): upgrade atrest", ErrInvalid, doc.Schema, keyringSchema)}
	}
	kr.Version = e.version
	return kr, nil
}

// UpdateKeyring writes kr if the keyring is still at kr.Version, and sets
// kr.Version to the new version. If another writer got there first it
// writes nothing and returns an error wrapping ErrConflict: read the
// keyring again and redo the change. Every primary and reader key must
// already be in the store with the fingerprint the keyring gives it (key
// first, then the keyring that uses it).
func (s *Store) UpdateKeyring(ctx context.Context, kr *Keyring) error {
	const op = "write keyring"
	p := s.path("data", keyringRel)
	if err := validateKeyring(kr); err != nil {
		return &OpError{Op: op, Path: p, Err: err}
	}
	for _, k := range kr.Keys {
		if k.Role == RoleRetired {
			continue
		}
		stored, err := s.Key(ctx, k.Name)
		if errors.Is(err, ErrNotFound) {
			return &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: key %s (%s) is not in Vault: store it with PutKey or NewKey before the keyring names it", ErrInvalid, k.Name, k.Role)}
		}
		if err != nil {
			return err
		}
		if stored.Fingerprint() != k.Fingerprint || stored.Provider != k.Provider {
			return &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: key %s is %s %s in Vault, but the keyring says %s %s", ErrInvalid, k.Name, stored.Provider, stored.Fingerprint(), k.Provider, k.Fingerprint)}
		}
	}
	v, err := s.kvPut(ctx, op, keyringRel, kr.Version, keyringMaxVersions, keyringDoc{Schema: keyringSchema, Keyring: kr})
	if err != nil {
		return err
	}
	s.log.Info("keyring updated", "version", v, "keys", keyringSummary(kr))
	kr.Version = v
	return nil
}

// validateKeyring checks what a keyring may hold.
func validateKeyring(kr *Keyring) error {
	if kr == nil {
		return fmt.Errorf("%w: no keyring", ErrInvalid)
	}
	var problems []string
	seen := map[string]bool{}
	primaries := 0
	for i, k := range kr.Keys {
		where := fmt.Sprintf("keys[%d]", i)
		if err := checkKeyName(k.Name); err != nil {
			problems = append(problems, where+".name: "+err.Error())
		} else if seen[k.Name] {
			problems = append(problems, fmt.Sprintf("%s.name: %s is listed twice", where, k.Name))
		}
		seen[k.Name] = true
		if !cluster.IsKeyed(k.Provider) {
			problems = append(problems, fmt.Sprintf("%s.provider: %q is not one of %v", where, k.Provider, cluster.KeyedProviders))
		}
		switch k.Role {
		case RolePrimary:
			primaries++
		case RoleReader, RoleRetired:
		default:
			problems = append(problems, fmt.Sprintf("%s.role: %q is not primary, reader or retired", where, k.Role))
		}
		if k.Fingerprint == "" {
			problems = append(problems, where+".fingerprint: required (InfoOf fills it in)")
		}
	}
	if primaries > 1 {
		problems = append(problems, fmt.Sprintf("keys: %d keys are primary; at most one writes", primaries))
	}
	if j := kr.Journal; j != nil {
		if j.ID == "" || j.Transition == "" {
			problems = append(problems, "journal: id and transition are required (NewJournal fills them in)")
		}
		for i, st := range j.Steps {
			if st.Name == "" {
				problems = append(problems, fmt.Sprintf("journal.steps[%d].name: required", i))
			}
			switch st.State {
			case StepPending, StepRunning, StepDone, StepFailed:
			default:
				problems = append(problems, fmt.Sprintf("journal.steps[%d].state: %q is not pending, running, done or failed", i, st.State))
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w keyring: %s", ErrInvalid, strings.Join(problems, "; "))
	}
	return nil
}

// checkKeyName accepts the names kube-apiserver accepts that also work as a
// Vault path segment.
func checkKeyName(name string) error {
	switch {
	case name == "":
		return errors.New("required")
	case len(name) > 128:
		return fmt.Errorf("%q is longer than 128 characters", name)
	case !segmentRE.MatchString(name):
		return fmt.Errorf("%q must be letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

func keyringSummary(kr *Keyring) string {
	parts := make([]string, len(kr.Keys))
	for i, k := range kr.Keys {
		parts[i] = k.Name + "=" + string(k.Role)
	}
	return strings.Join(parts, ",")
}
