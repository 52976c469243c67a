// Package controlplane reaches the controlplane nodes of an RKE cluster over
// SSH and drives their kube-apiserver the way RKE does, but more carefully:
// it reads and atomically writes the encryption provider file, reads and
// sets the --encryption-provider-config flag by recreating the
// kube-apiserver container through the node's Docker engine (reached over
// the same SSH connection), restarts kube-apiserver and waits for it to be
// ready, and proves which key a node writes with by a canary secret whose
// raw value it reads back from etcd. Across nodes it rolls a provider file
// out one node at a time and puts a node back as it was when anything goes
// wrong on it. Cluster.Recover repairs what a run killed part way left, and
// a Fence (WithFence) keeps a run that lost the reconciler's lock from
// touching the nodes again.
//
// Host keys are always checked against known_hosts, unless the caller asks,
// by a loudly named option, not to. Key material (the provider file's
// bytes) never appears in logs or errors.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/atrest-io/atrest/cluster"
)

// Defaults for Options.
const (
	DefaultTimeout      = 30 * time.Second
	DefaultReadyTimeout = 3 * time.Minute
)

// Options says how to reach the nodes and their kube-apiservers.
type Options struct {
	// KnownHostsFile verifies every node's (and the bastion's) SSH host
	// key. Required unless InsecureSkipHostKeyVerification.
	KnownHostsFile string
	// InsecureSkipHostKeyVerification accepts any host key: anyone on
	// the network path can then pose as a node and receive the keys.
	InsecureSkipHostKeyVerification bool
	// KeyFile, when set, is the SSH private key for every node and the
	// bastion, in place of cluster.yml's ssh_key_path (settings
	// ssh.keyFile). An inline ssh_key in cluster.yml still wins.
	KeyFile string
	// Timeout bounds each call: the SSH dial and handshake, each Docker
	// call, each file operation, each request to kube-apiserver.
	Timeout time.Duration
	// ReadyTimeout bounds the wait for /readyz after a restart.
	ReadyTimeout time.Duration
	// RestartOnly keeps every change on the restart path: atrest never
	// sets --encryption-provider-config-automatic-reload and restarts
	// kube-apiserver to load each provider file. Off, the first change
	// to a node sets the flag (its one restart), and later stages reload
	// on every node at once, proven by each node's metrics.
	RestartOnly bool
	// ReloadTimeout bounds the wait for a node's kube-apiserver to prove
	// it reloaded a provider file (DefaultReloadTimeout).
	ReloadTimeout time.Duration
	// APIServer holds the credentials and CA for every node's
	// kube-apiserver; its Host is replaced by https://ADDRESS:6443 of
	// each node.
	APIServer *rest.Config
	// Storage reads raw values from etcd, for the canary.
	Storage StorageReader
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
	// Failpoint, when set, is called at each of the named points of
	// Failpoints, for fault-injection tests: the atrest binary can kill
	// itself there to leave a node as a crash would. nil in production.
	Failpoint func(name string)
}

// StorageReader reads a raw value from etcd: the bytes kube-apiserver
// stored under key, nil when there is none.
type StorageReader interface {
	RawGet(ctx context.Context, key string) ([]byte, error)
}

func (o Options) withDefaults() (Options, error) {
	if o.KnownHostsFile == "" && !o.InsecureSkipHostKeyVerification {
		return o, errors.New("controlplane: no known_hosts file to verify the nodes' SSH host keys: set ssh.knownHostsFile in the settings (or, only for throwaway clusters, ssh.insecureSkipHostKeyVerification)")
	}
	if o.APIServer == nil {
		return o, errors.New("controlplane: no kube-apiserver credentials (Options.APIServer): set kubernetes.kubeconfig in the settings")
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = DefaultReadyTimeout
	}
	if o.ReloadTimeout <= 0 {
		o.ReloadTimeout = DefaultReloadTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o, nil
}

// Cluster is an open SSH connection to every controlplane node of a
// cluster, kept for one operation. Its methods may be called concurrently
// on different nodes, not on the same node.
type Cluster struct {
	opts    Options
	nodes   []*Node
	bastion *ssh.Client
}

// Node is one controlplane node and its kube-apiserver.
type Node struct {
	name      string
	cfg       cluster.Node
	file      string // the provider file's path on the node
	opts      *Options
	log       *slog.Logger
	ssh       *ssh.Client
	root      bool   // the SSH user is root: no sudo needed
	hostname  string // uname -n: what its kube-apiserver's identity Lease names
	docker    *docker
	api       *http.Client // authenticated to this node's kube-apiserver
	apiURL    string       // https://ADDRESS:6443
	kube      kubernetes.Interface
	done      chan struct{} // closed by close: stops the keepalive
	closeOnce sync.Once

	// fileMu guards lastFile, the provider file as last read: the next
	// read fetches its bytes only when their hash changed.
	fileMu                 sync.Mutex
	lastFile               ProviderFile
	fileReads, fileFetches int
	// observations counts the one-command observations of the node.
	observations int
}

// Connect opens one SSH connection to each controlplane node of cfg (in
// parallel, through the bastion host when there is one), checks that each
// node's Docker engine answers, and prepares a client of each node's
// kube-apiserver. It changes nothing. When any node fails, every
// connection is closed and the error names each node that failed and why.
func Connect(ctx context.Context, cfg *cluster.Config, opts Options) (*Cluster, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if on, set := cfg.AutomaticReload(); set && !on && !opts.RestartOnly {
		// cluster.yml turns the flag off: setting it would fight `rke up`.
		opts.Logger.Info("cluster.yml sets --" + flagAutomaticReload + " to false: every change restarts kube-apiserver")
		opts.RestartOnly = true
	}
	cps := cfg.ControlPlaneNodes()
	if len(cps) == 0 {
		return nil, errors.New("controlplane: cluster.yml has no node with the controlplane role")
	}
	hk, err := newHostKeys(opts.KnownHostsFile, opts.InsecureSkipHostKeyVerification)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	if opts.InsecureSkipHostKeyVerification {
		opts.Logger.Warn("SSH HOST KEY VERIFICATION IS DISABLED (ssh.insecureSkipHostKeyVerification): anyone on the network path to the nodes can pose as them and receive the encryption keys")
	}
	c := &Cluster{opts: opts, nodes: make([]*Node, len(cps))}
	d := &dialer{hostKeys: hk, keyFile: opts.KeyFile, timeout: opts.Timeout}
	if b := cfg.BastionHost; b != nil {
		c.bastion, err = d.dial(ctx, bastionLogin(b))
		if err != nil {
			return nil, fmt.Errorf("controlplane: connect through bastion_host (nothing was changed): %w", err)
		}
		d.via = c.bastion
	}
	errs := make([]error, len(cps))
	var wg sync.WaitGroup
	for i, cn := range cps {
		wg.Go(func() {
			c.nodes[i], errs[i] = c.connectNode(ctx, d, cn, cfg.ProviderFilePath())
		})
	}
	wg.Wait()
	var failed []error
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) > 0 {
		c.Close()
		return nil, fmt.Errorf("controlplane: %d of %d controlplane nodes failed (nothing was changed):\n%w", len(failed), len(cps), errors.Join(failed...))
	}
	return c, nil
}

func (c *Cluster) connectNode(ctx context.Context, d *dialer, cn cluster.Node, file string) (*Node, error) {
	n := &Node{
		name:   cn.Name(),
		cfg:    cn,
		file:   file,
		opts:   &c.opts,
		log:    c.opts.Logger.With("node", cn.Name()),
		apiURL: "https://" + net.JoinHostPort(cn.Address, "6443"),
		done:   make(chan struct{}),
	}
	var err error
	if n.ssh, err = d.dial(ctx, nodeLogin(cn)); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			n.close()
		}
	}()
	if n.root, err = n.isRoot(ctx); err != nil {
		return nil, nodeErr(n.name, "connect over SSH", ErrUnreachable, err)
	}
	if n.hostname, err = n.uname(ctx); err != nil {
		return nil, nodeErr(n.name, "learn its host name", nil, err)
	}
	n.docker = newDocker(n.ssh, cn.DockerSocket, c.opts.Timeout)
	if err := n.docker.negotiate(ctx); err != nil {
		return nil, nodeErr(n.name, "reach Docker at docker_socket "+cn.DockerSocket+" through SSH", ErrDocker,
			fmt.Errorf("%w; check docker_socket in cluster.yml, that dockerd runs, that user %q may open the socket, and that sshd allows stream-local forwarding (AllowStreamLocalForwarding)", err, cn.User))
	}
	rc := rest.CopyConfig(c.opts.APIServer)
	rc.Host = n.apiURL
	rc.Timeout = c.opts.Timeout
	rc.UserAgent = "atrest"
	if n.api, err = rest.HTTPClientFor(rc); err != nil {
		return nil, nodeErr(n.name, "prepare kube-apiserver client", nil, err)
	}
	if n.kube, err = kubernetes.NewForConfigAndClient(rc, n.api); err != nil {
		return nil, nodeErr(n.name, "prepare kube-apiserver client", nil, err)
	}
	n.log.Debug("connected", "ssh", nodeLogin(cn).addr, "host", n.hostname, "docker_api", n.docker.version, "root", n.root)
	go keepalive(n.ssh, n.done)
	ok = true
	return n, nil
}

// keepaliveInterval keeps the connection from being dropped as idle by
// firewalls while kube-apiserver restarts: a rollback needs it after.
const keepaliveInterval = 30 * time.Second

// keepalive pings the SSH server until done is closed or the connection
// fails.
func keepalive(c *ssh.Client, done <-chan struct{}) {
	t := time.NewTicker(keepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if _, _, err := c.SendRequest("keepalive@openssh.com", true, nil); err != nil {
				return
			}
		}
	}
}

// isRoot asks the node who the SSH user is.
func (n *Node) isRoot(ctx context.Context) (bool, error) {
	n.root = true // `id -u` needs no sudo
	r, err := n.run(ctx, "id -u", nil, 64)
	if err != nil {
		return false, err
	}
	if r.code != 0 {
		return false, fmt.Errorf("id -u: exit status %d: %s", r.code, r.stderr)
	}
	uid, err := strconv.Atoi(strings.TrimSpace(string(r.stdout)))
	if err != nil {
		return false, fmt.Errorf("id -u: unexpected answer %q", r.stdout)
	}
	return uid == 0, nil
}

// Nodes returns the controlplane nodes in cluster.yml order.
func (c *Cluster) Nodes() []*Node { return c.nodes }

// Close closes every connection.
func (c *Cluster) Close() error {
	var errs []error
	for _, n := range c.nodes {
		if n != nil {
			errs = append(errs, n.close())
		}
	}
	if c.bastion != nil {
		errs = append(errs, c.bastion.Close())
	}
	return errors.Join(errs...)
}

// Name is how logs and errors name the node: its hostname_override, or its
// address.
func (n *Node) Name() string { return n.name }

// ProviderFilePath is where the provider file lives on the node.
func (n *Node) ProviderFilePath() string { return n.file }

func (n *Node) close() error {
	n.closeOnce.Do(func() { close(n.done) })
	if n.docker != nil {
		n.docker.close()
	}
	if n.api != nil {
		n.api.CloseIdleConnections()
	}
	if n.ssh == nil {
		return nil
	}
	err := n.ssh.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// sshErr names the node and operation of an error from run.
func (n *Node) sshErr(op string, err error) error { return nodeErr(n.name, op, nil, err) }
