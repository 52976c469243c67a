package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Names of the kube-apiserver container and of the two it briefly has
// beside it while it is replaced.
const (
	containerName = "kube-apiserver"
	nextName      = "kube-apiserver-atrest-next" // the replacement, before it takes over
	prevName      = "kube-apiserver-atrest-prev" // the replaced one, until the replacement is ready
)

// logTailLines is how much of the container log a readiness failure shows.
const logTailLines = 30

// APIServer is what a node's kube-apiserver container runs.
type APIServer struct {
	ContainerID string
	Image       string // as configured, e.g. rancher/hyperkube:v1.32.5-rancher1
	Status      string // Docker's state: running, restarting, exited, ...
	Running     bool
	// StartedAt is when the container last started: kube-apiserver reads
	// its provider file then, and only then on the restart path.
	StartedAt time.Time
	// Args is the command line: the entrypoint, then the command.
	Args []string
	// EncryptionProviderConfig is --encryption-provider-config as the
	// container sees it; "" when unset.
	EncryptionProviderConfig string
	// AutomaticReload: --encryption-provider-config-automatic-reload.
	AutomaticReload bool
	// ProviderFileInContainer is where the node's provider file appears
	// inside the container, through its bind mounts; "" when none covers
	// it.
	ProviderFileInContainer string

	cmd []string // the command, as the flag edits see it
}

// parseDockerTime reads a time Docker reports (RFC 3339 with nanoseconds);
// the zero time when it is absent or Docker's "0001-01-01T00:00:00Z".
func parseDockerTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

// ProviderConfigSet reports whether --encryption-provider-config points at
// the node's provider file.
func (a APIServer) ProviderConfigSet() bool {
	return a.ProviderFileInContainer != "" && a.EncryptionProviderConfig == a.ProviderFileInContainer
}

// Flag returns the value of the kube-apiserver flag --name.
func (a APIServer) Flag(name string) (string, bool) { return lookupFlag(a.Args, name) }

func describe(c *container, hostFile string) APIServer {
	args := append(slices.Clone([]string(c.config.Entrypoint)), c.config.Cmd...)
	a := APIServer{
		ContainerID:             c.ID,
		Image:                   c.config.Image,
		Status:                  c.State.Status,
		Running:                 c.State.Running,
		StartedAt:               parseDockerTime(c.State.StartedAt),
		Args:                    args,
		AutomaticReload:         boolFlag(args, flagAutomaticReload),
		ProviderFileInContainer: containerPath(c.Mounts, hostFile),
		cmd:                     slices.Clone([]string(c.config.Cmd)),
	}
	a.EncryptionProviderConfig, _ = lookupFlag(args, flagProviderConfig)
	return a
}

// container inspects the kube-apiserver container. A missing one is
// ErrContainerMissing, with a hint when an interrupted replacement left it
// under another name.
func (n *Node) container(ctx context.Context) (*container, error) {
	const op = "inspect container " + containerName
	c, err := n.docker.inspect(ctx, containerName)
	if errors.Is(err, errNotFound) {
		hint := "is this node a controlplane node that RKE has set up (rke up)?"
		if prev, _ := n.docker.exists(ctx, prevName); prev != nil {
			hint = fmt.Sprintf("an interrupted replacement left the previous one as %s (%s); atrest puts it back when it next recovers the node (every reconcile starts so), or rename it by hand", prevName, prev.State.Status)
		}
		return nil, nodeErr(n.name, op, ErrContainerMissing, errors.New(hint))
	}
	if err != nil {
		return nil, nodeErr(n.name, op, ErrDocker, err)
	}
	return c, nil
}

// Inspect reports what the node's kube-apiserver container runs.
func (n *Node) Inspect(ctx context.Context) (APIServer, error) {
	c, err := n.container(ctx)
	if err != nil {
		return APIServer{}, err
	}
	return describe(c, n.file), nil
}

// SetProviderConfigFlag sets (on) or clears --encryption-provider-config
// on the node's kube-apiserver, pointing it at the provider file as the
// container sees it, by replacing the container as RKE does: the
// replacement is created under a temporary name with everything else of
// the old one (image, command, binds, env, network mode, restart policy,
// labels, ...), the old one is stopped and renamed, the replacement takes
// its name and starts, and the old one is removed only once the
// replacement is ready. When the replacement does not become ready, the
// old one is put back (and the error wraps ErrRolledBack). Clearing the
// flag also clears --encryption-provider-config-automatic-reload, which
// kube-apiserver refuses without it. Nothing happens when the flag is
// already as asked.
func (n *Node) SetProviderConfigFlag(ctx context.Context, on bool) error {
	op := "clear --" + flagProviderConfig
	if on {
		op = "set --" + flagProviderConfig
	}
	if err := n.recoverLeftovers(ctx); err != nil {
		return nodeErr(n.name, op, nil, err)
	}
	old, err := n.container(ctx)
	if err != nil {
		return err
	}
	a := describe(old, n.file)
	var cmd []string
	switch {
	case on && a.ProviderFileInContainer == "":
		return nodeErr(n.name, op, nil, fmt.Errorf("the %s container mounts nothing that holds %s, so it could not read the provider file: RKE binds /etc/kubernetes (under prefix_path); check prefix_path in cluster.yml", containerName, n.file))
	case on && a.ProviderConfigSet():
		return nil
	case on:
		f, err := n.ReadProviderFile(ctx)
		if err != nil {
			return err
		}
		if !f.Present {
			return nodeErr(n.name, op, nil, fmt.Errorf("there is no provider file at %s, without which kube-apiserver does not start: write it first (nothing was changed)", n.file))
		}
		cmd = setFlag(a.cmd, flagProviderConfig, a.ProviderFileInContainer)
	default:
		cmd = removeFlag(removeFlag(a.cmd, flagProviderConfig), flagAutomaticReload)
	}
	return n.replace(ctx, old, cmd, op)
}

// replace replaces the kube-apiserver container old by one that runs cmd,
// as SetProviderConfigFlag describes. Nothing happens when cmd is old's.
func (n *Node) replace(ctx context.Context, old *container, cmd []string, op string) error {
	if slices.Equal(cmd, old.config.Cmd) {
		return nil
	}
	entry := []string(old.config.Entrypoint)
	for _, f := range []string{flagProviderConfig, flagAutomaticReload} {
		if _, found := lookupFlag(entry, f); found {
			return nodeErr(n.name, op, nil, fmt.Errorf("--%s is in the container's entrypoint, which atrest does not edit", f))
		}
	}
	image, err := n.sameImage(ctx, old)
	if err != nil {
		return nodeErr(n.name, op, ErrDocker, err)
	}
	body, err := createBody(old, image, cmd)
	if err != nil {
		return nodeErr(n.name, op, nil, err)
	}
	newID, err := n.docker.create(ctx, nextName, body)
	if err != nil {
		return nodeErr(n.name, op, ErrDocker, fmt.Errorf("create the replacement container (nothing was changed): %w", err))
	}
	n.log.Info("replacing kube-apiserver container", "op", op, "old", short(old.ID), "new", short(newID))
	// From here on the old container is out of service: any failure puts
	// it back.
	// Each failpoint is a state a crash can leave, which recoverLeftovers
	// repairs.
	steps := []struct {
		what      string
		do        func(context.Context) error
		failpoint string
	}{
		{"stop the old container", func(ctx context.Context) error { return n.docker.stop(ctx, old.ID) }, FailpointSwapAfterStop},
		{"rename the old container to " + prevName, func(ctx context.Context) error { return n.docker.rename(ctx, old.ID, prevName) }, FailpointSwapAfterRename},
		{"rename the replacement to " + containerName, func(ctx context.Context) error { return n.docker.rename(ctx, newID, containerName) }, ""},
		{"start the replacement", func(ctx context.Context) error { return n.docker.start(ctx, newID) }, FailpointSwapAfterStart},
	}
	for _, s := range steps {
		if err := s.do(ctx); err != nil {
			kind := ErrDocker
			if errors.Is(err, ErrFenced) {
				kind = nil // Docker was not even asked
			}
			return n.putBack(ctx, old, newID, nodeErr(n.name, op, kind, fmt.Errorf("%s: %w", s.what, err)))
		}
		if s.failpoint != "" {
			n.failpoint(s.failpoint)
		}
	}
	if err := n.WaitReady(ctx); err != nil {
		return n.putBack(ctx, old, newID, err)
	}
	if err := n.docker.remove(ctx, old.ID); err != nil {
		// The replacement runs and is ready; the leftover is removed by
		// the next change.
		n.log.Warn("could not remove the replaced kube-apiserver container", "container", prevName, "error", err)
	}
	n.log.Info("kube-apiserver container replaced and ready", "op", op, "container", short(newID))
	return nil
}

// sameImage returns the image to create old's replacement from: the name
// old was created with, so that RKE sees no change, unless that name now
// points at another image (a re-tag since), then the exact image old runs.
func (n *Node) sameImage(ctx context.Context, old *container) (string, error) {
	name := old.config.Image
	if name == "" || strings.HasPrefix(name, "sha256:") {
		return old.Image, nil
	}
	id, err := n.docker.imageID(ctx, name)
	if err != nil {
		return "", err
	}
	if id != old.Image {
		n.log.Warn("image name now points at another image: the replacement runs the old container's exact image", "image", name, "old", old.Image, "now", id)
		return old.Image, nil
	}
	return name, nil
}

// putBack undoes a replacement that failed: the replacement goes, the old
// container takes its name back and starts, and must become ready.
func (n *Node) putBack(ctx context.Context, old *container, newID string, cause error) error {
	ctx = context.WithoutCancel(ctx) // a cancelled operation must still not leave the node down
	if err := n.lostLock(ctx, "put the previous kube-apiserver container back", cause); err != nil {
		return err
	}
	n.log.Warn("replacement kube-apiserver failed: putting the previous container back", "error", cause)
	var errs []error
	if err := n.docker.remove(ctx, newID); err != nil && !errors.Is(err, errNotFound) {
		errs = append(errs, fmt.Errorf("remove the replacement: %w", err))
	}
	if cur, err := n.docker.inspect(ctx, old.ID); err != nil {
		errs = append(errs, fmt.Errorf("inspect the previous container: %w", err))
	} else if cur.Name != "/"+containerName {
		if err := n.docker.rename(ctx, old.ID, containerName); err != nil {
			errs = append(errs, fmt.Errorf("rename the previous container back to %s: %w", containerName, err))
		}
	}
	if len(errs) == 0 {
		if err := n.docker.start(ctx, old.ID); err != nil {
			errs = append(errs, fmt.Errorf("start the previous container: %w", err))
		} else if err := n.WaitReady(ctx); err != nil {
			errs = append(errs, fmt.Errorf("the previous container: %w", err))
		}
	}
	rb := &RollbackError{Node: n.name, Cause: cause, Rollback: errors.Join(errs...)}
	if rb.Rollback == nil {
		n.log.Warn("previous kube-apiserver container is back and ready")
	} else {
		n.log.Error("could not put the previous kube-apiserver container back", "error", rb.Rollback)
	}
	return rb
}

// lostLock returns an error wrapping ErrFenced when cause says, or the
// context's Fence now says, that the lock is lost: then nothing more may be
// done on the node, not even undoing the change, which the new holder's
// Recover repairs. nil when the lock is held.
func (n *Node) lostLock(ctx context.Context, what string, cause error) error {
	if !errors.Is(cause, ErrFenced) {
		err := checkFence(ctx, what)
		if err == nil {
			return nil
		}
		cause = errors.Join(cause, err)
	}
	n.log.Error("LOCK LOST: stopping here without undoing the change; the new lock holder's recovery repairs this node", "not done", what, "error", cause)
	return nodeErr(n.name, what, nil, cause)
}

// recoverLeftovers repairs what an interrupted replacement left (see the
// Failpoint* states): a replacement that never took over is removed (and
// the old container, when it was stopped for it, started again); a
// replaced container is removed once its replacement is ready, and put
// back when nothing runs in its place or the replacement does not become
// ready. A node with no leftover costs one call.
func (n *Node) recoverLeftovers(ctx context.Context) error {
	names, err := n.docker.namesLike(ctx, containerName+"-atrest-")
	if err != nil || len(names) == 0 {
		return err
	}
	var found [3]*container
	for i, name := range []string{nextName, prevName, containerName} {
		if found[i], err = n.docker.exists(ctx, name); err != nil {
			return err
		}
	}
	next, prev, cur := found[0], found[1], found[2]
	if next != nil {
		n.log.Warn("removing a replacement kube-apiserver container left by an interrupted run", "container", nextName)
		if err := n.docker.remove(ctx, next.ID); err != nil {
			return fmt.Errorf("remove leftover %s: %w", nextName, err)
		}
		if prev == nil && cur != nil && !cur.State.Running {
			// The replacement is the evidence that atrest stopped this
			// one, and was killed before renaming it.
			n.log.Warn("starting the kube-apiserver container an interrupted run stopped", "container", short(cur.ID))
			if err := n.docker.start(ctx, cur.ID); err != nil {
				return fmt.Errorf("start %s: %w", containerName, err)
			}
			return n.WaitReady(ctx)
		}
	}
	if prev == nil {
		return nil
	}
	if cur != nil && cur.State.Running {
		err := n.WaitReady(ctx)
		if err == nil {
			n.log.Warn("removing the replaced kube-apiserver container left by an interrupted run: its replacement is ready", "container", prevName)
			return n.docker.remove(ctx, prev.ID)
		}
		n.log.Warn("the replacement kube-apiserver an interrupted run started is not ready: putting the previous one back", "error", err)
	}
	return n.restorePrev(ctx, prev, cur)
}

// restorePrev puts the replaced container prev back in place of cur (nil
// when there is none), and waits until it is ready.
func (n *Node) restorePrev(ctx context.Context, prev, cur *container) error {
	n.log.Warn("putting back the kube-apiserver container left by an interrupted run", "container", prevName)
	if cur != nil {
		if err := n.docker.remove(ctx, cur.ID); err != nil {
			return fmt.Errorf("remove the replacement %s: %w", containerName, err)
		}
	}
	if err := n.docker.rename(ctx, prev.ID, containerName); err != nil {
		return fmt.Errorf("rename %s back to %s: %w", prevName, containerName, err)
	}
	if err := n.docker.start(ctx, prev.ID); err != nil {
		return fmt.Errorf("start %s: %w", containerName, err)
	}
	return n.WaitReady(ctx)
}

// Restart restarts the node's kube-apiserver container (stop, then start:
// when it returns, the old process is gone). It does not wait for
// readiness: see WaitReady.
func (n *Node) Restart(ctx context.Context) error {
	c, err := n.container(ctx)
	if err != nil {
		return err
	}
	if err := n.docker.restart(ctx, c.ID); err != nil {
		return nodeErr(n.name, "restart kube-apiserver", ErrDocker, err)
	}
	n.log.Info("restarted kube-apiserver", "container", short(c.ID))
	return nil
}

// WaitReady waits, with backoff and at most Options.ReadyTimeout, until the
// node's kube-apiserver answers an authenticated GET /readyz on the node's
// own address. On timeout the error (ErrNotReady) holds the tail of the
// container's log.
func (n *Node) WaitReady(ctx context.Context) error {
	return n.waitReadyz(ctx, "wait for kube-apiserver /readyz", "kube-apiserver ready", func(err error) bool { return err == nil })
}

// WaitKMSReady is WaitReady for the node's KMS plugins only: it waits until
// no check of kube-apiserver's /readyz that names a KMS provider fails.
// kube-apiserver asks its plugins for their status on its own schedule
// (every 10 s while one fails, each minute otherwise), so a plugin that
// answers again is not yet one kube-apiserver uses; and a node that is not
// ready for another reason (a key it lacks) is not waited for here.
func (n *Node) WaitKMSReady(ctx context.Context) error {
	return n.waitReadyz(ctx, "wait for kube-apiserver's KMS providers to be healthy", "kube-apiserver's KMS providers healthy", kmsHealthy)
}

// kmsHealthy reports whether a /readyz answer (probeReady's error) shows
// kube-apiserver answering with every KMS provider check passing: the
// aggregate "kms-providers" with automatic reload, "kms-provider-N"
// without.
func kmsHealthy(readyz error) bool {
	if readyz == nil {
		return true
	}
	var nr *NotReadyError
	return errors.As(readyz, &nr) && !slices.ContainsFunc(nr.Failed, func(c string) bool { return strings.HasPrefix(c, "kms-provider") })
}

// waitReadyz asks /readyz, with backoff and at most Options.ReadyTimeout,
// until done says its answer is enough, and then logs ready.
func (n *Node) waitReadyz(ctx context.Context, op, ready string, done func(error) bool) error {
	start := time.Now()
	deadline := start.Add(n.opts.ReadyTimeout)
	wait := 250 * time.Millisecond
	var last error
	for {
		if last = n.probeReady(ctx); done(last) {
			n.log.Info(ready, "took", time.Since(start).Round(time.Millisecond))
			return nil
		}
		if ctx.Err() != nil {
			return nodeErr(n.name, op, ErrNotReady, fmt.Errorf("%w (last answer: %v)", ctx.Err(), last))
		}
		if time.Now().Add(wait).After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(wait*2, 2*time.Second)
	}
	return nodeErr(n.name, op, ErrNotReady, fmt.Errorf("not ready after %s (last answer: %v)%s", n.opts.ReadyTimeout, last, n.logTail(ctx)))
}

// logTail is the end of the kube-apiserver container's log, for errors.
func (n *Node) logTail(ctx context.Context) string {
	ctx = context.WithoutCancel(ctx)
	c, err := n.docker.inspect(ctx, containerName)
	if err != nil {
		return fmt.Sprintf("\n(no container log: %v)", err)
	}
	logs, err := n.docker.logsTail(ctx, c.ID, logTailLines, c.config.Tty)
	if err != nil {
		return fmt.Sprintf("\n(no container log: %v)", err)
	}
	return fmt.Sprintf("\n--- last %d lines of the %s container log on %s (%s, restarted %d times) ---\n%s\n---",
		logTailLines, containerName, n.name, c.State.Status, c.RestartCount, lastLines(logs, logTailLines))
}

// probeReady asks /readyz once.
func (n *Node) probeReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, min(n.opts.Timeout, 10*time.Second))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.apiURL+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := n.api.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return &NotReadyError{Status: resp.Status, Failed: failedNames(body), Detail: failedChecks(body)}
	}
	return nil
}

// NotReadyError is a /readyz that is not 200, with the checks that failed.
type NotReadyError struct {
	Status string
	Failed []string // names of the failed checks: "informer-sync", "etcd", ...
	Detail string   // the "[-]check failed" lines
}

func (e *NotReadyError) Error() string { return e.Status + ": " + e.Detail }

// Unsynced reports whether the only check that fails is informer-sync:
// kube-apiserver serves, but one of its caches cannot fill, as when it
// cannot decrypt what etcd stores for a resource (a key it lacks).
func (e *NotReadyError) Unsynced() bool {
	return len(e.Failed) == 1 && e.Failed[0] == "informer-sync"
}

// failedNames are the names of the "[-]name failed" lines of a /readyz.
func failedNames(body []byte) []string {
	var out []string
	for line := range bytes.Lines(body) {
		if name, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("[-]")); ok {
			name, _, _ = bytes.Cut(name, []byte(" "))
			out = append(out, string(name))
		}
	}
	return out
}

// failedChecks keeps the "[-]check failed" lines of a /readyz answer.
func failedChecks(body []byte) string {
	var failed []string
	for line := range bytes.Lines(body) {
		if bytes.HasPrefix(line, []byte("[-]")) {
			failed = append(failed, string(bytes.TrimSpace(line)))
		}
	}
	if len(failed) == 0 {
		return string(bytes.TrimSpace(body))
	}
	return strings.Join(failed, "; ")
}

func short(id string) string { return id[:min(len(id), 12)] }
