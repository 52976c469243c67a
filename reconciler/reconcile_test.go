package reconciler

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/keystore"
)

// The executor's unit tier: ReconcileUntil against fakes of its
// interfaces, for its bookkeeping (journal, stall rule, lock loss, stop
// between steps). What the steps do to real nodes is the sandbox tier's.

const fakeFile = "/etc/kubernetes/ssl/encryption.yaml"

// fakeNodes is a control plane whose nodes take every file at once.
type fakeNodes struct {
	mu       sync.Mutex
	nodes    []string
	file     []byte // what every node runs; nil for none
	applyErr func() error
	applies  int
	recovers int
	// missing, when set, is what every node lacks of a preflight's request
	// (a Check's What); preflights records each request.
	missing    func(controlplane.PreflightRequest) []string
	preflights []controlplane.PreflightRequest
}

func (f *fakeNodes) Observe(context.Context) ([]controlplane.NodeState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []controlplane.NodeState
	for _, n := range f.nodes {
		s := controlplane.NodeState{Node: n, Ready: true, APIServer: controlplane.APIServer{Running: true, ProviderFileInContainer: fakeFile}}
		if f.file != nil {
			sum := sha256.Sum256(f.file)
			s.File = controlplane.ProviderFile{Present: true, Data: f.file, SHA256: hex.EncodeToString(sum[:])}
			s.APIServer.EncryptionProviderConfig = fakeFile
		}
		out = append(out, s)
	}
	return out, nil
}

func (f *fakeNodes) RollingApply(_ context.Context, file []byte, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applies++
	if f.applyErr != nil {
		if err := f.applyErr(); err != nil {
			return err
		}
	}
	f.file = file
	return nil
}

func (f *fakeNodes) RollingRemove(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.file = nil
	return nil
}

func (f *fakeNodes) Reload(context.Context, string, string) error { return nil }

func (f *fakeNodes) Serving(context.Context) (controlplane.Serving, error) {
	return controlplane.Serving{Leases: len(f.nodes), Managed: f.nodes}, nil
}

func (f *fakeNodes) Preflight(_ context.Context, req controlplane.PreflightRequest) ([]controlplane.Check, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.preflights = append(f.preflights, req)
	var out []controlplane.Check
	for _, n := range f.nodes {
		out = append(out, controlplane.Check{Node: n, What: "sudo"})
		if f.missing != nil {
			for _, what := range f.missing(req) {
				out = append(out, controlplane.Check{Node: n, What: what, Problem: what + " is missing"})
			}
		}
	}
	return out, nil
}

func (f *fakeNodes) Recover(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.recovers++
	return nil
}

// fakeKeys keeps the keyring as Vault would: a JSON document written with
// check-and-set. largest is the largest document written, in bytes.
type fakeKeys struct {
	mu      sync.Mutex
	doc     []byte
	version int
	keys    map[string]cluster.Key
	largest int
	// preserved is what PreserveKey kept, by path.
	preserved map[string]cluster.Key
}

func newFakeKeys() *fakeKeys { return &fakeKeys{keys: map[string]cluster.Key{}} }

func (f *fakeKeys) Keyring(context.Context) (*keystore.Keyring, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	kr := &keystore.Keyring{}
	if f.doc != nil {
		if err := json.Unmarshal(f.doc, kr); err != nil {
			return nil, err
		}
	}
	kr.Version = f.version
	return kr, nil
}

func (f *fakeKeys) UpdateKeyring(_ context.Context, kr *keystore.Keyring) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if kr.Version != f.version {
		return fmt.Errorf("%w: keyring at version %d, written against %d", keystore.ErrConflict, f.version, kr.Version)
	}
	doc, err := json.Marshal(kr)
	if err != nil {
		return err
	}
	f.doc, f.largest = doc, max(f.largest, len(doc))
	f.version++
	kr.Version = f.version
	return nil
}

func (f *fakeKeys) size() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.doc)
}

func (f *fakeKeys) Key(_ context.Context, name string) (cluster.Key, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, ok := f.keys[name]
	if !ok {
		return cluster.Key{}, keystore.ErrNotFound
	}
	return k, nil
}

func (f *fakeKeys) PutKey(_ context.Context, k cluster.Key) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys[k.Name] = k
	return nil
}

func (f *fakeKeys) NewKey(ctx context.Context, p cluster.Provider) (cluster.Key, error) {
	f.mu.Lock()
	var taken []string
	for n := range f.keys {
		taken = append(taken, n)
	}
	f.mu.Unlock()
	k, err := cluster.NewKey(p, taken)
	if err != nil {
		return k, err
	}
	return k, f.PutKey(ctx, k)
}

func (f *fakeKeys) PreserveKey(_ context.Context, k cluster.Key, _ string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	path := "preserved/" + k.Name + "/" + k.Fingerprint()
	if f.preserved == nil {
		f.preserved = map[string]cluster.Key{}
	}
	f.preserved[path] = k
	return path, nil
}
func (f *fakeKeys) AddSnapshotRef(context.Context, string, []string) error { return nil }
func (f *fakeKeys) ReleaseSnapshotRef(context.Context, string) error       { return nil }

// fakeEtcd counts the secrets by how the nodes' file writes them; every
// other resource counted has as many objects, stored alike.
type fakeEtcd struct {
	nodes   *fakeNodes
	secrets int64
	stored  string // storage prefix of every object
	saves   int
}

func (f *fakeEtcd) CensusKeyIDs(_ context.Context, _ string, resources []string, _ int64) (etcdsnap.Census, etcdsnap.KeyIDs, error) {
	c := etcdsnap.Census{}
	for _, r := range resources {
		c[r] = map[string]int64{f.stored: f.secrets}
	}
	return c, nil, nil
}
func (f *fakeEtcd) CheckRegistry(context.Context, string) error { return nil }
func (f *fakeEtcd) Save(_ context.Context, _ etcdsnap.Store, _ etcdsnap.KeyRefs, req etcdsnap.Manifest) (*etcdsnap.Manifest, error) {
	f.saves++
	req.Name, req.Time = fmt.Sprintf("snap-%d", f.saves), time.Now().UTC()
	return &req, nil
}

// fakeRewriter stores every secret as the nodes' file writes. It
// rewrites in pages of one secret, each checkpointed with its index as
// the token; failAt, when positive, fails the rewrite at that page.
type fakeRewriter struct {
	etcd   *fakeEtcd
	failAt int
	froms  []string // the token each rewrite started from
	// denied resources may not be rewritten; preflights records what
	// each preflight asked about.
	denied     []string
	preflights [][]string
}

func (f *fakeRewriter) Preflight(_ context.Context, resources []string) ([]PreflightCheck, error) {
	f.preflights = append(f.preflights, resources)
	var out []PreflightCheck
	for _, r := range resources {
		c := PreflightCheck{Subject: "resource " + r, What: "list, get, update across all namespaces"}
		if slices.Contains(f.denied, r) {
			c.Problem = "system:serviceaccount:atrest:atrest may not list, get, update " + r + " across all namespaces: " + rbacFix(r)
		}
		out = append(out, c)
	}
	return out, nil
}

func (f *fakeRewriter) RewriteFrom(_ context.Context, _, from string, checkpoint func(string)) (RewriteResult, error) {
	f.froms = append(f.froms, from)
	first := 0
	if from != "" {
		fmt.Sscan(from, &first)
	}
	for page := first; page < int(f.etcd.secrets); page++ {
		if f.failAt > 0 && page == f.failAt {
			return RewriteResult{}, errors.New("the apiserver went away")
		}
		checkpoint(fmt.Sprint(page + 1))
	}
	f.etcd.stored = cluster.PrefixIdentity
	if file := f.etcd.nodes.file; file != nil {
		cfg, err := cluster.ParseEncryptionConfig("fake", "", file, "")
		if err != nil {
			return RewriteResult{}, err
		}
		f.etcd.stored = cfg.Chains()["secrets"][0].Prefix()
	}
	return RewriteResult{}, nil
}

// fakeLock is a lock that can be lost on demand.
type fakeLock struct {
	lost     chan struct{}
	once     sync.Once
	released bool
}

func (l *fakeLock) Lost() <-chan struct{} { return l.lost }
func (l *fakeLock) Err() error            { return keystore.ErrLockLost }
func (l *fakeLock) Check() error {
	select {
	case <-l.lost:
		return keystore.ErrLockLost
	default:
		return nil
	}
}
func (l *fakeLock) Token() uint64                 { return 1 }
func (l *fakeLock) Release(context.Context) error { l.released = true; return nil }
func (l *fakeLock) lose()                         { l.once.Do(func() { close(l.lost) }) }

type fakeLocker struct{ last *fakeLock }

func (f *fakeLocker) AcquireLock(context.Context, string, time.Duration) (Lock, error) {
	f.last = &fakeLock{lost: make(chan struct{})}
	return f.last, nil
}

type fakeStore struct{}

func (fakeStore) Create(context.Context, string) (etcdsnap.Upload, error) {
	return nil, errors.New("fake")
}
func (fakeStore) Open(context.Context, string) (io.ReadCloser, error) { return nil, errors.New("fake") }
func (fakeStore) List(context.Context) ([]string, error)              { return nil, nil }
func (fakeStore) Remove(context.Context, string) error                { return nil }

type executor struct {
	r      *Reconciler
	nodes  *fakeNodes
	keys   *fakeKeys
	etcd   *fakeEtcd
	rw     *fakeRewriter
	locker *fakeLocker
}

// newExecutor is a two-node cluster with 5 plain secrets.
func newExecutor() *executor {
	nodes := &fakeNodes{nodes: []string{"cp1", "cp2"}}
	etcd := &fakeEtcd{nodes: nodes, secrets: 5, stored: cluster.PrefixIdentity}
	e := &executor{nodes: nodes, keys: newFakeKeys(), etcd: etcd, locker: &fakeLocker{}}
	e.rw = &fakeRewriter{etcd: etcd}
	e.r = &Reconciler{Nodes: nodes, Keys: e.keys, Etcd: etcd, Snapshots: fakeStore{}, Rewriter: e.rw,
		Locks: e.locker, Holder: "test", Limits: unlimited}
	return e
}

func enable(revision string) Desired {
	return Desired{Mode: cluster.Managed, Provider: cluster.AESCBC, Revision: revision}
}

// rolledBack is what RollingApply returns when kube-apiserver refuses the
// file at runtime: the node was put back and is ready.
func rolledBack(tail string) error {
	return &controlplane.RolloutError{What: "rolling apply", Node: "cp1", Total: 2, Changed: true,
		Err: &controlplane.RollbackError{Node: "cp1", Cause: errors.New("not ready after 3m0s" + tail)}}
}

func TestReconcileCompletes(t *testing.T) {
	e := newExecutor()
	res, err := e.r.Reconcile(context.Background(), enable("r1"))
	if err != nil {
		t.Fatal(err)
	}
	if e.etcd.stored == cluster.PrefixIdentity || !e.locker.last.released || e.nodes.recovers != 1 {
		t.Errorf("stored %s, lock released %v, recovers %d; want encrypted, released, 1", e.etcd.stored, e.locker.last.released, e.nodes.recovers)
	}
	kr, _ := e.keys.Keyring(context.Background())
	if kr.Journal != nil || kr.Failure != nil || kr.Stall != nil {
		t.Errorf("after a completed transition: journal %v, failure %v, stall %v", kr.Journal, kr.Failure, kr.Stall)
	}
	if len(res.Steps) < 4 {
		t.Errorf("steps %v", res.Steps)
	}
}

func TestStallRule(t *testing.T) {
	ctx := context.Background()
	e := newExecutor()
	e.nodes.applyErr = func() error { return rolledBack("") }
	d := enable("r1")
	for i := 1; i <= MaxStepFailures; i++ {
		_, err := e.r.Reconcile(ctx, d)
		if err == nil {
			t.Fatalf("attempt %d: no error", i)
		}
		reason := StallReason(err)
		if want := map[bool]string{true: ReasonStepFailedRepeatedly, false: ""}[i == MaxStepFailures]; reason != want {
			t.Fatalf("attempt %d: stall reason %q, want %q (%v)", i, reason, want, err)
		}
	}
	if e.nodes.applies != MaxStepFailures {
		t.Fatalf("%d deploys, want %d", e.nodes.applies, MaxStepFailures)
	}
	// Stalled: no node is touched again, recovery included, for the same inputs.
	recovers := e.nodes.recovers
	for range 5 {
		_, err := e.r.Reconcile(ctx, d)
		var stall *StallError
		if !errors.As(err, &stall) || stall.Stall.Reason != ReasonStepFailedRepeatedly {
			t.Fatalf("stalled reconcile: %v", err)
		}
	}
	if e.nodes.applies != MaxStepFailures || e.nodes.recovers != recovers {
		t.Fatalf("stalled, yet %d deploys and %d recoveries", e.nodes.applies, e.nodes.recovers-recovers)
	}
	st, err := StatusOf(ctx, e.r, d)
	if err != nil || st.Stall == nil || !strings.Contains(st.Text(), "STALLED (StepFailedRepeatedly)") {
		t.Fatalf("status of a stall: %v\n%s", err, st.Text())
	}
	// A new revision lifts it (and counts afresh).
	if _, err := e.r.Reconcile(ctx, enable("r2")); StallReason(err) != "" {
		t.Fatalf("new revision: %v", err)
	}
	if e.nodes.applies != MaxStepFailures+1 {
		t.Fatalf("the new revision did not deploy: %d deploys", e.nodes.applies)
	}
	// So does `atrest resume`, once the cause is fixed.
	for range MaxStepFailures - 1 {
		_, _ = e.r.Reconcile(ctx, enable("r2"))
	}
	if _, err := e.r.Reconcile(ctx, enable("r2")); StallReason(err) == "" {
		t.Fatalf("not stalled again: %v", err)
	}
	e.nodes.applyErr = nil
	if lifted, err := Resume(ctx, e.keys); err != nil || lifted == nil {
		t.Fatalf("resume: %v, %v", lifted, err)
	}
	if _, err := e.r.Reconcile(ctx, enable("r2")); err != nil {
		t.Fatalf("after resume: %v", err)
	}
}

func TestStallRuleFailures(t *testing.T) {
	now := time.Now()
	refused := rolledBack("")
	cases := []struct {
		name      string
		prev      *keystore.Failure
		err       error
		count     int
		stall     string
		keepsPrev bool
	}{
		{"success forgets", &keystore.Failure{Step: "s", Inputs: "i", Count: 2}, nil, 0, "", false},
		{"first failure", nil, refused, 1, "", false},
		{"same step, same inputs", &keystore.Failure{Step: "s", Inputs: "i", Count: MaxStepFailures - 1}, refused, MaxStepFailures, ReasonStepFailedRepeatedly, false},
		{"other inputs count afresh", &keystore.Failure{Step: "s", Inputs: "other", Count: 2}, refused, 1, "", false},
		{"other step counts afresh", &keystore.Failure{Step: "other", Inputs: "i", Count: 2}, refused, 1, "", false},
		{"failed rollback stalls at once", nil, &controlplane.RollbackError{Node: "cp1", Cause: errors.New("x"), Rollback: errors.New("y")}, 0, ReasonRollbackFailed, true},
		{"refused reload stalls at once", nil, &controlplane.ReloadError{What: "reload", Failed: map[string]error{"cp1": fmt.Errorf("x: %w", controlplane.ErrConfigRefused)}, Reverted: []string{"cp1"}}, 0, ReasonConfigRefused, true},
		{"refused reload whose revert failed needs repair", nil, &controlplane.ReloadError{What: "reload", Failed: map[string]error{"cp1": fmt.Errorf("x: %w", controlplane.ErrConfigRefused)}, Reverted: []string{"cp1"}, Revert: errors.New("y")}, 0, ReasonRollbackFailed, true},
		{"unreachable node is transient", &keystore.Failure{Step: "s", Inputs: "i", Count: 2}, fmt.Errorf("x: %w", controlplane.ErrUnreachable), 2, "", true},
		{"lost lock is transient", nil, fmt.Errorf("x: %w", keystore.ErrLockLost), 0, "", true},
		{"cancelled is transient", nil, context.Canceled, 0, "", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, stall := countFailure(c.prev, "s", "i", "r", c.err, MaxStepFailures, now)
			count := 0
			if f != nil {
				count = f.Count
			}
			reason := ""
			if stall != nil {
				reason = stall.Reason
			}
			if count != c.count || reason != c.stall || (c.keepsPrev && f != c.prev) {
				t.Errorf("count %d, stall %q; want %d, %q", count, reason, c.count, c.stall)
			}
		})
	}
}

// The journal and the stall records stay small however often a step
// fails: the keyring document is written at every step, and Vault refuses
// an entry over 1 MiB. Each attempt here fails as a refused config does,
// with a long kube-apiserver log tail; every third stalls and is resumed.
func TestJournalBounded(t *testing.T) {
	ctx := context.Background()
	e := newExecutor()
	tail := "\n--- last 30 lines of the kube-apiserver container log ---\n" + strings.Repeat("E1201 12:00:00.000000 1 run.go:72] \"command failed\" err=\"error while parsing file: resources[0].providers[0].aescbc.keys[0].secret: Invalid value\"\n", 30)
	e.nodes.applyErr = func() error { return rolledBack(tail) }
	const attempts = 1000
	for i := range attempts {
		_, err := e.r.Reconcile(ctx, enable("r1"))
		if err == nil {
			t.Fatalf("attempt %d did not fail", i)
		}
		if StallReason(err) != "" {
			if _, err := Resume(ctx, e.keys); err != nil {
				t.Fatal(err)
			}
		}
	}
	if e.nodes.applies != attempts {
		t.Fatalf("%d deploys, want %d", e.nodes.applies, attempts)
	}
	t.Logf("keyring document after %d failed attempts (error %d bytes each): %d bytes, largest written %d bytes", attempts, len(rolledBack(tail).Error()), e.keys.size(), e.keys.largest)
	if e.keys.largest > 64<<10 {
		t.Errorf("keyring document grew to %d bytes", e.keys.largest)
	}
	kr, _ := e.keys.Keyring(ctx)
	if last := kr.Journal.Steps[len(kr.Journal.Steps)-1]; last.Attempts < 2 || len(last.Error) > keystore.MaxErrorText+64 {
		t.Errorf("last journal step: %d attempts, %d bytes of error", last.Attempts, len(last.Error))
	}
}

// A graceful stop between steps and a lost lock both leave the journal
// saying where the transition stands, and neither counts towards a stall.
func TestStopAndLockLoss(t *testing.T) {
	ctx := context.Background()
	e := newExecutor()
	stop := make(chan struct{})
	close(stop)
	if _, err := e.r.ReconcileUntil(ctx, stop, enable("r1")); !errors.Is(err, ErrStopped) {
		t.Fatalf("stop: %v", err)
	}
	e.nodes.applyErr = func() error {
		e.locker.last.lose()
		time.Sleep(50 * time.Millisecond) // the watcher cancels the step's context
		return fmt.Errorf("deploy interrupted: %w", context.Canceled)
	}
	for range MaxStepFailures + 1 {
		_, err := e.r.Reconcile(ctx, enable("r1"))
		if err == nil || StallReason(err) != "" || !errors.Is(err, keystore.ErrLockLost) {
			t.Fatalf("lost lock: %v", err)
		}
	}
	kr, _ := e.keys.Keyring(ctx)
	if kr.Journal == nil || kr.Stall != nil || kr.Failure != nil {
		t.Fatalf("after lost locks: journal %v, stall %v, failure %v", kr.Journal, kr.Stall, kr.Failure)
	}
	if last := kr.Journal.Steps[len(kr.Journal.Steps)-1]; last.State != keystore.StepFailed || last.Name != string(StepDeploy) {
		t.Errorf("journal's last step: %+v", last)
	}
	e.nodes.applyErr = nil
	if _, err := e.r.Reconcile(ctx, enable("r1")); err != nil {
		t.Fatalf("resume after lost locks: %v", err)
	}
}

// An interrupted rewrite resumes from its checkpoint in the journal, and
// a completed one leaves none behind.
func TestRewriteResumes(t *testing.T) {
	ctx := context.Background()
	e := newExecutor()
	e.rw.failAt = 3
	if _, err := e.r.Reconcile(ctx, enable("r1")); err == nil {
		t.Fatal("the rewrite did not fail")
	}
	kr, _ := e.keys.Keyring(ctx)
	if cp := kr.Journal.Checkpoint; cp == nil || cp.Resource != "secrets" || cp.Continue != "1" {
		// The first checkpoint is written at once; later ones at most
		// every checkpointEvery.
		t.Fatalf("checkpoint after a failed rewrite: %+v", cp)
	}
	e.rw.failAt = 0
	if _, err := e.r.Reconcile(ctx, enable("r1")); err != nil {
		t.Fatal(err)
	}
	if got := e.rw.froms; len(got) != 2 || got[0] != "" || got[1] != "1" {
		t.Fatalf("rewrites started from %q, want the start, then the checkpoint", got)
	}
	kr, _ = e.keys.Keyring(ctx)
	if kr.Journal != nil {
		t.Fatalf("journal left after the transition: %+v", kr.Journal)
	}
}

// A transition resumes on its own snapshot only while that snapshot
// stands for what it now carries out: a new revision, or a snapshot a day
// old, takes a new one before the next node is touched.
func TestSnapshotOfTheTransitionInFlight(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name      string
		resume    Desired
		age       time.Duration
		wantSaves int
		wantNew   bool // a new journal
	}{
		{"same revision, fresh snapshot", enable("r1"), time.Hour, 1, false},
		{"same revision, snapshot a day old", enable("r1"), MaxSnapshotAge + time.Minute, 2, false},
		{"another revision", enable("r2"), time.Hour, 2, true},
		{"a rotation asked for meanwhile", func() Desired { d := enable("r1"); d.RotateRequest = "cli:now"; return d }(), time.Hour, 2, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newExecutor()
			// The first deploy fails, after the snapshot.
			e.nodes.applyErr = func() error { return rolledBack("") }
			if _, err := e.r.Reconcile(ctx, enable("r1")); err == nil {
				t.Fatal("the deploy did not fail")
			}
			kr, _ := e.keys.Keyring(ctx)
			if e.etcd.saves != 1 || kr.Journal == nil || kr.Journal.Snapshot != "snap-1" {
				t.Fatalf("after the failed deploy: %d saves, journal %+v", e.etcd.saves, kr.Journal)
			}
			first := kr.Journal.ID
			kr.Journal.SnapshotTaken = time.Now().Add(-tt.age)
			if err := e.keys.UpdateKeyring(ctx, kr); err != nil {
				t.Fatal(err)
			}
			e.nodes.applyErr = func() error { return errors.New("stop here") }
			e.nodes.applies = 0
			_, err := e.r.Reconcile(ctx, tt.resume)
			if err == nil || !strings.Contains(err.Error(), "stop here") {
				t.Fatalf("resume: %v", err)
			}
			kr, _ = e.keys.Keyring(ctx)
			if e.etcd.saves != tt.wantSaves {
				t.Errorf("%d snapshots, want %d", e.etcd.saves, tt.wantSaves)
			}
			if got := kr.Journal.Snapshot; got != fmt.Sprintf("snap-%d", tt.wantSaves) {
				t.Errorf("the journal's snapshot is %s, want the newest", got)
			}
			if (kr.Journal.ID != first) != tt.wantNew || kr.Journal.Revision != tt.resume.Revision || kr.Journal.Desired != DesiredID(tt.resume) {
				t.Errorf("journal %s (first %s) for %s %s; want new: %v", kr.Journal.ID, first, kr.Journal.Revision, kr.Journal.Desired, tt.wantNew)
			}
			if e.nodes.applies != 1 {
				t.Errorf("%d deploys tried, want 1", e.nodes.applies)
			}
		})
	}
}
