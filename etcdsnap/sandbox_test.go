//go:build sandbox

package etcdsnap_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/sandbox"
	"github.com/atrest-io/atrest/sandbox/sandboxtest"
)

var sb *sandbox.Sandbox

func TestMain(m *testing.M) {
	os.Exit(sandboxtest.Main(m, sandbox.Options{Nodes: 1}, &sb))
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// vaultKeys is the test's stand-in for keystore.Store: a few lines over the
// sandbox's real Vault (KV v2 at secret/), so that key references and key
// material really go through Vault.
type vaultKeys struct {
	kv   *vault.KVv2
	c    *vault.Client
	base string
}

func newVaultKeys(t *testing.T, base string) *vaultKeys {
	t.Helper()
	cfg := vault.DefaultConfig()
	cfg.Address = sb.Vault.Address
	cfg.Timeout = 10 * time.Second
	c, err := vault.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	token, err := os.ReadFile(sb.Vault.TokenFile)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(strings.TrimSpace(string(token)))
	return &vaultKeys{kv: c.KVv2("secret"), c: c, base: base}
}

func (v *vaultKeys) put(ctx context.Context, k cluster.Key) error {
	_, err := v.kv.Put(ctx, v.base+"/keys/"+k.Name, map[string]any{
		"provider": string(k.Provider), "secret": base64.StdEncoding.EncodeToString(k.Secret),
	})
	return err
}

// Key implements etcdsnap.KeySource.
func (v *vaultKeys) Key(ctx context.Context, name string) (cluster.Key, error) {
	s, err := v.kv.Get(ctx, v.base+"/keys/"+name)
	if err != nil {
		return cluster.Key{}, fmt.Errorf("vault: key %s: %w", name, err)
	}
	provider, _ := s.Data["provider"].(string)
	enc, _ := s.Data["secret"].(string)
	secret, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return cluster.Key{}, fmt.Errorf("vault: key %s: secret is not base64", name)
	}
	return cluster.Key{Name: name, Provider: cluster.Provider(provider), Secret: secret}, nil
}

// AddSnapshotRef implements etcdsnap.KeyRefs.
func (v *vaultKeys) AddSnapshotRef(ctx context.Context, snapshot string, keyNames []string) error {
	_, err := v.kv.Put(ctx, v.base+"/refs/"+snapshot, map[string]any{"keys": keyNames})
	return err
}

// ReleaseSnapshotRef implements etcdsnap.KeyRefs.
func (v *vaultKeys) ReleaseSnapshotRef(ctx context.Context, snapshot string) error {
	return v.kv.DeleteMetadata(ctx, v.base+"/refs/"+snapshot)
}

// refs returns the snapshots Vault holds references for, and their keys.
func (v *vaultKeys) refs(t *testing.T) map[string][]string {
	t.Helper()
	ctx := testCtx(t, 30*time.Second)
	list, err := v.c.Logical().ListWithContext(ctx, "secret/metadata/"+v.base+"/refs")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	if list == nil {
		return out
	}
	names, _ := list.Data["keys"].([]any)
	for _, n := range names {
		s, err := v.kv.Get(ctx, v.base+"/refs/"+n.(string))
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, k := range s.Data["keys"].([]any) {
			keys = append(keys, k.(string))
		}
		out[n.(string)] = keys
	}
	return out
}

func etcdConfig(logger *slog.Logger) etcdsnap.Config {
	return etcdsnap.Config{
		Endpoints: []string{sb.EtcdEndpoint},
		CAFile:    sb.CAFile, CertFile: sb.EtcdCertFile, KeyFile: sb.EtcdKeyFile,
		Logger: logger,
	}
}

func dial(t *testing.T, cfg etcdsnap.Config) *etcdsnap.Client {
	t.Helper()
	c, err := etcdsnap.Dial(testCtx(t, time.Minute), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// kube calls a kube-apiserver as cluster admin.
func kube(t *testing.T, base, method, path string, body any) (int, []byte) {
	t.Helper()
	c, err := sb.AdminClient()
	if err != nil {
		t.Fatal(err)
	}
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequestWithContext(testCtx(t, time.Minute), method, base+path, r)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, base, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

func mustKube(t *testing.T, base, method, path string, body any, want int) []byte {
	t.Helper()
	code, data := kube(t, base, method, path, body)
	if code != want {
		t.Fatalf("%s %s: %d %s", method, path, code, data)
	}
	return data
}

func createSecret(t *testing.T, name, value string) {
	t.Helper()
	mustKube(t, sb.Nodes[0].APIServerURL, http.MethodPost, "/api/v1/namespaces/default/secrets", map[string]any{
		"metadata": map[string]string{"name": name}, "stringData": map[string]string{"value": value},
	}, http.StatusCreated)
}

type secretList struct {
	Items []struct {
		Metadata struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Data map[string][]byte `json:"data"`
	} `json:"items"`
}

// secretValues lists every secret in the cluster through the apiserver at
// base: a list fails if any one of them cannot be decrypted.
func secretValues(t *testing.T, base string) map[string]string {
	t.Helper()
	var l secretList
	if err := json.Unmarshal(mustKube(t, base, http.MethodGet, "/api/v1/secrets", nil, http.StatusOK), &l); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, s := range l.Items {
		out[s.Metadata.Namespace+"/"+s.Metadata.Name] = string(s.Data["value"])
	}
	return out
}

// rewriteSecrets updates every secret with itself: kube-apiserver writes
// back only what it read with a key that is not the first ("stale"), which
// is exactly the re-encryption.
func rewriteSecrets(t *testing.T) {
	t.Helper()
	base := sb.Nodes[0].APIServerURL
	var l struct {
		Items []map[string]any `json:"items"`
	}
	if err := json.Unmarshal(mustKube(t, base, http.MethodGet, "/api/v1/secrets", nil, http.StatusOK), &l); err != nil {
		t.Fatal(err)
	}
	for _, s := range l.Items {
		md := s["metadata"].(map[string]any)
		path := fmt.Sprintf("/api/v1/namespaces/%s/secrets/%s", md["namespace"], md["name"])
		mustKube(t, base, http.MethodPut, path, s, http.StatusOK)
	}
}

// deployProviderConfig puts config on node 1 (nil: no file, no flag) and
// recreates its kube-apiserver container accordingly, as RKE does.
func deployProviderConfig(t *testing.T, config []byte) {
	t.Helper()
	ctx := testCtx(t, 3*time.Minute)
	file := filepath.Join(sb.Nodes[0].Dir, "etc-kubernetes", "ssl", "encryption.yaml")
	var extra []string
	if config == nil {
		if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	} else {
		if err := os.WriteFile(file, config, 0o600); err != nil {
			t.Fatal(err)
		}
		extra = append(extra, "--encryption-provider-config=/etc/kubernetes/ssl/encryption.yaml")
	}
	if _, err := sb.Docker(ctx, 0, "rm", "--force", "kube-apiserver"); err != nil {
		t.Fatal(err)
	}
	args := []string{"run", "--detach", "--name=kube-apiserver", "--network=host", "--restart=always",
		"--volume=/etc/kubernetes:/etc/kubernetes:z", sb.KubeAPIServerImage(), "/usr/local/bin/kube-apiserver"}
	args = append(append(args, sb.APIServerArgs(sb.Nodes[0])...), extra...)
	if _, err := sb.Docker(ctx, 0, args...); err != nil {
		t.Fatal(err)
	}
	if err := sb.WaitReady(ctx, 0, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
}

func render(t *testing.T, m cluster.ManagedConfig) []byte {
	t.Helper()
	data, err := m.Render()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// restored is an etcd restored from a snapshot, with a kube-apiserver on it.
type restored struct {
	etcd      etcdsnap.Config
	apiserver string // https://IP:PORT
}

// restoreSnapshot restores the snapshot file db as an operator does and
// runs a kube-apiserver on it with --encryption-provider-config=config
// (sandbox.RestoreSnapshot), until /readyz answers. Both are stopped when
// t ends.
func restoreSnapshot(t *testing.T, db, config string, logger *slog.Logger) restored {
	t.Helper()
	return restoreSnapshotUntil(t, db, config, logger, "/readyz")
}

// restoreSnapshotUntil is restoreSnapshot waiting for the kube-apiserver's
// check (/readyz; /livez for one that cannot read every object, which is
// never ready).
func restoreSnapshotUntil(t *testing.T, db, config string, logger *slog.Logger, check string) restored {
	t.Helper()
	r, err := sb.RestoreSnapshot(testCtx(t, 4*time.Minute), db, config, check)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Error(err)
		}
	})
	out := restored{etcd: etcdConfig(logger), apiserver: r.APIServer}
	out.etcd.Endpoints = []string{r.EtcdEndpoint}
	return out
}
