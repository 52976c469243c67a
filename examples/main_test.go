//go:build !sandbox

package examples

import (
	"fmt"
	"os"
	"testing"
)

// TestMain builds the atrest binary the examples are checked with. The
// sandbox tier has its own TestMain, which also starts a sandbox.
func TestMain(m *testing.M) {
	dir, err := buildAtrest()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
