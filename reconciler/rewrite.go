package reconciler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// RewriteOptions tunes the rewrite.
type RewriteOptions struct {
	// Workers is how many updates are in flight at once (default 16).
	Workers int
	// PageSize is the list page size (default 500).
	PageSize int64
	// Progress, when set, receives a progress line every ProgressEvery, and
	// on a terminal a single line redrawn in place.
	Progress      io.Writer
	ProgressEvery time.Duration
	Terminal      bool
	// OnProgress, when set, is called with the counts every ProgressEvery
	// and once at the end of each resource: the daemon's metrics.
	OnProgress func(resource string, listed, updated int64)
	Logger     *slog.Logger
}

// RewriteResult counts what a rewrite did.
type RewriteResult struct {
	Resource  string
	Listed    int64 // objects seen in the list
	Updated   int64 // updates the apiserver accepted
	Deleted   int64 // objects gone before their update: nothing to rewrite
	Conflicts int64 // updates retried after a fresh read
	Restarts  int64 // list restarts after an expired continue token
	Duration  time.Duration
}

// Rewriter re-encrypts stored objects by updating each one unchanged: the
// apiserver writes an object back to etcd only when it was read with a
// provider that is not the current writer, so updating everything moves
// every stale value to the writer.
type Rewriter struct {
	typed   kubernetes.Interface
	dynamic dynamic.Interface
	opts    RewriteOptions
	// beforeList, when set, runs before each list request: tests compact
	// etcd there to make a continue token expire on cue.
	beforeList func(cont string)
}

// SetRateLimit sets cfg's client-side rate limit: with qps 0 none at all,
// as kubectl has none since v1.27; the rewrite's workers and the
// apiserver's own flow control bound it (API Priority and Fairness answers
// 429 with Retry-After, and client-go waits that long and retries, up to
// ten times). client-go's default of 5 per second, with a burst of 10, is
// why RKE's rewrite crawls. A positive qps caps it, with burst (0: twice
// qps).
func SetRateLimit(cfg *rest.Config, qps float64, burst int) {
	if qps <= 0 {
		cfg.QPS, cfg.Burst = -1, 0
		return
	}
	if burst <= 0 {
		burst = int(2 * qps)
	}
	cfg.QPS, cfg.Burst = float32(qps), max(burst, 1)
}

// NewRewriter builds a rewriter on cfg. Secrets go over protobuf; other
// resources over JSON with the dynamic client. cfg's rate limit is the
// client's (SetRateLimit).
func NewRewriter(cfg *rest.Config, opts RewriteOptions) (*Rewriter, error) {
	if opts.Workers <= 0 {
		opts.Workers = 16
	}
	if opts.PageSize <= 0 {
		opts.PageSize = 500
	}
	if opts.ProgressEvery <= 0 {
		opts.ProgressEvery = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	pb := rest.CopyConfig(cfg)
	pb.ContentType = "application/vnd.kubernetes.protobuf"
	pb.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	typed, err := kubernetes.NewForConfig(pb)
	if err != nil {
		return nil, fmt.Errorf("rewrite: kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("rewrite: dynamic client: %w", err)
	}
	return &Rewriter{typed: typed, dynamic: dyn, opts: opts}, nil
}

// resourceClient is the two calls a rewrite makes, for one resource.
type resourceClient interface {
	list(ctx context.Context, opts metav1.ListOptions) (items []object, cont string, err error)
	get(ctx context.Context, ns, name string) (object, error)
	update(ctx context.Context, obj object) error
}

// object is one listed object: its identity and the object to send back.
type object struct {
	ns, name string
	obj      any
	page     pageID // where the list found it, for the checkpoint
}

// pageID names a listed page: the list's generation (it starts over when
// a continue token expires) and the page's place in it.
type pageID struct{ gen, index int }

// pageTracker advances the rewrite's checkpoint: the continue token after
// the longest run of pages, from the list's start, whose every object is
// done. A page with an object that failed holds it back for good.
type pageTracker struct {
	mu         sync.Mutex
	checkpoint func(cont string)
	gen        int
	pages      []trackedPage
	next       int // pages before it are done and reported
}

type trackedPage struct {
	pending int
	failed  bool
	cont    string // the token after this page; "" after the last
}

func newPageTracker(checkpoint func(string)) *pageTracker {
	return &pageTracker{checkpoint: checkpoint}
}

// add records a listed page of n objects followed by cont.
func (t *pageTracker) add(n int, cont string) pageID {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pages = append(t.pages, trackedPage{pending: n, cont: cont})
	id := pageID{t.gen, len(t.pages) - 1}
	t.advance()
	return id
}

// done records one object of page as finished, ok or not.
func (t *pageTracker) done(page pageID, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if page.gen != t.gen {
		return // listed before the list started over
	}
	p := &t.pages[page.index]
	p.pending--
	p.failed = p.failed || !ok
	t.advance()
}

// restart forgets the pages: the list starts over, with new tokens.
func (t *pageTracker) restart() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gen++
	t.pages, t.next = nil, 0
}

func (t *pageTracker) advance() {
	last := ""
	for t.next < len(t.pages) && t.pages[t.next].pending == 0 && !t.pages[t.next].failed {
		last = t.pages[t.next].cont
		t.next++
	}
	if last != "" && t.checkpoint != nil {
		t.checkpoint(last)
	}
}

// Rewrite updates every object of resource ("secrets", "configmaps",
// "deployments.apps"). It lists page by page and restarts from the start
// when a continue token expires, so it never reports done on a partial
// list. Objects deleted meanwhile are skipped; other failures are collected
// and returned together, after every object was tried.
func (rw *Rewriter) Rewrite(ctx context.Context, resource string) (RewriteResult, error) {
	return rw.RewriteFrom(ctx, resource, "", nil)
}

// RewriteFrom is Rewrite that starts at the list continue token from (""
// for the first object) and calls checkpoint with the token after which
// nothing is left undone, as it advances: every object of the pages
// before it was updated (or was gone). A rewrite interrupted there resumes
// from that token; one that etcd has compacted past starts over, as an
// expired token does.
func (rw *Rewriter) RewriteFrom(ctx context.Context, resource, from string, checkpoint func(cont string)) (RewriteResult, error) {
	res := RewriteResult{Resource: resource}
	start := time.Now()
	rc, err := rw.client(resource)
	if err != nil {
		return res, err
	}

	var listed, updated, deleted, conflicts atomic.Int64
	var errsMu sync.Mutex
	var errs []error
	work := make(chan object, rw.opts.Workers*4)
	pages := newPageTracker(checkpoint)
	var wg sync.WaitGroup
	for range rw.opts.Workers {
		wg.Go(func() {
			for o := range work {
				n, err := rw.updateOne(ctx, rc, o)
				conflicts.Add(n)
				pages.done(o.page, err == nil || apierrors.IsNotFound(err))
				switch {
				case err == nil:
					updated.Add(1)
				case apierrors.IsNotFound(err):
					deleted.Add(1)
				default:
					errsMu.Lock()
					if len(errs) < 20 {
						errs = append(errs, fmt.Errorf("%s %s: %w", resource, qualified(o), err))
					} else if len(errs) == 20 {
						errs = append(errs, errors.New("... more errors not shown"))
					}
					errsMu.Unlock()
				}
			}
		})
	}

	stopProgress := rw.progress(resource, &listed, &updated)
	listErr := func() error {
		defer close(work)
		cont := from
		if from != "" {
			rw.opts.Logger.Info("rewrite: resuming from its checkpoint", "resource", resource)
		}
		for {
			if rw.beforeList != nil {
				rw.beforeList(cont)
			}
			items, next, err := rc.list(ctx, metav1.ListOptions{Limit: rw.opts.PageSize, Continue: cont})
			if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
				// The continue token outlived etcd's compaction: start over.
				// Objects already rewritten cost a no-op update.
				res.Restarts++
				rw.opts.Logger.Info("rewrite: list continue token expired, restarting the list", "resource", resource)
				cont = ""
				pages.restart()
				continue
			}
			if err != nil {
				return fmt.Errorf("list %s: %w", resource, err)
			}
			page := pages.add(len(items), next)
			for _, it := range items {
				listed.Add(1)
				it.page = page
				select {
				case work <- it:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			if next == "" {
				return nil
			}
			cont = next
		}
	}()
	wg.Wait()
	stopProgress()

	res.Listed, res.Updated, res.Deleted, res.Conflicts = listed.Load(), updated.Load(), deleted.Load(), conflicts.Load()
	res.Duration = time.Since(start)
	rw.opts.Logger.Info("rewrite done", "resource", resource, "listed", res.Listed, "updated", res.Updated,
		"deleted", res.Deleted, "conflicts", res.Conflicts, "restarts", res.Restarts, "seconds", res.Duration.Seconds())
	if listErr != nil {
		errs = append([]error{listErr}, errs...)
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("rewrite %s: %w", resource, errors.Join(errs...))
	}
	return res, nil
}

// updateOne sends o back unchanged; on a conflict it reads the object again
// and retries, a few times. It returns how many conflicts it met.
func (rw *Rewriter) updateOne(ctx context.Context, rc resourceClient, o object) (int64, error) {
	var conflicts int64
	for attempt := 0; ; attempt++ {
		err := rc.update(ctx, o)
		if !apierrors.IsConflict(err) || attempt >= 5 {
			return conflicts, err
		}
		conflicts++
		fresh, err := rc.get(ctx, o.ns, o.name)
		if err != nil {
			return conflicts, err
		}
		o = fresh
	}
}

func (rw *Rewriter) progress(resource string, listed, updated *atomic.Int64) func() {
	if rw.opts.Progress == nil && rw.opts.OnProgress == nil {
		return func() {}
	}
	report := func(final bool) {
		if f := rw.opts.OnProgress; f != nil {
			f(resource, listed.Load(), updated.Load())
		}
		switch {
		case rw.opts.Progress == nil:
		case rw.opts.Terminal && final:
			fmt.Fprintf(rw.opts.Progress, "\rrewrite %s: %d/%d\n", resource, updated.Load(), listed.Load())
		case rw.opts.Terminal:
			fmt.Fprintf(rw.opts.Progress, "\rrewrite %s: %d/%d", resource, updated.Load(), listed.Load())
		case !final:
			fmt.Fprintf(rw.opts.Progress, "rewrite %s: %d of %d listed so far updated\n", resource, updated.Load(), listed.Load())
		}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	every := rw.opts.ProgressEvery
	if rw.opts.Terminal {
		every = 200 * time.Millisecond
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				report(true)
				return
			case <-t.C:
				report(false)
			}
		}
	}()
	return func() { close(done); <-finished }
}

func qualified(o object) string {
	if o.ns == "" {
		return o.name
	}
	return o.ns + "/" + o.name
}

func (rw *Rewriter) client(resource string) (resourceClient, error) {
	if resource == "secrets" {
		return secretClient{rw.typed}, nil
	}
	gvr, err := groupVersionResource(rw.typed, resource)
	if err != nil {
		return nil, err
	}
	return dynamicClient{rw.dynamic.Resource(gvr)}, nil
}

// groupVersionResource finds the preferred version of resource
// ("configmaps", "deployments.apps") from discovery.
func groupVersionResource(kc kubernetes.Interface, resource string) (schema.GroupVersionResource, error) {
	d, err := discover(kc)
	if err != nil {
		return schema.GroupVersionResource{}, fmt.Errorf("discover %s: %w", resource, err)
	}
	gvr, ok := d.find(resource)
	if !ok {
		return schema.GroupVersionResource{}, fmt.Errorf("rewrite: %s", d.unserved(resource))
	}
	return gvr, nil
}

// discovered is what discovery says the API server serves, in the
// preferred version of each group.
type discovered struct {
	lists []*metav1.APIResourceList
	// failed holds the groups whose discovery failed (an aggregated API
	// that is down): their resources may exist, unseen.
	failed map[schema.GroupVersion]error
}

// discover asks discovery once for every resource the server serves. A
// partial answer is kept, with the groups it lacks.
func discover(kc kubernetes.Interface) (discovered, error) {
	lists, err := kc.Discovery().ServerPreferredResources()
	if err != nil && len(lists) == 0 {
		return discovered{}, err
	}
	d := discovered{lists: lists}
	var gdf *discovery.ErrGroupDiscoveryFailed
	if errors.As(err, &gdf) {
		d.failed = gdf.Groups
	}
	return d, nil
}

// find returns the preferred version of resource ("configmaps",
// "deployments.apps").
func (d discovered) find(resource string) (schema.GroupVersionResource, bool) {
	name, group, _ := strings.Cut(resource, ".")
	for _, l := range d.lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil || gv.Group != group {
			continue
		}
		for _, r := range l.APIResources {
			if r.Name == name {
				return gv.WithResource(name), true
			}
		}
	}
	return schema.GroupVersionResource{}, false
}

// unserved says that resource is not served, and why it may be.
func (d discovered) unserved(resource string) string {
	_, group, _ := strings.Cut(resource, ".")
	for gv, err := range d.failed {
		if gv.Group == group {
			return fmt.Sprintf("the API server serves no resource %q: the discovery of %s failed (%v)", resource, gv, err)
		}
	}
	return fmt.Sprintf("the API server serves no resource %q", resource)
}

type secretClient struct{ kc kubernetes.Interface }

func (c secretClient) list(ctx context.Context, opts metav1.ListOptions) ([]object, string, error) {
	l, err := c.kc.CoreV1().Secrets("").List(ctx, opts)
	if err != nil {
		return nil, "", err
	}
	out := make([]object, len(l.Items))
	for i := range l.Items {
		s := &l.Items[i]
		out[i] = object{ns: s.Namespace, name: s.Name, obj: s}
	}
	return out, l.Continue, nil
}

func (c secretClient) get(ctx context.Context, ns, name string) (object, error) {
	s, err := c.kc.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return object{}, err
	}
	return object{ns: ns, name: name, obj: s}, nil
}

func (c secretClient) update(ctx context.Context, o object) error {
	_, err := c.kc.CoreV1().Secrets(o.ns).Update(ctx, o.obj.(*corev1.Secret), metav1.UpdateOptions{})
	return err
}

type dynamicClient struct {
	rc dynamic.NamespaceableResourceInterface
}

func (c dynamicClient) list(ctx context.Context, opts metav1.ListOptions) ([]object, string, error) {
	l, err := c.rc.List(ctx, opts)
	if err != nil {
		return nil, "", err
	}
	out := make([]object, len(l.Items))
	for i := range l.Items {
		u := &l.Items[i]
		out[i] = object{ns: u.GetNamespace(), name: u.GetName(), obj: u}
	}
	return out, l.GetContinue(), nil
}

func (c dynamicClient) get(ctx context.Context, ns, name string) (object, error) {
	var u *unstructured.Unstructured
	var err error
	if ns == "" {
		u, err = c.rc.Get(ctx, name, metav1.GetOptions{})
	} else {
		u, err = c.rc.Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		return object{}, err
	}
	return object{ns: ns, name: name, obj: u}, nil
}

func (c dynamicClient) update(ctx context.Context, o object) error {
	u := o.obj.(*unstructured.Unstructured)
	var err error
	if o.ns == "" {
		_, err = c.rc.Update(ctx, u, metav1.UpdateOptions{})
	} else {
		_, err = c.rc.Namespace(o.ns).Update(ctx, u, metav1.UpdateOptions{})
	}
	return err
}
