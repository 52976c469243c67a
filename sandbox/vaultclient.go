package sandbox

import (
	"fmt"
	"os"
	"strings"

	vault "github.com/hashicorp/vault/api"
)

// VaultClient returns a client of the sandbox's Vault logged in with its
// root token: how tests look at what atrest stored, behind its back.
func (sb *Sandbox) VaultClient() (*vault.Client, error) {
	cfg := vault.DefaultConfig()
	cfg.Address = sb.Vault.Address
	if sb.Vault.CAFile != "" {
		if err := cfg.ConfigureTLS(&vault.TLSConfig{CACert: sb.Vault.CAFile}); err != nil {
			return nil, fmt.Errorf("vault client: %w", err)
		}
	}
	c, err := vault.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	token, err := os.ReadFile(sb.Vault.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	c.SetToken(strings.TrimSpace(string(token)))
	return c, nil
}
