package controlplane

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var servingNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// lease is an identity Lease of the host, renewed age ago for an hour, as
// kube-apiserver writes it.
func lease(name, host string, age time.Duration) coordinationv1.Lease {
	holder, hour := name+"_0c8914f7-0f35-440e-8676-7844977d3a05", int32(3600)
	l := coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system", Labels: map[string]string{"apiserver.kubernetes.io/identity": "kube-apiserver"}},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       &holder,
			LeaseDurationSeconds: &hour,
			RenewTime:            &metav1.MicroTime{Time: servingNow.Add(-age)},
		},
	}
	if host != "" {
		l.Labels["kubernetes.io/hostname"] = host
	}
	return l
}

func endpointSlice(addrs ...string) discoveryv1.EndpointSlice {
	s := discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default"}, AddressType: discoveryv1.AddressTypeIPv4}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}})
	}
	return s
}

func TestMapServing(t *testing.T) {
	three := []servingNode{
		{name: "node1", hostname: "node1", addresses: []string{"10.0.0.1", ""}},
		{name: "node2", hostname: "node2", addresses: []string{"10.0.0.2", ""}},
		{name: "node3", hostname: "node3", addresses: []string{"203.0.113.3", "10.0.0.3"}},
	}
	fresh := []coordinationv1.Lease{lease("apiserver-a", "node1", 5*time.Second), lease("apiserver-b", "node2", time.Minute), lease("apiserver-c", "node3", 59*time.Minute)}
	for _, tt := range []struct {
		name      string
		nodes     []servingNode
		leases    []coordinationv1.Lease
		slices    []discoveryv1.EndpointSlice
		managed   []string
		unmanaged []string
		silent    []string
		endpoints []string
		err       error
	}{
		{name: "every node serves, no endpoints (reconciler off)", nodes: three, leases: fresh,
			managed: []string{"node1", "node2", "node3"}},
		{name: "an empty EndpointSlice", nodes: three, leases: fresh, slices: []discoveryv1.EndpointSlice{endpointSlice()},
			managed: []string{"node1", "node2", "node3"}},
		{name: "endpoints at addresses and internal addresses", nodes: three, leases: fresh,
			slices:  []discoveryv1.EndpointSlice{endpointSlice("10.0.0.1", "10.0.0.2"), endpointSlice("10.0.0.3", "10.0.0.1")},
			managed: []string{"node1", "node2", "node3"}, endpoints: []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}},
		{name: "a stray lease", nodes: three, leases: append(slices.Clone(fresh), lease("apiserver-s", "stray1", time.Second)),
			managed: []string{"node1", "node2", "node3"}, unmanaged: []string{"lease apiserver-s (host stray1)"}, err: ErrUnmanagedAPIServer},
		{name: "a stray endpoint", nodes: three, leases: fresh, slices: []discoveryv1.EndpointSlice{endpointSlice("10.0.0.1", "10.0.0.9")},
			managed: []string{"node1", "node2", "node3"}, unmanaged: []string{"endpoint 10.0.0.9"}, endpoints: []string{"10.0.0.1", "10.0.0.9"}, err: ErrUnmanagedAPIServer},
		{name: "a stray with both, and a node down", nodes: three,
			leases:    []coordinationv1.Lease{fresh[0], fresh[1], lease("apiserver-z", "removed-from-git", time.Second), lease("apiserver-s", "stray1", time.Second)},
			slices:    []discoveryv1.EndpointSlice{endpointSlice("10.0.0.1", "10.0.0.2", "10.0.0.7")},
			managed:   []string{"node1", "node2"},
			unmanaged: []string{"lease apiserver-s (host stray1)", "lease apiserver-z (host removed-from-git)", "endpoint 10.0.0.7"},
			silent:    []string{"node3"}, endpoints: []string{"10.0.0.1", "10.0.0.2", "10.0.0.7"}, err: ErrUnmanagedAPIServer},
		{name: "expired leases are ignored", nodes: three,
			leases:  []coordinationv1.Lease{fresh[0], fresh[1], lease("apiserver-c", "node3", 61*time.Minute), lease("apiserver-s", "stray1", 2*time.Hour)},
			managed: []string{"node1", "node2"}, silent: []string{"node3"}},
		{name: "a lease without renew time or duration is not fresh", nodes: three[:1],
			leases: func() []coordinationv1.Lease {
				a, b := lease("apiserver-a", "node1", 0), lease("apiserver-s", "stray1", 0)
				a.Spec.RenewTime, b.Spec.LeaseDurationSeconds = nil, nil
				return []coordinationv1.Lease{a, b}
			}(),
			silent: []string{"node1"}, err: ErrServingUnproven},
		{name: "a lease without a host name label", nodes: three, leases: append(slices.Clone(fresh), lease("apiserver-x", "", time.Second)),
			managed: []string{"node1", "node2", "node3"}, unmanaged: []string{"lease apiserver-x (no kubernetes.io/hostname label)"}, err: ErrUnmanagedAPIServer},
		{name: "host names, not hostname_override", nodes: []servingNode{{name: "cp-a", hostname: "ip-10-0-0-1.ec2.internal", addresses: []string{"10.0.0.1"}}},
			leases:  []coordinationv1.Lease{lease("apiserver-a", "ip-10-0-0-1.ec2.internal", time.Second), lease("apiserver-b", "cp-a", time.Second)},
			managed: []string{"cp-a"}, unmanaged: []string{"lease apiserver-b (host cp-a)"}, err: ErrUnmanagedAPIServer},
		{name: "a node that runs under another host name than it says", nodes: three[:1],
			leases:    []coordinationv1.Lease{lease("apiserver-r", "node1-renamed", time.Second)},
			unmanaged: []string{"lease apiserver-r (host node1-renamed)"}, silent: []string{"node1"}, err: ErrUnmanagedAPIServer},
		{name: "no identity lease at all", nodes: three, silent: []string{"node1", "node2", "node3"}, err: ErrServingUnproven},
		{name: "IPv6 endpoints compare as addresses", nodes: []servingNode{{name: "v6", hostname: "v6", addresses: []string{"fd00:0:0::1"}}},
			leases: []coordinationv1.Lease{lease("apiserver-a", "v6", time.Second)}, slices: []discoveryv1.EndpointSlice{endpointSlice("fd00::1", "FD00::2")},
			managed: []string{"v6"}, unmanaged: []string{"endpoint fd00::2"}, endpoints: []string{"fd00::1", "fd00::2"}, err: ErrUnmanagedAPIServer},
		{name: "an endpoint that is no IP is no node's", nodes: three, leases: fresh, slices: []discoveryv1.EndpointSlice{endpointSlice("node1")},
			managed: []string{"node1", "node2", "node3"}, unmanaged: []string{"endpoint node1"}, endpoints: []string{"node1"}, err: ErrUnmanagedAPIServer},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := mapServing(tt.nodes, tt.leases, tt.slices, servingNow)
			s.Via = "node1"
			for _, f := range []struct {
				what      string
				got, want []string
			}{{"managed", s.Managed, tt.managed}, {"unmanaged", s.Unmanaged, tt.unmanaged}, {"silent", s.Silent, tt.silent}, {"endpoints", s.Endpoints, tt.endpoints}} {
				if !slices.Equal(f.got, f.want) {
					t.Errorf("%s: %q, want %q", f.what, f.got, f.want)
				}
			}
			err := s.Err()
			switch {
			case tt.err == nil && err != nil:
				t.Errorf("Err: %v, want nil", err)
			case tt.err != nil && !errors.Is(err, tt.err):
				t.Errorf("Err: %v, want %v", err, tt.err)
			}
			if err != nil {
				for _, u := range tt.unmanaged {
					if !strings.Contains(err.Error(), u) {
						t.Errorf("Err does not name %s: %v", u, err)
					}
				}
				if !strings.Contains(err.Error(), "node1") {
					t.Errorf("Err does not say which node it read through: %v", err)
				}
			}
			desc := s.String()
			for _, want := range append(append(slices.Clone(tt.managed), tt.unmanaged...), tt.silent...) {
				if !strings.Contains(desc, want) {
					t.Errorf("String does not mention %s: %s", want, desc)
				}
			}
		})
	}
}

func TestLeaseFresh(t *testing.T) {
	for _, tt := range []struct {
		age  time.Duration
		dur  int32
		want bool
	}{
		{0, 3600, true},
		{3599 * time.Second, 3600, true},
		{3600 * time.Second, 3600, false},
		{time.Hour + time.Second, 3600, false},
		{-time.Minute, 3600, true}, // the apiserver's clock runs ahead
		{20 * time.Second, 15, false},
	} {
		l := lease("apiserver-a", "node1", tt.age)
		l.Spec.LeaseDurationSeconds = &tt.dur
		if got := leaseFresh(l, servingNow); got != tt.want {
			t.Errorf("renewed %s ago for %ds: fresh %v, want %v", tt.age, tt.dur, got, tt.want)
		}
	}
}
