package reconciler

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

	kmsservice "k8s.io/kms/pkg/service"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/keystore"
)

// ReasonSnapshotNotRestorable: a kept snapshot failed its decryption drill
// (a key it needs is gone from Vault or denied, its file is corrupted, an
// object decrypts to nothing). It stands until a drill passes again or
// the snapshot is removed (`atrest snapshot remove`).
const ReasonSnapshotNotRestorable = "SnapshotNotRestorable"

// SnapshotProof is a kept snapshot and what its last drill proved.
type SnapshotProof struct {
	Name   string    `json:"name"`
	Time   time.Time `json:"time"`
	Reason string    `json:"reason"`
	// Verdict is the drill's (etcdsnap.Restorable, NotRestorable,
	// Unproven), "" when the snapshot was never drilled.
	Verdict string `json:"verdict,omitempty"`
	// Proven is when the drill ran.
	Proven  time.Time `json:"proven,omitzero"`
	Summary string    `json:"summary,omitempty"`
	// Failures are the first objects that failed, by name only.
	Failures []etcdsnap.DrillFailure `json:"failures,omitempty"`
}

// Restorable says whether the last drill proved the snapshot restorable.
func (p SnapshotProof) Restorable() bool { return p.Verdict == etcdsnap.Restorable }

// maxProofFailures is how many failed objects status shows per snapshot;
// `atrest snapshot verify --decrypt` lists more.
const maxProofFailures = 5

// ownSnapshots lists the cluster's snapshots, newest first.
func (r *Reconciler) ownSnapshots(ctx context.Context) ([]etcdsnap.Manifest, error) {
	if r.Snapshots == nil {
		return nil, nil
	}
	ms, err := etcdsnap.List(ctx, r.Snapshots)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(ms, func(m etcdsnap.Manifest) bool { return m.Cluster != r.Cluster && m.Cluster != "" }), nil
}

// Proofs returns every kept snapshot of the cluster, newest first, with
// its last drill report. It drills nothing.
func (r *Reconciler) Proofs(ctx context.Context) ([]SnapshotProof, error) {
	ms, err := r.ownSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	var out []SnapshotProof
	for _, m := range ms {
		p := SnapshotProof{Name: m.Name, Time: m.Time, Reason: m.Reason}
		rep, err := etcdsnap.ReadDrillReport(ctx, r.Snapshots, m.Name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			// A report that cannot be read (two drills writing at once, a
			// crash) proves nothing: the snapshot is drilled again.
			p.Summary = "its last drill report cannot be read: " + err.Error()
		default:
			p.Verdict, p.Proven, p.Summary = rep.Verdict, rep.Time, rep.Summary()
			p.Failures = rep.Failures[:min(len(rep.Failures), maxProofFailures)]
		}
		out = append(out, p)
	}
	return out, nil
}

// drillDue says whether p must be drilled at now: never drilled, proven
// longer than every ago, or not proven restorable (a key put back in
// Vault lifts the stall at the next cycle).
func drillDue(p SnapshotProof, every time.Duration, now time.Time) bool {
	return p.Verdict == "" || p.Verdict == etcdsnap.NotRestorable || now.Sub(p.Proven) >= every
}

// DrillDue drills every kept snapshot of the cluster that is due
// (drillDue), oldest proof first, and records each report beside its
// snapshot. It returns the reports it made. A drill that cannot run (Vault
// unreachable or sealed) stops it with an error: the next call drills
// what is left.
func (r *Reconciler) DrillDue(ctx context.Context, every time.Duration, now time.Time) ([]*etcdsnap.DrillReport, error) {
	proofs, err := r.Proofs(ctx)
	if err != nil {
		return nil, fmt.Errorf("drill snapshots: %w", err)
	}
	var reps []*etcdsnap.DrillReport
	for _, p := range proofs {
		if !drillDue(p, every, now) {
			continue
		}
		rep, err := r.Drill(ctx, p.Name)
		if err != nil {
			return reps, err
		}
		reps = append(reps, rep)
	}
	return reps, nil
}

// Drill drills snapshot name with the keys in Vault and records its report
// beside it (etcdsnap.Drill, WriteDrillReport).
func (r *Reconciler) Drill(ctx context.Context, name string) (*etcdsnap.DrillReport, error) {
	if r.Snapshots == nil {
		return nil, errors.New("drill: no snapshot directory configured (settings snapshots.dir)")
	}
	opts := etcdsnap.DrillOptions{Transient: keyUnavailable}
	if r.KMS != nil && r.KMS.Service != nil {
		opts.KMS = map[string]kmsservice.Service{cluster.TransitProviderName: r.KMS.Service}
	}
	rep, err := etcdsnap.Drill(ctx, r.Snapshots, name, r.Keys, opts)
	if err != nil {
		return nil, err
	}
	if err := etcdsnap.WriteDrillReport(ctx, r.Snapshots, rep); err != nil {
		return rep, err
	}
	log := r.logger().With("snapshot", name, "verdict", rep.Verdict, "objects", rep.Total, "failed", rep.Failed, "seconds", fmt.Sprintf("%.2f", rep.Seconds))
	if rep.Verdict == etcdsnap.NotRestorable {
		log.Error("snapshot drill: the snapshot cannot be restored with the keys in Vault", "summary", rep.Summary())
	} else {
		log.Info("snapshot drill", "summary", rep.Summary())
	}
	return rep, nil
}

// RemoveSnapshot removes the cluster's snapshot name, its drill report
// and its key references (etcdsnap.Remove), whatever the retention: a
// snapshot known lost must not stand as a safety net. It refuses the
// snapshot of the transition in flight, the one that undoes it.
func (r *Reconciler) RemoveSnapshot(ctx context.Context, name string) error {
	if r.Snapshots == nil {
		return errors.New("remove snapshot: no snapshot directory configured (settings snapshots.dir)")
	}
	kr, err := r.Keys.Keyring(ctx)
	if err != nil {
		return fmt.Errorf("remove snapshot %s: %w", name, err)
	}
	if j := kr.Journal; j != nil && j.Snapshot == name {
		return fmt.Errorf("remove snapshot %s: the transition in flight (%s) was started after it and it is the one to restore if that goes wrong; finish the transition first", name, j.Transition)
	}
	if err := etcdsnap.Remove(ctx, r.Snapshots, r.Keys, r.Cluster, name); err != nil {
		return fmt.Errorf("remove snapshot %s: %w", name, err)
	}
	r.logger().Warn("snapshot removed by hand", "snapshot", name)
	return nil
}

// keyUnavailable: a key fetch that says nothing of the snapshot.
func keyUnavailable(err error) bool {
	return errors.Is(err, keystore.ErrUnavailable) || transient(err)
}

// snapshotStall is the stall that kept snapshots failing their drill
// stand as: no change while the safety net has a hole, since each
// transition is only as safe as the snapshots that can undo it. It is not
// recorded in the keyring: it stands exactly while a report says so.
func snapshotStall(proofs []SnapshotProof) *keystore.Stall {
	var bad []string
	var since time.Time
	for _, p := range proofs {
		if p.Verdict != etcdsnap.NotRestorable {
			continue
		}
		bad = append(bad, p.Name+" ("+p.Summary+")")
		if since.IsZero() || p.Proven.Before(since) {
			since = p.Proven
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return &keystore.Stall{
		Reason: ReasonSnapshotNotRestorable, Since: since,
		Message: "kept snapshots fail their decryption drill: " + strings.Join(bad, "; ") +
			": put the key back in Vault (or its policy), or remove the snapshot with `atrest snapshot remove NAME`; `atrest snapshot verify --decrypt NAME` names every object",
	}
}
