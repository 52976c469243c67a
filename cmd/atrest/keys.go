package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/keystore"
	"github.com/atrest-io/atrest/settings"
)

func newKeysCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "The keys of the cluster's keyring in Vault",
	}
	cmd.AddCommand(newKeysDestroyRetiredCommand(), newKeysRotatePluginCredentialsCommand())
	return cmd
}

func newKeysRotatePluginCredentialsCommand() *cobra.Command {
	var src source
	var nodes []string
	cmd := &cobra.Command{
		Use:   "rotate-plugin-credentials",
		Short: "Give the KMS plugin on each node a fresh Vault secret id, and revoke the old one",
		Long: `rotate-plugin-credentials replaces the Vault credential of the KMS plugin
(provider vault-transit) on every controlplane node that runs one, or on the
nodes --node names: one node at a time, under the transition lock, it issues
a new AppRole secret id for that node, writes it to the node (0600, over
SSH), starts the plugin again, proves it healthy with it, and revokes the
secret id it replaces. Use it on a schedule of your own, or at once when a
node's disk or backup may have leaked its credential.`,
		Args: cobra.NoArgs,
	}
	loader := withSettings(cmd)
	src.bind(cmd)
	cmd.Flags().StringSliceVar(&nodes, "node", nil, "only these nodes (by cluster.yml's hostname_override or address); default every node with a plugin")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		_, e, err := connect(cmd, loader, &src)
		if err != nil {
			return errorExit(err)
		}
		defer e.Close()
		host, _ := os.Hostname()
		if err := e.rec.RotatePluginCredentials(cmd.Context(), fmt.Sprintf("atrest keys rotate-plugin-credentials pid %d on %s", os.Getpid(), host), nodes); err != nil {
			return errorExit(err)
		}
		fmt.Fprintln(cmd.OutOrStdout(), "the KMS plugins run with fresh Vault credentials; the ones they replace are revoked")
		return nil
	}
	return cmd
}

// destroyRetiredReport is what `atrest keys destroy-retired` prints: no key
// material, only names, fingerprints and what was done.
type destroyRetiredReport struct {
	Cluster string                `json:"cluster"`
	DryRun  bool                  `json:"dryRun"`
	Keys    []keystore.RetiredKey `json:"keys"`
}

func newKeysDestroyRetiredCommand() *cobra.Command {
	var src source
	var dryRun bool
	var output string
	cmd := &cobra.Command{
		Use:   "destroy-retired [KEY...]",
		Short: "Destroy the retired keys no kept snapshot needs, in Vault, and drop them from the keyring",
		Long: `destroy-retired destroys, in Vault, the material of the keyring's retired keys
(no longer in any deployed config) that no kept snapshot needs, every version
and its metadata, and then drops them from the keyring. A retired key is kept
while a snapshot needs it: one that Vault's snapshot references list, or one
whose manifest is in snapshots.dir (this cluster's, or a manifest naming no
cluster). It takes the transition lock, and refuses while a transition is in
flight. With KEY arguments only those keys (each a retired key) are
considered, and one of them being kept is an error (exit 2).

The daemon's Vault policy cannot destroy keys: run this as an operator whose
token has examples/vault-policy-destroy.hcl. Nothing is undone: once a key is
destroyed, no snapshot taken under it can be read again. --dry-run shows what
would be destroyed and changes nothing.`,
	}
	loader := withSettings(cmd)
	src.bind(cmd)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "show what would be destroyed; change nothing")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text, json or yaml")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := checkOutput(output); err != nil {
			return errorExit(err)
		}
		ctx := cmd.Context()
		ss, keys, err := beginKeys(cmd, loader, &src)
		if err != nil {
			return errorExit(err)
		}
		defer keys.Close()
		needs, err := manifestKeys(ctx, ss.s)
		if err != nil {
			return errorExit(err)
		}
		host, _ := os.Hostname()
		res, err := keys.DestroyRetired(ctx, keystore.DestroyRetiredOptions{
			Holder:    fmt.Sprintf("atrest %s keys destroy-retired pid %d on %s", version, os.Getpid(), host),
			Snapshots: needs,
			Names:     args,
			DryRun:    dryRun,
		})
		report := destroyRetiredReport{Cluster: ss.s.Cluster.Name, DryRun: dryRun, Keys: res}
		if report.Keys == nil {
			report.Keys = []keystore.RetiredKey{}
		}
		if perr := printDoc(cmd.OutOrStdout(), output, report, report.text); perr != nil && err == nil {
			err = perr
		}
		if err != nil {
			return errorExit(err)
		}
		if len(args) > 0 {
			for _, k := range res {
				if k.Action == keystore.RetiredKept {
					return errorExit(fmt.Errorf("key %s is kept: snapshots %v need it", k.Name, k.ReferencedBy))
				}
			}
		}
		return nil
	}
	return cmd
}

// manifestKeys reads the manifests in snapshots.dir and returns, for each
// snapshot of this cluster (or of no recorded cluster: it may be this
// one's), the keys it needs. A manifest that cannot be read fails it:
// the key it needs might otherwise be destroyed.
func manifestKeys(ctx context.Context, s *settings.Settings) (map[string][]keystore.NeededKey, error) {
	store, err := snapshotStore(s)
	if err != nil {
		return nil, fmt.Errorf("destroy-retired reads the snapshot manifests to keep the keys they need: %w", err)
	}
	ms, err := etcdsnap.List(ctx, store)
	if err != nil {
		return nil, fmt.Errorf("%w: no key was destroyed", err)
	}
	out := map[string][]keystore.NeededKey{}
	for _, m := range ms {
		if m.BelongsTo(s.Cluster.Name) != nil {
			continue
		}
		var needs []keystore.NeededKey
		for _, k := range append(slices.Clone(m.Keys), etcdsnap.ConfigKeys(m.Config)...) {
			n := keystore.NeededKey{Name: k.Name, Fingerprint: k.Fingerprint}
			if !slices.Contains(needs, n) {
				needs = append(needs, n)
			}
		}
		if len(needs) > 0 {
			out[m.Name] = needs
		}
	}
	return out, nil
}

func (r destroyRetiredReport) text(w io.Writer) error {
	if len(r.Keys) == 0 {
		_, err := fmt.Fprintf(w, "cluster %s: no retired key to destroy\n", r.Cluster)
		return err
	}
	for _, k := range r.Keys {
		line := fmt.Sprintf("%s (%s %s, created %s): %s", k.Name, k.Provider, k.Fingerprint, k.Created.UTC().Format(time.RFC3339), k.Action)
		if k.Action == keystore.RetiredKept {
			line += fmt.Sprintf(", referenced by snapshots %v", k.ReferencedBy)
		}
		fmt.Fprintln(w, line)
	}
	if r.DryRun {
		fmt.Fprintln(w, "dry run: nothing was changed")
	}
	return nil
}
