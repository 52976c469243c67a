package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/keystore"
	"github.com/atrest-io/atrest/settings"
)

func newAdoptCommand() *cobra.Command {
	var src source
	var rkestate string
	var fromNodes bool
	cmd := &cobra.Command{
		Use:   "adopt",
		Short: "Import the keys of a cluster RKE already encrypts into Vault, changing nothing on the nodes",
		Long: `adopt reads the keys RKE deployed, from the provider file on every controlplane
node and/or from a cluster.rkestate (currentState.encryptionConfig), and stores
them in Vault, so atrest can take the cluster over without re-encrypting
first. It prints what it imported (names, providers, fingerprints; never the
material) and what to remove from the rkestate afterwards.

Once the keys are out of cluster.rkestate, run 'atrest rke up' instead of
plain 'rke up': with secrets_encryption_config enabled and no keys in its
state, RKE generates a new key and overwrites the provider file. (If it
happens anyway, atrest imports that key first and converges back.)`,
		Args: cobra.NoArgs,
	}
	loader := withSettings(cmd)
	src.bind(cmd)
	cmd.Flags().StringVar(&rkestate, "rkestate", "", "cluster.rkestate to read keys from")
	cmd.Flags().BoolVar(&fromNodes, "from-nodes", true, "read the provider file on every controlplane node")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx := cmd.Context()
		ss, err := begin(cmd, loader, &src)
		if err != nil {
			return errorExit(err)
		}
		s, log, d := ss.s, ss.log, ss.d
		var sources []keystore.Source
		if rkestate != "" {
			data, err := os.ReadFile(rkestate)
			if err != nil {
				return errorExit(fmt.Errorf("adopt: %w", err))
			}
			sources = append(sources, keystore.Source{Name: rkestate, Data: data})
		}
		if fromNodes {
			if err := s.Validate(settings.NeedSSH, settings.NeedKubernetes); err != nil {
				return errorExit(err)
			}
			rc, err := restConfig(s, log)
			if err != nil {
				return errorExit(err)
			}
			nodes, err := controlplane.Connect(ctx, d.cfg, controlplane.Options{
				KnownHostsFile: s.SSH.KnownHostsFile, InsecureSkipHostKeyVerification: s.SSH.InsecureSkipHostKeyVerification,
				KeyFile: s.SSH.KeyFile, Timeout: s.SSH.Timeout, APIServer: rc, Logger: log,
			})
			if err != nil {
				return errorExit(err)
			}
			defer nodes.Close()
			for _, n := range nodes.Nodes() {
				f, err := n.ReadProviderFile(ctx)
				if err != nil {
					return errorExit(err)
				}
				if f.Present {
					sources = append(sources, keystore.Source{Name: n.Name() + ":" + n.ProviderFilePath(), Data: f.Data})
				}
			}
		}
		if len(sources) == 0 {
			return errorExit(fmt.Errorf("adopt: no provider file on any node and no --rkestate: nothing to import"))
		}
		keys, err := openKeystore(ctx, s, d.cfg, log)
		if err != nil {
			return errorExit(err)
		}
		defer keys.Close()
		a, err := keys.Adopt(ctx, sources...)
		if err != nil {
			return errorExit(err)
		}
		fmt.Fprint(cmd.OutOrStdout(), a.String())
		return nil
	}
	return cmd
}
