package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/atrest-io/atrest/cluster"
	"github.com/spf13/cobra"
)

func newValidateCommand() *cobra.Command {
	var configFile, policyFile string
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check cluster.yml (and atrest.yaml) the way kube-apiserver will, changing nothing",
		Long: `Validate parses cluster.yml and, when given or found beside it, atrest.yaml,
and checks any custom EncryptionConfiguration strictly, with kube-apiserver's
own decoder and validation. It prints a one-line summary and exits 0, or prints
every problem found, each naming the file and the field, and exits 2.
It never prints key material.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			cfg, cerr := cluster.Load(configFile)
			policy, perr := loadPolicy(configFile, policyFile, cmd.Flags().Changed("policy"))
			if err := errors.Join(cerr, perr); err != nil {
				return &exitCodeError{code: exitError, err: err}
			}
			policyDesc := "no atrest.yaml, defaults: " + cluster.DefaultPolicy().Summary(time.Now())
			if policy != nil {
				policyDesc = policy.file + ": " + policy.Summary(time.Now())
			}
			fmt.Fprintf(out, "%s: valid: %s; %s\n", configFile, cfg.Summary(), policyDesc)
			if advice := cfg.ReloadAdvice(); advice != "" && cfg.Desired.Mode != cluster.Disabled {
				fmt.Fprintf(out, "note: %s\n", advice)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&configFile, "config", envOr("RKE_CONFIG", "cluster.yml"), "RKE cluster.yml to read (env RKE_CONFIG)")
	cmd.Flags().StringVar(&policyFile, "policy", "", "atrest.yaml policy to read (default: atrest.yaml beside the cluster.yml, if there is one)")
	return cmd
}

type namedPolicy struct {
	*cluster.Policy
	file string
}

// loadPolicy loads the policy named by --policy, or atrest.yaml beside
// cluster.yml when there is one. A policy named explicitly must exist.
func loadPolicy(configFile, policyFile string, explicit bool) (*namedPolicy, error) {
	if !explicit {
		policyFile = filepath.Join(filepath.Dir(configFile), "atrest.yaml")
		if _, err := os.Stat(policyFile); errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
	}
	p, err := cluster.LoadPolicy(policyFile)
	if err != nil {
		return nil, err
	}
	return &namedPolicy{Policy: p, file: policyFile}, nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
