package daemon

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/gitsource"
	"github.com/atrest-io/atrest/keystore"
	"github.com/atrest-io/atrest/reconciler"
)

// stallCluster is a cluster whose status and reconcile the test sets.
type stallCluster struct {
	status     reconciler.Status
	err        error // what ReconcileUntil returns
	reconciles int

	drills     []*etcdsnap.DrillReport // what DrillDue returns
	drillErr   error
	drillEvery []time.Duration // each DrillDue call's interval
}

func (c *stallCluster) ImportOutsideKeys(context.Context) ([]reconciler.OutsideKey, error) {
	return nil, nil
}
func (c *stallCluster) DrillDue(_ context.Context, every time.Duration, _ time.Time) ([]*etcdsnap.DrillReport, error) {
	c.drillEvery = append(c.drillEvery, every)
	return c.drills, c.drillErr
}
func (c *stallCluster) Status(context.Context, reconciler.Desired) (*reconciler.Status, error) {
	st := c.status
	return &st, nil
}
func (c *stallCluster) ReconcileUntil(context.Context, <-chan struct{}, reconciler.Desired) (*reconciler.Result, error) {
	c.reconciles++
	return &reconciler.Result{}, c.err
}
func (c *stallCluster) PutDaemonState(context.Context, keystore.DaemonState) error { return nil }
func (c *stallCluster) DaemonStates(context.Context) ([]keystore.DaemonState, error) {
	return nil, nil
}
func (c *stallCluster) ForgetDaemon(context.Context, string) error { return nil }
func (c *stallCluster) Close()                                     {}

// eventLog records the daemon's events as "Type Reason: message".
type eventLog []string

func (e *eventLog) Event(eventType, reason, message string) {
	*e = append(*e, eventType+" "+reason+": "+message)
}

// count counts the events that start with s ("Type Reason", or more of
// the message).
func (e eventLog) count(s string) int {
	n := 0
	for _, x := range e {
		if strings.HasPrefix(x, s) {
			n++
		}
	}
	return n
}

func TestStalls(t *testing.T) {
	cfg, err := cluster.Parse("cluster.yml", []byte("nodes:\n- address: 127.0.0.1\n  user: root\n  role: [controlplane, etcd, worker]\nservices:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	pol := policy(t, "")
	stall := &keystore.Stall{Reason: reconciler.ReasonStepFailedRepeatedly, Message: "deploy failed 3 times", Since: time.Now()}
	tests := []struct {
		name       string
		status     reconciler.Status
		err        error
		reason     string
		reconciles int
		result     string // for no stall: the result, resultFailed unless set
	}{
		{name: "standing stall: nothing runs", status: reconciler.Status{Stall: stall, Plan: []string{"deploy"}}, reason: reconciler.ReasonStepFailedRepeatedly},
		{name: "refusal: the reconcile recovers, then refuses", status: reconciler.Status{PlanError: "node1 not ready", PlanReason: reconciler.ReasonNodeNotReady},
			err: &reconciler.Refusal{Reason: reconciler.ReasonNodeNotReady, Message: "node1 not ready"}, reason: reconciler.ReasonNodeNotReady, reconciles: 1},
		{name: "refusal lifted by the recovery", status: reconciler.Status{PlanError: "node1 not ready", PlanReason: reconciler.ReasonNodeNotReady}, reconciles: 1, result: resultChanged},
		{name: "unobservable node: the reconcile recovers", status: reconciler.Status{PlanError: "observe the nodes: no container kube-apiserver"},
			err: errors.New("recover: ssh: unreachable"), reconciles: 1},
		{name: "a step stalls", status: reconciler.Status{Plan: []string{"deploy"}},
			err: &reconciler.StallError{Stall: *stall, Err: errors.New("deploy: rolled back")}, reason: reconciler.ReasonStepFailedRepeatedly, reconciles: 1},
		{name: "transient failure backs off", status: reconciler.Status{Plan: []string{"deploy"}}, err: errors.New("ssh: unreachable"), reconciles: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := &stallCluster{status: tt.status, err: tt.err}
			var events eventLog
			d, err := New(Config{
				Source:   nopSource{},
				Parse:    func(context.Context, *gitsource.Revision) (*Desired, error) { return nil, errors.New("unused") },
				Open:     func(context.Context, *Desired, Hooks) (Cluster, error) { return cl, nil },
				Interval: time.Minute, MaxBackoff: 10 * time.Minute, Events: &events,
			})
			if err != nil {
				t.Fatal(err)
			}
			d.desired = &Desired{Config: cfg, Policy: pol, Revision: "r1"}
			var wait time.Duration
			for range 3 {
				wait = d.cycle(context.Background(), nil, "test")
			}
			st := d.State()
			if cl.reconciles != 3*tt.reconciles {
				t.Errorf("%d reconciles in 3 cycles, want %d", cl.reconciles, 3*tt.reconciles)
			}
			metrics := scrape(t, d)
			rec := httptest.NewRecorder()
			d.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
			if rec.Code != http.StatusOK {
				t.Errorf("/readyz %d: a stalled daemon must stay ready for the webhook", rec.Code)
			}
			if tt.result != "" {
				if st.Stalled != "" || st.Result != tt.result || st.Failures != 0 || wait != time.Minute {
					t.Errorf("state stalled %q result %s failures %d wait %s; want none, %s, 0, the interval", st.Stalled, st.Result, st.Failures, wait, tt.result)
				}
				return
			}
			if tt.reason == "" {
				if st.Stalled != "" || st.Result != resultFailed || st.Failures != 3 || wait != Backoff(time.Minute, 10*time.Minute, 3) || strings.Contains(metrics, "atrest_stalled{") {
					t.Errorf("transient: stalled %q, result %s, failures %d, wait %s; want none, failed, 3, the backoff", st.Stalled, st.Result, st.Failures, wait)
				}
				if events.count("Warning Stalled") != 0 {
					t.Errorf("events %v for a transient failure, want no stall", events)
				}
				return
			}
			if st.Stalled != tt.reason || st.Result != resultStalled || st.Failures != 0 || wait != time.Minute {
				t.Errorf("state stalled %q result %s failures %d wait %s; want %s, stalled, 0, the interval", st.Stalled, st.Result, st.Failures, wait, tt.reason)
			}
			// One event for the stall, not one per cycle it lasts.
			if events.count("Warning Stalled") != 1 {
				t.Errorf("events %v, want one Warning Stalled in 3 stalled cycles", events)
			}
			if want := `atrest_stalled{reason="` + tt.reason + `"} 1`; !strings.Contains(metrics, want) {
				t.Errorf("metrics lack %s", want)
			}
			if !strings.Contains(rec.Body.String(), "stalled: "+tt.reason) {
				t.Errorf("/readyz says %q", rec.Body)
			}
		})
	}
}

// TestDrills: every cycle drills what is due before it observes; the
// verdicts are metrics, and a snapshot that fails its drill stalls the
// daemon by its reason, while a drill that cannot run changes nothing.
func TestDrills(t *testing.T) {
	cfg, err := cluster.Parse("cluster.yml", []byte("nodes:\n- address: 127.0.0.1\n  user: root\n  role: [controlplane, etcd, worker]\nservices:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	proven := time.Unix(1_800_000_000, 0)
	good := reconciler.SnapshotProof{Name: "s-good", Verdict: etcdsnap.Restorable, Proven: proven}
	bad := reconciler.SnapshotProof{Name: "s-bad", Verdict: etcdsnap.NotRestorable, Proven: proven, Summary: "1 of 3 objects fail"}
	never := reconciler.SnapshotProof{Name: "s-new"}
	tests := []struct {
		name    string
		cl      stallCluster
		stalled string
		result  string
		metrics []string
		absent  []string
		events  []string // each at least once
	}{
		{name: "all proven", cl: stallCluster{
			drills: []*etcdsnap.DrillReport{{Verdict: etcdsnap.Restorable}},
			status: reconciler.Status{Snapshots: []reconciler.SnapshotProof{good, never}},
		}, result: resultInSync, metrics: []string{
			`atrest_snapshot_restorable{snapshot="s-good"} 1`,
			`atrest_snapshot_proven_timestamp_seconds{snapshot="s-good"} 1.8e+09`,
			`atrest_snapshot_drills_total{verdict="Restorable"} 3`,
		}, absent: []string{`snapshot="s-new"`}},
		{name: "a snapshot fails: stalled", cl: stallCluster{
			drills: []*etcdsnap.DrillReport{{Snapshot: "s-bad", Verdict: etcdsnap.NotRestorable}},
			status: reconciler.Status{Snapshots: []reconciler.SnapshotProof{good, bad}, Plan: []string{"rotate"},
				Stall: &keystore.Stall{Reason: reconciler.ReasonSnapshotNotRestorable, Message: "s-bad fails", Since: proven}},
		}, stalled: reconciler.ReasonSnapshotNotRestorable, result: resultStalled, metrics: []string{
			`atrest_snapshot_restorable{snapshot="s-bad"} 0`,
			`atrest_snapshot_restorable{snapshot="s-good"} 1`,
			`atrest_snapshot_drills_total{verdict="NotRestorable"} 3`,
			`atrest_stalled{reason="SnapshotNotRestorable"} 1`,
		}, events: []string{"Warning DrillFailed: snapshot s-bad: NotRestorable", "Warning Stalled"}},
		{name: "Vault unreachable: the cycle goes on", cl: stallCluster{
			drillErr: errors.New("vault: connection refused"),
			status:   reconciler.Status{Snapshots: []reconciler.SnapshotProof{good}},
		}, result: resultInSync, metrics: []string{`atrest_snapshot_restorable{snapshot="s-good"} 1`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := &tt.cl
			var events eventLog
			d, err := New(Config{
				Source:   nopSource{},
				Parse:    func(context.Context, *gitsource.Revision) (*Desired, error) { return nil, errors.New("unused") },
				Open:     func(context.Context, *Desired, Hooks) (Cluster, error) { return cl, nil },
				Interval: time.Minute, MaxBackoff: 10 * time.Minute, DrillInterval: 6 * time.Hour, Events: &events,
			})
			if err != nil {
				t.Fatal(err)
			}
			d.desired = &Desired{Config: cfg, Policy: policy(t, ""), Revision: "r1"}
			for range 3 {
				d.cycle(context.Background(), nil, "test")
			}
			if len(cl.drillEvery) != 3 || cl.drillEvery[0] != 6*time.Hour {
				t.Errorf("DrillDue calls %v, want 3 at the setting's 6h", cl.drillEvery)
			}
			if cl.reconciles != 0 {
				t.Errorf("%d reconciles, want none", cl.reconciles)
			}
			st := d.State()
			if st.Stalled != tt.stalled || st.Result != tt.result {
				t.Errorf("stalled %q result %s, want %q %s", st.Stalled, st.Result, tt.stalled, tt.result)
			}
			m := scrape(t, d)
			for _, want := range tt.metrics {
				if !strings.Contains(m, want) {
					t.Errorf("metrics lack %s", want)
				}
			}
			for _, no := range tt.absent {
				if strings.Contains(m, no) {
					t.Errorf("metrics hold %s", no)
				}
			}
			// The drill policy, for the alert on proofs grown old.
			if !strings.Contains(m, "atrest_snapshot_drill_interval_seconds 21600") || !strings.Contains(m, "atrest_heartbeat_timestamp_seconds ") {
				t.Errorf("metrics lack the drill interval or the heartbeat:\n%s", m)
			}
			for _, want := range tt.events {
				if events.count(want) == 0 {
					t.Errorf("events %v, want %s", events, want)
				}
			}
			if len(tt.events) == 0 && len(events) > 0 {
				t.Errorf("events %v, want none", events)
			}
		})
	}
}
