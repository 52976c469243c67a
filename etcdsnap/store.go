package etcdsnap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Store keeps snapshot files and their manifests as named objects
// ("<name>.db", "<name>.json"). A local directory implements it; an object
// store can, too: an object becomes visible under its name only when its
// upload is committed, whole, and a committed object is never overwritten.
type Store interface {
	// Create starts writing object; nothing is visible under its name
	// until Commit. It fails when the object already exists.
	Create(ctx context.Context, object string) (Upload, error)
	// Open reads a committed object. A missing one is an error wrapping
	// fs.ErrNotExist.
	Open(ctx context.Context, object string) (io.ReadCloser, error)
	// List returns the names of committed objects, sorted.
	List(ctx context.Context) ([]string, error)
	// Remove deletes an object; removing a missing one is not an error.
	Remove(ctx context.Context, object string) error
}

// Upload is an object being written.
type Upload interface {
	io.Writer
	// Commit makes the object durable and visible under its name. It fails,
	// leaving nothing visible, when the name was taken meanwhile.
	Commit() error
	// Abort discards what was written. After Commit it does nothing.
	Abort() error
}

// LocalDir is a Store in a local directory (in Kubernetes, a volume).
// Objects are files of mode 0600; uploads are written as "<object>.part",
// fsynced, and published with a link that never replaces an existing file.
type LocalDir struct {
	dir string
}

// partSuffix marks files being written; List never shows them.
const partSuffix = ".part"

// NewLocalDir returns the store in dir, creating dir (mode 0700) when it
// does not exist.
func NewLocalDir(dir string) (*LocalDir, error) {
	if dir == "" {
		return nil, errors.New("snapshot directory: not set: set snapshots.dir")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("snapshot directory %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("snapshot directory: %w", err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("snapshot directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("snapshot directory %s: not a directory", abs)
	}
	return &LocalDir{dir: abs}, nil
}

// Dir returns the directory, for messages that tell the operator where a
// snapshot file is.
func (d *LocalDir) Dir() string { return d.dir }

// Path returns the file that holds object.
func (d *LocalDir) Path(object string) string { return filepath.Join(d.dir, object) }

func (d *LocalDir) path(object string) (string, error) {
	if err := checkObjectName(object); err != nil {
		return "", err
	}
	return filepath.Join(d.dir, object), nil
}

func checkObjectName(object string) error {
	if object == "" || object != filepath.Base(object) || strings.HasPrefix(object, ".") || strings.HasSuffix(object, partSuffix) {
		return fmt.Errorf("snapshot object name %q: must be a plain file name", object)
	}
	return nil
}

// Create implements Store.
func (d *LocalDir) Create(_ context.Context, object string) (Upload, error) {
	final, err := d.path(object)
	if err != nil {
		return nil, err
	}
	if _, err := os.Lstat(final); err == nil {
		return nil, fmt.Errorf("create %s: %w", final, fs.ErrExist)
	}
	part := final + partSuffix
	// A part file left by a crash holds nothing anyone can see: start over.
	f, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", part, err)
	}
	// O_CREATE does not change the mode of an existing part file.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		os.Remove(part)
		return nil, fmt.Errorf("chmod %s: %w", part, err)
	}
	return &localUpload{f: f, part: part, final: final, dir: d.dir}, nil
}

// Open implements Store.
func (d *LocalDir) Open(_ context.Context, object string) (io.ReadCloser, error) {
	p, err := d.path(object)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// List implements Store.
func (d *LocalDir) List(context.Context) ([]string, error) {
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, fmt.Errorf("list snapshot directory: %w", err)
	}
	var out []string
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasSuffix(e.Name(), partSuffix) || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		out = append(out, e.Name())
	}
	slices.Sort(out)
	return out, nil
}

// Remove implements Store.
func (d *LocalDir) Remove(_ context.Context, object string) error {
	p, err := d.path(object)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return syncDir(d.dir)
}

type localUpload struct {
	f           *os.File
	part, final string
	dir         string
	done        bool
}

func (u *localUpload) Write(p []byte) (int, error) { return u.f.Write(p) }

func (u *localUpload) Commit() error {
	if u.done {
		return fmt.Errorf("commit %s: already finished", u.final)
	}
	u.done = true
	if err := u.f.Sync(); err != nil {
		u.f.Close()
		os.Remove(u.part)
		return fmt.Errorf("fsync %s: %w", u.part, err)
	}
	if err := u.f.Close(); err != nil {
		os.Remove(u.part)
		return fmt.Errorf("close %s: %w", u.part, err)
	}
	if err := publish(u.part, u.final); err != nil {
		os.Remove(u.part)
		return err
	}
	return syncDir(u.dir)
}

func (u *localUpload) Abort() error {
	if u.done {
		return nil
	}
	u.done = true
	u.f.Close()
	if err := os.Remove(u.part); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", u.part, err)
	}
	return nil
}

// publish renames part to final without ever replacing a file at final: a
// hard link fails when final exists. Filesystems without hard links get a
// check and a rename, which is enough under atrest's one-writer lock.
func publish(part, final string) error {
	err := os.Link(part, final)
	switch {
	case err == nil:
		return os.Remove(part)
	case errors.Is(err, fs.ErrExist):
		return fmt.Errorf("publish %s: %w", final, fs.ErrExist)
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.ENOTSUP), errors.Is(err, syscall.EXDEV), errors.Is(err, syscall.EMLINK):
		if _, err := os.Lstat(final); err == nil {
			return fmt.Errorf("publish %s: %w", final, fs.ErrExist)
		}
		if err := os.Rename(part, final); err != nil {
			return fmt.Errorf("publish %s: %w", final, err)
		}
		return nil
	default:
		return fmt.Errorf("publish %s: %w", final, err)
	}
}

// syncDir makes a rename or removal in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
