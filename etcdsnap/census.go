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
		c.fulls.Add(1)
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
	rev, pages, err = c.scan(ctx, prefix, 0, pageSize, c.pageBytes(), func(_, value []byte) {
		l := labelOf(value)
		counts[l.prefix]++
		if l.keyID != "" {
			if keyIDs == nil {
				keyIDs = map[string]map[string]int64{}
			}
			if keyIDs[l.prefix] == nil {
				keyIDs[l.prefix] = map[string]int64{}
			}
			keyIDs[l.prefix][l.keyID]++
		}
	})
	if err != nil {
		return nil, nil, 0, pages, err
	}
	return counts, keyIDs, rev, pages, nil
}

// label is how one stored value is written: its storage prefix, and for
// a KMS v2 value the key_id of its envelope.
type label struct{ prefix, keyID string }

func labelOf(value []byte) label {
	l := label{prefix: cluster.StoragePrefix(value)}
	l.keyID, _ = cluster.KMSv2KeyID(value)
	return l
}

// DefaultPageBytes bounds the values one census page may hold: a page of
// Helm releases (up to about 1 MiB each) holds four, not hundreds
// (Config.PageBytes). A page costs about five times its size in heap
// (gRPC's buffer, the decoded response, the page before it not yet
// collected): at 4 MiB a census of 1 MiB values peaks no higher than one
// of 10 KiB values in pages of 500 (make bench-daemon).
const DefaultPageBytes = 4 << 20

func (c *Client) pageBytes() int64 {
	if c.cfg.PageBytes > 0 {
		return c.cfg.PageBytes
	}
	return DefaultPageBytes
}

// firstPage is how many values the first page of a scan asks for, before
// it knows how large they are: about 6 MiB even if each is as large as
// etcd takes (1.5 MiB).
const firstPage = 4

// scan calls visit with every key and value under prefix, read at one
// revision (rev, or the first page's when 0) in pages of at most pageSize
// values that hold about pageBytes: each page asks for as many values as
// the largest of the last page says fit. It returns the revision read at
// and the pages read. visit must not keep value.
func (c *Client) scan(ctx context.Context, prefix string, rev, pageSize, pageBytes int64, visit func(key, value []byte)) (int64, int64, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	key := prefix
	limit := min(pageSize, firstPage)
	var pages int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(limit)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		pctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
		resp, err := c.cli.Get(pctx, key, opts...)
		cancel()
		if err != nil {
			return rev, pages, fmt.Errorf("range from %q at revision %d: %w", key, rev, err)
		}
		pages++
		if rev == 0 {
			rev = resp.Header.Revision
		}
		largest := 0
		for _, kv := range resp.Kvs {
			visit(kv.Key, kv.Value)
			largest = max(largest, len(kv.Value))
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, pages, nil
		}
		limit = max(1, min(pageSize, pageBytes/int64(max(largest, 1))))
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
