//go:build measure

// The drill's measurement (./measure.sh runs it after TestMeasure): on a
// dedicated etcd, secrets written as kube-apiserver writes them (protobuf,
// aescbc through k8s.io/apiserver's own transformer, the etcd key as
// authenticated data) up to each size, a snapshot saved, then in one run,
// alternating: etcdsnap.Drill in a child process against `etcdutl snapshot
// status` on the same file (which reads and hashes every page too, and
// decrypts nothing). Time, CPU, the peak RSS (file pages of the memory map
// included) and the peak of anonymous memory (the heap: what must stay
// flat in the file's size).
//
// Sizes: ATREST_MEASURE_DRILL_MB (default "100,500"); rounds:
// ATREST_MEASURE_ROUNDS (default 3). etcdutl: ATREST_ETCDUTL, or
// tools/build.sh etcdutl (measure.sh builds it).
package etcdsnap_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	storagevalue "k8s.io/apiserver/pkg/storage/value"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/etcdsnap"
)

// drillChildEnv tells the test binary, run again as a child, which drill
// to run: {"dir","name","keyFile"}.
const drillChildEnv = "ATREST_MEASURE_DRILL_CHILD"

type drillJob struct {
	Dir     string `json:"dir"`
	Name    string `json:"name"`
	KeyFile string `json:"keyFile"` // the key, JSON, mode 0600
}

type drillResult struct {
	Seconds float64 `json:"seconds"`
	Objects int64   `json:"objects"`
	Verdict string  `json:"verdict"`
	HWMKB   int64   `json:"vmhwmKB"`
	AnonKB  int64   `json:"anonPeakKB"`
	HeapMB  float64 `json:"heapSysMB"`
}

type keyFileJSON struct {
	Name     string `json:"name"`
	Provider string `json:"provider"`
	Secret   []byte `json:"secret"`
}

type oneKey struct{ k cluster.Key }

func (o oneKey) Key(_ context.Context, name string) (cluster.Key, error) {
	if name != o.k.Name {
		return cluster.Key{}, fmt.Errorf("no key %s", name)
	}
	return o.k, nil
}

// memRefs records nothing: the measurement keeps no snapshot references.
type memRefs struct{}

func (memRefs) AddSnapshotRef(context.Context, string, []string) error { return nil }
func (memRefs) ReleaseSnapshotRef(context.Context, string) error       { return nil }

// TestMeasureDrillChild is the child: one drill, then its numbers.
func TestMeasureDrillChild(t *testing.T) {
	spec := os.Getenv(drillChildEnv)
	if spec == "" {
		t.Skip("run by TestMeasureDrill")
	}
	var job drillJob
	if err := json.Unmarshal([]byte(spec), &job); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(job.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	var kf keyFileJSON
	if err := json.Unmarshal(data, &kf); err != nil {
		t.Fatal(err)
	}
	k := cluster.Key{Name: kf.Name, Provider: cluster.Provider(kf.Provider), Secret: kf.Secret}
	store, err := etcdsnap.NewLocalDir(job.Dir)
	if err != nil {
		t.Fatal(err)
	}
	// RssAnon is the current anonymous memory; sample it for its peak.
	var anon int64
	var mu sync.Mutex
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if kb := readStatusKB("/proc/self/status", "RssAnon:"); kb > 0 {
				mu.Lock()
				anon = max(anon, kb)
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	rep, err := etcdsnap.Drill(t.Context(), store, job.Name, oneKey{k}, etcdsnap.DrillOptions{})
	secs := time.Since(start).Seconds()
	close(stop)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res := drillResult{Seconds: secs, Objects: rep.Total, Verdict: rep.Verdict, HWMKB: vmHWM(), AnonKB: anon, HeapMB: float64(ms.HeapSys) / (1 << 20)}
	out, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", out)
}

func readStatusKB(file, field string) int64 {
	data, _ := os.ReadFile(file)
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb
		}
	}
	return 0
}

func TestMeasureDrill(t *testing.T) {
	if os.Getenv(childEnv) != "" || os.Getenv(drillChildEnv) != "" {
		t.Skip("child")
	}
	etcdutl := os.Getenv("ATREST_ETCDUTL")
	if etcdutl == "" {
		t.Fatal("set ATREST_ETCDUTL to etcdutl (tools/build.sh etcdutl; measure.sh does)")
	}
	sizes, rounds := measureSizes(t, "ATREST_MEASURE_DRILL_MB", 100, 500), measureRounds()
	ctx := t.Context()
	dir := t.TempDir()
	p := writePKI(t, dir)
	endpoint := startMeasureEtcd(t, dir, p)
	c := measureClient(t, endpoint, p)
	raw := rawClient(t, endpoint, p)

	k, err := cluster.NewKey(cluster.AESCBC, nil)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "key.json")
	// cluster.Secret marshals redacted: the file carries the bytes.
	kj, _ := json.Marshal(keyFileJSON{Name: k.Name, Provider: string(k.Provider), Secret: k.Secret})
	if err := os.WriteFile(keyFile, kj, 0o600); err != nil {
		t.Fatal(err)
	}
	req := etcdsnap.Manifest{Reason: "measure", Keys: []etcdsnap.KeyRef{etcdsnap.RefOf(k)}, Resources: []string{"secrets"}}
	encrypt := transformer(t, req, k)
	store, err := etcdsnap.NewLocalDir(filepath.Join(dir, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}

	fmt.Printf("\nsnapshot drill: etcdsnap.Drill (decrypt + check every secret) vs etcdutl %s snapshot status (hash every page), %d rounds, alternating\n", etcdutlVersion(etcdutl), rounds)
	fmt.Printf("%9s | %8s | %-19s | %-19s | %-17s | %-21s | %s\n", "file", "secrets", "drill s (med/best)", "etcdutl s (med/best)", "CPU s drill/utl", "peak RSS drill/utl", "drill anon peak / heap")
	next := 0
	for _, mb := range sizes {
		fillEncrypted(t, raw, endpoint, mb<<20, &next, encrypt)
		m, err := c.Save(ctx, store, memRefs{}, req)
		if err != nil {
			t.Fatal(err)
		}
		var drill, utl []run
		var last drillResult
		for range rounds {
			spec, _ := json.Marshal(drillJob{Dir: store.Path(""), Name: m.Name, KeyFile: keyFile})
			cmd := exec.Command(os.Args[0], "-test.run=^TestMeasureDrillChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), drillChildEnv+"="+string(spec))
			out, _, err := runWatched(cmd)
			if err != nil {
				t.Fatalf("drill child: %v\n%s", err, out)
			}
			res := parseDrill(t, out)
			if res.Verdict != etcdsnap.Restorable || res.Objects != int64(next) {
				t.Fatalf("drill of %s: %s, %d objects, want Restorable and %d", m.Name, res.Verdict, res.Objects, next)
			}
			last = res
			drill = append(drill, run{res.Seconds, res.HWMKB, cpuSeconds(cmd)})

			cmd = exec.Command(etcdutl, "snapshot", "status", store.Path(m.Name+".db"), "--write-out=json")
			start := time.Now()
			b, hwm, err := runWatched(cmd)
			if err != nil {
				t.Fatalf("etcdutl snapshot status: %v\n%s", err, b)
			}
			utl = append(utl, run{time.Since(start).Seconds(), hwm, cpuSeconds(cmd)})
		}
		dm, db, um, ub := median(drill), best(drill), median(utl), best(utl)
		avgCPU := func(rs []run) float64 {
			var s float64
			for _, r := range rs {
				s += r.cpu
			}
			return s / float64(len(rs))
		}
		fmt.Printf("%5d MiB | %8d | %7.2f / %-9.2f | %7.2f / %-10.2f | %6.2f / %-8.2f | %6.1f / %-6.1f MiB   | %6.1f MiB / %.1f MiB\n",
			m.Size>>20, next, dm.seconds, db.seconds, um.seconds, ub.seconds, avgCPU(drill), avgCPU(utl),
			float64(maxRSS(drill))/1024, float64(maxRSS(utl))/1024, float64(last.AnonKB)/1024, last.HeapMB)
		if err := etcdsnap.Remove(ctx, store, memRefs{}, "", m.Name); err != nil {
			t.Fatal(err)
		}
	}
}

func parseDrill(t *testing.T, out []byte) drillResult {
	t.Helper()
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "RESULT "); ok {
			var res drillResult
			if err := json.Unmarshal([]byte(rest), &res); err != nil {
				t.Fatal(err)
			}
			return res
		}
	}
	t.Fatalf("drill child printed no result:\n%s", out)
	return drillResult{}
}

// transformer encrypts as a kube-apiserver running the config the
// snapshot's manifest renders to (its restore config).
func transformer(t *testing.T, m etcdsnap.Manifest, k cluster.Key) func(key string, plain []byte) []byte {
	t.Helper()
	data, err := etcdsnap.RestoreConfig(t.Context(), m, oneKey{k})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := encryptionconfig.LoadEncryptionConfig(t.Context(), path, false, "measure")
	if err != nil {
		t.Fatal(err)
	}
	tr := encryptionconfig.StaticTransformers(cfg.Transformers).TransformerForResource(schema.GroupResource{Resource: "secrets"})
	return func(key string, plain []byte) []byte {
		out, err := tr.TransformToStorage(t.Context(), plain, storagevalue.DefaultContext(key))
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
}

// fillEncrypted writes encrypted protobuf secrets of 8-56 KiB (Helm
// releases and certificates, not only passwords) until etcd's database
// is at least target bytes.
func fillEncrypted(t *testing.T, c *clientv3.Client, endpoint string, target int64, next *int, encrypt func(string, []byte) []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	for {
		st, err := c.Status(ctx, endpoint)
		if err != nil {
			t.Fatal(err)
		}
		if st.DbSize >= target {
			return
		}
		var ops []clientv3.Op
		for range 20 {
			i := *next
			*next++
			ns, name := fmt.Sprintf("ns-%03d", i%100), fmt.Sprintf("secret-%07d", i)
			data := make([]byte, 8<<10+(i%7)*(8<<10))
			rand.Read(data)
			s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: map[string][]byte{"v": data}}
			b, err := s.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			u := &k8sruntime.Unknown{TypeMeta: k8sruntime.TypeMeta{APIVersion: "v1", Kind: "Secret"}, Raw: b}
			ub, err := u.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			key := "/registry/secrets/" + ns + "/" + name
			ops = append(ops, clientv3.OpPut(key, string(encrypt(key, append([]byte("k8s\x00"), ub...)))))
		}
		if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
}

func etcdutlVersion(bin string) string {
	out, _ := exec.Command(bin, "version").Output()
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimPrefix(first, "etcdutl version: ")
}
