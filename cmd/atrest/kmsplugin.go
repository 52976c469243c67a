package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"
	kmsservice "k8s.io/kms/pkg/service"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/keystore"
)

// kmsPluginFlags are the plugin's own flags: it runs on a controlplane
// node, in the atrest-kms container atrest starts there, not with atrest's
// runtime settings.
type kmsPluginFlags struct {
	socket                 string
	vaultAddress           string
	vaultCAFile            string
	vaultNamespace         string
	vaultInsecureAllowHTTP bool
	transitMount           string
	transitKey             string
	auth                   string
	approleMount           string
	approleRoleIDFile      string
	approleSecretIDFile    string
	tokenFile              string
	logFormat, logLevel    string
}

func newKMSPluginCommand() *cobra.Command {
	var f kmsPluginFlags
	cmd := &cobra.Command{
		Use:   "kms-plugin",
		Short: "Serve kube-apiserver's KMS v2 API on a unix socket, backed by a Vault Transit key",
		Long: `kms-plugin is the KMS v2 plugin of the vault-transit provider. atrest starts it
on every controlplane node, in a container named atrest-kms: kube-apiserver
asks it to wrap and unwrap its data keys, and it asks Vault's Transit engine,
so the key-encryption key never leaves Vault and no key is on the node.

Its key_id is the Transit key's latest version (transit/atrest-prod:v3): after
a rotation in Vault, each kube-apiserver writes with the new version from its
next status poll (once a minute). It logs in to Vault with an AppRole whose
secret id is in a file atrest delivers (re-read at every login, so a replaced
one is used from the next), or with a token file kept fresh by Vault Agent;
that login should allow nothing but encrypt and decrypt on the one key. It
never logs data keys, plaintext, secret ids or tokens.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := loggerFor(f.logFormat, f.logLevel, cmd.ErrOrStderr())
			return errorExit(serveKMSPlugin(cmd.Context(), f, log))
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.socket, "socket", cluster.KMSSocket, "unix socket to serve kube-apiserver on")
	fl.StringVar(&f.vaultAddress, "vault-address", "", "Vault's address (default VAULT_ADDR)")
	fl.StringVar(&f.vaultCAFile, "vault-ca-file", "", "PEM bundle of the CAs that verify Vault (default VAULT_CACERT)")
	fl.StringVar(&f.vaultNamespace, "vault-namespace", "", "Vault Enterprise namespace")
	fl.BoolVar(&f.vaultInsecureAllowHTTP, "vault-insecure-allow-http", false, "DANGEROUS: allow an http:// Vault address: data keys and the token cross the network in plaintext")
	fl.StringVar(&f.transitMount, "transit-mount", "transit", "mount path of the Transit secrets engine")
	fl.StringVar(&f.transitKey, "transit-key", "", "name of the Transit key (required)")
	fl.StringVar(&f.auth, "auth", keystore.AuthAppRole, "how to log in to Vault: approle or token")
	fl.StringVar(&f.approleMount, "approle-mount", "approle", "mount path of the AppRole auth method")
	fl.StringVar(&f.approleRoleIDFile, "approle-role-id-file", "", "file holding the AppRole role id")
	fl.StringVar(&f.approleSecretIDFile, "approle-secret-id-file", "", "file holding the AppRole secret id, re-read at every login")
	fl.StringVar(&f.tokenFile, "token-file", "", "file holding a Vault token, re-read at every login (auth token)")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	cmd.AddCommand(newKMSPluginHealthCommand())
	return cmd
}

// config is the Vault session f asks for; the error names each flag that
// is missing or wrong.
func (f kmsPluginFlags) config(log *slog.Logger) (keystore.Config, error) {
	var problems []string
	if f.transitKey == "" {
		problems = append(problems, "--transit-key: required: the Transit key that wraps kube-apiserver's data keys")
	}
	if !strings.HasPrefix(f.socket, "/") {
		problems = append(problems, fmt.Sprintf("--socket: %q must be an absolute path", f.socket))
	}
	cfg := keystore.Config{Address: f.vaultAddress, CAFile: f.vaultCAFile, Namespace: f.vaultNamespace,
		InsecureAllowHTTP: f.vaultInsecureAllowHTTP, AppRoleMount: f.approleMount, Logger: log}
	switch f.auth {
	case keystore.AuthAppRole:
		cfg.AuthMethod, cfg.AppRoleSecretIDFile = keystore.AuthAppRole, f.approleSecretIDFile
		if f.approleRoleIDFile == "" || f.approleSecretIDFile == "" {
			problems = append(problems, "--approle-role-id-file and --approle-secret-id-file: required with --auth approle")
			break
		}
		b, err := os.ReadFile(f.approleRoleIDFile)
		if err != nil {
			problems = append(problems, fmt.Sprintf("--approle-role-id-file: %v", err))
		}
		cfg.AppRoleID = strings.TrimSpace(string(b))
	case keystore.AuthToken:
		if f.tokenFile == "" {
			problems = append(problems, "--token-file: required with --auth token")
		}
		cfg.AuthMethod, cfg.TokenFile = keystore.AuthToken, f.tokenFile
	default:
		problems = append(problems, fmt.Sprintf("--auth: %q is not approle or token", f.auth))
	}
	if len(problems) > 0 {
		return cfg, errors.New("kms-plugin: " + strings.Join(problems, "\n  "))
	}
	return cfg, nil
}

// serveKMSPlugin logs in to Vault (again and again until it can: the
// socket is not served before, so kube-apiserver sees the plugin down
// rather than failing), then serves the socket until ctx ends.
func serveKMSPlugin(ctx context.Context, f kmsPluginFlags, log *slog.Logger) error {
	cfg, err := f.config(log)
	if err != nil {
		return err
	}
	var sess *keystore.Session
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		sess, err = keystore.OpenSession(ctx, cfg)
		if err == nil {
			break
		}
		if errors.Is(err, keystore.ErrInvalid) {
			return err
		}
		log.Error("Vault login failed; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
	defer sess.Close()
	svc := keystore.NewKMSService(sess.Transit(f.transitMount, f.transitKey), log)
	if err := os.MkdirAll(filepath.Dir(f.socket), 0o700); err != nil {
		return fmt.Errorf("kms-plugin: socket directory: %w", err)
	}
	// A socket left by a killed plugin would make the listen fail.
	if err := os.Remove(f.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("kms-plugin: remove the old socket: %w", err)
	}
	srv := kmsservice.NewGRPCService(f.socket, 30*time.Second, svc)
	served := make(chan error, 1)
	go func() { served <- srv.ListenAndServe() }()
	log.Info("serving KMS v2", "socket", f.socket, "transit_mount", f.transitMount, "transit_key", f.transitKey, "vault", cfg.Address)
	select {
	case err := <-served:
		return fmt.Errorf("kms-plugin: serve %s: %w", f.socket, err)
	case <-ctx.Done():
	}
	srv.Shutdown()
	enc, dec, st := svc.Calls()
	log.Info("stopped", "vault_encrypts", enc, "vault_decrypts", dec, "vault_status_probes", st)
	return nil
}

func newKMSPluginHealthCommand() *cobra.Command {
	socket := cluster.KMSSocket
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Ask the plugin on a socket for its status: exit 0 and its key_id when healthy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			st, err := kmsStatus(ctx, socket)
			if err != nil {
				return errorExit(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: healthz %s, key_id %s, version %s\n", socket, st.Healthz, st.KeyId, st.Version)
			if st.Healthz != "ok" {
				return &exitCodeError{code: exitError}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&socket, "socket", socket, "the plugin's unix socket")
	return cmd
}

// kmsStatus calls Status on the KMS v2 plugin at socket.
func kmsStatus(ctx context.Context, socket string) (*kmsapi.StatusResponse, error) {
	conn, err := grpc.NewClient("unix:"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}))
	if err != nil {
		return nil, fmt.Errorf("kms plugin at %s: %w", socket, err)
	}
	defer conn.Close()
	st, err := kmsapi.NewKeyManagementServiceClient(conn).Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("kms plugin at %s: status: %w", socket, err)
	}
	return st, nil
}
