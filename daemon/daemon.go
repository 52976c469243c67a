// Package daemon is `atrest run`: it keeps a cluster's encryption at rest
// equal to what Git says, forever. Each cycle polls the Git source, observes
// the cluster (nodes, census, keyring), and reconciles when the two differ:
// a new revision, drift (a node edited by hand, `rke up` run by someone), a
// scheduled rotation that is due, or a transition a crash left in the
// journal. One goroutine runs the cycles, so two never overlap; the
// keystore lock keeps replicas and the CLI from acting at once.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/robfig/cron/v3"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/gitsource"
	"github.com/atrest-io/atrest/keystore"
	"github.com/atrest-io/atrest/reconciler"
)

// Source is the Git source (gitsource.Source).
type Source interface {
	Poll(ctx context.Context) (*gitsource.Revision, bool, error)
	Stats() gitsource.Stats
}

// Desired is one revision's cluster.yml and atrest.yaml.
type Desired struct {
	Config   *cluster.Config
	Policy   *cluster.Policy
	Revision string
}

// Cluster is a cluster opened for one Desired: what a cycle drives.
type Cluster interface {
	// ImportOutsideKeys stores in Vault the keys an outside writer left
	// on the nodes (reconciler.Reconciler.ImportOutsideKeys).
	ImportOutsideKeys(ctx context.Context) ([]reconciler.OutsideKey, error)
	// DrillDue proves the kept snapshots due a drill restorable
	// (reconciler.Reconciler.DrillDue).
	DrillDue(ctx context.Context, every time.Duration, now time.Time) ([]*etcdsnap.DrillReport, error)
	Status(ctx context.Context, d reconciler.Desired) (*reconciler.Status, error)
	ReconcileUntil(ctx context.Context, stop <-chan struct{}, d reconciler.Desired) (*reconciler.Result, error)
	PutDaemonState(ctx context.Context, st keystore.DaemonState) error
	DaemonStates(ctx context.Context) ([]keystore.DaemonState, error)
	ForgetDaemon(ctx context.Context, instance string) error
	Close()
}

// Costs is what observing a cluster has cost so far, as an opened Cluster
// counts it (CostReporter): bytes read from etcd, full censuses taken,
// live census events applied and cross-check mismatches.
type Costs struct {
	EtcdReadBytes, EtcdSnapshotBytes             int64
	FullCensuses, CensusEvents, CensusMismatches int64
}

// CostReporter is a Cluster that counts what it costs.
type CostReporter interface {
	Costs() Costs
}

// CensusChecker is a Cluster whose census is kept live (from etcd's
// watch): it cross-checks it with a full census now and then.
type CensusChecker interface {
	// CrossCheck compares the live census with a full one, corrects it,
	// and says how many objects it had wrong.
	CrossCheck(ctx context.Context) (int, error)
}

// Event types, as Kubernetes names them.
const (
	EventNormal  = "Normal"
	EventWarning = "Warning"
)

// Reasons of the events the daemon records: stable and CamelCase, for
// `kubectl get events --field-selector reason=...` and alerts.
const (
	ReasonTransitionStarted   = "TransitionStarted"
	ReasonStepDone            = "StepDone"
	ReasonStepFailed          = "StepFailed"
	ReasonTransitionCompleted = "TransitionCompleted"
	ReasonDriftCorrected      = "DriftCorrected"
	ReasonStalled             = "Stalled"
	ReasonDrillFailed         = "DrillFailed"
)

// Events records what an operator watches with `kubectl get events`:
// transitions, their steps, stalls, drift corrected, drills that failed.
// Messages name steps, keys by name and reasons, never key material.
type Events interface {
	Event(eventType, reason, message string)
}

// forgetAfter is how long a daemon that stopped reporting stays in the
// status: pods get new names at every restart, so their documents would
// otherwise pile up in Vault.
const forgetAfter = 24 * time.Hour

// Hooks are what the daemon wants to hear from an opened Cluster.
type Hooks struct {
	Step     func(transition string, step reconciler.Step, done bool, err error)
	Progress func(resource string, listed, updated int64)
}

// Config is what the daemon needs.
type Config struct {
	Source Source
	// Parse turns a revision into the desired state; an error refuses the
	// revision, and the previous one stays in force. A *gitsource.Error
	// other than ReasonNotDescendant (the ledger or the remote could not
	// answer) refuses nothing: the revision is parsed again at the next
	// poll.
	Parse func(context.Context, *gitsource.Revision) (*Desired, error)
	// Open connects to the cluster d describes.
	Open func(ctx context.Context, d *Desired, h Hooks) (Cluster, error)

	// Interval is how often to poll Git and re-observe the cluster.
	Interval time.Duration
	// MaxBackoff caps the wait after failed cycles.
	MaxBackoff time.Duration
	// Suspend stops changes; the daemon keeps observing and reporting.
	Suspend bool
	// MinRotationInterval is the operator's floor on the gap between two
	// firings of the rotation schedule (settings
	// policy.minRotationInterval): a schedule beyond it is never armed.
	// The planner refuses such a commit before the schedule is looked at;
	// this keeps the cron from waking the loop for it all the same.
	MinRotationInterval time.Duration
	// DrillInterval is how often each kept snapshot is drilled again
	// (settings snapshots.drillInterval; 0: 24h); a new one is drilled at
	// once.
	DrillInterval time.Duration
	// CrossCheckInterval is how often a live census is cross-checked with
	// a full one (settings daemon.censusCrossCheck; 0: 6h).
	CrossCheckInterval time.Duration
	// Events, when set, records Kubernetes events (settings
	// kubernetes.events).
	Events Events
	// WebhookSecret is the webhook's HMAC secret.
	WebhookSecret []byte

	// Instance and Version name this daemon in its state document.
	Instance, Version string
	Logger            *slog.Logger
}

// Reconcile results, as the metrics and the state name them.
const (
	resultInSync    = "in-sync"
	resultChanged   = "changed"
	resultFailed    = "failed"
	resultStalled   = "stalled"
	resultLocked    = "locked"
	resultSuspended = "suspended"
)

// Daemon is a running `atrest run`.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	rand    *rand.Rand

	// pollNow and rotateNow wake the loop: the webhook, the cron schedule.
	pollNow, rotateNow chan struct{}

	// Owned by the loop goroutine.
	desired *Desired
	cluster Cluster
	reopen  bool
	// recheck parses the revision again at the next poll, although it is
	// unchanged: its check could not be made.
	recheck   bool
	failures  int
	cron      *cron.Cron
	cronEntry cron.EntryID
	cronSpec  string
	pruned    bool
	// lastCheck is when the live census was last cross-checked; costs is
	// what the cluster had cost when last read, for the counters' deltas.
	lastCheck time.Time
	costs     Costs
	// inTransition is the transition whose steps run, for its
	// TransitionStarted event; stalledFor the stall last recorded, so that
	// a standing one is one event, not one per cycle.
	inTransition string
	stalledFor   string

	// The webhook's bounds: requests being read, deliveries accepted.
	webhookSlots chan struct{}
	deliveries   deliveries

	// mu guards state, which HTTP handlers read.
	mu    sync.Mutex
	state keystore.DaemonState
	ready string // why not ready; "" once ready
}

// New checks cfg and builds the daemon.
func New(cfg Config) (*Daemon, error) {
	switch {
	case cfg.Source == nil || cfg.Parse == nil || cfg.Open == nil:
		return nil, errors.New("daemon: Source, Parse and Open are required")
	case cfg.Interval <= 0:
		return nil, fmt.Errorf("daemon: the poll interval must be positive, not %s", cfg.Interval)
	}
	if cfg.MaxBackoff < cfg.Interval/4 {
		cfg.MaxBackoff = cfg.Interval / 4
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DrillInterval <= 0 {
		cfg.DrillInterval = 24 * time.Hour
	}
	d := &Daemon{
		cfg: cfg, log: cfg.Logger, metrics: newMetrics(),
		rand:    rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x617472657374)),
		pollNow: make(chan struct{}, 1), rotateNow: make(chan struct{}, 1),
		webhookSlots: make(chan struct{}, maxWebhookInFlight),
		ready:        "the first cycle has not finished",
	}
	d.state = keystore.DaemonState{Instance: cfg.Instance, Version: cfg.Version, Interval: cfg.Interval, Suspended: cfg.Suspend}
	d.metrics.suspended.Set(bool01(cfg.Suspend))
	d.metrics.drillInterval.Set(cfg.DrillInterval.Seconds())
	d.metrics.heartbeat.SetToCurrentTime()
	return d, nil
}

// Handler serves /metrics, /healthz and /readyz.
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		d.mu.Lock()
		why, stalled := d.ready, d.state.Stalled
		d.mu.Unlock()
		if why != "" {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		// A stalled daemon stays ready: it must keep receiving the
		// webhook of the commit that fixes the cause.
		if stalled != "" {
			_, _ = fmt.Fprintf(w, "ok (stalled: %s; see atrest status)\n", stalled)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// WebhookHandler serves the Git webhook (any path).
func (d *Daemon) WebhookHandler() http.Handler { return d.webhookHandler() }

// State returns what the daemon last reported.
func (d *Daemon) State() keystore.DaemonState {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}

func (d *Daemon) trigger(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default: // one wake-up pending is as good as many
	}
}

// Run runs cycles until ctx ends or stop is closed. Closing stop is the
// graceful shutdown: the step in flight finishes and is journaled, the
// lock is released, and Run returns. Ending ctx interrupts the step (the
// journal records it as failed, and the next start resumes it).
func (d *Daemon) Run(ctx context.Context, stop <-chan struct{}) error {
	d.cron = cron.New(cron.WithChain(cron.Recover(cronLogger{d.log}), cron.SkipIfStillRunning(cronLogger{d.log})))
	d.cron.Start()
	defer func() {
		<-d.cron.Stop().Done()
		if d.cluster != nil {
			d.cluster.Close()
		}
	}()
	// The first cycle runs at once: a transition a crash left in the
	// journal resumes before anything else.
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		trigger := ""
		select {
		case <-ctx.Done():
			return nil
		case <-stop:
			return nil
		case <-timer.C:
			trigger = "interval"
		case <-d.pollNow:
			trigger = "webhook"
		case <-d.rotateNow:
			trigger = "schedule"
		}
		wait := d.cycleSafe(ctx, stop, trigger)
		select {
		case <-stop:
			return nil
		default:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(jitter(wait, d.rand))
	}
}

// cycleSafe runs a cycle, turning a panic into a failed cycle: a bug in one
// cycle must not end the daemon, and the journal keeps the state safe.
func (d *Daemon) cycleSafe(ctx context.Context, stop <-chan struct{}, trigger string) (wait time.Duration) {
	defer func() {
		if p := recover(); p != nil {
			d.log.Error("cycle panicked; treated as a failure", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			d.reopen = true
			wait = d.fail(ctx, time.Now(), fmt.Errorf("internal error: %v", p))
		}
	}()
	return d.cycle(ctx, stop, trigger)
}

// cycle is one poll, observe and (when needed) reconcile. It returns the
// wait before the next one.
func (d *Daemon) cycle(ctx context.Context, stop <-chan struct{}, trigger string) time.Duration {
	start := time.Now()
	log := d.log.With("trigger", trigger)
	d.poll(ctx, log)
	if d.desired == nil {
		return d.fail(ctx, start, errors.New("no valid revision from the Git source yet"))
	}
	desired := d.desired
	if d.cluster == nil || d.reopen {
		if d.cluster != nil {
			d.cluster.Close()
			d.cluster = nil
		}
		cl, err := d.cfg.Open(ctx, desired, Hooks{Step: d.onStep, Progress: d.onProgress})
		if err != nil {
			return d.fail(ctx, start, fmt.Errorf("connect to the cluster: %w", err))
		}
		d.cluster, d.reopen = cl, false
		d.costs, d.lastCheck = Costs{}, time.Now()
		if !d.pruned {
			d.pruned = true
			d.forgetGone(ctx, log)
		}
	}
	// First, whatever else this cycle does (stalled, suspended, in
	// sync): a key that a plain `rke up` or a hand edit left on a node is
	// its only copy until it is in Vault.
	outside, err := d.cluster.ImportOutsideKeys(ctx)
	for _, k := range outside {
		d.metrics.outsideKeys.WithLabelValues(k.Node).Inc()
	}
	if err != nil {
		log.Warn("import the keys an outside writer left on the nodes", "err", err)
	}
	// A snapshot is only a safety net once proven: drill before the
	// status reads the verdicts, so a failing one stalls this cycle.
	d.drill(ctx, log)
	d.crossCheck(ctx, log)
	defer d.countCosts()
	want := reconciler.DesiredFrom(desired.Config, desired.Policy, desired.Revision)
	st, err := d.cluster.Status(ctx, want)
	if err != nil {
		return d.fail(ctx, start, fmt.Errorf("observe the cluster: %w", err))
	}
	d.metrics.observeSnapshots(st.Snapshots)
	if st.Stall != nil {
		// A stall changes nothing until the desired state changes or
		// `atrest resume`; observing again each interval sees either.
		return d.stalled(ctx, start, st.Stall.Reason, fmt.Errorf("stalled since %s: %s", st.Stall.Since.UTC().Format(time.RFC3339), st.Stall.Message))
	}
	if st.PlanError != "" {
		err := fmt.Errorf("plan: %s%s", reasonTag(st.PlanReason), st.PlanError)
		if !d.cfg.Suspend && !desired.Policy.Suspend {
			// A node an interrupted run left half swapped is not ready,
			// or cannot be observed, until the reconcile's recovery
			// repairs it; a key material conflict is preserved in Vault
			// before it refuses. So the reconcile runs: it recovers under
			// the lock, then plans again and refuses, or acts.
			res, rerr := d.cluster.ReconcileUntil(ctx, stop, want)
			if rerr == nil {
				d.reopen = true
				if res.Transition != "" {
					log.Info("transition complete", "transition", res.Transition, "revision", desired.Revision, "steps", len(res.Steps), "snapshot", res.Snapshot)
				}
				d.succeed(ctx, start, resultChanged, Rotation{Next: d.State().NextRotation})
				return d.cfg.Interval
			}
			err = rerr
		}
		if reason := reconciler.StallReason(err); reason != "" {
			// A refusal is read-only and lifts itself when the world
			// changes: it needs a person, not a backoff.
			return d.stalled(ctx, start, reason, err)
		}
		if errors.Is(err, keystore.ErrLocked) {
			d.record(ctx, start, resultLocked, err.Error(), Rotation{Next: d.State().NextRotation})
			return d.cfg.Interval
		}
		d.reopen = true
		return d.fail(ctx, start, err)
	}
	rot := RotationAt(desired.Policy, desired.Config.Desired.Mode, st.Keys, st.LastRotation, time.Now())
	d.schedule(desired.Policy, log)
	rotate := false
	if !st.RotationPending && rot.Request() != "" {
		// A commit's own rotate_encryption_key, still pending, comes first;
		// the schedule counts from whichever rotation happens.
		want.RotateRequest, rotate = rot.Request(), true
		log.Info("scheduled rotation due", "scheduled", rot.Due, "schedule", desired.Policy.Schedule)
		d.metrics.rotations.Inc()
	}
	d.metrics.observeStatus(st, rot.Next)
	if len(st.Drift) > 0 {
		log.Warn("drift: the nodes do not run what atrest deployed", "drift", st.Drift, "revision", desired.Revision)
	}
	suspended := d.cfg.Suspend || desired.Policy.Suspend
	d.setSuspended(suspended)
	if len(st.Plan) == 0 && !rotate && st.Journal == nil {
		d.succeed(ctx, start, resultInSync, rot)
		return d.cfg.Interval
	}
	if suspended {
		log.Info("changes pending, but suspended: not acting", "pending", st.Plan, "drift", st.Drift)
		d.succeed(ctx, start, resultSuspended, rot)
		return d.cfg.Interval
	}
	d.mu.Lock()
	d.state.NextRotation = rot.Next.UTC()
	d.mu.Unlock()
	d.publish(ctx)
	if st.Journal != nil {
		log.Info("resuming the transition in the journal", "transition", st.Journal.Transition, "journal_revision", st.Journal.Revision, "revision", desired.Revision)
	}
	res, err := d.cluster.ReconcileUntil(ctx, stop, want)
	switch {
	case errors.Is(err, reconciler.ErrStopped):
		log.Info("stopped between steps for shutdown; the next start resumes", "done", len(res.Steps))
		d.record(ctx, start, resultChanged, "", rot)
		return d.cfg.Interval
	case reconciler.StallReason(err) != "":
		d.reopen = true
		return d.stalled(ctx, start, reconciler.StallReason(err), err)
	case errors.Is(err, keystore.ErrLocked):
		log.Info("another transition holds the lock; trying again next interval", "err", err)
		d.record(ctx, start, resultLocked, err.Error(), rot)
		return d.cfg.Interval
	case err != nil:
		d.reopen = true
		return d.fail(ctx, start, err)
	}
	if res.Transition != "" {
		log.Info("transition complete", "transition", res.Transition, "revision", desired.Revision, "steps", len(res.Steps), "snapshot", res.Snapshot)
		d.event(EventNormal, ReasonTransitionCompleted, "transition %s complete (revision %s): %d steps, snapshot before %s, after %s", res.Transition, d.revision(), len(res.Steps), res.Snapshot, res.After)
		if len(st.Drift) > 0 {
			d.event(EventNormal, ReasonDriftCorrected, "drift corrected: %s", strings.Join(st.Drift, "; "))
		}
	}
	d.inTransition = ""
	// Report what the cluster is now, not what it was.
	if after, err := d.cluster.Status(ctx, want); err == nil {
		rot = RotationAt(desired.Policy, desired.Config.Desired.Mode, after.Keys, after.LastRotation, time.Now())
		d.metrics.observeStatus(after, rot.Next)
	}
	d.succeed(ctx, start, resultChanged, rot)
	return d.cfg.Interval
}

// drill drills the kept snapshots that are due. A drill that cannot run
// (Vault unreachable) proves nothing either way: the snapshot stays due and
// the next cycle tries again; the cycle goes on meanwhile.
func (d *Daemon) drill(ctx context.Context, log *slog.Logger) {
	reps, err := d.cluster.DrillDue(ctx, d.cfg.DrillInterval, time.Now())
	d.metrics.heartbeat.SetToCurrentTime()
	for _, r := range reps {
		d.metrics.drills.WithLabelValues(r.Verdict).Inc()
		if r.Verdict == etcdsnap.NotRestorable {
			d.event(EventWarning, ReasonDrillFailed, "snapshot %s: %s", r.Snapshot, r.Summary())
		}
	}
	if err != nil {
		log.Warn("drill the kept snapshots", "err", err)
	}
}

// crossCheck compares the live census with a full census of etcd, once
// every CrossCheckInterval.
func (d *Daemon) crossCheck(ctx context.Context, log *slog.Logger) {
	cc, ok := d.cluster.(CensusChecker)
	every := d.cfg.CrossCheckInterval
	if every <= 0 {
		every = 6 * time.Hour
	}
	if !ok || time.Since(d.lastCheck) < every {
		return
	}
	d.lastCheck = time.Now()
	wrong, err := cc.CrossCheck(ctx)
	if err != nil {
		log.Warn("cross-check the live census", "err", err)
		return
	}
	if wrong > 0 {
		log.Warn("the live census disagreed with a full census of etcd, and was corrected", "objects", wrong)
	}
}

// countCosts adds what the cluster cost since it was last read to the
// counters.
func (d *Daemon) countCosts() {
	cr, ok := d.cluster.(CostReporter)
	if !ok {
		return
	}
	now := cr.Costs()
	was := d.costs
	d.costs = now
	m := d.metrics
	m.etcdRead.WithLabelValues("census").Add(float64(max(0, now.EtcdReadBytes-was.EtcdReadBytes)))
	m.etcdRead.WithLabelValues("snapshot").Add(float64(max(0, now.EtcdSnapshotBytes-was.EtcdSnapshotBytes)))
	m.fullCensuses.Add(float64(max(0, now.FullCensuses-was.FullCensuses)))
	m.censusEvents.Add(float64(max(0, now.CensusEvents-was.CensusEvents)))
	m.censusMismatches.Add(float64(max(0, now.CensusMismatches-was.CensusMismatches)))
}

// event records an event, when events are on.
func (d *Daemon) event(eventType, reason, format string, args ...any) {
	if d.cfg.Events != nil {
		d.cfg.Events.Event(eventType, reason, fmt.Sprintf(format, args...))
	}
}

// revision is the revision in force, short.
func (d *Daemon) revision() string {
	if d.desired == nil {
		return ""
	}
	return d.desired.Revision[:min(len(d.desired.Revision), 12)]
}

// reasonTag prefixes a refusal's message with its reason: "[EtcdPrefixMismatch] ".
func reasonTag(reason string) string {
	if reason == "" {
		return ""
	}
	return "[" + reason + "] "
}

// forgetGone removes the state of daemons silent for forgetAfter.
func (d *Daemon) forgetGone(ctx context.Context, log *slog.Logger) {
	states, err := d.cluster.DaemonStates(ctx)
	if err != nil {
		log.Warn("read the daemons' state", "err", err)
		return
	}
	for _, st := range states {
		if st.Instance == d.cfg.Instance || time.Since(st.Heartbeat) < forgetAfter {
			continue
		}
		if err := d.cluster.ForgetDaemon(ctx, st.Instance); err != nil {
			log.Warn("forget a daemon gone for a day", "instance", st.Instance, "err", err)
			continue
		}
		log.Info("forgot a daemon gone for a day", "instance", st.Instance, "last_seen", st.Heartbeat)
	}
}

// poll asks the Git source for the revision and parses a new one.
func (d *Daemon) poll(ctx context.Context, log *slog.Logger) {
	before := d.cfg.Source.Stats()
	start := time.Now()
	rev, changed, err := d.cfg.Source.Poll(ctx)
	took := time.Since(start)
	switch {
	case err != nil:
		d.metrics.observeGit("failed", took, before, d.cfg.Source.Stats())
		log.Warn("git poll failed; the revision in force stays", "err", err)
		return
	case !changed && d.desired != nil && !d.recheck:
		d.metrics.observeGit("unchanged", took, before, d.cfg.Source.Stats())
		return
	}
	d.metrics.observeGit("changed", took, before, d.cfg.Source.Stats())
	if d.desired != nil && rev.Commit == d.desired.Revision {
		// Back to the revision in force (a refused one undone): nothing is
		// refused any more.
		d.metrics.refused.Set(0)
		d.mu.Lock()
		d.state.Refused = ""
		d.mu.Unlock()
		return
	}
	next, err := d.cfg.Parse(ctx, rev)
	d.recheck = waiting(err)
	if d.recheck {
		log.Warn("revision not checked yet: the revision in force stays, and the next poll checks again", "revision", rev.Commit, "err", err)
		return
	}
	if err != nil {
		log.Error("revision refused: the previous one stays in force", "revision", rev.Commit, "err", err)
		d.metrics.refused.Set(1)
		d.mu.Lock()
		d.state.Refused = fmt.Sprintf("%s: %v", rev.Commit, err)
		d.mu.Unlock()
		return
	}
	log.Info("new revision in force", "revision", rev.Commit, "subject", rev.Subject, "mode", string(next.Config.Desired.Mode))
	d.metrics.refused.Set(0)
	d.metrics.revision.Reset()
	d.metrics.revision.WithLabelValues(rev.Commit, rev.Ref).Set(1)
	d.desired = next
	d.reopen = true
	d.mu.Lock()
	d.state.Revision, d.state.Refused = rev.Commit, ""
	d.mu.Unlock()
}

// waiting says whether a Parse error is no answer about the revision (the
// ledger in Vault or the Git remote did not answer), rather than its
// refusal.
func waiting(err error) bool {
	r := gitsource.ReasonOf(err)
	return r != "" && r != gitsource.ReasonNotDescendant
}

// schedule keeps the cron entry equal to the policy's schedule: cron wakes
// the loop at each scheduled time, and the loop decides (from the keyring)
// whether a rotation is due.
func (d *Daemon) schedule(p *cluster.Policy, log *slog.Logger) {
	if p.Schedule == d.cronSpec {
		return
	}
	if d.cronEntry != 0 {
		d.cron.Remove(d.cronEntry)
		d.cronEntry = 0
	}
	d.cronSpec = p.Schedule
	spec := p.Schedule
	if gap, ok := p.MinRotationGap(); ok && gap < d.cfg.MinRotationInterval {
		log.Error("rotation schedule not armed: it fires more often than settings policy.minRotationInterval allows", "schedule", p.Schedule, "gap", gap.String(), "minRotationInterval", d.cfg.MinRotationInterval.String())
		spec = ""
	}
	d.mu.Lock()
	d.state.Schedule = spec
	d.mu.Unlock()
	if spec == "" {
		if p.Schedule == "" {
			log.Info("no rotation schedule")
		}
		return
	}
	d.cronEntry = d.cron.Schedule(policySchedule{p}, cron.FuncJob(func() { d.trigger(d.rotateNow) }))
	log.Info("rotation schedule in force", "schedule", p.Schedule)
}

// policySchedule is the policy's schedule as cron schedules it.
type policySchedule struct{ p *cluster.Policy }

func (s policySchedule) Next(t time.Time) time.Time {
	next, _ := s.p.Next(t)
	return next
}

// onStep runs in the loop goroutine, inside the reconcile.
func (d *Daemon) onStep(transition string, step reconciler.Step, done bool, err error) {
	switch {
	case !done && d.inTransition != transition:
		d.inTransition = transition
		d.event(EventNormal, ReasonTransitionStarted, "transition %s started (revision %s): first step: %s", transition, d.revision(), step)
	case done && err == nil:
		d.event(EventNormal, ReasonStepDone, "%s: done: %s", transition, step)
	case done:
		d.event(EventWarning, ReasonStepFailed, "%s: failed: %s: %v", transition, step, err)
	}
	d.metrics.step.Reset()
	d.metrics.heartbeat.SetToCurrentTime()
	d.mu.Lock()
	d.state.Step = ""
	if !done {
		d.state.Step = fmt.Sprintf("%s: %s", transition, step)
		d.metrics.step.WithLabelValues(transition, string(step.Kind)).Set(1)
	}
	d.mu.Unlock()
	d.publish(context.Background())
}

func (d *Daemon) onProgress(resource string, listed, updated int64) {
	d.metrics.rewriteListed.WithLabelValues(resource).Set(float64(listed))
	d.metrics.rewriteUpdated.WithLabelValues(resource).Set(float64(updated))
	d.metrics.heartbeat.SetToCurrentTime()
}

func (d *Daemon) setSuspended(s bool) {
	d.metrics.suspended.Set(bool01(s))
	d.mu.Lock()
	d.state.Suspended = s
	d.mu.Unlock()
}

// succeed records a cycle that did what it had to.
func (d *Daemon) succeed(ctx context.Context, start time.Time, result string, rot Rotation) {
	d.failures = 0
	d.stalledFor = ""
	d.setStalled("")
	d.record(ctx, start, result, "", rot)
}

// stalled records a cycle that changed nothing because a person must act
// (reason is stable, CamelCase): the next cycle comes after the interval,
// not a backoff, since it only observes whether the cause went away.
func (d *Daemon) stalled(ctx context.Context, start time.Time, reason string, err error) time.Duration {
	d.failures = 0
	if d.stalledFor != reason {
		d.event(EventWarning, ReasonStalled, "stalled (%s): nothing changes until the desired state does or `atrest resume`: %v", reason, err)
	}
	d.stalledFor = reason
	d.setStalled(reason)
	d.log.Error("stalled: a person must act; nothing is changed until the desired state changes or `atrest resume`", "reason", reason, "err", err)
	d.record(ctx, start, resultStalled, err.Error(), Rotation{Next: d.State().NextRotation})
	return d.cfg.Interval
}

func (d *Daemon) setStalled(reason string) {
	d.metrics.stalled.Reset()
	if reason != "" {
		d.metrics.stalled.WithLabelValues(reason).Set(1)
	}
	d.mu.Lock()
	d.state.Stalled = reason
	d.mu.Unlock()
}

// fail records a failed cycle and returns the backoff before the next.
func (d *Daemon) fail(ctx context.Context, start time.Time, err error) time.Duration {
	d.failures++
	d.setStalled("")
	wait := Backoff(d.cfg.Interval, d.cfg.MaxBackoff, d.failures)
	d.log.Error("reconcile failed", "err", err, "failures", d.failures, "retry_in", wait.Round(time.Second).String())
	d.mu.Lock()
	d.state.NextRetry = time.Now().Add(wait).UTC()
	d.mu.Unlock()
	d.record(ctx, start, resultFailed, err.Error(), Rotation{Next: d.State().NextRotation})
	return wait
}

// record updates the metrics and the state, and writes the state to Vault
// for `atrest status`.
func (d *Daemon) record(ctx context.Context, start time.Time, result, errText string, rot Rotation) {
	took := time.Since(start)
	d.metrics.reconciles.WithLabelValues(result).Inc()
	d.metrics.reconcileDuration.WithLabelValues(result).Observe(took.Seconds())
	d.metrics.failures.Set(float64(d.failures))
	d.metrics.heartbeat.SetToCurrentTime()
	d.mu.Lock()
	d.state.LastReconcile = time.Now().UTC()
	d.state.Result, d.state.Error, d.state.Failures = result, errText, d.failures
	if d.failures == 0 {
		d.state.NextRetry = time.Time{}
	}
	d.state.NextRotation = rot.Next.UTC()
	if rot.Next.IsZero() {
		d.state.NextRotation = time.Time{}
	}
	d.state.Step = ""
	d.ready = ""
	if d.desired == nil {
		d.ready = "no valid revision from the Git source yet"
	}
	d.mu.Unlock()
	d.publish(ctx)
}

// publish writes the state to Vault for `atrest status`, wherever that
// runs. A failure only costs freshness, so it is logged, not returned.
func (d *Daemon) publish(ctx context.Context) {
	if d.cluster == nil {
		return
	}
	d.mu.Lock()
	d.state.Heartbeat = time.Now().UTC()
	st := d.state
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	if err := d.cluster.PutDaemonState(ctx, st); err != nil {
		d.log.Warn("write daemon state to Vault", "err", err)
	}
}

// cronLogger adapts slog to cron's logger, for the panics it recovers.
type cronLogger struct{ l *slog.Logger }

func (c cronLogger) Info(msg string, kv ...any) { c.l.Debug("cron: "+msg, kv...) }
func (c cronLogger) Error(err error, msg string, kv ...any) {
	c.l.Error("cron: "+msg, append(kv, "err", err)...)
}
