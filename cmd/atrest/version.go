package main

import (
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/atrest-io/atrest/api"
)

func newVersionCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print atrest's version",
		Args:  cobra.NoArgs,
	}
	outputFlag(cmd, &output)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(output); err != nil {
			return errorExit(err)
		}
		doc := api.VersionInfo{TypeMeta: api.Meta("Version"), Version: version, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
		return printDoc(cmd.OutOrStdout(), output, doc, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "atrest %s (%s, %s)\n", doc.Version, doc.GoVersion, doc.Platform)
			return err
		})
	}
	return cmd
}
