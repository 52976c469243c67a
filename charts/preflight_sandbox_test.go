//go:build sandbox

package charts

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/keystore"
	"github.com/atrest-io/atrest/reconciler"
	"github.com/atrest-io/atrest/sandbox"
)

// preflightSecret is the material of the custom config's key: it must
// appear in no refusal.
const preflightSecret = "RTczRjFDODMwQzAyMDVBREU4NDJBMUZFNDhCNzM5N0I="

// preflightCustom is a custom config covering secrets and configmaps.
const preflightCustom = `    secrets_encryption_config:
      enabled: true
      custom_config:
        apiVersion: apiserver.config.k8s.io/v1
        kind: EncryptionConfiguration
        resources:
          - resources: [secrets, configmaps]
            providers:
              - aescbc:
                  keys:
                    - name: k-fw5hn
                      secret: ` + preflightSecret + `
              - identity: {}
`

// chartRBAC is the chart's RBAC objects, rendered as release in ns.
func chartRBAC(t *testing.T, release, ns string, sets ...string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, o := range render(t, release, ns, []string{minimalValues}, sets...) {
		switch o.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			out = append(out, o)
		}
	}
	return out
}

// reconcilerAs assembles a Reconciler as cmd/atrest does (wire.go), on
// the sandbox, reaching the API as as, with its keyring under its own
// Vault prefix and snapshots in snapDir.
func reconcilerAs(t *testing.T, ctx context.Context, cfg *cluster.Config, as *rest.Config, snapDir string) (*reconciler.Reconciler, *keystore.Store) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	keys, err := keystore.Open(ctx, keystore.Config{Address: sb.Vault.Address, CAFile: sb.Vault.CAFile, InsecureAllowHTTP: sb.Vault.PlainHTTP(), TokenFile: sb.Vault.TokenFile,
		KVMount: "secret", Prefix: "atrest-preflight-test", Cluster: sandbox.ClusterName, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(keys.Close)
	etcd, err := etcdsnap.Dial(ctx, etcdsnap.Config{Endpoints: []string{sb.EtcdEndpoint}, CAFile: sb.CAFile, CertFile: sb.EtcdCertFile, KeyFile: sb.EtcdKeyFile, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { etcd.Close() })
	snaps, err := etcdsnap.NewLocalDir(snapDir)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := controlplane.Connect(ctx, cfg, controlplane.Options{KnownHostsFile: sb.KnownHostsFile, KeyFile: sb.SSHKeyFile, APIServer: as, Storage: etcd, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nodes.Close() })
	rw, err := reconciler.NewRewriter(as, reconciler.RewriteOptions{Workers: 4, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return &reconciler.Reconciler{Nodes: nodes, Keys: keys, Etcd: etcd, Snapshots: snaps, Rewriter: rw,
		Locks: reconciler.StoreLocker(keys), Holder: "charts preflight test", Logger: log,
		Limits: reconciler.Limits{AllowCustomConfig: true}}, keys
}

// TestPreflightRefusesWithoutRBAC: as the chart's service account without
// rbac.extraResources, a reconcile of a custom config covering configmaps
// is refused before any change, naming configmaps, the verbs and the
// fix; once the values name configmaps, the preflight passes.
func TestPreflightRefusesWithoutRBAC(t *testing.T) {
	start := time.Now()
	ctx := testCtx(t, 5*time.Minute)
	k := admin(t)
	const ns, release = "atrest-preflight", "preflight"
	k.namespace(t, ctx, ns, nil)
	k.apply(t, ctx, chartRBAC(t, release, ns))
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "rewrite-me", Namespace: ns}, Data: map[string]string{"v": "x"}}
	if _, err := k.client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	token, err := sb.ServiceAccountToken(ctx, ns, release+"-atrest", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	as := &rest.Config{Host: sb.Nodes[0].APIServerURL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAFile: sb.CAFile},
		Timeout: 30 * time.Second, QPS: 100, Burst: 200}

	base, err := os.ReadFile(sb.ClusterYML)
	if err != nil {
		t.Fatal(err)
	}
	yml := strings.Replace(string(base), "    secrets_encryption_config:\n      enabled: false\n", preflightCustom, 1)
	if yml == string(base) {
		t.Fatal("the sandbox's cluster.yml has no secrets_encryption_config block to replace")
	}
	cfg, err := cluster.Parse("custom.yml", []byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	want := reconciler.DesiredFrom(cfg, cluster.DefaultPolicy(), "")
	snapDir := t.TempDir()
	rec, keys := reconcilerAs(t, ctx, cfg, as, snapDir)
	nodeFiles := func() [][]byte {
		var out [][]byte
		for _, n := range sb.Nodes {
			data, err := os.ReadFile(filepath.Join(n.Dir, "etc-kubernetes", "ssl", "encryption.yaml"))
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			out = append(out, data)
		}
		return out
	}
	filesBefore := nodeFiles()

	_, err = rec.Reconcile(ctx, want)
	if reconciler.ReasonOf(err) != reconciler.ReasonPreflightFailed {
		t.Fatalf("reconcile as the chart's service account without rbac.extraResources: %v, want a %s refusal", err, reconciler.ReasonPreflightFailed)
	}
	msg := err.Error()
	t.Logf("refused:\n%s", msg)
	for _, w := range []string{"resource configmaps", "may not list, get, update configmaps across all namespaces",
		"system:serviceaccount:" + ns + ":" + release + "-atrest", "rbac.extraResources"} {
		if !strings.Contains(msg, w) {
			t.Errorf("the refusal does not say %q", w)
		}
	}
	if strings.Contains(msg, "resource secrets: list") || strings.Contains(msg, preflightSecret) {
		t.Errorf("the refusal names secrets (which the chart grants) or shows key material:\n%s", msg)
	}
	// Nothing changed: no snapshot, no node file, no journal, no import.
	if entries, err := os.ReadDir(snapDir); err != nil || len(entries) != 0 {
		t.Errorf("snapshot directory after the refusal: %v, %v", entries, err)
	}
	for i, after := range nodeFiles() {
		if !bytes.Equal(after, filesBefore[i]) {
			t.Errorf("node %s's provider file changed", sb.Nodes[i].Name)
		}
	}
	kr, err := keys.Keyring(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if kr.Journal != nil || len(kr.Keys) != 0 {
		t.Errorf("keyring after the refusal: journal %+v, keys %v", kr.Journal, kr.Keys)
	}
	if _, err := keys.Key(ctx, "k-fw5hn"); !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("the custom config's key in Vault after the refusal: %v, want not found", err)
	}

	// Once the values name configmaps, the same plan passes its preflight.
	k.apply(t, ctx, chartRBAC(t, release, ns, "rbac.extraResources[0].resource=configmaps"))
	live, kr, err := rec.Observe(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := reconciler.MakePlan(rec.Input(want, live, kr, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range plan.Steps {
		t.Logf("plan %d. %s", i+1, s)
	}
	// The authorizer sees RBAC changes through an informer: soon, not at once.
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := rec.Preflight(ctx, plan)
		if err != nil {
			t.Fatal(err)
		}
		if res.Refusal() == nil {
			t.Logf("with rbac.extraResources naming configmaps: %d checks passed", len(res.Checks))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("preflight with rbac.extraResources naming configmaps: %v", res.Refusal())
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("took %s", time.Since(start).Round(time.Millisecond))
}

// TestPreflightKMSSocket runs the node side of the preflight on the
// sandbox's node, whose kube-apiserver container mounts /etc/kubernetes:
// a KMS socket that is there passes, one that is not, or that no mount
// reaches, is reported for the node.
func TestPreflightKMSSocket(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	cfg, err := cluster.Load(sb.ClusterYML)
	if err != nil {
		t.Fatal(err)
	}
	k := admin(t)
	nodes, err := controlplane.Connect(ctx, cfg, controlplane.Options{KnownHostsFile: sb.KnownHostsFile, KeyFile: sb.SSHKeyFile, APIServer: k.cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer nodes.Close()
	// A plugin's socket, on the node's /etc/kubernetes (a directory of
	// this machine, bound in at the node).
	dir := filepath.Join(sb.Nodes[0].Dir, "etc-kubernetes", "kms")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "there.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	const (
		there    = "unix:///etc/kubernetes/kms/there.sock"
		missing  = "unix:///etc/kubernetes/kms/missing.sock"
		unmapped = "unix:///run/kms/plugin.sock"
	)
	checks, err := nodes.Preflight(ctx, controlplane.PreflightRequest{ProviderFile: true, KMSEndpoints: []string{there, missing, unmapped}})
	if err != nil {
		t.Fatal(err)
	}
	node := sb.Nodes[0].Name
	problems := map[string]string{}
	for _, c := range checks {
		t.Logf("%s", c)
		if c.Node != node {
			t.Errorf("check of node %q, want %q", c.Node, node)
		}
		problems[c.What] = c.Problem
	}
	if len(checks) != 4 {
		t.Errorf("%d checks, want 4 (no sudo: the sandbox logs in as root)", len(checks))
	}
	for what, want := range map[string]string{
		"provider file mount": "",
		"KMS socket " + there: "",
		"KMS socket " + missing: "no socket at /etc/kubernetes/kms/missing.sock on the node (kube-apiserver sees it at /etc/kubernetes/kms/missing.sock): " +
			"the KMS plugin must run on every controlplane node, with its socket mounted into the kube-apiserver container",
		"KMS socket " + unmapped: "the kube-apiserver container mounts nothing that holds /run/kms/plugin.sock",
	} {
		got, ok := problems[what]
		if !ok || (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("%s: problem %q (checked %v), want %q", what, got, ok, want)
		}
	}
}
