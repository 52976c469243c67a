package controlplane

import (
	"context"
	"errors"
	"fmt"
	"path"
)

// backupPath is where apply keeps the node's previous provider file until
// the node's step is done: beside the file, so that recovery after a crash
// can put it back. An empty backup says there was no file (a provider
// file is never empty).
func (n *Node) backupPath() string {
	dir, base := path.Split(n.file)
	return path.Join(dir, "."+base+".atrest-prev")
}

// saveBackup keeps prev, the file apply is about to replace, on the node.
func (n *Node) saveBackup(ctx context.Context, prev ProviderFile) error {
	var data []byte
	if prev.Present {
		data = prev.Data
	}
	return n.writeAtomic(ctx, "back up provider file "+n.file+" to "+n.backupPath(), n.backupPath(), data)
}

// dropBackup removes the backup once the step it covers is over; a
// failure is only logged: a backup recovery finds later is harmless.
func (n *Node) dropBackup(ctx context.Context) {
	if err := n.removeFile(ctx, "remove provider file backup "+n.backupPath(), n.backupPath()); err != nil {
		n.log.Warn("could not remove the provider file backup", "path", n.backupPath(), "error", err)
	}
}

// readBackup reads the backup; found is false when there is none, and the
// file is absent when the backup says there was no provider file.
func (n *Node) readBackup(ctx context.Context) (f ProviderFile, found bool, err error) {
	op := "read provider file backup " + n.backupPath()
	r, err := n.run(ctx, fmt.Sprintf(`b=%s
[ -e "$b" ] || exit %d
exec cat -- "$b"`, shellQuote(n.backupPath()), exitAbsent), nil, MaxProviderFileSize+1)
	switch {
	case err != nil:
		return ProviderFile{}, false, n.sshErr(op, err)
	case r.code == exitAbsent:
		return ProviderFile{}, false, nil
	case r.code != 0:
		return ProviderFile{}, false, nodeErr(n.name, op, nil, fmt.Errorf("exit status %d: %s", r.code, r.stderr))
	case r.overflow:
		return ProviderFile{}, false, nodeErr(n.name, op, nil, fmt.Errorf("larger than %d bytes: not a provider file", MaxProviderFileSize))
	case len(r.stdout) == 0:
		return ProviderFile{}, true, nil
	}
	return newProviderFile(r.stdout), true, nil
}

// Recover repairs what an interrupted run (atrest killed, a lost
// connection) left on every node, one node at a time in cluster.yml
// order: the kube-apiserver containers of a replacement left half done
// (see Failpoints), then the provider file of a step left half done, which
// is put back from its backup unless kube-apiserver is ready with the new
// one. A node with nothing left over costs two calls. The reconciler calls
// it under its lock before planning; the error names every node that
// could not be recovered.
func (c *Cluster) Recover(ctx context.Context) error {
	var errs []error
	for _, n := range c.nodes {
		if err := n.recover(ctx); err != nil {
			n.log.Error("could not recover the node from an interrupted run", "error", err)
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("controlplane: recover from an interrupted run: %d of %d nodes failed:\n%w", len(errs), len(c.nodes), errors.Join(errs...))
	}
	return nil
}

func (n *Node) recover(ctx context.Context) error {
	const op = "recover from an interrupted run"
	if err := n.recoverLeftovers(ctx); err != nil {
		return nodeErr(n.name, op, nil, fmt.Errorf("kube-apiserver containers: %w", err))
	}
	bak, found, err := n.readBackup(ctx)
	if err != nil || !found {
		return err
	}
	if err := n.recoverFile(ctx, bak); err != nil {
		return nodeErr(n.name, op, nil, fmt.Errorf("provider file %s: %w", n.file, err))
	}
	return nil
}

// recoverFile settles a step that replaced the provider file by bak and
// did not finish: the new file stays when kube-apiserver is ready (with it,
// or with the old one loaded, which the planner reloads), else the old one
// is put back and kube-apiserver restarted on it.
func (n *Node) recoverFile(ctx context.Context, bak ProviderFile) error {
	cur, err := n.ReadProviderFile(ctx)
	if err != nil {
		return err
	}
	if cur.Present == bak.Present && cur.SHA256 == bak.SHA256 {
		n.log.Warn("removing a provider file backup an interrupted run left: the file is unchanged")
		return n.removeBackupNow(ctx)
	}
	c, err := n.container(ctx)
	if err != nil {
		return err
	}
	if c.State.Running {
		err := n.WaitReady(ctx)
		if err == nil {
			if s, _ := n.loadState(ctx, cur, describe(c, n.file)); s != LoadInForce {
				n.log.Warn("kube-apiserver is ready but has not loaded the provider file an interrupted run wrote: keeping it, for a reload", "file", cur)
			} else {
				n.log.Warn("kube-apiserver is ready with the provider file an interrupted run wrote: keeping it", "file", cur)
			}
			return n.removeBackupNow(ctx)
		}
		n.log.Warn("kube-apiserver is not ready after an interrupted run changed its provider file: putting the previous file back", "error", err)
	} else {
		n.log.Warn("kube-apiserver is not running after an interrupted run changed its provider file: putting the previous file back", "status", c.State.Status)
	}
	if bak.Present {
		err = n.WriteProviderFile(ctx, bak.Data)
	} else {
		err = n.RemoveProviderFile(ctx)
	}
	if err != nil {
		return fmt.Errorf("put the previous file back: %w", err)
	}
	if err := n.Restart(ctx); err != nil {
		return err
	}
	if err := n.WaitReady(ctx); err != nil {
		return err
	}
	n.log.Warn("previous provider file back and kube-apiserver ready", "file", bak)
	return n.removeBackupNow(ctx)
}

// removeBackupNow removes the backup, failing when it cannot.
func (n *Node) removeBackupNow(ctx context.Context) error {
	return n.removeFile(ctx, "remove provider file backup "+n.backupPath(), n.backupPath())
}
