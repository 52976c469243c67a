package rke

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// RunOptions is one `rke up` (or `rke cert rotate`) with a cluster.yml
// that holds keys.
type RunOptions struct {
	// Binary is the rke executable.
	Binary string
	// Config is the operator's cluster.yml: RKE's state and kubeconfig
	// are beside it (StateFilePath, KubeconfigPath).
	Config string
	// ClusterYML is what rke reads instead of Config (ClusterYML), and
	// State what it reads instead of the state beside Config
	// (PrepareState). Both hold keys and are written only to a private
	// directory that Run removes.
	ClusterYML, State []byte
	// Command is the rke command: "up" when empty, or "cert", "rotate".
	// Both read cluster.yml and the state, and deploy the provider file.
	Command []string
	// Args are more arguments for the command.
	Args []string
	// Signals are forwarded to rke while it runs: an interrupted rke
	// leaves its state mid-way, which Run still strips and keeps.
	Signals <-chan os.Signal
	// Stdout and Stderr get rke's output.
	Stdout, Stderr io.Writer
}

// RunResult says what Run did.
type RunResult struct {
	// ExitCode is rke's (-1 when it did not start or was killed).
	ExitCode int
	// Removed are the fields of the state rke wrote that held keys and
	// are not in the state kept beside Config.
	Removed []string
	// StateKept is true when the state rke left, stripped, replaced the
	// one beside Config.
	StateKept bool
	// Kubeconfig is true when rke wrote the kubeconfig kept beside Config.
	Kubeconfig bool
}

// Run runs `rke up` (or opts.Command) on opts.ClusterYML and opts.State from a private
// directory (0700), as if they were opts.Config and its state. However rke
// ends (success, failure, a signal), the state it leaves is stripped of
// every key (StripState) and replaces the state beside opts.Config, the
// kubeconfig it wrote is kept beside opts.Config, and the directory is
// removed. An error means rke did not succeed or that cleaning up did
// not; RunResult says how far it went.
func Run(ctx context.Context, opts RunOptions) (res RunResult, err error) {
	res.ExitCode = -1
	if slices.ContainsFunc(opts.Args, func(a string) bool { return a == "--config" || strings.HasPrefix(a, "--config=") }) {
		return res, errors.New("rke up: --config is atrest's to give (the cluster.yml with the config atrest runs); give it to atrest instead")
	}
	dir, err := os.MkdirTemp("", "atrest-rke-up-")
	if err != nil {
		return res, err
	}
	defer func() {
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove %s, which holds keys: %w", dir, rerr))
		}
	}()
	cfg := filepath.Join(dir, filepath.Base(opts.Config))
	state, kubeconfig := StateFilePath(cfg), KubeconfigPath(cfg)
	if err := os.WriteFile(cfg, opts.ClusterYML, 0o600); err != nil {
		return res, err
	}
	if err := os.WriteFile(state, opts.State, 0o600); err != nil {
		return res, err
	}
	oldKubeconfig, kerr := os.ReadFile(KubeconfigPath(opts.Config))
	if kerr == nil {
		if err := os.WriteFile(kubeconfig, oldKubeconfig, 0o600); err != nil {
			return res, err
		}
	}
	defer func() {
		removed, stateKept, kept, cerr := keep(state, kubeconfig, opts.Config, oldKubeconfig)
		res.Removed, res.StateKept, res.Kubeconfig = removed, stateKept, kept
		err = errors.Join(err, cerr)
	}()

	command := opts.Command
	if len(command) == 0 {
		command = []string{"up"}
	}
	cmd := exec.Command(opts.Binary, append(append(slices.Clone(command), "--config", cfg), opts.Args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, opts.Stdout, opts.Stderr
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start %s: %w", opts.Binary, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// Cancelling ctx interrupts rke once, as Ctrl-C would; Run still
	// waits for it to end, since its state is written on the way out.
	cancelled := ctx.Done()
	for {
		select {
		case sig := <-opts.Signals:
			_ = cmd.Process.Signal(sig)
		case <-cancelled:
			_ = cmd.Process.Signal(os.Interrupt)
			cancelled = nil
		case werr := <-done:
			res.ExitCode = cmd.ProcessState.ExitCode()
			if werr != nil {
				return res, fmt.Errorf("rke %s: %w", strings.Join(command, " "), werr)
			}
			return res, nil
		}
	}
}

// keep strips the state rke left and puts it beside config, and keeps the
// kubeconfig rke wrote, when it wrote one.
func keep(state, kubeconfig, config string, oldKubeconfig []byte) (removed []string, stateKept, kubeconfigKept bool, err error) {
	data, err := os.ReadFile(state)
	if err != nil {
		return nil, false, false, fmt.Errorf("read the state rke left: %w", err)
	}
	stripped, removed, err := StripState(data)
	if err != nil {
		return nil, false, false, fmt.Errorf("the state rke left: %w; %s is unchanged", err, StateFilePath(config))
	}
	if err := writeFile(StateFilePath(config), stripped); err != nil {
		return removed, false, false, err
	}
	kc, err := os.ReadFile(kubeconfig)
	if err != nil || bytes.Equal(kc, oldKubeconfig) {
		return removed, true, false, nil
	}
	return removed, true, true, writeFile(KubeconfigPath(config), kc)
}

// writeFile replaces file with data (0600) by a rename in its directory:
// a crash leaves the old file or the new one.
func writeFile(file string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), file)
}
