//go:build sandbox

// Package rewritebench measures atrest's rewrite against the Kubernetes
// documentation's `kubectl get secrets -A -o json | kubectl replace -f -`,
// in one run, on a one-node sandbox (one kube-apiserver and etcd sharing the
// machine with the client), and the rewrite's peak memory at 1,000 and
// 10,000 secrets. It prints numbers; it asserts none.
//
//	make bench-rewrite
//	(go test -tags sandbox -run '^$' -bench Rewrite -benchtime 1x ./reconciler/rewritebench/)
package rewritebench

import (
	"bytes"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/internal/heappeak"
	"github.com/atrest-io/atrest/reconciler"
	"github.com/atrest-io/atrest/sandbox"
	"github.com/atrest-io/atrest/sandbox/sandboxtest"
	"github.com/atrest-io/atrest/settings"
)

var (
	// leftKeys are the keys BenchmarkRewrite left objects under: a
	// benchmark after it in the same run must keep reading them.
	leftKeys  []cluster.Key
	sb        *sandbox.Sandbox
	atrestBin string // for the vault-transit provider's setup and its plugin's image
)

func TestMain(m *testing.M) {
	sandbox.RunHelper() // this binary also serves the sandbox's Git over HTTP
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		// Not benchmarking: no sandbox to start.
		os.Exit(m.Run())
	}
	os.Exit(sandboxtest.MainWithAtrest(m, &atrestBin, &sb, func(bin string) sandbox.Options {
		return sandbox.Options{Nodes: 1, KMSPlugin: bin}
	}))
}

func BenchmarkRewrite(b *testing.B) {
	ctx := context.Background()
	kubectl := os.Getenv("ATREST_KUBECTL")
	if kubectl == "" {
		b.Fatal("ATREST_KUBECTL is not set: build it with tools/build.sh kubectl")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", sb.Kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	// The defaults atrest runs with (settings kubernetes.qps 0: no
	// client-side cap; 16 workers and the apiserver bound the rewrite).
	reconciler.SetRateLimit(cfg, settings.Default().Kubernetes.QPS, settings.Default().Kubernetes.Burst)
	kc := kubernetes.NewForConfigOrDie(cfg)
	keys := []cluster.Key{newKey(b, "k-bench0")}
	deploy(b, ctx, cluster.ManagedConfig{Keys: keys})
	rotate := func() {
		next := newKey(b, fmt.Sprintf("k-bench%d", len(keys)))
		deploy(b, ctx, cluster.ManagedConfig{Keys: append([]cluster.Key{keys[len(keys)-1]}, next)})
		deploy(b, ctx, cluster.ManagedConfig{Keys: []cluster.Key{next, keys[len(keys)-1]}})
		keys = append(keys, next)
	}

	var lines []string
	report := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		lines = append(lines, line)
		fmt.Println(line)
	}

	create(b, ctx, kc, 0, 1000)
	rotate()
	r1 := measureAtrest(b, ctx, cfg)
	check(b, ctx, keys[len(keys)-1], 1000)

	create(b, ctx, kc, 1000, 5000)
	rotate()
	r5 := measureAtrest(b, ctx, cfg)
	check(b, ctx, keys[len(keys)-1], 5000)
	rotate()
	k5 := measureKubectl(b, ctx, kubectl)
	check(b, ctx, keys[len(keys)-1], 5000)

	create(b, ctx, kc, 5000, 10000)
	rotate()
	r10 := measureAtrest(b, ctx, cfg)
	check(b, ctx, keys[len(keys)-1], 10000)

	report("rewrite of 5,000 secrets (~1 KiB each) after a rotation, one kube-apiserver + etcd on this %d-core machine:", runtime.NumCPU())
	report("  %-34s %8s %10s %14s %14s", "", "seconds", "secrets/s", "client CPU s", "client share")
	report("  %-34s %8.2f %10.0f %14.2f %13.0f%%", "atrest rewrite (protobuf, workers)", r5.wall.Seconds(), 5000/r5.wall.Seconds(), r5.cpu.Seconds(), 100*r5.share())
	report("  %-34s %8.2f %10.0f %14.2f %13.0f%%", "kubectl get -o json | kubectl replace", k5.wall.Seconds(), 5000/k5.wall.Seconds(), k5.cpu.Seconds(), 100*k5.share())
	report("  ratio atrest/kubectl: %.1fx", k5.wall.Seconds()/r5.wall.Seconds())
	report("  machine busy during atrest's rewrite: %.0f%% of %d cores; the rest of the busy time is kube-apiserver and etcd", 100*r5.busy.Seconds()/(r5.wall.Seconds()*float64(runtime.NumCPU())), runtime.NumCPU())
	report("peak Go heap of the rewrite: %.1f MiB at 1,000 secrets (%.0f/s), %.1f MiB at 5,000, %.1f MiB at 10,000 (%.0f/s)",
		mib(r1.peakHeap), 1000/r1.wall.Seconds(), mib(r5.peakHeap), mib(r10.peakHeap), 10000/r10.wall.Seconds())
	_ = os.WriteFile(filepath.Join(os.TempDir(), "atrest-rewrite-bench.txt"), []byte(strings.Join(lines, "\n")+"\n"), 0o644)

	// Leave the sandbox for the benchmark after this one: its own secrets
	// gone, and its keys named for whatever else it rewrote.
	for i := range 5 {
		if err := kc.CoreV1().Secrets(fmt.Sprintf("bench-%d", i)).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	leftKeys = keys
}

type measurement struct {
	wall, cpu, busy time.Duration
	peakHeap        uint64
}

// share is the client's part of the machine's busy CPU time.
func (m measurement) share() float64 { return m.cpu.Seconds() / m.busy.Seconds() }

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func measureAtrest(b *testing.B, ctx context.Context, cfg *rest.Config) measurement {
	// ATREST_BENCH_WORKERS sweeps the worker count.
	var opts reconciler.RewriteOptions
	if w, err := strconv.Atoi(os.Getenv("ATREST_BENCH_WORKERS")); err == nil {
		opts.Workers = w
	}
	rw, err := reconciler.NewRewriter(cfg, opts)
	if err != nil {
		b.Fatal(err)
	}
	var m measurement
	_, m.peakHeap = heappeak.Measure(func() {
		cpu0, busy0, start := selfCPU(), machineBusy(), time.Now()
		if _, err := rw.Rewrite(ctx, "secrets"); err != nil {
			b.Fatal(err)
		}
		m.wall, m.cpu, m.busy = time.Since(start), selfCPU()-cpu0, machineBusy()-busy0
	})
	return m
}

func measureKubectl(b *testing.B, ctx context.Context, kubectl string) measurement {
	cmd := exec.CommandContext(ctx, "sh", "-c", kubectl+" get secrets -A -o json | "+kubectl+" replace -f - >/dev/null")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+sb.Kubeconfig)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// The shell waits for both kubectls, so this process's children usage
	// grows by the whole pipeline's CPU.
	cpu0, busy0, start := childrenCPU(), machineBusy(), time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("kubectl replace: %v: %s", err, stderr.String())
	}
	return measurement{wall: time.Since(start), cpu: childrenCPU() - cpu0, busy: machineBusy() - busy0}
}

func childrenCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineBusy is the machine's non-idle CPU time from /proc/stat.
func machineBusy() time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	fields := strings.Fields(strings.SplitN(string(data), "\n", 2)[0])[1:]
	var busy int64
	for i, f := range fields {
		v, _ := strconv.ParseInt(f, 10, 64)
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		busy += v
	}
	return time.Duration(busy) * time.Second / 100 // USER_HZ
}

func newKey(b *testing.B, name string) cluster.Key {
	s := make([]byte, 32)
	if _, err := rand.Read(s); err != nil {
		b.Fatal(err)
	}
	return cluster.Key{Name: name, Provider: cluster.AESCBC, Secret: s}
}

// deploy writes the provider file on the node and restarts kube-apiserver
// with it (recreating it with the flag the first time).
func deploy(b *testing.B, ctx context.Context, m cluster.ManagedConfig) {
	data, err := m.Render()
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sb.Nodes[0].Dir, "etc-kubernetes", "ssl", "encryption.yaml"), data, 0o600); err != nil {
		b.Fatal(err)
	}
	out, err := sb.Docker(ctx, 0, "inspect", "--format", "{{join .Args \" \"}}", "kube-apiserver")
	if err != nil {
		b.Fatal(err)
	}
	if !strings.Contains(out, "--encryption-provider-config") {
		err = sb.RecreateAPIServer(ctx, 0, sandbox.ProviderConfigFlag)
	} else if _, err = sb.Docker(ctx, 0, "restart", "kube-apiserver"); err == nil {
		err = sb.WaitReady(ctx, 0, 3*time.Minute)
	}
	if err != nil {
		b.Fatal(err)
	}
}

// create makes secrets from..to-1 of about 1 KiB in five namespaces.
func create(b *testing.B, ctx context.Context, kc kubernetes.Interface, from, to int) {
	for i := range 5 {
		ns := fmt.Sprintf("bench-%d", i)
		_, _ = kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	}
	payload := make([]byte, 1000)
	_, _ = rand.Read(payload)
	var wg sync.WaitGroup
	var failed atomic.Value
	sem := make(chan struct{}, 32)
	for i := from; i < to; i++ {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			_, err := kc.CoreV1().Secrets(fmt.Sprintf("bench-%d", i%5)).Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s-%05d", i)},
				Data:       map[string][]byte{"value": payload},
			}, metav1.CreateOptions{})
			if err != nil {
				failed.Store(err)
			}
		})
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		b.Fatal(err)
	}
}

// check verifies with raw etcd reads that at least want secrets are stored
// under key, and none under any other prefix.
func check(b *testing.B, ctx context.Context, key cluster.Key, want int) {
	c, err := sb.EtcdClient()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	counts := map[string]int{}
	resp, err := c.Get(ctx, "/registry/secrets/bench-", clientv3.WithPrefix())
	if err != nil {
		b.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		counts[cluster.StoragePrefix(kv.Value)]++
	}
	if counts[key.Prefix()] < want || len(counts) != 1 {
		b.Fatalf("after the rewrite: %v, want %d under %s only", counts, want, key.Prefix())
	}
}
