// Package atrestbin builds the atrest binary for tests that run it as
// operators do: the end-to-end tests, the examples and the demo.
package atrestbin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Build compiles the atrest command into a temporary directory and returns
// the binary's path and a function that removes the directory. The go
// command's build cache makes every build after the first take seconds.
//
// With $ATREST_TEST_BINARY set, it builds nothing and returns that binary:
// how a new test is seen to fail on an earlier atrest before the fix.
func Build() (string, func(), error) {
	if bin := os.Getenv("ATREST_TEST_BINARY"); bin != "" {
		return bin, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "atrest-bin")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	bin := filepath.Join(dir, "atrest")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// By import path, so it builds from any package's directory.
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/atrest-io/atrest/cmd/atrest")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	// Static, as `make build` and the image build it: the sandbox runs it
	// in a container of its own (the KMS plugin's).
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if err := build.Run(); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("build atrest: %w", err)
	}
	return bin, cleanup, nil
}
