package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"

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
	const op = "canary"
	if n.opts.Storage == nil {
		return "", nodeErr(n.name, op, nil, errors.New("no etcd reader (Options.Storage) to read the canary back with"))
	}
	a, err := n.Inspect(ctx)
	if err != nil {
		return "", err
	}
	prefix, ok := a.Flag(flagEtcdPrefix)
	if !ok || prefix == "" {
		prefix = defaultEtcdPrefix
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
		return "", err
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
		return "", nodeErr(n.name, op, ErrCanary, fmt.Errorf("write secret %s/%s through %s: %w%s", CanaryNamespace, CanaryName, n.apiURL, err, hint))
	}
	key := path.Join(prefix, "secrets", CanaryNamespace, CanaryName)
	rctx, cancel2 := context.WithTimeout(ctx, n.opts.Timeout)
	defer cancel2()
	raw, err := n.opts.Storage.RawGet(rctx, key)
	if err != nil {
		return "", nodeErr(n.name, op, ErrCanary, fmt.Errorf("read %s from etcd: %w", key, err))
	}
	if raw == nil {
		return "", nodeErr(n.name, op, ErrCanary, fmt.Errorf("%s is not in etcd after the write: does --etcd-prefix (%s) match?", key, prefix))
	}
	got := cluster.StoragePrefix(raw)
	n.log.Info("canary written", "stored_as", got)
	return got, nil
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
