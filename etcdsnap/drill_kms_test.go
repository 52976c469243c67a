package etcdsnap

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"
	storagevalue "k8s.io/apiserver/pkg/storage/value"
	kmsservice "k8s.io/kms/pkg/service"

	"github.com/atrest-io/atrest/cluster"
)

// gcmKMS is a KMS v2 plugin's service in memory: it wraps data keys with
// one AES-GCM key, its key_id "test:v1". A unit-test stand-in for
// atrest's vault-transit plugin, which the sandbox tier runs for real.
type gcmKMS struct {
	aead  cipher.AEAD
	keyID string
	calls int
}

func newGCMKMS(t *testing.T, b byte) *gcmKMS {
	t.Helper()
	block, err := aes.NewCipher(drillKey("kek", cluster.AESGCM, b).Secret)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return &gcmKMS{aead: aead, keyID: "test:v1"}
}

func (g *gcmKMS) Encrypt(_ context.Context, _ string, data []byte) (*kmsservice.EncryptResponse, error) {
	nonce := make([]byte, g.aead.NonceSize())
	_, _ = rand.Read(nonce)
	return &kmsservice.EncryptResponse{Ciphertext: g.aead.Seal(nonce, nonce, data, nil), KeyID: g.keyID}, nil
}

func (g *gcmKMS) Decrypt(_ context.Context, _ string, req *kmsservice.DecryptRequest) ([]byte, error) {
	g.calls++
	n := g.aead.NonceSize()
	if len(req.Ciphertext) < n {
		return nil, errors.New("short ciphertext")
	}
	return g.aead.Open(nil, req.Ciphertext[:n], req.Ciphertext[n:], nil)
}

func (g *gcmKMS) Status(context.Context) (*kmsservice.StatusResponse, error) {
	return &kmsservice.StatusResponse{Version: "v2", Healthz: "ok", KeyID: g.keyID}, nil
}

// TestDrillKMS: objects a KMS v2 provider wrote are decrypted through the
// service the drill is given for it, on a socket of the drill's own, by
// kube-apiserver's envelope transformer: Restorable with it, Unproven
// without it, NotRestorable when it cannot unwrap their data keys (the
// Transit version Vault no longer decrypts with).
func TestDrillKMS(t *testing.T) {
	const content = "TOP-SECRET-CONTENT"
	secrets := []string{"secrets"}
	kms := ProviderRef{Kind: cluster.KindKMS, Name: cluster.TransitProviderName, KMS: &KMSRef{APIVersion: "v2", Endpoint: "unix://" + cluster.KMSSocket, Timeout: "5s"}}
	lists := []ResourceList{list(secrets, kms, identityRef)}
	plugin := newGCMKMS(t, 7)

	// What a kube-apiserver with this config writes, through the plugin.
	ring := &drillRing{keys: map[string]cluster.Key{}, orig: lists}
	ring.build(nil)
	stop, err := ring.serveKMS(map[string]kmsservice.Service{cluster.TransitProviderName: plugin}, t.TempDir())
	defer stop()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := ring.load(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key := func(name string) string { return "/registry/secrets/a/" + name }
	w := &snapWriter{t: t}
	for _, name := range []string{"one", "two", "three"} {
		v, err := tr.TransformerForResource(schemaSecrets).TransformToStorage(t.Context(), secretObject(t, "a", name, content), storageContext(key(name)))
		if err != nil {
			t.Fatal(err)
		}
		if id, ok := cluster.KMSv2KeyID(v); !ok || id != "test:v1" {
			t.Fatalf("the envelope's key_id: %q %v", id, ok)
		}
		w.put(key(name), v)
	}
	w.put(key("plain"), secretObject(t, "a", "plain", content))
	store, err := NewLocalDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w.save(store, Manifest{Name: "snap", Reason: "test", Resources: secrets, Config: lists,
		Transit: &TransitRef{Mount: "transit", Key: "k", Versions: []int{1}}})

	for _, tc := range []struct {
		name    string
		svc     kmsservice.Service
		verdict string
		failed  int64
	}{
		{"with the plugin's service", plugin, Restorable, 0},
		{"without it", nil, Unproven, 0},
		{"with a service that cannot unwrap them", newGCMKMS(t, 8), NotRestorable, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := DrillOptions{TempDir: t.TempDir()}
			if tc.svc != nil {
				opts.KMS = map[string]kmsservice.Service{cluster.TransitProviderName: tc.svc}
			}
			rep, err := Drill(t.Context(), store, "snap", nil, opts)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Verdict != tc.verdict || rep.Total != 4 || rep.Failed != tc.failed {
				t.Fatalf("%s: %d objects, %d failed; want %s, 4, %d\n%s", rep.Verdict, rep.Total, rep.Failed, tc.verdict, tc.failed, rep.Text())
			}
			if strings.Contains(rep.Text(), content) {
				t.Fatalf("the report holds content:\n%s", rep.Text())
			}
		})
	}
	// kube-apiserver's cache: one unwrap per data key, not per object.
	if plugin.calls > 2 {
		t.Errorf("the plugin unwrapped %d times for 3 objects under one data key", plugin.calls)
	}
}

var schemaSecrets = schema.GroupResource{Resource: "secrets"}

func storageContext(key string) storagevalue.Context { return storagevalue.DefaultContext(key) }
