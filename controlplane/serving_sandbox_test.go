//go:build sandbox

package controlplane_test

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/atrest-io/atrest/controlplane"
)

// waitServing polls c.Serving until done says nothing is missing ("") and
// returns that observation; it fails with done's last word after timeout.
func waitServing(t *testing.T, c *controlplane.Cluster, timeout time.Duration, done func(controlplane.Serving) string) controlplane.Serving {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s, err := c.Serving(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		msg := done(s)
		if msg == "" {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s\n%s", timeout, msg, s)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// allServe: every node holds a fresh lease and nothing else serves.
func allServe(s controlplane.Serving) string {
	if len(s.Silent) > 0 || len(s.Unmanaged) > 0 || len(s.Managed) != len(sb.Nodes) {
		return "not every node and only the nodes serve"
	}
	return ""
}

// identityLeaseName is kube-apiserver's name for the identity Lease of a
// host (k8s.io/apiserver/pkg/server.NewConfig): apiserver- and base32 of
// the first 16 bytes of the sha256 of the length-prefixed host name and
// "kube-apiserver".
func identityLeaseName(host string) string {
	var b []byte
	for _, s := range []string{host, "kube-apiserver"} {
		b = append(b, byte(len(s)>>8), byte(len(s)))
		b = append(b, s...)
	}
	sum := sha256.Sum256(b)
	return "apiserver-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:16]))
}

func TestServing(t *testing.T) {
	opts, _ := options(t)
	c := connect(t, loadCluster(t), opts)
	ctx := testCtx(t)
	for i, n := range c.Nodes() {
		if n.HostName() != sb.Nodes[i].Name {
			t.Errorf("%s: host name %q, want %q", n.Name(), n.HostName(), sb.Nodes[i].Name)
		}
	}

	// A kube-apiserver restarted by an earlier test takes a moment to
	// claim its lease again.
	s := waitServing(t, c, time.Minute, allServe)
	if err := s.Err(); err != nil || s.Via != "node1" || s.Leases != len(sb.Nodes) || len(s.Endpoints) != 0 {
		t.Errorf("%s: %v", s, err)
	}
	// The leases are named after the hosts as kube-apiserver names them:
	// proof that each sees its node's name.
	rc, err := clientcmd.BuildConfigFromFlags("", sb.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	leases, err := admin.CoordinationV1().Leases("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "apiserver.kubernetes.io/identity=kube-apiserver"})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases.Items {
		host := l.Labels["kubernetes.io/hostname"]
		if l.Name != identityLeaseName(host) {
			t.Errorf("lease %s of host %s, want the name %s", l.Name, host, identityLeaseName(host))
		}
		if d := l.Spec.LeaseDurationSeconds; d == nil || *d != 3600 {
			t.Errorf("lease %s lasts %v s", l.Name, d)
		}
	}

	t.Run("a stray kube-apiserver", func(t *testing.T) {
		stray, err := sb.StartStrayAPIServer(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := stray.Stop(); err != nil {
				t.Error(err)
			}
		})
		want := fmt.Sprintf("lease %s (host %s)", identityLeaseName(stray.Name), stray.Name)
		s := waitServing(t, c, time.Minute, func(s controlplane.Serving) string {
			if !slices.Equal(s.Unmanaged, []string{want}) {
				return fmt.Sprintf("unmanaged %q, want %q", s.Unmanaged, want)
			}
			return ""
		})
		if len(s.Silent) > 0 || len(s.Managed) != len(sb.Nodes) {
			t.Errorf("with a stray: %s", s)
		}
		err = s.Err()
		if !errors.Is(err, controlplane.ErrUnmanagedAPIServer) || !strings.Contains(err.Error(), stray.Name) {
			t.Errorf("with a stray: %v", err)
		}
		t.Log(err)

		// Stopped cleanly, kube-apiserver (v1.35+) deletes its lease.
		if err := stray.Stop(); err != nil {
			t.Fatal(err)
		}
		waitServing(t, c, 30*time.Second, allServe)
	})

	t.Run("a node whose kube-apiserver is down", func(t *testing.T) {
		const i = 2
		if _, err := sb.Docker(ctx, i, "stop", "kube-apiserver"); err != nil {
			t.Fatal(err)
		}
		started := false
		start := func() {
			if started {
				return
			}
			started = true
			if _, err := sb.Docker(context.Background(), i, "start", "kube-apiserver"); err != nil {
				t.Fatal(err)
			}
			if err := sb.WaitReady(context.Background(), i, 2*time.Minute); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(start)
		s := waitServing(t, c, 30*time.Second, func(s controlplane.Serving) string {
			if !slices.Equal(s.Silent, []string{sb.Nodes[i].Name}) {
				return fmt.Sprintf("silent %q, want %s", s.Silent, sb.Nodes[i].Name)
			}
			return ""
		})
		if len(s.Unmanaged) > 0 || s.Err() != nil || len(s.Managed) != len(sb.Nodes)-1 {
			t.Errorf("with %s down: %s: %v", sb.Nodes[i].Name, s, s.Err())
		}
		start()
		waitServing(t, c, time.Minute, allServe)
	})
}
