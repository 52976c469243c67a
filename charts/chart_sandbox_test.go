//go:build sandbox

package charts

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/atrest-io/atrest/sandbox"
	"github.com/atrest-io/atrest/sandbox/sandboxtest"
)

var (
	sb      *sandbox.Sandbox
	helmBin string
)

func TestMain(m *testing.M) {
	sandbox.RunHelper()
	var err error
	if helmBin, err = findHelm(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(sandboxtest.Main(m, sandbox.Options{Nodes: 1}, &sb))
}

// findHelm returns $ATREST_HELM (make test passes tools/build.sh helm), or
// builds helm with tools/build.sh as sandboxtest does for kube-apiserver and
// Vault.
func findHelm() (string, error) {
	if v := os.Getenv("ATREST_HELM"); v != "" {
		st, err := os.Stat(v)
		if err != nil {
			return "", fmt.Errorf("ATREST_HELM=%s: %w: build helm with tools/build.sh helm and point ATREST_HELM at what it prints", v, err)
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("ATREST_HELM=%s is not an executable file: build helm with tools/build.sh helm", v)
		}
		return v, nil
	}
	cmd := exec.Command("../tools/build.sh", "helm")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("no helm: ATREST_HELM is not set and tools/build.sh helm failed: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// The minimal values an install needs, and every option switched on.
const (
	minimalValues = "testdata/minimal-values.yaml"
	fullValues    = "atrest/ci/full-values.yaml"
)

// helm runs the helm binary in a throwaway home and returns its stdout and
// stderr.
func helm(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	home := t.TempDir()
	cmd := exec.CommandContext(ctx, helmBin, args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"), "HELM_DATA_HOME="+filepath.Join(home, "data"), "KUBECONFIG=/dev/null")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// render is `helm template` of the chart as release in namespace ns with
// the values files and --set pairs, decoded.
func render(t *testing.T, release, ns string, files []string, sets ...string) []*unstructured.Unstructured {
	t.Helper()
	args := []string{"template", release, "./atrest", "--namespace", ns}
	for _, f := range files {
		args = append(args, "--values", f)
	}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	out, stderr, err := helm(t, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	if strings.TrimSpace(stderr) != "" {
		t.Errorf("helm %s wrote to stderr:\n%s", strings.Join(args, " "), stderr)
	}
	return decode(t, out)
}

func decode(t *testing.T, manifests string) []*unstructured.Unstructured {
	t.Helper()
	d := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := d.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objs
			}
			t.Fatalf("decode helm's output: %v", err)
		}
		if m != nil {
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
}

// find returns the one object of kind in objs (named name, if not "").
func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	var found []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind && (name == "" || o.GetName() == name) {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %s %q in the rendered chart, found %d", kind, name, len(found))
	}
	return found[0]
}

// typed converts a rendered object into its Go type.
func typed[T any](t *testing.T, o *unstructured.Unstructured) *T {
	t.Helper()
	var v T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &v, true); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
	return &v
}

func kinds(objs []*unstructured.Unstructured) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.GetKind())
	}
	slices.Sort(out)
	return out
}

func TestLint(t *testing.T) {
	for _, tt := range []struct {
		name  string
		files []string
	}{
		{"default values", nil},
		{"minimal values", []string{minimalValues}},
		{"full values", []string{fullValues}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"lint", "--strict", "./atrest"}
			for _, f := range tt.files {
				args = append(args, "--values", f)
			}
			out, stderr, err := helm(t, args...)
			if err != nil || !strings.Contains(out, "1 chart(s) linted, 0 chart(s) failed") {
				t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
			}
			for _, bad := range []string{"[WARNING]", "[ERROR]"} {
				if strings.Contains(out, bad) {
					t.Errorf("helm %s:\n%s", strings.Join(args, " "), out)
				}
			}
		})
	}
}

// TestTemplateRefusesBadValues: an install with incomplete or wrong values
// renders nothing and says, for each problem, which value and how to fix
// it; anything that is not a reference to a Secret is refused by the
// schema before it can be stored in the release.
func TestTemplateRefusesBadValues(t *testing.T) {
	for _, tt := range []struct {
		name  string
		files []string
		sets  []string
		want  []string
	}{
		{"default values", nil, nil, []string{
			"the values are incomplete; nothing was installed",
			"clusterName: required: the cluster this release manages, as its cluster.yml's cluster_name names it",
			"git.url: required", "vault.address: required", "etcd.endpoints: required",
			"etcd.existingSecret: required", "ssh.existingSecret: required",
		}},
		{"no cluster name", []string{minimalValues}, []string{"clusterName="},
			[]string{`clusterName: required: the cluster this release manages, as its cluster.yml's cluster_name names it ("local" when it has none)`}},
		{"a cluster name that is not one Vault path segment", []string{minimalValues}, []string{"clusterName=prod/eu-1"},
			[]string{"at '/clusterName'", "does not match pattern"}},
		{"a cluster name that climbs up", []string{minimalValues}, []string{"clusterName=.."},
			[]string{"at '/clusterName'", "does not match pattern"}},
		{"Git over SSH without a key", []string{minimalValues}, []string{"git.ssh.existingSecret="},
			[]string{"git.ssh.existingSecret: required for Git over SSH (ssh://git@git.example.com/platform/clusters.git)"}},
		{"scp-like Git URL without a key", []string{minimalValues}, []string{"git.url=git@git.example.com:platform/clusters.git", "git.ssh.existingSecret="},
			[]string{"git.ssh.existingSecret: required for Git over SSH"}},
		{"a local path as Git URL", []string{minimalValues}, []string{"git.url=/srv/git/clusters"},
			[]string{`git.url: "/srv/git/clusters" is not a Git URL atrest can fetch from a pod`}},
		{"AppRole without its role id and secret", []string{minimalValues}, []string{"vault.authMethod=approle"},
			[]string{"vault.approle.roleID: required for authMethod approle", "vault.approle.existingSecret: required for authMethod approle"}},
		{"token auth without a token", []string{minimalValues}, []string{"vault.authMethod=token"},
			[]string{"vault.token.existingSecret: required for authMethod token"}},
		{"Kubernetes auth without a role", []string{minimalValues}, []string{"vault.kubernetes.role="},
			[]string{"vault.kubernetes.role: required for authMethod kubernetes"}},
		{"webhook without its secret", []string{minimalValues}, []string{"webhook.enabled=true"},
			[]string{"webhook.existingSecret: required with webhook.enabled"}},
		{"two replicas on a ReadWriteOnce claim", []string{minimalValues}, []string{"replicaCount=2"},
			[]string{"snapshots.persistence.accessModes: replicaCount 2 needs ReadWriteMany"}},
		{"a password in the values", []string{minimalValues}, []string{"git.password=hunter2"},
			[]string{"at '/git': additional properties 'password' not allowed"}},
		{"a private key in place of a Secret's name", []string{minimalValues}, []string{"ssh.existingSecret=-----BEGIN OPENSSH PRIVATE KEY-----"},
			[]string{"at '/ssh/existingSecret'", "does not match pattern"}},
		{"a wildcard resource", []string{minimalValues}, []string{"rbac.extraResources[0].resource=*"},
			[]string{"at '/rbac/extraResources/0/resource'", "does not match pattern"}},
		{"an unknown auth method", []string{minimalValues}, []string{"vault.authMethod=userpass"},
			[]string{"at '/vault/authMethod'"}},
		{"a malformed duration", []string{minimalValues}, []string{"git.interval=5 minutes"},
			[]string{"at '/git/interval'"}},
		{"a plain http Vault", []string{minimalValues}, []string{"vault.address=http://vault.example.com:8200"},
			[]string{`vault.address: "http://vault.example.com:8200" is plain http`, "DANGEROUS, set vault.insecureAllowHTTP"}},
		{"a plaintext etcd endpoint", []string{minimalValues}, []string{"etcd.endpoints={https://10.0.0.11:2379,http://10.0.0.12:2379}"},
			[]string{`etcd.endpoints: "http://10.0.0.12:2379" is plaintext`, "DANGEROUS, set etcd.insecureAllowHTTP"}},
		{"Kubernetes auth with the pod's API token", []string{minimalValues}, []string{"vault.kubernetes.audience="},
			[]string{"at '/vault/kubernetes/audience'"}},
		{"a projected token shorter-lived than the kubelet allows", []string{minimalValues}, []string{"vault.kubernetes.tokenExpirationSeconds=60"},
			[]string{"at '/vault/kubernetes/tokenExpirationSeconds'"}},
		{"a NetworkPolicy without addresses", []string{minimalValues}, []string{"networkPolicy.enabled=true", "networkPolicy.egress.vault.cidrs={10.0.5.20/32}"},
			[]string{"networkPolicy.egress.git.cidrs: required with networkPolicy.enabled", "networkPolicy.egress.etcd.cidrs: required",
				"networkPolicy.egress.ssh.cidrs: required", "networkPolicy.egress.kubernetes.cidrs: required"}},
		{"a NetworkPolicy with a host name for a CIDR", []string{minimalValues}, []string{"networkPolicy.egress.vault.cidrs={vault.example.com}"},
			[]string{"at '/networkPolicy/egress/vault/cidrs/0'", "does not match pattern"}},
		{"a NetworkPolicy field the chart does not know", []string{minimalValues}, []string{"networkPolicy.egress.vault.cidr=10.0.5.20/32"},
			[]string{"at '/networkPolicy/egress/vault': additional properties 'cidr' not allowed"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"template", "t", "./atrest"}
			for _, f := range tt.files {
				args = append(args, "--values", f)
			}
			for _, s := range tt.sets {
				args = append(args, "--set", s)
			}
			out, stderr, err := helm(t, args...)
			if err == nil {
				t.Fatalf("helm %s rendered:\n%s", strings.Join(args, " "), out)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("helm %s says:\n%s\nwant %q", strings.Join(args, " "), stderr, w)
				}
			}
			if strings.Contains(out, "kind:") {
				t.Errorf("helm %s printed objects despite the error:\n%s", strings.Join(args, " "), out)
			}
		})
	}
}

// TestTemplate renders the chart's variants: which objects each has.
func TestTemplate(t *testing.T) {
	// Three Roles, each with its binding: the canary, and the leases and
	// endpointslices that show which kube-apiservers serve.
	roles := []string{"Role", "Role", "Role", "RoleBinding", "RoleBinding", "RoleBinding"}
	base := append([]string{"ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "PersistentVolumeClaim", "Service", "ServiceAccount"}, roles...)
	for _, tt := range []struct {
		name  string
		files []string
		sets  []string
		kinds []string
		check func(t *testing.T, objs []*unstructured.Unstructured)
	}{
		{name: "minimal", files: []string{minimalValues}, kinds: base, check: func(t *testing.T, objs []*unstructured.Unstructured) {
			pvc := typed[corev1.PersistentVolumeClaim](t, find(t, objs, "PersistentVolumeClaim", "t-atrest-snapshots"))
			if pvc.Annotations["helm.sh/resource-policy"] != "keep" {
				t.Errorf("the snapshots claim is not kept on uninstall: %v", pvc.Annotations)
			}
			d := typed[appsv1.Deployment](t, find(t, objs, "Deployment", "t-atrest"))
			if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType || *d.Spec.Replicas != 1 {
				t.Errorf("strategy %s, replicas %d: want Recreate and 1 with a ReadWriteOnce claim", d.Spec.Strategy.Type, *d.Spec.Replicas)
			}
			c := d.Spec.Template.Spec.Containers[0]
			if !slices.Equal(c.Args, []string{"run", "--settings", "/etc/atrest/settings.yaml"}) || c.Image != "ghcr.io/atrest-io/atrest:0.1.0" {
				t.Errorf("container runs %s %v", c.Image, c.Args)
			}
		}},
		{name: "full", files: []string{fullValues}, kinds: append(slices.Clone(base), "NetworkPolicy", "ServiceMonitor", "PrometheusRule", "ConfigMap", "Role", "RoleBinding"), check: func(t *testing.T, objs []*unstructured.Unstructured) {
			svc := typed[corev1.Service](t, find(t, objs, "Service", ""))
			if len(svc.Spec.Ports) != 2 {
				t.Errorf("service ports %v: want metrics and webhook", svc.Spec.Ports)
			}
			dash := typed[corev1.ConfigMap](t, find(t, objs, "ConfigMap", "t-atrest-dashboard"))
			want, err := os.ReadFile("atrest/dashboards/atrest.json")
			if err != nil {
				t.Fatal(err)
			}
			if dash.Data["atrest.json"] != string(want) || dash.Labels["grafana_dashboard"] != "1" || dash.Annotations["grafana_folder"] != "Platform" {
				t.Errorf("dashboard ConfigMap: labels %v, annotations %v, atrest.json the chart's file: %t", dash.Labels, dash.Annotations, dash.Data["atrest.json"] == string(want))
			}
			settings := typed[corev1.ConfigMap](t, find(t, objs, "ConfigMap", "t-atrest-settings"))
			if !strings.Contains(settings.Data["settings.yaml"], "events: true") {
				t.Errorf("events.enabled did not reach the settings:\n%s", settings.Data["settings.yaml"])
			}
		}},
		{name: "no RBAC, own service account", files: []string{minimalValues}, sets: []string{"rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=platform-atrest"},
			kinds: []string{"ConfigMap", "Deployment", "PersistentVolumeClaim", "Service"}, check: func(t *testing.T, objs []*unstructured.Unstructured) {
				d := typed[appsv1.Deployment](t, find(t, objs, "Deployment", ""))
				if d.Spec.Template.Spec.ServiceAccountName != "platform-atrest" {
					t.Errorf("serviceAccountName %q", d.Spec.Template.Spec.ServiceAccountName)
				}
			}},
		{name: "existing claim, image digest", files: []string{minimalValues}, sets: []string{"snapshots.persistence.existingClaim=snaps", "image.digest=sha256:" + strings.Repeat("ab", 32)},
			kinds: append([]string{"ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service", "ServiceAccount"}, roles...), check: func(t *testing.T, objs []*unstructured.Unstructured) {
				d := typed[appsv1.Deployment](t, find(t, objs, "Deployment", ""))
				for _, v := range d.Spec.Template.Spec.Volumes {
					if v.Name == "snapshots" && v.PersistentVolumeClaim.ClaimName != "snaps" {
						t.Errorf("snapshots volume uses claim %q, want snaps", v.PersistentVolumeClaim.ClaimName)
					}
				}
				if img := d.Spec.Template.Spec.Containers[0].Image; img != "ghcr.io/atrest-io/atrest@sha256:"+strings.Repeat("ab", 32) {
					t.Errorf("image %s", img)
				}
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			objs := render(t, "t", "atrest", tt.files, tt.sets...)
			if got := kinds(objs); !slices.Equal(got, slices.Sorted(slices.Values(tt.kinds))) {
				t.Errorf("rendered %v, want %v", got, slices.Sorted(slices.Values(tt.kinds)))
			}
			for _, o := range objs {
				if o.GetLabels()["app.kubernetes.io/instance"] != "t" || o.GetLabels()["app.kubernetes.io/name"] != "atrest" {
					t.Errorf("%s %s lacks the chart's labels: %v", o.GetKind(), o.GetName(), o.GetLabels())
				}
			}
			tt.check(t, objs)
		})
	}
}

// TestPodSecurityContext: the pod runs as the restricted Pod Security
// profile demands (the dry run in TestServerSideDryRun has kube-apiserver
// enforce it too).
func TestPodSecurityContext(t *testing.T) {
	for _, files := range [][]string{{minimalValues}, {fullValues}} {
		d := typed[appsv1.Deployment](t, find(t, render(t, "t", "atrest", files), "Deployment", ""))
		pod := d.Spec.Template.Spec
		psc := pod.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 ||
			psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%v: pod securityContext %+v: want runAsNonRoot, a non-zero runAsUser and seccomp RuntimeDefault", files, psc)
		}
		if pod.HostNetwork || pod.HostPID || pod.HostIPC {
			t.Errorf("%v: the pod shares a host namespace", files)
		}
		for _, v := range pod.Volumes {
			if v.HostPath != nil {
				t.Errorf("%v: volume %s is a hostPath", files, v.Name)
			}
		}
		if len(pod.InitContainers) != 0 || len(pod.Containers) != 1 {
			t.Errorf("%v: %d init containers and %d containers, want one container", files, len(pod.InitContainers), len(pod.Containers))
		}
		for _, c := range pod.Containers {
			sc := c.SecurityContext
			switch {
			case sc == nil:
				t.Fatalf("%v: container %s has no securityContext", files, c.Name)
			case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
				t.Errorf("%v: container %s: runAsNonRoot is not true", files, c.Name)
			case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
				t.Errorf("%v: container %s: readOnlyRootFilesystem is not true", files, c.Name)
			case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
				t.Errorf("%v: container %s: allowPrivilegeEscalation is not false", files, c.Name)
			case sc.Privileged != nil && *sc.Privileged:
				t.Errorf("%v: container %s is privileged", files, c.Name)
			case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0:
				t.Errorf("%v: container %s: capabilities %+v, want drop [ALL] and add none", files, c.Name, sc.Capabilities)
			case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
				t.Errorf("%v: container %s: seccompProfile %+v, want RuntimeDefault", files, c.Name, sc.SeccompProfile)
			}
			// With a read-only root, every place atrest writes is a volume.
			mounts := map[string]bool{}
			for _, m := range c.VolumeMounts {
				mounts[m.MountPath] = !m.ReadOnly
			}
			for _, dir := range []string{"/tmp", "/var/lib/atrest/snapshots", "/var/cache/atrest/git"} {
				if !mounts[dir] {
					t.Errorf("%v: container %s: no writable volume at %s", files, c.Name, dir)
				}
			}
		}
	}
}

// kube is the sandbox's kube-apiserver as its admin, with the warnings
// kube-apiserver sends collected.
type kube struct {
	cfg      *rest.Config
	client   kubernetes.Interface
	dyn      dynamic.Interface
	mapper   *restmapper.DeferredDiscoveryRESTMapper
	warnings *warnings
}

type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeader(code int, agent, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

// take returns the warnings since the last take.
func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.list
	w.list = nil
	return out
}

func admin(t *testing.T) *kube {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", sb.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Timeout = 30 * time.Second
	w := &warnings{}
	cfg.WarningHandler = w
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &kube{cfg: cfg, client: kc, dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), warnings: w}
}

// resource is the dynamic client of o's kind, in its namespace if it has one.
func (k *kube) resource(t *testing.T, o *unstructured.Unstructured) dynamic.ResourceInterface {
	t.Helper()
	gvk := o.GroupVersionKind()
	m, err := k.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		t.Fatalf("%s %s: kube-apiserver serves no such kind: %v", gvk, o.GetName(), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return k.dyn.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	return k.dyn.Resource(m.Resource)
}

// namespace creates ns (labels as given), if it is not there.
func (k *kube) namespace(t *testing.T, ctx context.Context, ns string, labels map[string]string) {
	t.Helper()
	_, err := k.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestServerSideDryRun has the sandbox's kube-apiserver check every object
// the chart renders (server-side dry run, unknown fields refused) in a
// namespace that enforces the restricted Pod Security profile, and warns
// on workloads that would break it. The pod the Deployment would create is
// dry-run too, so that the profile is enforced, not only warned about.
func TestServerSideDryRun(t *testing.T) {
	ctx := testCtx(t, 5*time.Minute)
	k := admin(t)
	restricted := map[string]string{
		"pod-security.kubernetes.io/enforce": "restricted",
		"pod-security.kubernetes.io/warn":    "restricted",
	}
	createCRD(t, ctx, k, "testdata/servicemonitor-crd.yaml")
	createCRD(t, ctx, k, "testdata/prometheusrule-crd.yaml")
	for _, tt := range []struct{ name, ns, file string }{
		{"minimal", "atrest-minimal", minimalValues},
		{"full", "atrest-full", fullValues},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k.namespace(t, ctx, tt.ns, restricted)
			objs := render(t, "dry-"+tt.name, tt.ns, []string{tt.file})
			k.warnings.take()
			for _, o := range objs {
				_, err := k.resource(t, o).Create(ctx, o, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: metav1.FieldValidationStrict})
				if err != nil {
					t.Errorf("kube-apiserver refuses %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
				}
				if w := k.warnings.take(); len(w) > 0 {
					t.Errorf("kube-apiserver warns about %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), w)
				}
			}
			// Admission looks the pod's service account up: create it.
			k.apply(t, ctx, []*unstructured.Unstructured{find(t, objs, "ServiceAccount", "")})
			d := typed[appsv1.Deployment](t, find(t, objs, "Deployment", ""))
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "pod-of-" + d.Name, Namespace: tt.ns}, Spec: d.Spec.Template.Spec}
			if _, err := k.client.CoreV1().Pods(tt.ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
				t.Errorf("kube-apiserver refuses the Deployment's pod: %v", err)
			}
			// The same pod, made privileged, must be refused: the
			// namespace's label is really enforced here.
			bad := pod.DeepCopy()
			bad.Spec.Containers[0].SecurityContext.AllowPrivilegeEscalation = nil
			bad.Spec.Containers[0].SecurityContext.Capabilities = nil
			_, err := k.client.CoreV1().Pods(tt.ns).Create(ctx, bad, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "violates PodSecurity") {
				t.Errorf("a pod allowing privilege escalation: %v, want it refused by PodSecurity \"restricted\"", err)
			}
		})
	}

	// The checks above would pass vacuously if kube-apiserver ignored
	// unknown fields or did not judge Deployments by the namespace's
	// profile: show that it does.
	t.Run("controls", func(t *testing.T) {
		const ns = "atrest-minimal"
		d := find(t, render(t, "dry-minimal", ns, []string{minimalValues}, "securityContext.allowPrivilegeEscalation=true"), "Deployment", "")
		k.warnings.take()
		if _, err := k.resource(t, d).Create(ctx, d, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
			t.Fatal(err)
		}
		if w := strings.Join(k.warnings.take(), "\n"); !strings.Contains(w, `violate PodSecurity "restricted`) || !strings.Contains(w, "allowPrivilegeEscalation") {
			t.Errorf("a Deployment allowing privilege escalation drew the warnings %q, want PodSecurity's", w)
		}
		d = find(t, render(t, "dry-minimal", ns, []string{minimalValues}), "Deployment", "")
		if err := unstructured.SetNestedField(d.Object, "x", "spec", "template", "spec", "bogusField"); err != nil {
			t.Fatal(err)
		}
		_, err := k.resource(t, d).Create(ctx, d, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: metav1.FieldValidationStrict})
		if err == nil || !strings.Contains(err.Error(), "unknown field") {
			t.Errorf("a Deployment with an unknown field: %v, want it refused", err)
		}
	})
}

// createCRD installs the CustomResourceDefinition in file and waits until
// kube-apiserver serves it.
func createCRD(t *testing.T, ctx context.Context, k *kube, file string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	objs := decode(t, string(data))
	crd := objs[0]
	gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	if _, err := k.dyn.Resource(gvr).Create(ctx, crd, metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		u, err := k.dyn.Resource(gvr).Get(ctx, crd.GetName(), metav1.GetOptions{})
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				if m, _ := c.(map[string]any); m["type"] == "Established" && m["status"] == "True" {
					k.mapper.Reset()
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("CRD %s not established after a minute: %v", crd.GetName(), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// The rules atrest needs (see templates/rbac.yaml for why).
var (
	rewriteVerbs = []string{"get", "list", "update"}
	canaryRule   = rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"atrest-canary"}, Verbs: []string{"create", "patch", "delete"}}
	leasesRule   = rbacv1.PolicyRule{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"list"}}
	// Events: client-go's recorder creates an event, and patches it when
	// it repeats.
	eventsRule = rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}}
	slicesRule = rbacv1.PolicyRule{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list"}}
	// Each kube-apiserver's reload metrics prove a stage without restarts.
	metricsRule = rbacv1.PolicyRule{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}
)

// TestRBACRules: the ClusterRole, the canary Role and the Roles to see
// which kube-apiservers serve grant exactly the rules atrest needs, each in
// its namespace, bound to the chart's service account only, and the chart
// renders no other RBAC.
func TestRBACRules(t *testing.T) {
	type role struct {
		name, namespace string
		rule            rbacv1.PolicyRule
	}
	for _, tt := range []struct {
		name    string
		sets    []string
		cluster []rbacv1.PolicyRule
		roles   []role
	}{
		{name: "default", cluster: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: rewriteVerbs}, metricsRule}},
		{name: "events", sets: []string{"events.enabled=true"},
			cluster: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: rewriteVerbs}, metricsRule},
			roles:   []role{{"t-atrest-events", "kube-system", eventsRule}}},
		{name: "extra resources", sets: []string{
			"rbac.extraResources[0].resource=configmaps",
			"rbac.extraResources[1].apiGroup=apps", "rbac.extraResources[1].resource=statefulsets",
			"rbac.extraResources[2].apiGroup=apps", "rbac.extraResources[2].resource=deployments",
			"rbac.extraResources[3].apiGroup=", "rbac.extraResources[3].resource=secrets",
			"rbac.extraResources[4].apiGroup=apps", "rbac.extraResources[4].resource=deployments",
		}, cluster: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: rewriteVerbs},
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: rewriteVerbs},
			{APIGroups: []string{"apps"}, Resources: []string{"deployments", "statefulsets"}, Verbs: rewriteVerbs},
			metricsRule,
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			objs := render(t, "t", "atrest", []string{minimalValues}, tt.sets...)
			cr := typed[rbacv1.ClusterRole](t, find(t, objs, "ClusterRole", ""))
			if !equalRules(cr.Rules, tt.cluster) {
				t.Errorf("ClusterRole %s grants\n%v\nwant exactly\n%v", cr.Name, cr.Rules, tt.cluster)
			}
			if cr.AggregationRule != nil {
				t.Errorf("ClusterRole %s aggregates other roles: %+v", cr.Name, cr.AggregationRule)
			}
			sa := rbacv1.Subject{Kind: "ServiceAccount", Name: "t-atrest", Namespace: "atrest"}
			roles := append([]role{
				{"t-atrest-canary", "kube-system", canaryRule},
				{"t-atrest-apiserver-leases", "kube-system", leasesRule},
				{"t-atrest-apiserver-endpoints", "default", slicesRule},
			}, tt.roles...)
			for _, want := range roles {
				role := typed[rbacv1.Role](t, find(t, objs, "Role", want.name))
				if role.Namespace != want.namespace || !equalRules(role.Rules, []rbacv1.PolicyRule{want.rule}) {
					t.Errorf("Role %s/%s grants %v, want exactly %v in %s", role.Namespace, role.Name, role.Rules, want.rule, want.namespace)
				}
				rb := typed[rbacv1.RoleBinding](t, find(t, objs, "RoleBinding", want.name))
				if rb.Namespace != want.namespace || rb.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name}) || !slices.Equal(rb.Subjects, []rbacv1.Subject{sa}) {
					t.Errorf("RoleBinding %s/%s binds %+v to %+v, want %s to %+v in %s", rb.Namespace, rb.Name, rb.RoleRef, rb.Subjects, role.Name, sa, want.namespace)
				}
			}
			crb := typed[rbacv1.ClusterRoleBinding](t, find(t, objs, "ClusterRoleBinding", ""))
			if crb.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: cr.Name}) || !slices.Equal(crb.Subjects, []rbacv1.Subject{sa}) {
				t.Errorf("ClusterRoleBinding binds %+v to %+v, want %s to %+v", crb.RoleRef, crb.Subjects, cr.Name, sa)
			}
			for _, kind := range kinds(objs) {
				if strings.HasSuffix(kind, "Role") || strings.HasSuffix(kind, "RoleBinding") {
					continue
				}
				if strings.Contains(kind, "Role") {
					t.Errorf("unexpected RBAC object %s", kind)
				}
			}
			if n := strings.Count(strings.Join(kinds(objs), " "), "Role"); n != 2+2*len(roles) {
				t.Errorf("%d RBAC objects, want the ClusterRole, the %d Roles and their bindings", n, len(roles))
			}
		})
	}
}

func equalRules(got, want []rbacv1.PolicyRule) bool {
	norm := func(rs []rbacv1.PolicyRule) []string {
		var out []string
		for _, r := range rs {
			out = append(out, fmt.Sprint(slices.Sorted(slices.Values(r.APIGroups)), slices.Sorted(slices.Values(r.Resources)),
				slices.Sorted(slices.Values(r.ResourceNames)), slices.Sorted(slices.Values(r.Verbs)), r.NonResourceURLs))
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(norm(got), norm(want))
}

// apply creates or updates objs for real, with server-side apply.
func (k *kube) apply(t *testing.T, ctx context.Context, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		if _, err := k.resource(t, o).Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: "charts-test", Force: true}); err != nil {
			t.Fatalf("apply %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
}

// settingsConfigMap is the ConfigMap holding the daemon's settings (the
// dashboard's, when enabled, is another).
func settingsConfigMap(t *testing.T, objs []*unstructured.Unstructured) *corev1.ConfigMap {
	t.Helper()
	var found []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "ConfigMap" && strings.HasSuffix(o.GetName(), "-settings") {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one settings ConfigMap in the rendered chart, found %d", len(found))
	}
	return typed[corev1.ConfigMap](t, found[0])
}
