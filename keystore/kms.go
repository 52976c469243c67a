package keystore

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	kmsservice "k8s.io/kms/pkg/service"

	"github.com/atrest-io/atrest/cluster"
)

// KMSService is a KMS v2 plugin backed by a Transit key: kube-apiserver's
// data keys (its DEK seeds) are wrapped and unwrapped by Vault, and the
// key_id is the Transit key's latest version, so a rotation in Vault is
// seen by every kube-apiserver at its next status poll. It logs what it
// is asked, never what it is given or returns.
type KMSService struct {
	t   *Transit
	log *slog.Logger
	// Calls counts the Vault calls made, by kind.
	encrypts, decrypts, statuses atomic.Int64
}

var _ kmsservice.Service = (*KMSService)(nil)

// statusProbe is what Status encrypts to learn the latest version: a
// constant, so nothing of value is ever in it.
var statusProbe = []byte("atrest kms-plugin status probe")

// NewKMSService serves t as a KMS v2 plugin.
func NewKMSService(t *Transit, log *slog.Logger) *KMSService {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &KMSService{t: t, log: log}
}

// Calls are the Vault calls made so far: encrypt, decrypt and status.
func (k *KMSService) Calls() (encrypts, decrypts, statuses int64) {
	return k.encrypts.Load(), k.decrypts.Load(), k.statuses.Load()
}

// Encrypt wraps a data key with the Transit key's latest version.
func (k *KMSService) Encrypt(ctx context.Context, uid string, data []byte) (*kmsservice.EncryptResponse, error) {
	start := time.Now()
	k.encrypts.Add(1)
	ct, v, err := k.t.Encrypt(ctx, data)
	if err != nil {
		k.log.Warn("encrypt failed", "uid", uid, "err", err)
		return nil, err
	}
	id := cluster.TransitKeyID(k.t.mount, k.t.key, v)
	k.log.Debug("encrypt", "uid", uid, "key_id", id, "took", time.Since(start))
	return &kmsservice.EncryptResponse{Ciphertext: []byte(ct), KeyID: id}, nil
}

// Decrypt unwraps a data key. The key_id must be this plugin's Transit key
// at the version the ciphertext names: anything else was not wrapped here.
func (k *KMSService) Decrypt(ctx context.Context, uid string, req *kmsservice.DecryptRequest) ([]byte, error) {
	start := time.Now()
	mount, key, v, ok := cluster.ParseTransitKeyID(req.KeyID)
	if !ok || mount != k.t.mount || key != k.t.key {
		return nil, fmt.Errorf("key_id %q is not a version of Transit key %s/%s, which this plugin serves", req.KeyID, k.t.mount, k.t.key)
	}
	if cv, err := CiphertextVersion(string(req.Ciphertext)); err != nil || cv != v {
		return nil, fmt.Errorf("the ciphertext is not a Transit ciphertext of version %d (key_id %q)", v, req.KeyID)
	}
	k.decrypts.Add(1)
	out, err := k.t.Decrypt(ctx, string(req.Ciphertext))
	if err != nil {
		k.log.Warn("decrypt failed", "uid", uid, "key_id", req.KeyID, "err", err)
		return nil, err
	}
	k.log.Debug("decrypt", "uid", uid, "key_id", req.KeyID, "took", time.Since(start))
	return out, nil
}

// Status is healthy when Vault encrypts with the Transit key; its key_id
// is the version Vault encrypted with, the one Encrypt uses now.
func (k *KMSService) Status(ctx context.Context) (*kmsservice.StatusResponse, error) {
	k.statuses.Add(1)
	_, v, err := k.t.Encrypt(ctx, statusProbe)
	if err != nil {
		k.log.Warn("status: Vault Transit does not encrypt", "err", err)
		return nil, err
	}
	return &kmsservice.StatusResponse{Version: "v2", Healthz: "ok", KeyID: cluster.TransitKeyID(k.t.mount, k.t.key, v)}, nil
}
