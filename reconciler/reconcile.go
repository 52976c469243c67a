package reconciler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/keystore"
)

// Nodes drives the controlplane nodes (controlplane.Cluster).
type Nodes interface {
	Observe(ctx context.Context) ([]controlplane.NodeState, error)
	RollingApply(ctx context.Context, file []byte, want string) error
	RollingRemove(ctx context.Context) error
	Reload(ctx context.Context, node, want string) error
	Serving(ctx context.Context) (controlplane.Serving, error)
	// Recover finishes or undoes what an interrupted run left on the nodes
	// (a half-swapped container, a provider file mid-change).
	Recover(ctx context.Context) error
	// Preflight checks, changing nothing, what a plan needs of every node.
	Preflight(ctx context.Context, req controlplane.PreflightRequest) ([]controlplane.Check, error)
}

// Keys is the key custody (keystore.Store).
type Keys interface {
	Keyring(ctx context.Context) (*keystore.Keyring, error)
	UpdateKeyring(ctx context.Context, kr *keystore.Keyring) error
	Key(ctx context.Context, name string) (cluster.Key, error)
	PutKey(ctx context.Context, k cluster.Key) error
	NewKey(ctx context.Context, p cluster.Provider) (cluster.Key, error)
	PreserveKey(ctx context.Context, k cluster.Key, source string) (string, error)
	etcdsnap.KeyRefs
}

// Etcd is the cluster's etcd (etcdsnap.Client).
type Etcd interface {
	CensusKeyIDs(ctx context.Context, registry string, resources []string, pageSize int64) (etcdsnap.Census, etcdsnap.KeyIDs, error)
	CheckRegistry(ctx context.Context, registry string) error
	Save(ctx context.Context, store etcdsnap.Store, refs etcdsnap.KeyRefs, req etcdsnap.Manifest) (*etcdsnap.Manifest, error)
}

// Rewrites re-encrypts every object of a resource (Rewriter): from a list
// continue token, reporting the token before which all is done.
type Rewrites interface {
	RewriteFrom(ctx context.Context, resource, from string, checkpoint func(cont string)) (RewriteResult, error)
	// Preflight checks, changing nothing, that each resource is served and
	// may be rewritten.
	Preflight(ctx context.Context, resources []string) ([]PreflightCheck, error)
}

// Reconciler carries out plans: it observes, plans, runs the first step,
// journals it, and observes again, until nothing is left to do.
type Reconciler struct {
	Nodes     Nodes
	Keys      Keys
	Etcd      Etcd
	Snapshots etcdsnap.Store
	Rewriter  Rewrites
	// Locks hands out the transition lock (StoreLocker).
	Locks Locker
	// Holder names this process in the lock ("atrest-7f9c on host x").
	Holder  string
	LockTTL time.Duration
	// FeatureGates is kube-apiserver's --feature-gates, for parsing the
	// nodes' files as kube-apiserver does.
	FeatureGates string
	// StallAfter is how often one step may fail with the same inputs
	// before the transition stalls; 0 is MaxStepFailures.
	StallAfter int
	// Cluster is the cluster's name (cluster.name): snapshot manifests
	// record it, and only its own snapshots are pruned.
	Cluster string
	// Retention is how many snapshots to keep (the policy's).
	Retention int
	// Limits are the operator's bounds on what a commit may ask for
	// (settings policy.*): every plan this Reconciler makes, for apply,
	// plan, status or the daemon, is refused beyond them.
	Limits Limits
	// KMS runs the vault-transit provider; nil when it is not configured
	// (settings kms.*).
	KMS *KMS
	// LiveCensus, when set, is what a status reads instead of a full
	// census of etcd (the daemon's, at every poll). Steps are always
	// planned from a full census.
	LiveCensus LiveCensus
	// OnStep, when set, is called as each step starts (done false) and
	// ends (done true, with its error): the daemon's metrics and state.
	OnStep func(transition string, step Step, done bool, err error)
	Logger *slog.Logger
}

// ErrStopped is returned by ReconcileUntil when it stopped between steps
// because it was asked to.
var ErrStopped = errors.New("stopped between steps, as asked; the journal says where; the next reconcile resumes")

// Result says what a reconcile did.
type Result struct {
	Transition string
	Steps      []Step // the steps it ran, in order
	Snapshot   string // the snapshot taken before it, if any
	After      string // the snapshot taken after it, if any
	Drift      []string
	Warnings   []string
}

// maxSteps bounds one reconcile: the longest transition is seven steps,
// and a step that makes no progress must not loop forever.
const maxSteps = 25

// Reconcile brings the cluster to d. It takes the keystore lock, then
// repeatedly observes, plans and runs the plan's first step, recording each
// step in the journal before and after it runs. An error leaves the journal
// saying where it stopped; calling Reconcile again resumes from there.
func (r *Reconciler) Reconcile(ctx context.Context, d Desired) (*Result, error) {
	return r.ReconcileUntil(ctx, nil, d)
}

// ReconcileUntil is Reconcile that, once stop is closed, finishes the step
// it is running (journaled) and returns ErrStopped instead of starting the
// next: a graceful shutdown never leaves a step half done. Cancelling ctx
// instead interrupts the step; the journal then records it as failed.
func (r *Reconciler) ReconcileUntil(ctx context.Context, stop <-chan struct{}, d Desired) (*Result, error) {
	log := r.logger()
	ttl := r.LockTTL
	if ttl == 0 {
		ttl = 2 * time.Minute
	}
	if r.Locks == nil {
		return nil, errors.New("reconcile: no transition lock (Reconciler.Locks)")
	}
	lock, err := r.Locks.AcquireLock(ctx, r.Holder, ttl)
	if err != nil {
		return nil, fmt.Errorf("take the transition lock: %w", err)
	}
	defer func() {
		if err := lock.Release(context.WithoutCancel(ctx)); err != nil {
			log.Warn("release the transition lock", "err", err)
		}
	}()
	// Every node write carries the lock's fencing token, and every
	// destructive call checks the lock first: work that goes on after a
	// lost lock (a rollback) stops before it can overlap a new holder's.
	ctx = controlplane.WithFence(ctx, controlplane.Fence{Token: lock.Token(), Check: lock.Check})
	// Steps stop when the lock is lost: another writer may be acting.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-lock.Lost():
			cancel(fmt.Errorf("transition lock lost: %w", lock.Err()))
		case <-ctx.Done():
		}
	}()

	res := &Result{}
	// A key an outside writer left on a node exists nowhere else: it goes
	// to Vault before anything, a standing stall and a recovery included.
	// A failure here is not the cycle's: the plan imports what is left.
	if _, err := r.ImportOutsideKeys(ctx); err != nil {
		log.Warn("import the keys an outside writer left on the nodes", "err", err)
	}
	// A stall stands until the desired state changes or `atrest resume`:
	// not even a repair of the nodes runs while it does.
	kr, err := r.Keys.Keyring(ctx)
	if err != nil {
		return res, err
	}
	if stall := standingStall(kr, d); stall != nil {
		return res, &StallError{Stall: *stall}
	}
	if proofs, err := r.Proofs(ctx); err != nil {
		log.Warn("read the snapshots' drill reports", "err", err)
	} else if stall := snapshotStall(proofs); stall != nil {
		return res, &StallError{Stall: *stall}
	}
	// What an interrupted run left half done is finished or undone first,
	// under the lock, before anything is planned from it.
	if err := r.Nodes.Recover(ctx); err != nil {
		return res, fmt.Errorf("recover what an interrupted run left on the nodes: %w", err)
	}
	inputs := inputsOf(d)
	preflighted := false
	for range maxSteps {
		live, kr, err := r.Observe(ctx, d)
		if err != nil {
			return res, err
		}
		plan, err := MakePlan(r.Input(d, live, kr, time.Now()))
		if err != nil {
			var refusal *Refusal
			if errors.As(err, &refusal) && len(refusal.Preserve) > 0 {
				if perr := r.preserve(ctx, refusal.Preserve); perr != nil {
					err = errors.Join(err, perr)
				}
			}
			return res, fmt.Errorf("plan: %w", err)
		}
		res.Drift, res.Warnings = plan.Drift, plan.Warnings
		if plan.Empty() {
			return res, r.finish(ctx, kr, d, live, res)
		}
		if j := kr.Journal; j != nil && j.Desired != DesiredID(d) {
			// What is left of the old change is part of the new one, which
			// gets its own journal and its own snapshot (the plan has one).
			log.Info("the desired state changed while a transition was in flight: it is carried out as a new transition",
				"was", j.Transition, "wasRevision", j.Revision, "revision", d.Revision, "previousSnapshot", j.Snapshot)
			kr.Journal = nil
			res.Transition = ""
		}
		if res.Transition == "" {
			res.Transition = plan.Transition
			if kr.Journal != nil && kr.Journal.Transition != "" {
				res.Transition = kr.Journal.Transition
			}
		}
		select {
		case <-stop:
			return res, ErrStopped
		default:
		}
		// Before the first change, everything the plan needs: else a
		// missing permission or mount is found halfway through.
		if !preflighted {
			preflighted = true
			if err := r.preflight(ctx, plan); err != nil {
				return res, fmt.Errorf("plan: %w", err)
			}
		}
		step := plan.Steps[0]
		log.Info("step", "transition", res.Transition, "revision", d.Revision, "step", string(step.Kind), "detail", step.String())
		if err := r.journal(ctx, kr, res.Transition, d, step, keystore.StepRunning, nil); err != nil {
			return res, err
		}
		r.onStep(res.Transition, step, false, nil)
		err = r.run(ctx, step, d, live)
		if err != nil {
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				err = errors.Join(err, cause)
			}
		}
		stall, jerr := r.journalAgain(ctx, step, inputs, d.Revision, err)
		if jerr != nil {
			err = errors.Join(err, jerr)
		}
		r.onStep(res.Transition, step, true, err)
		if err != nil {
			err = fmt.Errorf("%s: %s: %w", res.Transition, step, err)
			if stall != nil {
				log.Error("transition stalled: it needs a person", "reason", stall.Reason, "step", step.String())
				err = &StallError{Stall: *stall, Err: err}
			}
			return res, err
		}
		res.Steps = append(res.Steps, step)
		if step.Kind == StepSnapshot {
			if kr, err := r.Keys.Keyring(ctx); err == nil && kr.Journal != nil {
				res.Snapshot = kr.Journal.Snapshot
			}
		}
		// A rewrite is proven by its verify at once: planned afresh, a clean
		// census would make the verify vanish from the plan and the journal.
		if step.Kind == StepRewrite && len(plan.Steps) > 1 && plan.Steps[1].Kind == StepVerify {
			verify := plan.Steps[1]
			kr, err := r.Keys.Keyring(ctx)
			if err != nil {
				return res, err
			}
			if err := r.journal(ctx, kr, res.Transition, d, verify, keystore.StepRunning, nil); err != nil {
				return res, err
			}
			r.onStep(res.Transition, verify, false, nil)
			err = r.run(ctx, verify, d, live)
			stall, jerr := r.journalAgain(ctx, verify, inputs, d.Revision, err)
			if jerr != nil {
				err = errors.Join(err, jerr)
			}
			r.onStep(res.Transition, verify, true, err)
			if err != nil {
				err = fmt.Errorf("%s: %s: %w", res.Transition, verify, err)
				if stall != nil {
					err = &StallError{Stall: *stall, Err: err}
				}
				return res, err
			}
			res.Steps = append(res.Steps, verify)
		}
	}
	return res, fmt.Errorf("no convergence after %d steps: a step is not taking effect; see the journal with `atrest status`", maxSteps)
}

func (r *Reconciler) onStep(transition string, step Step, done bool, err error) {
	if r.OnStep != nil {
		r.OnStep(transition, step, done, err)
	}
}

// Input is what the planner decides from, for d as observed: the rotation
// request still pending, and the operator's Limits. Every plan is made
// from it, so none escapes the limits.
func (r *Reconciler) Input(d Desired, live Live, kr *keystore.Keyring, now time.Time) Input {
	in := Input{Desired: d, Live: live, Keyring: KeyringState(kr), Now: now, Limits: r.Limits}
	in.Desired.RotateRequested = d.RotateRequest != "" && !rotationServed(kr, d)
	return in
}

// rotationServed reports whether the keyring already records d's rotation
// request: a request is served once, whatever crashed after.
func rotationServed(kr *keystore.Keyring, d Desired) bool {
	return kr.RotationServed(d.RotateRequest)
}

// KeyringState is the planner's view of the keyring.
func KeyringState(kr *keystore.Keyring) Keyring {
	var out Keyring
	for _, k := range kr.Keys {
		out.Keys = append(out.Keys, KeyState{Name: k.Name, Provider: k.Provider, Role: string(k.Role), Fingerprint: k.Fingerprint, Outside: k.Outside})
	}
	if kr.Journal != nil {
		out.Snapshot, out.SnapshotTaken, out.SnapshotFor = kr.Journal.Snapshot, kr.Journal.SnapshotTaken, kr.Journal.Desired
	}
	return out
}

// journal records step in the keyring's journal with state (starting a
// journal for the transition when none is in flight).
func (r *Reconciler) journal(ctx context.Context, kr *keystore.Keyring, transition string, d Desired, step Step, state keystore.StepState, stepErr error) error {
	if kr.Journal == nil {
		kr.Journal = newJournal(transition, d)
	}
	if kr.Stall != nil {
		// Not standing (ReconcileUntil checked): the desired state changed.
		r.logger().Info("the desired state changed: the stall is lifted", "reason", kr.Stall.Reason, "since", kr.Stall.Since)
		kr.Stall = nil
	}
	now := time.Now().UTC()
	kr.Journal.Append(keystore.JournalStep{Name: string(step.Kind), Detail: step.String(), State: state, Started: now})
	if err := r.Keys.UpdateKeyring(ctx, kr); err != nil {
		return fmt.Errorf("journal step %s: %w", step.Kind, err)
	}
	return nil
}

// newJournal starts the journal of a transition that carries out d.
func newJournal(transition string, d Desired) *keystore.Journal {
	j := keystore.NewJournal(transition, d.Revision, "")
	j.Desired = DesiredID(d)
	return j
}

// journalAgain marks the last journal step done or failed, and counts
// the failure towards a stall (countFailure): the stall it returns, when
// the step must not run again, is recorded with it. It reads the keyring
// again, since the step may have changed it.
func (r *Reconciler) journalAgain(ctx context.Context, step Step, inputs, revision string, stepErr error) (*keystore.Stall, error) {
	ctx = context.WithoutCancel(ctx) // record the outcome even when stopping
	kr, err := r.Keys.Keyring(ctx)
	if err != nil {
		return nil, fmt.Errorf("journal step %s: %w", step.Kind, err)
	}
	if kr.Journal == nil || !kr.Journal.Finish(stepErr) {
		return nil, fmt.Errorf("journal step %s: the journal is gone", step.Kind)
	}
	if cp := kr.Journal.Checkpoint; stepErr == nil && cp != nil && cp.Step == step.String() {
		kr.Journal.Checkpoint = nil // done: nothing to resume
	}
	var stall *keystore.Stall
	limit := r.StallAfter
	if limit <= 0 {
		limit = MaxStepFailures
	}
	kr.Failure, stall = countFailure(kr.Failure, step.String(), inputs, revision, stepErr, limit, time.Now().UTC())
	if stall != nil {
		kr.Stall = stall
	}
	if err := r.Keys.UpdateKeyring(ctx, kr); err != nil {
		return stall, fmt.Errorf("journal step %s: %w", step.Kind, err)
	}
	return stall, nil
}

// finish closes the journal of a completed transition, saves the snapshot
// "after <transition>", and prunes snapshots.
func (r *Reconciler) finish(ctx context.Context, kr *keystore.Keyring, d Desired, live Live, res *Result) error {
	if j := kr.Journal; j != nil {
		r.logger().Info("transition complete", "transition", j.Transition, "revision", j.Revision, "snapshot", j.Snapshot)
		kr.Journal = nil
		if err := r.Keys.UpdateKeyring(ctx, kr); err != nil {
			return fmt.Errorf("close the journal: %w", err)
		}
		// The newest snapshot then needs only the keys in force now, and
		// its drill proves the transition left a restorable cluster. The
		// transition is done either way: a failure here is reported, not
		// undone, and the next snapshot covers it.
		if r.Snapshots != nil {
			m, err := r.saveSnapshot(ctx, etcdsnap.ReasonAfter(j.Transition), d.Revision, live)
			if err != nil {
				r.logger().Error("snapshot after the transition", "transition", j.Transition, "err", err)
				res.Warnings = append(res.Warnings, fmt.Sprintf("the snapshot after %s was not saved: %v", j.Transition, err))
			} else {
				res.After = m.Name
			}
		}
	}
	if r.Snapshots != nil && r.Retention > 0 {
		removed, err := etcdsnap.Prune(ctx, r.Snapshots, r.Keys, r.Cluster, r.Retention, nil)
		if err != nil {
			return fmt.Errorf("prune snapshots: %w", err)
		}
		if len(removed) > 0 {
			r.logger().Info("pruned snapshots", "removed", removed)
		}
	}
	// After the prune: the Transit versions only the pruned snapshots
	// needed are no longer decrypted with.
	if err := r.trimTransit(ctx, live); err != nil {
		r.logger().Warn("raise the Transit key's min_decryption_version", "err", err)
	}
	return nil
}

func (r *Reconciler) logger() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

// run executes one step.
func (r *Reconciler) run(ctx context.Context, step Step, d Desired, live Live) error {
	switch step.Kind {
	case StepImportKeys:
		return r.importKeys(ctx, step, d)
	case StepSnapshot:
		return r.snapshot(ctx, step, d, live)
	case StepGenerateKey:
		return r.generateKey(ctx, step, d)
	case StepDeploy:
		return r.deploy(ctx, step, d)
	case StepRewrite:
		if step.KeyID != "" {
			if err := r.awaitKeyID(ctx, step.KeyID); err != nil {
				return err
			}
		}
		return r.rewrite(ctx, step)
	case StepVerify:
		return r.verify(ctx, step, live.EtcdPrefix)
	case StepCreateTransitKey, StepRotateTransit, StepDeployPlugin, StepRemovePlugin:
		if r.KMS == nil {
			return errors.New(string(step.Kind) + ": " + NoKMS)
		}
		switch step.Kind {
		case StepCreateTransitKey:
			return r.createTransitKey(ctx, d)
		case StepRotateTransit:
			return r.rotateTransit(ctx, d)
		case StepDeployPlugin:
			return r.deployPlugin(ctx, step)
		default:
			return r.removePlugin(ctx)
		}
	case StepReload:
		return r.Nodes.Reload(ctx, step.Node, step.Expect)
	case StepRemoveConfig:
		if err := r.Nodes.RollingRemove(ctx); err != nil {
			return err
		}
		return r.updateRoles(ctx, d, cluster.Chains{}, nil)
	}
	return fmt.Errorf("unknown step %q", step.Kind)
}

func (r *Reconciler) importKeys(ctx context.Context, step Step, d Desired) error {
	// The material comes from the nodes' files and from custom_config.
	states, err := r.Nodes.Observe(ctx)
	if err != nil {
		return err
	}
	found := map[string]cluster.Key{}
	for _, s := range states {
		if !s.File.Present {
			continue
		}
		cfg, err := cluster.ParseEncryptionConfig(s.Node, "", s.File.Data, r.FeatureGates)
		if err != nil {
			continue // the planner refuses files in use that do not parse
		}
		for _, k := range cfg.Keys() {
			if err := addFound(found, k, "node "+s.Node+"'s provider file"); err != nil {
				return err
			}
		}
	}
	if d.CustomConfig != nil {
		for _, k := range d.CustomConfig.Keys() {
			if err := addFound(found, k, "cluster.yml's custom_config"); err != nil {
				return err
			}
		}
	}
	kr, err := r.Keys.Keyring(ctx)
	if err != nil {
		return err
	}
	for _, name := range step.Keys {
		k, ok := found[name]
		if !ok {
			return fmt.Errorf("import key %s: no node's file and no custom_config holds it any more", name)
		}
		if err := r.putOnce(ctx, k); err != nil {
			return err
		}
		if _, ok := kr.Find(name); !ok {
			kr.Keys = append(kr.Keys, keystore.InfoOf(k, keystore.RoleReader))
		}
	}
	if step.Primary != "" {
		setPrimary(kr, step.Primary)
	}
	return r.Keys.UpdateKeyring(ctx, kr)
}

// addFound adds k, found in source, to found, refusing other material
// under a name already found: the planner refuses that too, but the nodes
// may have changed since it looked.
func addFound(found map[string]cluster.Key, k cluster.Key, source string) error {
	if have, ok := found[k.Name]; ok && (have.Fingerprint() != k.Fingerprint() || have.Provider != k.Provider) {
		return refuse(ReasonKeyMaterialConflict, "import key %s: %s holds other material (fingerprint %s) than another source (fingerprint %s); nothing was imported", k.Name, source, k.Fingerprint(), have.Fingerprint())
	}
	found[k.Name] = k
	return nil
}

// preserve copies key material found on the nodes into Vault under its own
// identity (PreserveKey), before a refusal stops everything else.
func (r *Reconciler) preserve(ctx context.Context, keys []PreserveKey) error {
	states, err := r.Nodes.Observe(ctx)
	if err != nil {
		return fmt.Errorf("preserve keys: %w", err)
	}
	var errs []error
	for _, want := range keys {
		var k *cluster.Key
		for _, s := range states {
			if s.Node != want.Node || !s.File.Present {
				continue
			}
			cfg, err := cluster.ParseEncryptionConfig(s.Node, "", s.File.Data, r.FeatureGates)
			if err != nil {
				continue
			}
			for _, c := range cfg.Keys() {
				if c.Name == want.Name && c.Provider == want.Provider && c.Fingerprint() == want.Fingerprint {
					k = &c
				}
			}
		}
		if k == nil {
			errs = append(errs, fmt.Errorf("preserve key %s (fingerprint %s): node %s no longer holds it", want.Name, want.Fingerprint, want.Node))
			continue
		}
		path, err := r.Keys.PreserveKey(ctx, *k, "node "+want.Node+"'s provider file")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r.logger().Warn("key material conflict: the node's material is preserved in Vault", "node", want.Node, "key", *k, "path", path)
	}
	return errors.Join(errs...)
}

// errOtherMaterial: Vault holds other material under the key's name.
var errOtherMaterial = errors.New("the material differs from the key Vault holds under that name")

// putOnce stores k, or checks the stored key with its name is the same.
func (r *Reconciler) putOnce(ctx context.Context, k cluster.Key) error {
	have, err := r.Keys.Key(ctx, k.Name)
	if err == nil {
		if have.Fingerprint() != k.Fingerprint() || have.Provider != k.Provider {
			return fmt.Errorf("import key %s: %w (fingerprint %s, the node's is %s)", k.Name, errOtherMaterial, have.Fingerprint(), k.Fingerprint())
		}
		return nil
	}
	if !errors.Is(err, keystore.ErrNotFound) {
		return err
	}
	return r.Keys.PutKey(ctx, k)
}

func setPrimary(kr *keystore.Keyring, name string) {
	for i := range kr.Keys {
		switch {
		case kr.Keys[i].Name == name:
			// Adopted: atrest's own from now on, whoever wrote it first.
			kr.Keys[i].Role, kr.Keys[i].Outside = keystore.RolePrimary, ""
		case kr.Keys[i].Role == keystore.RolePrimary:
			kr.Keys[i].Role = keystore.RoleReader
		}
	}
}

func (r *Reconciler) generateKey(ctx context.Context, step Step, d Desired) error {
	k, err := r.Keys.NewKey(ctx, step.Provider)
	if err != nil {
		return err
	}
	kr, err := r.Keys.Keyring(ctx)
	if err != nil {
		return err
	}
	if _, ok := kr.Find(k.Name); !ok {
		kr.Keys = append(kr.Keys, keystore.InfoOf(k, keystore.RoleReader))
	}
	setPrimary(kr, k.Name)
	kr.RecordRotation(time.Now().UTC(), d.RotateRequest)
	r.logger().Info("generated key", "key", k)
	return r.Keys.UpdateKeyring(ctx, kr)
}

func (r *Reconciler) snapshot(ctx context.Context, step Step, d Desired, live Live) error {
	m, err := r.saveSnapshot(ctx, step.Reason, d.Revision, live)
	if err != nil {
		return err
	}
	kr, err := r.Keys.Keyring(ctx)
	if err != nil {
		return err
	}
	if kr.Journal == nil {
		kr.Journal = newJournal(step.Reason, d)
	}
	kr.Journal.Snapshot, kr.Journal.SnapshotTaken = m.Name, m.Time
	return r.Keys.UpdateKeyring(ctx, kr)
}

// SaveSnapshot saves and verifies a snapshot now, bound to the keys every
// node reads with ("manual", "scheduled").
func (r *Reconciler) SaveSnapshot(ctx context.Context, reason, revision string) (*etcdsnap.Manifest, error) {
	live, _, err := r.Observe(ctx, Desired{})
	if err != nil {
		return nil, err
	}
	return r.saveSnapshot(ctx, reason, revision, live)
}

func (r *Reconciler) saveSnapshot(ctx context.Context, reason, revision string, live Live) (*etcdsnap.Manifest, error) {
	if r.Snapshots == nil {
		return nil, errors.New("snapshot: no snapshot directory configured (settings snapshots.dir)")
	}
	kr, err := r.Keys.Keyring(ctx)
	if err != nil {
		return nil, err
	}
	// What every node reads with now, and the keys the census finds
	// objects under that no node reads with (a restored etcd, before a
	// stage adds them back): together they read every object the snapshot
	// holds, or the manifest says which they cannot.
	var running []cluster.Chains
	for _, n := range live.Nodes {
		running = append(running, n.Running())
	}
	state := KeyringState(kr)
	lists, unreadable := etcdsnap.BuildConfig(running, live.Census, func(prefix string) (cluster.ProviderEntry, bool) {
		return entryForPrefix(prefix, state)
	})
	refs := etcdsnap.ConfigKeys(lists)
	// Every key must be in Vault with the material the config names:
	// that is what a restore will fetch.
	for _, ref := range refs {
		k, err := r.Keys.Key(ctx, ref.Name)
		if err != nil {
			return nil, fmt.Errorf("snapshot: key %s: %w", ref.Name, err)
		}
		if got := etcdsnap.RefOf(k); got != ref {
			return nil, fmt.Errorf("snapshot: key %s in Vault is %s %s, the nodes or the census name %s %s: a restore could not read with it", ref.Name, got.Provider, got.Fingerprint, ref.Provider, ref.Fingerprint)
		}
	}
	for _, u := range unreadable {
		r.logger().Warn("snapshot: objects stored under a provider no config atrest sees reads; the manifest records them", "resource", u.Resource, "prefix", u.Prefix, "count", u.Count)
	}
	resources := etcdsnap.ConfigResources(lists)
	etcdPrefix := ""
	if live.EtcdPrefix != "/registry" {
		etcdPrefix = live.EtcdPrefix
	}
	transition := ""
	if kr.Journal != nil {
		transition = kr.Journal.ID
	}
	var transit *etcdsnap.TransitRef
	if r.KMS != nil {
		mount, key := r.KMS.Transit.Mount(), r.KMS.Transit.Key()
		if vs := TransitVersions(live.KeyIDs, mount, key); len(vs) > 0 {
			transit = &etcdsnap.TransitRef{Mount: mount, Key: key, Versions: vs}
		}
	}
	m, err := r.Etcd.Save(ctx, r.Snapshots, r.Keys, etcdsnap.Manifest{
		Cluster: r.Cluster, Reason: reason, Transition: transition, GitRevision: revision,
		KeyringVersion: kr.Version, Keys: refs, Resources: resources, Config: lists, Unreadable: unreadable,
		EtcdPrefix: etcdPrefix, Transit: transit,
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	r.logger().Info("snapshot saved and verified", "snapshot", m.Name, "sha256", m.SHA256, "size", m.Size)
	return m, nil
}

func (r *Reconciler) deploy(ctx context.Context, step Step, d Desired) error {
	keys := map[string]cluster.Key{}
	for _, name := range step.Chains.KeyNames() {
		k, err := r.Keys.Key(ctx, name)
		if err != nil {
			return fmt.Errorf("deploy: key %s: %w", name, err)
		}
		keys[name] = k
	}
	file, err := cluster.RenderChains(step.Chains, func(n string) (cluster.Key, error) { return keys[n], nil })
	if err != nil {
		return err
	}
	// What atrest writes to a node must pass the same validation as what it
	// reads from Git.
	rendered, err := cluster.ParseEncryptionConfig("the rendered config", "", file, r.FeatureGates)
	if err != nil {
		return fmt.Errorf("deploy: rendered config does not validate: %w", err)
	}
	if len(step.Unsynced) > 0 {
		ctx = controlplane.AllowUnsynced(ctx, step.Unsynced...)
	}
	if err := r.Nodes.RollingApply(ctx, file, step.Expect); err != nil {
		return err
	}
	return r.updateRoles(ctx, d, step.Chains, rendered)
}

// updateRoles sets every keyring key's role after a deploy: the managed
// primary stays primary; a key in the deployed config reads; any other is
// retired (kept in Vault, for snapshots).
func (r *Reconciler) updateRoles(ctx context.Context, d Desired, deployed cluster.Chains, cfg *cluster.EncryptionConfig) error {
	kr, err := r.Keys.Keyring(ctx)
	if err != nil {
		return err
	}
	in := deployed.KeyNames()
	for i := range kr.Keys {
		k := &kr.Keys[i]
		switch {
		case k.Role == keystore.RolePrimary && d.Mode == cluster.Managed && d.Provider == k.Provider:
		case slices.Contains(in, k.Name):
			k.Role = keystore.RoleReader
		default:
			k.Role = keystore.RoleRetired
		}
	}
	// The config's identity is its content, rendered canonically: the
	// same config deployed by RKE (`atrest rke up`), in RKE's own layout,
	// is the same config.
	kr.DeployedHash = ""
	if cfg != nil {
		kr.DeployedHash = keystore.ConfigHash(cfg.Render())
	}
	return r.Keys.UpdateKeyring(ctx, kr)
}

func (r *Reconciler) verify(ctx context.Context, step Step, registry string) error {
	c, ids, err := r.Etcd.CensusKeyIDs(ctx, registry, step.Resources, censusPage)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	var problems []error
	for _, res := range step.Resources {
		for prefix, n := range c[res] {
			if n > 0 && prefix != step.Writers[res] {
				problems = append(problems, fmt.Errorf("%d %s still stored under %s (want all under %s)", n, res, prefix, step.Writers[res]))
			}
		}
		want := step.KeyIDs[res]
		if want == "" {
			continue
		}
		for id, n := range ids.Of(res, step.Writers[res]) {
			if n > 0 && id != want {
				problems = append(problems, fmt.Errorf("%d %s still wrapped by key_id %s (want all by %s)", n, res, id, want))
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("verify: the rewrite did not reach every object: %w", errors.Join(problems...))
	}
	return nil
}

const censusPage = 500

// LiveCensus is a census kept current from etcd's watch
// (etcdsnap.LiveCensus): cheap to read, for observing only.
type LiveCensus interface {
	Registry() string
	Census(ctx context.Context, resources []string) (etcdsnap.Census, etcdsnap.KeyIDs, error)
}

// Observe reads what the nodes run, what etcd stores (a full census,
// exact now: what the steps are planned from) and what the keyring holds.
func (r *Reconciler) Observe(ctx context.Context, d Desired) (Live, *keystore.Keyring, error) {
	states, err := r.Nodes.Observe(ctx)
	if err != nil {
		return Live{}, nil, fmt.Errorf("observe the nodes: %w", err)
	}
	return r.observe(ctx, d, states, true)
}

// observe is Observe from the nodes' states; exact false reads the live
// census when there is one for the nodes' --etcd-prefix.
func (r *Reconciler) observe(ctx context.Context, d Desired, states []controlplane.NodeState, exact bool) (Live, *keystore.Keyring, error) {
	var live Live
	resources := []string{"secrets"}
	for r := range d.Custom {
		resources = append(resources, r)
	}
	for _, s := range states {
		n := NodeLive{Name: s.Node, Ready: s.Ready, Flag: s.APIServer.ProviderConfigSet(), File: s.File.Present,
			Unloaded: s.Unloaded(), EtcdPrefix: etcdPrefixOf(s),
			Reloads: s.APIServer.ProviderConfigSet() && s.APIServer.AutomaticReload && !s.RestartOnly, RestartOnly: s.RestartOnly, Unsynced: s.Unsynced}
		if s.File.Present {
			chains, err := r.parseNodeFile(s)
			if err != nil {
				n.FileError = err.Error()
			} else {
				n.Chains = chains
				resources = append(resources, chains.Resources()...)
			}
		}
		live.Nodes = append(live.Nodes, n)
	}
	slices.Sort(resources)
	resources = slices.Compact(resources)
	// Which apiservers serve, by what the cluster itself says: the ones
	// atrest keeps readers-first for must be all of them.
	serving, err := r.Nodes.Serving(ctx)
	if err != nil {
		return Live{}, nil, fmt.Errorf("observe which kube-apiservers serve: %w", err)
	}
	live.Unmanaged, live.Silent = serving.Unmanaged, serving.Silent
	live.ServingUnproven = serving.Leases == 0
	// The census counts where the apiservers store: at their own
	// --etcd-prefix, proven to hold the cluster. Nodes that disagree get
	// no census; the planner refuses them.
	if len(live.Nodes) > 0 && !slices.ContainsFunc(live.Nodes, func(n NodeLive) bool { return n.EtcdPrefix != live.Nodes[0].EtcdPrefix }) {
		live.EtcdPrefix = live.Nodes[0].EtcdPrefix
		if err := r.Etcd.CheckRegistry(ctx, live.EtcdPrefix); err != nil {
			return Live{}, nil, fmt.Errorf("census: %w", err)
		}
		var census etcdsnap.Census
		var ids etcdsnap.KeyIDs
		var err error
		if !exact && r.LiveCensus != nil && cleanPrefix(r.LiveCensus.Registry()) == cleanPrefix(live.EtcdPrefix) {
			census, ids, err = r.LiveCensus.Census(ctx, resources)
		} else {
			census, ids, err = r.Etcd.CensusKeyIDs(ctx, live.EtcdPrefix, resources, censusPage)
		}
		if err != nil {
			return Live{}, nil, fmt.Errorf("census: %w", err)
		}
		live.Census, live.KeyIDs = census, ids
	}
	kr, err := r.Keys.Keyring(ctx)
	if err != nil {
		return Live{}, nil, err
	}
	if err := r.observeTransit(ctx, d, &live, kr); err != nil {
		return Live{}, nil, err
	}
	return live, kr, nil
}

// etcdPrefixOf is the --etcd-prefix the node's kube-apiserver runs with,
// kube-apiserver's default when it gives none.
func etcdPrefixOf(s controlplane.NodeState) string {
	if p, ok := s.APIServer.Flag("etcd-prefix"); ok && p != "" {
		return cleanPrefix(p)
	}
	return "/registry"
}

// parseNodeFile reads a node's provider file as kube-apiserver would.
func (r *Reconciler) parseNodeFile(s controlplane.NodeState) (cluster.Chains, error) {
	cfg, err := cluster.ParseEncryptionConfig("node "+s.Node+" provider file", "", s.File.Data, r.FeatureGates)
	if err != nil {
		return nil, err
	}
	return cfg.Chains(), nil
}
