package keystore

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

// newClient refuses what it would do insecurely unless the config allows
// it, whatever the VAULT_* environment says, and warns when it allows it.
// It does no I/O, so nothing is reached before the refusal.
func TestClientInsecure(t *testing.T) {
	tests := []struct {
		name     string
		cfg      Config
		env      map[string]string
		wantErr  string // empty: built
		wantWarn []string
	}{
		{name: "https", cfg: Config{Address: "https://vault.example:8200"}},
		{name: "http refused", cfg: Config{Address: "http://vault.example:8200"}, wantErr: "address http://vault.example:8200 is plain http"},
		{name: "VAULT_ADDR http refused", env: map[string]string{"VAULT_ADDR": "http://vault.example:8200"}, wantErr: "vault.insecureAllowHTTP"},
		// vault.address wins over VAULT_AGENT_ADDR, which the client
		// would otherwise prefer.
		{name: "Address beats VAULT_AGENT_ADDR", cfg: Config{Address: "https://vault.example:8200"}, env: map[string]string{"VAULT_AGENT_ADDR": "http://127.0.0.1:8100"}},
		{name: "VAULT_AGENT_ADDR http refused", env: map[string]string{"VAULT_ADDR": "https://vault.example:8200", "VAULT_AGENT_ADDR": "http://127.0.0.1:8100"}, wantErr: "address http://127.0.0.1:8100 is plain http"},
		{name: "unix socket", env: map[string]string{"VAULT_AGENT_ADDR": "unix:///run/agent.sock"}},
		{name: "http allowed", cfg: Config{Address: "http://vault.example:8200", InsecureAllowHTTP: true},
			wantWarn: []string{"INSECURE: Vault is reached over plain http", "setting=vault.insecureAllowHTTP", "address=http://vault.example:8200"}},
		{name: "VAULT_SKIP_VERIFY refused", cfg: Config{Address: "https://vault.example:8200"}, env: map[string]string{"VAULT_SKIP_VERIFY": "true"},
			wantErr: "VAULT_SKIP_VERIFY turns off the verification of Vault's certificate"},
		{name: "the http allowance does not allow VAULT_SKIP_VERIFY", cfg: Config{Address: "https://vault.example:8200", InsecureAllowHTTP: true}, env: map[string]string{"VAULT_SKIP_VERIFY": "1"},
			wantErr: "vault.insecureSkipTLSVerify"},
		{name: "VAULT_SKIP_VERIFY allowed", cfg: Config{Address: "https://vault.example:8200", InsecureSkipTLSVerify: true}, env: map[string]string{"VAULT_SKIP_VERIFY": "true"},
			wantWarn: []string{"INSECURE: TLS certificate verification of Vault is OFF", "setting=vault.insecureSkipTLSVerify"}},
		{name: "skip verify by the setting alone", cfg: Config{Address: "https://vault.example:8200", InsecureSkipTLSVerify: true},
			wantWarn: []string{"setting=vault.insecureSkipTLSVerify"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"VAULT_ADDR", "VAULT_AGENT_ADDR", "VAULT_SKIP_VERIFY", "VAULT_CACERT", "VAULT_CAPATH"} {
				t.Setenv(k, tt.env[k])
			}
			var logs bytes.Buffer
			tt.cfg.Cluster = "c"
			tt.cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			cfg, err := tt.cfg.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			c, err := newClient(cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v, want ErrInvalid saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c == nil {
				t.Fatal("no client")
			}
			for _, w := range tt.wantWarn {
				if !strings.Contains(logs.String(), w) {
					t.Errorf("logs do not say %q:\n%s", w, logs.String())
				}
			}
			if !strings.Contains(logs.String(), "level=WARN") != (len(tt.wantWarn) == 0) {
				t.Errorf("warnings %v, want %v:\n%s", strings.Contains(logs.String(), "level=WARN"), len(tt.wantWarn) > 0, logs.String())
			}
		})
	}
}
