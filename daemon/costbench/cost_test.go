//go:build sandbox

// Package costbench measures what `atrest run` costs while nothing
// changes, in one run on a one-node sandbox holding 10,000 secrets of
// about 10 KiB and 200 of about 1 MiB (what Helm's releases look like):
// bytes read from etcd, CPU seconds and peak RSS of the daemon, with the
// census read in full at every poll (daemon.liveCensus false, as before)
// and kept live from etcd's watch (the default), idle and under a steady
// stream of secret writes. Then the peak heap of one full census, with
// pages bounded by bytes and by count alone. It prints numbers; it
// asserts none.
//
//	make bench-daemon
//	(go test -tags sandbox -run '^$' -bench DaemonCost -benchtime 1x ./daemon/costbench/)
//
// ATREST_COST_DURATION (default 2m) is how long each daemon runs, polling
// every 10 s; the figures are also given per poll and scaled to an hour
// at the default interval of a minute.
package costbench

import (
	"bufio"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/internal/heappeak"
	"github.com/atrest-io/atrest/reconciler"
	"github.com/atrest-io/atrest/sandbox"
	"github.com/atrest-io/atrest/sandbox/sandboxtest"
)

var (
	sb     *sandbox.Sandbox
	atrest string
)

func TestMain(m *testing.M) {
	sandbox.RunHelper()
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		os.Exit(m.Run())
	}
	os.Exit(sandboxtest.MainWithAtrest(m, &atrest, &sb, func(string) sandbox.Options {
		return sandbox.Options{Nodes: 1}
	}))
}

func BenchmarkDaemonCost(b *testing.B) {
	ctx := context.Background()
	duration := 2 * time.Minute
	if d, err := time.ParseDuration(os.Getenv("ATREST_COST_DURATION")); err == nil {
		duration = d
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", sb.Kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	reconciler.SetRateLimit(cfg, 0, 0)
	kc := kubernetes.NewForConfigOrDie(cfg)

	// Encryption on first, so that every secret is written encrypted.
	base, err := os.ReadFile(sb.ClusterYML)
	if err != nil {
		b.Fatal(err)
	}
	yml := strings.Replace(string(base), sandbox.DisabledBlock, "    secrets_encryption_config:\n      enabled: true\n", 1)
	if _, err := sb.Commit(ctx, "encryption on", map[string]string{"cluster.yml": yml, "atrest.yaml": "snapshots:\n  retention: 3\n"}); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command(atrest, "apply", "--settings", sb.SettingsFile).CombinedOutput(); err != nil {
		b.Fatalf("atrest apply: %v\n%s", err, out)
	}
	start := time.Now()
	fill(b, ctx, kc, "cost-small", 10000, 10<<10)
	fill(b, ctx, kc, "cost-large", 200, 1000_000)
	fmt.Printf("filled 10,000 secrets of 10 KiB and 200 of 1 MB in %s\n", time.Since(start).Round(time.Second))

	type run struct {
		mode, load string
		r          result
	}
	var runs []run
	for _, mode := range []string{"full", "live"} {
		for _, load := range []string{"idle", "20 writes/s"} {
			r := measureDaemon(b, ctx, kc, mode == "live", load != "idle", duration)
			runs = append(runs, run{mode, load, r})
			fmt.Printf("%s census, %s: %+v\n", mode, load, r)
		}
	}
	small, large := censusHeap(b, ctx)

	var lines []string
	report := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		lines = append(lines, line)
		fmt.Println(line)
	}
	report("atrest run on 10,000 secrets of ~10 KiB and 200 of ~1 MB, one node, polling every 10 s for %s each, in one run:", duration)
	report("  %-14s %-12s %6s %14s %14s %12s %10s %12s", "census", "load", "polls", "etcd bytes", "bytes/poll", "CPU s/poll", "peak RSS", "1h at 1m")
	for _, r := range runs {
		per := float64(r.r.etcdBytes) / float64(max(r.r.polls, 1))
		report("  %-14s %-12s %6d %14s %14s %12.3f %9.0fM %12s", r.mode, r.load, r.r.polls, mib(float64(r.r.etcdBytes)), mib(per),
			r.r.cpu.Seconds()/float64(max(r.r.polls, 1)), float64(r.r.peakRSS)/(1<<20), mib(per*60))
	}
	report("  (1h at 1m: the bytes of 60 polls; under writes the live census reads each write's value once, whatever the interval)")
	report("peak Go heap of one full census (above the heap before it): pages of 500 values: %s for 2,000 values of 10 KiB, %s for 200 of 1 MB; pages bounded at %s too: %s and %s",
		mib(float64(small.unbounded)), mib(float64(large.unbounded)), mib(etcdsnap.DefaultPageBytes), mib(float64(small.bounded)), mib(float64(large.bounded)))
	_ = os.WriteFile(filepath.Join(os.TempDir(), "atrest-daemon-cost.txt"), []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }

// fill creates n secrets of size bytes in namespace ns.
func fill(b *testing.B, ctx context.Context, kc kubernetes.Interface, ns string, n, size int) {
	_, _ = kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	sem := make(chan struct{}, 16)
	var failed atomic.Value
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			data := make([]byte, size)
			_, _ = rand.Read(data)
			_, err := kc.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s-%05d", i)},
				Data: map[string][]byte{"v": data}}, metav1.CreateOptions{})
			if err != nil && !strings.Contains(err.Error(), "already exists") {
				failed.Store(err)
			}
		})
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		b.Fatal(err)
	}
}

type result struct {
	polls     int
	etcdBytes int64
	cpu       time.Duration
	peakRSS   int64
	writes    int64
}

// measureDaemon runs `atrest run` for d and reads what it cost: bytes from
// etcd (its own counter), CPU and peak RSS (from /proc).
func measureDaemon(b *testing.B, ctx context.Context, kc kubernetes.Interface, live, writes bool, d time.Duration) result {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(atrest, "run", "--settings", sb.SettingsFile, "--git-interval", "10s", "--listen-metrics", addr,
		"--daemon-live-census="+strconv.FormatBool(live), "--log-level", "warn")
	logFile := filepath.Join(b.TempDir(), "atrest-run.log")
	logs, err := os.Create(logFile)
	if err != nil {
		b.Fatal(err)
	}
	defer logs.Close()
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	// The first cycle (start-up: Git, Vault, the first census) is not the
	// steady state: measure from the end of it.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		select {
		case <-exited:
			out, _ := os.ReadFile(logFile)
			b.Fatalf("atrest run exited:\n%s", out)
		default:
		}
		if n, err := metricSumErr(addr, "atrest_reconcile_total{", nil); err == nil && n >= 1 {
			break
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logFile)
			b.Fatalf("the daemon finished no cycle in 2 minutes:\n%s", out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	p0, bytes0, cpu0 := polls(b, addr), etcdBytes(b, addr), procCPU(b, cmd.Process.Pid)
	stop := make(chan struct{})
	var wrote atomic.Int64
	var wg sync.WaitGroup
	if writes {
		wg.Go(func() { writeStream(ctx, kc, stop, &wrote) })
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	r := result{polls: polls(b, addr) - p0, etcdBytes: etcdBytes(b, addr) - bytes0, cpu: procCPU(b, cmd.Process.Pid) - cpu0, peakRSS: peakRSS(b, cmd.Process.Pid), writes: wrote.Load()}
	return r
}

// writeStream writes 20 secrets a second (1 KiB each, over 200 names)
// until stop.
func writeStream(ctx context.Context, kc kubernetes.Interface, stop <-chan struct{}, wrote *atomic.Int64) {
	const ns = "cost-writes"
	_, _ = kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		data := make([]byte, 1024)
		_, _ = rand.Read(data)
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("w-%03d", i%200)}, Data: map[string][]byte{"v": data}}
		if _, err := kc.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			_, _ = kc.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{})
		}
		wrote.Add(1)
	}
}

// metricSum sums the samples of a metric family from the daemon's
// /metrics.
func metricSum(b *testing.B, addr, name string, match func(line string) bool) float64 {
	v, err := metricSumErr(addr, name, match)
	if err != nil {
		b.Fatal(err)
	}
	return v
}

func metricSumErr(addr, name string, match func(line string) bool) (float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || (match != nil && !match(line)) {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum, sc.Err()
}

func polls(b *testing.B, addr string) int {
	return int(metricSum(b, addr, "atrest_reconcile_total{", nil))
}

func etcdBytes(b *testing.B, addr string) int64 {
	return int64(metricSum(b, addr, "atrest_etcd_read_bytes_total{", func(l string) bool { return strings.Contains(l, `kind="census"`) }))
}

// procCPU is the process's user and system time.
func procCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// peakRSS is the process's peak resident set (VmHWM), in bytes.
func peakRSS(b *testing.B, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

type heaps struct{ unbounded, bounded uint64 }

// censusHeap is the peak Go heap of one full census of 2,000 values of
// 10 KiB and of 200 of 1 MB, each under a registry prefix of its own,
// with pages of 500 values bounded by bytes or not.
func censusHeap(b *testing.B, ctx context.Context) (small, large heaps) {
	raw, err := sb.EtcdClient()
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	for _, set := range []struct {
		registry string
		n, size  int
	}{{"/cost-small", 2000, 10 << 10}, {"/cost-large", 200, 1000_000}} {
		value := make([]byte, set.size)
		_, _ = rand.Read(value)
		v := "k8s:enc:aescbc:v1:k-cost:" + string(value)
		for i := range set.n {
			if _, err := raw.Put(ctx, fmt.Sprintf("%s/secrets/ns/s-%05d", set.registry, i), v); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, pageBytes := range []int64{1 << 40, 0} {
		c, err := etcdsnap.Dial(ctx, etcdsnap.Config{Endpoints: []string{sb.EtcdEndpoint}, CAFile: sb.CAFile, CertFile: sb.EtcdCertFile, KeyFile: sb.EtcdKeyFile, PageBytes: pageBytes})
		if err != nil {
			b.Fatal(err)
		}
		for _, registry := range []string{"/cost-small", "/cost-large"} {
			before, peak := heappeak.Measure(func() {
				if _, _, err := c.CensusKeyIDs(ctx, registry, []string{"secrets"}, 500); err != nil {
					b.Fatal(err)
				}
			})
			peak -= min(peak, before)
			h := &small
			if registry == "/cost-large" {
				h = &large
			}
			if pageBytes == 0 {
				h.bounded = peak
			} else {
				h.unbounded = peak
			}
		}
		c.Close()
	}
	return small, large
}
