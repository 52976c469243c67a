package controlplane

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrConfigRefused: a node's kube-apiserver refused a provider file it was
// to reload, or did not prove it loaded it within Options.ReloadTimeout.
// The config it had stays in force; the same file would be refused again,
// so it needs a person.
var ErrConfigRefused = errors.New("provider file refused by kube-apiserver")

// DefaultReloadTimeout is a few of kube-apiserver's one-minute reload
// periods, and a margin for the health check of new KMS plugins.
const DefaultReloadTimeout = 3*time.Minute + 30*time.Second

// reloadPoll is how often a reload stage reads each node's metrics.
const reloadPoll = time.Second

// reloadNode is one node in a stage without restarts.
type reloadNode struct {
	n       *Node
	prev    ProviderFile // the file in force before the stage
	api     APIServer
	version Version
	base    ReloadMetrics // before the write
	wrote   bool          // the new file is on the node
	loaded  bool          // the new file was proven in force
	refused bool          // kube-apiserver refused the new file
	err     error         // what failed on this node
	undo    error         // what failed putting the previous file back
}

// reloadable prepares every node for a stage without restarts: each must
// run with the reload flag and the provider file set, on a version whose
// metrics prove a reload, with its current file proven in force (so that
// a success seen later is this stage's). ok is false, with why, when any
// node is not so: the stage then takes the restart path, which reports a
// node's own trouble in full.
func (c *Cluster) reloadable(ctx context.Context) (nodes []*reloadNode, why string) {
	if c.opts.RestartOnly {
		return nil, "restart-only is set"
	}
	nodes = make([]*reloadNode, len(c.nodes))
	whys := make([]string, len(c.nodes))
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		wg.Go(func() {
			r, why := n.reloadable(ctx)
			nodes[i], whys[i] = r, why
		})
	}
	wg.Wait()
	var not []string
	for i, w := range whys {
		if w != "" {
			not = append(not, c.nodes[i].name+": "+w)
		}
	}
	if len(not) > 0 {
		return nil, strings.Join(not, "; ")
	}
	return nodes, ""
}

func (n *Node) reloadable(ctx context.Context) (*reloadNode, string) {
	prev, old, err := n.before(ctx, "apply provider file")
	if err != nil {
		return nil, err.Error()
	}
	a := describe(old, n.file)
	if !a.ProviderConfigSet() || !a.AutomaticReload {
		return nil, "kube-apiserver runs without --" + flagAutomaticReload
	}
	if !prev.Present {
		return nil, "it has no provider file to reload from"
	}
	v, err := n.ServerVersion(ctx)
	if err != nil {
		return nil, err.Error()
	}
	if !v.ReloadProvable() {
		return nil, fmt.Sprintf("kube-apiserver %s exports no metrics that prove a reload (v1.30 and later do)", v)
	}
	m, err := n.ReloadMetrics(ctx)
	if err != nil {
		return nil, err.Error()
	}
	// Its current file must be in force, so that a success seen later is
	// this stage's.
	if changedSinceStart(prev, a) {
		if s := reloadState(v, prev, a.StartedAt, m); s != LoadInForce {
			return nil, "its provider file is " + s.String() + " by kube-apiserver"
		}
	}
	return &reloadNode{n: n, prev: prev, api: a, version: v, base: m}, ""
}

// ReloadError is a stage without restarts that failed on one or more
// nodes, and how putting the previous file back went.
type ReloadError struct {
	What     string
	Failed   map[string]error // per node, what failed
	Reverted []string         // the nodes that had the new file, given the previous one back
	Revert   error            // nil when the previous file is proven in force on each of them
}

func (e *ReloadError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s failed on %d node(s)", e.What, len(e.Failed))
	switch {
	case e.Revert != nil:
		fmt.Fprintf(&b, "; putting the previous provider file back failed: %s: %v", ErrRollbackFailed, e.Revert)
	case len(e.Reverted) > 0:
		fmt.Fprintf(&b, "; the previous provider file is back and proven in force on %s", strings.Join(e.Reverted, ", "))
	default:
		b.WriteString("; no node was changed")
	}
	for _, name := range sortedKeys(e.Failed) {
		fmt.Fprintf(&b, "\ncause on %s: %v", name, e.Failed[name])
	}
	return b.String()
}

// Unwrap exposes every node's failure and the outcome kind.
func (e *ReloadError) Unwrap() []error {
	out := []error{ErrRolledBack}
	if e.Revert != nil {
		out = []error{ErrRollbackFailed, e.Revert}
	}
	for _, name := range sortedKeys(e.Failed) {
		out = append(out, e.Failed[name])
	}
	return out
}

// reloadApply is a stage without restarts: the file is written to every
// node at once, each node's kube-apiserver must prove by its metrics that
// it loaded it, then a canary through each node must be stored as want.
// When any node fails, every node that has the new file gets the previous
// one back and must prove it in force again.
func (c *Cluster) reloadApply(ctx context.Context, nodes []*reloadNode, file []byte, want string) error {
	sum := newProviderFile(file).SHA256
	what := "reload of provider file sha256 " + sum
	c.opts.Logger.Info("deploying the provider file without restarts", "sha256", sum, "nodes", len(nodes), "want", want)
	start := time.Now()
	each(nodes, func(r *reloadNode) { r.err = r.n.reloadTo(ctx, r, file) })
	if failed := failures(nodes); len(failed) == 0 {
		// One at a time: the canary is one secret.
		for _, r := range nodes {
			got, err := r.n.Canary(ctx)
			switch {
			case err != nil:
				r.err = err
			case got != want:
				r.err = nodeErr(r.n.name, "canary", ErrCanary, fmt.Errorf("after the reload the canary written through %s is stored as %q, not %q", r.n.name, got, want))
			}
			if r.err != nil {
				break
			}
		}
	}
	failed := failures(nodes)
	if len(failed) == 0 {
		for _, r := range nodes {
			r.n.dropBackup(ctx)
		}
		c.opts.Logger.Info("provider file in force on every node, without a restart", "sha256", sum, "took", time.Since(start).Round(time.Millisecond))
		return nil
	}
	return c.revertReload(ctx, what, nodes, failed)
}

// reloadTo writes file to one node and waits until its kube-apiserver
// proves it loaded it, or refused it.
func (n *Node) reloadTo(ctx context.Context, r *reloadNode, file []byte) error {
	if r.prev.SHA256 == newProviderFile(file).SHA256 {
		r.loaded = true // proven in force by reloadable
		return nil
	}
	if err := n.saveBackup(ctx, r.prev); err != nil {
		return err
	}
	r.wrote = true // from here on the revert puts prev back
	if err := n.WriteProviderFile(ctx, file); err != nil {
		return err
	}
	state, err := n.waitLoaded(ctx, r)
	if err != nil {
		return err
	}
	switch state {
	case LoadInForce:
		r.loaded = true
		return nil
	case LoadRefused:
		r.refused = true
		return nodeErr(n.name, "reload provider file", ErrConfigRefused, errors.New(n.refusalReason(ctx)))
	}
	return nodeErr(n.name, "reload provider file", ErrConfigRefused,
		fmt.Errorf("kube-apiserver did not prove it loaded the new file within %s (it polls the file once a minute); %s", n.opts.ReloadTimeout, n.refusalReason(ctx)))
}

// waitLoaded reads the node's provider file and metrics until its
// kube-apiserver has the file in force or refused it, or
// Options.ReloadTimeout passes (LoadUnknown).
func (n *Node) waitLoaded(ctx context.Context, r *reloadNode) (LoadState, error) {
	f, err := n.ReadProviderFile(ctx)
	if err != nil {
		return LoadUnknown, err
	}
	deadline := time.Now().Add(n.opts.ReloadTimeout)
	for {
		m, err := n.ReloadMetrics(ctx)
		if err != nil {
			return LoadUnknown, err
		}
		if s := reloadState(r.version, f, r.api.StartedAt, m); s != LoadUnknown {
			return s, nil
		}
		if !time.Now().Before(deadline) {
			return LoadUnknown, nil
		}
		select {
		case <-ctx.Done():
			return LoadUnknown, ctx.Err()
		case <-time.After(reloadPoll):
		}
	}
}

// refusalReason is kube-apiserver's own word on a refused file: the last
// line of its log that says why, or a pointer to the log.
func (n *Node) refusalReason(ctx context.Context) string {
	ctx = context.WithoutCancel(ctx)
	c, err := n.docker.inspect(ctx, containerName)
	if err != nil {
		return "see the kube-apiserver container's log"
	}
	logs, err := n.docker.logsTail(ctx, c.ID, 200, c.config.Tty)
	if err != nil {
		return "see the kube-apiserver container's log"
	}
	var last string
	for _, line := range strings.Split(string(logs), "\n") {
		if strings.Contains(line, "error processing encryption config file") {
			last = strings.TrimSpace(line)
		}
	}
	if last == "" {
		return "the kube-apiserver log says nothing about it"
	}
	if len(last) > 600 {
		last = last[:600] + "..."
	}
	return "kube-apiserver says: " + last
}

// revertReload puts the previous file back on every node that has the new
// one and waits until each proves it in force.
func (c *Cluster) revertReload(ctx context.Context, what string, nodes []*reloadNode, failed map[string]error) error {
	ctx = context.WithoutCancel(ctx) // no node may be left with the refused file
	e := &ReloadError{What: what, Failed: failed}
	var touched []*reloadNode
	for _, r := range nodes {
		if r.wrote {
			touched = append(touched, r)
			e.Reverted = append(e.Reverted, r.n.name)
		}
	}
	if len(touched) == 0 {
		return e
	}
	c.opts.Logger.Warn("stage failed: putting the previous provider file back on every node that has the new one", "nodes", strings.Join(e.Reverted, ", "))
	// Written with the new config, the canary may be unreadable once the
	// previous one is back.
	if err := touched[0].n.deleteCanary(ctx); err != nil {
		c.opts.Logger.Warn("could not delete the canary written with the failed config", "error", err)
	}
	each(touched, func(r *reloadNode) { r.undo = r.n.revertTo(ctx, r) })
	var errs []error
	for _, r := range touched {
		errs = append(errs, r.undo)
	}
	e.Revert = errors.Join(errs...)
	if e.Revert == nil {
		for _, r := range touched {
			r.n.dropBackup(ctx)
		}
		c.opts.Logger.Warn("previous provider file back in force on every node that had the new one")
	} else {
		c.opts.Logger.Error("ROLLBACK FAILED: a node may run the refused provider file", "error", e.Revert)
	}
	return e
}

// revertTo writes the previous file back on one node and waits until its
// kube-apiserver proves it in force.
func (n *Node) revertTo(ctx context.Context, r *reloadNode) error {
	if err := n.lostLock(ctx, "put the previous provider file back", r.err); err != nil {
		return err
	}
	if err := n.WriteProviderFile(ctx, r.prev.Data); err != nil {
		return fmt.Errorf("restore the previous provider file on %s: %w", n.name, err)
	}
	// Before v1.34 nothing names the config in force, and a kube-apiserver
	// that refused the new file records nothing when the previous one
	// comes back. Its retries of the new file fail, never succeed: no
	// success since the stage began says the previous file is in force.
	if r.refused && !r.version.hashInForce() {
		m, err := n.ReloadMetrics(ctx)
		if err != nil {
			return fmt.Errorf("prove the previous provider file in force on %s: %w", n.name, err)
		}
		if m.Successes == r.base.Successes {
			return nil
		}
	}
	state, err := n.waitLoaded(ctx, r)
	if err != nil {
		return fmt.Errorf("prove the previous provider file in force on %s: %w", n.name, err)
	}
	if state == LoadInForce {
		return nil
	}
	if !r.version.hashInForce() {
		// A node that did not answer in time either way: no success since
		// the stage began says it never left the previous file.
		if m, err := n.ReloadMetrics(ctx); err == nil && m.Successes == r.base.Successes {
			return nil
		}
	}
	return nodeErr(n.name, "prove the previous provider file in force", ErrRollbackFailed,
		fmt.Errorf("kube-apiserver's metrics show the previous file %s: restart it to load the file on disk", state))
}

// each runs fn on every node at once and waits for all.
func each(nodes []*reloadNode, fn func(*reloadNode)) {
	var wg sync.WaitGroup
	for _, r := range nodes {
		wg.Go(func() { fn(r) })
	}
	wg.Wait()
}

func failures(nodes []*reloadNode) map[string]error {
	out := map[string]error{}
	for _, r := range nodes {
		if r.err != nil {
			out[r.n.name] = r.err
		}
	}
	return out
}

func sortedKeys(m map[string]error) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
