package keystore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// Errors callers tell apart with errors.Is. Every error the Store returns
// also names the operation and the Vault path it failed on.
var (
	// ErrConflict: another writer changed the document since it was read.
	// Nothing was written; read again and retry.
	ErrConflict = errors.New("changed by another writer since it was read (check-and-set conflict; read it again and retry)")
	// ErrLocked: the transition lock is held by someone else and has not
	// expired. The error is a *LockedError naming the holder.
	ErrLocked = errors.New("locked")
	// ErrLockLost: a held lock was taken over or could not be renewed in time.
	ErrLockLost = errors.New("lock lost")
	// ErrReferenced: a key is still needed (by a retained snapshot or by the
	// keyring) and is not destroyed.
	ErrReferenced = errors.New("still referenced")
	// ErrNotFound: there is no key (or document) at the path.
	ErrNotFound = errors.New("not found")
	// ErrExists: a key already exists at the path; keys are never overwritten.
	ErrExists = errors.New("already exists")
	// ErrSealed: Vault answered that it is sealed.
	ErrSealed = errors.New("Vault is sealed") //lint:ignore ST1005 "Vault" is a proper noun
	// ErrPermissionDenied: the Vault token's policy does not allow the call,
	// or the token has expired.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrUnavailable: Vault could not be reached or did not answer in time.
	ErrUnavailable = errors.New("Vault is unreachable") //lint:ignore ST1005 "Vault" is a proper noun
	// ErrInvalid: a document in Vault, or an argument, is not what atrest
	// wrote or expects; nothing was changed.
	ErrInvalid = errors.New("invalid")
)

// OpError is a failed Store operation: what was being done ("read keyring"),
// on which Vault path, and why. It never holds key material.
type OpError struct {
	Op   string // "read keyring", "write key k-abcde", ...
	Path string // the Vault API path: "secret/data/atrest/c1/keyring"
	Err  error
}

func (e *OpError) Error() string { return e.Op + " " + e.Path + ": " + e.Err.Error() }

// Unwrap returns the cause, so errors.Is finds ErrSealed, ErrConflict, ...
func (e *OpError) Unwrap() error { return e.Err }

// LockedError says who holds the lock and until when.
type LockedError struct {
	Path    string
	Holder  string
	Expires time.Time
	// Grace is how long past Expires the lock is still not taken over
	// (LockGrace): the holder's last call may be in flight.
	Grace time.Duration
}

func (e *LockedError) Error() string {
	if now := time.Now(); e.Grace > 0 && !e.Expires.After(now) {
		return fmt.Sprintf("acquire lock %s: held by %q, expired at %s; it is taken over %s after that (in %s), in case the holder's last call is in flight; `atrest unlock` shows it",
			e.Path, e.Holder, e.Expires.UTC().Format(time.RFC3339), e.Grace, e.Expires.Add(e.Grace).Sub(now).Round(time.Second))
	}
	return fmt.Sprintf("acquire lock %s: held by %q until %s (%s from now); wait for it to be released or to expire",
		e.Path, e.Holder, e.Expires.UTC().Format(time.RFC3339), time.Until(e.Expires).Round(time.Second))
}

// Is makes errors.Is(err, ErrLocked) true.
func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// capability is the Vault policy capability an operation needs, for the
// hint in permission errors.
type capability string

const (
	capRead   capability = "read"
	capWrite  capability = "create and update"
	capDelete capability = "delete"
	capList   capability = "list"
)

// classify turns a Vault client error into one of the sentinel errors, with
// a short reason instead of the client's multi-line dump.
func classify(err error, need capability, addr string) error {
	if err == nil {
		return nil
	}
	var re *vault.ResponseError
	if errors.As(err, &re) {
		msgs := strings.Join(re.Errors, "; ")
		switch {
		case re.StatusCode == 503 && strings.Contains(msgs, "sealed"):
			return fmt.Errorf("%w (unseal it, then retry)", ErrSealed)
		case re.StatusCode == 403:
			return fmt.Errorf("%w: the Vault token has expired or its policy does not grant %s on this path", ErrPermissionDenied, need)
		case re.StatusCode == 400 && strings.Contains(msgs, "check-and-set parameter did not match"):
			return ErrConflict
		case re.StatusCode == 404:
			return fmt.Errorf("%w: %s", ErrNotFound, msgs)
		case re.StatusCode >= 500:
			return fmt.Errorf("%w: Vault answered HTTP %d: %s", ErrUnavailable, re.StatusCode, msgs)
		}
		return fmt.Errorf("Vault answered HTTP %d: %s", re.StatusCode, msgs) //lint:ignore ST1005 "Vault" is a proper noun
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	var ue *url.Error
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ue) || errors.As(err, &ne) {
		return fmt.Errorf("%w at %s: %s", ErrUnavailable, addr, transportReason(err))
	}
	return err
}

// transportReason drops the request URL from a transport error: the path
// is already in the OpError.
func transportReason(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}
