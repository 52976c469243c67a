//go:build sandbox

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests of this file inject faults for real: a config kube-apiserver
// refuses at runtime, and atrest killed with SIGKILL at points of a
// container swap and of a provider-file write. In every case every
// kube-apiserver serves at the end and every secret reads through every
// node.

// kmsBlock is a custom config kube-apiserver accepts on paper and refuses
// at runtime: its KMS plugin's socket is there, as the preflight checks,
// but what listens on it (notAPlugin) speaks no KMS, so kube-apiserver
// never becomes ready.
var kmsBlock = kmsConfig("unix:///etc/kubernetes/atrest-not-a-kms-plugin.sock")

// noPluginBlock names a KMS plugin socket that no node has: the
// preflight refuses it before any change.
var noPluginBlock = kmsConfig("unix:///etc/kubernetes/atrest-no-such-kms-plugin.sock")

func kmsConfig(endpoint string) string {
	return strings.Replace(customBlock, "            providers:\n", `            providers:
              - kms:
                  apiVersion: v2
                  name: missing-plugin
                  endpoint: `+endpoint+`
                  timeout: 3s
`, 1)
}

// notAPlugin listens on kmsBlock's socket on every node (in its
// /etc/kubernetes, which its kube-apiserver mounts), closing every
// connection at once, until the test ends.
func notAPlugin(t *testing.T) {
	t.Helper()
	for _, n := range sb.Nodes {
		sock := filepath.Join(n.Dir, "etc-kubernetes", "atrest-not-a-kms-plugin.sock")
		_ = os.Remove(sock)
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
}

// apiserverStarts is every node's kube-apiserver container id and start
// time: it changes at each restart and each replacement.
func apiserverStarts(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var b strings.Builder
	for i := range sb.Nodes {
		out, err := sb.Docker(ctx, i, "inspect", "--format", "{{.Id}} {{.State.StartedAt}}", "kube-apiserver")
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(out)
	}
	return b.String()
}

// TestRefusedConfigStalls: a config kube-apiserver refuses at runtime is
// tried MaxStepFailures (3) times, each rolled back, and then stalls: no
// more restarts, the reason shown, until a changed input or resume.
func TestRefusedConfigStalls(t *testing.T) {
	createSecrets(t, clients(t)[0])
	custom := clusterFile(t, "custom.yml", customBlock)
	setUp(t, "aescbc:v1:k-fw5hn", custom)
	// A plugin that is not there at all is refused by the preflight,
	// before any change and without counting towards a stall.
	before := apiserverStarts(t)
	code, out := run(t, "apply", "--config", clusterFile(t, "no-plugin.yml", noPluginBlock))
	if code != 2 || !strings.Contains(out, "plan: preflight:") || strings.Contains(out, "StepFailedRepeatedly") || apiserverStarts(t) != before {
		t.Fatalf("apply with no KMS plugin: exit %d, restarted %v:\n%s", code, apiserverStarts(t) != before, out)
	}
	for _, n := range sb.Nodes {
		if !strings.Contains(out, "node "+n.Name+": KMS socket unix:///etc/kubernetes/atrest-no-such-kms-plugin.sock: no socket at") {
			t.Errorf("the refusal does not name node %s's missing socket:\n%s", n.Name, out)
		}
	}
	notAPlugin(t)
	kms := clusterFile(t, "kms.yml", kmsBlock)
	// Without restarts: every node reloads the file, its kube-apiserver
	// refuses it (the new KMS plugin fails its health check), the previous
	// file goes back on every node, and the refusal stalls at once.
	before = apiserverStarts(t)
	code, out = run(t, "apply", "--config", kms)
	if code != 2 || !strings.Contains(out, "stalled (ConfigRefused)") || !strings.Contains(out, "kube-apiserver says") || apiserverStarts(t) != before {
		t.Fatalf("apply of a config kube-apiserver refuses on reload: exit %d, restarted %v:\n%s", code, apiserverStarts(t) != before, out)
	}
	checkStored(t, "aescbc:v1:k-fw5hn")
	checkReadable(t)
	if code, out := run(t, "resume", "--config", kms); code != 0 || !strings.Contains(out, "lifted the stall ConfigRefused") {
		t.Fatalf("resume: exit %d:\n%s", code, out)
	}
	// On the restart path each attempt restarts a node and rolls it back;
	// the same step failing three times stalls.
	restarted := 0
	for i := 1; i <= 5; i++ {
		before := apiserverStarts(t)
		code, out := runEnv(t, restartOnly, "apply", "--config", kms, "--ssh-ready-timeout", "20s")
		if code != 2 {
			t.Fatalf("attempt %d: exit %d:\n%s", i, code, out)
		}
		stalled := strings.Contains(out, "stalled (StepFailedRepeatedly)")
		if stalled != (i >= 3) {
			t.Fatalf("attempt %d: stalled %v:\n%s", i, stalled, out)
		}
		if apiserverStarts(t) != before {
			restarted++
		}
		if i > 3 && !strings.Contains(out, "atrest resume") {
			t.Fatalf("attempt %d: the stall does not say how to lift it:\n%s", i, out)
		}
		t.Logf("attempt %d: restarts so far %d", i, restarted)
	}
	if restarted != 3 {
		t.Fatalf("a refused config restarted kube-apiserver in %d of 5 attempts, want 3 then none", restarted)
	}
	checkStored(t, "aescbc:v1:k-fw5hn")
	checkReadable(t)
	code, out = run(t, "status", "--config", kms)
	if code != 0 || !strings.Contains(out, "STALLED (StepFailedRepeatedly)") {
		t.Fatalf("status: exit %d:\n%s", code, out)
	}
	code, out = run(t, "status", "--config", kms, "-o", "json")
	var st struct {
		Stall struct{ Reason string } `json:"stall"`
	}
	if err := json.Unmarshal([]byte(jsonOf(out)), &st); code != 0 || err != nil || st.Stall.Reason != "StepFailedRepeatedly" {
		t.Fatalf("status -o json: exit %d, %v:\n%s", code, err, out)
	}
	noMaterial(t, out, fw5hnSecret)
	// resume lifts it (the next apply would try again); the operator
	// fixes the cause by going back to the config that works.
	if code, out := run(t, "resume", "--config", kms); code != 0 || !strings.Contains(out, "lifted the stall StepFailedRepeatedly") {
		t.Fatalf("resume: exit %d:\n%s", code, out)
	}
	if code, out := run(t, "apply", "--config", custom); code != 0 {
		t.Fatalf("apply the working config: exit %d:\n%s", code, out)
	}
	checkStored(t, "aescbc:v1:k-fw5hn")
}

// jsonOf is the JSON document in out, past the log lines before it.
func jsonOf(out string) string {
	if i := strings.Index(out, "\n{"); i >= 0 && !strings.HasPrefix(out, "{") {
		return out[i+1:]
	}
	return out
}

// runEnv runs atrest against the sandbox with env added; a process killed
// by a signal has exit code -1.
func runEnv(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, atrest, append(args, "--settings", sb.SettingsFile)...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	noteOutput(t, out.String())
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String()
	}
	if err != nil {
		t.Fatalf("atrest %v: %v", args, err)
	}
	return 0, out.String()
}

// leftovers lists the kube-apiserver containers of an interrupted swap.
func leftovers(t *testing.T) []string {
	t.Helper()
	var found []string
	for i := range sb.Nodes {
		out, err := sb.Docker(context.Background(), i, "ps", "-a", "--format", "{{.Names}} {{.State}}")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if strings.HasPrefix(line, "kube-apiserver-atrest") || (strings.HasPrefix(line, "kube-apiserver ") && !strings.HasSuffix(line, " running")) {
				found = append(found, sb.Nodes[i].Name+": "+line)
			}
		}
	}
	return found
}

// crash runs apply with atrest killing itself (SIGKILL) at point, then
// frees the lock it left with `atrest unlock`, as an operator would.
func crash(t *testing.T, point, config string) {
	t.Helper()
	code, out := runEnv(t, []string{"ATREST_FAILPOINT=" + point}, "apply", "--config", config)
	if code != -1 || !strings.Contains(out, "failpoint "+point) {
		t.Fatalf("apply killed at %s: exit %d:\n%s", point, code, out)
	}
	code, out = run(t, "apply", "--config", config)
	if code != 2 || !strings.Contains(out, "held by") {
		t.Fatalf("apply while the killed one's lock is held: exit %d:\n%s", code, out)
	}
	code, out = run(t, "unlock", "--config", config)
	if code != 0 || !strings.Contains(out, "no longer runs on this host") || !strings.Contains(out, "lock freed") {
		t.Fatalf("unlock after a kill: exit %d:\n%s", code, out)
	}
}

// recovered applies config after a crash and checks that every node
// serves, nothing of the swap is left, and every secret reads everywhere.
func recovered(t *testing.T, config, want string) {
	t.Helper()
	start := time.Now()
	if code, out := run(t, "apply", "--config", config); code != 0 {
		t.Fatalf("apply after a crash: exit %d:\n%s", code, out)
	}
	t.Logf("recovered and converged in %s", time.Since(start).Round(time.Second))
	if l := leftovers(t); len(l) > 0 {
		t.Fatalf("left after recovery: %v", l)
	}
	checkStored(t, want)
	checkReadable(t)
}

// TestCrashes: atrest killed with SIGKILL right after stopping the old
// kube-apiserver container, after renaming it, while its replacement is
// not yet ready, and in the middle of a provider-file write. The next
// apply repairs the node and converges.
func TestCrashes(t *testing.T) {
	createSecrets(t, clients(t)[0])
	managed := clusterFile(t, "managed.yml", managedBlock)
	disabled := clusterFile(t, "disabled.yml", disabledBlock)
	setUp(t, "identity", disabled)

	// Enable sets the flag: node 1's container is swapped.
	crash(t, "swap-after-stop", managed)
	recovered(t, managed, "aescbc:v1:")

	// Disable clears it: swapped again. This time the daemon repairs it:
	// node 1 has no kube-apiserver container to observe, so its cycle
	// cannot plan, and runs the reconcile for its recovery.
	crash(t, "swap-after-rename", disabled)
	base, err := os.ReadFile(sb.ClusterYML)
	if err != nil {
		t.Fatal(err)
	}
	commit(t, "Disable encryption at rest", map[string]string{"cluster.yml": strings.Replace(string(base), disabledBlock, disabledBlock, 1), "atrest.yaml": "snapshots:\n  retention: 5\n"})
	secretFile := t.TempDir() + "/webhook-secret"
	if err := os.WriteFile(secretFile, []byte("crash-webhook-secret-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	d := startDaemon(t, "5s", secretFile)
	// The secrets were all plain before the crash (it came in the last
	// stage): what must converge is node 1.
	eventually(t, "the daemon to repair node1 and finish the disable", 5*time.Minute, func() (bool, string) {
		code, out := run(t, "plan", "--config", disabled)
		return code == 0 && len(leftovers(t)) == 0, out
	})
	converged(t, "every secret plain and readable everywhere", "identity", "", time.Minute)
	d.waitLog(t, time.Minute, "putting back the kube-apiserver container left by an interrupted run")
	t.Logf("the daemon repaired node1 and converged in %s", time.Since(start).Round(time.Second))
	if err := d.signal(t, syscall.SIGTERM, 2*time.Minute); err != nil {
		t.Fatalf("daemon exit: %v", err)
	}

	// A write cut mid-stream installs nothing: node 1 still has no file.
	crash(t, "write-mid-stream", managed)
	if _, err := os.Stat(providerFile(0)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after a write cut mid-stream, node1's provider file: %v", err)
	}
	crash(t, "swap-after-start", managed)
	recovered(t, managed, "aescbc:v1:")
}

// TestRefusedConfigSoak measures, over ATREST_SOAK (say 1h) of daemon time
// at the default interval and backoff, how often a config kube-apiserver
// refuses at runtime restarts node 1's kube-apiserver: at each of
// MaxStepFailures attempts, then never. It prints the numbers; it is not
// part of make test.
func TestRefusedConfigSoak(t *testing.T) {
	soak, err := time.ParseDuration(os.Getenv("ATREST_SOAK"))
	if err != nil {
		t.Skip("a measurement, not a test: make soak-refused runs it (ATREST_SOAK, a duration)")
	}
	createSecrets(t, clients(t)[0])
	base, err := os.ReadFile(sb.ClusterYML)
	if err != nil {
		t.Fatal(err)
	}
	yml := func(block string) string { return strings.Replace(string(base), disabledBlock, block, 1) }
	secretFile := t.TempDir() + "/webhook-secret"
	if err := os.WriteFile(secretFile, []byte("soak-webhook-secret-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	commit(t, "A custom config", map[string]string{"cluster.yml": yml(customBlock), "atrest.yaml": "snapshots:\n  retention: 3\n"})
	d := startDaemonArgs(t, "1m", secretFile, "--daemon-max-backoff", "10m")
	converged(t, "the custom config", "aescbc:v1:k-fw5hn", "", 5*time.Minute)
	notAPlugin(t)
	commit(t, "A KMS plugin that does not answer", map[string]string{"cluster.yml": yml(kmsBlock)})
	start := time.Now()
	var restarts []time.Duration
	last := apiserverStarts(t)
	for time.Since(start) < soak {
		time.Sleep(2 * time.Second)
		if now := apiserverStarts(t); now != last {
			restarts = append(restarts, time.Since(start).Round(time.Second))
			last = now
		}
	}
	m := d.metrics(t)
	t.Logf("over %s of daemon time with a refused config: %d kube-apiserver (re)starts, at %v; %s; %s", soak, len(restarts), restarts,
		grepLines(m, "atrest_stalled"), grepLines(m, `atrest_reconcile_total{result="stalled"}`))
	commit(t, "Back to the custom config", map[string]string{"cluster.yml": yml(customBlock)})
	converged(t, "the custom config again", "aescbc:v1:k-fw5hn", "", 5*time.Minute)
}
