package examples

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// atrestBin is the atrest binary TestMain builds.
var atrestBin string

// buildAtrest builds the atrest binary into a new temporary directory and
// returns the directory, for the caller to remove.
func buildAtrest() (string, error) {
	dir, err := os.MkdirTemp("", "atrest-examples-bin")
	if err != nil {
		return "", err
	}
	atrestBin = filepath.Join(dir, "atrest")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", atrestBin, "../cmd/atrest")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("build atrest: %w", err)
	}
	return dir, nil
}

// atrest runs the binary with args and extra environment, and returns its
// exit code and combined output.
func atrest(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, atrestBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String()
	case err != nil:
		t.Fatalf("atrest %v: %v", args, err)
	}
	return 0, out.String()
}
