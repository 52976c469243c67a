package keystore

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"
)

const refsRel = "snapshots"

// refsDoc records which retained snapshots need which keys, and which keys
// are being destroyed (see DestroyKey).
type refsDoc struct {
	Schema     int                  `json:"schema"`
	Snapshots  map[string]snapRef   `json:"snapshots"`
	Destroying map[string]time.Time `json:"destroying,omitempty"`
}

type snapRef struct {
	Keys  []string  `json:"keys"`
	Added time.Time `json:"added"`
}

// referencing returns the snapshots that need key name, sorted.
func (r *refsDoc) referencing(name string) []string {
	var out []string
	for snap, ref := range r.Snapshots {
		if slices.Contains(ref.Keys, name) {
			out = append(out, snap)
		}
	}
	sort.Strings(out)
	return out
}

// readRefs reads the references document and its version (0: none yet).
func (s *Store) readRefs(ctx context.Context, op string) (*refsDoc, int, error) {
	r := &refsDoc{}
	v, err := s.readDoc(ctx, op, refsRel, r)
	if err != nil {
		return nil, 0, err
	}
	if r.Snapshots == nil {
		r.Snapshots = map[string]snapRef{}
	}
	return r, v, nil
}

// updateRefs applies change to the references document with check-and-set,
// redoing it on a conflict (updateDoc).
func (s *Store) updateRefs(ctx context.Context, op string, change func(*refsDoc) (bool, error)) error {
	return updateDoc(ctx, s, op, refsRel, refsMaxVersions, s.readRefs, func(r *refsDoc) (bool, error) {
		r.Schema = 1
		return change(r)
	})
}

// AddSnapshotRef records that the retained snapshot needs keyNames to be
// restored: DestroyKey refuses those keys until ReleaseSnapshotRef. Every
// key must be stored. Recording the same snapshot again adds to its keys.
func (s *Store) AddSnapshotRef(ctx context.Context, snapshot string, keyNames []string) error {
	op := "add snapshot reference " + snapshot
	p := s.path("data", refsRel)
	if snapshot == "" {
		return &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: snapshot name is required", ErrInvalid)}
	}
	for _, name := range keyNames {
		if _, err := s.Key(ctx, name); err != nil {
			return fmt.Errorf("%s: the snapshot needs key %s: %w", op, name, err)
		}
	}
	err := s.updateRefs(ctx, op, func(r *refsDoc) (bool, error) {
		// A key announced for destruction may already be gone: refuse,
		// whatever the check above saw.
		for _, name := range keyNames {
			if _, ok := r.Destroying[name]; ok {
				return false, fmt.Errorf("%w: key %s is being destroyed", ErrNotFound, name)
			}
		}
		ref, ok := r.Snapshots[snapshot]
		if !ok {
			ref.Added = time.Now().UTC()
		}
		before := len(ref.Keys)
		for _, name := range keyNames {
			if !slices.Contains(ref.Keys, name) {
				ref.Keys = append(ref.Keys, name)
			}
		}
		if ok && len(ref.Keys) == before {
			return false, nil
		}
		r.Snapshots[snapshot] = ref
		return true, nil
	})
	if err != nil {
		return err
	}
	s.log.Info("snapshot reference recorded", "snapshot", snapshot, "keys", keyNames)
	return nil
}

// ReleaseSnapshotRef drops the snapshot's reference, when the snapshot is
// pruned. An unknown snapshot is not an error.
func (s *Store) ReleaseSnapshotRef(ctx context.Context, snapshot string) error {
	op := "release snapshot reference " + snapshot
	err := s.updateRefs(ctx, op, func(r *refsDoc) (bool, error) {
		if _, ok := r.Snapshots[snapshot]; !ok {
			return false, nil
		}
		delete(r.Snapshots, snapshot)
		return true, nil
	})
	if err != nil {
		return err
	}
	s.log.Info("snapshot reference released", "snapshot", snapshot)
	return nil
}

// SnapshotRefs returns every retained snapshot and the keys it needs.
func (s *Store) SnapshotRefs(ctx context.Context) (map[string][]string, error) {
	r, _, err := s.readRefs(ctx, "read snapshot references")
	if err != nil {
		return nil, err
	}
	out := make(map[string][]string, len(r.Snapshots))
	for _, snap := range slices.Sorted(maps.Keys(r.Snapshots)) {
		out[snap] = slices.Clone(r.Snapshots[snap].Keys)
	}
	return out, nil
}
