// Package sandboxtest runs a package's tests against one sandbox, started
// before the tests and stopped after them, failed or not.
package sandboxtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/atrest-io/atrest/internal/atrestbin"
	"github.com/atrest-io/atrest/sandbox"
)

// Main is a TestMain body: it starts a sandbox with opts into *sb, runs the
// tests, stops the sandbox and returns the exit code for os.Exit. The state
// directory is fixed per test package (under the system temp dir), so a run
// killed mid-way is cleaned up by the next one.
//
//	func TestMain(m *testing.M) { os.Exit(sandboxtest.Main(m, sandbox.Options{Nodes: 3}, &sb)) }
func Main(m *testing.M, opts sandbox.Options, sb **sandbox.Sandbox) int {
	sandbox.RunHelper()
	if opts.Dir == "" {
		wd, _ := os.Getwd()
		opts.Dir = filepath.Join(os.TempDir(), "atrest-sandbox-"+filepath.Base(wd))
	}
	if opts.Log == nil {
		opts.Log = os.Stderr
	}
	if err := binaries(&opts); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	s, err := sandbox.Start(ctx, opts)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*sb = s
	defer func() {
		if err := s.Stop(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "sandbox stop:", err)
		}
	}()
	return m.Run()
}

// MainWithAtrest is Main for the packages that run the atrest binary as
// operators do: it builds the binary into *atrest before the sandbox
// starts, so that opts (given the binary's path) can make the nodes' KMS
// plugin image from it, and removes it after the tests.
//
//	os.Exit(sandboxtest.MainWithAtrest(m, &atrest, &sb, func(bin string) sandbox.Options {
//		return sandbox.Options{Nodes: 3, KMSPlugin: bin}
//	}))
func MainWithAtrest(m *testing.M, atrest *string, sb **sandbox.Sandbox, opts func(bin string) sandbox.Options) int {
	// Before the build: the sandbox runs this test binary as its helpers.
	sandbox.RunHelper()
	bin, cleanup, err := atrestbin.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cleanup()
	*atrest = bin
	return Main(m, opts(bin), sb)
}

// binaries fills in the kube-apiserver and Vault binaries: from the
// environment (make test sets them), else built by tools/build.sh.
func binaries(opts *sandbox.Options) error {
	for name, dst := range map[string]*string{"kube-apiserver": &opts.KubeAPIServer, "vault": &opts.Vault} {
		if *dst != "" {
			continue
		}
		bin, err := Binary(name)
		if err != nil {
			return err
		}
		*dst = bin
	}
	return nil
}

// Binary is the tool tools/build.sh builds as name (kube-apiserver,
// kube-apiserver-v1.32, vault, ...): $ATREST_NAME (upper case, - and . as
// _) when set, as make test sets them, else built (or found cached) by
// tools/build.sh.
func Binary(name string) (string, error) {
	env := "ATREST_" + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(name))
	if v := os.Getenv(env); v != "" {
		return v, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(filepath.Join(root, "tools", "build.sh"), name)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("build %s with tools/build.sh (or set $%s): %w", name, env, err)
	}
	return strings.TrimSpace(string(out)), nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "tools", "build.sh")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no tools/build.sh above %s", dir)
		}
		dir = parent
	}
}
