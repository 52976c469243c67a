// Command atrest-demo is atrest's guided tour, run by `make demo`. It starts
// a 1-node sandbox (package sandbox) in a directory of its own, creates a
// few dozen example secrets, starts `atrest run` on the sandbox's Git
// repository, and walks a newcomer through enabling encryption at rest by a
// commit, rotating the key with rotate_encryption_key, the snapshots and
// their restore config, and disabling it again. Each step says in plain
// words what is about to happen and why, runs it with real commands, and
// shows the evidence: the daemon's log, the census of secrets read straight
// from etcd, the keyring in Vault. Nothing prints key material.
//
// At the end, or on Ctrl-C, it stops the daemon (SIGTERM: gracefully) and
// removes the sandbox; a second Ctrl-C interrupts the daemon's step in
// flight but never skips the cleanup. Exit status: 0 when every step
// converged, 1 when one did not (the daemon log's tail is printed), 130 when
// interrupted.
//
//	atrest-demo [--dir .demo] [--atrest bin/atrest] [--pause=false]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/atrest-io/atrest/sandbox"
)

func main() {
	sandbox.RunHelper()
	os.Exit(realMain(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// realMain parses args, runs the tour with the signal handling of an
// interactive program, and returns the exit status.
func realMain(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("atrest-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := options{in: stdin, out: stdout}
	fs.StringVar(&o.dir, "dir", ".demo", "the tour's directory: the sandbox goes in DIR/sandbox (removed at the end), the daemon's log in DIR/atrest-run.log (kept)")
	fs.StringVar(&o.atrest, "atrest", "bin/atrest", "the atrest binary (make build)")
	fs.StringVar(&o.kubeAPIServer, "kube-apiserver", os.Getenv("ATREST_KUBE_APISERVER"), "kube-apiserver binary for the sandbox (tools/build.sh kube-apiserver)")
	fs.StringVar(&o.vault, "vault", os.Getenv("ATREST_VAULT"), "vault binary for the sandbox (tools/build.sh vault)")
	fs.BoolVar(&o.pause, "pause", isTerminal(stdin), "wait for Enter between steps (default: when standard input is a terminal)")
	fs.IntVar(&o.secrets, "secrets", 48, "how many example secrets to create")
	fs.DurationVar(&o.stepTimeout, "step-timeout", 10*time.Minute, "how long a transition may take to converge before the tour gives up")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 || o.secrets < 1 || o.stepTimeout <= 0 {
		fmt.Fprintln(stderr, "usage: atrest-demo [--dir DIR] [--atrest BIN] [--pause=false] [--secrets N >= 1] [--step-timeout D > 0]")
		return 2
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hurry := make(chan struct{})
	o.hurry = hurry
	sigs := make(chan os.Signal, 3)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		// First signal: stop gracefully. Second: hurry the daemon. Any
		// later one: say that the cleanup is still running; it is never
		// skipped, so nothing is left behind.
		n := 0
		for sig := range sigs {
			n++
			switch n {
			case 1:
				fmt.Fprintf(stderr, "\n%s: ending the tour; stopping atrest run and removing the sandbox (Ctrl-C again interrupts the daemon's step in flight)\n", sig)
				cancel()
			case 2:
				fmt.Fprintf(stderr, "\n%s: interrupting the daemon's step in flight; the sandbox is still removed\n", sig)
				close(hurry)
			default:
				fmt.Fprintf(stderr, "\n%s: still cleaning up, please wait\n", sig)
			}
		}
	}()

	err := run(ctx, o)
	switch {
	case err == nil:
		return 0
	case ctx.Err() != nil && !errors.As(err, new(*cleanupError)):
		fmt.Fprintln(stderr, "\nthe tour was interrupted; what it started is stopped")
		return 130
	case ctx.Err() != nil:
		fmt.Fprintf(stderr, "\nthe tour was interrupted, and cleaning up failed: %v\n", err)
		return 130
	default:
		fmt.Fprintf(stderr, "\nthe tour failed: %v\n", err)
		return 1
	}
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	return term.IsTerminal(int(f.Fd()))
}
