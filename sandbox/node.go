package sandbox

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// KubeAPIServerImage is the image the nodes run kube-apiserver from, made
// with `docker import` of a rootfs holding the binary; its tag is the
// binary's version (Sandbox.KubeAPIServerVersion).
func (sb *Sandbox) KubeAPIServerImage() string {
	return "atrest-sandbox/kube-apiserver:" + sb.KubeAPIServerVersion
}

// DefaultReloadPoll is how often the sandbox's kube-apiservers poll their
// provider file under --encryption-provider-config-automatic-reload
// (Options.ReloadPoll); the release polls once a minute.
const DefaultReloadPoll = 2 * time.Second

// binaryVersion is what `kube-apiserver --version` says: "v1.32.13".
func binaryVersion(ctx context.Context, bin string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", bin, err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 || f[0] != "Kubernetes" || !strings.HasPrefix(f[1], "v") {
		return "", fmt.Errorf("%s --version: %q is not \"Kubernetes vX.Y.Z\"", bin, out)
	}
	return f[1], nil
}

// nodeInit runs as PID 1 of a node's PID namespace, in its own mount and
// UTS namespace: it gives the node its own host name (kube-apiserver names
// its identity Lease after it, so nodes sharing the machine's name would
// share one Lease), its own /etc/kubernetes and /run (so its Docker socket
// is /var/run/docker.sock, as on a real host), then runs sshd and dockerd
// until it is told to stop. When it exits, the kernel ends everything left
// in the namespace, containers included.
const nodeInit = `set -eu
printf %s "$HOST" >/proc/sys/kernel/hostname
mkdir -p /etc/kubernetes
mount --bind "$NODE/etc-kubernetes" /etc/kubernetes
mount --bind "$NODE/run" /run
# atrest's KMS plugin keeps its Vault credential in /etc/atrest-kms: each
# node its own, as on real hosts.
mkdir -p "$NODE/etc-atrest-kms" /etc/atrest-kms
mount --bind "$NODE/etc-atrest-kms" /etc/atrest-kms
mkdir -p /run/sshd
/usr/sbin/sshd -D -f "$NODE/ssh/sshd_config" -E "$NODE/sshd.log" &
sshd=$!
dockerd --data-root "$NODE/docker" --exec-root /run/docker --pidfile /run/docker.pid \
  -H unix:///run/docker.sock --storage-driver=vfs --iptables=false --ip6tables=false \
  --bridge=none --ip-forward=false --ip-masq=false --userland-proxy=false \
  >>"$NODE/dockerd.log" 2>&1 &
dockerd=$!
trap 'kill -TERM $dockerd $sshd 2>/dev/null; wait $dockerd; exit 0' TERM INT
wait
`

const sshdConfig = `ListenAddress %[1]s:22
HostKey %[2]s/ssh/ssh_host_ed25519_key
HostKey %[2]s/ssh/ssh_host_ecdsa_key
PidFile /run/sshd.pid
AuthorizedKeysFile %[2]s/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
Subsystem sftp internal-sftp
`

func (sb *Sandbox) startNodes(ctx context.Context) error {
	userPub, err := os.ReadFile(sb.SSHKeyFile + ".pub")
	if err != nil {
		return err
	}
	var knownHosts bytes.Buffer
	var procs []*proc
	for i := range sb.opts.Nodes {
		n := Node{
			Name:    fmt.Sprintf("node%d", i+1),
			Address: sb.ip(11 + i),
			Dir:     sb.path("nodes", fmt.Sprintf("node%d", i+1)),
		}
		n.DockerSocket = filepath.Join(n.Dir, "run", "docker.sock")
		n.APIServerURL = "https://" + n.Address + ":6443"
		for _, d := range []string{"etc-kubernetes/ssl", "run", "docker", "ssh"} {
			if err := os.MkdirAll(filepath.Join(n.Dir, d), 0o700); err != nil {
				return err
			}
		}
		lines, err := writeHostKeys(filepath.Join(n.Dir, "ssh"), n.Address)
		if err != nil {
			return err
		}
		knownHosts.WriteString(lines)
		if err := writeFile(filepath.Join(n.Dir, "ssh", "authorized_keys"), userPub); err != nil {
			return err
		}
		if err := writeFile(filepath.Join(n.Dir, "ssh", "sshd_config"), fmt.Appendf(nil, sshdConfig, n.Address, n.Dir)); err != nil {
			return err
		}
		if err := sb.installNodeCerts(filepath.Join(n.Dir, "etc-kubernetes")); err != nil {
			return err
		}
		cmd := exec.Command("unshare", namespaceArgs("sh", "-c", nodeInit)...)
		// dockerd gives each container with host networking the host
		// name it has itself, as on an RKE node: kube-apiserver sees
		// the node's name.
		cmd.Env = append(os.Environ(), "NODE="+n.Dir, "HOST="+n.Name)
		p, err := startProc(n.Name, cmd, filepath.Join(n.Dir, "init.log"))
		if err != nil {
			return err
		}
		p.Namespace = true
		if err := sb.track(p); err != nil {
			return err
		}
		procs = append(procs, p)
		sb.Nodes = append(sb.Nodes, n)
	}
	sb.KnownHostsFile = sb.path("known_hosts")
	if err := writeFile(sb.KnownHostsFile, knownHosts.Bytes()); err != nil {
		return err
	}
	for i, n := range sb.Nodes {
		p := procs[i]
		if err := waitFor(ctx, n.Name+" sshd", 20*time.Second, p, func(ctx context.Context) error {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", n.Address+":22")
			if err == nil {
				c.Close()
			}
			return err
		}); err != nil {
			return fmt.Errorf("%w\n--- sshd log ---\n%s", err, tail(filepath.Join(n.Dir, "sshd.log"), 20))
		}
		if err := waitFor(ctx, n.Name+" dockerd", 60*time.Second, p, func(ctx context.Context) error {
			return dockerPing(ctx, n.DockerSocket)
		}); err != nil {
			return fmt.Errorf("%w\n--- dockerd log ---\n%s", err, tail(filepath.Join(n.Dir, "dockerd.log"), 20))
		}
	}
	return nil
}

// namespaceArgs are unshare's arguments to run command as PID 1 of new PID,
// mount and UTS namespaces (the mount namespace with a /proc of its own),
// ended by the kernel with everything in them when unshare dies. unshare
// ignores SIGTERM while it waits for its child, so a stop signal sent to
// the process group reaches the command, which shuts down in its own time.
func namespaceArgs(command ...string) []string {
	return append([]string{"--uts", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private"}, command...)
}

// writeHostKeys writes an ed25519 and an ECDSA host key for sshd and returns
// their known_hosts lines.
func writeHostKeys(dir, addr string) (string, error) {
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	var lines strings.Builder
	for name, key := range map[string]any{"ssh_host_ed25519_key": edKey, "ssh_host_ecdsa_key": ecKey} {
		block, err := ssh.MarshalPrivateKey(key, "")
		if err != nil {
			return "", err
		}
		if err := writeFile(filepath.Join(dir, name), pem.EncodeToMemory(block)); err != nil {
			return "", err
		}
		signer, err := ssh.NewSignerFromKey(key)
		if err != nil {
			return "", err
		}
		lines.WriteString(addr + " " + string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	}
	return lines.String(), nil
}

// installNodeCerts puts RKE's files into ssl/ of etcKubernetes, the host
// directory that is /etc/kubernetes on a node.
func (sb *Sandbox) installNodeCerts(etcKubernetes string) error {
	copies := map[string]string{
		"ca.pem":                             "kube-ca.pem",
		"kube-apiserver.pem":                 "kube-apiserver.pem",
		"kube-apiserver-key.pem":             "kube-apiserver-key.pem",
		"kube-node.pem":                      "kube-node.pem",
		"kube-node-key.pem":                  "kube-node-key.pem",
		"kube-service-account-token-key.pem": "kube-service-account-token-key.pem",
	}
	for from, to := range copies {
		data, err := os.ReadFile(sb.path("pki", from))
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(etcKubernetes, "ssl", to), data); err != nil {
			return err
		}
	}
	return nil
}

// unixClient is an HTTP client that talks to a Unix socket.
func unixClient(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
}

func dockerPing(ctx context.Context, socket string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/_ping", nil)
	if err != nil {
		return err
	}
	resp, err := unixClient(socket).Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("docker ping: %s", resp.Status)
	}
	return nil
}

// dockerCLI returns the Docker client matching the Debian engine when there
// is one, so the client never speaks a newer API than dockerd.
func dockerCLI() string {
	if _, err := os.Stat("/usr/bin/docker"); err == nil {
		return "/usr/bin/docker"
	}
	return "docker"
}

// Docker runs the docker CLI against node i's engine and returns its output.
func (sb *Sandbox) Docker(ctx context.Context, i int, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, dockerCLI(), args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+sb.Nodes[i].DockerSocket)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: docker %s: %w: %s", sb.Nodes[i].Name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// APIServerArgs are the kube-apiserver flags RKE uses, for node n.
func (sb *Sandbox) APIServerArgs(n Node) []string {
	ssl := "/etc/kubernetes/ssl/"
	return []string{
		"--advertise-address=" + n.Address,
		"--bind-address=" + n.Address,
		"--secure-port=6443",
		"--allow-privileged=true",
		"--anonymous-auth=false",
		"--authorization-mode=Node,RBAC",
		"--client-ca-file=" + ssl + "kube-ca.pem",
		"--etcd-cafile=" + ssl + "kube-ca.pem",
		"--etcd-certfile=" + ssl + "kube-node.pem",
		"--etcd-keyfile=" + ssl + "kube-node-key.pem",
		"--etcd-servers=" + sb.EtcdEndpoint,
		"--etcd-prefix=" + sb.EtcdPrefix,
		"--storage-backend=etcd3",
		"--service-account-issuer=rke",
		"--api-audiences=unknown,rke",
		"--service-account-key-file=" + ssl + "kube-service-account-token-key.pem",
		"--service-account-signing-key-file=" + ssl + "kube-service-account-token-key.pem",
		"--service-cluster-ip-range=10.43.0.0/16",
		"--tls-cert-file=" + ssl + "kube-apiserver.pem",
		"--tls-private-key-file=" + ssl + "kube-apiserver-key.pem",
		"--kubelet-client-certificate=" + ssl + "kube-apiserver.pem",
		"--kubelet-client-key=" + ssl + "kube-apiserver-key.pem",
		"--profiling=false",
		// The sandbox's nodes live on loopback, which the default lease
		// reconciler of the kubernetes Service refuses to advertise.
		"--endpoint-reconciler-type=none",
	}
}

func (sb *Sandbox) startAPIServers(ctx context.Context) error {
	rootfs := sb.path("images", "kube-apiserver-rootfs.tar")
	if err := writeRootfs(rootfs, sb.opts.KubeAPIServer); err != nil {
		return fmt.Errorf("kube-apiserver image rootfs: %w", err)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(sb.Nodes))
	for i := range sb.Nodes {
		wg.Go(func() {
			if _, err := sb.Docker(ctx, i, "import", rootfs, sb.KubeAPIServerImage()); err != nil {
				errs[i] = err
				return
			}
			// No container yet: rm --force of a missing one is a no-op.
			errs[i] = sb.RecreateAPIServer(ctx, i)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// WaitReady waits until node i's kube-apiserver answers an authenticated
// /readyz; on timeout the error holds the tail of the container's log.
func (sb *Sandbox) WaitReady(ctx context.Context, i int, timeout time.Duration) error {
	n := sb.Nodes[i]
	err := sb.waitAPIServer(ctx, n.Name, n.APIServerURL, timeout, nil)
	if err != nil {
		logs, _ := sb.Docker(context.WithoutCancel(ctx), i, "logs", "--tail=30", "kube-apiserver")
		return fmt.Errorf("%w\n--- kube-apiserver container log ---\n%s", err, logs)
	}
	return nil
}

// WaitHealthy waits until node i's kube-apiserver answers an
// authenticated /healthz, as RKE's healthcheck does: it serves, though it
// may not be ready (a cache that cannot fill).
func (sb *Sandbox) WaitHealthy(ctx context.Context, i int, timeout time.Duration) error {
	n := sb.Nodes[i]
	return sb.waitPath(ctx, n.Name, n.APIServerURL, "/healthz", timeout, nil)
}

// waitAPIServer waits until the kube-apiserver at url answers an
// authenticated /readyz; p, when given, is its process (see waitFor).
func (sb *Sandbox) waitAPIServer(ctx context.Context, name, url string, timeout time.Duration, p *proc) error {
	return sb.waitPath(ctx, name, url, "/readyz", timeout, p)
}

func (sb *Sandbox) waitPath(ctx context.Context, name, url, path string, timeout time.Duration, p *proc) error {
	client, err := sb.AdminClient()
	if err != nil {
		return err
	}
	defer client.CloseIdleConnections()
	return waitFor(ctx, name+" kube-apiserver "+path, timeout, p, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+path, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s: %s", path, resp.Status, bytes.TrimSpace(body))
		}
		return nil
	})
}

// AdminClient is an HTTP client authenticated as a cluster admin
// (system:masters) that trusts the sandbox CA.
func (sb *Sandbox) AdminClient() (*http.Client, error) {
	tlsCfg, err := sb.tlsConfig(sb.AdminCert, sb.AdminKey)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 30 * time.Second}, nil
}

// writeRootfs writes a tar holding the kube-apiserver binary and the few
// directories it expects: the whole image, for `docker import`.
func writeRootfs(file, binary string) error { return writeImage(file, binary, "kube-apiserver") }

// writeImage writes a tar holding binary as /usr/local/bin/name and the
// few directories a static binary expects, for `docker import`.
func writeImage(file, binary, name string) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, d := range []string{"etc/", "tmp/", "usr/", "usr/local/", "usr/local/bin/", "var/", "var/run/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: mode, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
	}
	bin, err := os.Open(binary)
	if err != nil {
		return err
	}
	defer bin.Close()
	st, err := bin.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "usr/local/bin/" + name, Mode: 0o755, Size: st.Size(), ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	if _, err := io.Copy(tw, bin); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}
