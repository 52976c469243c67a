//go:build sandbox

package charts

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/reconciler"
)

// TestRBACIsEnoughAndNoMore applies the chart's RBAC for real and runs
// atrest's own code as the chart's service account: the rewrite of every
// secret (and of an extra resource once the values name it) and the canary
// through a node's kube-apiserver must work; anything else atrest does not
// do must be refused.
func TestRBACIsEnoughAndNoMore(t *testing.T) {
	ctx := testCtx(t, 5*time.Minute)
	k := admin(t)
	const ns, release = "atrest-rbac", "rbac"
	k.namespace(t, ctx, ns, nil)
	rbacObjects := func(sets ...string) []*unstructured.Unstructured { return chartRBAC(t, release, ns, sets...) }
	k.apply(t, ctx, rbacObjects())
	token, err := sb.ServiceAccountToken(ctx, ns, release+"-atrest", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	as := &rest.Config{Host: sb.Nodes[0].APIServerURL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAFile: sb.CAFile},
		Timeout: 30 * time.Second, QPS: 100, Burst: 200}
	client, err := kubernetes.NewForConfig(as)
	if err != nil {
		t.Fatal(err)
	}
	for _, where := range []string{ns, "default"} {
		for i := range 5 {
			s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("rewrite-me-%d", i), Namespace: where}, StringData: map[string]string{"v": "not a key"}}
			if _, err := k.client.CoreV1().Secrets(where).Create(ctx, s, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "rewrite-me", Namespace: ns}, Data: map[string]string{"v": "x"}}
	if _, err := k.client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	rw, err := reconciler.NewRewriter(as, reconciler.RewriteOptions{Workers: 4})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("the rewrite of secrets", func(t *testing.T) {
		res, err := rw.Rewrite(ctx, "secrets")
		if err != nil {
			t.Fatalf("rewrite secrets as the chart's service account: %v", err)
		}
		if res.Updated < 10 || res.Updated+res.Deleted != res.Listed {
			t.Errorf("rewrite listed %d, updated %d, deleted %d: want every secret updated", res.Listed, res.Updated, res.Deleted)
		}
	})

	t.Run("the canary", func(t *testing.T) {
		if err := k.client.CoreV1().Secrets("kube-system").Delete(ctx, controlplane.CanaryName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		cfg, err := cluster.Load(sb.ClusterYML)
		if err != nil {
			t.Fatal(err)
		}
		etcd, err := etcdsnap.Dial(ctx, etcdsnap.Config{Endpoints: []string{sb.EtcdEndpoint}, CAFile: sb.CAFile, CertFile: sb.EtcdCertFile, KeyFile: sb.EtcdKeyFile, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		defer etcd.Close()
		nodes, err := controlplane.Connect(ctx, cfg, controlplane.Options{KnownHostsFile: sb.KnownHostsFile, KeyFile: sb.SSHKeyFile, APIServer: as, Storage: etcd})
		if err != nil {
			t.Fatal(err)
		}
		defer nodes.Close()
		// The first write creates the canary, the second updates it.
		for _, what := range []string{"create", "update"} {
			got, err := nodes.Nodes()[0].Canary(ctx)
			if err != nil {
				t.Fatalf("canary (%s) as the chart's service account: %v", what, err)
			}
			if got != "identity" {
				t.Errorf("canary (%s) stored as %q, want identity (the sandbox does not encrypt)", what, got)
			}
		}
		// What a rollback does with it.
		if err := client.CoreV1().Secrets(controlplane.CanaryNamespace).Delete(ctx, controlplane.CanaryName, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete the canary as the chart's service account: %v", err)
		}
	})

	t.Run("which kube-apiservers serve", func(t *testing.T) {
		nodes := connectAs(t, ctx, as)
		s, err := nodes.Serving(ctx)
		if err != nil {
			t.Fatalf("which kube-apiservers serve, as the chart's service account: %v", err)
		}
		if err := s.Err(); err != nil || len(s.Managed) != len(sb.Nodes) {
			t.Errorf("as the chart's service account: %s: %v", s, err)
		}
	})

	t.Run("each kube-apiserver's version and reload metrics", func(t *testing.T) {
		nodes := connectAs(t, ctx, as)
		for _, n := range nodes.Nodes() {
			if _, err := n.ServerVersion(ctx); err != nil {
				t.Errorf("/version as the chart's service account: %v", err)
			}
			if _, err := n.ReloadMetrics(ctx); err != nil {
				t.Errorf("/metrics as the chart's service account: %v", err)
			}
		}
	})

	t.Run("nothing more", func(t *testing.T) {
		secret := func(ns, name string) *corev1.Secret {
			return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
		}
		apply := func(ns, name string) error {
			body := fmt.Appendf(nil, `{"apiVersion":"v1","kind":"Secret","metadata":{"name":%q,"namespace":%q}}`, name, ns)
			_, err := client.CoreV1().Secrets(ns).Patch(ctx, name, types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: "atrest"})
			return err
		}
		for _, tt := range []struct {
			what string
			do   func() error
		}{
			// A plain create carries no name RBAC could match, so even
			// the canary's name cannot be created that way.
			{"create the canary with a plain create", func() error {
				_, err := client.CoreV1().Secrets("kube-system").Create(ctx, secret("kube-system", controlplane.CanaryName), metav1.CreateOptions{})
				return err
			}},
			{"create another secret in kube-system", func() error {
				_, err := client.CoreV1().Secrets("kube-system").Create(ctx, secret("kube-system", "not-the-canary"), metav1.CreateOptions{})
				return err
			}},
			{"apply another secret in kube-system", func() error { return apply("kube-system", "not-the-canary") }},
			{"apply a secret elsewhere", func() error { return apply(ns, "rewrite-me-0") }},
			{"create a secret elsewhere", func() error {
				_, err := client.CoreV1().Secrets(ns).Create(ctx, secret(ns, "new"), metav1.CreateOptions{})
				return err
			}},
			{"delete a secret", func() error {
				return client.CoreV1().Secrets(ns).Delete(ctx, "rewrite-me-0", metav1.DeleteOptions{})
			}},
			{"delete every secret of a namespace", func() error {
				return client.CoreV1().Secrets(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
			}},
			{"watch secrets", func() error {
				w, err := client.CoreV1().Secrets("").Watch(ctx, metav1.ListOptions{})
				if err == nil {
					w.Stop()
				}
				return err
			}},
			{"list configmaps (not named in rbac.extraResources)", func() error {
				_, err := client.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{})
				return err
			}},
			{"read a lease by name", func() error {
				_, err := client.CoordinationV1().Leases("kube-system").Get(ctx, "kube-controller-manager", metav1.GetOptions{})
				return err
			}},
			{"watch leases", func() error {
				w, err := client.CoordinationV1().Leases("kube-system").Watch(ctx, metav1.ListOptions{})
				if err == nil {
					w.Stop()
				}
				return err
			}},
			{"list leases elsewhere", func() error {
				_, err := client.CoordinationV1().Leases("kube-node-lease").List(ctx, metav1.ListOptions{})
				return err
			}},
			{"update a lease", func() error {
				_, err := client.CoordinationV1().Leases("kube-system").Update(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "atrest-rbac", Namespace: "kube-system"}}, metav1.UpdateOptions{})
				return err
			}},
			{"list endpointslices elsewhere", func() error {
				_, err := client.DiscoveryV1().EndpointSlices("kube-system").List(ctx, metav1.ListOptions{})
				return err
			}},
			{"list pods", func() error {
				_, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
				return err
			}},
			{"read a node", func() error {
				_, err := client.CoreV1().Nodes().Get(ctx, "node1", metav1.GetOptions{})
				return err
			}},
			{"mint a token for itself", func() error {
				_, err := client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, release+"-atrest", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
				return err
			}},
			{"widen its own ClusterRole", func() error {
				cr, err := k.client.RbacV1().ClusterRoles().Get(ctx, release+"-atrest", metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				cr.Rules = append(cr.Rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}})
				_, err = client.RbacV1().ClusterRoles().Update(ctx, cr, metav1.UpdateOptions{})
				return err
			}},
		} {
			if err := tt.do(); !apierrors.IsForbidden(err) {
				t.Errorf("%s as the chart's service account: %v, want forbidden", tt.what, err)
			}
		}
	})

	t.Run("events, once the values enable them", func(t *testing.T) {
		events := func(reason string) []corev1.Event {
			l, err := k.client.CoreV1().Events(controlplane.CanaryNamespace).List(ctx, metav1.ListOptions{
				FieldSelector: "involvedObject.name=" + controlplane.CanaryName + ",reason=" + reason})
			if err != nil {
				t.Fatal(err)
			}
			return l.Items
		}
		// record records reason times, and waits up to wait for the
		// broadcaster to have written them.
		record := func(reason string, times int, wait time.Duration) {
			rec, err := controlplane.NewEventRecorder(as, "rbac-test", slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer rec.Shutdown()
			for range times {
				rec.Event(corev1.EventTypeNormal, reason, "recorded as the chart's service account")
			}
			// The broadcaster writes in the background; wait for it.
			deadline := time.Now().Add(wait)
			for time.Now().Before(deadline) {
				if es := events(reason); len(es) == 1 && es[0].Count == int32(times) {
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
		record("RBACCheckOff", 1, 2*time.Second)
		if es := events("RBACCheckOff"); len(es) != 0 {
			t.Errorf("an event recorded without events.enabled: %v", es)
		}
		k.apply(t, ctx, rbacObjects("events.enabled=true"))
		// The authorizer sees RBAC changes through an informer: soon.
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, err := client.CoreV1().Events(controlplane.CanaryNamespace).Create(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{GenerateName: "rbac-probe-"},
				InvolvedObject: corev1.ObjectReference{Kind: "Secret", Namespace: controlplane.CanaryNamespace, Name: "rbac-probe"}, Reason: "Probe", Type: corev1.EventTypeNormal}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("create an event with events.enabled: %v", err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		// Recorded three times: one create, then patches of the count.
		record("RBACCheckOn", 3, 10*time.Second)
		es := events("RBACCheckOn")
		if len(es) != 1 || es[0].Count != 3 || es[0].Source.Component != "atrest" || es[0].InvolvedObject.Kind != "Secret" {
			t.Fatalf("events recorded as the chart's service account: %+v, want one of count 3 on the canary", es)
		}
		for _, tt := range []struct {
			what string
			do   func() error
		}{
			{"delete an event", func() error {
				return client.CoreV1().Events(controlplane.CanaryNamespace).Delete(ctx, es[0].Name, metav1.DeleteOptions{})
			}},
			{"list events", func() error {
				_, err := client.CoreV1().Events(controlplane.CanaryNamespace).List(ctx, metav1.ListOptions{})
				return err
			}},
			{"create an event elsewhere", func() error {
				_, err := client.CoreV1().Events(ns).Create(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{GenerateName: "x-"},
					InvolvedObject: corev1.ObjectReference{Kind: "Secret", Namespace: ns, Name: "x"}}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
				return err
			}},
		} {
			if err := tt.do(); !apierrors.IsForbidden(err) {
				t.Errorf("%s as the chart's service account: %v, want forbidden", tt.what, err)
			}
		}
	})

	t.Run("an extra resource, once the values name it", func(t *testing.T) {
		if _, err := rw.Rewrite(ctx, "configmaps"); err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Fatalf("rewrite configmaps before rbac.extraResources names them: %v, want forbidden", err)
		}
		k.apply(t, ctx, rbacObjects("rbac.extraResources[0].resource=configmaps"))
		// The authorizer sees RBAC changes through an informer: soon, not at once.
		deadline := time.Now().Add(30 * time.Second)
		for {
			res, err := rw.Rewrite(ctx, "configmaps")
			if err == nil {
				if res.Updated < 1 {
					t.Errorf("rewrite configmaps updated %d of %d", res.Updated, res.Listed)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("rewrite configmaps with rbac.extraResources naming them: %v", err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
}

// connectAs connects to the sandbox's nodes with as for their apiservers.
func connectAs(t *testing.T, ctx context.Context, as *rest.Config) *controlplane.Cluster {
	t.Helper()
	cfg, err := cluster.Load(sb.ClusterYML)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := controlplane.Connect(ctx, cfg, controlplane.Options{KnownHostsFile: sb.KnownHostsFile, KeyFile: sb.SSHKeyFile, APIServer: as})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nodes.Close() })
	return nodes
}
