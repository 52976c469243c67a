package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is one process the sandbox started, recorded in the state file so
// that Stop (even from another process, after a crash) stops exactly it.
type proc struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// StartTime is the process's start time in clock ticks since boot
	// (/proc/PID/stat field 22): with the PID it names one process, even if
	// the PID is reused later.
	StartTime uint64 `json:"startTime"`
	// Group: the process leads its own process group; stop signals the
	// whole group.
	Group bool `json:"group"`
	// Namespace: the process is `unshare --kill-child` holding a PID and
	// mount namespace; killing it tears down everything in the namespace,
	// containers included.
	Namespace bool   `json:"namespace"`
	Log       string `json:"log"`
}

// startProc starts cmd with its output appended to logFile, in its own
// process group, and returns its record. A goroutine waits for the child so
// that it never lingers as a zombie of a long-running test process.
func startProc(name string, cmd *exec.Cmd, logFile string) (*proc, error) {
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Its own group: Ctrl-C in the terminal that ran `atrest-sandbox up`
	// must not reach it, and stop can signal it with its children.
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	st, err := procStartTime(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = cmd.Wait() }()
	return &proc{Name: name, PID: cmd.Process.Pid, StartTime: st, Group: true, Log: logFile}, nil
}

// procStartTime reads field 22 of /proc/PID/stat.
func procStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after it start
	// after the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// alive reports whether p is still the process that was started: same PID,
// same start time, not a zombie.
func (p *proc) alive() bool {
	st, err := procStartTime(p.PID)
	if err != nil || st != p.StartTime {
		return false
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(data, ')')
	return i < 0 || i+2 >= len(data) || data[i+2] != 'Z'
}

// stop ends p: SIGTERM (to its group), then SIGKILL after grace. It only
// signals the process it started, never a process that took its PID.
func (p *proc) stop(grace time.Duration) error {
	if !p.alive() {
		return nil
	}
	target := p.PID
	if p.Group {
		target = -p.PID
	}
	_ = syscall.Kill(target, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !p.alive() {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !p.alive() {
		return nil
	}
	_ = syscall.Kill(target, syscall.SIGKILL)
	for range 100 {
		if !p.alive() {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("stop %s (pid %d): still running after SIGKILL", p.Name, p.PID)
}

// tail returns the last n lines of a log file, for error messages.
func tail(file string, n int) string {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor polls check until it succeeds, ctx ends, or timeout passes. The
// error holds check's last error and, when p is given, whether p died and
// the tail of its log.
func waitFor(ctx context.Context, what string, timeout time.Duration, p *proc, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay := 50 * time.Millisecond
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		if p != nil && !p.alive() {
			return fmt.Errorf("%s: process %s exited: %v\n--- tail of %s ---\n%s", what, p.Name, last, p.Log, tail(p.Log, 30))
		}
		select {
		case <-ctx.Done():
			msg := fmt.Sprintf("%s: not ready after %s: %v", what, timeout, last)
			if p != nil {
				msg += fmt.Sprintf("\n--- tail of %s ---\n%s", p.Log, tail(p.Log, 30))
			}
			return errors.New(msg)
		case <-time.After(delay):
		}
		delay = min(delay*2, time.Second)
	}
}
