//go:build sandbox

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/daemon"
	"github.com/atrest-io/atrest/internal/leaktest"
	"github.com/atrest-io/atrest/keystore/keystoretest"
)

// loadSecrets makes the rewrite long enough to kill the daemon in it:
// with 3,000 the kill came after 15 objects.
const loadSecrets = 1000

// daemonProc is a running `atrest run`.
type daemonProc struct {
	cmd        *exec.Cmd
	metricsURL string
	webhookURL string
	mu         sync.Mutex
	out        bytes.Buffer
	done       chan struct{}
	exit       error
}

// startDaemon starts `atrest run` on the sandbox, polling every interval.
func startDaemon(t *testing.T, interval string, secretFile string) *daemonProc {
	t.Helper()
	return startDaemonArgs(t, interval, secretFile, "--daemon-max-backoff", "20s")
}

// startDaemonArgs is startDaemon with more arguments.
func startDaemonArgs(t *testing.T, interval string, secretFile string, args ...string) *daemonProc {
	t.Helper()
	p := &daemonProc{done: make(chan struct{})}
	maddr, waddr := freeAddr(t), freeAddr(t)
	p.metricsURL, p.webhookURL = "http://"+maddr, "http://"+waddr+"/hook"
	p.cmd = exec.Command(atrest, append([]string{"run", "--settings", sb.SettingsFile, "--git-interval", interval,
		"--listen-metrics", maddr, "--listen-webhook", waddr, "--listen-webhook-secret-file", secretFile}, args...)...)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out.Write(sc.Bytes())
			p.out.WriteByte('\n')
			p.mu.Unlock()
		}
		r.Close()
	}()
	go func() {
		p.exit = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("atrest run (pid %d) said:\n%s", p.cmd.Process.Pid, p.logs())
		}
		noteOutput(t, p.logs())
	})
	eventually(t, "the daemon serves /healthz", 30*time.Second, func() (bool, string) {
		code, body := p.get("/healthz")
		return code == 200, body
	})
	return p
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (p *daemonProc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *daemonProc) get(path string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(p.metricsURL + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (p *daemonProc) metrics(t *testing.T) string {
	t.Helper()
	code, body := p.get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	noteOutput(t, body)
	return body
}

// waitLog waits for a log line containing every part.
func (p *daemonProc) waitLog(t *testing.T, timeout time.Duration, parts ...string) {
	t.Helper()
	eventually(t, fmt.Sprintf("the daemon logs %q", parts), timeout, func() (bool, string) {
		for line := range strings.SplitSeq(p.logs(), "\n") {
			all := true
			for _, part := range parts {
				all = all && strings.Contains(line, part)
			}
			if all {
				return true, ""
			}
		}
		return false, ""
	})
}

// signal sends sig and waits for the exit.
func (p *daemonProc) signal(t *testing.T, sig syscall.Signal, timeout time.Duration) error {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
		return p.exit
	case <-time.After(timeout):
		t.Fatalf("atrest run did not exit within %s of %s", timeout, sig)
		return nil
	}
}

func (p *daemonProc) webhook(t *testing.T, body []byte, sig string) int {
	t.Helper()
	req, err := http.NewRequest("POST", p.webhookURL, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-GitHub-Event", "push")
	if sig != "" {
		req.Header.Set(daemon.HeaderGitHubSignature, sig)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// eventually polls f twice a second until it holds or timeout passes.
func eventually(t *testing.T, what string, timeout time.Duration, f func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, detail := f()
		if ok {
			return
		}
		if detail != "" {
			last = detail
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s; last: %s", timeout, what, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// storedAs counts the secrets in etcd by storage prefix.
func storedAs(t *testing.T) map[string]int {
	t.Helper()
	resp, err := etcdClient(t).Get(context.Background(), "/registry/secrets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, kv := range resp.Kvs {
		counts[cluster.StoragePrefix(kv.Value)]++
	}
	return counts
}

// converged waits until every secret is stored under want (a prefix, as
// checkStored takes it) other than not, and returns the prefix.
func converged(t *testing.T, what, want, not string, timeout time.Duration) string {
	t.Helper()
	var got string
	eventually(t, what, timeout, func() (bool, string) {
		counts := storedAs(t)
		if len(counts) != 1 {
			return false, fmt.Sprint(counts)
		}
		for p := range counts {
			got = p
		}
		return strings.HasPrefix(got, want) && (not == "" || got != not), fmt.Sprint(counts)
	})
	checkReadable(t)
	return got
}

func commit(t *testing.T, msg string, files map[string]string) string {
	t.Helper()
	h, err := sb.Commit(context.Background(), msg, files)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func createLoad(t *testing.T) {
	t.Helper()
	kc := clients(t)[0]
	ctx := context.Background()
	const ns = "daemon-load"
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	var mu sync.Mutex
	var firstErr error
	for i := range loadSecrets {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			_, err := kc.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("load-%05d", i)},
				Data:       map[string][]byte{"v": []byte(strings.Repeat("l", 512))},
			}, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				mu.Lock()
				firstErr = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
}

// TestDaemon drives `atrest run` through Git commits: enable, a scheduled
// rotation, a custom config with a SIGKILL in its rewrite, an invalid
// commit, and a disable triggered by a signed webhook.
func TestDaemon(t *testing.T) {
	createSecrets(t, clients(t)[0]) // when run alone; a no-op after the others
	createLoad(t)
	base, err := os.ReadFile(sb.ClusterYML)
	if err != nil {
		t.Fatal(err)
	}
	yml := func(block string) string { return strings.Replace(string(base), disabledBlock, block, 1) }
	secretFile := filepath.Join(t.TempDir(), "webhook-secret")
	secret := []byte("e2e-webhook-secret-0123456789abcdef")
	if err := os.WriteFile(secretFile, append(secret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	watch := leaktest.New(t)
	var said []string // daemon logs, metrics and status outputs, checked for keys at the end

	// Start from encryption off, whatever the tests before left.
	commit(t, "Disable encryption at rest", map[string]string{"cluster.yml": yml(disabledBlock), "atrest.yaml": "snapshots:\n  retention: 5\n"})
	// Every daemon here records Kubernetes events: step 8 reads them.
	events := []string{"--daemon-max-backoff", "20s", "--kubernetes-events"}
	d := startDaemonArgs(t, "5s", secretFile, events...)
	converged(t, "the cluster to converge to no encryption", "identity", "", 5*time.Minute)

	// 1. enabled: true converges within a few polls.
	start := time.Now()
	rev := commit(t, "Enable encryption at rest", map[string]string{"cluster.yml": yml(managedBlock)})
	enabledRev := rev
	first := converged(t, "enabled: true to converge", "aescbc:v1:", "", 5*time.Minute)
	t.Logf("enable converged %s after the commit", time.Since(start).Round(time.Second))
	d.waitLog(t, time.Minute, "transition complete", rev)
	d.waitLog(t, time.Minute, "step=", "revision="+rev, "transition=")

	// 1b. Drift: node3's file edited by hand (identity first: new secrets
	// would be stored in plain) is brought back.
	deployed := nodeFiles(t)
	handEdit(t, 2)
	d.waitLog(t, time.Minute, "drift: the nodes do not run what atrest deployed")
	eventually(t, "node3's file to be restored", 3*time.Minute, func() (bool, string) {
		return nodeFiles(t) == deployed, ""
	})
	eventually(t, "the drift to be corrected (plan: nothing to do)", 3*time.Minute, func() (bool, string) {
		code, out := run(t, "plan")
		return code == 0, out
	})
	converged(t, "the cluster after the drift", first, "", time.Minute)

	// 2. A schedule of @every 30s rotates the key, and the next is reported.
	start = time.Now()
	commit(t, "Rotate every 30s", map[string]string{"atrest.yaml": "rotation:\n  schedule: \"@every 30s\"\nsnapshots:\n  retention: 5\n"})
	second := converged(t, "a scheduled rotation", "aescbc:v1:", first, 5*time.Minute)
	t.Logf("scheduled rotation %s -> %s %s after the commit", first, second, time.Since(start).Round(time.Second))
	eventually(t, "metrics to report the next rotation", time.Minute, func() (bool, string) {
		m := d.metrics(t)
		return strings.Contains(m, "atrest_rotation_next_timestamp_seconds ") && !strings.Contains(m, "atrest_scheduled_rotations_total 0"), grepLines(m, "rotation")
	})
	_, status := run(t, "status")
	said = append(said, status)
	if !strings.Contains(status, `rotation schedule "@every 30s", next rotation `) {
		t.Fatalf("status does not report the next rotation:\n%s", status)
	}
	// Stop rotating before the next one starts a transition of its own.
	commit(t, "No more scheduled rotation", map[string]string{"atrest.yaml": "snapshots:\n  retention: 5\n"})
	d.waitLog(t, time.Minute, "no rotation schedule")
	eventually(t, "the cluster to settle after the schedule ends", 5*time.Minute, func() (bool, string) {
		code, out := run(t, "plan")
		return code == 0, out
	})
	converged(t, "the keys to settle", "aescbc:v1:", "", time.Minute)

	// 3. A custom config; SIGKILL in its rewrite; a restart resumes it.
	rev = commit(t, "Custom aescbc config", map[string]string{"cluster.yml": yml(customBlock)})
	d.waitLog(t, 5*time.Minute, "step=rewrite", "revision="+rev)
	var inFlight string
	eventually(t, "metrics to show the rewrite in flight", 10*time.Second, func() (bool, string) {
		inFlight = d.metrics(t)
		return strings.Contains(inFlight, `atrest_transition_step{step="rewrite",transition=`), grepLines(inFlight, "atrest_transition", "atrest_rewrite")
	})
	eventually(t, "metrics to show the rewrite's progress", 10*time.Second, func() (bool, string) {
		inFlight = d.metrics(t)
		return strings.Contains(inFlight, `atrest_rewrite_listed_objects{resource="secrets"}`) &&
			strings.Contains(inFlight, `atrest_rewrite_updated_objects{resource="secrets"}`), grepLines(inFlight, "atrest_rewrite")
	})
	said = append(said, inFlight)
	err = d.signal(t, syscall.SIGKILL, 30*time.Second)
	t.Logf("killed the daemon in the rewrite (%v); secrets stored as %v", err, storedAs(t))
	said = append(said, d.logs())
	d = startDaemonArgs(t, "5s", secretFile, events...)
	d.waitLog(t, time.Minute, "resuming the transition in the journal")
	converged(t, "the custom config to converge after the restart", "aescbc:v1:k-fw5hn", "", 5*time.Minute)

	// 4. An invalid commit is reported and changes nothing.
	bad := commit(t, "An invalid custom config", map[string]string{"cluster.yml": yml(invalidBlock)})
	d.waitLog(t, time.Minute, "revision refused", bad)
	eventually(t, "metrics to report the refused revision", 30*time.Second, func() (bool, string) {
		return strings.Contains(d.metrics(t), "atrest_revision_refused 1"), ""
	})
	// status from Git names the invalid field; from the last good file it
	// also shows what the daemon says of the refused revision.
	code, status := run(t, "status")
	said = append(said, status)
	if code != 2 || !strings.Contains(status, "aescbc.keys[0].secret") {
		t.Errorf("status with an invalid revision in Git: exit %d, want 2 naming the field:\n%s", code, status)
	}
	_, status = run(t, "status", "--config", clusterFile(t, "cluster.yml", customBlock))
	said = append(said, status)
	if !strings.Contains(status, "refused a newer revision: "+bad) {
		t.Errorf("status does not report the refused revision:\n%s", status)
	}
	time.Sleep(10 * time.Second) // two more polls
	converged(t, "nothing to change after the invalid commit", "aescbc:v1:k-fw5hn", "", 10*time.Second)

	// 4b. The attacker who can push but not write Vault forces main back
	// to older history: the commit that enabled managed keys, long since
	// replaced by the custom config. Refused as not descending from the
	// revision in force that Vault records; nothing changes; main put
	// back lifts the refusal.
	if err := sb.ForcePush(context.Background(), enabledRev); err != nil {
		t.Fatal(err)
	}
	d.waitLog(t, time.Minute, "revision refused", enabledRev, "NotDescendant", "git.allowRevision")
	code, status = run(t, "plan")
	said = append(said, status)
	if code != 2 || !strings.Contains(status, "NotDescendant") {
		t.Errorf("plan from the rolled-back Git: exit %d, want 2 saying NotDescendant:\n%s", code, status)
	}
	time.Sleep(10 * time.Second) // two more polls
	converged(t, "nothing to change after the rollback", "aescbc:v1:k-fw5hn", "", 10*time.Second)
	if err := sb.ForcePush(context.Background(), bad); err != nil {
		t.Fatal(err)
	}

	// 5. SIGTERM: a graceful stop.
	if err := d.signal(t, syscall.SIGTERM, 2*time.Minute); err != nil {
		t.Fatalf("atrest run after SIGTERM: %v\n%s", err, d.logs())
	}
	said = append(said, d.logs())

	// 6. With a long interval, only the webhook polls: a bad signature is
	// refused and changes nothing; a good one applies the next commit.
	// A new daemon knows no last good revision: the invalid one at the head
	// leaves it not ready, changing nothing, until a good one comes.
	d = startDaemon(t, "1h", secretFile)
	d.waitLog(t, time.Minute, "revision refused", bad)
	if code, body := d.get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with only an invalid revision: %d %s", code, body)
	}
	good := commit(t, "Disable encryption at rest", map[string]string{"cluster.yml": yml(disabledBlock)})
	body := []byte(fmt.Sprintf(`{"ref":"refs/heads/main","after":%q}`, good))
	if code := d.webhook(t, body, daemon.Sign([]byte("not the shared secret"), body)); code != http.StatusUnauthorized {
		t.Fatalf("webhook with a bad signature: %d, want 401", code)
	}
	if code := d.webhook(t, body, ""); code != http.StatusUnauthorized {
		t.Fatalf("webhook without a signature: %d, want 401", code)
	}
	time.Sleep(5 * time.Second)
	if m := d.metrics(t); !strings.Contains(m, `atrest_webhook_requests_total{result="bad_signature"} 1`) ||
		!strings.Contains(m, `atrest_webhook_requests_total{result="no_signature"} 1`) || strings.Contains(m, good) {
		t.Fatalf("after refused webhooks: %s", grepLines(m, "webhook", "revision_info"))
	}
	converged(t, "nothing to change after refused webhooks", "aescbc:v1:k-fw5hn", "", 10*time.Second)
	start = time.Now()
	if code := d.webhook(t, body, daemon.Sign(secret, body)); code != http.StatusAccepted {
		t.Fatalf("webhook with a good signature: %d, want 202", code)
	}
	d.waitLog(t, 30*time.Second, "new revision in force", good)

	// 7. SIGTERM in the rewrite: the step (and its verify) finish and are
	// journaled, the lock is released, the daemon exits 0; the next one
	// carries on at once.
	d.waitLog(t, 5*time.Minute, "step=rewrite", "revision="+good)
	if m := d.metrics(t); !strings.Contains(m, `atrest_webhook_requests_total{result="accepted"} 1`) {
		t.Errorf("after a good webhook: %s", grepLines(m, "webhook"))
	}
	if err := d.signal(t, syscall.SIGTERM, 3*time.Minute); err != nil {
		t.Fatalf("atrest run after SIGTERM in the rewrite: %v", err)
	}
	said = append(said, d.logs())
	if !strings.Contains(d.logs(), "stopped between steps for shutdown") {
		t.Errorf("the daemon did not stop between steps:\n%s", d.logs())
	}
	_, status = run(t, "status")
	said = append(said, status)
	if strings.Contains(status, "  running: ") || !strings.Contains(status, "  done: rewrite every object of secrets") {
		t.Errorf("after a graceful stop, the journal should hold the rewrite as done and nothing running:\n%s", status)
	}
	// Drilled every minute from here, so that a key deleted from Vault by
	// hand (7b) shows within minutes, not the default day.
	d = startDaemonArgs(t, "5s", secretFile, append(events, "--snapshots-drill-interval", "1m")...)
	d.waitLog(t, time.Minute, "resuming the transition in the journal")
	if strings.Contains(d.logs(), "another transition holds the lock") {
		t.Errorf("the graceful stop left the lock held:\n%s", d.logs())
	}
	converged(t, "enabled: false to converge after the webhook", "identity", "", 5*time.Minute)
	t.Logf("disable converged %s after the webhook (with a graceful restart in it)", time.Since(start).Round(time.Second))

	// 7b. Every kept snapshot is drilled restorable. A key one of them
	// needs, deleted from Vault by hand, fails its drill and stalls the
	// daemon; undeleted, the next drill lifts the stall by itself.
	restorable := func(m string) (all bool, lines string) {
		lines = grepLines(m, "atrest_snapshot_restorable{")
		return lines != "" && !strings.Contains(lines, "} 0"), lines
	}
	eventually(t, "every kept snapshot to be drilled restorable", 2*time.Minute, func() (bool, string) {
		return restorable(d.metrics(t))
	})
	_, list := run(t, "snapshot", "list")
	victim, needs := "", ""
	for _, line := range strings.Split(list, "\n") {
		name, _, _ := strings.Cut(line, " ")
		if _, rest, ok := strings.Cut(line, "keys ["); ok && !strings.HasPrefix(rest, "]") {
			victim, _, _ = strings.Cut(strings.Split(rest, "]")[0], " ")
			needs = name
			break
		}
	}
	if victim == "" {
		t.Fatalf("no kept snapshot needs a key:\n%s", list)
	}
	kv := vaultClient(t).KVv2("secret")
	keyPath := "atrest/atrest-sandbox/keys/" + victim
	meta, err := kv.GetMetadata(context.Background(), keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(context.Background(), keyPath); err != nil {
		t.Fatal(err)
	}
	undeleted := false
	defer func() {
		if !undeleted {
			_ = kv.Undelete(context.Background(), keyPath, []int{meta.CurrentVersion})
		}
	}()
	// The snapshot was proven before the deletion: the stall waits for its
	// next drill, due a minute after that proof.
	eventually(t, "the daemon to stall on "+needs+" without "+victim, 4*time.Minute, func() (bool, string) {
		m := d.metrics(t)
		return strings.Contains(m, `atrest_snapshot_restorable{snapshot="`+needs+`"} 0`) &&
			strings.Contains(m, `atrest_stalled{reason="SnapshotNotRestorable"} 1`), grepLines(m, "atrest_snapshot_restorable", "atrest_stalled")
	})
	_, status = run(t, "status")
	said = append(said, status)
	if !strings.Contains(status, "STALLED (SnapshotNotRestorable)") || !strings.Contains(status, needs) || !strings.Contains(status, "cannot restore /registry/secrets/") {
		t.Errorf("status with %s gone from Vault:\n%s", victim, status)
	}
	if code, out := run(t, "snapshot", "verify", "--decrypt", needs); code != 1 || !strings.Contains(out, "NotRestorable") || !strings.Contains(out, victim) {
		t.Errorf("snapshot verify --decrypt %s without %s: exit %d:\n%s", needs, victim, code, out)
	}
	if err := kv.Undelete(context.Background(), keyPath, []int{meta.CurrentVersion}); err != nil {
		t.Fatal(err)
	}
	undeleted = true
	eventually(t, "the stall to lift once "+victim+" is back", 2*time.Minute, func() (bool, string) {
		m := d.metrics(t)
		all, lines := restorable(m)
		return all && !strings.Contains(m, "atrest_stalled{"), lines + grepLines(m, "atrest_stalled")
	})

	// 8. The metrics the issue lists, once the cycle has recorded itself.
	wants := []string{
		`atrest_reconcile_total{result="changed"}`, `atrest_reconcile_duration_seconds_count{result="changed"}`,
		`atrest_revision_info{ref="refs/heads/main",revision="` + good + `"} 1`,
		`atrest_node_config_deployed{node=`, "atrest_nodes_config_agree 1",
		`atrest_census_objects{resource="secrets",stored_as="identity"}`,
		"atrest_snapshot_age_seconds ", "atrest_rotation_age_seconds ",
		"atrest_git_polls_total{result=", "atrest_git_poll_duration_seconds_count",
		"atrest_git_fetches_total", "atrest_git_fetch_duration_seconds_count",
		`atrest_webhook_requests_total{result="bad_signature"} 0`, "atrest_suspended 0", "atrest_consecutive_failures 0",
		"atrest_revision_refused 0",
	}
	var m string
	eventually(t, "/metrics to show the converged cluster", 2*time.Minute, func() (bool, string) {
		m = d.metrics(t)
		var missing []string
		for _, want := range wants {
			if !strings.Contains(m, want) {
				missing = append(missing, want)
			}
		}
		return len(missing) == 0, fmt.Sprintf("missing %q", missing)
	})
	said = append(said, m)

	// The Kubernetes events of all that, on the canary secret, for
	// `kubectl get events -n kube-system`.
	var reasons map[string]string
	eventually(t, "the daemons' events on the canary", time.Minute, func() (bool, string) {
		l, err := clients(t)[0].CoreV1().Events("kube-system").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=atrest-canary"})
		if err != nil {
			return false, err.Error()
		}
		reasons = map[string]string{}
		for _, e := range l.Items {
			if e.Source.Component == "atrest" {
				reasons[e.Reason] += e.Type + ": " + e.Message + "\n"
			}
		}
		for _, want := range []string{"TransitionStarted", "StepDone", "TransitionCompleted", "DriftCorrected", "Stalled", "DrillFailed"} {
			if reasons[want] == "" {
				return false, fmt.Sprintf("no %s event in %v", want, reasons)
			}
		}
		return true, ""
	})
	if !strings.Contains(reasons["Stalled"], "SnapshotNotRestorable") || !strings.Contains(reasons["DrillFailed"], needs) ||
		!strings.HasPrefix(reasons["Stalled"], "Warning: ") || !strings.HasPrefix(reasons["TransitionCompleted"], "Normal: ") {
		t.Errorf("events:\n%v", reasons)
	}
	for _, r := range reasons {
		said = append(said, r)
	}

	if err := d.signal(t, syscall.SIGTERM, 2*time.Minute); err != nil {
		t.Fatalf("atrest run after SIGTERM: %v", err)
	}
	said = append(said, d.logs())

	// No key the daemon handled shows in anything it said.
	for _, k := range sandboxKeys(t) {
		watch.Key(k)
	}
	for _, s := range said {
		_, _ = watch.Write([]byte(s))
	}
}

// handEdit rewrites node i's provider file with its chain's providers in
// reverse order, as a hand edit (or another tool) would.
func handEdit(t *testing.T, i int) {
	t.Helper()
	path := filepath.Join(sb.Nodes[i].Dir, "etc-kubernetes", "ssl", "encryption.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := cluster.ParseEncryptionConfig(path, "", data, "")
	if err != nil {
		t.Fatal(err)
	}
	chains := cfg.Chains()
	for r, c := range chains {
		slices.Reverse(c)
		chains[r] = c
	}
	keys := map[string]cluster.Key{}
	for _, k := range cfg.Keys() {
		keys[k.Name] = k
	}
	edited, err := cluster.RenderChains(chains, func(n string) (cluster.Key, error) { return keys[n], nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, edited, 0o600); err != nil {
		t.Fatal(err)
	}
}

func grepLines(s string, subs ...string) string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		for _, sub := range subs {
			if strings.Contains(line, sub) {
				out = append(out, line)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// sandboxKeys reads every key of the sandbox cluster's keyring from Vault.
func sandboxKeys(t *testing.T) []cluster.Key {
	t.Helper()
	keys, err := keystoretest.Keys(context.Background(), sb, "atrest-sandbox")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) < 3 {
		t.Fatalf("only %d keys in the keyring after enable, rotation and custom", len(keys))
	}
	return keys
}
