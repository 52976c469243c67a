package main

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/atrest-io/atrest/keystore"
	"github.com/atrest-io/atrest/reconciler"
	"github.com/atrest-io/atrest/settings"
)

func newUnlockCommand() *cobra.Command {
	var src source
	var force bool
	cmd := &cobra.Command{
		Use:   "unlock",
		Short: "Show the transition lock, and free it when its holder is gone",
		Long: `unlock shows who holds the transition lock in Vault and until when. It frees
the lock when its holder is gone: the lock has expired, or it was taken on this
host by a process that no longer runs (an apply killed with kill -9). A holder
that may still run is left alone unless --force: forcing it lets another run
change the nodes while the holder may still do so.`,
		Args: cobra.NoArgs,
	}
	loader := withSettings(cmd)
	src.bind(cmd)
	cmd.Flags().BoolVar(&force, "force", false, "free the lock even when its holder may still run")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx := cmd.Context()
		_, keys, err := beginKeys(cmd, loader, &src)
		if err != nil {
			return errorExit(err)
		}
		defer keys.Close()
		info, err := keys.LockState(ctx)
		if err != nil {
			return errorExit(err)
		}
		out := cmd.OutOrStdout()
		if !info.Held {
			fmt.Fprintln(out, "the transition lock is free")
			return nil
		}
		now := time.Now()
		fmt.Fprintln(out, describeLock(info, now))
		gone, why := holderGone(info, now)
		switch {
		case gone:
			fmt.Fprintf(out, "its holder is gone: %s\n", why)
		case force:
			fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: forcing the lock of a holder that may still run (%s): if it does, it may still change nodes while another run does\n", why)
		default:
			return errorExit(fmt.Errorf("the holder may still run (%s): nothing was changed; wait for it, or stop it, or use --force if you know it is gone", why))
		}
		if err := keys.BreakLock(ctx, info.ID); err != nil {
			return errorExit(err)
		}
		fmt.Fprintln(out, "lock freed")
		return nil
	}
	return cmd
}

func describeLock(info keystore.LockInfo, now time.Time) string {
	s := fmt.Sprintf("held by %q since %s", info.Holder, info.Acquired.UTC().Format(time.RFC3339))
	if info.Host != "" {
		s += fmt.Sprintf(" (host %s, pid %d)", info.Host, info.PID)
	}
	if info.Expires.After(now) {
		return s + fmt.Sprintf(", until %s (%s from now, renewed while it runs)", info.Expires.UTC().Format(time.RFC3339), info.Expires.Sub(now).Round(time.Second))
	}
	return s + fmt.Sprintf(", expired at %s (%s ago)", info.Expires.UTC().Format(time.RFC3339), now.Sub(info.Expires).Round(time.Second))
}

// holderGone tells whether the lock's holder cannot be running: the lock
// expired (with its grace), or its process on this very host is gone.
func holderGone(info keystore.LockInfo, now time.Time) (bool, string) {
	if info.Expired(now) {
		return true, "the lock expired and its grace has passed"
	}
	host, _ := os.Hostname()
	if info.Host == "" || info.Host != host || info.PID <= 0 {
		return false, fmt.Sprintf("it runs on host %q, not this one (%s), and its lock has not expired", info.Host, host)
	}
	if err := syscall.Kill(info.PID, 0); errors.Is(err, syscall.ESRCH) {
		return true, fmt.Sprintf("process %d no longer runs on this host", info.PID)
	}
	return false, fmt.Sprintf("process %d still runs on this host", info.PID)
}

func newResumeCommand() *cobra.Command {
	var src source
	cmd := &cobra.Command{
		Use:   "resume",
		Short: "Lift a stall once its cause is fixed",
		Long: `A transition stalls when it needs a person: a node could not be rolled back,
or the same step failed with the same inputs three times (a config that
kube-apiserver refuses at runtime restarts it at each try). While it stands no
node is changed, until the desired state changes (a new revision, an edited
cluster.yml) or resume lifts it. Fix the cause first: atrest status shows it.`,
		Args: cobra.NoArgs,
	}
	loader := withSettings(cmd)
	src.bind(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx := cmd.Context()
		ss, keys, err := beginKeys(cmd, loader, &src)
		if err != nil {
			return errorExit(err)
		}
		defer keys.Close()
		stall, err := reconciler.Resume(ctx, keys)
		if err != nil {
			return errorExit(err)
		}
		out := cmd.OutOrStdout()
		if stall == nil {
			fmt.Fprintln(out, "nothing is stalled; the failure count, if any, is cleared")
			return nil
		}
		ss.log.Warn("stall lifted by atrest resume", "reason", stall.Reason, "since", stall.Since)
		fmt.Fprintf(out, "lifted the stall %s (since %s): %s\nthe next apply or daemon cycle tries again\n", stall.Reason, stall.Since.UTC().Format(time.RFC3339), stall.Message)
		return nil
	}
	return cmd
}

// beginKeys begins and opens the keyring only: for the commands that
// touch no node.
func beginKeys(cmd *cobra.Command, loader *settings.Loader, src *source) (*session, *keystore.Store, error) {
	ss, err := begin(cmd, loader, src)
	if err != nil {
		return nil, nil, err
	}
	keys, err := openKeystore(cmd.Context(), ss.s, ss.d.cfg, ss.log)
	if err != nil {
		return nil, nil, err
	}
	return ss, keys, nil
}
