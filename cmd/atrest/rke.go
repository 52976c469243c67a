package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/keystore"
	"github.com/atrest-io/atrest/reconciler"
	"github.com/atrest-io/atrest/rke"
)

func newRKECommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rke",
		Short: "Run RKE's own commands on a cluster whose encryption atrest owns",
		Args:  cobra.NoArgs,
	}
	cert := &cobra.Command{Use: "cert", Short: "RKE's certificate commands", Args: cobra.NoArgs}
	cert.AddCommand(newRKERunCommand([]string{"cert", "rotate"}, "rotate --config cluster.yml [-- rke cert rotate flags]",
		"Run `rke cert rotate` so that it redeploys the config atrest runs, then take the keys out of RKE's state"))
	cmd.AddCommand(newRKERunCommand([]string{"up"}, "up --config cluster.yml [-- rke up flags]",
		"Run `rke up` so that it redeploys the config atrest runs, then take the keys out of RKE's state"), cert)
	return cmd
}

// newRKERunCommand is `atrest rke <command>`: rke's command run by
// rke.Run on the config in force.
func newRKERunCommand(command []string, use, short string) *cobra.Command {
	var src source
	var binary string
	name := strings.Join(command, " ")
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long: `rke ` + name + ` runs RKE's 'rke ` + name + `' without letting it touch
encryption at rest ('rke up' for upgrades, certificates and nodes; both deploy
RKE's provider file). Under the transition lock, it reads the config every
node runs, proves it is the one atrest deployed and that Vault holds its keys,
and gives rke a copy of cluster.yml whose secrets_encryption_config is that
config (as custom_config, with the reload flag when the nodes reload) and a
copy of cluster.rkestate that records it as already deployed. Both are written
0600 to a private directory, never beside cluster.yml or to Git. RKE then
deploys the same config again and restarts nothing for encryption's sake.

However rke ends, the state it wrote is stripped of every key and replaces
cluster.rkestate, its kubeconfig is kept beside cluster.yml, the private
directory is removed, and RKE's copy of the state in the cluster
(kube-system/full-cluster-state) is stripped too. The exit code is rke's.`,
		Args: cobra.ArbitraryArgs,
	}
	loader := withSettings(cmd)
	src.bind(cmd)
	cmd.Flags().StringVar(&binary, "rke", "rke", "the rke executable (looked up on PATH)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if src.configFile == "" {
			return errorExit(fmt.Errorf("rke %s: --config: give the cluster.yml that rke reads (RKE keeps its state beside it)", name))
		}
		bin, err := exec.LookPath(binary)
		if err != nil {
			return errorExit(fmt.Errorf("rke %s: %s is not on PATH (--rke names it): %w", name, binary, err))
		}
		original, err := os.ReadFile(src.configFile)
		if err != nil {
			return errorExit(err)
		}
		statePath := rke.StateFilePath(src.configFile)
		state, err := os.ReadFile(statePath)
		if err != nil {
			return errorExit(fmt.Errorf("rke %s: RKE's state %s: %w", name, statePath, err))
		}
		_, e, err := connect(cmd, loader, &src)
		if err != nil {
			return errorExit(err)
		}
		defer e.Close()
		host, _ := os.Hostname()
		lock, err := e.rec.Locks.AcquireLock(ctx, fmt.Sprintf("atrest rke %s pid %d on %s", name, os.Getpid(), host), 2*time.Minute)
		if err != nil {
			return errorExit(fmt.Errorf("take the transition lock: %w", err))
		}
		defer func() {
			if err := lock.Release(context.WithoutCancel(ctx)); err != nil {
				e.log.Warn("release the transition lock", "err", err)
			}
		}()
		states, err := e.nodes.Observe(ctx)
		if err != nil {
			return errorExit(fmt.Errorf("observe the nodes: %w", err))
		}
		kr, err := e.keys.Keyring(ctx)
		if err != nil {
			return errorExit(err)
		}
		inForce, err := reconciler.ConfigInForce(states, kr, e.cfg.KubeAPI.ExtraArgs["feature-gates"], func(name string) (cluster.Key, error) { return e.keys.Key(ctx, name) })
		if err != nil {
			return errorExit(fmt.Errorf("rke %s: nothing was run: %w", name, err))
		}
		yml, err := rke.ClusterYML(original, inForce.Config, inForce.Reload)
		if err != nil {
			return errorExit(fmt.Errorf("rke %s: %s: %w", name, src.configFile, err))
		}
		file := ""
		if inForce.Config != nil {
			if file, err = rke.CustomProviderFile(inForce.Config); err != nil {
				return errorExit(err)
			}
		}
		prepared, err := rke.PrepareState(state, file)
		if err != nil {
			return errorExit(fmt.Errorf("rke %s: %s: %w", name, statePath, err))
		}
		out := cmd.ErrOrStderr()
		fmt.Fprintf(out, "atrest: rke %s with the config every node runs (%s), %s\n", name, describeInForce(inForce), reloadNote(inForce))
		res, runErr := rke.Run(ctx, rke.RunOptions{Binary: bin, Config: src.configFile, ClusterYML: yml, State: prepared, Command: command,
			Args: args, Stdout: cmd.OutOrStdout(), Stderr: out})
		fmt.Fprintf(out, "atrest: rke exited %d\n", res.ExitCode)
		if res.StateKept {
			fmt.Fprintf(out, "atrest: %s is the state rke left, and holds no key (removed: %s)\n", statePath, orNothing(res.Removed))
		}
		if res.Kubeconfig {
			fmt.Fprintf(out, "atrest: kept rke's kubeconfig as %s\n", rke.KubeconfigPath(src.configFile))
		}
		if err := sameAfter(context.WithoutCancel(ctx), e, inForce); err != nil {
			runErr = errors.Join(runErr, err)
		} else {
			fmt.Fprintln(out, "atrest: every node runs the same config as before")
		}
		if err := stripClusterState(context.WithoutCancel(ctx), e); err != nil {
			runErr = errors.Join(runErr, err)
		}
		if runErr != nil {
			code := exitError
			if res.ExitCode > 0 {
				code = res.ExitCode
			}
			return &exitCodeError{code: code, err: fmt.Errorf("error: %w", runErr)}
		}
		return nil
	}
	return cmd
}

// sameAfter checks that every node runs the config in force before rke
// ran (in whatever layout RKE wrote it).
func sameAfter(ctx context.Context, e *env, before *reconciler.InForce) error {
	states, err := e.nodes.Observe(ctx)
	if err != nil {
		return fmt.Errorf("observe the nodes after rke: %w", err)
	}
	for _, s := range states {
		var got []byte
		if s.File.Present {
			cfg, err := cluster.ParseEncryptionConfig("node "+s.Node+" provider file", "", s.File.Data, e.cfg.KubeAPI.ExtraArgs["feature-gates"])
			if err != nil {
				return fmt.Errorf("after rke: %w", err)
			}
			got = cfg.Render()
		}
		var want []byte
		if before.Config != nil {
			want = before.Config.Render()
		}
		if string(got) != string(want) {
			return fmt.Errorf("after rke, node %s runs another config than before: atrest converges it back (see atrest status)", s.Node)
		}
	}
	return nil
}

func describeInForce(f *reconciler.InForce) string {
	if f.Config == nil {
		return "none: encryption off"
	}
	return "sha256 " + strings.TrimPrefix(keystore.ConfigHash(f.Config.Render()), "sha256:")[:12] + ", " + describeChains(f.Config.Chains())
}

func reloadNote(f *reconciler.InForce) string {
	if f.Reload {
		return "keeping " + cluster.FlagAutomaticReload + "=true"
	}
	return "as the nodes run it"
}

func orNothing(s []string) string {
	if len(s) == 0 {
		return "nothing"
	}
	return strings.Join(s, ", ")
}

// stripClusterState strips the keys from RKE's copy of its state in the
// cluster: the Secret kube-system/full-cluster-state (a ConfigMap before
// RKE v1.4), which `rke up` writes with the custom_config in it.
func stripClusterState(ctx context.Context, e *env) error {
	kc, err := kubernetes.NewForConfig(e.rest)
	if err != nil {
		return err
	}
	const name, ns = "full-cluster-state", metav1.NamespaceSystem
	// strip takes the keys out of data, writing it back with update.
	strip := func(kind string, data []byte, update func([]byte) error) error {
		stripped, removed, err := rke.StripState(data)
		if err != nil || len(removed) == 0 {
			return err
		}
		if err := update(stripped); err != nil {
			return err
		}
		e.log.Info("stripped the keys from RKE's state in the cluster", kind, ns+"/"+name, "removed", removed)
		return nil
	}
	err = func() error {
		s, err := kc.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			return strip("secret", s.Data[name], func(b []byte) error {
				s.Data[name] = b
				_, err := kc.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
				return err
			})
		}
		if !apierrors.IsNotFound(err) {
			return err
		}
		cm, err := kc.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		return strip("configmap", []byte(cm.Data[name]), func(b []byte) error {
			cm.Data[name] = string(b)
			_, err := kc.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
			return err
		})
	}()
	if err != nil {
		return fmt.Errorf("strip the keys from RKE's state in the cluster (%s/%s): %w; delete its encryptionConfig and customConfig fields by hand", ns, name, err)
	}
	return nil
}
