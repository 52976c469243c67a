//go:build sandbox

package reconciler

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/sandbox"
	"github.com/atrest-io/atrest/sandbox/sandboxtest"
)

var sb *sandbox.Sandbox

func TestMain(m *testing.M) {
	os.Exit(sandboxtest.Main(m, sandbox.Options{Nodes: 3}, &sb))
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func restConfig(t testing.TB) *rest.Config {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", sb.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 500, 1000
	return cfg
}

func etcd(t testing.TB) *clientv3.Client {
	t.Helper()
	c, err := sb.EtcdClient()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// census counts the stored values under /registry/<resource>/ by prefix.
func census(t testing.TB, ctx context.Context, resource string) map[string]int64 {
	t.Helper()
	resp, err := etcd(t).Get(ctx, "/registry/"+resource+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, kv := range resp.Kvs {
		out[cluster.StoragePrefix(kv.Value)]++
	}
	return out
}

// deployAll puts a provider file on every node and makes kube-apiserver
// use it: the way atrest's controlplane will, done plainly for these tests.
func deployAll(t testing.TB, ctx context.Context, config []byte) {
	t.Helper()
	for i, n := range sb.Nodes {
		file := filepath.Join(n.Dir, "etc-kubernetes", "ssl", "encryption.yaml")
		if err := os.WriteFile(file, config, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := sb.Docker(ctx, i, "inspect", "--format", "{{join .Args \" \"}}", "kube-apiserver")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "--encryption-provider-config") {
			if err := sb.RecreateAPIServer(ctx, i, sandbox.ProviderConfigFlag); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := sb.Docker(ctx, i, "restart", "kube-apiserver"); err != nil {
			t.Fatal(err)
		}
		if err := sb.WaitReady(ctx, i, 3*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
}

// plainAll runs every kube-apiserver without a provider config again.
func plainAll(t testing.TB, ctx context.Context) {
	t.Helper()
	for i, n := range sb.Nodes {
		if err := sb.RecreateAPIServer(ctx, i); err != nil {
			t.Fatal(err)
		}
		_ = os.Remove(filepath.Join(n.Dir, "etc-kubernetes", "ssl", "encryption.yaml"))
	}
}

func newKey(t testing.TB, name string) cluster.Key {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return cluster.Key{Name: name, Provider: cluster.AESCBC, Secret: b}
}

func render(t testing.TB, keys ...cluster.Key) []byte {
	t.Helper()
	data, err := cluster.ManagedConfig{Keys: keys}.Render()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func createSecrets(t testing.TB, ctx context.Context, kc kubernetes.Interface, namespaces []string, n, size int) {
	t.Helper()
	for _, ns := range namespaces {
		_, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !strings.Contains(err.Error(), "already exists") {
			t.Fatal(err)
		}
	}
	payload := bytes.Repeat([]byte("x"), size)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ns := namespaces[i%len(namespaces)]
			_, err := kc.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s-%05d", i)},
				Data:       map[string][]byte{"value": append([]byte(fmt.Sprintf("%05d:", i)), payload...)},
			}, metav1.CreateOptions{})
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestRewrite(t *testing.T) {
	ctx := testCtx(t)
	kc, err := kubernetes.NewForConfig(restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	k1, k2 := newKey(t, "k-rw001"), newKey(t, "k-rw002")
	deployAll(t, ctx, render(t, k1))
	t.Cleanup(func() {
		// Leave the sandbox plain for other tests: decrypt, then no config.
		ctx := context.Background()
		deployAll(t, ctx, mustRender(cluster.Chains{"secrets": {cluster.Identity, cluster.EntryOf(k2), cluster.EntryOf(k1)}}, k1, k2))
		rw, _ := NewRewriter(restConfig(t), RewriteOptions{})
		if _, err := rw.Rewrite(ctx, "secrets"); err != nil {
			t.Errorf("cleanup rewrite: %v", err)
		}
		plainAll(t, ctx)
	})
	namespaces := []string{"rw-a", "rw-b", "rw-c"}
	createSecrets(t, ctx, kc, namespaces, 300, 64)
	if got := census(t, ctx, "secrets")["aescbc:v1:"+k1.Name]; got < 300 {
		t.Fatalf("only %d secrets under k1 before the rotation", got)
	}
	deployAll(t, ctx, render(t, k1, k2)) // readers first
	deployAll(t, ctx, render(t, k2, k1)) // then the writer

	// Meanwhile: secrets deleted by others (the rewrite must skip them),
	// and etcd compacted past the list's revision once, just before the
	// second page, so its continue token expires and the list starts over.
	var logs bytes.Buffer
	rw, err := NewRewriter(restConfig(t), RewriteOptions{Workers: 8, PageSize: 20, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Progress: &logs, ProgressEvery: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ec := etcd(t)
	compacted := false
	rw.beforeList = func(cont string) {
		if cont == "" || compacted {
			return
		}
		compacted = true
		// Writes move etcd past the list's revision; compact to the newest.
		for i := range 5 {
			_, _ = kc.CoreV1().Secrets(namespaces[0]).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bump-%d", i)}}, metav1.CreateOptions{})
		}
		r, err := ec.Get(ctx, "compact-me")
		if err != nil {
			t.Errorf("etcd: %v", err)
			return
		}
		if _, err := ec.Compact(ctx, r.Header.Revision); err != nil {
			t.Errorf("compact: %v", err)
		}
	}
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() {
		for i := range 40 {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			_ = kc.CoreV1().Secrets(namespaces[i%3]).Delete(ctx, fmt.Sprintf("s-%05d", 299-i), metav1.DeleteOptions{})
		}
	})
	res, err := rw.Rewrite(ctx, "secrets")
	close(stop)
	bg.Wait()
	if err != nil {
		t.Fatalf("rewrite: %v\n%s", err, logs.String())
	}
	t.Logf("rewrite: %+v", res)
	if res.Restarts == 0 {
		t.Errorf("no list restart although etcd was compacted past the list's revision before page 2: %+v", res)
	}
	got := census(t, ctx, "secrets")
	for prefix, n := range got {
		if prefix != "aescbc:v1:"+k2.Name && n > 0 {
			t.Errorf("%d secrets still under %s after the rewrite", n, prefix)
		}
	}
	// Every remaining secret reads back unchanged through every node.
	for i := range sb.Nodes {
		cfg := restConfig(t)
		cfg.Host = sb.Nodes[i].APIServerURL
		nkc := kubernetes.NewForConfigOrDie(cfg)
		for _, ns := range namespaces {
			l, err := nkc.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatalf("%s: list: %v", sb.Nodes[i].Name, err)
			}
			for _, s := range l.Items {
				if !strings.HasPrefix(s.Name, "s-") {
					continue // bump-N: written only to move etcd's revision
				}
				if !bytes.HasPrefix(s.Data["value"], []byte(strings.TrimPrefix(s.Name, "s-")+":")) {
					t.Fatalf("%s: secret %s/%s changed: %q", sb.Nodes[i].Name, ns, s.Name, s.Data["value"][:10])
				}
			}
		}
	}
	if strings.Contains(logs.String(), base64.StdEncoding.EncodeToString(k2.Secret)) {
		t.Fatal("key material in the rewrite's logs")
	}
}

func mustRender(cs cluster.Chains, keys ...cluster.Key) []byte {
	byName := map[string]cluster.Key{}
	for _, k := range keys {
		byName[k.Name] = k
	}
	data, err := cluster.RenderChains(cs, func(n string) (cluster.Key, error) { return byName[n], nil })
	if err != nil {
		panic(err)
	}
	return data
}

// TestRewriteResumesFromCheckpoint: a rewrite interrupted part way resumes from its
// last checkpoint, not from the first object, and still reaches every
// object.
func TestRewriteResumesFromCheckpoint(t *testing.T) {
	ctx := testCtx(t)
	kc, err := kubernetes.NewForConfig(restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	k := newKey(t, "k-rw003")
	t.Cleanup(func() {
		ctx := context.Background()
		deployAll(t, ctx, mustRender(cluster.Chains{"secrets": {cluster.Identity, cluster.EntryOf(k)}}, k))
		rw, _ := NewRewriter(restConfig(t), RewriteOptions{})
		if _, err := rw.Rewrite(ctx, "secrets"); err != nil {
			t.Errorf("cleanup rewrite: %v", err)
		}
		plainAll(t, ctx)
	})
	createSecrets(t, ctx, kc, []string{"rr-a", "rr-b"}, 200, 64)
	deployAll(t, ctx, mustRender(cluster.Chains{"secrets": {cluster.EntryOf(k), cluster.Identity}}, k))
	total := census(t, ctx, "secrets")["identity"]

	// Interrupted after its third checkpoint (pages of 20).
	rw, err := NewRewriter(restConfig(t), RewriteOptions{Workers: 4, PageSize: 20})
	if err != nil {
		t.Fatal(err)
	}
	cut, cancel := context.WithCancel(ctx)
	var last string
	n := 0
	_, err = rw.RewriteFrom(cut, "secrets", "", func(cont string) {
		last, n = cont, n+1
		if n == 3 {
			cancel()
		}
	})
	cancel()
	if err == nil || last == "" {
		t.Fatalf("interrupted rewrite: err %v, checkpoint %q", err, last)
	}
	left := census(t, ctx, "secrets")["identity"]
	res, err := rw.RewriteFrom(ctx, "secrets", last, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d plain secrets; interrupted with %d left; resumed run listed %d", total, left, res.Listed)
	if res.Listed >= total || res.Listed < left {
		t.Errorf("the resumed rewrite listed %d of %d objects (%d were left): it did not resume where it stopped", res.Listed, total, left)
	}
	if got := census(t, ctx, "secrets"); got["identity"] != 0 {
		t.Errorf("after the resumed rewrite: %v", got)
	}
}
