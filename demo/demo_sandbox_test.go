//go:build sandbox

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/internal/atrestbin"
	"github.com/atrest-io/atrest/internal/leaktest"
	"github.com/atrest-io/atrest/keystore/keystoretest"
	"github.com/atrest-io/atrest/sandbox"
)

// atrestBin is the atrest binary the tour drives, built by TestMain.
var atrestBin string

// asMainEnv makes the test binary run the tour as its main program: how
// TestDemoInterrupted sends it real signals.
const asMainEnv = "ATREST_DEMO_AS_MAIN"

func TestMain(m *testing.M) {
	sandbox.RunHelper()
	if os.Getenv(asMainEnv) == "1" {
		main()
	}
	for name, env := range map[string]string{"kube-apiserver": "ATREST_KUBE_APISERVER", "vault": "ATREST_VAULT"} {
		if os.Getenv(env) != "" {
			continue
		}
		out, err := exec.Command("../tools/build.sh", name).Output()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build %s with tools/build.sh: %v\n", name, err)
			os.Exit(1)
		}
		os.Setenv(env, strings.TrimSpace(string(out)))
	}
	bin, cleanup, err := atrestbin.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	atrestBin = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// syncBuffer is a buffer written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tourDir is a fixed directory per test, so that a run killed half way is
// cleaned up by the next (sandbox.Start removes what it finds there).
func tourDir(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(os.TempDir(), name)
	if err := sandbox.Destroy(filepath.Join(dir, "sandbox")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestDemo runs the whole tour, pausing (Enter from a pipe) between steps,
// and checks that each step showed its evidence, that nothing is left
// running, and that no key read from Vault shows in anything it printed.
func TestDemo(t *testing.T) {
	dir := tourDir(t, "atrest-demo-test")
	t.Cleanup(func() { os.RemoveAll(dir) })
	var out syncBuffer
	var w io.Writer = &out
	if testing.Verbose() {
		w = io.MultiWriter(&out, os.Stderr)
	}
	const secrets = 24
	var keys []cluster.Key
	o := options{
		dir: dir, atrest: atrestBin, pause: true, secrets: secrets, stepTimeout: 10 * time.Minute,
		out: w, in: strings.NewReader(strings.Repeat("\n", totalSteps)), hurry: make(chan struct{}),
		beforeTeardown: func(ctx context.Context, sb *sandbox.Sandbox) (err error) {
			keys, err = keystoretest.Keys(ctx, sb, "atrest-sandbox")
			return err
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	start := time.Now()
	if err := run(ctx, o); err != nil {
		t.Fatalf("the tour failed: %v\n%s", err, out.String())
	}
	t.Logf("the tour took %s", time.Since(start).Round(time.Second))
	text := out.String()

	// Every step, and the evidence each shows.
	var want []string
	for i := 1; i <= totalSteps; i++ {
		want = append(want, fmt.Sprintf("Step %d of %d: ", i, totalSteps))
	}
	for i := 1; i < totalSteps; i++ {
		want = append(want, fmt.Sprintf("[Enter] Step %d: ", i))
	}
	want = append(want,
		fmt.Sprintf("etcd now holds %d secrets: %d under identity (plain text)", secrets, secrets),
		"$ "+atrestBin+" run --settings ", "ready: its first look at the cluster is done",
		// The sandbox's plain-http Vault, allowed by name and warned about.
		"atrest run | warn: INSECURE: Vault at http://", "(setting vault.insecureAllowHTTP)",
		// 1. status, and the plain value in etcd
		"$ "+atrestBin+" status\n", "| census secrets: ", "| in sync: nothing to do", `the password "demo-password-00-`,
		// 2. the commit, the webhook, the daemon at work
		"+      enabled: true", "-> 202 Accepted", "atrest run | new revision in force: ", "atrest run | step: rewrite every object of secrets",
		"atrest run | enable complete for ", "bytes of ciphertext; the password is not in it",
		fmt.Sprintf("All %d example secrets read back through kube-apiserver with their original values.", secrets),
		// 3. rotation
		"+rotate_encryption_key: true", "atrest run | rotate complete for ", "KEY        PROVIDER  ROLE",
		// 4. snapshots
		"$ "+atrestBin+" snapshot list\n", "before rotate", ": verified\n", ": Restorable: ", "etcdutl snapshot restore",
		"secret: <32 bytes of key material, not shown>", "What an operator does with it",
		// 5. disable
		"+      enabled: false", "-rotate_encryption_key: true", "atrest run | disable complete for ",
		// 6. stop and clean up
		"stopping atrest run (pid ", "atrest run | shutting down", "exited with status 0", "sandbox removed", "The tour is over",
	)
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("the tour did not print %q", w)
		}
	}
	// The census moved: plain, then one key, then another, then plain.
	after := regexp.MustCompile(`(?m)^  after:  \d+ under (\S+) `).FindAllStringSubmatch(text, -1)
	if len(after) != 3 {
		t.Fatalf("want 3 transitions' census, got %v", after)
	}
	k1, k2, plain := after[0][1], after[1][1], after[2][1]
	if !strings.HasPrefix(k1, "aescbc:v1:k-") || !strings.HasPrefix(k2, "aescbc:v1:k-") || k1 == k2 || plain != "identity" {
		t.Errorf("the census went %s -> %s -> %s; want a key, another key, identity", k1, k2, plain)
	}
	// The keyring after the rotation: the new key primary, the old retired.
	name1, name2 := strings.TrimPrefix(k1, "aescbc:v1:"), strings.TrimPrefix(k2, "aescbc:v1:")
	if !regexp.MustCompile(`(?m)^  `+name1+` +aescbc +retired `).MatchString(text) ||
		!regexp.MustCompile(`(?m)^  `+name2+` +aescbc +primary `).MatchString(text) {
		t.Errorf("the keyring does not show %s retired and %s primary", name1, name2)
	}

	// Nothing left behind: the daemon has exited, the sandbox is gone.
	m := regexp.MustCompile(`pid (\d+); its log: (\S+);`).FindStringSubmatch(text)
	if m == nil {
		t.Fatal("the tour did not print the daemon's pid and log")
	}
	pid, _ := strconv.Atoi(m[1])
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("atrest run (pid %d) is still there: %v", pid, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "sandbox")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the sandbox directory is still there: %v", err)
	}
	daemonLog, err := os.ReadFile(filepath.Join(dir, "atrest-run.log"))
	if err != nil {
		t.Fatalf("the daemon's log was not kept: %v", err)
	}

	// No key that Vault held shows in the tour's output or the daemon's log.
	if len(keys) != 2 {
		t.Errorf("%d keys in Vault, want 2 (enable, rotate)", len(keys))
	}
	watch := leaktest.New(t)
	for _, k := range keys {
		watch.Key(k)
	}
	watch.Note(text)
	watch.Note(string(daemonLog))
}

// TestDemoInterrupted runs the tour as its own process, in its own process
// group as a terminal would, and presses Ctrl-C twice while the daemon is
// in the middle of enabling encryption: the tour must stop the daemon and
// remove the sandbox all the same, and exit 130.
func TestDemoInterrupted(t *testing.T) {
	dir := tourDir(t, "atrest-demo-test-interrupted")
	t.Cleanup(func() { os.RemoveAll(dir) })
	cmd := exec.Command(os.Args[0], "--dir", dir, "--atrest", atrestBin, "--pause=false", "--secrets", "12")
	cmd.Env = append(os.Environ(), asMainEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var out syncBuffer
	midway := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		signalled := false
		for sc.Scan() {
			fmt.Fprintln(&out, sc.Text())
			if testing.Verbose() {
				fmt.Fprintln(os.Stderr, sc.Text())
			}
			if !signalled && strings.Contains(sc.Text(), "atrest run | step: deploy") {
				signalled = true
				close(midway)
			}
		}
		done <- cmd.Wait()
	}()
	ctrlC := func() {
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
			t.Errorf("Ctrl-C: %v", err)
		}
	}
	select {
	case <-midway:
	case err := <-done:
		t.Fatalf("the tour ended (%v) before the daemon deployed anything:\n%s\n%s", err, out.String(), stderr.String())
	case <-time.After(10 * time.Minute):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		t.Fatalf("the daemon deployed nothing within 10 minutes:\n%s", out.String())
	}
	ctrlC()
	time.Sleep(time.Second)
	ctrlC()
	select {
	case err = <-done:
	case <-time.After(5 * time.Minute):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		t.Fatalf("the tour did not end within 5 minutes of Ctrl-C:\n%s\n%s", out.String(), stderr.String())
	}
	text := out.String()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Errorf("exit: %v, want status 130\n%s\n%s", err, text, stderr.String())
	}
	for _, want := range []string{"cleaning up", "stopping atrest run (pid ", "sandbox removed"} {
		if !strings.Contains(text, want) {
			t.Errorf("the tour did not print %q:\n%s", want, text)
		}
	}
	for _, want := range []string{"ending the tour", "interrupting the daemon's step in flight", "the tour was interrupted; what it started is stopped"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("the tour did not say %q on stderr:\n%s", want, stderr.String())
		}
	}
	m := regexp.MustCompile(`pid (\d+); its log`).FindStringSubmatch(text)
	if m == nil {
		t.Fatal("the tour did not print the daemon's pid")
	}
	pid, _ := strconv.Atoi(m[1])
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("atrest run (pid %d) is still there: %v", pid, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "sandbox")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the sandbox directory is still there: %v", err)
	}
}
