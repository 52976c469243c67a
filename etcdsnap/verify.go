package etcdsnap

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// List returns the manifests in store, newest first. A manifest that cannot
// be read or does not check is an error naming it: List does not guess.
func List(ctx context.Context, store Store) ([]Manifest, error) {
	objects, err := store.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []Manifest
	var errs []error
	for _, o := range objects {
		name, ok := strings.CutSuffix(o, ".json")
		if !ok {
			continue
		}
		m, err := ReadManifest(ctx, store, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, m)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("list snapshots: %w (fix or remove the manifest)", errors.Join(errs...))
	}
	sortNewestFirst(out)
	return out, nil
}

func sortNewestFirst(ms []Manifest) {
	slices.SortStableFunc(ms, func(a, b Manifest) int {
		if c := b.Time.Compare(a.Time); c != 0 {
			return c
		}
		return cmp.Compare(b.Name, a.Name)
	})
}

// Verify re-reads snapshot name and checks it against its manifest and
// against the sha256 etcd appended to it: size, sha256 of the file, the
// embedded hash and the bolt header. A snapshot that does not verify is an
// error wrapping ErrVerify; Verify changes nothing.
func Verify(ctx context.Context, store Store, name string) error {
	m, err := ReadManifest(ctx, store, name)
	if err != nil {
		return err
	}
	r, err := store.Open(ctx, dbObject(name))
	if err != nil {
		return fmt.Errorf("verify snapshot %s: %w", name, err)
	}
	defer r.Close()
	check := newStreamCheck()
	buf := make([]byte, 256<<10)
	if _, err := io.CopyBuffer(check, ctxReader{ctx, r}, buf); err != nil {
		return fmt.Errorf("verify snapshot %s: read %s: %w", name, dbObject(name), err)
	}
	sum, err := check.result()
	if err != nil {
		return fmt.Errorf("verify snapshot %s: %s: %w", name, dbObject(name), err)
	}
	if check.n != m.Size {
		return fmt.Errorf("verify snapshot %s: %w: %s has %d bytes, its manifest says %d", name, ErrVerify, dbObject(name), check.n, m.Size)
	}
	if sum != m.SHA256 {
		return fmt.Errorf("verify snapshot %s: %w: %s has sha256 %s, its manifest says %s", name, ErrVerify, dbObject(name), sum, m.SHA256)
	}
	return nil
}

// ctxReader stops a long read when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
