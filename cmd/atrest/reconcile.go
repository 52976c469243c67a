package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/reconciler"
	"github.com/atrest-io/atrest/settings"
)

func newPlanCommand() *cobra.Command {
	var src source
	var output string
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Show what atrest would do to bring the cluster to cluster.yml, changing nothing",
		Long: `Plan compares the desired state (cluster.yml and atrest.yaml, from --config or
the Git source) with what every controlplane node runs, what etcd stores (the
census) and what the keyring in Vault holds, and prints the steps it would
take, then its preflight: what the plan needs that the cluster lacks (the
permission to rewrite each resource, sudo on the nodes, the provider file's
mount, each KMS plugin's socket), which apply would refuse before changing
anything. Names, providers, hashes and counts only: never key material.
Exit code 0: nothing to do; 1: there are changes; 2: error, or a failed
preflight. -o json or yaml prints a Plan document (package api) with the
same exit codes.`,
		Args: cobra.NoArgs,
	}
	loader := withSettings(cmd)
	src.bind(cmd)
	outputFlag(cmd, &output)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(output); err != nil {
			return errorExit(err)
		}
		ctx := cmd.Context()
		ss, e, err := connect(cmd, loader, &src)
		if err != nil {
			return errorExit(err)
		}
		defer e.Close()
		d := ss.d
		want := reconciler.DesiredFrom(d.cfg, d.policy, d.revision)
		live, kr, err := e.rec.Observe(ctx, want)
		if err != nil {
			return errorExit(err)
		}
		plan, err := reconciler.MakePlan(e.rec.Input(want, live, kr, time.Time{}))
		out := cmd.OutOrStdout()
		if output != "text" {
			return printPlanDoc(cmd, e.rec, output, d.cfg.Summary(), d.origin, live, plan, err)
		}
		if err != nil {
			return errorExit(err)
		}
		fmt.Fprintf(out, "desired (%s): %s\n", d.origin, d.cfg.Summary())
		printLive(out, live)
		for _, w := range plan.Drift {
			fmt.Fprintf(out, "drift: %s\n", w)
		}
		for _, w := range plan.Warnings {
			fmt.Fprintf(out, "warning: %s\n", w)
		}
		if plan.Empty() {
			fmt.Fprintln(out, "nothing to do: the cluster is as cluster.yml says")
			return nil
		}
		fmt.Fprintf(out, "plan (%s):\n", plan.Transition)
		for i, step := range plan.Steps {
			fmt.Fprintf(out, "  %d. %s\n", i+1, step)
		}
		pf, err := e.rec.Preflight(ctx, plan)
		if err != nil {
			return errorExit(err)
		}
		return printPreflight(out, pf)
	}
	return cmd
}

// printPlanDoc prints the plan as a Plan document in format, with plan's
// exit code: 0 nothing to do, 1 changes, 2 a refusal or a failed
// preflight.
func printPlanDoc(cmd *cobra.Command, rec *reconciler.Reconciler, format, desired, origin string, live reconciler.Live, plan *reconciler.Plan, refused error) error {
	var pf *reconciler.PreflightResult
	if refused == nil && !plan.Empty() {
		res, err := rec.Preflight(cmd.Context(), plan)
		if err != nil {
			return errorExit(err)
		}
		pf = &res
	}
	if err := printDoc(cmd.OutOrStdout(), format, planDoc(desired, origin, live, plan, pf, refused), nil); err != nil {
		return errorExit(err)
	}
	switch {
	case refused != nil:
		return &exitCodeError{code: exitError}
	case plan.Empty():
		return nil
	case len(pf.Failed()) > 0:
		return &exitCodeError{code: exitError}
	}
	return &exitCodeError{code: exitChanges}
}

// printPreflight prints the preflight's result and returns plan's exit:
// changes when it passed, the refusal's error exit when it did not.
func printPreflight(out io.Writer, pf reconciler.PreflightResult) error {
	failed := pf.Failed()
	if len(failed) == 0 {
		fmt.Fprintf(out, "preflight: %d checks passed\n", len(pf.Checks))
		return &exitCodeError{code: exitChanges}
	}
	for _, c := range failed {
		fmt.Fprintf(out, "preflight failed: %s\n", c)
	}
	// The checks are printed above: the error only says what it means.
	return &exitCodeError{code: exitError, err: fmt.Errorf("error: plan refused (%s): %d of %d preflight checks failed; apply would change nothing until they pass",
		reconciler.ReasonPreflightFailed, len(failed), len(pf.Checks))}
}

func printLive(out io.Writer, live reconciler.Live) {
	for _, n := range live.Nodes {
		ready := "ready"
		if !n.Ready {
			ready = "NOT READY"
		}
		state := describeChains(n.Running())
		if n.File && !n.Flag {
			state += " (a provider file is present but kube-apiserver does not use it)"
		}
		if n.FileError != "" {
			state = "unreadable provider file: " + n.FileError
		}
		fmt.Fprintf(out, "node %s: %s, %s\n", n.Name, ready, state)
	}
	for _, r := range sortedKeys(live.Census) {
		var parts []string
		for _, p := range sortedKeys(live.Census[r]) {
			parts = append(parts, fmt.Sprintf("%d under %s", live.Census[r][p], p))
		}
		if len(parts) == 0 {
			parts = []string{"none stored"}
		}
		fmt.Fprintf(out, "census %s: %s\n", r, strings.Join(parts, ", "))
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func newApplyCommand() *cobra.Command {
	var src source
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Reconcile once: carry out the plan, safely and resumably",
		Long: `Apply takes the transition lock in Vault, snapshots etcd before the first
change, and runs the plan step by step, journaling each step in Vault before
and after it runs. If it stops (an error, a crash, Ctrl-C), apply again
resumes from what it observes. The desired state comes from --config or, without
it, from the Git source.`,
		Args: cobra.NoArgs,
	}
	loader := withSettings(cmd)
	src.bind(cmd)
	src.record = true
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return reconcileOnce(cmd, loader, &src, "")
	}
	return cmd
}

// reconcileOnce runs one reconcile; rotate, when set, requests a rotation.
func reconcileOnce(cmd *cobra.Command, loader *settings.Loader, src *source, rotate string) error {
	ctx := cmd.Context()
	ss, err := begin(cmd, loader, src)
	if err != nil {
		return errorExit(err)
	}
	d := ss.d
	want := reconciler.DesiredFrom(d.cfg, d.policy, d.revision)
	if rotate != "" {
		switch want.Mode {
		case cluster.Custom:
			return errorExit(fmt.Errorf("rotate-key: %s has a custom_config: atrest rotates managed keys only (as RKE): rotate by changing the custom_config", d.origin))
		case cluster.Disabled:
			return errorExit(fmt.Errorf("rotate-key: encryption is disabled in %s: there is no key to rotate", d.origin))
		}
		want.RotateRequest = rotate
	}
	if d.policy.Suspend {
		return errorExit(fmt.Errorf("atrest.yaml sets suspend: true: no changes are made while suspended"))
	}
	e, err := open(ctx, ss.s, d.cfg, d.policy, ss.log)
	if err != nil {
		return errorExit(err)
	}
	defer e.Close()
	res, err := e.rec.Reconcile(ctx, want)
	out := cmd.OutOrStdout()
	if res != nil {
		for _, w := range res.Drift {
			fmt.Fprintf(out, "drift: %s\n", w)
		}
		for _, w := range res.Warnings {
			fmt.Fprintf(out, "warning: %s\n", w)
		}
		for i, step := range res.Steps {
			fmt.Fprintf(out, "done %d. %s\n", i+1, step)
		}
	}
	if reason := reconciler.StallReason(err); reason != "" && err != nil {
		return errorExit(fmt.Errorf("%w\natrest status shows it; once the cause is fixed, `atrest resume` lifts the stall", err))
	}
	if err != nil {
		return errorExit(fmt.Errorf("%w\nthe journal in Vault says where it stopped (atrest status); run apply again to resume", err))
	}
	if len(res.Steps) == 0 {
		fmt.Fprintln(out, "nothing to do: the cluster is as cluster.yml says")
	} else {
		fmt.Fprintf(out, "%s complete\n", res.Transition)
	}
	return nil
}

func newRotateKeyCommand() *cobra.Command {
	var src source
	var agent, ignoreDocker bool
	cmd := &cobra.Command{
		Use:   "rotate-key",
		Short: "Rotate the managed encryption key now (the flags of rke encrypt rotate-key)",
		Long: `rotate-key generates a new key in Vault and walks every controlplane node
through [old, new] -> [new, old] -> rewrite -> verify -> [new], after a
verified etcd snapshot. It is refused for custom configs, as RKE does.
--ssh-agent-auth and --ignore-docker-version are accepted as rke encrypt
rotate-key accepts them.`,
		Args: cobra.NoArgs,
	}
	loader := withSettings(cmd)
	src.bind(cmd)
	cmd.Flags().BoolVar(&agent, "ssh-agent-auth", false, "use the SSH agent at SSH_AUTH_SOCK (as ssh_agent_auth in cluster.yml)")
	cmd.Flags().BoolVar(&ignoreDocker, "ignore-docker-version", false, "accepted for compatibility with rke; atrest does not check Docker's version")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if src.configFile == "" {
			src.configFile = "cluster.yml"
		}
		src.agent = agent
		return reconcileOnce(cmd, loader, &src, "cli:"+time.Now().UTC().Format(time.RFC3339Nano))
	}
	return cmd
}

func newStatusCommand() *cobra.Command {
	var src source
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every node's config, the census, the keyring and the journal",
		Args:  cobra.NoArgs,
	}
	loader := withSettings(cmd)
	src.bind(cmd)
	outputFlag(cmd, &output)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(output); err != nil {
			return errorExit(err)
		}
		ctx := cmd.Context()
		ss, e, err := connect(cmd, loader, &src)
		if err != nil {
			return errorExit(err)
		}
		defer e.Close()
		d := ss.d
		st, err := reconciler.StatusOf(ctx, e.rec, reconciler.DesiredFrom(d.cfg, d.policy, d.revision))
		if err != nil {
			return errorExit(err)
		}
		// What the daemons say of themselves, wherever they run.
		if st.Daemons, err = e.keys.DaemonStates(ctx); err != nil {
			ss.log.Warn("read the daemons' state", "err", err)
		}
		return printDoc(cmd.OutOrStdout(), output, statusDoc(st, time.Now()), func(w io.Writer) error {
			_, err := fmt.Fprint(w, st.Text())
			return err
		})
	}
	return cmd
}
