package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/settings"
)

// rkeDefaultClusterName is the name RKE gives a cluster whose cluster.yml
// has no cluster_name.
const rkeDefaultClusterName = "local"

// clusterName is the cluster a cluster.yml describes: its cluster_name, as
// RKE names clusters.
func clusterName(cfg *cluster.Config) string {
	if cfg.ClusterName != "" {
		return cfg.ClusterName
	}
	return rkeDefaultClusterName
}

// checkIdentity refuses a cluster.yml (read from origin) that describes
// another cluster than the one cluster.name pins. The keyring, its lock and
// journal are cluster.name's alone: were a commit able to name them, the
// same nodes could have two keyrings and two writers, and the keys of the
// second would be imported from nodes the first still encrypts.
func checkIdentity(s *settings.Settings, cfg *cluster.Config, origin string) error {
	pinned, named := s.Cluster.Name, clusterName(cfg)
	if named == pinned {
		return nil
	}
	says := fmt.Sprintf("is %q", cfg.ClusterName)
	if cfg.ClusterName == "" {
		says = fmt.Sprintf("is not set, so RKE names the cluster %q", rkeDefaultClusterName)
	}
	return fmt.Errorf("%s: cluster_name: %s, but this atrest manages cluster.name %q (from %s): refused, because it would open another keyring for the same nodes; nothing was opened or changed. "+
		"If the file is another cluster's, run atrest with that cluster's settings; if it is this cluster's, set cluster_name: %s in it, "+
		"or, if cluster.name is what is wrong, set cluster.name to the name of the keyring in Vault (under %s/%s/) that holds this cluster's keys: after an upgrade, the cluster_name cluster.yml had, or %q if it had none",
		origin, says, pinned, s.Source("cluster.name"), pinned, s.Vault.KVMount, s.Vault.Prefix, rkeDefaultClusterName)
}

// pinned loads the desired state for a command that opens the keyring:
// cluster.name must be set, and cluster.yml must describe that cluster.
// Both are checked before anything is opened, so a wrong one changes
// nothing. (From Git, the revision in force of cluster.name is read from
// Vault first, to refuse a rollback: that document is the operator's
// cluster's, never the one a commit names.)
func (src *source) pinned(ctx context.Context, s *settings.Settings, log *slog.Logger) (*desired, error) {
	if err := s.Validate(settings.NeedCluster); err != nil {
		return nil, err
	}
	d, err := src.load(ctx, s, log)
	if err != nil {
		return nil, err
	}
	if err := checkIdentity(s, d.cfg, d.origin); err != nil {
		return nil, err
	}
	return d, nil
}
