package controlplane

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"

	"github.com/atrest-io/atrest/cluster"
)

// PreflightRequest says what a plan will need of every node.
type PreflightRequest struct {
	// ProviderFile: the plan writes or loads the provider file, so each
	// kube-apiserver container must see it through a bind mount.
	ProviderFile bool
	// KMSEndpoints are the unix:// endpoints of the KMS providers in the
	// config the plan deploys, as kube-apiserver sees them inside its
	// container.
	KMSEndpoints []string
	// ManagedKMS: the config names atrest's own KMS plugin, which it
	// deploys itself (and proves healthy) before the config: its socket
	// directory must be mounted into kube-apiserver's container, and
	// need not exist yet.
	ManagedKMS bool
}

// Check is one thing a plan needs of one node, and whether the node has
// it.
type Check struct {
	Node string // the node's name
	What string // what was checked: "sudo", "provider file mount", "KMS socket unix:///..."
	// Problem says what is missing and how to fix it; "" when the check
	// passed.
	Problem string
}

// Passed reports whether the node has what was checked.
func (c Check) Passed() bool { return c.Problem == "" }

func (c Check) String() string {
	if c.Passed() {
		return fmt.Sprintf("node %s: %s: ok", c.Node, c.What)
	}
	return fmt.Sprintf("node %s: %s: %s", c.Node, c.What, c.Problem)
}

// What the checks are called in a Check.
const (
	checkSudo      = "sudo"
	checkFileMount = "provider file mount"
	checkKMSSocket = "KMS socket "
)

// Preflight checks on every node, in parallel and without changing
// anything, what req says the plan will need: that the SSH user can act
// as root (when it is not root), that the kube-apiserver container can
// see the provider file, and that every KMS plugin socket exists and is
// mounted into the container. Found missing, a need is a failed Check;
// the error joins what could not be checked at all (an unreachable
// node), and the checks hold all that could.
func (c *Cluster) Preflight(ctx context.Context, req PreflightRequest) ([]Check, error) {
	checks := make([][]Check, len(c.nodes))
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		wg.Go(func() { checks[i], errs[i] = n.preflight(ctx, req) })
	}
	wg.Wait()
	var out []Check
	for _, cs := range checks {
		out = append(out, cs...)
	}
	return out, errors.Join(errs...)
}

// preflight is Preflight on one node.
func (n *Node) preflight(ctx context.Context, req PreflightRequest) ([]Check, error) {
	var checks []Check
	if !n.root {
		problem, err := n.checkSudo(ctx)
		if err != nil {
			return checks, err
		}
		checks = append(checks, Check{Node: n.name, What: checkSudo, Problem: problem})
		if problem != "" {
			// Every other check needs root on the node.
			return checks, nil
		}
	}
	if !req.ProviderFile && len(req.KMSEndpoints) == 0 && !req.ManagedKMS {
		return checks, nil
	}
	c, err := n.container(ctx)
	if err != nil {
		return checks, err
	}
	more, err := mountChecks(n.name, n.file, c.Mounts, req, func(host string) (bool, error) { return n.socketExists(ctx, host) })
	return append(checks, more...), err
}

// mountChecks are the checks of req that the kube-apiserver container's
// mounts answer, on the node named node whose provider file is file;
// socket says whether a socket exists at a path on the node.
func mountChecks(node, file string, mounts []mount, req PreflightRequest, socket func(host string) (bool, error)) ([]Check, error) {
	var checks []Check
	if req.ProviderFile {
		checks = append(checks, Check{Node: node, What: checkFileMount, Problem: fileMountProblem(mounts, file)})
	}
	for _, ep := range req.KMSEndpoints {
		host, problem := kmsSocketHostPath(mounts, ep)
		if problem == "" {
			ok, err := socket(host)
			if err != nil {
				return checks, nodeErr(node, "check KMS socket "+ep, nil, err)
			}
			if !ok {
				problem = fmt.Sprintf("no socket at %s on the node (kube-apiserver sees it at %s): the KMS plugin must run on every controlplane node, with its socket mounted into the %s container", host, strings.TrimPrefix(ep, "unix://"), containerName)
			}
		}
		checks = append(checks, Check{Node: node, What: checkKMSSocket + ep, Problem: problem})
	}
	if req.ManagedKMS {
		_, problem := kmsSocketHostPath(mounts, "unix://"+cluster.KMSSocket)
		checks = append(checks, Check{Node: node, What: checkKMSSocket + "unix://" + cluster.KMSSocket + " (atrest's plugin)", Problem: problem})
	}
	return checks, nil
}

// checkSudo asks sudo, without a password, to run true: what run does
// for every script when the SSH user is not root.
func (n *Node) checkSudo(ctx context.Context) (problem string, err error) {
	r, err := n.run(ctx, "true", nil, 64)
	switch {
	case errors.Is(err, errNoSudo):
		return sudoProblem(n.cfg.User, "sudo wants a password"), nil
	case err != nil:
		return "", n.sshErr("check sudo", err)
	case r.code != 0:
		return sudoProblem(n.cfg.User, fmt.Sprintf("sudo -n true: exit status %d: %s", r.code, r.stderr)), nil
	}
	return "", nil
}

// sudoProblem names the user and the fix; why is what sudo said.
func sudoProblem(user, why string) string {
	return fmt.Sprintf("user %q is not root and cannot run commands as root with sudo -n (%s): log in as root (user: root in cluster.yml) or allow passwordless sudo for %q", user, why, user)
}

// socketExists tests, on the node, whether a socket is at host.
func (n *Node) socketExists(ctx context.Context, host string) (bool, error) {
	r, err := n.run(ctx, "test -S "+shellQuote(host), nil, 64)
	if err != nil {
		return false, err
	}
	return r.code == 0, nil
}

// fileMountProblem says why the container could not see the provider file
// at hostFile, "" when a bind mount covers it.
func fileMountProblem(mounts []mount, hostFile string) string {
	if containerPath(mounts, hostFile) != "" {
		return ""
	}
	return fmt.Sprintf("the %s container mounts nothing that holds %s, so it could not read the provider file: bind-mount %s into it (RKE mounts /etc/kubernetes; check prefix_path in cluster.yml)", containerName, hostFile, path.Dir(hostFile))
}

// kmsSocketHostPath maps a KMS endpoint, as kube-apiserver sees it in its
// container, to the socket's path on the node; problem says why it cannot.
func kmsSocketHostPath(mounts []mount, endpoint string) (host, problem string) {
	sock, ok := strings.CutPrefix(endpoint, "unix://")
	if !ok || !path.IsAbs(sock) {
		return "", fmt.Sprintf("endpoint %q is not a unix:// socket with an absolute path, the only kind kube-apiserver dials", endpoint)
	}
	host = hostPath(mounts, path.Clean(sock))
	if host == "" {
		return "", fmt.Sprintf("the %s container mounts nothing that holds %s, so kube-apiserver could not reach the plugin: the KMS plugin must run on every controlplane node, with its socket's directory bind-mounted into the %s container", containerName, path.Clean(sock), containerName)
	}
	return host, ""
}

// hostPath maps a path inside a container to where it is on the node,
// through the container's bind mounts: the reverse of containerPath. The
// mount with the longest destination wins, since it hides the others
// below it. "" when no bind mount covers it (it is in the image).
func hostPath(mounts []mount, inContainer string) string {
	return throughMounts(mounts, inContainer, func(m mount) (string, string) { return m.Destination, m.Source })
}
