package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"time"

	"github.com/atrest-io/atrest/daemon"
)

// daemonProc is the `atrest run` the tour started: one process, in its own
// process group so that the terminal's Ctrl-C reaches only the tour, which
// then stops it with exactly one SIGTERM (a second signal would interrupt
// the step in flight).
type daemonProc struct {
	cmd        *exec.Cmd
	args       []string
	logFile    string
	metricsURL string // from the sandbox's settings
	webhookURL string
	secret     []byte
	done       chan struct{}
	exitErr    error

	// follow's position in the log, and the lines read so far.
	offset int64
	lines  []logLine
}

// startDaemon starts `atrest run` on the sandbox with its log in logFile,
// polling every 5 s and with a webhook on a free loopback port.
func startDaemon(atrest, settingsFile, metricsAddr, secretFile, logFile string, env []string) (*daemonProc, error) {
	secret := make([]byte, 24)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("webhook secret: %w", err)
	}
	secret = []byte(hex.EncodeToString(secret))
	if err := os.WriteFile(secretFile, append(secret, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("write the webhook secret %s: %w", secretFile, err)
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	log, err := os.OpenFile(logFile, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open the daemon log %s: %w", logFile, err)
	}
	defer log.Close()
	p := &daemonProc{
		args: []string{"run", "--settings", settingsFile, "--git-interval", "5s",
			"--listen-webhook", addr, "--listen-webhook-secret-file", secretFile},
		logFile: logFile, metricsURL: "http://" + metricsAddr, webhookURL: "http://" + addr + "/hook",
		secret: secret, done: make(chan struct{}),
	}
	p.cmd = exec.Command(atrest, p.args...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = log, log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// Should the tour itself be killed (SIGKILL), the daemon stops too,
		// gracefully; the next tour removes the sandbox left behind.
		Pdeathsig: syscall.SIGTERM,
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s run: %w", atrest, err)
	}
	go func() {
		p.exitErr = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port for the webhook: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// pid is the daemon's process id.
func (p *daemonProc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the daemon has exited, and how.
func (p *daemonProc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.exitErr
	default:
		return false, nil
	}
}

// get fetches a path of the daemon's metrics server.
func (p *daemonProc) get(ctx context.Context, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.metricsURL+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(body), nil
}

// waitReady waits until the daemon answers /readyz: its first cycle ran.
func (p *daemonProc) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := "no answer yet"
	for {
		if done, err := p.exited(); done {
			return fmt.Errorf("atrest run exited before it was ready (%v)", err)
		}
		code, body, err := p.get(ctx, "/readyz")
		switch {
		case err == nil && code == http.StatusOK:
			return nil
		case err == nil:
			last = fmt.Sprintf("%d %s", code, bytes.TrimSpace([]byte(body)))
		default:
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				return fmt.Errorf("atrest run not ready after %s on %s/readyz: %s", timeout, p.metricsURL, last)
			}
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// webhook tells the daemon that main moved to rev, signed as GitHub signs
// a push, and returns the HTTP status line.
func (p *daemonProc) webhook(ctx context.Context, rev string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	body := fmt.Appendf(nil, `{"ref":"refs/heads/main","after":%q}`, rev)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.webhookURL, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set(daemon.HeaderGitHubSignature, daemon.Sign(p.secret, body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("webhook %s: %w", p.webhookURL, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusAccepted {
		return resp.Status, fmt.Errorf("webhook %s answered %s, want 202 Accepted", p.webhookURL, resp.Status)
	}
	return resp.Status, nil
}

// follow reads the log lines written since the last call and returns them.
func (p *daemonProc) follow() ([]logLine, error) {
	f, err := os.Open(p.logFile)
	if err != nil {
		return nil, fmt.Errorf("read the daemon log: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(p.offset, io.SeekStart); err != nil {
		return nil, fmt.Errorf("read the daemon log: %w", err)
	}
	var out []logLine
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			// A partial last line is read again, whole, next time.
			break
		}
		p.offset += int64(len(line))
		l := parseLogfmt(line)
		out = append(out, l)
	}
	p.lines = append(p.lines, out...)
	return out, nil
}

// find reports whether a line read so far satisfies match.
func (p *daemonProc) find(match func(logLine) bool) bool {
	return slices.ContainsFunc(p.lines, match)
}

// tail returns the last n lines of the daemon's log.
func (p *daemonProc) tail(n int) string {
	data, err := os.ReadFile(p.logFile)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)\n", p.logFile, err)
	}
	return lastLines(string(data), n)
}

// stop ends the daemon gracefully: SIGTERM, and the step in flight finishes
// and is journaled. hurry (a second Ctrl-C) sends the second SIGTERM that
// interrupts the step at once (the journal records it); after grace, or
// 30 s after hurry, SIGKILL. It reports whether it had to kill, and the
// daemon's exit error.
func (p *daemonProc) stop(grace time.Duration, hurry <-chan struct{}) (killed bool, exitErr error) {
	if done, err := p.exited(); done {
		return false, err
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		_ = p.cmd.Process.Kill()
		<-p.done
		return true, p.exitErr
	}
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	for {
		select {
		case <-p.done:
			return false, p.exitErr
		case <-hurry:
			hurry = nil
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			deadline.Reset(30 * time.Second)
		case <-deadline.C:
			_ = p.cmd.Process.Kill()
			<-p.done
			return true, p.exitErr
		}
	}
}
