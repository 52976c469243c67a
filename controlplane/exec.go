package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/ssh"
)

// result is what a script run on a node produced. Stdout may hold key
// material and never goes into an error; stderr does.
type result struct {
	stdout   []byte
	stderr   string
	code     int
	overflow bool // stdout was longer than allowed and is cut
}

// errNoSudo: the SSH user is not root, and sudo wants a password.
var errNoSudo = errors.New("cannot use sudo without a password")

// run runs a POSIX sh script on the node as root (through `sudo -n` when the
// SSH user is not root), with stdin, within the per-call timeout. Only
// failures to run it at all are errors; a non-zero exit is in the result.
func (n *Node) run(ctx context.Context, script string, stdin io.Reader, maxStdout int) (*result, error) {
	ctx, cancel := context.WithTimeout(ctx, n.opts.Timeout)
	defer cancel()
	sess, err := n.ssh.NewSession()
	if err != nil {
		return nil, fmt.Errorf("open SSH session: %w: %w", ErrUnreachable, err)
	}
	defer sess.Close()
	out := &capped{max: maxStdout}
	errOut := &capped{max: 4096}
	sess.Stdout, sess.Stderr = out, errOut
	if stdin != nil {
		sess.Stdin = stdin
	}
	cmd := "sh -c " + shellQuote(script)
	if !n.root {
		cmd = "sudo -n " + cmd
	}
	done := make(chan error, 1)
	go func() { done <- sess.Run(cmd) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = sess.Signal(ssh.SIGKILL)
		sess.Close()
		return nil, fmt.Errorf("command on the node: no answer within %s: %w", n.opts.Timeout, ctx.Err())
	}
	r := &result{stdout: out.Bytes(), stderr: strings.TrimSpace(errOut.String()), overflow: out.overflow}
	var exit *ssh.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		r.code = exit.ExitStatus()
		if !n.root && r.code == 1 && strings.Contains(r.stderr, "sudo") {
			return nil, fmt.Errorf("user %q is not root and %w on the node (%s): log in as root or allow passwordless sudo", n.cfg.User, errNoSudo, r.stderr)
		}
	default:
		var missing *ssh.ExitMissingError
		if errors.As(err, &missing) {
			return nil, fmt.Errorf("command on the node ended without an exit status (connection lost?): %w: %w", ErrUnreachable, err)
		}
		return nil, fmt.Errorf("command on the node: %w", err)
	}
	return r, nil
}

// shellQuote quotes s as one word for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// capped is a buffer that keeps at most max bytes and notes the excess.
type capped struct {
	bytes.Buffer
	max      int
	overflow bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.Len(); room < len(p) {
		c.overflow = true
		if room > 0 {
			c.Buffer.Write(p[:room])
		}
		return len(p), nil
	}
	return c.Buffer.Write(p)
}
