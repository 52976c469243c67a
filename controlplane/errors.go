package controlplane

import (
	"errors"
	"fmt"
	"strings"
)

// Kinds of failure. Every error about a node is a *NodeError whose Kind is
// one of these (or nil when the cause speaks for itself), so callers can
// tell them apart with errors.Is.
var (
	// ErrUnreachable: the node's SSH server could not be reached, or the
	// connection to it broke.
	ErrUnreachable = errors.New("unreachable")
	// ErrAuthRefused: the SSH server refused every key offered.
	ErrAuthRefused = errors.New("SSH authentication refused")
	// ErrHostKey: the node's SSH host key is unknown, changed or revoked.
	ErrHostKey = errors.New("SSH host key not verified")
	// ErrDocker: the node's Docker engine did not answer through the SSH
	// connection, or answered with an error.
	ErrDocker = errors.New("docker engine not answering")
	// ErrContainerMissing: the node has no kube-apiserver container.
	ErrContainerMissing = errors.New("kube-apiserver container missing")
	// ErrNotReady: kube-apiserver did not answer /readyz in time.
	ErrNotReady = errors.New("kube-apiserver not ready")
	// ErrCanary: the canary was written with another provider than
	// expected, or could not be written and read back.
	ErrCanary = errors.New("canary check failed")
	// ErrRolledBack: a change failed on the node and the node was put back
	// as it was before the change, and is ready.
	ErrRolledBack = errors.New("rolled back")
	// ErrFenced: atrest no longer holds the reconciler's lock (its
	// Fence.Check failed), or the node has seen a greater fence token: a
	// newer holder works on the cluster, and this one stopped where it
	// was, leaving any repair to the newer one's Cluster.Recover.
	ErrFenced = errors.New("fenced: another atrest holds the lock")
	// ErrRollbackFailed: a change failed on the node and putting it back
	// failed too: the node needs an operator.
	ErrRollbackFailed = errors.New("ROLLBACK FAILED: the node needs manual repair")
)

// NodeError is a failure of one operation on one node.
type NodeError struct {
	Node string // the node's name (hostname_override or address)
	Op   string // what was being done: "connect", "write provider file", ...
	Kind error  // one of the Err* kinds, or nil
	Err  error  // the cause
}

func (e *NodeError) Error() string {
	var b strings.Builder
	b.WriteString(e.Node)
	b.WriteString(": ")
	b.WriteString(e.Op)
	if e.Kind != nil {
		b.WriteString(": ")
		b.WriteString(e.Kind.Error())
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap exposes both the kind and the cause to errors.Is and errors.As.
func (e *NodeError) Unwrap() []error {
	var out []error
	if e.Kind != nil {
		out = append(out, e.Kind)
	}
	if e.Err != nil {
		out = append(out, e.Err)
	}
	return out
}

func nodeErr(node, op string, kind, err error) error {
	return &NodeError{Node: node, Op: op, Kind: kind, Err: err}
}

// RollbackError says that a change to a node failed, and how putting the
// node back went. It wraps ErrRolledBack or ErrRollbackFailed.
type RollbackError struct {
	Node     string
	Cause    error // why the change failed
	Rollback error // nil when the node was put back and is ready
}

func (e *RollbackError) Error() string {
	// The cause names the node already.
	if e.Rollback == nil {
		return fmt.Sprintf("%v; %s was rolled back and is ready", e.Cause, e.Node)
	}
	return fmt.Sprintf("%v; %s on %s: %v", e.Cause, ErrRollbackFailed, e.Node, e.Rollback)
}

// Unwrap exposes the cause, the rollback failure and the outcome kind.
func (e *RollbackError) Unwrap() []error {
	if e.Rollback == nil {
		return []error{ErrRolledBack, e.Cause}
	}
	return []error{ErrRollbackFailed, e.Cause, e.Rollback}
}
