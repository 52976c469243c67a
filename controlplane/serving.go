package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// What the cluster itself says about which kube-apiservers serve it.
//
// Every kube-apiserver (feature gate APIServerIdentity, on by default since
// v1.26) keeps an identity Lease in kube-system, renewed every 10 s and
// valid for an hour. Since v1.27 it is named apiserver-<hash of the host
// name>, labelled apiserver.kubernetes.io/identity=kube-apiserver and
// kubernetes.io/hostname=<os.Hostname()>: inside RKE's kube-apiserver
// container (host network, no UTS mode) that is the host's name, what
// `uname -n` says on the node. Since v1.35 a kube-apiserver deletes its
// Lease when it shuts down cleanly (and its successor on the same host at
// start); otherwise a stopped one's Lease stays fresh for up to an hour,
// and is counted as serving: it cannot be told from one that serves.
//
// With the default (lease) endpoint reconciler every kube-apiserver also
// lists its --advertise-address in the kubernetes Service's EndpointSlice
// in default.
const (
	identityLeaseSelector   = "apiserver.kubernetes.io/identity=kube-apiserver"
	kubernetesSliceSelector = discoveryv1.LabelServiceName + "=kubernetes"
)

// ErrUnmanagedAPIServer: a kube-apiserver serves the cluster from no
// controlplane node of cluster.yml. It would not get a new key before the
// managed ones write with it, and could not read what they wrote.
var ErrUnmanagedAPIServer = errors.New("kube-apiserver serving from no controlplane node of cluster.yml")

// ErrServingUnproven: no kube-apiserver holds a fresh identity Lease, so
// which ones serve cannot be proven (is APIServerIdentity switched off?).
var ErrServingUnproven = errors.New("no kube-apiserver identity lease: which kube-apiservers serve is not proven")

// Serving is which kube-apiservers serve the cluster, by its identity
// Leases and the kubernetes Service's endpoints, against the managed
// (controlplane) nodes.
type Serving struct {
	// Via is the node whose kube-apiserver answered.
	Via string
	// Leases is the number of fresh identity Leases.
	Leases int
	// Managed are the managed nodes with a fresh identity Lease, in
	// cluster.yml order.
	Managed []string
	// Unmanaged are the serving kube-apiservers that are no managed node:
	// "lease NAME (host HOST)" for a fresh identity Lease whose host name
	// is no managed node's, "endpoint IP" for an address of the kubernetes
	// Service that is no managed node's address or internal_address.
	Unmanaged []string
	// Silent are the managed nodes with no fresh identity Lease: their
	// kube-apiserver is down, or has another host name than the node.
	Silent []string
	// Endpoints are the addresses the kubernetes Service's EndpointSlices
	// list; none with --endpoint-reconciler-type=none.
	Endpoints []string
}

// Err is nil when every serving kube-apiserver is a managed node. Otherwise
// it names each one that is not (ErrUnmanagedAPIServer), or says that no
// kube-apiserver proves it serves (ErrServingUnproven).
func (s Serving) Err() error {
	if len(s.Unmanaged) > 0 {
		return fmt.Errorf("%w: %s (read through %s); such a kube-apiserver would not get a new key before the others write with it, "+
			"nor read what they wrote: add its node to cluster.yml with the controlplane role, or stop it "+
			"(a kube-apiserver that is gone but did not shut down cleanly, or ran Kubernetes before v1.35, leaves its lease fresh "+
			"for up to an hour: once sure it is gone, delete it with kubectl -n kube-system delete lease NAME)",
			ErrUnmanagedAPIServer, strings.Join(s.Unmanaged, ", "), s.Via)
	}
	if s.Leases == 0 {
		return fmt.Errorf("%w (read through %s): is the APIServerIdentity feature gate off?", ErrServingUnproven, s.Via)
	}
	return nil
}

// String describes the observation for logs and status.
func (s Serving) String() string {
	list := func(xs []string) string {
		if len(xs) == 0 {
			return "none"
		}
		return strings.Join(xs, ", ")
	}
	return fmt.Sprintf("kube-apiservers serving (read through %s): managed %s; unmanaged %s; silent %s; %d fresh identity lease(s); kubernetes endpoints %s",
		s.Via, list(s.Managed), list(s.Unmanaged), list(s.Silent), s.Leases, list(s.Endpoints))
}

// HostName is the node's host name as its kernel reports it (`uname -n`),
// learnt at Connect: the name its kube-apiserver puts on its identity
// Lease. It need not be the hostname_override of cluster.yml.
func (n *Node) HostName() string { return n.hostname }

// uname asks the node for its host name.
func (n *Node) uname(ctx context.Context) (string, error) {
	r, err := n.run(ctx, "uname -n", nil, 1024)
	if err != nil {
		return "", err
	}
	if r.code != 0 {
		return "", fmt.Errorf("uname -n: exit status %d: %s", r.code, r.stderr)
	}
	name := strings.TrimSpace(string(r.stdout))
	if name == "" || r.overflow || strings.ContainsAny(name, " \t\n") {
		return "", fmt.Errorf("uname -n: unexpected answer %q", r.stdout)
	}
	return name, nil
}

// Serving reads the identity Leases and the kubernetes Service's
// EndpointSlices through the first node whose kube-apiserver answers, and
// maps them to the managed nodes: by host name for Leases, by address or
// internal_address for endpoints. It changes nothing. A missing or empty
// EndpointSlice is no error (the endpoint reconciler may be off); a
// refusal (RBAC) is.
func (c *Cluster) Serving(ctx context.Context) (Serving, error) {
	var errs []error
	for _, n := range c.nodes {
		leases, eps, err := n.servingObjects(ctx)
		if err != nil {
			if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
				return Serving{}, fmt.Errorf("controlplane: read which kube-apiservers serve: %w (atrest needs list on leases in kube-system and on endpointslices in default)", err)
			}
			errs = append(errs, err)
			continue
		}
		now := time.Now()
		nodes := make([]servingNode, len(c.nodes))
		for i, m := range c.nodes {
			nodes[i] = servingNode{name: m.name, hostname: m.hostname, addresses: []string{m.cfg.Address, m.cfg.InternalAddress}}
		}
		if hasEndpoints(eps) {
			c.resolveAddresses(ctx, nodes)
		}
		s := mapServing(nodes, leases, eps, now)
		s.Via = n.name
		return s, nil
	}
	return Serving{}, fmt.Errorf("controlplane: read which kube-apiservers serve: no node's kube-apiserver answered:\n%w", errors.Join(errs...))
}

// servingObjects lists the identity Leases and the kubernetes Service's
// EndpointSlices through this node's kube-apiserver.
func (n *Node) servingObjects(ctx context.Context) ([]coordinationv1.Lease, []discoveryv1.EndpointSlice, error) {
	ctx, cancel := context.WithTimeout(ctx, n.opts.Timeout)
	defer cancel()
	leases, err := n.kube.CoordinationV1().Leases(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{LabelSelector: identityLeaseSelector})
	if err != nil {
		return nil, nil, nodeErr(n.name, "list kube-apiserver identity leases in kube-system through "+n.apiURL, nil, err)
	}
	eps, err := n.kube.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{LabelSelector: kubernetesSliceSelector})
	if err != nil {
		return nil, nil, nodeErr(n.name, "list the kubernetes Service's endpointslices in default through "+n.apiURL, nil, err)
	}
	return leases.Items, eps.Items, nil
}

func hasEndpoints(eps []discoveryv1.EndpointSlice) bool {
	for _, s := range eps {
		if len(s.Endpoints) > 0 {
			return true
		}
	}
	return false
}

// resolveAddresses adds the IPs of node addresses given as DNS names: RKE
// allows them, and endpoints are IPs. A name that does not resolve adds
// nothing, and its endpoint shows as unmanaged: a stall with the address
// in it, rather than a guess.
func (c *Cluster) resolveAddresses(ctx context.Context, nodes []servingNode) {
	for i := range nodes {
		for _, a := range nodes[i].addresses {
			if a == "" || net.ParseIP(a) != nil {
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
			ips, err := net.DefaultResolver.LookupIPAddr(rctx, a)
			cancel()
			if err != nil {
				c.opts.Logger.Warn("cannot resolve a node's address to match it with the kubernetes Service's endpoints", "node", nodes[i].name, "address", a, "err", err)
				continue
			}
			for _, ip := range ips {
				nodes[i].addresses = append(nodes[i].addresses, ip.IP.String())
			}
		}
	}
}

// servingNode is what mapServing knows of a managed node.
type servingNode struct {
	name      string
	hostname  string   // uname -n
	addresses []string // address, internal_address, and what they resolve to
}

func (n servingNode) hasIP(ip net.IP) bool {
	return slices.ContainsFunc(n.addresses, func(a string) bool { return ip.Equal(net.ParseIP(a)) })
}

// mapServing maps fresh identity Leases to nodes by host name and the
// kubernetes Service's endpoint addresses to nodes by address; whatever maps
// to no node is unmanaged.
func mapServing(nodes []servingNode, leases []coordinationv1.Lease, eps []discoveryv1.EndpointSlice, now time.Time) Serving {
	var s Serving
	leased := make([]bool, len(nodes))
	var unmanagedLeases []string
	for _, l := range leases {
		if !leaseFresh(l, now) {
			continue
		}
		s.Leases++
		host := l.Labels[corev1.LabelHostname]
		i := -1
		if host != "" {
			i = slices.IndexFunc(nodes, func(n servingNode) bool { return n.hostname == host })
		}
		switch {
		case i >= 0:
			leased[i] = true
		case host == "":
			unmanagedLeases = append(unmanagedLeases, fmt.Sprintf("lease %s (no %s label)", l.Name, corev1.LabelHostname))
		default:
			unmanagedLeases = append(unmanagedLeases, fmt.Sprintf("lease %s (host %s)", l.Name, host))
		}
	}
	for i, n := range nodes {
		if leased[i] {
			s.Managed = append(s.Managed, n.name)
		} else {
			s.Silent = append(s.Silent, n.name)
		}
	}
	slices.Sort(unmanagedLeases)
	s.Unmanaged = unmanagedLeases

	// Every address counts, ready or not: one that serves some clients
	// is enough to need the key.
	seen := map[string]bool{}
	var unmanagedEndpoints []string
	for _, es := range eps {
		for _, ep := range es.Endpoints {
			for _, a := range ep.Addresses {
				ip := net.ParseIP(a)
				key := a
				if ip != nil {
					key = ip.String()
				}
				if seen[key] {
					continue
				}
				seen[key] = true
				s.Endpoints = append(s.Endpoints, key)
				if ip == nil || slices.IndexFunc(nodes, func(n servingNode) bool { return n.hasIP(ip) }) < 0 {
					unmanagedEndpoints = append(unmanagedEndpoints, "endpoint "+key)
				}
			}
		}
	}
	slices.Sort(s.Endpoints)
	slices.Sort(unmanagedEndpoints)
	s.Unmanaged = append(s.Unmanaged, unmanagedEndpoints...)
	return s
}

// leaseFresh: renewed less than its duration ago, as kube-apiserver's own
// lease garbage collector judges it.
func leaseFresh(l coordinationv1.Lease, now time.Time) bool {
	if l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return false
	}
	return l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second).After(now)
}
