//go:build sandbox

// Package e2e drives the built atrest binary against the 3-node sandbox
// through every transition, with traffic through every apiserver while it
// runs, and checks the census and every secret after each one.
package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/sandbox"
	"github.com/atrest-io/atrest/sandbox/sandboxtest"
	"github.com/atrest-io/atrest/settings"
)

var (
	sb     *sandbox.Sandbox
	atrest string // the built binary
)

func TestMain(m *testing.M) {
	sandbox.RunHelper()
	if os.Getenv(standInEnv) != "" {
		os.Exit(standInRKE(os.Args[1:]))
	}
	os.Exit(sandboxtest.MainWithAtrest(m, &atrest, &sb, func(bin string) sandbox.Options {
		return sandbox.Options{Nodes: 3, KMSPlugin: bin}
	}))
}

const (
	secretCount = 500
	namespaces  = 5
)

// run runs the atrest binary against the sandbox and returns its exit code
// and output.
func run(t *testing.T, args ...string) (int, string) {
	t.Helper()
	return runArgs(t, append(args, "--settings", sb.SettingsFile)...)
}

// runArgs runs the atrest binary with exactly args (validate and version
// take no settings).
func runArgs(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, atrest, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	noteOutput(t, out.String())
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("atrest %v: %v", args, err)
	}
	return code, out.String()
}

// clusterFile writes the sandbox's cluster.yml with encryption set as given.
func clusterFile(t *testing.T, name, encryption string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), name)
	if err := sb.WriteClusterYML(file, encryption); err != nil {
		t.Fatal(err)
	}
	return file
}

const (
	managedBlock  = "    secrets_encryption_config:\n      enabled: true\n"
	disabledBlock = sandbox.DisabledBlock
	customBlock   = `    secrets_encryption_config:
      enabled: true
      custom_config:
        apiVersion: apiserver.config.k8s.io/v1
        kind: EncryptionConfiguration
        resources:
          - resources: [secrets]
            providers:
              - aescbc:
                  keys:
                    - name: k-fw5hn
                      secret: RTczRjFDODMwQzAyMDVBREU4NDJBMUZFNDhCNzM5N0I=
              - identity: {}
`
	invalidBlock = `    secrets_encryption_config:
      enabled: true
      custom_config:
        apiVersion: apiserver.config.k8s.io/v1
        kind: EncryptionConfiguration
        resources:
          - resources: [secrets]
            providers:
              - aescbc:
                  keys:
                    - name: k-short
                      secret: c2VjcmV0MTI=
`
)

func restConfigFor(t *testing.T, node int) *rest.Config {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", sb.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Host = sb.Nodes[node].APIServerURL
	cfg.QPS, cfg.Burst = 200, 400
	cfg.Timeout = 10 * time.Second
	return cfg
}

func clients(t *testing.T) []kubernetes.Interface {
	var out []kubernetes.Interface
	for i := range sb.Nodes {
		out = append(out, kubernetes.NewForConfigOrDie(restConfigFor(t, i)))
	}
	return out
}

func value(i int) []byte { return []byte(fmt.Sprintf("secret-%05d-%s", i, strings.Repeat("v", 200))) }

func nsOf(i int) string { return fmt.Sprintf("e2e-%d", i%namespaces) }

func createSecrets(t *testing.T, kc kubernetes.Interface) {
	ctx := context.Background()
	for i := range namespaces {
		_, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsOf(i)}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	var failed atomic.Value
	for i := range secretCount {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			_, err := kc.CoreV1().Secrets(nsOf(i)).Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s-%05d", i)},
				Data:       map[string][]byte{"v": value(i)},
			}, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				failed.Store(err)
			}
		})
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		t.Fatal(err)
	}
}

// traffic reads and writes secrets through all three apiservers while a
// transition runs. A read that fails because an apiserver lacks a key is a
// broken invariant; an apiserver restarting (connection refused, not ready)
// is expected and counted apart.
type traffic struct {
	stop                 chan struct{}
	wg                   sync.WaitGroup
	reads, writes        atomic.Int64
	restarting, keyFails atomic.Int64
	mu                   sync.Mutex
	failures             []string
	created              []types.NamespacedName // secrets written, deleted by finish
	// outside: an outside writer is at work (a plain `rke up`), so reads
	// that fail for a missing key are its damage, counted, not a failure
	// of atrest's.
	outside bool
}

func startTraffic(t *testing.T) *traffic {
	tr := &traffic{stop: make(chan struct{})}
	kcs := clients(t)
	for node, kc := range kcs {
		tr.wg.Go(func() { tr.loop(node, kc) })
	}
	return tr
}

func (tr *traffic) loop(node int, kc kubernetes.Interface) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(uint64(node), 42))
	for n := 0; ; n++ {
		select {
		case <-tr.stop:
			return
		case <-time.After(20 * time.Millisecond):
		}
		i := r.IntN(secretCount)
		s, err := kc.CoreV1().Secrets(nsOf(i)).Get(ctx, fmt.Sprintf("s-%05d", i), metav1.GetOptions{})
		tr.reads.Add(1)
		tr.classify(node, "read", err)
		if err == nil && !bytes.Equal(s.Data["v"], value(i)) {
			tr.fail(fmt.Sprintf("node%d read s-%05d with a changed value", node+1, i))
		}
		if n%20 == 0 {
			s, err := kc.CoreV1().Secrets(nsOf(n)).Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{GenerateName: fmt.Sprintf("traffic-n%d-", node+1)},
				Data:       map[string][]byte{"v": []byte("traffic")},
			}, metav1.CreateOptions{})
			tr.writes.Add(1)
			tr.classify(node, "write", err)
			if err == nil {
				tr.mu.Lock()
				tr.created = append(tr.created, types.NamespacedName{Namespace: s.Namespace, Name: s.Name})
				tr.mu.Unlock()
			}
		}
	}
}

func (tr *traffic) classify(node int, op string, err error) {
	if err == nil {
		return
	}
	var nerr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.As(err, &nerr),
		apierrors.IsServiceUnavailable(err), apierrors.IsTimeout(err), apierrors.IsServerTimeout(err), apierrors.IsTooManyRequests(err),
		strings.Contains(err.Error(), "EOF"), strings.Contains(err.Error(), "GOAWAY"), strings.Contains(err.Error(), "connection refused"):
		tr.restarting.Add(1)
	default:
		tr.keyFails.Add(1)
		tr.fail(fmt.Sprintf("node%d %s: %v", node+1, op, err))
	}
}

func (tr *traffic) fail(msg string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.failures) < 10 {
		tr.failures = append(tr.failures, msg)
	}
}

func (tr *traffic) finish(t *testing.T, transition string) {
	t.Helper()
	close(tr.stop)
	tr.wg.Wait()
	t.Logf("%s: %d reads, %d writes through 3 apiservers; %d failed while an apiserver restarted; %d failed otherwise",
		transition, tr.reads.Load(), tr.writes.Load(), tr.restarting.Load(), tr.keyFails.Load())
	if tr.keyFails.Load() > 0 && !tr.outside {
		t.Errorf("%s: requests failed for a reason other than a restart (a missing key?):\n%s", transition, strings.Join(tr.failures, "\n"))
	}
	// The secrets written are deleted, or every later rewrite and census
	// of the run would pay for them.
	kc := clients(t)[0]
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, n := range tr.created {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			err := kc.CoreV1().Secrets(n.Namespace).Delete(context.Background(), n.Name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete the traffic's secret %s: %v", n, err)
			}
		})
	}
	wg.Wait()
}

func etcdClient(t *testing.T) *clientv3.Client {
	t.Helper()
	c, err := sb.EtcdClient()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// checkStored asserts every secret in etcd is stored under want ("identity"
// or a prefix; "aescbc:v1:" matches any aescbc key) and returns the exact
// prefix seen.
func checkStored(t *testing.T, want string) string {
	t.Helper()
	return checkStoredAt(t, "/registry", want)
}

// checkStoredAt is checkStored for apiservers that run with
// --etcd-prefix=registry.
func checkStoredAt(t *testing.T, registry, want string) string {
	t.Helper()
	resp, err := etcdClient(t).Get(context.Background(), registry+"/secrets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, kv := range resp.Kvs {
		counts[cluster.StoragePrefix(kv.Value)]++
	}
	if len(counts) != 1 {
		t.Fatalf("secrets are stored under several prefixes: %v (want all under %s)", counts, want)
	}
	for p, n := range counts {
		if !strings.HasPrefix(p, want) {
			t.Fatalf("%d secrets under %s, want %s", n, p, want)
		}
		if n < secretCount {
			t.Fatalf("only %d secrets in etcd", n)
		}
		return p
	}
	return ""
}

// checkReadable reads every original secret through every node.
func checkReadable(t *testing.T) {
	t.Helper()
	for node, kc := range clients(t) {
		for ns := range namespaces {
			l, err := kc.CoreV1().Secrets(nsOf(ns)).List(context.Background(), metav1.ListOptions{})
			if err != nil {
				t.Fatalf("node%d: list %s: %v", node+1, nsOf(ns), err)
			}
			seen := 0
			for _, s := range l.Items {
				var i int
				if _, err := fmt.Sscanf(s.Name, "s-%05d", &i); err != nil {
					continue
				}
				seen++
				if !bytes.Equal(s.Data["v"], value(i)) {
					t.Fatalf("node%d: %s/%s changed", node+1, s.Namespace, s.Name)
				}
			}
			if seen != secretCount/namespaces {
				t.Fatalf("node%d: %d of %d secrets in %s", node+1, seen, secretCount/namespaces, nsOf(ns))
			}
		}
	}
}

func transition(t *testing.T, name string, want string, args ...string) string {
	t.Helper()
	return transitionEnv(t, nil, name, want, args...)
}

// restartOnly is the environment that keeps atrest on the restart path,
// as ssh.restartOnly: true in the settings does.
var restartOnly = []string{settings.EnvName("ssh.restartOnly") + "=true"}

// transitionEnv runs one transition with env added to atrest's
// environment, with traffic through every node, and logs what it cost:
// wall time, kube-apiserver starts (restarts and replacements, counted by
// each node's Docker engine), and requests refused or failed.
func transitionEnv(t *testing.T, env []string, name string, want string, args ...string) string {
	t.Helper()
	tr := startTraffic(t)
	start := time.Now()
	code, out := runEnv(t, env, args...)
	took := time.Since(start)
	tr.finish(t, name)
	if code != 0 {
		t.Fatalf("%s: exit %d:\n%s", name, code, out)
	}
	starts := startsSince(t, start)
	t.Logf("%s took %s", name, took.Round(time.Second))
	t.Logf("MEASURE %s: %s, %d kube-apiserver starts on %d nodes, %d requests refused or failed (%d reads, %d writes)",
		name, took.Round(time.Second), starts, len(sb.Nodes), tr.restarting.Load()+tr.keyFails.Load(), tr.reads.Load(), tr.writes.Load())
	prefix := checkStored(t, want)
	checkReadable(t)
	// Converged: the plan is empty.
	if code, out := run(t, append([]string{"plan"}, args[1:]...)...); code != 0 {
		t.Fatalf("%s: plan after the transition: exit %d:\n%s", name, code, out)
	}
	return prefix
}

// startsSince counts the kube-apiserver containers each node's Docker
// engine started since since: a restart, or a replacement taking over.
func startsSince(t *testing.T, since time.Time) int {
	t.Helper()
	n := 0
	until := time.Now()
	for i := range sb.Nodes {
		out, err := sb.Docker(context.Background(), i, "events", "--since", since.Format(time.RFC3339Nano), "--until", until.Format(time.RFC3339Nano),
			"--filter", "type=container", "--filter", "event=start", "--format", "{{.Actor.Attributes.name}}")
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range strings.Fields(out) {
			if strings.HasPrefix(name, "kube-apiserver") {
				n++
			}
		}
	}
	return n
}

func TestTransitions(t *testing.T) {
	kcs := clients(t)
	createSecrets(t, kcs[0])
	managed := clusterFile(t, "managed.yml", managedBlock)
	disabled := clusterFile(t, "disabled.yml", disabledBlock)
	custom := clusterFile(t, "custom.yml", customBlock)
	invalid := clusterFile(t, "invalid.yml", invalidBlock)

	code, out := run(t, "plan", "--config", managed)
	if code != 1 || !strings.Contains(out, "plan (enable)") {
		t.Fatalf("plan before enable: exit %d:\n%s", code, out)
	}
	// Restart path, as RKE does: every stage restarts every kube-apiserver.
	k1 := transitionEnv(t, restartOnly, "enable (restart path)", "aescbc:v1:", "apply", "--config", managed)
	k2 := transitionEnv(t, restartOnly, "rotate (restart path)", "aescbc:v1:", "rotate-key", "--config", managed)
	if k1 == k2 {
		t.Fatalf("rotate-key kept %s", k1)
	}

	// Bad input changes nothing, and says which field is wrong.
	before := nodeFiles(t)
	code, out = run(t, "apply", "--config", invalid)
	if code != 2 || !strings.Contains(out, "custom_config.resources[0].providers[0].aescbc.keys[0].secret: must decode to 16, 24 or 32 bytes") {
		t.Fatalf("invalid custom config: exit %d:\n%s", code, out)
	}
	if strings.Contains(out, "c2VjcmV0MTI=") {
		t.Fatal("the error shows key material")
	}
	if after := nodeFiles(t); after != before {
		t.Fatal("an invalid cluster.yml changed a node's provider file")
	}

	// From here the default: the first change sets the reload flag (each
	// node's one restart), later stages reload on every node at once.
	transition(t, "custom", "aescbc:v1:k-fw5hn", "apply", "--config", custom)
	code, out = run(t, "rotate-key", "--config", custom)
	if code != 2 || !strings.Contains(out, "custom_config") {
		t.Fatalf("rotate-key on a custom config: exit %d:\n%s", code, out)
	}
	transition(t, "back to managed", "aescbc:v1:", "apply", "--config", managed)
	k3 := transition(t, "rotate (reload path)", "aescbc:v1:", "rotate-key", "--config", managed)
	if k3 == k2 {
		t.Fatalf("rotate-key kept %s", k3)
	}
	transition(t, "disable", "identity", "apply", "--config", disabled)
	// Enable sets the provider file flag, so each node restarts once; every
	// later stage of it reloads.
	transition(t, "enable (reload path)", "aescbc:v1:", "apply", "--config", managed)
	transition(t, "disable again", "identity", "apply", "--config", disabled)

	code, out = run(t, "status", "--config", disabled)
	if code != 0 || !strings.Contains(out, "in sync") || !strings.Contains(out, "retired") {
		t.Fatalf("status: exit %d:\n%s", code, out)
	}
	code, out = run(t, "snapshot", "list")
	if code != 0 || !strings.Contains(out, "before rotate") || !strings.Contains(out, "before disable") {
		t.Fatalf("snapshot list: exit %d:\n%s", code, out)
	}
	// The newest is the one after the last change, the only after-snapshot
	// kept; every kept snapshot decrypts with the keys in Vault.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if !strings.Contains(lines[0], "after disable") || strings.Count(out, " after ") != 1 {
		t.Errorf("snapshot list: want the newest after the disable, and no other after-snapshot:\n%s", out)
	}
	for _, line := range lines {
		name, _, _ := strings.Cut(line, " ")
		code, rep := run(t, "snapshot", "verify", "--decrypt", name, "--config", disabled)
		if code != 0 || !strings.Contains(rep, name+": Restorable: ") || strings.Contains(rep, "failed objects:") {
			t.Errorf("snapshot verify --decrypt %s: exit %d:\n%s", name, code, rep)
		}
	}
	code, out = run(t, "status", "--config", disabled)
	if code != 0 || strings.Count(out, "Restorable") < len(lines) {
		t.Errorf("status after the drills: exit %d, want every snapshot Restorable:\n%s", code, out)
	}
	checkDocuments(t, disabled)
}

// nodeFiles is every node's provider file, for "nothing changed" checks.
func nodeFiles(t *testing.T) string {
	var b strings.Builder
	for _, n := range sb.Nodes {
		data, err := os.ReadFile(filepath.Join(n.Dir, "etc-kubernetes", "ssl", "encryption.yaml"))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		b.Write(data)
		b.WriteString("\x00")
	}
	return b.String()
}

// TestAdoption takes over a cluster encrypted RKE's way: the provider file
// on the nodes, the key in no Vault. atrest imports the key as the primary
// without touching a node, then rotates it.
func TestAdoption(t *testing.T) {
	ctx := context.Background()
	createSecrets(t, clients(t)[0]) // when run alone; a no-op after the others
	rke := cluster.Key{Name: "k-rke01", Provider: cluster.AESCBC, Secret: bytes.Repeat([]byte{7}, 32)}
	file, err := cluster.ManagedConfig{Keys: []cluster.Key{rke}}.Render()
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range sb.Nodes {
		if err := os.WriteFile(filepath.Join(n.Dir, "etc-kubernetes", "ssl", "encryption.yaml"), file, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := sb.RecreateAPIServer(ctx, i, sandbox.ProviderConfigFlag); err != nil {
			t.Fatal(err)
		}
	}
	// RKE rewrites every secret after deploying the key.
	for _, kc := range clients(t)[:1] {
		for ns := range namespaces {
			l, err := kc.CoreV1().Secrets(nsOf(ns)).List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for i := range l.Items {
				if _, err := kc.CoreV1().Secrets(nsOf(ns)).Update(ctx, &l.Items[i], metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// Traffic secrets in the default namespaces too.
	l, err := clients(t)[0].CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range l.Items {
		_, _ = clients(t)[0].CoreV1().Secrets(l.Items[i].Namespace).Update(ctx, &l.Items[i], metav1.UpdateOptions{})
	}
	checkStored(t, rke.Prefix())

	managed := clusterFile(t, "managed.yml", managedBlock)
	before := nodeFiles(t)
	code, out := run(t, "apply", "--config", managed)
	// The key is imported first (it is on the nodes only), then adopted.
	if code != 0 || !strings.Contains(out, "imported it before anything else") || !strings.Contains(out, "key=k-rke01") ||
		!strings.Contains(out, "adopt k-rke01 as the primary key") {
		t.Fatalf("adoption: exit %d:\n%s", code, out)
	}
	if strings.Contains(out, "deploy") || nodeFiles(t) != before {
		t.Fatalf("adoption changed the nodes:\n%s", out)
	}
	if strings.Contains(out, base64.StdEncoding.EncodeToString(rke.Secret)) {
		t.Fatal("adoption output shows key material")
	}
	code, out = run(t, "status", "--config", managed)
	if code != 0 || !strings.Contains(out, "key k-rke01: aescbc, primary") || !strings.Contains(out, "in sync") {
		t.Fatalf("status after adoption: exit %d:\n%s", code, out)
	}
	next := transition(t, "rotate after adoption", "aescbc:v1:", "rotate-key", "--config", managed)
	if next == rke.Prefix() {
		t.Fatal("rotation kept RKE's key")
	}
}

// TestGitSource applies what the sandbox's Git repository says, with no
// --config: a commit enabling encryption, then one with
// rotate_encryption_key: true, which rotates once for that commit only.
func TestGitSource(t *testing.T) {
	ctx := context.Background()
	createSecrets(t, clients(t)[0]) // when run alone; a no-op after the others
	base, err := os.ReadFile(sb.ClusterYML)
	if err != nil {
		t.Fatal(err)
	}
	enabled := strings.Replace(string(base), disabledBlock, managedBlock, 1)
	if _, err := sb.Commit(ctx, "Enable encryption at rest", map[string]string{"cluster.yml": enabled}); err != nil {
		t.Fatal(err)
	}
	code, out := run(t, "apply")
	if code != 0 || !strings.Contains(out, "complete") && !strings.Contains(out, "nothing to do") {
		t.Fatalf("apply from Git: exit %d:\n%s", code, out)
	}
	first := checkStored(t, "aescbc:v1:")

	rotate := strings.Replace(enabled, "cluster_name: atrest-sandbox\n", "cluster_name: atrest-sandbox\nrotate_encryption_key: true\n", 1)
	if _, err := sb.Commit(ctx, "Rotate the key", map[string]string{"cluster.yml": rotate}); err != nil {
		t.Fatal(err)
	}
	code, out = run(t, "apply")
	if code != 0 || !strings.Contains(out, "generate a new aescbc key") {
		t.Fatalf("apply of rotate_encryption_key: exit %d:\n%s", code, out)
	}
	second := checkStored(t, "aescbc:v1:")
	if second == first {
		t.Fatalf("rotate_encryption_key kept %s", first)
	}
	// The same commit again: its rotation was served.
	code, out = run(t, "apply")
	if code != 0 || !strings.Contains(out, "nothing to do") {
		t.Fatalf("second apply of the same commit: exit %d:\n%s", code, out)
	}
	if checkStored(t, "aescbc:v1:") != second {
		t.Fatal("the same commit rotated twice")
	}
}
