package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/atrest-io/atrest/cluster"
)

// The canary secret: written through one node's kube-apiserver, its raw
// value in etcd shows which provider and key that node writes with.
const (
	CanaryNamespace = "kube-system"
	CanaryName      = "atrest-canary"
)

// defaultEtcdPrefix is kube-apiserver's --etcd-prefix default.
const defaultEtcdPrefix = "/registry"

// Canary writes the canary secret through this node's kube-apiserver with
// a fresh random (not secret) value, reads the value it stored from etcd
// and returns its storage prefix (cluster.StoragePrefix):
// "aescbc:v1:k-abcde", "kms:v2:NAME", "identity", ...
func (n *Node) Canary(ctx context.Context) (string, error) {
	prefix, _, err := n.CanaryKeyID(ctx)
	return prefix, err
}

// CanaryKeyID is Canary that also returns, for a value a KMS v2 provider
// wrote, the key_id in its envelope (cluster.KMSv2KeyID): which version
// of the KMS key this node's kube-apiserver wraps its data keys with now.
func (n *Node) CanaryKeyID(ctx context.Context) (prefix, keyID string, err error) {
	const op = "canary"
	if n.opts.Storage == nil {
		return "", "", nodeErr(n.name, op, nil, errors.New("no etcd reader (Options.Storage) to read the canary back with"))
	}
	a, err := n.Inspect(ctx)
	if err != nil {
		return "", "", err
	}
	registry, ok := a.Flag(flagEtcdPrefix)
	if !ok || registry == "" {
		registry = defaultEtcdPrefix
	}
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	patch, err := json.Marshal(map[string]any{
		"apiVersion": "v1",
		"kind":       "Secret",
		"metadata": map[string]any{
			"name":      CanaryName,
			"namespace": CanaryNamespace,
			"labels":    map[string]string{"app.kubernetes.io/managed-by": "atrest"},
			"annotations": map[string]string{
				"atrest.io/purpose":     "proves which encryption provider each kube-apiserver writes with; safe to delete",
				"atrest.io/written-via": n.name,
			},
		},
		"type": "Opaque",
		"data": map[string][]byte{"nonce": []byte(hex.EncodeToString(nonce[:]))},
	})
	if err != nil {
		return "", "", err
	}
	wctx, cancel := context.WithTimeout(ctx, n.opts.Timeout)
	defer cancel()
	force := true
	_, err = n.kube.CoreV1().Secrets(CanaryNamespace).Patch(wctx, CanaryName, types.ApplyPatchType, patch, metav1.PatchOptions{FieldManager: "atrest", Force: &force})
	if err != nil {
		hint := ""
		if apierrors.IsInternalError(err) {
			hint = "; if the stored canary was written with a key this node does not have, delete it through a node that has the key"
		}
		return "", "", nodeErr(n.name, op, ErrCanary, fmt.Errorf("write secret %s/%s through %s: %w%s", CanaryNamespace, CanaryName, n.apiURL, err, hint))
	}
	key := path.Join(registry, "secrets", CanaryNamespace, CanaryName)
	rctx, cancel2 := context.WithTimeout(ctx, n.opts.Timeout)
	defer cancel2()
	raw, err := n.opts.Storage.RawGet(rctx, key)
	if err != nil {
		return "", "", nodeErr(n.name, op, ErrCanary, fmt.Errorf("read %s from etcd: %w", key, err))
	}
	if raw == nil {
		return "", "", nodeErr(n.name, op, ErrCanary, fmt.Errorf("%s is not in etcd after the write: does --etcd-prefix (%s) match?", key, registry))
	}
	prefix = cluster.StoragePrefix(raw)
	keyID, _ = cluster.KMSv2KeyID(raw)
	n.log.Info("canary written", "stored_as", prefix, "key_id", keyID)
	return prefix, keyID, nil
}

// AwaitKeyID waits until every node's kube-apiserver writes with the KMS v2
// key_id keyID under the storage prefix want, a canary through each in
// turn: kube-apiserver learns a new key_id from its plugin's status, which
// it polls once a minute, so a rotated key is in force on each node
// within about a minute. Every node must be proven before anything is
// rewritten, or what a late node writes would need the old version.
func (c *Cluster) AwaitKeyID(ctx context.Context, want, keyID string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, n := range c.nodes {
		for {
			prefix, got, err := n.CanaryKeyID(ctx)
			if err == nil && prefix == want && got == keyID {
				n.log.Info("writes with the key_id", "key_id", keyID)
				break
			}
			if time.Now().After(deadline) {
				if err != nil {
					return err
				}
				return nodeErr(n.name, "canary", ErrCanary, fmt.Errorf("after %s the canary written through %s is stored as %s with key_id %q, not %s with %q: its kube-apiserver has not taken up the key's new version (is its KMS plugin healthy?)",
					timeout, n.name, prefix, got, want, keyID))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Second):
			}
		}
	}
	return nil
}

// deleteCanary deletes the canary through this node; a missing one is
// fine.
func (n *Node) deleteCanary(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, n.opts.Timeout)
	defer cancel()
	err := n.kube.CoreV1().Secrets(CanaryNamespace).Delete(ctx, CanaryName, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete secret %s/%s through %s: %w", CanaryNamespace, CanaryName, n.name, err)
	}
	return nil
}
