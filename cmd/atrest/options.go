package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/atrest-io/atrest/settings"
)

func newOptionsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "options",
		Short: "List the runtime settings' flags, which every command that reads the settings accepts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fs := pflag.NewFlagSet("settings", pflag.ContinueOnError)
			settings.Bind(fs)
			fmt.Fprintf(cmd.OutOrStdout(), `Every command that reads the runtime settings accepts these flags. Each
setting is also an ATREST_* variable (named beside it) and a key of the YAML
file --settings names (vault.address is vault: {address: ...}); a flag wins
over its variable, the variable over the file, the file over the default.

%s`, fs.FlagUsages())
			return nil
		},
	}
}
