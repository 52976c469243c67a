//go:build measure

// The measurement behind the package's performance claims; run it with
// ./measure.sh (or go test -tags measure -run TestMeasure -v ./etcdsnap/).
// It starts its own etcd (Debian's, TLS with client certificates, on
// 127.0.0.1), fills it, and compares in one run:
//
//   - Client.Save against `etcdctl snapshot save` on the same server, at two
//     database sizes: throughput, ratio, and the peak RSS of each process
//     (atrest's Save runs in a child process so that its peak is its own);
//   - Client.Census of 20,000 secrets at several page sizes: time and peak RSS.
//
// Sizes: ATREST_MEASURE_SIZES_MB (default "128,512"), rounds per size:
// ATREST_MEASURE_ROUNDS (default 3; the best round of each tool is shown
// beside the median). ATREST_MEASURE_PROFILE=DIR keeps a CPU profile of
// every child.
package etcdsnap_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/atrest-io/atrest/etcdsnap"
)

// childEnv tells the test binary, run again as a child, what to measure.
const childEnv = "ATREST_MEASURE_CHILD"

type childJob struct {
	Op       string   `json:"op"` // "save" or "census"
	Endpoint string   `json:"endpoint"`
	CA       string   `json:"ca"`
	Cert     string   `json:"cert"`
	Key      string   `json:"key"`
	Dir      string   `json:"dir"`
	PageSize int64    `json:"pageSize"`
	Res      []string `json:"resources"`
}

type childResult struct {
	Seconds float64         `json:"seconds"`
	Bytes   int64           `json:"bytes"`
	Census  etcdsnap.Census `json:"census"`
	HWMKB   int64           `json:"vmhwmKB"` // VmHWM read by the child itself
}

// TestMeasureChild is the child: one Save or one Census, then its numbers
// on stdout. It does nothing unless run by TestMeasure.
func TestMeasureChild(t *testing.T) {
	spec := os.Getenv(childEnv)
	if spec == "" {
		t.Skip("run by TestMeasure")
	}
	var job childJob
	if err := json.Unmarshal([]byte(spec), &job); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	c, err := etcdsnap.Dial(ctx, etcdsnap.Config{
		Endpoints: []string{job.Endpoint}, CAFile: job.CA, CertFile: job.Cert, KeyFile: job.Key,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var res childResult
	start := time.Now()
	switch job.Op {
	case "save":
		store, err := etcdsnap.NewLocalDir(job.Dir)
		if err != nil {
			t.Fatal(err)
		}
		m, err := c.Save(ctx, store, nil, etcdsnap.Manifest{Reason: "measure"})
		if err != nil {
			t.Fatal(err)
		}
		res.Bytes = m.Size
	case "census":
		census, err := c.Census(ctx, "", job.Res, job.PageSize)
		if err != nil {
			t.Fatal(err)
		}
		res.Census = census
	}
	res.Seconds = time.Since(start).Seconds()
	res.HWMKB = vmHWM()
	out, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", out)
}

func vmHWM() int64 { return readHWM("/proc/self/status") }

// runWatched runs cmd and returns its output and its peak RSS (VmHWM, KiB),
// polled from /proc every 2 ms: VmHWM only grows, so the last reading
// before the process exits is its peak. (The rusage of wait4 will not do:
// Linux carries the parent's RSS over into a child's ru_maxrss.)
func runWatched(cmd *exec.Cmd) ([]byte, int64, error) {
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, 0, err
	}
	status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
	done := make(chan struct{})
	peak := make(chan int64)
	go func() {
		var hwm int64
		for {
			if kb := readHWM(status); kb > hwm {
				hwm = kb
			}
			select {
			case <-done:
				peak <- hwm
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	return []byte(out.String()), <-peak, err
}

func readHWM(statusFile string) int64 {
	data, _ := os.ReadFile(statusFile)
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb
		}
	}
	return 0
}

// runChild runs the test binary as a child doing job, and returns its
// result and its peak RSS.
func runChild(t *testing.T, job childJob) (childResult, int64, float64) {
	t.Helper()
	spec, _ := json.Marshal(job)
	args := []string{"-test.run=^TestMeasureChild$", "-test.count=1"}
	if dir := os.Getenv("ATREST_MEASURE_PROFILE"); dir != "" {
		args = append(args, "-test.cpuprofile="+filepath.Join(dir, fmt.Sprintf("%s-%d.pprof", job.Op, time.Now().UnixNano())))
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	out, hwm, err := runWatched(cmd)
	if err != nil {
		t.Fatalf("child %s: %v\n%s", job.Op, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "RESULT "); ok {
			var res childResult
			if err := json.Unmarshal([]byte(rest), &res); err != nil {
				t.Fatal(err)
			}
			return res, hwm, cpuSeconds(cmd)
		}
	}
	t.Fatalf("child %s printed no result:\n%s", job.Op, out)
	return childResult{}, 0, 0
}

// cpuSeconds is the CPU time a finished process used: on a machine shared
// with other work, throughput swings with the load, CPU per byte does not.
func cpuSeconds(cmd *exec.Cmd) float64 {
	return (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
}

type measurePKI struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func writePKI(t *testing.T, dir string) measurePKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "measure-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalECPrivateKey(key)
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", keyDER)
	}
	var p measurePKI
	p.ca = write("ca.pem", "CERTIFICATE", caDER)
	p.serverCert, p.serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return p
}

func loopbackPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// startMeasureEtcd starts a dedicated Debian etcd on 127.0.0.1 and stops it
// (its process group, by PID) when the test ends.
func startMeasureEtcd(t *testing.T, dir string, p measurePKI) string {
	t.Helper()
	endpoint := "https://127.0.0.1:" + loopbackPort(t)
	peer := "http://127.0.0.1:" + loopbackPort(t)
	cmd := exec.Command("etcd", "--name=measure", "--data-dir="+filepath.Join(dir, "data"),
		"--listen-client-urls="+endpoint, "--advertise-client-urls="+endpoint,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer, "--initial-cluster=measure="+peer,
		"--cert-file="+p.serverCert, "--key-file="+p.serverKey, "--client-cert-auth", "--trusted-ca-file="+p.ca,
		"--quota-backend-bytes=8589934592", "--max-request-bytes=10485760", "--logger=zap", "--log-level=warn")
	logf, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		syscall.Kill(-pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			syscall.Kill(-pid, syscall.SIGKILL)
			<-done
		}
	})
	return endpoint
}

func measureClient(t *testing.T, endpoint string, p measurePKI) *etcdsnap.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var c *etcdsnap.Client
	var err error
	for range 60 {
		if c, err = etcdsnap.Dial(ctx, etcdsnap.Config{Endpoints: []string{endpoint}, CAFile: p.ca, CertFile: p.clientCert, KeyFile: p.clientKey}); err == nil {
			t.Cleanup(func() { c.Close() })
			return c
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("etcd at %s: %v", endpoint, err)
	return nil
}

// rawClient is a plain etcd client for filling the database.
func rawClient(t *testing.T, endpoint string, p measurePKI) *clientv3.Client {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(p.clientCert, p.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(p.ca)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, TLS: tlsCfg, DialTimeout: 10 * time.Second,
		MaxCallSendMsgSize: 12 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// fillTo puts 1 MiB values, four per transaction, until etcd's database is
// at least target bytes.
func fillTo(t *testing.T, c *clientv3.Client, endpoint string, target int64, next *int) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	value := make([]byte, 1<<20)
	for {
		st, err := c.Status(ctx, endpoint)
		if err != nil {
			t.Fatal(err)
		}
		if st.DbSize >= target {
			return st.DbSize
		}
		var ops []clientv3.Op
		for range 4 {
			rand.Read(value) // incompressible, distinct
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/fill/%08d", *next), string(value)))
			*next++
		}
		if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
}

type run struct {
	seconds float64
	rssKB   int64
	cpu     float64 // user+system seconds of the whole process
}

func median(rs []run) run {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b run) int { return int((a.seconds - b.seconds) * 1e6) })
	return s[len(s)/2]
}

func best(rs []run) run {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b run) int { return int((a.seconds - b.seconds) * 1e6) })
	return s[0]
}

func TestMeasure(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		t.Skip("child")
	}
	sizes, rounds := measureSizes(t, "ATREST_MEASURE_SIZES_MB", 128, 512), measureRounds()
	dir := t.TempDir()
	p := writePKI(t, dir)
	endpoint := startMeasureEtcd(t, dir, p)
	measureClient(t, endpoint, p) // waits until etcd answers
	raw := rawClient(t, endpoint, p)
	out := filepath.Join(dir, "out")

	fmt.Printf("\nsnapshot save: atrest Client.Save vs etcdctl snapshot save (etcd %s, TLS, loopback), %d rounds, alternating\n", etcdVersion(t), rounds)
	fmt.Printf("%9s | %-22s | %-22s | %-13s | %-22s | %s\n", "db size", "atrest MB/s (med/best)", "etcdctl MB/s (med/best)", "ratio med/best",
		"CPU s/GB atrest/etcdctl", "peak RSS atrest / etcdctl")
	next := 0
	for _, mb := range sizes {
		size := fillTo(t, raw, endpoint, mb<<20, &next)
		var atrest, etcdctl []run
		var snapBytes int64
		for range rounds {
			os.RemoveAll(out)
			res, rss, cpuUsed := runChild(t, childJob{Op: "save", Endpoint: endpoint, CA: p.ca, Cert: p.clientCert, Key: p.clientKey, Dir: out})
			// The child's own reading is exact; the polled one shows
			// that polling (all etcdctl gets) does not miss the peak.
			atrest = append(atrest, run{res.Seconds, res.HWMKB, cpuUsed})
			if rss < res.HWMKB*9/10 {
				t.Logf("polled VmHWM %d KiB, the child read %d KiB", rss, res.HWMKB)
			}
			snapBytes = res.Bytes

			os.RemoveAll(out)
			os.MkdirAll(out, 0o700)
			cmd := exec.Command("etcdctl", "--endpoints="+endpoint, "--cacert="+p.ca, "--cert="+p.clientCert, "--key="+p.clientKey,
				"snapshot", "save", filepath.Join(out, "etcdctl.db"))
			cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
			start := time.Now()
			b, hwm, err := runWatched(cmd)
			if err != nil {
				t.Fatalf("etcdctl snapshot save: %v\n%s", err, b)
			}
			etcdctl = append(etcdctl, run{time.Since(start).Seconds(), hwm, cpuSeconds(cmd)})
		}
		os.RemoveAll(out)
		am, ab, em, eb := median(atrest), best(atrest), median(etcdctl), best(etcdctl)
		mbps := func(r run) float64 { return float64(snapBytes) / 1e6 / r.seconds }
		cpuPerGB := func(rs []run) float64 {
			var cpu float64
			for _, r := range rs {
				cpu += r.cpu
			}
			return cpu / float64(len(rs)) / (float64(snapBytes) / 1e9)
		}
		fmt.Printf("%6d MiB | %9.0f / %-10.0f | %9.0f / %-11.0f | %5.2f / %-5.2f | %9.2f / %-10.2f | %6.1f MiB / %.1f MiB\n",
			size>>20, mbps(am), mbps(ab), mbps(em), mbps(eb), mbps(am)/mbps(em), mbps(ab)/mbps(eb),
			cpuPerGB(atrest), cpuPerGB(etcdctl), float64(maxRSS(atrest))/1024, float64(maxRSS(etcdctl))/1024)
	}

	// Census: 20,000 secrets, half plain protobuf, half aescbc envelopes,
	// 2-6 KiB each, under /registry/secrets/<ns>/<name>; then twice as many
	// at the default page size, to show memory follows the page, not the
	// count.
	const secrets = 20000
	fillSecrets(t, raw, 0, secrets)
	fmt.Printf("\ncensus of secrets (half identity, half aescbc:v1:k-measure, 2-6 KiB each), one run each\n")
	fmt.Printf("%8s | %9s | %8s | %12s | %s\n", "secrets", "page size", "seconds", "peak RSS", "counts")
	census := func(n int, page int64) {
		res, _, _ := runChild(t, childJob{Op: "census", Endpoint: endpoint, CA: p.ca, Cert: p.clientCert, Key: p.clientKey,
			PageSize: page, Res: []string{"secrets"}})
		if res.Census.Total("secrets") != int64(n) {
			t.Errorf("census counted %v, want %d", res.Census["secrets"], n)
		}
		fmt.Printf("%8d | %9d | %8.2f | %8.1f MiB | %v\n", n, page, res.Seconds, float64(res.HWMKB)/1024, res.Census["secrets"])
	}
	for _, page := range []int64{100, etcdsnap.DefaultPageSize, 2000, secrets} {
		census(secrets, page)
	}
	fillSecrets(t, raw, secrets, 2*secrets)
	census(2*secrets, etcdsnap.DefaultPageSize)
}

// measureSizes is the sizes in MiB the variable env lists
// ("128,512"), else def.
func measureSizes(t *testing.T, env string, def ...int64) []int64 {
	t.Helper()
	v := os.Getenv(env)
	if v == "" {
		return def
	}
	var sizes []int64
	for _, s := range strings.Split(v, ",") {
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			t.Fatalf("%s: %v", env, err)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// measureRounds is ATREST_MEASURE_ROUNDS, else 3.
func measureRounds() int {
	if n, err := strconv.Atoi(os.Getenv("ATREST_MEASURE_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 3
}

func maxRSS(rs []run) int64 {
	var m int64
	for _, r := range rs {
		m = max(m, r.rssKB)
	}
	return m
}

func etcdVersion(t *testing.T) string {
	out, _ := exec.Command("etcd", "--version").Output()
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimPrefix(first, "etcd Version: ")
}

// fillSecrets writes secrets number from to to-1.
func fillSecrets(t *testing.T, c *clientv3.Client, from, to int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var ops []clientv3.Op
	for i := from; i < to; i++ {
		body := make([]byte, 2048+(i%5)*1024)
		rand.Read(body)
		var v []byte
		if i%2 == 0 {
			v = append([]byte("k8s\x00\n\f\n\x02v1\x12\x06Secret"), body...)
		} else {
			v = append([]byte("k8s:enc:aescbc:v1:k-measure:"), body...)
		}
		ops = append(ops, clientv3.OpPut(fmt.Sprintf("/registry/secrets/ns-%03d/secret-%06d", i%100, i), string(v)))
		if len(ops) == 100 || i == to-1 {
			if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
	}
}
