package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/daemon"
	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/gitsource"
	"github.com/atrest-io/atrest/keystore"
	"github.com/atrest-io/atrest/reconciler"
	"github.com/atrest-io/atrest/settings"
)

func newRunCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the GitOps loop: keep the cluster equal to Git, rotate keys on schedule",
		Long: `Run polls the Git source every git.interval (with jitter), and on every poll
observes the cluster: a new revision, drift (a node edited by hand, rke up run
by someone), a scheduled rotation that is due, or a transition a crash left in
the journal each lead to a reconcile, exactly as atrest apply does it. The
rotation schedule, provider and retention come from atrest.yaml in Git.

It serves /metrics, /healthz and /readyz on listen.metrics and, when
listen.webhook is set, a webhook that polls at once on a push signed with the
shared secret of listen.webhookSecretFile (GitHub's X-Hub-Signature-256, or
X-Atrest-Signature: sha256=<hex HMAC-SHA256 of the body>).

SIGTERM or Ctrl-C: the step in flight finishes and is journaled, the lock is
released, and run exits. A second signal interrupts the step (a node whose
kube-apiserver is being replaced is first put back as it was, which can take
a minute; the journal records the step, and the next start resumes it).`,
		Args: cobra.NoArgs,
	}
	loader := withSettings(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		s, err := loader.Load()
		if err != nil {
			return errorExit(err)
		}
		if err := s.Validate(settings.NeedCluster, settings.NeedGit, settings.NeedVault, settings.NeedEtcd, settings.NeedKubernetes,
			settings.NeedSSH, settings.NeedSnapshots, settings.NeedListen); err != nil {
			return errorExit(err)
		}
		return errorExit(runDaemon(cmd, s))
	}
	return cmd
}

func runDaemon(cmd *cobra.Command, s *settings.Settings) error {
	log := newLogger(s, cmd.ErrOrStderr())
	// At start, before anything is reached: each (re)connection to the
	// cluster warns again as it builds its clients.
	for _, in := range s.Insecure(settings.NeedVault, settings.NeedEtcd) {
		log.Warn("INSECURE: "+in.What, "setting", in.Key)
	}
	rc, err := restConfig(s, log)
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	var events daemon.Events
	if s.Kubernetes.Events {
		ke, err := controlplane.NewEventRecorder(rc, host, log)
		if err != nil {
			return fmt.Errorf("kubernetes.events: %w", err)
		}
		defer ke.Shutdown()
		events = ke
	}
	var secret []byte
	if s.Listen.Webhook != "" {
		raw, err := os.ReadFile(s.Listen.WebhookSecretFile)
		if err != nil {
			return fmt.Errorf("listen.webhookSecretFile: %w", err)
		}
		if secret = bytes.TrimSpace(raw); len(secret) < 16 {
			return fmt.Errorf("listen.webhookSecretFile %s: the webhook secret must be at least 16 characters (generate one with `openssl rand -hex 32`)", s.Listen.WebhookSecretFile)
		}
	}
	src, err := gitSource(s, log, "")
	if err != nil {
		return err
	}
	ledger := &lazyLedger{open: func(ctx context.Context) (*keystore.Store, error) { return openLedger(ctx, s, log) }}
	defer ledger.Close()
	d, err := daemon.New(daemon.Config{
		Source: src,
		Parse:  revisionParser(s, src, ledger),
		Open: func(ctx context.Context, dd *daemon.Desired, h daemon.Hooks) (daemon.Cluster, error) {
			e, err := open(ctx, s, dd.Config, dd.Policy, log)
			if err != nil {
				return nil, err
			}
			e.rec.OnStep = h.Step
			if s.Daemon.LiveCensus {
				// At every poll the daemon reads the census the watch keeps,
				// not every stored value; steps still take a full one.
				e.live = e.etcd.NewLiveCensus(dd.Config.EtcdPrefix())
				e.rec.LiveCensus = e.live
			}
			if e.rec.Rewriter, err = reconciler.NewRewriter(e.rest, reconciler.RewriteOptions{Workers: s.Kubernetes.RewriteWorkers, Logger: log, OnProgress: h.Progress, ProgressEvery: 2 * time.Second}); err != nil {
				e.Close()
				return nil, err
			}
			return &daemonCluster{env: e}, nil
		},
		Interval: s.Git.Interval, MaxBackoff: s.Daemon.MaxBackoff, Suspend: s.Daemon.Suspend, MinRotationInterval: s.Policy.MinRotationInterval,
		DrillInterval: s.Snapshots.DrillInterval, CrossCheckInterval: s.Daemon.CensusCrossCheck, Events: events,
		WebhookSecret: secret, Instance: host, Version: version, Logger: log,
	})
	if err != nil {
		return err
	}

	// Listen before the loop starts, so a taken port fails at once.
	servers, err := serve(log, map[string]serverSpec{
		"metrics": {addr: s.Listen.Metrics, handler: d.Handler()},
		"webhook": {addr: s.Listen.Webhook, handler: d.WebhookHandler()},
	})
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(cmd.Context()), 5*time.Second)
		defer cancel()
		for _, srv := range servers {
			_ = srv.Shutdown(ctx)
		}
	}()

	// The first signal (cmd's context) stops between steps; a second one
	// interrupts the step.
	work, interrupt := context.WithCancel(context.WithoutCancel(cmd.Context()))
	defer interrupt()
	stop := cmd.Context().Done()
	again := make(chan os.Signal, 1)
	signal.Notify(again, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(again)
	go func() {
		select {
		case <-stop:
		case <-work.Done():
			return
		}
		log.Info("shutting down: finishing the step in flight (signal again to interrupt it)")
		// Drop the signal that started the shutdown, if this channel got it too.
		select {
		case <-again:
		case <-time.After(100 * time.Millisecond):
		}
		select {
		case <-again:
			log.Warn("interrupting the step in flight; the journal records it and the next start resumes it")
			interrupt()
		case <-work.Done():
		}
	}()
	log.Info("atrest run started", "version", version, "instance", host, "cluster", s.Cluster.Name, "git", s.Git.URL, "ref", s.Git.Ref, "interval", s.Git.Interval.String(), "suspend", s.Daemon.Suspend)
	err = d.Run(work, stop)
	log.Info("atrest run stopped")
	return err
}

// revisionParser turns a revision into the daemon's desired state. A
// revision that does not descend from the revision in force (a force push
// back to older signed history) is refused, and so is one whose
// cluster.yml names another cluster than cluster.name: reported, while the
// last good revision stays in force. Checked here, before the daemon opens
// anything for it, because a commit must never choose the keyring. The
// revision accepted becomes the revision in force in Vault.
func revisionParser(s *settings.Settings, src *gitsource.Source, ledger gitsource.Ledger) func(context.Context, *gitsource.Revision) (*daemon.Desired, error) {
	return func(ctx context.Context, rev *gitsource.Revision) (*daemon.Desired, error) {
		var out *daemon.Desired
		err := src.Admit(ctx, rev, ledger, func() error {
			dd, err := desiredFromRevision(rev)
			if err != nil {
				return err
			}
			if err := checkIdentity(s, dd.cfg, dd.origin); err != nil {
				return err
			}
			out = &daemon.Desired{Config: dd.cfg, Policy: dd.policy, Revision: dd.revision}
			return nil
		})
		return out, err
	}
}

// lazyLedger opens the keystore that records the revision in force at its
// first use, and again after a failed open: the daemon starts, serves its
// status and retries while Vault is down.
type lazyLedger struct {
	open  func(context.Context) (*keystore.Store, error)
	mu    sync.Mutex
	store *keystore.Store
}

func (l *lazyLedger) get(ctx context.Context) (*keystore.Store, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.store == nil {
		st, err := l.open(ctx)
		if err != nil {
			return nil, err
		}
		l.store = st
	}
	return l.store, nil
}

// RevisionInForce implements gitsource.Ledger.
func (l *lazyLedger) RevisionInForce(ctx context.Context) (string, time.Time, error) {
	st, err := l.get(ctx)
	if err != nil {
		return "", time.Time{}, err
	}
	return st.RevisionInForce(ctx)
}

// RecordRevision implements gitsource.Ledger.
func (l *lazyLedger) RecordRevision(ctx context.Context, commit, ref string, committed time.Time) error {
	st, err := l.get(ctx)
	if err != nil {
		return err
	}
	return st.RecordRevision(ctx, commit, ref, committed)
}

// Close closes the keystore, if it was opened.
func (l *lazyLedger) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.store != nil {
		l.store.Close()
		l.store = nil
	}
}

type serverSpec struct {
	addr    string
	handler http.Handler
}

// serve listens on every non-empty address and serves its handler.
func serve(log *slog.Logger, specs map[string]serverSpec) ([]*http.Server, error) {
	var servers []*http.Server
	for _, name := range sortedKeys(specs) {
		spec := specs[name]
		if spec.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", spec.addr)
		if err != nil {
			for _, srv := range servers {
				_ = srv.Close()
			}
			return nil, fmt.Errorf("listen.%s: %w", name, err)
		}
		srv := &http.Server{Handler: spec.handler, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
		servers = append(servers, srv)
		log.Info("listening", "server", name, "address", ln.Addr().String())
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("server stopped", "server", name, "err", err)
			}
		}()
	}
	return servers, nil
}

// daemonCluster is the cluster as the daemon drives it. A cycle observes
// the nodes once: ImportOutsideKeys, its first call, observes them, and
// the Status after uses that observation (and forgets it); a reconcile
// observes afresh before every step.
type daemonCluster struct {
	env *env

	mu      sync.Mutex
	states  []controlplane.NodeState
	observe error
	taken   bool
}

func (c *daemonCluster) ImportOutsideKeys(ctx context.Context) ([]reconciler.OutsideKey, error) {
	states, err := c.env.nodes.Observe(ctx)
	c.mu.Lock()
	c.states, c.observe, c.taken = states, err, true
	c.mu.Unlock()
	if err != nil && len(states) == 0 {
		return nil, fmt.Errorf("observe the nodes: %w", err)
	}
	return c.env.rec.ImportOutsideKeysFrom(ctx, states)
}

// cycleStates is the cycle's observation of the nodes, taken once.
func (c *daemonCluster) cycleStates(ctx context.Context) ([]controlplane.NodeState, error) {
	c.mu.Lock()
	states, err, taken := c.states, c.observe, c.taken
	c.states, c.observe, c.taken = nil, nil, false
	c.mu.Unlock()
	if taken {
		return states, err
	}
	return c.env.nodes.Observe(ctx)
}

func (c *daemonCluster) DrillDue(ctx context.Context, every time.Duration, now time.Time) ([]*etcdsnap.DrillReport, error) {
	return c.env.rec.DrillDue(ctx, every, now)
}

func (c *daemonCluster) Status(ctx context.Context, d reconciler.Desired) (*reconciler.Status, error) {
	states, err := c.cycleStates(ctx)
	if err != nil && len(states) == 0 {
		return nil, err
	}
	return reconciler.StatusFrom(ctx, c.env.rec, states, err, d)
}

func (c *daemonCluster) ReconcileUntil(ctx context.Context, stop <-chan struct{}, d reconciler.Desired) (*reconciler.Result, error) {
	return c.env.rec.ReconcileUntil(ctx, stop, d)
}

func (c *daemonCluster) PutDaemonState(ctx context.Context, st keystore.DaemonState) error {
	return c.env.keys.PutDaemonState(ctx, st)
}

func (c *daemonCluster) DaemonStates(ctx context.Context) ([]keystore.DaemonState, error) {
	return c.env.keys.DaemonStates(ctx)
}

func (c *daemonCluster) ForgetDaemon(ctx context.Context, instance string) error {
	return c.env.keys.ForgetDaemon(ctx, instance)
}

func (c *daemonCluster) Close() { c.env.Close() }

// Costs is what observing has read from etcd, and what the live census
// has done.
func (c *daemonCluster) Costs() daemon.Costs {
	snap, other := c.env.etcd.ReadBytes()
	out := daemon.Costs{EtcdReadBytes: other, EtcdSnapshotBytes: snap, FullCensuses: c.env.etcd.FullCensuses()}
	if c.env.live != nil {
		st := c.env.live.Stats()
		out.CensusEvents, out.CensusMismatches = st.Events, st.Mismatches
	}
	return out
}

// CrossCheck compares the live census with a full census of etcd (a
// cluster without one has nothing to check).
func (c *daemonCluster) CrossCheck(ctx context.Context) (int, error) {
	if c.env.live == nil {
		return 0, nil
	}
	return c.env.live.CrossCheck(ctx)
}
