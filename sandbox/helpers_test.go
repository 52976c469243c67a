//go:build sandbox

package sandbox_test

import "github.com/spf13/pflag"

func newFlagSet() *pflag.FlagSet { return pflag.NewFlagSet("sandbox", pflag.ContinueOnError) }
