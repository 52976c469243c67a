package reconciler

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/keystore"
)

func TestDrillDue(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	every := 24 * time.Hour
	tests := []struct {
		name string
		p    SnapshotProof
		want bool
	}{
		{"never drilled", SnapshotProof{}, true},
		{"proven an hour ago", SnapshotProof{Verdict: etcdsnap.Restorable, Proven: now.Add(-time.Hour)}, false},
		{"proven a day ago", SnapshotProof{Verdict: etcdsnap.Restorable, Proven: now.Add(-every)}, true},
		{"unproven an hour ago (KMS)", SnapshotProof{Verdict: etcdsnap.Unproven, Proven: now.Add(-time.Hour)}, false},
		{"not restorable a minute ago: again, a key put back lifts it", SnapshotProof{Verdict: etcdsnap.NotRestorable, Proven: now.Add(-time.Minute)}, true},
	}
	for _, tt := range tests {
		if got := drillDue(tt.p, every, now); got != tt.want {
			t.Errorf("%s: due %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestSnapshotStall(t *testing.T) {
	t1 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	good := SnapshotProof{Name: "s-good", Verdict: etcdsnap.Restorable, Proven: t1}
	kms := SnapshotProof{Name: "s-kms", Verdict: etcdsnap.Unproven, Proven: t1}
	never := SnapshotProof{Name: "s-new"}
	bad := func(name string, at time.Time) SnapshotProof {
		return SnapshotProof{Name: name, Verdict: etcdsnap.NotRestorable, Proven: at, Summary: "NotRestorable: 1 objects decrypted, 2 failed"}
	}
	tests := []struct {
		name   string
		proofs []SnapshotProof
		want   []string // in the message; nil: no stall
		since  time.Time
	}{
		{"none kept", nil, nil, time.Time{}},
		{"restorable, unproven or never drilled: no stall", []SnapshotProof{good, kms, never}, nil, time.Time{}},
		{"one fails", []SnapshotProof{good, bad("s-bad", t1.Add(time.Hour))}, []string{"s-bad (NotRestorable: 1 objects decrypted, 2 failed)", "atrest snapshot remove", "verify --decrypt"}, t1.Add(time.Hour)},
		{"two fail: both named, since the first", []SnapshotProof{bad("s-2", t1.Add(2*time.Hour)), bad("s-1", t1.Add(time.Hour))}, []string{"s-2 (", "s-1 ("}, t1.Add(time.Hour)},
	}
	for _, tt := range tests {
		st := snapshotStall(tt.proofs)
		if tt.want == nil {
			if st != nil {
				t.Errorf("%s: stall %+v, want none", tt.name, st)
			}
			continue
		}
		if st == nil || st.Reason != ReasonSnapshotNotRestorable || !st.Since.Equal(tt.since) {
			t.Errorf("%s: stall %+v, want %s since %s", tt.name, st, ReasonSnapshotNotRestorable, tt.since)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(st.Message, w) {
				t.Errorf("%s: message %q lacks %q", tt.name, st.Message, w)
			}
		}
	}
}

// TestKeyUnavailable: Vault out of reach proves nothing of a snapshot; a
// key Vault answers for is the snapshot's problem.
func TestKeyUnavailable(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("read key k-1: %w", keystore.ErrUnavailable), true},
		{fmt.Errorf("read key k-1: %w", keystore.ErrSealed), true},
		{errors.New("read key k-1: secret not found"), false},
		{errors.New("read key k-1: permission denied"), false},
	} {
		if got := keyUnavailable(tt.err); got != tt.want {
			t.Errorf("keyUnavailable(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
