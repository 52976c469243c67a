package etcdsnap

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"time"
)

// KeyRefs records which keys a retained snapshot needs, so that the
// keystore never destroys a key while a snapshot it reads is kept
// (implemented by keystore.Store).
type KeyRefs interface {
	// AddSnapshotRef records that snapshot needs keyNames.
	AddSnapshotRef(ctx context.Context, snapshot string, keyNames []string) error
	// ReleaseSnapshotRef drops snapshot's reference; releasing an unknown
	// snapshot is not an error.
	ReleaseSnapshotRef(ctx context.Context, snapshot string) error
}

// ErrVerify is wrapped by every error that says a snapshot's bytes are not
// what etcd sent or what its manifest records.
var ErrVerify = errors.New("snapshot does not verify")

// cleanupTimeout bounds the calls that undo a failed Save; they run even
// when the caller's context has ended.
const cleanupTimeout = 30 * time.Second

// Save takes a snapshot from one etcd member (the first endpoint that
// answers) into store and returns its manifest.
//
// The caller fills in req: Reason (required), Transition, GitRevision,
// KeyringVersion, Keys (every key deployed right now, in config order) and
// Resources (default secrets); Name is optional (default NewName). Save
// fills in the rest.
//
// Before reading the first byte, Save records in refs that the snapshot
// needs req.Keys (refs may be nil only when there are none): a crash after
// that point leaves a reference without a snapshot, which keeps keys longer
// than needed, never shorter. The snapshot is streamed to
// "<name>.db.part", checked against the sha256 etcd appends to the stream,
// fsynced and published as "<name>.db" (0600); a snapshot that does not
// verify is removed and Save fails with an error wrapping ErrVerify. Then
// the manifest is written as "<name>.json", and both are read back from the
// store and verified (Verify). On any failure nothing is left under the
// name and the reference is released.
func (c *Client) Save(ctx context.Context, store Store, refs KeyRefs, req Manifest) (*Manifest, error) {
	if err := req.checkRequest(); err != nil {
		return nil, fmt.Errorf("save snapshot: %w", err)
	}
	if len(req.Keys) > 0 && refs == nil {
		return nil, errors.New("save snapshot: no keystore to record the snapshot's keys in")
	}
	m := req
	m.Format = ManifestFormat
	m.Resources = m.resources()
	if m.Name == "" {
		m.Name = NewName(time.Now())
	}
	for _, object := range []string{dbObject(m.Name), manifestObject(m.Name)} {
		if r, err := store.Open(ctx, object); err == nil {
			r.Close()
			return nil, fmt.Errorf("save snapshot %s: %s already exists: choose another name", m.Name, object)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("save snapshot %s: %w", m.Name, err)
		}
	}
	member, err := c.member(ctx, c.cfg.RequestTimeout)
	if err != nil {
		return nil, fmt.Errorf("save snapshot %s: %w", m.Name, err)
	}
	m.Endpoint, m.EtcdVersion, m.EtcdRevision = member.endpoint, member.version, member.revision

	if len(m.Keys) > 0 {
		if err := refs.AddSnapshotRef(ctx, m.Name, m.KeyNames()); err != nil {
			return nil, fmt.Errorf("save snapshot %s: record its keys in the keystore: %w", m.Name, err)
		}
	}
	undo := func(err error, removeDB bool) (*Manifest, error) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		errs := []error{err}
		if removeDB {
			if rerr := store.Remove(cctx, dbObject(m.Name)); rerr != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", dbObject(m.Name), rerr))
			}
		}
		if len(m.Keys) > 0 {
			if rerr := refs.ReleaseSnapshotRef(cctx, m.Name); rerr != nil {
				errs = append(errs, fmt.Errorf("release key reference of %s: %w", m.Name, rerr))
			}
		}
		return nil, errors.Join(errs...)
	}

	m.Time = time.Now().UTC()
	size, sum, err := c.stream(ctx, store, m.Name, member.endpoint)
	if err != nil {
		return undo(fmt.Errorf("save snapshot %s from %s: %w", m.Name, member.endpoint, err), false)
	}
	m.Size, m.SHA256 = size, sum
	if err := writeManifest(ctx, store, m); err != nil {
		return undo(err, true)
	}
	// What was checked is what passed through; what counts is what the
	// store holds. Read both back before anyone relies on them.
	if err := Verify(ctx, store, m.Name); err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if rerr := store.Remove(cctx, manifestObject(m.Name)); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove %s: %w", manifestObject(m.Name), rerr))
		}
		return undo(fmt.Errorf("save snapshot %s: read back from the store: %w", m.Name, err), true)
	}
	took := time.Since(m.Time)
	c.log.Info("etcd snapshot saved", "snapshot", m.Name, "reason", m.Reason, "endpoint", m.Endpoint,
		"etcdVersion", m.EtcdVersion, "etcdRevision", m.EtcdRevision, "bytes", m.Size, "sha256", m.SHA256,
		"keys", m.KeyNames(), "took", took.Round(time.Millisecond),
		"MBps", fmt.Sprintf("%.1f", float64(m.Size)/1e6/max(took.Seconds(), 1e-9)))
	return &m, nil
}

// stream copies a snapshot from endpoint into "<name>.db" and returns its
// size and sha256. The upload is aborted unless the stream verifies.
func (c *Client) stream(ctx context.Context, store Store, name, endpoint string) (int64, string, error) {
	// One endpoint: the snapshot is the point-in-time state of one member,
	// and the client must not fail over to another mid-stream.
	cli, err := newEtcdClient(c.cfg, c.tls, []string{endpoint}, c.read)
	if err != nil {
		return 0, "", err
	}
	defer cli.Close()
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The timer runs from before the stream opens: a member that accepts
	// the call and sends nothing is as stuck as one that stops midway.
	idle := newIdleReader(nil, c.cfg.SnapshotIdleTimeout, cancel)
	defer idle.stop()
	resp, err := cli.SnapshotWithVersion(sctx)
	if err != nil {
		return 0, "", fmt.Errorf("open snapshot stream: %w", causeOf(sctx, err))
	}
	defer resp.Snapshot.Close()
	idle.r = resp.Snapshot

	size, sum, err := receive(ctx, store, name, idle)
	if err != nil {
		return 0, "", causeOf(sctx, err)
	}
	return size, sum, nil
}

// receive writes a snapshot stream into "<name>.db" and returns its size and
// sha256; a stream that does not verify is discarded, never published.
func receive(ctx context.Context, store Store, name string, r io.Reader) (int64, string, error) {
	up, err := store.Create(ctx, dbObject(name))
	if err != nil {
		return 0, "", err
	}
	check := newStreamCheck()
	buf := make([]byte, 256<<10)
	if _, err := io.CopyBuffer(io.MultiWriter(up, check), r, buf); err != nil {
		return 0, "", errors.Join(fmt.Errorf("receive snapshot: %w", err), up.Abort())
	}
	sum, err := check.result()
	if err != nil {
		return 0, "", errors.Join(fmt.Errorf("%s: %w", dbObject(name), err), up.Abort())
	}
	if err := up.Commit(); err != nil {
		return 0, "", err
	}
	return check.n, sum, nil
}

// causeOf prefers the reason a context was cancelled (the idle timeout)
// over the bare "context canceled".
func causeOf(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
		return fmt.Errorf("%w (%w)", cause, err)
	}
	return err
}

// etcd appends a sha256 of the snapshot to the stream, and a bolt database
// is a whole number of pages: the stream's length modulo 512 (the smallest
// page size) is 32.
const (
	trailerSize  = sha256.Size
	sectorSize   = 512
	boltMagicOff = 16 // after the page header: id u64, flags u16, count u16, overflow u32
	boltMagic    = 0xED0CDAED
)

// streamCheck hashes a snapshot as it passes. Everything but the last 32
// bytes is etcd's database; the last 32 bytes are etcd's sha256 of it. It
// holds back the 32 most recent bytes, so one pass of sha256 yields both
// the database's hash (to compare with the trailer) and, with the trailer
// written on, the file's.
type streamCheck struct {
	h    hash.Hash
	tail [trailerSize]byte
	nt   int   // bytes held in tail
	n    int64 // bytes seen
	head [boltMagicOff + 4]byte
	nh   int
}

func newStreamCheck() *streamCheck { return &streamCheck{h: sha256.New()} }

func (s *streamCheck) Write(p []byte) (int, error) {
	n := len(p)
	s.n += int64(n)
	if s.nh < len(s.head) {
		s.nh += copy(s.head[s.nh:], p)
	}
	if n >= trailerSize {
		s.h.Write(s.tail[:s.nt])
		s.h.Write(p[:n-trailerSize])
		copy(s.tail[:], p[n-trailerSize:])
		s.nt = trailerSize
		return n, nil
	}
	if s.nt+n <= trailerSize {
		copy(s.tail[s.nt:], p)
		s.nt += n
		return n, nil
	}
	// The oldest held bytes leave the window for the hash.
	out := s.nt + n - trailerSize
	s.h.Write(s.tail[:out])
	copy(s.tail[:], s.tail[out:s.nt])
	copy(s.tail[s.nt-out:], p)
	s.nt = trailerSize
	return n, nil
}

// result checks the stream and returns the file's sha256 in hex. Its
// errors wrap ErrVerify.
func (s *streamCheck) result() (string, error) {
	if s.n < trailerSize+sectorSize || s.n%sectorSize != trailerSize {
		return "", fmt.Errorf("%w: %d bytes is not a bolt database and etcd's 32-byte sha256 (truncated?)", ErrVerify, s.n)
	}
	if got := binary.LittleEndian.Uint32(s.head[boltMagicOff:]); got != boltMagic {
		return "", fmt.Errorf("%w: not a bolt database (magic %#x, want %#x)", ErrVerify, got, uint32(boltMagic))
	}
	data := s.h.Sum(nil)
	if string(data) != string(s.tail[:]) {
		return "", fmt.Errorf("%w: the database hashes to sha256 %s, but etcd's trailer says %s", ErrVerify,
			hex.EncodeToString(data), hex.EncodeToString(s.tail[:]))
	}
	s.h.Write(s.tail[:])
	return hex.EncodeToString(s.h.Sum(nil)), nil
}
