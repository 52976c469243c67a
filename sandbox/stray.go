package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

// Stray kube-apiservers listen on 127.0.S.31 up to 127.0.S.39: addresses no
// node takes and the kube-apiserver certificate names.
const (
	strayHost = 31
	maxStrays = 9
)

// strayStopGrace is how long a stray kube-apiserver gets to shut down (and,
// since v1.35, delete its identity Lease) before SIGKILL.
const strayStopGrace = 30 * time.Second

// strayInit runs as PID 1 of a stray's PID namespace, in its own mount and
// UTS namespace: its own host name and /etc/kubernetes, as on a node, then
// kube-apiserver in its place, so that a stop signal reaches it.
const strayInit = `set -eu
printf %s "$HOST" >/proc/sys/kernel/hostname
mkdir -p /etc/kubernetes
mount --bind "$STRAY/etc-kubernetes" /etc/kubernetes
exec "$KUBE_APISERVER" "$@"
`

// StrayAPIServer is a kube-apiserver that serves the sandbox's cluster (its
// etcd, the nodes' certificates and flags) from a host that cluster.yml does
// not list: what a node removed from Git before `rke up`, or a controlplane
// added by hand, leaves behind. It runs as a plain process in its own
// mount, PID and UTS namespace, not in Docker: nothing reaches it over SSH.
type StrayAPIServer struct {
	Name         string // its host name: stray1, stray2, ... (no node's name)
	Address      string // 127.0.S.31, ...: kube-apiserver on :6443
	Dir          string // its state directory (its /etc/kubernetes is Dir/etc-kubernetes)
	APIServerURL string // https://ADDRESS:6443
	Log          string // kube-apiserver's output

	sb       *Sandbox
	slot     int
	p        *proc
	stopOnce sync.Once
	stopErr  error
}

// StartStrayAPIServer starts a stray kube-apiserver with the nodes' flags
// plus extra, and waits until it is ready. The sandbox tracks it like its
// other processes: Stop stops it, and so does the sandbox's Stop (or the
// next Start in the same directory) when a test never got to.
func (sb *Sandbox) StartStrayAPIServer(ctx context.Context, extra ...string) (_ *StrayAPIServer, err error) {
	slot, err := sb.claimStray()
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("stray%d", slot+1)
	s := &StrayAPIServer{Name: name, Address: sb.ip(strayHost + slot), Dir: sb.path("strays", name), sb: sb, slot: slot}
	s.APIServerURL = "https://" + s.Address + ":6443"
	s.Log = filepath.Join(s.Dir, "kube-apiserver.log")
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("sandbox: stray kube-apiserver %s: %w", name, err), s.Stop())
		}
	}()
	// What a previous stray of this name left (a log, certificates) goes.
	if err := os.RemoveAll(s.Dir); err != nil {
		return nil, err
	}
	etc := filepath.Join(s.Dir, "etc-kubernetes")
	if err := os.MkdirAll(filepath.Join(etc, "ssl"), 0o700); err != nil {
		return nil, err
	}
	if err := sb.installNodeCerts(etc); err != nil {
		return nil, err
	}
	args := sb.APIServerArgs(Node{Name: name, Address: s.Address})
	// A stray runs the config a node runs, as a controlplane that left
	// cluster.yml would: without it, it could not read encrypted values,
	// and would never become ready.
	if len(sb.Nodes) > 0 {
		data, err := os.ReadFile(filepath.Join(sb.Nodes[0].Dir, "etc-kubernetes", "ssl", "encryption.yaml"))
		switch {
		case err == nil:
			if err := os.WriteFile(filepath.Join(etc, "ssl", "encryption.yaml"), data, 0o600); err != nil {
				return nil, err
			}
			args = append(args, ProviderConfigFlag)
		case !os.IsNotExist(err):
			return nil, err
		}
	}
	args = append(args, extra...)
	cmd := exec.Command("unshare", namespaceArgs(append([]string{"sh", "-c", strayInit, "sh"}, args...)...)...)
	cmd.Env = append(os.Environ(), "STRAY="+s.Dir, "HOST="+name, "KUBE_APISERVER="+sb.opts.KubeAPIServer)
	p, err := startProc(name+" kube-apiserver", cmd, s.Log)
	if err != nil {
		return nil, err
	}
	p.Namespace = true
	s.p = p
	if err := sb.track(p); err != nil {
		return nil, err
	}
	if err := sb.waitAPIServer(ctx, name, s.APIServerURL, 3*time.Minute, p); err != nil {
		return nil, err
	}
	return s, nil
}

// Stop stops the stray kube-apiserver (SIGTERM, then SIGKILL after a
// grace) and waits until it is gone. Calling it again is harmless.
func (s *StrayAPIServer) Stop() error {
	s.stopOnce.Do(func() {
		if s.p != nil {
			if err := s.p.stop(strayStopGrace); err != nil {
				// Still tracked: the sandbox's Stop tries again.
				s.stopErr = fmt.Errorf("sandbox: %w", err)
				return
			}
			if err := s.sb.untrack(s.p); err != nil {
				s.stopErr = fmt.Errorf("sandbox: forget stray %s: %w", s.Name, err)
			}
		}
		s.sb.releaseStray(s.slot)
	})
	return s.stopErr
}

// claimStray reserves a free stray address.
func (sb *Sandbox) claimStray() (int, error) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	for i, used := range sb.strays {
		if !used {
			sb.strays[i] = true
			return i, nil
		}
	}
	return 0, fmt.Errorf("sandbox: %d stray kube-apiservers already run, no more addresses", maxStrays)
}

func (sb *Sandbox) releaseStray(slot int) {
	sb.mu.Lock()
	sb.strays[slot] = false
	sb.mu.Unlock()
}
