package keystore

import (
	"context"
	"fmt"
	"path"
	"strings"

	vault "github.com/hashicorp/vault/api"

	"github.com/atrest-io/atrest/cluster"
)

// PluginRole is the AppRole the KMS plugins log in with: its policy should
// allow encrypt and decrypt on the one Transit key, nothing else
// (examples/vault-policy-kms-plugin.hcl). The operator creates it;
// atrest only issues and revokes its secret ids.
type PluginRole struct {
	s     *Session
	mount string
	role  string
}

// PluginRole returns the AppRole role at mount.
func (s *Session) PluginRole(mount, role string) *PluginRole {
	return &PluginRole{s: s, mount: strings.Trim(mount, "/"), role: role}
}

// Name is "<mount>/<role>".
func (r *PluginRole) Name() string { return r.mount + "/" + r.role }

// Issue makes a secret id for node's plugin, with the node and cluster in
// its metadata (Vault's audit log shows them at every login).
func (r *PluginRole) Issue(ctx context.Context, clusterName, node string) (cluster.PluginCredential, error) {
	rp := path.Join("auth", r.mount, "role", r.role, "role-id")
	sec, err := r.s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return r.s.client.Logical().ReadWithContext(ctx, rp)
	})
	if err != nil {
		return cluster.PluginCredential{}, &OpError{Op: "read the KMS plugin's AppRole role id", Path: rp, Err: classify(err, capRead, r.s.client.Address())}
	}
	var cred cluster.PluginCredential
	if sec != nil && sec.Data != nil {
		cred.RoleID, _ = sec.Data["role_id"].(string)
	}
	if cred.RoleID == "" {
		return cluster.PluginCredential{}, &OpError{Op: "read the KMS plugin's AppRole role id", Path: rp, Err: fmt.Errorf("%w: there is no AppRole role %s: create it as examples/README.md says", ErrNotFound, r.Name())}
	}
	sp := path.Join("auth", r.mount, "role", r.role, "secret-id")
	meta := fmt.Sprintf(`{"cluster":%q,"node":%q,"issuer":"atrest"}`, clusterName, node)
	sec, err = r.s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return r.s.client.Logical().WriteWithContext(ctx, sp, map[string]any{"metadata": meta})
	})
	if err != nil {
		return cluster.PluginCredential{}, &OpError{Op: "issue a secret id for the KMS plugin on " + node, Path: sp, Err: classify(err, capWrite, r.s.client.Address())}
	}
	if sec != nil && sec.Data != nil {
		id, _ := sec.Data["secret_id"].(string)
		cred.SecretID = cluster.Secret(id)
		cred.Accessor, _ = sec.Data["secret_id_accessor"].(string)
	}
	if len(cred.SecretID) == 0 || cred.Accessor == "" {
		return cluster.PluginCredential{}, &OpError{Op: "issue a secret id for the KMS plugin on " + node, Path: sp, Err: fmt.Errorf("%w: Vault answered without a secret id", ErrInvalid)}
	}
	r.s.log.Info("issued a secret id for the KMS plugin", "role", r.Name(), "node", node, "accessor", cred.Accessor)
	return cred, nil
}

// Revoke destroys the secret id behind accessor: the plugin can no longer
// log in with it (tokens it already has expire with their TTL). One that
// is gone already is not an error.
func (r *PluginRole) Revoke(ctx context.Context, accessor string) error {
	p := path.Join("auth", r.mount, "role", r.role, "secret-id-accessor", "destroy")
	_, err := r.s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return r.s.client.Logical().WriteWithContext(ctx, p, map[string]any{"secret_id_accessor": accessor})
	})
	if err != nil {
		err = classify(err, capWrite, r.s.client.Address())
		if strings.Contains(err.Error(), "failed to find accessor") || strings.Contains(err.Error(), "not found") {
			return nil
		}
		return &OpError{Op: "revoke a KMS plugin secret id", Path: p, Err: err}
	}
	r.s.log.Info("revoked a KMS plugin secret id", "role", r.Name(), "accessor", accessor)
	return nil
}
