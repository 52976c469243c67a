//go:build !sandbox

package examples

import (
	"fmt"
	"os"
	"testing"

	"github.com/atrest-io/atrest/internal/atrestbin"
)

// TestMain builds the atrest binary the examples are checked with. The
// sandbox tier has its own TestMain, which also starts a sandbox.
func TestMain(m *testing.M) {
	bin, cleanup, err := atrestbin.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	atrestBin = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}
