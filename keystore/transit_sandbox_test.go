//go:build sandbox

package keystore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	kmsservice "k8s.io/kms/pkg/service"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/internal/leaktest"
)

// TestKMSService is the plugin's service against a real Vault Transit:
// logged in as a plugin is, with an AppRole secret id that allows encrypt
// and decrypt on one key and nothing else. Its key_id follows the key's
// rotations, an older version still decrypts until min_decryption_version
// passes it, its status fails while Vault does, and nothing it logs holds
// a data key, the secret id or the token.
func TestKMSService(t *testing.T) {
	w := leaktest.New(t)
	ctx := testCtx(t)
	rc := root(t)
	name := clusterName(t)
	mount, key, role := "transit-"+name, "atrest-"+name, "atrest-kms-"+name
	write(t, rc, "sys/mounts/"+mount, map[string]any{"type": "transit"})
	// Another test may have enabled AppRole already.
	_, _ = rc.Logical().WriteWithContext(ctx, "sys/auth/approle", map[string]any{"type": "approle"})
	policy := `path "` + mount + `/encrypt/` + key + `" { capabilities = ["update"] }
path "` + mount + `/decrypt/` + key + `" { capabilities = ["update"] }`
	if err := rc.Sys().PutPolicyWithContext(ctx, role, policy); err != nil {
		t.Fatal(err)
	}
	write(t, rc, "auth/approle/role/"+role, map[string]any{"token_policies": role, "token_ttl": "1h", "secret_id_ttl": "0", "secret_id_num_uses": 0})

	// atrest: the key, and a credential for one node.
	admin := openStore(t, baseConfig(t, w))
	tr := admin.Transit(mount, key)
	st, err := tr.Create(ctx)
	if err != nil || !st.Exists || st.Latest != 1 || st.Exportable {
		t.Fatalf("create: %+v %v", st, w.Err(err))
	}
	if again, err := tr.Create(ctx); err != nil || again.Latest != 1 {
		t.Fatalf("create again: %+v %v", again, w.Err(err))
	}
	cred, err := admin.PluginRole("approle", role).Issue(ctx, name, "node1")
	if err != nil {
		t.Fatal(w.Err(err))
	}
	w.Key(cluster.Key{Name: "secret-id", Provider: cluster.AESCBC, Secret: cred.SecretID})

	// The plugin: logged in with that credential alone.
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret-id")
	if err := os.WriteFile(secretFile, cred.SecretID.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	sess, err := OpenSession(ctx, Config{Address: sb.Vault.Address, CAFile: sb.Vault.CAFile, InsecureAllowHTTP: sb.Vault.PlainHTTP(),
		AuthMethod: AuthAppRole, AppRoleID: cred.RoleID, AppRoleSecretIDFile: secretFile, Logger: w.Logger()})
	if err != nil {
		t.Fatal(w.Err(err))
	}
	defer sess.Close()
	svc := NewKMSService(sess.Transit(mount, key), w.Logger())
	dek := bytes.Repeat([]byte{0x5a}, 32)
	w.Key(cluster.Key{Name: "data-key", Provider: cluster.AESCBC, Secret: dek})

	status := func(want string) {
		t.Helper()
		s, err := svc.Status(ctx)
		if err != nil || s.Healthz != "ok" || s.KeyID != want || s.Version != "v2" {
			t.Fatalf("status %+v %v, want healthy with key_id %s", s, w.Err(err), want)
		}
	}
	v1 := cluster.TransitKeyID(mount, key, 1)
	status(v1)
	wrapped, err := svc.Encrypt(ctx, "uid-1", dek)
	if err != nil || wrapped.KeyID != v1 || bytes.Contains(wrapped.Ciphertext, dek) {
		t.Fatalf("encrypt: %+v %v", wrapped, w.Err(err))
	}

	// A rotation: new writes use version 2, version 1 still decrypts.
	if _, err := tr.Rotate(ctx); err != nil {
		t.Fatal(w.Err(err))
	}
	status(cluster.TransitKeyID(mount, key, 2))
	got, err := svc.Decrypt(ctx, "uid-2", &kmsservice.DecryptRequest{Ciphertext: wrapped.Ciphertext, KeyID: wrapped.KeyID})
	if err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("decrypt a version 1 data key after the rotation: %v", w.Err(err))
	}
	// A key_id that does not match the ciphertext, or is another key's,
	// is refused before Vault is asked.
	for _, id := range []string{cluster.TransitKeyID(mount, key, 2), cluster.TransitKeyID(mount, "other", 1), "arn:aws:kms:x"} {
		if _, err := svc.Decrypt(ctx, "uid-3", &kmsservice.DecryptRequest{Ciphertext: wrapped.Ciphertext, KeyID: id}); err == nil {
			t.Errorf("decrypt with key_id %s: accepted", id)
		}
	}
	// The plugin's login can do nothing else.
	if _, err := sess.Transit(mount, key).State(ctx); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("the plugin's login reads the key: %v", err)
	}
	if _, err := sess.Transit(mount, key).Rotate(ctx); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("the plugin's login rotates the key: %v", err)
	}
	// Past min_decryption_version, version 1 no longer decrypts.
	if err := tr.SetMinDecryption(ctx, 2); err != nil {
		t.Fatal(w.Err(err))
	}
	if _, err := svc.Decrypt(ctx, "uid-4", &kmsservice.DecryptRequest{Ciphertext: wrapped.Ciphertext, KeyID: wrapped.KeyID}); err == nil {
		t.Error("a version 1 data key decrypts past min_decryption_version 2")
	}
	if st, err := tr.State(ctx); err != nil || st.MinDecryption != 2 || len(st.Versions()) != 1 {
		t.Errorf("state after the raise: %+v %v", st, err)
	}

	// Revoked, the credential logs in no more.
	if err := admin.PluginRole("approle", role).Revoke(ctx, cred.Accessor); err != nil {
		t.Fatal(w.Err(err))
	}
	if err := admin.PluginRole("approle", role).Revoke(ctx, cred.Accessor); err != nil {
		t.Errorf("revoking again: %v", w.Err(err))
	}
	_, err = OpenSession(ctx, Config{Address: sb.Vault.Address, CAFile: sb.Vault.CAFile, InsecureAllowHTTP: sb.Vault.PlainHTTP(),
		AuthMethod: AuthAppRole, AppRoleID: cred.RoleID, AppRoleSecretIDFile: secretFile, Logger: w.Logger()})
	if !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("log in with a revoked secret id: %v", err)
	}

	// Vault down: the status fails, so kube-apiserver sees the plugin
	// unhealthy.
	if err := sb.StopVault(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sb.StartVault(context.Background()) }()
	if _, err := svc.Status(ctx); !errors.Is(err, ErrUnavailable) {
		t.Errorf("status with Vault down: %v", err)
	}
	if strings.Contains(w.Logs(), "hvs.") {
		t.Error("a Vault token shows in the logs")
	}
}
