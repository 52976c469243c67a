package keystore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

const lockRel = "lock"

// lockDoc is the lock as stored. A free lock has no ID. Expiry is judged by
// each contender's own clock: replicas need clocks that agree to well
// within the TTL.
type lockDoc struct {
	Holder   string    `json:"holder,omitempty"`
	ID       string    `json:"id,omitempty"` // random per acquisition: the same holder name twice is still two holders
	Acquired time.Time `json:"acquired,omitzero"`
	Expires  time.Time `json:"expires,omitzero"`
	// Token is the fencing token of this acquisition (its time in
	// nanoseconds): a later holder always has a greater one, so a node can
	// refuse a write from an earlier holder that kept going.
	Token uint64 `json:"token,omitempty"`
	// Host and PID name the holder's process, so `atrest unlock` on the
	// same host can tell whether it is gone.
	Host string `json:"host,omitempty"`
	PID  int    `json:"pid,omitempty"`
	// TTL is the holder's: the grace a contender waits follows from it.
	TTL time.Duration `json:"ttl,omitempty"`
}

// LockGrace is how long after a lock's expiry a contender still waits
// before taking it over: a holder checks its own expiry before each
// destructive call (Check), and the grace covers one such call in flight
// and clocks that disagree by less than it.
func LockGrace(ttl time.Duration) time.Duration { return max(ttl/2, MinLockTTL) }

// MinLockTTL is the shortest lock TTL: renewal runs at a third of it and
// each renewal is one Vault round trip.
const MinLockTTL = 3 * time.Second

// Lock is the held transition lock. It renews itself every ttl/3 while
// held; Lost is closed if a renewal finds it taken over or if it could not
// be renewed before it would expire.
type Lock struct {
	s      *Store
	holder string
	id     string
	ttl    time.Duration

	token uint64

	mu       sync.Mutex
	version  int       // the lock document's version we last wrote
	expires  time.Time // the expiry we last wrote
	lost     chan struct{}
	lostOnce sync.Once
	lostWhy  error // nil once released by us

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// AcquireLock takes the cluster's transition lock for holder (a name for
// humans: "atrest daemon pod-7f9c", "atrest rotate by alice") for ttl. A lock
// held by someone else and not expired is a *LockedError (errors.Is
// ErrLocked) naming the holder and the expiry; an expired one is taken over.
func (s *Store) AcquireLock(ctx context.Context, holder string, ttl time.Duration) (*Lock, error) {
	const op = "acquire lock"
	p := s.path("data", lockRel)
	if holder == "" {
		return nil, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: a holder name is required", ErrInvalid)}
	}
	if ttl < MinLockTTL {
		return nil, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: ttl %s is shorter than %s", ErrInvalid, ttl, MinLockTTL)}
	}
	cur, v, err := s.readLock(ctx, op)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	// The grace follows the holder's TTL: its calls are bounded by it.
	if grace := LockGrace(max(ttl, cur.TTL)); cur.ID != "" && cur.Expires.Add(grace).After(now) {
		return nil, &LockedError{Path: p, Holder: cur.Holder, Expires: cur.Expires, Grace: grace}
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	token := uint64(now.UnixNano())
	if token <= cur.Token {
		token = cur.Token + 1 // a clock behind the previous holder's must not reuse its token
	}
	l := &Lock{s: s, holder: holder, id: hex.EncodeToString(b[:]), ttl: ttl, token: token,
		lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	doc := l.doc(now)
	nv, err := s.kvPut(ctx, op, lockRel, v, lockMaxVersions, doc)
	if errors.Is(err, ErrConflict) {
		// Someone else acquired (or renewed) it between our read and write.
		if cur, _, rerr := s.readLock(ctx, op); rerr == nil && cur.ID != "" {
			return nil, &LockedError{Path: p, Holder: cur.Holder, Expires: cur.Expires}
		}
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	if cur.ID != "" {
		s.log.Warn("took over an expired lock", "previous_holder", cur.Holder, "expired", cur.Expires)
	}
	l.version, l.expires = nv, doc.Expires
	s.log.Info("lock acquired", "holder", holder, "ttl", ttl)
	go l.renewLoop()
	return l, nil
}

func (s *Store) readLock(ctx context.Context, op string) (lockDoc, int, error) {
	e, err := s.kvRead(ctx, op, lockRel, 0)
	if err != nil || e.version == 0 {
		return lockDoc{}, 0, err
	}
	var d lockDoc
	if err := s.decode(op, lockRel, e, &d); err != nil {
		return lockDoc{}, 0, err
	}
	return d, e.version, nil
}

// doc is the lock document that holds l until now+ttl.
func (l *Lock) doc(now time.Time) lockDoc {
	host, _ := os.Hostname()
	return lockDoc{Holder: l.holder, ID: l.id, Acquired: time.Unix(0, int64(l.token)).UTC(), Expires: now.Add(l.ttl).UTC(),
		Token: l.token, Host: host, PID: os.Getpid(), TTL: l.ttl}
}

// Token is the fencing token of this acquisition: greater than that of
// every earlier holder.
func (l *Lock) Token() uint64 { return l.token }

// Check reports whether the lock is still held, by this process's own
// clock and without a Vault round trip: call it before each destructive
// call. It fails once the lock is lost or its last written expiry is
// near; a contender waits LockGrace past the expiry, so work that checks
// first never overlaps a new holder's.
func (l *Lock) Check() error {
	select {
	case <-l.lost:
		if err := l.Err(); err != nil {
			return err
		}
		return fmt.Errorf("%w: released", ErrLockLost)
	default:
	}
	l.mu.Lock()
	expires := l.expires
	l.mu.Unlock()
	if time.Now().After(expires) {
		return fmt.Errorf("%w: it expired at %s without a renewal", ErrLockLost, expires.Format(time.RFC3339))
	}
	return nil
}

// Lost is closed when the lock is no longer held: taken over, or not
// renewed in time. Stop changing the cluster when it closes.
func (l *Lock) Lost() <-chan struct{} { return l.lost }

// Err says why the lock was lost; nil while it is held or once released.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lostWhy
}

// markLost closes Lost; why is nil when we released the lock ourselves.
func (l *Lock) markLost(why error) {
	l.lostOnce.Do(func() {
		l.mu.Lock()
		l.lostWhy = why
		l.mu.Unlock()
		close(l.lost)
		if why != nil {
			l.s.log.Error("lock lost", "holder", l.holder, "err", why)
		}
	})
}

// renewLoop extends the lock every ttl/3. A failed renewal is retried at the
// next tick while the lock would still be ours then; otherwise the lock is
// declared lost, since another contender may take it over at expiry.
func (l *Lock) renewLoop() {
	defer close(l.done)
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		err := l.renew()
		if err == nil {
			continue
		}
		if errors.Is(err, ErrConflict) {
			l.markLost(fmt.Errorf("%w: another contender changed %s", ErrLockLost, l.s.path("data", lockRel)))
			return
		}
		l.mu.Lock()
		expires := l.expires
		l.mu.Unlock()
		if time.Now().Add(l.ttl / 3).After(expires) {
			l.markLost(fmt.Errorf("%w: not renewed before it expires at %s: %w", ErrLockLost, expires.Format(time.RFC3339), err))
			return
		}
		l.s.log.Warn("lock renewal failed; retrying", "err", err)
	}
}

// renew rewrites the lock with a later expiry, against the version we last
// wrote: any other write since means it is no longer ours.
func (l *Lock) renew() error {
	ctx, cancel := context.WithTimeout(context.Background(), max(l.ttl/3, time.Second))
	defer cancel()
	l.mu.Lock()
	v := l.version
	l.mu.Unlock()
	doc := l.doc(time.Now())
	nv, err := l.s.kvWrite(ctx, "renew lock", lockRel, v, doc)
	if errors.Is(err, ErrConflict) {
		// A renewal that timed out here may have landed in Vault (a Vault
		// that froze, then answered): the lock then still holds our own
		// acquisition, at a later version. Only another ID is a contender.
		cur, cv, rerr := l.s.readLock(ctx, "renew lock")
		if rerr != nil || cur.ID != l.id {
			return err
		}
		l.s.log.Info("a renewal that timed out had reached Vault: the lock is still ours", "version", cv)
		if nv, err = l.s.kvWrite(ctx, "renew lock", lockRel, cv, doc); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	l.mu.Lock()
	l.version, l.expires = nv, doc.Expires
	l.mu.Unlock()
	return nil
}

// Release stops renewing and frees the lock if it is still ours. A lock
// already lost is left alone and its loss returned (errors.Is ErrLockLost);
// releasing twice is not an error.
func (l *Lock) Release(ctx context.Context) error {
	const op = "release lock"
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.done
	select {
	case <-l.lost:
		return l.Err()
	default:
	}
	l.mu.Lock()
	v := l.version
	l.mu.Unlock()
	_, err := l.s.kvWrite(ctx, op, lockRel, v, lockDoc{})
	if errors.Is(err, ErrConflict) {
		err = fmt.Errorf("%w: another contender changed %s before release: %w", ErrLockLost, l.s.path("data", lockRel), err)
		l.markLost(err)
		return err
	}
	if err != nil {
		return err
	}
	l.markLost(nil)
	l.s.log.Info("lock released", "holder", l.holder)
	return nil
}

// LockInfo is the transition lock as stored, for `atrest unlock` and
// `atrest status`: who holds it, since when and until when.
type LockInfo struct {
	Held     bool      `json:"held"`
	Holder   string    `json:"holder,omitempty"`
	ID       string    `json:"id,omitempty"`
	Acquired time.Time `json:"acquired,omitzero"`
	Expires  time.Time `json:"expires,omitzero"`
	Host     string    `json:"host,omitempty"`
	PID      int       `json:"pid,omitempty"`
	// Grace is how long past Expires a contender waits (LockGrace).
	Grace time.Duration `json:"grace,omitempty"`
}

// Expired reports whether the lock may be taken over at now.
func (i LockInfo) Expired(now time.Time) bool {
	return !i.Held || !i.Expires.Add(i.Grace).After(now)
}

// LockState reads the transition lock.
func (s *Store) LockState(ctx context.Context) (LockInfo, error) {
	cur, _, err := s.readLock(ctx, "read lock")
	if err != nil || cur.ID == "" {
		return LockInfo{}, err
	}
	ttl := cur.TTL
	if ttl <= 0 {
		ttl = 2 * time.Minute // written by an atrest before TTLs were stored
	}
	return LockInfo{Held: true, Holder: cur.Holder, ID: cur.ID, Acquired: cur.Acquired, Expires: cur.Expires,
		Host: cur.Host, PID: cur.PID, Grace: LockGrace(ttl)}, nil
}

// BreakLock frees the lock held under id (LockInfo.ID), whoever holds it:
// for a holder that is gone. A lock since taken or renewed by anyone is
// left alone (ErrConflict): look again.
func (s *Store) BreakLock(ctx context.Context, id string) error {
	const op = "break lock"
	cur, v, err := s.readLock(ctx, op)
	if err != nil {
		return err
	}
	if cur.ID == "" {
		return nil
	}
	if cur.ID != id {
		return &OpError{Op: op, Path: s.path("data", lockRel), Err: fmt.Errorf("%w: the lock is now held by %q (id %s), not id %s", ErrConflict, cur.Holder, cur.ID, id)}
	}
	if _, err := s.kvWrite(ctx, op, lockRel, v, lockDoc{Token: cur.Token}); err != nil {
		return err
	}
	s.log.Warn("lock broken", "holder", cur.Holder, "id", cur.ID, "expires", cur.Expires)
	return nil
}
