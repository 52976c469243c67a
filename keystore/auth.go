package keystore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// authenticator logs the shared client in with the configured method.
type authenticator struct {
	cfg    Config
	client *vault.Client
	log    *slog.Logger

	mu sync.Mutex
	// A response-wrapping token can be unwrapped only once, so the secret id
	// it wrapped is kept for later logins, until the file holds a new one.
	wrapping string
	secretID string
}

// login logs in and sets the client's token. It returns the login's auth
// data for the lifetime watcher, or nil when the token never expires.
func (a *authenticator) login(ctx context.Context) (*vault.Secret, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var secret *vault.Secret
	var err error
	switch a.cfg.AuthMethod {
	case AuthToken:
		secret, err = a.loginToken(ctx)
	case AuthAppRole:
		secret, err = a.loginAppRole(ctx)
	case AuthKubernetes:
		secret, err = a.loginKubernetes(ctx)
	}
	if err != nil {
		return nil, err
	}
	a.client.SetToken(secret.Auth.ClientToken)
	a.log.Info("logged in to Vault", "address", a.client.Address(), "method", a.cfg.AuthMethod,
		"accessor", secret.Auth.Accessor, "ttl", time.Duration(secret.Auth.LeaseDuration)*time.Second,
		"renewable", secret.Auth.Renewable)
	if secret.Auth.LeaseDuration <= 0 {
		return nil, nil
	}
	return secret, nil
}

// loginToken uses the token from TokenFile (re-read at every login, so a
// token rotated by Vault Agent is picked up) or VAULT_TOKEN, and looks it
// up to learn its TTL.
func (a *authenticator) loginToken(ctx context.Context) (*vault.Secret, error) {
	token := a.client.Token()
	from := "VAULT_TOKEN"
	if a.cfg.TokenFile != "" {
		b, err := os.ReadFile(a.cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("vault token auth: read tokenFile: %w", err)
		}
		token, from = strings.TrimSpace(string(b)), "tokenFile "+a.cfg.TokenFile
	} else if env := os.Getenv(vault.EnvVaultToken); env != "" {
		token = env
	}
	if token == "" {
		return nil, fmt.Errorf("vault token auth: no token: set tokenFile or VAULT_TOKEN, or use authMethod approle or kubernetes")
	}
	c, err := a.client.CloneWithHeaders()
	if err != nil {
		return nil, fmt.Errorf("vault token auth: %w", err)
	}
	c.SetToken(token)
	const p = "auth/token/lookup-self"
	self, err := c.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return nil, &OpError{Op: "look up Vault token from " + from, Path: p, Err: classify(err, capRead, a.client.Address())}
	}
	ttl, err := self.TokenTTL()
	if err != nil {
		return nil, &OpError{Op: "look up Vault token from " + from, Path: p, Err: err}
	}
	renewable, _ := self.TokenIsRenewable()
	accessor, _ := self.TokenAccessor()
	return &vault.Secret{Auth: &vault.SecretAuth{
		ClientToken:   token,
		Accessor:      accessor,
		LeaseDuration: int(ttl.Seconds()),
		Renewable:     renewable,
	}}, nil
}

func (a *authenticator) loginAppRole(ctx context.Context) (*vault.Secret, error) {
	b, err := os.ReadFile(a.cfg.AppRoleSecretIDFile)
	if err != nil {
		return nil, fmt.Errorf("vault approle auth: read approleSecretIDFile: %w", err)
	}
	secretID := strings.TrimSpace(string(b))
	if secretID == "" {
		return nil, fmt.Errorf("vault approle auth: approleSecretIDFile %s is empty", a.cfg.AppRoleSecretIDFile)
	}
	if a.cfg.AppRoleWrapped {
		if secretID != a.wrapping {
			id, err := a.unwrapSecretID(ctx, secretID)
			if err != nil {
				return nil, err
			}
			a.wrapping, a.secretID = secretID, id
		}
		secretID = a.secretID
	}
	return a.loginWith(ctx, a.cfg.AppRoleMount, map[string]any{"role_id": a.cfg.AppRoleID, "secret_id": secretID})
}

// unwrapSecretID unwraps a response-wrapped AppRole secret id. An already
// used or expired wrapping token is an error: it may mean someone else
// unwrapped it first.
func (a *authenticator) unwrapSecretID(ctx context.Context, wrapping string) (string, error) {
	const p = "sys/wrapping/unwrap"
	c, err := a.client.CloneWithHeaders()
	if err != nil {
		return "", fmt.Errorf("vault approle auth: %w", err)
	}
	c.ClearToken()
	sec, err := c.Logical().UnwrapWithContext(ctx, wrapping)
	if err != nil {
		var re *vault.ResponseError
		if errors.As(err, &re) && re.StatusCode >= 400 && re.StatusCode < 500 {
			err = fmt.Errorf("%w: Vault refused the wrapping token in approleSecretIDFile %s (HTTP %d: %s): it is invalid, expired or already used; a wrapping token unwraps once, so if atrest did not unwrap it, someone else may have",
				ErrPermissionDenied, a.cfg.AppRoleSecretIDFile, re.StatusCode, strings.Join(re.Errors, "; "))
		} else {
			err = classify(err, capWrite, a.client.Address())
		}
		return "", &OpError{Op: "unwrap AppRole secret id", Path: p, Err: err}
	}
	if sec == nil || sec.Data == nil {
		return "", &OpError{Op: "unwrap AppRole secret id", Path: p, Err: fmt.Errorf("%w: the wrapping token in %s wraps nothing", ErrInvalid, a.cfg.AppRoleSecretIDFile)}
	}
	id, _ := sec.Data["secret_id"].(string)
	if id == "" {
		return "", &OpError{Op: "unwrap AppRole secret id", Path: p, Err: fmt.Errorf("%w: the wrapping token in %s does not wrap an AppRole secret id", ErrInvalid, a.cfg.AppRoleSecretIDFile)}
	}
	return id, nil
}

// loginKubernetes reads the service-account token at every login:
// projected tokens expire and are replaced on disk.
func (a *authenticator) loginKubernetes(ctx context.Context) (*vault.Secret, error) {
	b, err := os.ReadFile(a.cfg.KubernetesTokenFile)
	if err != nil {
		return nil, fmt.Errorf("vault kubernetes auth: read kubernetesTokenFile: %w", err)
	}
	jwt := strings.TrimSpace(string(b))
	if jwt == "" {
		return nil, fmt.Errorf("vault kubernetes auth: kubernetesTokenFile %s is empty", a.cfg.KubernetesTokenFile)
	}
	return a.loginWith(ctx, a.cfg.KubernetesMount, map[string]any{"role": a.cfg.KubernetesRole, "jwt": jwt})
}

// loginWith writes the credentials to auth/<mount>/login with no token on
// the request, so an expired token cannot get in the way.
func (a *authenticator) loginWith(ctx context.Context, mount string, body map[string]any) (*vault.Secret, error) {
	p := "auth/" + mount + "/login"
	op := "log in to Vault with " + a.cfg.AuthMethod
	c, err := a.client.CloneWithHeaders()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	c.ClearToken()
	sec, err := c.Logical().WriteWithContext(ctx, p, body)
	if err != nil {
		var re *vault.ResponseError
		if errors.As(err, &re) && re.StatusCode >= 400 && re.StatusCode < 500 {
			err = fmt.Errorf("%w: Vault refused the credentials (HTTP %d: %s): check the role, its bindings, the credentials and the auth mount path",
				ErrPermissionDenied, re.StatusCode, strings.Join(re.Errors, "; "))
		} else {
			err = classify(err, capWrite, a.client.Address())
		}
		return nil, &OpError{Op: op, Path: p, Err: err}
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return nil, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: Vault answered without a token", ErrInvalid)}
	}
	return sec, nil
}

// call makes one Vault request, bounded by opTimeout. Vault answers 403
// for an expired token as for a policy denial; since the token may have
// expired before the watcher replaced it (after an outage, or a slow
// re-login), a 403 costs one fresh login and one retry, and is returned only
// if the retry is denied too. A refused request changed nothing, so the
// retry cannot apply a write twice.
func (s *Session) call(ctx context.Context, f func(context.Context) (*vault.Secret, error)) (*vault.Secret, error) {
	token := s.client.Token()
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	sec, err := f(cctx)
	cancel()
	var re *vault.ResponseError
	if err == nil || !errors.As(err, &re) || re.StatusCode != 403 {
		return sec, err
	}
	if s.client.Token() == token {
		lctx, cancel := context.WithTimeout(ctx, opTimeout)
		fresh, lerr := s.auth.login(lctx)
		cancel()
		if lerr != nil {
			s.log.Warn("Vault denied a request and logging in again failed", "err", lerr)
			return sec, err
		}
		s.handOver(fresh)
	}
	cctx, cancel = context.WithTimeout(ctx, opTimeout)
	defer cancel()
	return f(cctx)
}

// handOver gives the renewal goroutine a token obtained outside it, so it
// watches the new token instead of the old one.
func (s *Session) handOver(secret *vault.Secret) {
	select {
	case <-s.loggedIn: // drop an older hand-over not yet picked up
	default:
	}
	select {
	case s.loggedIn <- secret:
	default:
	}
}

// keepLoggedIn renews the token while it can be extended and logs in again
// when it cannot (max TTL reached, or renewal failing). It returns when the
// Session is closed.
func (s *Session) keepLoggedIn(secret *vault.Secret) {
	defer close(s.done)
	for {
		if secret == nil {
			// A token that never expires: nothing to renew until a
			// hand-over brings one that does.
			select {
			case <-s.stop:
				return
			case secret = <-s.loggedIn:
			}
			continue
		}
		w, err := s.client.NewLifetimeWatcher(&vault.LifetimeWatcherInput{Secret: secret})
		if err != nil {
			s.log.Error("cannot watch the Vault token; it will not be renewed", "err", err)
			return
		}
		go w.Start()
		renewing, handedOver := true, false
		for renewing {
			select {
			case <-s.stop:
				w.Stop()
				return
			case secret = <-s.loggedIn:
				renewing, handedOver = false, true
			case err := <-w.DoneCh():
				if err != nil {
					s.log.Warn("Vault token renewal failed; logging in again", "err", classify(err, capWrite, s.client.Address()))
				} else {
					s.log.Info("Vault token cannot be extended any further; logging in again")
				}
				renewing = false
			case r := <-w.RenewCh():
				if r != nil && r.Secret != nil && r.Secret.Auth != nil {
					s.log.Debug("renewed Vault token", "ttl", time.Duration(r.Secret.Auth.LeaseDuration)*time.Second)
				}
			}
		}
		w.Stop()
		if !handedOver {
			var ok bool
			if secret, ok = s.relogin(); !ok {
				return
			}
		}
	}
}

// relogin logs in again with backoff (1 s doubling to 30 s) until it
// works, and returns the new login (nil for a token that never expires), or
// false when the Session is closed first.
func (s *Session) relogin() (*vault.Secret, bool) {
	wait := time.Second
	for {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		secret, err := s.auth.login(ctx)
		cancel()
		if err == nil {
			return secret, true
		}
		s.log.Error("Vault login failed; retrying", "err", err, "retry_in", wait)
		select {
		case <-s.stop:
			return nil, false
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}
