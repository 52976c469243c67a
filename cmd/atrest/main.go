// Command atrest keeps a Kubernetes cluster's encryption at rest equal to
// what its RKE cluster.yml in Git says, with every key in HashiCorp Vault.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	_ "time/tzdata" // CRON_TZ must resolve zones in minimal container images too.

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes, as `flux diff` and `terraform plan -detailed-exitcode` use them.
const (
	exitOK      = 0
	exitChanges = 1
	exitError   = 2
	// exitNotProven: `snapshot verify --decrypt` ran its drill and it did
	// not prove the snapshot restorable (exitError: it could not run).
	exitNotProven = 1
)

// exitCodeError carries a specific exit code up to main.
type exitCodeError struct {
	code int
	err  error
}

func (e *exitCodeError) Error() string { return e.err.Error() }
func (e *exitCodeError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCommand(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ec *exitCodeError
	if errors.As(err, &ec) {
		if ec.err != nil {
			fmt.Fprintln(stderr, ec.err)
		}
		return ec.code
	}
	fmt.Fprintln(stderr, "error:", err)
	return exitError
}

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "atrest",
		Short: "GitOps for Kubernetes encryption at rest on RKE clusters, with keys in Vault",
		Long: `atrest reads the desired secrets_encryption_config of an RKE cluster.yml,
compares it with what the control plane runs and what etcd stores, keeps every
key in HashiCorp Vault, snapshots etcd before any change, and carries out the
transition (enable, disable, rotate, custom config) safely and resumably.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newValidateCommand(), newPlanCommand(), newApplyCommand(), newStatusCommand(),
		newRotateKeyCommand(), newSnapshotCommand(), newAdoptCommand(), newRunCommand(), newVersionCommand(),
		newResumeCommand(), newUnlockCommand(), newKeysCommand(), newRKECommand(), newOptionsCommand(), newKMSPluginCommand())
	// Added now, not at Execute, so that strictGroups sees it too.
	root.InitDefaultCompletionCmd()
	strictGroups(root)
	return root
}

// strictGroups makes every command group below root refuse what is not
// one of its commands. Cobra shows a group's help and succeeds on any
// argument (only the root checks), so a script could not tell
// `atrest snapshot drill x` from success.
func strictGroups(root *cobra.Command) {
	for _, c := range root.Commands() {
		if c.HasSubCommands() && !c.Runnable() {
			c.Args = cobra.ArbitraryArgs
			c.SuggestionsMinimumDistance = 2
			c.RunE = func(cmd *cobra.Command, args []string) error {
				if len(args) == 0 {
					return cmd.Help()
				}
				msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
				if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
					msg += fmt.Sprintf("; did you mean %q?", s[0])
				}
				return errorExit(fmt.Errorf("%s (see %s --help)", msg, cmd.CommandPath()))
			}
		}
		strictGroups(c)
	}
}
