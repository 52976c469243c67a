package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/settings"
)

func newSnapshotCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "etcd snapshots bound to the keys that can read them",
	}
	cmd.AddCommand(newSnapshotSaveCommand(), newSnapshotListCommand(), newSnapshotVerifyCommand(), newSnapshotRestoreConfigCommand())
	return cmd
}

func newSnapshotSaveCommand() *cobra.Command {
	var src source
	cmd := &cobra.Command{
		Use:   "save",
		Short: "Save and verify an etcd snapshot now (reason: manual), bound to the deployed keys",
		Args:  cobra.NoArgs,
	}
	loader := withSettings(cmd)
	src.bind(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx := cmd.Context()
		ss, e, err := connect(cmd, loader, &src)
		if err != nil {
			return errorExit(err)
		}
		defer e.Close()
		d := ss.d
		m, err := e.rec.SaveSnapshot(ctx, "manual", d.revision)
		if err != nil {
			return errorExit(err)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "saved %s: %d bytes, sha256 %s, verified; keys %v\n", m.Name, m.Size, m.SHA256, m.KeyNames())
		return nil
	}
	return cmd
}

// snapshotStore opens the snapshot directory of the settings.
func snapshotStore(s *settings.Settings) (*etcdsnap.LocalDir, error) {
	if err := s.Validate(settings.NeedSnapshots); err != nil {
		return nil, err
	}
	return etcdsnap.NewLocalDir(s.Snapshots.Dir)
}

func newSnapshotListCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "List snapshots, newest first", Args: cobra.NoArgs}
	loader := withSettings(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		s, err := loader.Load()
		if err != nil {
			return errorExit(err)
		}
		store, err := snapshotStore(s)
		if err != nil {
			return errorExit(err)
		}
		ms, err := etcdsnap.List(cmd.Context(), store)
		if err != nil {
			return errorExit(err)
		}
		for _, m := range ms {
			fmt.Fprintf(cmd.OutOrStdout(), "%s  %s  %-12s %-20s %10d bytes  keys %v  git %s\n", m.Name, m.Time.UTC().Format("2006-01-02T15:04:05Z"), orDash(m.Cluster), m.Reason, m.Size, m.KeyNames(), shortRev(m.GitRevision))
		}
		return nil
	}
	return cmd
}

func newSnapshotVerifyCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "verify NAME", Short: "Re-hash a snapshot and check it against its manifest and etcd's own hash", Args: cobra.ExactArgs(1)}
	loader := withSettings(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		s, err := loader.Load()
		if err != nil {
			return errorExit(err)
		}
		store, err := snapshotStore(s)
		if err != nil {
			return errorExit(err)
		}
		if err := etcdsnap.Verify(cmd.Context(), store, args[0]); err != nil {
			return errorExit(err)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s: verified\n", args[0])
		return nil
	}
	return cmd
}

func newSnapshotRestoreConfigCommand() *cobra.Command {
	var src source
	var outFile string
	var overwrite bool
	cmd := &cobra.Command{
		Use:   "restore-config NAME --out FILE",
		Short: "Write the EncryptionConfiguration a snapshot was taken under (keys from Vault), and print the restore steps",
		Long: `restore-config writes, mode 0600, the EncryptionConfiguration the snapshot was
taken under, as its manifest records it: its resource lists, every key it
names (fetched from Vault, checked against its fingerprint) and every key the
census found objects under, its KMS providers, and identity. With it, a
kube-apiserver reads every object the snapshot holds, whatever was rotated or
disabled since; the objects of a KMS provider only while its plugin runs, and
the printed steps name any objects no provider atrest knows can read. It then
prints the etcdutl / RKE steps to use it. The file holds key material: keep it
where the cluster's certificates are. Only the snapshots of cluster.name.`,
		Args: cobra.ExactArgs(1),
	}
	loader := withSettings(cmd)
	src.bind(cmd)
	cmd.Flags().StringVar(&outFile, "out", "", "file to write (required)")
	cmd.Flags().BoolVar(&overwrite, "overwrite", false, "replace --out if it exists")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if outFile == "" {
			return errorExit(fmt.Errorf("restore-config: --out FILE is required"))
		}
		s, err := loader.Load()
		if err != nil {
			return errorExit(err)
		}
		log := newLogger(s, cmd.ErrOrStderr())
		d, err := src.pinned(ctx, s, log)
		if err != nil {
			return errorExit(err)
		}
		store, err := snapshotStore(s)
		if err != nil {
			return errorExit(err)
		}
		m, err := etcdsnap.ReadManifest(ctx, store, args[0])
		if err != nil {
			return errorExit(err)
		}
		keys, err := openKeystore(ctx, s, d.cfg, log)
		if err != nil {
			return errorExit(err)
		}
		defer keys.Close()
		if err := m.BelongsTo(s.Cluster.Name); err != nil {
			return errorExit(err)
		}
		data, err := etcdsnap.RestoreConfig(ctx, m, keys)
		if err != nil {
			return errorExit(err)
		}
		if err := etcdsnap.WriteRestoreConfig(outFile, data, overwrite); err != nil {
			return errorExit(err)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (0600): the snapshot's config, with the keys %v\n\n%s", outFile, m.KeyNames(), etcdsnap.RestoreInstructionsIn(store, m, outFile))
		return nil
	}
	return cmd
}

// orDash is s, or "-" when it is empty (a manifest from before atrest
// recorded its cluster).
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
