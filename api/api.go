// Package api is what atrest prints with -o json and -o yaml: one
// document per command, each with a kind and an apiVersion. It is atrest's
// own, documented here and kept stable within an apiVersion, and is not
// what atrest stores in Vault: the storage can change without breaking a
// script that reads these. Names, providers, hashes, fingerprints and
// counts only: never key material.
package api

import "time"

// Version is the apiVersion of every document in this package.
const Version = "atrest.io/v1"

// TypeMeta names a document's kind and version.
type TypeMeta struct {
	Kind       string `json:"kind"`
	APIVersion string `json:"apiVersion"`
}

// Meta is the TypeMeta of kind at this Version.
func Meta(kind string) TypeMeta { return TypeMeta{Kind: kind, APIVersion: Version} }

// Status is `atrest status -o json|yaml`: where the cluster stands.
type Status struct {
	TypeMeta `json:",inline"`
	// Nodes are the controlplane nodes as observed.
	Nodes []Node `json:"nodes"`
	// Census counts stored objects: resource -> storage prefix -> count
	// ("identity", "aescbc:v1:k-abcde", "kms:v2:NAME").
	Census map[string]map[string]int64 `json:"census"`
	// KeyIDs counts the objects a KMS v2 provider stored by the key_id in
	// their envelope: resource -> storage prefix -> key_id -> count.
	KeyIDs map[string]map[string]map[string]int64 `json:"keyIDs,omitempty"`
	// Keys are the keyring's keys, without material.
	Keys []Key `json:"keys"`
	// Transit is the vault-transit provider's Transit key, when atrest
	// runs that provider.
	Transit *Transit `json:"transit,omitempty"`
	// Transition is the transition in flight, nil when none.
	Transition *Transition `json:"transition,omitempty"`
	// LastRotation is when a key was last rotated (zero: never).
	LastRotation time.Time `json:"lastRotation,omitzero"`
	// DeployedHash identifies the config atrest last deployed.
	DeployedHash string `json:"deployedHash,omitempty"`
	// Plan is the steps a reconcile would take now, empty when in sync.
	Plan []string `json:"plan"`
	// Drift describes nodes that do not run what atrest deployed.
	Drift []string `json:"drift,omitempty"`
	// PlanError says why no plan could be made; PlanReason is its stable
	// reason when the planner refused (KeyMaterialConflict, ...).
	PlanError  string `json:"planError,omitempty"`
	PlanReason string `json:"planReason,omitempty"`
	// Stall stops every change until a person acts, nil when none.
	Stall *Stall `json:"stall,omitempty"`
	// Failure counts the last step's consecutive failures.
	Failure *Failure `json:"failure,omitempty"`
	// RotationPending: the desired state's rotation request is not served.
	RotationPending bool `json:"rotationPending,omitempty"`
	// Snapshots are the cluster's kept snapshots, newest first, with what
	// their last decryption drill proved.
	Snapshots      []SnapshotProof `json:"snapshots,omitempty"`
	SnapshotsError string          `json:"snapshotsError,omitempty"`
	// Daemons is what every `atrest run` last reported.
	Daemons []Daemon `json:"daemons,omitempty"`
}

// Node is one controlplane node.
type Node struct {
	Name     string `json:"name"`
	Ready    bool   `json:"ready"`
	NotReady string `json:"notReady,omitempty"`
	// Flag: kube-apiserver runs with --encryption-provider-config.
	Flag bool `json:"flag"`
	// FileSHA256 is the provider file's sha256 ("" when absent);
	// ConfigHash identifies its config by content.
	FileSHA256 string `json:"fileSHA256,omitempty"`
	ConfigHash string `json:"configHash,omitempty"`
	// Config describes what the node runs, by resource.
	Config string `json:"config"`
	Error  string `json:"error,omitempty"`
	// Plugin is the node's KMS plugin (provider vault-transit).
	Plugin *Plugin `json:"plugin,omitempty"`
}

// Plugin is a node's KMS plugin.
type Plugin struct {
	Current bool   `json:"current"`
	Present bool   `json:"present"`
	Healthy bool   `json:"healthy"`
	KeyID   string `json:"keyID,omitempty"`
	Problem string `json:"problem,omitempty"`
}

// Key is a keyring key, without material.
type Key struct {
	Name     string `json:"name"`
	Provider string `json:"provider"`
	// Role is primary, reader or retired.
	Role        string    `json:"role"`
	Created     time.Time `json:"created"`
	Fingerprint string    `json:"fingerprint"`
	// Outside names the node an outside writer left this key on.
	Outside string `json:"outside,omitempty"`
}

// Transit is the vault-transit provider's Transit key.
type Transit struct {
	Mount         string `json:"mount"`
	Key           string `json:"key"`
	Exists        bool   `json:"exists"`
	Latest        int    `json:"latest,omitempty"`
	MinDecryption int    `json:"minDecryption,omitempty"`
	KeyID         string `json:"keyID,omitempty"`
	Problem       string `json:"problem,omitempty"`
}

// Transition is the transition in flight.
type Transition struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"` // enable, rotate, custom, disable, managed, converge
	Revision string    `json:"revision"`
	Snapshot string    `json:"snapshot,omitempty"`
	Started  time.Time `json:"started"`
	Steps    []Step    `json:"steps"`
}

// Step is one step of a transition.
type Step struct {
	Name     string    `json:"name"`
	Detail   string    `json:"detail,omitempty"`
	State    string    `json:"state"` // pending, running, done, failed
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	Error    string    `json:"error,omitempty"`
	Attempts int       `json:"attempts,omitempty"`
}

// Stall is a standing stall.
type Stall struct {
	Reason   string    `json:"reason"`
	Message  string    `json:"message"`
	Step     string    `json:"step,omitempty"`
	Revision string    `json:"revision,omitempty"`
	Since    time.Time `json:"since"`
}

// Failure counts a step's consecutive failures.
type Failure struct {
	Step  string    `json:"step"`
	Count int       `json:"count"`
	Last  time.Time `json:"last"`
	Error string    `json:"error,omitempty"`
}

// SnapshotProof is a kept snapshot and its last decryption drill.
type SnapshotProof struct {
	Name   string    `json:"name"`
	Time   time.Time `json:"time"`
	Reason string    `json:"reason"`
	// Verdict is Restorable, NotRestorable, Unproven, or "" when never
	// drilled; Proven is when the drill ran.
	Verdict  string            `json:"verdict,omitempty"`
	Proven   time.Time         `json:"proven,omitzero"`
	Summary  string            `json:"summary,omitempty"`
	Failures []SnapshotFailure `json:"failures,omitempty"`
}

// SnapshotFailure is an object a restore would not bring back.
type SnapshotFailure struct {
	Resource string `json:"resource"`
	Object   string `json:"object"`
	Prefix   string `json:"prefix"`
	Reason   string `json:"reason"`
}

// Daemon is what one `atrest run` last reported.
type Daemon struct {
	Instance      string    `json:"instance"`
	Version       string    `json:"version,omitempty"`
	Heartbeat     time.Time `json:"heartbeat"`
	Stale         bool      `json:"stale"`
	Revision      string    `json:"revision,omitempty"`
	Refused       string    `json:"refused,omitempty"`
	Suspended     bool      `json:"suspended,omitempty"`
	LastReconcile time.Time `json:"lastReconcile,omitzero"`
	Result        string    `json:"result,omitempty"`
	Error         string    `json:"error,omitempty"`
	Failures      int       `json:"failures,omitempty"`
	NextRetry     time.Time `json:"nextRetry,omitzero"`
	Schedule      string    `json:"schedule,omitempty"`
	NextRotation  time.Time `json:"nextRotation,omitzero"`
	Stalled       string    `json:"stalled,omitempty"`
	Step          string    `json:"step,omitempty"`
}

// Plan is `atrest plan -o json|yaml`: what a reconcile would do now.
type Plan struct {
	TypeMeta `json:",inline"`
	// Desired summarises what cluster.yml and atrest.yaml ask for, and
	// Origin where they were read from.
	Desired string `json:"desired"`
	Origin  string `json:"origin"`
	// Nodes and Census are what the plan was made from.
	Nodes  []PlanNode                  `json:"nodes"`
	Census map[string]map[string]int64 `json:"census"`
	// Transition names what the plan does; "" when there is nothing to
	// do. Steps are its steps, in order.
	Transition string   `json:"transition,omitempty"`
	Steps      []string `json:"steps"`
	Drift      []string `json:"drift,omitempty"`
	Warnings   []string `json:"warnings,omitempty"`
	// Preflight is every check the plan needs, passed or failed.
	Preflight []Check `json:"preflight,omitempty"`
	// Refused says why no plan could be made, Reason its stable reason.
	Refused string `json:"refused,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// PlanNode is a node as the plan saw it.
type PlanNode struct {
	Name   string `json:"name"`
	Ready  bool   `json:"ready"`
	Config string `json:"config"`
}

// Check is one thing a plan needs, and whether the cluster has it.
type Check struct {
	Subject string `json:"subject"`
	What    string `json:"what"`
	Passed  bool   `json:"passed"`
	Problem string `json:"problem,omitempty"`
}

// SnapshotList is `atrest snapshot list -o json|yaml`.
type SnapshotList struct {
	TypeMeta  `json:",inline"`
	Snapshots []Snapshot `json:"snapshots"`
}

// Snapshot is one snapshot's manifest, as a script needs it.
type Snapshot struct {
	Name        string    `json:"name"`
	Time        time.Time `json:"time"`
	Cluster     string    `json:"cluster,omitempty"`
	Reason      string    `json:"reason"`
	Size        int64     `json:"size"`
	SHA256      string    `json:"sha256"`
	Keys        []string  `json:"keys"`
	GitRevision string    `json:"gitRevision,omitempty"`
}

// VersionInfo is `atrest version -o json|yaml`.
type VersionInfo struct {
	TypeMeta  `json:",inline"`
	Version   string `json:"version"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}
