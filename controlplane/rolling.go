package controlplane

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/atrest-io/atrest/cluster"
)

// NodeState is what one node runs, as Observe saw it.
type NodeState struct {
	Node      string
	File      ProviderFile // prints and logs without its bytes
	APIServer APIServer
	Ready     bool
	NotReady  string // why /readyz failed, when not Ready
	// Unsynced: not Ready only because informer-sync fails (it serves,
	// but a cache cannot fill: it may lack a key for what etcd stores).
	// A change may be made to it only when the caller allows it
	// (AllowUnsynced).
	Unsynced bool
	// Load is what kube-apiserver is proven to run against File.
	Load LoadState
	// LoadErr says why Load could not be read (no get on /metrics, ...).
	LoadErr string
	// RestartOnly: changes to this node restart kube-apiserver, as the
	// settings or cluster.yml ask (Options.RestartOnly).
	RestartOnly bool
	Err         error // what could not be observed; nil when all was
}

// FileChangedSinceStart reports whether the node's provider file was
// written after its kube-apiserver container started, while the container
// runs with the file: on the restart path kube-apiserver reads the file
// only at start, so what it runs is then unknown (the file on disk is not
// proof). With --encryption-provider-config-automatic-reload the file is
// read again without a restart, and this says nothing: see Load.
func (s NodeState) FileChangedSinceStart() bool {
	a := s.APIServer
	return s.File.Present && a.ProviderConfigSet() && !a.AutomaticReload && changedSinceStart(s.File, a)
}

func changedSinceStart(f ProviderFile, a APIServer) bool {
	return !f.ModTime.IsZero() && !a.StartedAt.IsZero() && f.ModTime.After(a.StartedAt)
}

// Unloaded reports whether the node's kube-apiserver runs with the
// provider file but is not proven to run the file on disk: written after
// it started, and, with automatic reload, its metrics do not show it
// loaded (Load).
func (s NodeState) Unloaded() bool {
	a := s.APIServer
	if !s.File.Present || !a.ProviderConfigSet() {
		return false
	}
	if !a.AutomaticReload {
		return s.FileChangedSinceStart()
	}
	return s.Load != LoadInForce
}

// loadState is what the node's kube-apiserver (a) is proven to run against
// the provider file f: on the restart path, the file if it was written
// before the start; with automatic reload, what its metrics prove.
func (n *Node) loadState(ctx context.Context, f ProviderFile, a APIServer) (LoadState, error) {
	if !f.Present || !a.ProviderConfigSet() {
		return LoadUnknown, nil
	}
	if !changedSinceStart(f, a) {
		return LoadInForce, nil
	}
	if !a.AutomaticReload {
		return LoadUnknown, nil
	}
	v, err := n.ServerVersion(ctx)
	if err != nil {
		return LoadUnknown, err
	}
	m, err := n.ReloadMetrics(ctx)
	if err != nil {
		return LoadUnknown, err
	}
	return reloadState(v, f, a.StartedAt, m), nil
}

// Observe reads every node's live state in parallel: its provider file,
// its kube-apiserver container (flag, reload flag, running) and one
// /readyz. A node that is not ready is a state, not an error; the error
// joins what could not be read, and the states hold all that could.
func (c *Cluster) Observe(ctx context.Context) ([]NodeState, error) {
	states := make([]NodeState, len(c.nodes))
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		wg.Go(func() {
			s := NodeState{Node: n.name, RestartOnly: c.opts.RestartOnly}
			var errs []error
			var err error
			if s.File, s.APIServer, err = n.observe(ctx); err != nil {
				errs = append(errs, err)
			}
			var nr *NotReadyError
			if err := n.probeReady(ctx); err != nil {
				s.NotReady = err.Error()
				s.Unsynced = errors.As(err, &nr) && nr.Unsynced()
			} else {
				s.Ready = true
			}
			if s.Ready || s.Unsynced {
				if s.Load, err = n.loadState(ctx, s.File, s.APIServer); err != nil {
					s.LoadErr = err.Error()
				}
			}
			s.Err = errors.Join(errs...)
			states[i] = s
		})
	}
	wg.Wait()
	var errs []error
	for _, s := range states {
		if s.Err != nil {
			errs = append(errs, s.Err)
		}
	}
	return states, errors.Join(errs...)
}

// RolloutError is a rolling change that stopped at one node.
type RolloutError struct {
	What      string   // the change: "rolling apply of provider file sha256 ..."
	Node      string   // where it stopped
	Index     int      // the node's position, from 0
	Total     int      // how many nodes the change covers
	Done      []string // nodes before it, which have the change
	Untouched []string // nodes after it, left as they were
	Changed   bool     // whether Node was changed before the failure
	Err       error    // what failed on Node (a *RollbackError when Changed)
}

func (e *RolloutError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s stopped at %s (node %d of %d): ", e.What, e.Node, e.Index+1, e.Total)
	switch {
	case errors.Is(e.Err, ErrFenced):
		fmt.Fprintf(&b, "%s was left as it was when atrest lost its lock: the new lock holder's recovery repairs it", e.Node)
	case errors.Is(e.Err, ErrRollbackFailed):
		fmt.Fprintf(&b, "%s could NOT be rolled back and needs manual repair", e.Node)
	case errors.Is(e.Err, ErrRolledBack):
		fmt.Fprintf(&b, "%s was rolled back to its previous provider file and kube-apiserver container, and is ready", e.Node)
	case e.Changed:
		fmt.Fprintf(&b, "%s was left part way", e.Node)
	default:
		fmt.Fprintf(&b, "nothing was changed on %s", e.Node)
	}
	if len(e.Untouched) > 0 {
		fmt.Fprintf(&b, "; the remaining nodes (%s) were left untouched", strings.Join(e.Untouched, ", "))
	}
	if len(e.Done) > 0 {
		fmt.Fprintf(&b, "; %s already had the change", strings.Join(e.Done, ", "))
	}
	// The outcome is said above: show what failed, and what failed in
	// the rollback.
	var rb *RollbackError
	if errors.As(e.Err, &rb) {
		b.WriteString("\ncause: ")
		b.WriteString(rb.Cause.Error())
		if rb.Rollback != nil {
			b.WriteString("\nrollback: ")
			b.WriteString(rb.Rollback.Error())
		}
		return b.String()
	}
	b.WriteString("\ncause: ")
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap exposes the node's error.
func (e *RolloutError) Unwrap() error { return e.Err }

func (c *Cluster) rollout(ctx context.Context, what string, step func(context.Context, *Node) (changed bool, err error)) error {
	for i, n := range c.nodes {
		changed, err := step(ctx, n)
		if err != nil {
			return &RolloutError{
				What: what, Node: n.name, Index: i, Total: len(c.nodes),
				Done: names(c.nodes[:i]), Untouched: names(c.nodes[i+1:]),
				Changed: changed, Err: err,
			}
		}
	}
	return nil
}

func names(nodes []*Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.name
	}
	return out
}

// RollingApply deploys the provider file to every node, one at a time in
// cluster.yml order: on each it writes the file, sets the flag (replacing
// the container) or restarts kube-apiserver, waits until it is ready and
// checks that a canary written through it is stored as want (a storage
// prefix such as "aescbc:v1:k-abcde", or "identity"). A node that already
// runs the file and passes the canary is left as it is, so an interrupted
// rollout can be run again. When anything fails on a node, that node gets
// its previous file and container back and the nodes after it are not
// touched: the error is a *RolloutError saying so.
func (c *Cluster) RollingApply(ctx context.Context, file []byte, want string) error {
	if want == "" {
		return errors.New("controlplane: rolling apply: no expected canary prefix")
	}
	nodes, why := c.reloadable(ctx)
	if nodes != nil {
		return c.reloadApply(ctx, nodes, file, want)
	}
	c.opts.Logger.Info("this stage restarts kube-apiserver", "why", why)
	sum := newProviderFile(file).SHA256
	c.opts.Logger.Info("rolling out provider file", "sha256", sum, "nodes", len(c.nodes), "want", want)
	return c.rollout(ctx, "rolling apply of provider file sha256 "+sum, func(ctx context.Context, n *Node) (bool, error) {
		return n.apply(ctx, file, want)
	})
}

// RollingRemove takes the provider config away from every node, one at a
// time: it clears the flag (replacing the container, which must become
// ready), removes the file, and checks that the node now stores the canary
// in plain ("identity"). It is disable's last step: every stored object
// must already be plain, the canary included, or the node cannot read them.
func (c *Cluster) RollingRemove(ctx context.Context) error {
	c.opts.Logger.Info("rolling removal of the provider config", "nodes", len(c.nodes))
	return c.rollout(ctx, "rolling removal of the provider config", func(ctx context.Context, n *Node) (bool, error) {
		return n.removeConfig(ctx)
	})
}

// Reload restarts the kube-apiserver of the node named node so that it
// loads the provider file it has on disk, waits until it is ready and
// checks that a canary written through it is stored as want. It is for a
// node whose file changed after its kube-apiserver started
// (NodeState.FileChangedSinceStart): the file stays as it is, so there is
// nothing to roll back to; the planner allows it only when every other
// node reads what the file writes with.
func (c *Cluster) Reload(ctx context.Context, node, want string) error {
	const op = "reload the provider file"
	i := slices.IndexFunc(c.nodes, func(n *Node) bool { return n.name == node })
	if i < 0 {
		return fmt.Errorf("controlplane: %s: no controlplane node %s", op, node)
	}
	n := c.nodes[i]
	if _, _, err := n.before(ctx, op); err != nil {
		return err
	}
	n.log.Info("restarting kube-apiserver: its provider file changed after it started", "want", want)
	if err := n.Restart(ctx); err != nil {
		return err
	}
	if err := n.WaitReady(ctx); err != nil {
		return err
	}
	got, err := n.Canary(ctx)
	if err != nil {
		return err
	}
	if got != want {
		return nodeErr(n.name, "canary", ErrCanary, fmt.Errorf("after the restart the canary written through %s is stored as %q, not %q", n.name, got, want))
	}
	n.log.Info("provider file loaded", "canary", got)
	return nil
}

// before is a node's state before a change, and the checks that must pass
// before any change is made. A replacement an interrupted run left half
// done is finished or undone first.
func (n *Node) before(ctx context.Context, op string) (ProviderFile, *container, error) {
	if err := n.recoverLeftovers(ctx); err != nil {
		return ProviderFile{}, nil, nodeErr(n.name, op, nil, fmt.Errorf("clean up after an interrupted run: %w", err))
	}
	prev, err := n.ReadProviderFile(ctx)
	if err != nil {
		return ProviderFile{}, nil, err
	}
	c, err := n.container(ctx)
	if err != nil {
		return ProviderFile{}, nil, err
	}
	if !c.State.Running {
		return ProviderFile{}, nil, nodeErr(n.name, op, ErrNotReady, fmt.Errorf("kube-apiserver container is %s before the change: atrest changes only a healthy node; repair it first", c.State.Status))
	}
	var nr *NotReadyError
	if err := n.probeReady(ctx); err != nil && !(errors.As(err, &nr) && nr.Unsynced() && unsyncedAllowed(ctx, n.name)) {
		return ProviderFile{}, nil, nodeErr(n.name, op, ErrNotReady, fmt.Errorf("kube-apiserver is not ready before the change (%v): atrest changes only a healthy node; repair it first", err))
	}
	return prev, c, nil
}

// apply is RollingApply on one node. changed says whether the node was
// touched before an error.
func (n *Node) apply(ctx context.Context, file []byte, want string) (changed bool, err error) {
	const op = "apply provider file"
	prev, old, err := n.before(ctx, op)
	if err != nil {
		return false, err
	}
	a := describe(old, n.file)
	if a.ProviderFileInContainer == "" {
		return false, nodeErr(n.name, op, nil, fmt.Errorf("the %s container mounts nothing that holds %s, so it could not read the provider file: check prefix_path in cluster.yml", containerName, n.file))
	}
	gates, _ := a.Flag(flagFeatureGates)
	if _, err := cluster.ParseEncryptionConfig(n.file, "", file, gates); err != nil {
		return false, nodeErr(n.name, op, nil, fmt.Errorf("not a provider file this kube-apiserver accepts: %w", err))
	}
	newSum := newProviderFile(file).SHA256
	state, err := n.loadState(ctx, prev, a)
	if err != nil {
		n.log.Warn("what kube-apiserver runs is unknown: deploying as if it did not run the file", "error", err)
	}
	loaded := state == LoadInForce
	if prev.SHA256 == newSum && a.ProviderConfigSet() && loaded {
		// Already deployed, perhaps by an interrupted run, and
		// kube-apiserver started after the file was written: the canary
		// says whether it writes as the file says.
		if got, err := n.Canary(ctx); err == nil && got == want {
			n.log.Info("provider file already in effect", "sha256", newSum, "canary", got)
			return false, nil
		}
	}

	// The previous file stays on the node until the step is over, for
	// Recover after a crash; the rollback below uses what it read.
	if err := n.saveBackup(ctx, prev); err != nil {
		return false, err
	}
	canaryWritten := false
	fail := func(cause error) (bool, error) {
		return true, n.rollbackApply(ctx, prev, a, cause, canaryWritten)
	}
	if err := n.WriteProviderFile(ctx, file); err != nil {
		return fail(err)
	}
	cmd, why := n.command(ctx, a)
	if slices.Equal(cmd, a.cmd) {
		if err := n.Restart(ctx); err != nil {
			return fail(err)
		}
		if err := n.WaitReady(ctx); err != nil {
			return fail(err)
		}
	} else if err := n.replace(ctx, old, cmd, why); err != nil {
		return fail(err)
	}
	canaryWritten = true
	got, err := n.Canary(ctx)
	if err != nil {
		return fail(err)
	}
	if got != want {
		return fail(nodeErr(n.name, "canary", ErrCanary, fmt.Errorf("the canary written through %s is stored as %q, not %q", n.name, got, want)))
	}
	n.log.Info("provider file in effect", "sha256", newSum, "canary", got)
	n.dropBackup(ctx)
	return true, nil
}

// command is the kube-apiserver command apply runs the node with, and
// what it changes: --encryption-provider-config at the node's file, and,
// unless Options.RestartOnly, the reload flag on a version whose metrics
// prove a reload, so that this restart is the node's last for a provider
// file.
func (n *Node) command(ctx context.Context, a APIServer) (cmd []string, why string) {
	cmd = a.cmd
	var set []string
	if !a.ProviderConfigSet() {
		cmd = setFlag(cmd, flagProviderConfig, a.ProviderFileInContainer)
		set = append(set, "--"+flagProviderConfig)
	}
	if !n.opts.RestartOnly && !a.AutomaticReload {
		switch v, err := n.ServerVersion(ctx); {
		case err != nil:
			n.log.Warn("kube-apiserver's version unknown: leaving --"+flagAutomaticReload+" unset, this node stays on the restart path", "error", err)
		case v.ReloadProvable():
			cmd = setFlag(cmd, flagAutomaticReload, "true")
			set = append(set, "--"+flagAutomaticReload)
		}
	}
	return cmd, "set " + strings.Join(set, " and ")
}

// rollbackApply puts the node back as it was before apply: its previous
// provider file (or none) and its previous kube-apiserver command, ready.
func (n *Node) rollbackApply(ctx context.Context, prev ProviderFile, before APIServer, cause error, canaryWritten bool) error {
	ctx = context.WithoutCancel(ctx) // the node must not be left half changed
	if err := n.lostLock(ctx, "roll the node back", cause); err != nil {
		return err
	}
	var inner *RollbackError
	if errors.As(cause, &inner) {
		// A replacement container that did not become ready was already
		// put back (or not), and logged: keep its cause, add its outcome.
		cause = inner.Cause
		n.log.Warn("change failed: rolling the node back")
	} else {
		n.log.Warn("change failed: rolling the node back", "error", cause)
	}
	var errs []error
	if inner != nil && inner.Rollback != nil {
		errs = append(errs, inner.Rollback)
	}
	if canaryWritten {
		// Written with the new config, the canary may be unreadable to the
		// nodes without its key, and to this one once it is put back.
		if err := n.deleteCanary(ctx); err != nil {
			n.log.Warn("could not delete the canary written with the failed config", "error", err)
		}
	}
	if prev.Present {
		if err := n.WriteProviderFile(ctx, prev.Data); err != nil {
			errs = append(errs, fmt.Errorf("restore the previous provider file: %w", err))
		}
	} else if err := n.RemoveProviderFile(ctx); err != nil {
		errs = append(errs, fmt.Errorf("remove the new provider file: %w", err))
	}
	if cur, err := n.container(ctx); err != nil {
		errs = append(errs, err)
	} else {
		switch {
		case !slices.Equal(cur.config.Cmd, before.cmd):
			err = n.replace(ctx, cur, before.cmd, "restore the previous kube-apiserver command")
		case before.EncryptionProviderConfig != "" || !cur.State.Running:
			// It reads the file: restart it on the previous one.
			if err = n.Restart(ctx); err == nil {
				err = n.WaitReady(ctx)
			}
		default:
			err = n.WaitReady(ctx)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	rb := &RollbackError{Node: n.name, Cause: cause, Rollback: errors.Join(errs...)}
	if rb.Rollback == nil {
		n.log.Warn("node rolled back and ready")
		n.dropBackup(ctx)
	} else {
		n.log.Error("ROLLBACK FAILED: the node needs manual repair", "error", rb.Rollback)
	}
	return rb
}

// removeConfig is RollingRemove on one node.
func (n *Node) removeConfig(ctx context.Context) (changed bool, err error) {
	const op = "remove provider config"
	prev, old, err := n.before(ctx, op)
	if err != nil {
		return false, err
	}
	a := describe(old, n.file)
	if a.EncryptionProviderConfig != "" || a.AutomaticReload {
		cmd := removeFlag(removeFlag(a.cmd, flagProviderConfig), flagAutomaticReload)
		if err := n.replace(ctx, old, cmd, "clear --"+flagProviderConfig); err != nil {
			var rb *RollbackError
			return errors.As(err, &rb), err
		}
		changed = true
	}
	if prev.Present {
		if err := n.RemoveProviderFile(ctx); err != nil {
			return changed, err
		}
		changed = true
	}
	got, err := n.Canary(ctx)
	if err != nil {
		return changed, err
	}
	if got != cluster.PrefixIdentity {
		return changed, nodeErr(n.name, "canary", ErrCanary, fmt.Errorf("with no provider config the canary written through %s is stored as %q, not %q", n.name, got, cluster.PrefixIdentity))
	}
	return changed, nil
}
