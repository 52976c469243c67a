package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Restored is an etcd restored from a snapshot, with a kube-apiserver on
// it: what a restore gives an operator, started by RestoreSnapshot.
type Restored struct {
	// EtcdEndpoint is the restored etcd (the sandbox's CA and client
	// certificates reach it); APIServer its kube-apiserver.
	EtcdEndpoint string
	APIServer    string
	// APIServerLog is the kube-apiserver's log file.
	APIServerLog string

	sb       *Sandbox
	procs    []*proc
	stopOnce sync.Once
	stopErr  error
}

// RestoreSnapshot restores the etcd snapshot file db as an operator does
// (`etcdctl snapshot restore` into a fresh data directory), starts an etcd
// on it with the sandbox's certificates, and node 1's kube-apiserver flags
// run on the host against it with --encryption-provider-config=config,
// and waits until its path check (/readyz; /livez for one that cannot
// read every object) answers. The node's /etc/kubernetes is read from the
// host, in the flags and in config's KMS endpoints alike, so a KMS plugin
// running on node 1 serves the restored kube-apiserver too. Stop ends
// both; the sandbox's Stop does too.
func (sb *Sandbox) RestoreSnapshot(ctx context.Context, db, config, check string) (_ *Restored, err error) {
	dir, err := os.MkdirTemp(sb.path(), "restore-")
	if err != nil {
		return nil, err
	}
	r := &Restored{sb: sb}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.Stop())
		}
	}()
	u, err := url.Parse(sb.EtcdEndpoint)
	if err != nil {
		return nil, err
	}
	ip := u.Hostname()
	clientPort, err := freePort(ip)
	if err != nil {
		return nil, err
	}
	peerPort, err := freePort(ip)
	if err != nil {
		return nil, err
	}
	peer := "http://" + ip + ":" + peerPort
	data := filepath.Join(dir, "etcd-data")
	out, err := exec.CommandContext(ctx, "etcdctl", "snapshot", "restore", db,
		"--data-dir="+data, "--name=restored", "--initial-cluster=restored="+peer,
		"--initial-cluster-token=atrest-restore", "--initial-advertise-peer-urls="+peer).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("etcdctl snapshot restore %s: %w\n%s", db, err, out)
	}
	pki := filepath.Dir(sb.CAFile)
	r.EtcdEndpoint = "https://" + ip + ":" + clientPort
	etcd, err := sb.startTracked(ctx, "restored etcd", exec.Command("etcd",
		"--name=restored", "--data-dir="+data,
		"--listen-client-urls="+r.EtcdEndpoint, "--advertise-client-urls="+r.EtcdEndpoint,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer,
		"--initial-cluster=restored="+peer,
		"--cert-file="+filepath.Join(pki, "etcd.pem"), "--key-file="+filepath.Join(pki, "etcd-key.pem"),
		"--client-cert-auth", "--trusted-ca-file="+sb.CAFile,
	), filepath.Join(dir, "etcd.log"))
	if err != nil {
		return nil, err
	}
	r.procs = append(r.procs, etcd)

	n := sb.Nodes[0]
	hostEtc := filepath.Join(n.Dir, "etc-kubernetes") + "/"
	cfg, err := os.ReadFile(config)
	if err != nil {
		return nil, err
	}
	hostConfig := filepath.Join(dir, "encryption.yaml")
	if err := os.WriteFile(hostConfig, []byte(strings.ReplaceAll(string(cfg), "unix:///etc/kubernetes/", "unix://"+hostEtc)), 0o600); err != nil {
		return nil, err
	}
	port, err := freePort(n.Address)
	if err != nil {
		return nil, err
	}
	var args []string
	for _, a := range sb.APIServerArgs(n) {
		switch {
		case strings.HasPrefix(a, "--secure-port="):
			a = "--secure-port=" + port
		case strings.HasPrefix(a, "--etcd-servers="):
			a = "--etcd-servers=" + r.EtcdEndpoint
		}
		args = append(args, strings.ReplaceAll(a, "/etc/kubernetes/", hostEtc))
	}
	args = append(args, "--encryption-provider-config="+hostConfig, "--cert-dir="+filepath.Join(dir, "certs"))
	r.APIServerLog = filepath.Join(dir, "kube-apiserver.log")
	api, err := sb.startTracked(ctx, "restored kube-apiserver", exec.Command(sb.opts.KubeAPIServer, args...), r.APIServerLog)
	if err != nil {
		return nil, err
	}
	r.procs = append(r.procs, api)
	r.APIServer = "https://" + n.Address + ":" + port
	if err := sb.waitPath(ctx, "restored", r.APIServer, check, 2*time.Minute, api); err != nil {
		return nil, fmt.Errorf("%w\n--- restored kube-apiserver log ---\n%s", err, tail(r.APIServerLog, 30))
	}
	return r, nil
}

// Stop ends the restored kube-apiserver and etcd.
func (r *Restored) Stop() error {
	r.stopOnce.Do(func() {
		var errs []error
		for i := len(r.procs) - 1; i >= 0; i-- {
			if err := r.procs[i].stop(15 * time.Second); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := r.sb.untrack(r.procs[i]); err != nil {
				errs = append(errs, err)
			}
		}
		r.stopErr = errors.Join(errs...)
	})
	return r.stopErr
}

// startTracked starts cmd as a tracked process of the sandbox, logging to
// logFile.
func (sb *Sandbox) startTracked(_ context.Context, name string, cmd *exec.Cmd, logFile string) (*proc, error) {
	p, err := startProc(name, cmd, logFile)
	if err != nil {
		return nil, err
	}
	if err := sb.track(p); err != nil {
		_ = p.stop(time.Second)
		return nil, err
	}
	return p, nil
}

// freePort is a port free on ip now.
func freePort(ip string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	_, port, err := net.SplitHostPort(l.Addr().String())
	return port, err
}
