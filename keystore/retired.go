package keystore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/atrest-io/atrest/cluster"
)

// What DestroyRetired did, or would do, with a retired key.
const (
	RetiredDestroyed     = "destroyed"
	RetiredWouldDestroy  = "would destroy"
	RetiredKept          = "kept"
	retiredDefaultTTL    = 2 * time.Minute
	retiredKeyringWrites = 3
)

// NeededKey is a key a snapshot needs, as its manifest names it: by name
// and, when the manifest records it, by the fingerprint of its material.
type NeededKey struct {
	Name        string
	Fingerprint string
}

// DestroyRetiredOptions says which retired keys DestroyRetired considers
// and what else keeps them.
type DestroyRetiredOptions struct {
	// Holder names the transition lock's holder ("atrest keys
	// destroy-retired by alice"); LockTTL is its TTL (default 2m).
	Holder  string
	LockTTL time.Duration
	// Snapshots are the kept snapshots found outside Vault (the manifests
	// in the snapshot directory that belong to this cluster) and the keys
	// each needs. A key one of them needs is kept even when the snapshot
	// references in Vault do not list that snapshot.
	Snapshots map[string][]NeededKey
	// Names restricts DestroyRetired to these keys; each must be a retired
	// entry of the keyring. Empty: every retired key.
	Names []string
	// DryRun reports what would be destroyed and changes nothing (and
	// takes no lock).
	DryRun bool
}

// RetiredKey is what DestroyRetired did with one retired key. It holds no
// key material.
type RetiredKey struct {
	Name        string           `json:"name"`
	Provider    cluster.Provider `json:"provider"`
	Fingerprint string           `json:"fingerprint"`
	Created     time.Time        `json:"created"`
	// Action is RetiredDestroyed, RetiredWouldDestroy or RetiredKept.
	Action string `json:"action"`
	// ReferencedBy are the kept snapshots that need the key (Action
	// RetiredKept), sorted.
	ReferencedBy []string `json:"referencedBy,omitempty"`
}

// DestroyRetired destroys the material of the keyring's retired keys that
// no kept snapshot needs, and then drops their entries from the keyring.
// A retired key is kept while the snapshot references in Vault or a
// snapshot of opts.Snapshots names it. It takes the transition lock (but
// not for a dry run) and refuses while a transition is in flight: a
// journal may still lead back to a retired key. It returns a line for
// every retired key considered, in keyring order, also when it fails
// midway (the keys not reached are not in it).
//
// Each key is destroyed with DestroyKey, which checks the references again
// atomically; a key whose material is gone but whose entry is still listed
// (a run interrupted between the two) is destroyed again, which is not an
// error, and dropped.
func (s *Store) DestroyRetired(ctx context.Context, opts DestroyRetiredOptions) ([]RetiredKey, error) {
	const op = "destroy retired keys"
	p := s.path("data", keyringRel)
	var lock *Lock
	if !opts.DryRun {
		if opts.Holder == "" {
			return nil, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: a lock holder name is required", ErrInvalid)}
		}
		ttl := opts.LockTTL
		if ttl == 0 {
			ttl = retiredDefaultTTL
		}
		var err error
		lock, err = s.AcquireLock(ctx, opts.Holder, ttl)
		if err != nil {
			return nil, fmt.Errorf("take the transition lock: %w", err)
		}
		defer func() {
			if err := lock.Release(context.WithoutCancel(ctx)); err != nil {
				s.log.Warn("release the transition lock", "err", err)
			}
		}()
	}
	kr, err := s.Keyring(ctx)
	if err != nil {
		return nil, err
	}
	if kr.Journal != nil {
		return nil, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: a transition is in flight (%s, %s): finish it first (atrest apply, or the daemon), then destroy retired keys", ErrConflict, kr.Journal.Transition, kr.Journal.ID)}
	}
	var retired []KeyInfo
	for _, k := range kr.Keys {
		if k.Role == RoleRetired && (len(opts.Names) == 0 || slices.Contains(opts.Names, k.Name)) {
			retired = append(retired, k)
		}
	}
	for _, name := range opts.Names {
		k, ok := kr.Find(name)
		switch {
		case !ok:
			return nil, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: the keyring (version %d) has no key %s", ErrNotFound, kr.Version, name)}
		case k.Role != RoleRetired:
			return nil, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: the keyring (version %d) lists %s as %s, not retired: only retired keys are destroyed", ErrReferenced, kr.Version, name, k.Role)}
		}
	}
	refs, _, err := s.readRefs(ctx, op)
	if err != nil {
		return nil, err
	}
	var out []RetiredKey
	var destroyed []string
	for _, k := range retired {
		r := RetiredKey{Name: k.Name, Provider: k.Provider, Fingerprint: k.Fingerprint, Created: k.Created}
		r.ReferencedBy = refs.referencing(k.Name)
		for snap, needs := range opts.Snapshots {
			if slices.ContainsFunc(needs, func(n NeededKey) bool {
				return n.Name == k.Name && (n.Fingerprint == "" || k.Fingerprint == "" || n.Fingerprint == k.Fingerprint)
			}) && !slices.Contains(r.ReferencedBy, snap) {
				r.ReferencedBy = append(r.ReferencedBy, snap)
			}
		}
		slices.Sort(r.ReferencedBy)
		switch {
		case len(r.ReferencedBy) > 0:
			r.Action = RetiredKept
		case opts.DryRun:
			r.Action = RetiredWouldDestroy
		default:
			if err := lock.Check(); err != nil {
				return out, s.dropRetired(ctx, destroyed, err)
			}
			err := s.DestroyKey(ctx, k.Name)
			if errors.Is(err, ErrReferenced) {
				// A snapshot referenced it since the references were read.
				if now, _, rerr := s.readRefs(ctx, op); rerr == nil {
					r.ReferencedBy = now.referencing(k.Name)
				}
				if len(r.ReferencedBy) == 0 {
					return out, s.dropRetired(ctx, destroyed, err)
				}
				r.Action = RetiredKept
				out = append(out, r)
				continue
			}
			if err != nil {
				return out, s.dropRetired(ctx, destroyed, err)
			}
			r.Action = RetiredDestroyed
			destroyed = append(destroyed, k.Name)
		}
		out = append(out, r)
	}
	return out, s.dropRetired(ctx, destroyed, nil)
}

// dropRetired removes the retired entries of names from the keyring (the
// keys are destroyed), joined to failed, the error that stopped the run.
// Only retired entries are dropped: the keyring is re-read at each try.
func (s *Store) dropRetired(ctx context.Context, names []string, failed error) error {
	if len(names) == 0 {
		return failed
	}
	const op = "drop destroyed keys from the keyring"
	var err error
	for range retiredKeyringWrites {
		var kr *Keyring
		if kr, err = s.Keyring(ctx); err != nil {
			break
		}
		n := len(kr.Keys)
		kr.Keys = slices.DeleteFunc(kr.Keys, func(k KeyInfo) bool { return k.Role == RoleRetired && slices.Contains(names, k.Name) })
		if len(kr.Keys) == n {
			return failed
		}
		// Dropping retired entries names no new key: the material of the
		// keys left was checked when they were listed, and is not read
		// here (the operator's policy reads no key material).
		if err = validateKeyring(kr); err != nil {
			err = &OpError{Op: op, Path: s.path("data", keyringRel), Err: err}
			break
		}
		var v int
		v, err = s.kvPut(ctx, op, keyringRel, kr.Version, keyringMaxVersions, keyringDoc{Schema: keyringSchema, Keyring: kr})
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err == nil {
			s.log.Info("keyring updated", "version", v, "keys", keyringSummary(kr), "dropped", names)
		}
		break
	}
	if err != nil {
		err = fmt.Errorf("the material of %v is destroyed, but the keyring still lists them as retired (run destroy-retired again to drop them): %w", names, err)
	}
	return errors.Join(failed, err)
}
