package etcdsnap

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// Prune removes cluster's snapshots beyond its newest retention ones, except
// those keep returns true for (the snapshot taken before a transition that
// has not finished: keep it until the transition is done), and releases
// their key references. It returns the names it removed, oldest last.
//
// Each snapshot goes in the order that is safe to interrupt: first its
// file (from then on nothing needs its keys), then its key reference, and
// its manifest last, so that a Prune interrupted or failing midway finds
// the snapshot again next time and finishes the job. One failure does not
// stop the others; the error joins them all.
//
// Another cluster's snapshots in the same store are never counted or
// removed. A manifest that names no cluster (written before atrest
// recorded it) is cluster's only when cluster's keyring references it
// (refs implements SnapshotRefs); others are left for a person.
func Prune(ctx context.Context, store Store, refs KeyRefs, cluster string, retention int, keep func(Manifest) bool) ([]string, error) {
	if retention < 1 {
		return nil, fmt.Errorf("prune snapshots: retention %d: keep at least 1 snapshot", retention)
	}
	all, err := List(ctx, store)
	if err != nil {
		return nil, fmt.Errorf("prune snapshots: %w", err)
	}
	owned, err := ownedBy(ctx, all, refs, cluster)
	if err != nil {
		return nil, fmt.Errorf("prune snapshots: %w", err)
	}
	victims := pruneCandidates(owned, retention, keep)
	for _, m := range victims {
		if len(m.Keys) > 0 && refs == nil {
			return nil, fmt.Errorf("prune snapshots: snapshot %s references keys and there is no keystore to release them in", m.Name)
		}
	}
	var removed []string
	var errs []error
	for _, m := range victims {
		if err := remove(ctx, store, refs, m); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, m.Name)
	}
	return removed, errors.Join(errs...)
}

// refLister lists the snapshots a keyring references (keystore.Store).
type refLister interface {
	SnapshotRefs(ctx context.Context) (map[string][]string, error)
}

// ownedBy returns cluster's manifests of all, in order.
func ownedBy(ctx context.Context, all []Manifest, refs KeyRefs, cluster string) ([]Manifest, error) {
	var referenced map[string][]string
	if l, ok := refs.(refLister); ok && slices.ContainsFunc(all, func(m Manifest) bool { return m.Cluster == "" }) {
		var err error
		if referenced, err = l.SnapshotRefs(ctx); err != nil {
			return nil, fmt.Errorf("which unlabelled snapshots are this cluster's: %w", err)
		}
	}
	var out []Manifest
	for _, m := range all {
		_, ours := referenced[m.Name]
		if m.Cluster == cluster || (m.Cluster == "" && ours) {
			out = append(out, m)
		}
	}
	return out, nil
}

// pruneCandidates returns what Prune removes from all (newest first).
// Retention counts the snapshots taken before a change (and by hand); the
// snapshot after a change is kept, uncounted, only while it is the newest:
// once a newer one exists, that one holds a later state under the same
// keys, so the older adds no way back.
func pruneCandidates(all []Manifest, retention int, keep func(Manifest) bool) []Manifest {
	var out []Manifest
	counted := 0
	for i, m := range all {
		switch {
		case m.IsAfter() && i == 0:
		case keep != nil && keep(m):
		case m.IsAfter():
			out = append(out, m)
		case counted < retention:
			counted++
		default:
			out = append(out, m)
		}
	}
	return out
}

func remove(ctx context.Context, store Store, refs KeyRefs, m Manifest) error {
	// The proof goes first: a proof without its snapshot would vouch for
	// nothing.
	if err := store.Remove(ctx, drillObject(m.Name)); err != nil {
		return fmt.Errorf("prune snapshot %s: remove %s: %w", m.Name, drillObject(m.Name), err)
	}
	if err := store.Remove(ctx, dbObject(m.Name)); err != nil {
		return fmt.Errorf("prune snapshot %s: remove %s: %w", m.Name, dbObject(m.Name), err)
	}
	if len(m.Keys) > 0 {
		if err := refs.ReleaseSnapshotRef(ctx, m.Name); err != nil {
			return fmt.Errorf("prune snapshot %s: release its key reference: %w", m.Name, err)
		}
	}
	if err := store.Remove(ctx, manifestObject(m.Name)); err != nil {
		return fmt.Errorf("prune snapshot %s: remove %s: %w", m.Name, manifestObject(m.Name), err)
	}
	return nil
}

// Remove removes snapshot name of cluster (its file, its drill report and
// its manifest) and releases its key references, as Prune does, whatever
// the retention: a snapshot an operator knows is lost (its key destroyed,
// its file corrupted) must not stand as a safety net.
func Remove(ctx context.Context, store Store, refs KeyRefs, cluster, name string) error {
	m, err := ReadManifest(ctx, store, name)
	if err != nil {
		return err
	}
	if err := m.BelongsTo(cluster); err != nil {
		return err
	}
	return remove(ctx, store, refs, m)
}

// KeepTransitions is a keep function for Prune: it keeps the snapshots
// taken before any of the given transitions (journal ids), which have not
// finished yet.
func KeepTransitions(unfinished ...string) func(Manifest) bool {
	return func(m Manifest) bool {
		return m.Transition != "" && slices.Contains(unfinished, m.Transition)
	}
}
