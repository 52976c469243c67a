// Package sandbox brings up a real RKE-style control plane on one machine,
// on loopback, for atrest's tests and demo: etcd with TLS and client-cert
// auth; N controlplane nodes, each with its own mount, PID and UTS namespace
// (its own /etc/kubernetes and /run, and its name as host name), its own
// sshd and dockerd, and kube-apiserver running as RKE runs it, in a Docker
// container named kube-apiserver; Vault; and a Git server over SSH and smart
// HTTP. A test may also start a stray kube-apiserver that serves the
// cluster from no node of cluster.yml (StartStrayAPIServer). It writes what atrest needs to
// reach all of it (cluster.yml, known_hosts, kubeconfig, certs, settings.yaml)
// into its state directory, and stops exactly the processes it started.
//
// The sandbox runs as root: it creates namespaces and runs dockerd.
package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultEtcdPrefix is kube-apiserver's --etcd-prefix default.
const DefaultEtcdPrefix = "/registry"

// Options configures Start.
type Options struct {
	// Dir is the state directory; it is created, and removed by Stop.
	Dir string
	// Nodes is the number of controlplane nodes (default 1).
	Nodes int
	// PersistentVault runs Vault with file storage, initialised and unsealed,
	// so that it can be restarted; otherwise a dev server.
	PersistentVault bool
	// EtcdPrefix is every kube-apiserver's --etcd-prefix (default
	// "/registry", kube-apiserver's own default).
	EtcdPrefix string
	// KubeAPIServer and Vault are the binaries to run (see tools/build.sh).
	// Empty: $ATREST_KUBE_APISERVER and $ATREST_VAULT.
	KubeAPIServer, Vault string
	// ReloadPoll is how often the kube-apiservers poll their provider
	// file under automatic reload (default DefaultReloadPoll): the
	// sandbox's kube-apiserver (tools/build.sh) takes it from
	// $ATREST_SANDBOX_RELOAD_POLL, the release polls once a minute.
	ReloadPoll time.Duration
	// KMSPlugin is an atrest binary: when set, each node gets an image
	// holding it (KMSPluginImage), Vault gets a Transit engine and the
	// plugins' AppRole role, and the settings file turns the vault-transit
	// provider on. Empty: $ATREST_KMS_PLUGIN (unset: no KMS).
	KMSPlugin string
	// Log receives progress lines (default: discarded).
	Log io.Writer
}

// Sandbox is a running sandbox. Its fields name what tests and atrest use.
type Sandbox struct {
	Dir   string
	Slot  int    // the sandbox owns 127.0.<Slot>.0/24
	Nodes []Node // the controlplane nodes
	// KubeAPIServerVersion is what the nodes' kube-apiserver says it is:
	// "v1.37.2".
	KubeAPIServerVersion string

	EtcdEndpoint string // https://127.0.S.2:2379
	EtcdPrefix   string // kube-apiserver's --etcd-prefix: keys are PREFIX/secrets/NS/NAME
	CAFile       string // the CA that signed every certificate
	EtcdCertFile string // an etcd client certificate for atrest and tests
	EtcdKeyFile  string
	AdminCert    string // kube-apiserver client certificate in system:masters
	AdminKey     string
	Kubeconfig   string // admin kubeconfig pointing at node 1

	SSHKeyFile     string // private key that logs in to every node (user root)
	KnownHostsFile string // host keys of every node and of the Git server

	Vault VaultInfo
	Git   GitInfo

	ClusterYML   string // cluster.yml describing the nodes as RKE would
	SettingsFile string // atrest runtime settings pointing at everything
	EnvFile      string // the same as shell variables, for `source`

	opts   Options
	mu     sync.Mutex
	state  state
	strays [maxStrays]bool // the stray addresses in use
	timing []phase
}

// Node is one controlplane node.
type Node struct {
	Name         string // node1, node2, ...
	Address      string // its loopback address: sshd on :22, kube-apiserver on :6443
	Dir          string // its state directory (its /etc/kubernetes is Dir/etc-kubernetes)
	DockerSocket string // host path of its Docker socket (on the node: /var/run/docker.sock)
	APIServerURL string // https://ADDRESS:6443
}

// VaultInfo says how to reach the sandbox's Vault.
type VaultInfo struct {
	Address    string // http://127.0.S.2:8200, or https:// when persistent
	CAFile     string // when persistent (TLS)
	TokenFile  string // root token
	Persistent bool
}

// PlainHTTP says whether Vault listens on plain http (unless persistent):
// what atrest refuses without vault.insecureAllowHTTP, which the sandbox's
// settings file sets then.
func (v VaultInfo) PlainHTTP() bool { return strings.HasPrefix(v.Address, "http://") }

// GitInfo says how to reach the sandbox's Git repository.
type GitInfo struct {
	Bare         string // the bare repository on disk
	SSHURL       string // ssh://root@127.0.S.2:22/...
	SSHKeyFile   string // key accepted by the Git server
	HTTPURL      string // http://127.0.S.2:8080/cluster.git
	Username     string
	PasswordFile string
}

type phase struct {
	name string
	took time.Duration
}

// state is what sandbox.json records: enough for Stop from another process.
type state struct {
	Slot  int     `json:"slot"`
	Procs []*proc `json:"procs"`
}

const stateFile = "sandbox.json"

// Start brings the sandbox up and returns when every kube-apiserver answers
// an authenticated /readyz and Vault is unsealed. On failure everything it
// started is stopped, and the error names the component and shows the tail
// of its log. A crashed earlier sandbox in the same Dir is cleaned up first.
func Start(ctx context.Context, opts Options) (sb *Sandbox, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("sandbox: must run as root (it creates namespaces and runs dockerd)")
	}
	if opts.Nodes <= 0 {
		opts.Nodes = 1
	}
	if opts.Nodes > 9 {
		return nil, fmt.Errorf("sandbox: at most 9 nodes, not %d", opts.Nodes)
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.EtcdPrefix == "" {
		opts.EtcdPrefix = DefaultEtcdPrefix
	}
	if opts.KubeAPIServer == "" {
		opts.KubeAPIServer = os.Getenv("ATREST_KUBE_APISERVER")
	}
	if opts.Vault == "" {
		opts.Vault = os.Getenv("ATREST_VAULT")
	}
	if opts.KMSPlugin == "" {
		opts.KMSPlugin = os.Getenv("ATREST_KMS_PLUGIN")
	}
	if opts.ReloadPoll <= 0 {
		opts.ReloadPoll = DefaultReloadPoll
	}
	for name, bin := range map[string]string{"kube-apiserver": opts.KubeAPIServer, "vault": opts.Vault} {
		if bin == "" {
			return nil, fmt.Errorf("sandbox: no %s binary: build it with tools/build.sh %s and set Options or $ATREST_%s", name, name, strings.ToUpper(strings.ReplaceAll(name, "-", "_")))
		}
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("sandbox: %s binary: %w", name, err)
		}
	}
	if err := checkCommands(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	// A sandbox left by a crash in this directory is stopped and removed.
	if err := Destroy(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	version, err := binaryVersion(ctx, opts.KubeAPIServer)
	if err != nil {
		return nil, fmt.Errorf("sandbox: kube-apiserver binary: %w", err)
	}
	sb = &Sandbox{Dir: dir, EtcdPrefix: opts.EtcdPrefix, KubeAPIServerVersion: version, opts: opts}
	if sb.Slot, err = claimSlot(dir); err != nil {
		return nil, err
	}
	sb.state.Slot = sb.Slot
	if err := sb.save(); err != nil {
		return nil, err
	}
	started := sb
	defer func() {
		if err != nil {
			// Leave nothing running: the caller gets no sandbox to stop.
			if serr := started.Stop(context.WithoutCancel(ctx)); serr != nil {
				err = errors.Join(err, serr)
			}
		}
	}()

	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"certificates and keys", sb.writePKI},
		{"etcd", sb.startEtcd},
		{"nodes (sshd, dockerd)", sb.startNodes},
		{"kube-apiserver containers", sb.startAPIServers},
		{"vault", sb.startVault},
		{"git", sb.startGit},
		{"kms (transit, plugin image)", sb.setupKMS},
		{"outputs", sb.writeOutputs},
	}
	total := time.Now()
	for _, s := range steps {
		start := time.Now()
		fmt.Fprintf(opts.Log, "sandbox: %s ...\n", s.name)
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("sandbox: %s: %w", s.name, err)
		}
		sb.timing = append(sb.timing, phase{s.name, time.Since(start)})
	}
	sb.timing = append(sb.timing, phase{"total", time.Since(total)})
	fmt.Fprint(opts.Log, sb.Timing())
	return sb, nil
}

// Timing reports how long each phase of Start took.
func (sb *Sandbox) Timing() string {
	var b strings.Builder
	for _, p := range sb.timing {
		fmt.Fprintf(&b, "sandbox: %-28s %6.1fs\n", p.name, p.took.Seconds())
	}
	return b.String()
}

// ip returns the sandbox's address 127.0.SLOT.host.
func (sb *Sandbox) ip(host int) string { return fmt.Sprintf("127.0.%d.%d", sb.Slot, host) }

// infraIP is where etcd, Vault and the Git server listen.
func (sb *Sandbox) infraIP() string { return sb.ip(2) }

func (sb *Sandbox) path(elem ...string) string {
	return filepath.Join(append([]string{sb.Dir}, elem...)...)
}

// track records a started process in the state file at once, so that a
// crash right after leaves it findable.
func (sb *Sandbox) track(p *proc) error {
	sb.mu.Lock()
	sb.state.Procs = append(sb.state.Procs, p)
	sb.mu.Unlock()
	return sb.save()
}

// untrack forgets a stopped process.
func (sb *Sandbox) untrack(p *proc) error {
	sb.mu.Lock()
	for i, q := range sb.state.Procs {
		if q == p {
			sb.state.Procs = append(sb.state.Procs[:i], sb.state.Procs[i+1:]...)
			break
		}
	}
	sb.mu.Unlock()
	return sb.save()
}

func (sb *Sandbox) save() error {
	sb.mu.Lock()
	data, err := json.MarshalIndent(sb.state, "", "  ")
	sb.mu.Unlock()
	if err != nil {
		return err
	}
	tmp := sb.path(stateFile + ".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, sb.path(stateFile))
}

// Stop stops every process the sandbox started, newest first, and removes
// its state directory. Calling it again is harmless.
func (sb *Sandbox) Stop(ctx context.Context) error {
	if sb == nil {
		return nil
	}
	return Destroy(sb.Dir)
}

// Destroy stops the sandbox recorded in dir (by the processes in its state
// file, whoever started them) and removes dir. A dir with no sandbox is
// removed as it is; a missing dir is fine.
func Destroy(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	var st state
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if _, err := os.Stat(filepath.Join(dir, "nodes")); err == nil {
			return fmt.Errorf("sandbox: %s has nodes but no %s: not removing it by guesswork", dir, stateFile)
		}
	case err != nil:
		return fmt.Errorf("sandbox: read state: %w", err)
	default:
		if err := json.Unmarshal(data, &st); err != nil {
			return fmt.Errorf("sandbox: %s: %w", filepath.Join(dir, stateFile), err)
		}
	}
	var errs []error
	for i := len(st.Procs) - 1; i >= 0; i-- {
		p := st.Procs[i]
		grace := 10 * time.Second
		if p.Namespace {
			// dockerd stops its containers first; give it time.
			grace = 30 * time.Second
		}
		if err := p.stop(grace); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("sandbox: stop: %w", errors.Join(errs...))
	}
	releaseSlot(st.Slot, dir)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("sandbox: remove %s: %w", dir, err)
	}
	return nil
}

// slotDir holds one claim per running sandbox: 127.0.SLOT.0/24 is its own.
const slotDir = "/run/atrest-sandbox"

// claimSlot reserves a /24 of loopback for the sandbox in dir, so that
// sandboxes of several test packages or users never share an address.
func claimSlot(dir string) (int, error) {
	if err := os.MkdirAll(slotDir, 0o700); err != nil {
		return 0, err
	}
	for slot := range 250 {
		claim := filepath.Join(slotDir, strconv.Itoa(slot))
		f, err := os.OpenFile(claim, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if errors.Is(err, os.ErrExist) {
			owner, _ := os.ReadFile(claim)
			if _, err := os.Stat(filepath.Join(string(owner), stateFile)); err == nil {
				continue // a live (or crashed, not yet destroyed) sandbox
			}
			// The owner is gone: the claim is stale.
			_ = os.Remove(claim)
			f, err = os.OpenFile(claim, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				continue
			}
		} else if err != nil {
			return 0, err
		}
		_, werr := f.WriteString(dir)
		f.Close()
		if werr != nil {
			return 0, werr
		}
		if slotInUse(slot) {
			// Something outside any sandbox listens there; leave the
			// claim so no sandbox tries it again, and move on.
			continue
		}
		return slot, nil
	}
	return 0, errors.New("sandbox: no free loopback /24 among 127.0.0-249.0")
}

func slotInUse(slot int) bool {
	for _, addr := range []string{fmt.Sprintf("127.0.%d.2:2379", slot), fmt.Sprintf("127.0.%d.11:22", slot)} {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return true
		}
	}
	return false
}

func releaseSlot(slot int, dir string) {
	claim := filepath.Join(slotDir, strconv.Itoa(slot))
	if owner, err := os.ReadFile(claim); err == nil && string(owner) == dir {
		_ = os.Remove(claim)
	}
}

// checkCommands reports the Debian packages missing for the sandbox.
func checkCommands() error {
	need := map[string]string{
		"etcd": "etcd-server", "sshd": "openssh-server", "dockerd": "docker.io", "docker": "docker.io",
		"git": "git", "unshare": "util-linux", "ssh-keygen": "openssh-client",
	}
	var missing []string
	for cmd, pkg := range need {
		if _, err := exec.LookPath(cmd); err != nil {
			if _, err := os.Stat("/usr/sbin/" + cmd); err != nil {
				missing = append(missing, pkg)
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("sandbox: missing commands: apt-get install %s", strings.Join(missing, " "))
	}
	return nil
}
