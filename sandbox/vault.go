package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"
)

const vaultConfig = `storage "file" {
  path = %q
}
listener "tcp" {
  address       = "%s:8200"
  tls_cert_file = %q
  tls_key_file  = %q
}
api_addr      = "https://%s:8200"
disable_mlock = true
ui            = false
`

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (sb *Sandbox) startVault(ctx context.Context) error {
	sb.Vault = VaultInfo{Persistent: sb.opts.PersistentVault, TokenFile: sb.path("vault", "root-token")}
	if err := os.MkdirAll(sb.path("vault", "data"), 0o700); err != nil {
		return err
	}
	if sb.Vault.Persistent {
		sb.Vault.Address = "https://" + sb.infraIP() + ":8200"
		sb.Vault.CAFile = sb.CAFile
		cfg := fmt.Sprintf(vaultConfig, sb.path("vault", "data"), sb.infraIP(),
			sb.path("pki", "vault.pem"), sb.path("pki", "vault-key.pem"), sb.infraIP())
		if err := writeFile(sb.path("vault", "config.hcl"), []byte(cfg)); err != nil {
			return err
		}
	} else {
		sb.Vault.Address = "http://" + sb.infraIP() + ":8200"
		if err := writeFile(sb.Vault.TokenFile, []byte(randomHex(16))); err != nil {
			return err
		}
	}
	if err := sb.StartVault(ctx); err != nil {
		return err
	}
	return sb.enableKubernetesAuth(ctx)
}

// vaultProc returns the running Vault's process record.
func (sb *Sandbox) vaultProc() *proc {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	for _, p := range sb.state.Procs {
		if p.Name == "vault" {
			return p
		}
	}
	return nil
}

// VaultPID is the running Vault's process id (0 when none), for tests
// that make it unreachable for a while (SIGSTOP, SIGCONT).
func (sb *Sandbox) VaultPID() int {
	if p := sb.vaultProc(); p != nil {
		return p.PID
	}
	return 0
}

// StopVault stops Vault (tests use it to see atrest meet a Vault that is
// down). Persistent Vault keeps its data; StartVault brings it back.
func (sb *Sandbox) StopVault(context.Context) error {
	p := sb.vaultProc()
	if p == nil {
		return nil
	}
	if err := p.stop(10 * time.Second); err != nil {
		return err
	}
	return sb.untrack(p)
}

// StartVault starts Vault and returns when it is unsealed and active. A
// persistent Vault is initialised on first start and unsealed on every
// start, as an operator would.
func (sb *Sandbox) StartVault(ctx context.Context) error {
	args := []string{"server"}
	if sb.Vault.Persistent {
		args = append(args, "-config="+sb.path("vault", "config.hcl"))
	} else {
		token, err := os.ReadFile(sb.Vault.TokenFile)
		if err != nil {
			return err
		}
		args = append(args, "-dev", "-dev-listen-address="+sb.infraIP()+":8200",
			"-dev-root-token-id="+string(token), "-dev-no-store-token")
	}
	cmd := exec.Command(sb.opts.Vault, args...)
	cmd.Env = append(os.Environ(), "HOME="+sb.path("vault"), "VAULT_LOG_LEVEL=warn")
	p, err := startProc("vault", cmd, sb.path("vault", "vault.log"))
	if err != nil {
		return err
	}
	if err := sb.track(p); err != nil {
		return err
	}
	client, err := sb.vaultHTTP()
	if err != nil {
		return err
	}
	// Any answer from sys/health means the listener is up.
	if err := waitFor(ctx, "vault listener", 60*time.Second, p, func(ctx context.Context) error {
		_, err := sb.vaultHealth(ctx, client)
		return err
	}); err != nil {
		return err
	}
	if sb.Vault.Persistent {
		if err := sb.initAndUnseal(ctx); err != nil {
			return err
		}
	}
	return waitFor(ctx, "vault active", 60*time.Second, p, func(ctx context.Context) error {
		code, err := sb.vaultHealth(ctx, client)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("sys/health: HTTP %d", code)
		}
		return nil
	})
}

func (sb *Sandbox) vaultHTTP() (*http.Client, error) {
	tr := &http.Transport{}
	if sb.Vault.Persistent {
		tlsCfg, err := sb.tlsConfig("", "")
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = tlsCfg
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, nil
}

func (sb *Sandbox) vaultHealth(ctx context.Context, c *http.Client) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, sb.Vault.Address+"/v1/sys/health", nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// vaultDo calls Vault's HTTP API with the root token.
func (sb *Sandbox) vaultDo(ctx context.Context, method, path string, body, out any) error {
	c, err := sb.vaultHTTP()
	if err != nil {
		return err
	}
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, sb.Vault.Address+"/v1/"+path, r)
	if err != nil {
		return err
	}
	if token, err := os.ReadFile(sb.Vault.TokenFile); err == nil {
		req.Header.Set("X-Vault-Token", strings.TrimSpace(string(token)))
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("vault %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(data))
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}

func (sb *Sandbox) initAndUnseal(ctx context.Context) error {
	keyFile := sb.path("vault", "unseal-key")
	if _, err := os.Stat(keyFile); os.IsNotExist(err) {
		var res struct {
			Keys      []string `json:"keys_base64"`
			RootToken string   `json:"root_token"`
		}
		if err := sb.vaultDo(ctx, http.MethodPut, "sys/init", map[string]int{"secret_shares": 1, "secret_threshold": 1}, &res); err != nil {
			return err
		}
		if err := writeFile(keyFile, []byte(res.Keys[0])); err != nil {
			return err
		}
		if err := writeFile(sb.Vault.TokenFile, []byte(res.RootToken)); err != nil {
			return err
		}
		defer func() {
			// A fresh persistent Vault gets the KV v2 mount a dev server has.
			_ = sb.vaultDo(ctx, http.MethodPost, "sys/mounts/secret", map[string]any{"type": "kv", "options": map[string]string{"version": "2"}}, nil)
		}()
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		return err
	}
	return sb.vaultDo(ctx, http.MethodPut, "sys/unseal", map[string]string{"key": string(key)}, nil)
}

// enableKubernetesAuth turns on Vault's Kubernetes auth method, pointed at
// node 1's kube-apiserver, with a token reviewer service account.
func (sb *Sandbox) enableKubernetesAuth(ctx context.Context) error {
	kube := sb.kube()
	const ns, sa = "kube-system", "vault-token-reviewer"
	if err := kube.do(ctx, http.MethodPost, "/api/v1/namespaces/"+ns+"/serviceaccounts",
		map[string]any{"metadata": map[string]string{"name": sa}}, nil); err != nil {
		return err
	}
	if err := kube.do(ctx, http.MethodPost, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", map[string]any{
		"metadata": map[string]string{"name": sa},
		"roleRef":  map[string]string{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
		"subjects": []map[string]string{{"kind": "ServiceAccount", "name": sa, "namespace": ns}},
	}, nil); err != nil {
		return err
	}
	jwt, err := kube.token(ctx, ns, sa, 7*24*time.Hour, nil)
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(sb.CAFile)
	if err != nil {
		return err
	}
	if err := sb.vaultDo(ctx, http.MethodPost, "sys/auth/kubernetes", map[string]string{"type": "kubernetes"}, nil); err != nil {
		return err
	}
	return sb.vaultDo(ctx, http.MethodPost, "auth/kubernetes/config", map[string]any{
		"kubernetes_host":      sb.Nodes[0].APIServerURL,
		"kubernetes_ca_cert":   string(ca),
		"token_reviewer_jwt":   jwt,
		"disable_local_ca_jwt": true,
	}, nil)
}
