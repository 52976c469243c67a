package etcdsnap

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/atrest-io/atrest/cluster"
)

// Census counts stored objects: resource -> storage prefix -> count, with
// prefixes as cluster.StoragePrefix names them ("identity",
// "aescbc:v1:k-abcde", "kms:v2:NAME", "unknown").
type Census map[string]map[string]int64

// Total returns the number of objects of resource.
func (c Census) Total(resource string) int64 {
	var n int64
	for _, v := range c[resource] {
		n += v
	}
	return n
}

// Prefixes returns the storage prefixes in use across every resource,
// sorted.
func (c Census) Prefixes() []string {
	seen := map[string]bool{}
	for _, byPrefix := range c {
		for p, n := range byPrefix {
			if n > 0 {
				seen[p] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

// KeyIDs counts the objects a KMS v2 provider stored, by the key_id in
// each envelope (cluster.KMSv2KeyID): resource -> storage prefix ->
// key_id -> count. It says which version of a KMS key each object needs.
type KeyIDs map[string]map[string]map[string]int64

// Of is the key_id counts of resource under prefix (nil when none).
func (k KeyIDs) Of(resource, prefix string) map[string]int64 { return k[resource][prefix] }

// DefaultPageSize is the census page size when none is given: memory
// stays near this many values (a Secret is at most 1 MiB).
const DefaultPageSize = 500

// censusRetries bounds restarts of a resource's scan after etcd compacted
// the revision it was reading at.
const censusRetries = 3

// Census reads every stored value of each resource (keys alone do not
// tell: the prefix is in the value) with range reads of at most pageSize
// values, all at the revision of the first page so that the count is a
// consistent picture, and counts them by storage prefix. Memory stays
// bounded by the page size however many objects there are. resources are
// as an EncryptionConfiguration names them ("secrets", "deployments.apps",
// "*.*"); StoragePath says where each is stored under registry, the
// kube-apiservers' real --etcd-prefix ("" for Config.RegistryPrefix).
func (c *Client) Census(ctx context.Context, registry string, resources []string, pageSize int64) (Census, error) {
	out, _, err := c.CensusKeyIDs(ctx, registry, resources, pageSize)
	return out, err
}

// CensusKeyIDs is Census that also counts the KMS v2 objects by key_id.
func (c *Client) CensusKeyIDs(ctx context.Context, registry string, resources []string, pageSize int64) (Census, KeyIDs, error) {
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	if registry == "" {
		registry = c.cfg.RegistryPrefix
	}
	out, ids := Census{}, KeyIDs{}
	for _, r := range resources {
		prefix, err := StoragePath(registry, r)
		if err != nil {
			return nil, nil, err
		}
		start := time.Now()
		var counts map[string]int64
		var keyIDs map[string]map[string]int64
		var rev, pages int64
		for attempt := 0; ; attempt++ {
			counts, keyIDs, rev, pages, err = c.count(ctx, prefix, pageSize)
			if errors.Is(err, rpctypes.ErrCompacted) && attempt < censusRetries {
				c.log.Warn("etcd compacted during the census; scanning again", "resource", r, "prefix", prefix)
				continue
			}
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("census of %s (%s): %w", r, prefix, err)
		}
		out[r] = counts
		if len(keyIDs) > 0 {
			ids[r] = keyIDs
		}
		c.log.Debug("census", "resource", r, "prefix", prefix, "revision", rev, "pages", pages,
			"counts", counts, "took", time.Since(start).Round(time.Millisecond))
	}
	return out, ids, nil
}

// CheckRegistry proves that kube-apiserver stores under registry (its
// --etcd-prefix): the kube-system namespace, which every cluster has, is
// there. A census at any other prefix would count nothing, and "nothing
// stored" would let a key be dropped that every object still needs.
func (c *Client) CheckRegistry(ctx context.Context, registry string) error {
	key := "/" + strings.Trim(registry, "/") + "/namespaces/kube-system"
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	resp, err := c.cli.Get(ctx, key, clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("etcd: look for %s: %w", key, err)
	}
	if resp.Count == 0 {
		return fmt.Errorf("etcd holds no %s: kube-apiserver does not store under --etcd-prefix=%s on this etcd; check --etcd-prefix (services.etcd.path) and etcd.endpoints", key, registry)
	}
	return nil
}

// count scans every value under prefix, counting by storage prefix and,
// for KMS v2 values, by key_id under it.
func (c *Client) count(ctx context.Context, prefix string, pageSize int64) (counts map[string]int64, keyIDs map[string]map[string]int64, rev, pages int64, err error) {
	counts = map[string]int64{}
	end := clientv3.GetPrefixRangeEnd(prefix)
	key := prefix
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		pctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
		resp, err := c.cli.Get(pctx, key, opts...)
		cancel()
		if err != nil {
			return nil, nil, 0, pages, fmt.Errorf("range from %q at revision %d: %w", key, rev, err)
		}
		pages++
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			p := cluster.StoragePrefix(kv.Value)
			counts[p]++
			if id, ok := cluster.KMSv2KeyID(kv.Value); ok {
				if keyIDs == nil {
					keyIDs = map[string]map[string]int64{}
				}
				if keyIDs[p] == nil {
					keyIDs[p] = map[string]int64{}
				}
				keyIDs[p][id]++
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return counts, keyIDs, rev, pages, nil
		}
		// The next page starts right after the last key of this one.
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// builtinGroups are the API groups kube-apiserver itself serves and stores
// under /registry/<resource>/, without the group. Every other group
// (apiextensions.k8s.io, apiregistration.k8s.io and every CRD's group) is
// stored under /registry/<group>/<resource>/.
var builtinGroups = map[string]bool{
	"": true, "apps": true, "batch": true, "autoscaling": true, "policy": true, "extensions": true,
	"networking.k8s.io": true, "rbac.authorization.k8s.io": true, "storage.k8s.io": true,
	"scheduling.k8s.io": true, "coordination.k8s.io": true, "node.k8s.io": true, "discovery.k8s.io": true,
	"flowcontrol.apiserver.k8s.io": true, "admissionregistration.k8s.io": true, "certificates.k8s.io": true,
	"events.k8s.io": true, "resource.k8s.io": true, "storagemigration.k8s.io": true,
	"internal.apiserver.k8s.io": true, "apiserverinternal.k8s.io": true,
}

// specialPrefixes are kube-apiserver's own exceptions to the rule
// (pkg/kubeapiserver SpecialDefaultResourcePrefixes), keyed resource.group.
var specialPrefixes = map[string]string{
	"replicationcontrollers":         "controllers",
	"endpoints":                      "services/endpoints",
	"nodes":                          "minions",
	"services":                       "services/specs",
	"ingresses.extensions":           "ingress",
	"ingresses.networking.k8s.io":    "ingress",
	"podsecuritypolicies.policy":     "podsecuritypolicy",
	"podsecuritypolicies.extensions": "podsecuritypolicy",
}

// StoragePath returns the etcd key prefix under which kube-apiserver, with
// --etcd-prefix=registryPrefix, stores resource as an EncryptionConfiguration
// names it: "secrets" -> "/registry/secrets/", "deployments.apps" ->
// "/registry/deployments/", "widgets.example.com" ->
// "/registry/example.com/widgets/", "*.*" -> "/registry/" (everything).
// Group wildcards ("*.apps", "*.") have no single prefix: name the
// resources instead.
func StoragePath(registryPrefix, resource string) (string, error) {
	root := "/" + strings.Trim(registryPrefix, "/") + "/"
	if registryPrefix == "" || root == "//" {
		root = DefaultRegistryPrefix + "/"
	}
	res, group, _ := strings.Cut(resource, ".")
	switch {
	case resource == "*.*":
		return root, nil
	case res == "*":
		return "", fmt.Errorf("census of %q: a group wildcard has no single place in etcd: list its resources (for example secrets, configmaps) instead", resource)
	case res == "" || strings.ContainsAny(resource, "/ \t\n"):
		return "", fmt.Errorf("census of %q: not a resource name (resource or resource.group)", resource)
	}
	if p, ok := specialPrefixes[resource]; ok {
		return root + p + "/", nil
	}
	if builtinGroups[group] {
		return root + res + "/", nil
	}
	return root + group + "/" + res + "/", nil
}
