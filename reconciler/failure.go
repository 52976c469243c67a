package reconciler

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/keystore"
)

// Lock is the held transition lock (a *keystore.Lock).
type Lock interface {
	// Lost is closed when the lock is no longer held.
	Lost() <-chan struct{}
	// Err says why it was lost.
	Err() error
	// Check fails once the lock is not safely held: call it before each
	// destructive call.
	Check() error
	// Token is the acquisition's fencing token.
	Token() uint64
	Release(ctx context.Context) error
}

// Locker hands out the transition lock.
type Locker interface {
	AcquireLock(ctx context.Context, holder string, ttl time.Duration) (Lock, error)
}

// StoreLocker is the keystore's lock as a Locker.
func StoreLocker(s *keystore.Store) Locker { return storeLocker{s} }

type storeLocker struct{ s *keystore.Store }

func (l storeLocker) AcquireLock(ctx context.Context, holder string, ttl time.Duration) (Lock, error) {
	lock, err := l.s.AcquireLock(ctx, holder, ttl)
	if err != nil {
		return nil, err
	}
	return lock, nil
}

// Stall reasons: stable, CamelCase, for alerts and scripts. A planner
// refusal stalls with its own reason (ReasonOf).
const (
	// ReasonRollbackFailed: a node could not be put back after a failed
	// change and needs a person.
	ReasonRollbackFailed = "RollbackFailed"
	// ReasonConfigRefused: a node's kube-apiserver refused a provider file
	// it was to reload (or did not prove it loaded it); the previous file
	// is back in force on every node. The same file would be refused
	// again, so it is not retried.
	ReasonConfigRefused = "ConfigRefused"
	// ReasonStepFailedRepeatedly: the same step failed with the same
	// inputs MaxStepFailures times in a row.
	ReasonStepFailedRepeatedly = "StepFailedRepeatedly"
)

// MaxStepFailures is how often one step may fail with the same inputs
// before the transition stalls, unless Reconciler.StallAfter says
// otherwise: a deploy kube-apiserver refuses restarts a node's
// kube-apiserver at each attempt.
const MaxStepFailures = 3

// StallError is a failure that needs a person: it is not retried until
// the desired state changes or `atrest resume`.
type StallError struct {
	Stall keystore.Stall
	Err   error // what failed, when it failed now; nil for a stall standing since
}

func (e *StallError) Error() string {
	msg := fmt.Sprintf("stalled (%s) since %s: %s", e.Stall.Reason, e.Stall.Since.UTC().Format(time.RFC3339), e.Stall.Message)
	if e.Err == nil {
		msg += "\nno node is changed until the desired state changes (a new revision, an edited cluster.yml) or `atrest resume` after the cause is fixed"
	}
	return msg
}

func (e *StallError) Unwrap() error { return e.Err }

// StallReason is the stable reason when err needs a person (a refusal, a
// stall), "" when it is transient and retried with backoff.
func StallReason(err error) string {
	var stall *StallError
	if errors.As(err, &stall) {
		return stall.Stall.Reason
	}
	return ReasonOf(err)
}

// transient reports whether err is a failure of reaching something (Vault,
// etcd, SSH, the lock): the same inputs may well succeed later, so it does
// not count towards a stall.
func transient(err error) bool {
	var netErr net.Error
	switch {
	case errors.Is(err, keystore.ErrLocked), errors.Is(err, keystore.ErrLockLost),
		errors.Is(err, controlplane.ErrUnreachable), errors.Is(err, controlplane.ErrFenced),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, keystore.ErrSealed), errors.As(err, &netErr):
		return true
	}
	return false
}

// inputsOf identifies the desired state a step runs for: a stall stands
// while it is the same. A rotation request is not part of it: the
// schedule asking again must not retry what stalled.
func inputsOf(d Desired) string {
	h := sha256.New()
	fmt.Fprintf(h, "revision %q\nmode %q\nprovider %q\netcd prefix %q\n", d.Revision, d.Mode, d.Provider, d.EtcdPrefix)
	for _, r := range d.Custom.Resources() {
		fmt.Fprintf(h, "custom %q %s\n", r, d.Custom[r])
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// DesiredID identifies the change a transition carries out: the desired
// state of inputsOf and the rotation request. A journal records it, and a
// transition whose desired state changed under it is a new one, with its
// own snapshot.
func DesiredID(d Desired) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\nrotate %q\n", inputsOf(d), d.RotateRequest)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// countFailure is the stall rule: after step failed with err for inputs,
// the failure count to keep and, when the step must not run again, the
// stall. A failed rollback stalls at once; a transient failure neither
// counts nor stalls; the same step failing with the same inputs stalls at
// limit.
func countFailure(prev *keystore.Failure, step, inputs, revision string, err error, limit int, now time.Time) (*keystore.Failure, *keystore.Stall) {
	if err == nil {
		return nil, nil
	}
	if errors.Is(err, controlplane.ErrRollbackFailed) {
		return prev, &keystore.Stall{Reason: ReasonRollbackFailed, Step: step, Inputs: inputs, Revision: revision, Since: now,
			Message: keystore.CapText(fmt.Sprintf("%s: a node could not be put back after the change failed and needs manual repair: %v", step, err))}
	}
	if errors.Is(err, controlplane.ErrConfigRefused) {
		return prev, &keystore.Stall{Reason: ReasonConfigRefused, Step: step, Inputs: inputs, Revision: revision, Since: now,
			Message: keystore.CapText(fmt.Sprintf("%s: kube-apiserver refused the provider file, and the previous one is back in force; fix the config (or the KMS plugin it names), then push a new revision or run `atrest resume`: %v", step, err))}
	}
	if transient(err) {
		return prev, nil
	}
	f := &keystore.Failure{Step: step, Inputs: inputs, Count: 1, Last: now, Error: keystore.CapText(err.Error())}
	if prev != nil && prev.Step == step && prev.Inputs == inputs {
		f.Count = prev.Count + 1
	}
	if f.Count < limit {
		return f, nil
	}
	return f, &keystore.Stall{Reason: ReasonStepFailedRepeatedly, Step: step, Inputs: inputs, Revision: revision, Since: now,
		Message: keystore.CapText(fmt.Sprintf("%s failed %d times in a row with the same inputs; the last error: %v", step, f.Count, err))}
}

// standingStall is the stall that stops a reconcile for d, if any: one
// recorded for other inputs has been lifted by the change.
func standingStall(kr *keystore.Keyring, d Desired) *keystore.Stall {
	if kr.Stall == nil || kr.Stall.Inputs != inputsOf(d) {
		return nil
	}
	return kr.Stall
}

// Resume lifts a stall (and forgets the failure count), for `atrest
// resume` once the cause is fixed. It returns the stall it lifted, nil
// when there was none.
func Resume(ctx context.Context, keys interface {
	Keyring(ctx context.Context) (*keystore.Keyring, error)
	UpdateKeyring(ctx context.Context, kr *keystore.Keyring) error
}) (*keystore.Stall, error) {
	kr, err := keys.Keyring(ctx)
	if err != nil {
		return nil, err
	}
	stall := kr.Stall
	if stall == nil && kr.Failure == nil {
		return nil, nil
	}
	kr.Stall, kr.Failure = nil, nil
	if err := keys.UpdateKeyring(ctx, kr); err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	return stall, nil
}
