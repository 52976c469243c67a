package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/reconciler"
	"github.com/atrest-io/atrest/settings"
)

func newSnapshotCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "etcd snapshots bound to the keys that can read them",
	}
	cmd.AddCommand(newSnapshotSaveCommand(), newSnapshotListCommand(), newSnapshotVerifyCommand(), newSnapshotRemoveCommand(), newSnapshotRestoreConfigCommand())
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

// completeSnapshots completes a snapshot name argument with the names of
// cluster.name's snapshots in snapshots.dir (the settings as the command
// line so far gives them). It reads manifests only: no Vault, no etcd.
func completeSnapshots(loader *settings.Loader) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		s, store, err := loadSnapshotStore(loader)
		if err != nil {
			return cobra.AppendActiveHelp(nil, err.Error()), cobra.ShellCompDirectiveNoFileComp
		}
		ms, err := etcdsnap.List(cmd.Context(), store)
		if err != nil {
			return cobra.AppendActiveHelp(nil, err.Error()), cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, m := range ms {
			if strings.HasPrefix(m.Name, toComplete) && m.BelongsTo(s.Cluster.Name) == nil {
				out = append(out, cobra.CompletionWithDesc(m.Name, m.Reason+", "+m.Time.UTC().Format(time.RFC3339)))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// loadSnapshotStore loads the settings and opens their snapshot directory.
func loadSnapshotStore(loader *settings.Loader) (*settings.Settings, *etcdsnap.LocalDir, error) {
	s, err := loader.Load()
	if err != nil {
		return nil, nil, err
	}
	store, err := snapshotStore(s)
	return s, store, err
}

// snapshotStore opens the snapshot directory of the settings.
func snapshotStore(s *settings.Settings) (*etcdsnap.LocalDir, error) {
	if err := s.Validate(settings.NeedSnapshots); err != nil {
		return nil, err
	}
	return etcdsnap.NewLocalDir(s.Snapshots.Dir)
}

func newSnapshotListCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{Use: "list", Short: "List snapshots, newest first", Args: cobra.NoArgs}
	loader := withSettings(cmd)
	outputFlag(cmd, &output)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(output); err != nil {
			return errorExit(err)
		}
		_, store, err := loadSnapshotStore(loader)
		if err != nil {
			return errorExit(err)
		}
		ms, err := etcdsnap.List(cmd.Context(), store)
		if err != nil {
			return errorExit(err)
		}
		return printDoc(cmd.OutOrStdout(), output, snapshotListDoc(ms), func(w io.Writer) error {
			for _, m := range ms {
				fmt.Fprintf(w, "%s  %s  %-12s %-20s %10d bytes  keys %v  git %s\n", m.Name, m.Time.UTC().Format("2006-01-02T15:04:05Z"), orDash(m.Cluster), m.Reason, m.Size, m.KeyNames(), shortRev(m.GitRevision))
			}
			return nil
		})
	}
	return cmd
}

func newSnapshotVerifyCommand() *cobra.Command {
	var src source
	var decrypt bool
	var output string
	cmd := &cobra.Command{
		Use:   "verify NAME [--decrypt]",
		Short: "Re-hash a snapshot and check it against its manifest and etcd's own hash; --decrypt proves every object decrypts",
		Long: `verify re-hashes the snapshot file and checks it against its manifest and
etcd's own hash.

With --decrypt it runs the decryption drill: it opens the file offline and
read-only, takes the newest revision of every key under the resources the
snapshot's config covers, and decrypts each value with the keys the manifest
names, fetched from Vault now, through kube-apiserver's own transformers, then
checks that each is a Kubernetes object of its name. It prints the counts per
resource and storage prefix, each key, and every object that fails (by name
only), records the report beside the snapshot (what atrest status, the
daemon's metrics and its SnapshotNotRestorable stall read), and exits 1 when
the snapshot is not proven restorable: not restorable, or objects under a KMS
provider it cannot check. Only the snapshots of cluster.name. It needs Vault
and the snapshot directory, not the nodes.`,
		Args: cobra.ExactArgs(1),
	}
	loader := withSettings(cmd)
	cmd.ValidArgsFunction = completeSnapshots(loader)
	src.bind(cmd)
	cmd.Flags().BoolVar(&decrypt, "decrypt", false, "decrypt every object with the keys in Vault (the drill), not only re-hash the file")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text, json or yaml (with --decrypt: the drill report)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := checkOutput(output); err != nil {
			return errorExit(err)
		}
		ctx := cmd.Context()
		s, store, err := loadSnapshotStore(loader)
		if err != nil {
			return errorExit(err)
		}
		if !decrypt {
			if err := etcdsnap.Verify(ctx, store, args[0]); err != nil {
				return errorExit(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: verified\n", args[0])
			return nil
		}
		rec, closeKeys, err := snapshotKeeper(cmd, s, store, &src)
		if err != nil {
			return errorExit(err)
		}
		defer closeKeys()
		m, err := etcdsnap.ReadManifest(ctx, store, args[0])
		if err != nil {
			return errorExit(err)
		}
		if err := m.BelongsTo(s.Cluster.Name); err != nil {
			return errorExit(err)
		}
		rep, err := rec.Drill(ctx, args[0])
		if rep != nil {
			if perr := printDoc(cmd.OutOrStdout(), output, rep, func(w io.Writer) error {
				_, err := io.WriteString(w, rep.Text())
				return err
			}); perr != nil && err == nil {
				err = perr
			}
		}
		if err != nil {
			return errorExit(err)
		}
		if rep.Verdict != etcdsnap.Restorable {
			return &exitCodeError{code: exitNotProven, err: fmt.Errorf("snapshot %s is not proven restorable: %s", rep.Snapshot, rep.Summary())}
		}
		return nil
	}
	return cmd
}

func newSnapshotRemoveCommand() *cobra.Command {
	var src source
	cmd := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a snapshot known lost (its file, manifest, drill report) and release its key references",
		Long: `remove removes one snapshot of cluster.name, whatever the retention: its file,
its manifest, its drill report, and the references in Vault that kept the
keys it needs from being destroyed. Use it for a snapshot that cannot be
restored (a key destroyed, a corrupted file): while it is kept, its failing
drill stalls the daemon (SnapshotNotRestorable). It refuses the snapshot of
the transition in flight.`,
		Args: cobra.ExactArgs(1),
	}
	loader := withSettings(cmd)
	cmd.ValidArgsFunction = completeSnapshots(loader)
	src.bind(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		s, store, err := loadSnapshotStore(loader)
		if err != nil {
			return errorExit(err)
		}
		rec, closeKeys, err := snapshotKeeper(cmd, s, store, &src)
		if err != nil {
			return errorExit(err)
		}
		defer closeKeys()
		if err := rec.RemoveSnapshot(cmd.Context(), args[0]); err != nil {
			return errorExit(err)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", args[0])
		return nil
	}
	return cmd
}

// snapshotKeeper is what the snapshot commands that need the keys drive:
// Vault and the snapshot directory, not the nodes. The caller closes the
// keystore with the func returned.
func snapshotKeeper(cmd *cobra.Command, s *settings.Settings, store etcdsnap.Store, src *source) (*reconciler.Reconciler, func(), error) {
	ctx := cmd.Context()
	log := newLogger(s, cmd.ErrOrStderr())
	d, err := src.pinned(ctx, s, log)
	if err != nil {
		return nil, nil, err
	}
	keys, err := openKeystore(ctx, s, d.cfg, log)
	if err != nil {
		return nil, nil, err
	}
	return &reconciler.Reconciler{Keys: keys, Snapshots: store, Cluster: s.Cluster.Name, Logger: log, KMS: kmsOf(s, keys, nil)}, keys.Close, nil
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
	cmd.ValidArgsFunction = completeSnapshots(loader)
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
