package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
)

// KMSPluginImage is the image the nodes run atrest's KMS plugin from,
// when the sandbox has one (Options.KMSPlugin); "" otherwise.
func (sb *Sandbox) KMSPluginImage() string {
	if sb.opts.KMSPlugin == "" {
		return ""
	}
	return "atrest-sandbox/atrest:kms"
}

// TransitKey is the sandbox cluster's Transit key (settings' default).
const TransitKey = "atrest-" + ClusterName

// PluginRole is the AppRole role of the sandbox's KMS plugins.
const PluginRole = "atrest-kms-" + ClusterName

// pluginPolicy lets a plugin encrypt and decrypt with the cluster's
// Transit key, and nothing else: what examples/vault-policy-kms-plugin.hcl
// says.
const pluginPolicy = `path "transit/encrypt/` + TransitKey + `" {
  capabilities = ["update"]
}
path "transit/decrypt/` + TransitKey + `" {
  capabilities = ["update"]
}
`

// setupKMS gives Vault a Transit engine and the plugins' AppRole role,
// and every node the plugin image, when the sandbox has a plugin binary.
func (sb *Sandbox) setupKMS(ctx context.Context) error {
	if sb.opts.KMSPlugin == "" {
		return nil
	}
	for _, c := range []struct {
		path string
		body any
	}{
		{"sys/mounts/transit", map[string]string{"type": "transit"}},
		{"sys/auth/approle", map[string]string{"type": "approle"}},
		{"sys/policies/acl/" + PluginRole, map[string]string{"policy": pluginPolicy}},
		{"auth/approle/role/" + PluginRole, map[string]any{
			"token_policies": []string{PluginRole}, "token_ttl": "1h", "token_max_ttl": "24h",
			"secret_id_ttl": "0", "secret_id_num_uses": 0,
		}},
	} {
		if err := sb.vaultDo(ctx, http.MethodPost, c.path, c.body, nil); err != nil {
			return err
		}
	}
	rootfs := sb.path("images", "atrest-rootfs.tar")
	if err := writeImage(rootfs, sb.opts.KMSPlugin, "atrest"); err != nil {
		return fmt.Errorf("atrest image rootfs: %w", err)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(sb.Nodes))
	for i := range sb.Nodes {
		wg.Go(func() {
			_, errs[i] = sb.Docker(ctx, i, "import", rootfs, sb.KMSPluginImage())
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
