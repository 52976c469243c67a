//go:build sandbox

package keystore

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/atrest-io/atrest/internal/leaktest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/sandbox"
	"github.com/atrest-io/atrest/sandbox/sandboxtest"
)

var sb *sandbox.Sandbox

func TestMain(m *testing.M) {
	os.Exit(sandboxtest.Main(m, sandbox.Options{Nodes: 1, PersistentVault: true}, &sb))
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// clusterName turns the test's name into a cluster name of its own, so
// tests do not see each other's keyrings.
func clusterName(t *testing.T) string {
	return strings.ToLower(regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(t.Name(), "-"))
}

func baseConfig(t *testing.T, w *leaktest.Watch) Config {
	return Config{
		Address:   sb.Vault.Address,
		CAFile:    sb.Vault.CAFile,
		TokenFile: sb.Vault.TokenFile,
		// The sandbox's Vault is plain http unless persistent.
		InsecureAllowHTTP: sb.Vault.PlainHTTP(),
		Cluster:           clusterName(t),
		Logger:            w.Logger(),
	}
}

func openStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	s, err := Open(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// root is a Vault client with the root token, for setting Vault up.
func root(t *testing.T) *vault.Client {
	t.Helper()
	cfg := vault.DefaultConfig()
	cfg.Address = sb.Vault.Address
	if err := cfg.ConfigureTLS(&vault.TLSConfig{CACert: sb.Vault.CAFile}); err != nil {
		t.Fatal(err)
	}
	c, err := vault.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	token, err := os.ReadFile(sb.Vault.TokenFile)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(strings.TrimSpace(string(token)))
	return c
}

func write(t *testing.T, c *vault.Client, path string, body map[string]any) *vault.Secret {
	t.Helper()
	sec, err := c.Logical().WriteWithContext(testCtx(t), path, body)
	if err != nil {
		t.Fatalf("vault write %s: %v", path, err)
	}
	return sec
}

// atrestPolicy is the policy from the package documentation.
const atrestPolicy = `
path "secret/data/atrest/*"     { capabilities = ["create", "read", "update"] }
path "secret/metadata/atrest/*" { capabilities = ["create", "read", "update", "delete", "list"] }
`

var setupOnce sync.Once

// setupAuth creates the atrest policy, a read-only policy, and enables
// AppRole, once per test binary.
func setupAuth(t *testing.T) {
	t.Helper()
	setupOnce.Do(func() {
		c := root(t)
		write(t, c, "sys/policies/acl/atrest", map[string]any{"policy": atrestPolicy})
		write(t, c, "sys/policies/acl/atrest-ro", map[string]any{"policy": `
path "secret/data/atrest/*"     { capabilities = ["read"] }
path "secret/metadata/atrest/*" { capabilities = ["read", "list"] }
`})
		write(t, c, "sys/auth/approle", map[string]any{"type": "approle"})
	})
}

func tokenFile(t *testing.T, token string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(f, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func mustNewKey(t *testing.T, w *leaktest.Watch, s *Store, p cluster.Provider) cluster.Key {
	t.Helper()
	k, err := s.NewKey(testCtx(t), p)
	if err != nil {
		t.Fatalf("new key: %v", w.Err(err))
	}
	return w.Key(k)
}

func mustUpdate(t *testing.T, w *leaktest.Watch, s *Store, kr *Keyring) {
	t.Helper()
	if err := s.UpdateKeyring(testCtx(t), kr); err != nil {
		t.Fatalf("update keyring: %v", w.Err(err))
	}
}

func mustKeyring(t *testing.T, w *leaktest.Watch, s *Store) *Keyring {
	t.Helper()
	kr, err := s.Keyring(testCtx(t))
	if err != nil {
		t.Fatalf("read keyring: %v", w.Err(err))
	}
	return kr
}

func wantErr(t *testing.T, w *leaktest.Watch, err, is error, saying ...string) {
	t.Helper()
	w.Err(err)
	if !errors.Is(err, is) {
		t.Fatalf("got error %v, want %v", err, is)
	}
	for _, s := range saying {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
}

func metadata(t *testing.T, s *Store, rel string) map[string]any {
	t.Helper()
	sec, err := root(t).Logical().ReadWithContext(testCtx(t), s.path("metadata", rel))
	if err != nil || sec == nil {
		t.Fatalf("read metadata of %s: %v", rel, err)
	}
	return sec.Data
}

func TestRoundTrip(t *testing.T) {
	w := leaktest.New(t)
	ctx := testCtx(t)
	s := openStore(t, baseConfig(t, w))

	kr := mustKeyring(t, w, s)
	if kr.Version != 0 || len(kr.Keys) != 0 || kr.Journal != nil {
		t.Fatalf("fresh keyring: %+v", kr)
	}
	k := mustNewKey(t, w, s, cluster.AESCBC)
	if !regexp.MustCompile(`^k-[a-z0-9]{5}$`).MatchString(k.Name) || len(k.Secret) != 32 {
		t.Errorf("new key %s has %d bytes", k.Name, len(k.Secret))
	}
	got, err := s.Key(ctx, k.Name)
	if err != nil || got.Name != k.Name || got.Provider != k.Provider || !bytes.Equal(got.Secret, k.Secret) {
		t.Fatalf("Key(%s) = %v, %v", k.Name, got, w.Err(err))
	}

	kr.Keys = []KeyInfo{InfoOf(k, RolePrimary)}
	kr.DesiredHash = ConfigHash([]byte("rendered"))
	kr.Journal = NewJournal("enable", "0123abc", "etcd-snap-1", "deploy-readers", "deploy-writer", "rewrite")
	kr.Journal.Steps[0].State, kr.Journal.Steps[0].Started = StepRunning, time.Now().UTC().Truncate(time.Second)
	mustUpdate(t, w, s, kr)
	if kr.Version != 1 {
		t.Errorf("version after first write: %d", kr.Version)
	}
	back := mustKeyring(t, w, s)
	if back.Version != 1 || len(back.Keys) != 1 || back.Keys[0] != kr.Keys[0] || back.DesiredHash != kr.DesiredHash ||
		back.Journal == nil || back.Journal.ID != kr.Journal.ID || back.Journal.Steps[0].State != StepRunning || !back.Journal.Steps[0].Started.Equal(kr.Journal.Steps[0].Started) {
		t.Errorf("read back %+v, wrote %+v", back, kr)
	}

	// Keys are never overwritten, not even with the same name and new material.
	other := w.Key(cluster.Key{Name: k.Name, Provider: cluster.AESCBC, Secret: bytes.Repeat([]byte{7}, 32)})
	wantErr(t, w, s.PutKey(ctx, other), ErrExists, "write key "+k.Name, s.path("data", "keys/"+k.Name), "never overwritten")
	if again, _ := s.Key(ctx, k.Name); !bytes.Equal(again.Secret, k.Secret) {
		t.Error("PutKey overwrote a key")
	}
	// Nor by a plain write that skips check-and-set.
	if _, err := root(t).Logical().WriteWithContext(ctx, s.path("data", "keys/"+k.Name), map[string]any{"data": map[string]any{"secret": "x"}}); err == nil || !strings.Contains(err.Error(), "check-and-set parameter required") {
		t.Errorf("blind write to key material: %v", err)
	}
	for rel, want := range map[string]any{"keys/" + k.Name: keyMaxVersions, keyringRel: keyringMaxVersions} {
		m := metadata(t, s, rel)
		if n, _ := jsonInt(m["max_versions"]); n != want || m["cas_required"] != true {
			t.Errorf("%s: max_versions %v cas_required %v", rel, m["max_versions"], m["cas_required"])
		}
	}

	_, err = s.Key(ctx, "k-zzzzz")
	wantErr(t, w, err, ErrNotFound, "read key k-zzzzz "+s.path("data", "keys/k-zzzzz"))

	// The keyring only names keys that are stored, with their real fingerprints.
	unstored := w.Key(mustKey(t, cluster.AESGCM))
	bad := *back
	bad.Keys = append(slices.Clone(back.Keys), InfoOf(unstored, RoleReader))
	wantErr(t, w, s.UpdateKeyring(ctx, &bad), ErrInvalid, "write keyring "+s.path("data", "keyring"), "key "+unstored.Name+" (reader) is not in Vault")
	bad.Keys = []KeyInfo{InfoOf(k, RolePrimary)}
	bad.Keys[0].Fingerprint = unstored.Fingerprint()
	wantErr(t, w, s.UpdateKeyring(ctx, &bad), ErrInvalid, "but the keyring says")
	if now := mustKeyring(t, w, s); now.Version != 1 {
		t.Errorf("a refused update wrote version %d", now.Version)
	}

	// Snapshot references.
	if err := s.AddSnapshotRef(ctx, "etcd-snap-1", []string{k.Name}); err != nil {
		t.Fatal(w.Err(err))
	}
	wantErr(t, w, s.AddSnapshotRef(ctx, "etcd-snap-2", []string{k.Name, "k-zzzzz"}), ErrNotFound, "needs key k-zzzzz")
	refs, err := s.SnapshotRefs(ctx)
	if err != nil || len(refs) != 1 || !slices.Equal(refs["etcd-snap-1"], []string{k.Name}) {
		t.Errorf("refs %v, %v", refs, w.Err(err))
	}
	if err := s.ReleaseSnapshotRef(ctx, "etcd-snap-1"); err != nil {
		t.Fatal(w.Err(err))
	}
	if refs, _ := s.SnapshotRefs(ctx); len(refs) != 0 {
		t.Errorf("refs after release: %v", refs)
	}
}

// Two writers read the same version; exactly one write lands.
func TestCASRace(t *testing.T) {
	w := leaktest.New(t)
	ctx := testCtx(t)
	a := openStore(t, baseConfig(t, w))
	b := openStore(t, baseConfig(t, w))
	k := mustNewKey(t, w, a, cluster.AESCBC)
	kr := mustKeyring(t, w, a)
	kr.Keys = []KeyInfo{InfoOf(k, RolePrimary)}
	mustUpdate(t, w, a, kr)

	for round := range 5 {
		ka, kb := mustKeyring(t, w, a), mustKeyring(t, w, b)
		ka.DesiredHash, kb.DesiredHash = fmt.Sprintf("a%d", round), fmt.Sprintf("b%d", round)
		start := make(chan struct{})
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i, st := range []struct {
			s  *Store
			kr *Keyring
		}{{a, ka}, {b, kb}} {
			wg.Go(func() {
				<-start
				errs[i] = st.s.UpdateKeyring(ctx, st.kr)
			})
		}
		close(start)
		wg.Wait()
		if (errs[0] == nil) == (errs[1] == nil) {
			t.Fatalf("round %d: want exactly one winner, got %v and %v", round, errs[0], errs[1])
		}
		winner, loser := ka, kb
		if errs[0] != nil {
			winner, loser = kb, ka
			errs[0], errs[1] = errs[1], errs[0]
		}
		wantErr(t, w, errs[1], ErrConflict, "write keyring "+a.path("data", "keyring"), "read it again and retry")
		got := mustKeyring(t, w, a)
		if got.Version != winner.Version || got.DesiredHash != winner.DesiredHash || loser.Version != got.Version-1 {
			t.Errorf("round %d: keyring %d %q, winner %d %q, loser kept %d", round, got.Version, got.DesiredHash, winner.Version, winner.DesiredHash, loser.Version)
		}
	}
}

func TestLock(t *testing.T) {
	w := leaktest.New(t)
	ctx := testCtx(t)
	a := openStore(t, baseConfig(t, w))
	b := openStore(t, baseConfig(t, w))
	const ttl = 3 * time.Second

	// Two contenders for a free lock: one gets it.
	var wg sync.WaitGroup
	locks := make([]*Lock, 2)
	errs := make([]error, 2)
	start := make(chan struct{})
	for i, s := range []*Store{a, b} {
		wg.Go(func() {
			<-start
			locks[i], errs[i] = s.AcquireLock(ctx, fmt.Sprintf("contender %d", i), ttl)
		})
	}
	close(start)
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Fatalf("want exactly one holder, got %v and %v", errs[0], errs[1])
	}
	held, heldBy, other := locks[0], "contender 0", b
	if errs[0] != nil {
		held, heldBy, other = locks[1], "contender 1", a
		errs[0], errs[1] = errs[1], errs[0]
	}
	var le *LockedError
	if !errors.As(errs[1], &le) || le.Holder != heldBy {
		t.Fatalf("loser got %v", errs[1])
	}
	wantErr(t, w, errs[1], ErrLocked, `held by "`+heldBy+`" until`)

	// Renewal keeps it past its TTL.
	time.Sleep(ttl + ttl/2)
	_, err := other.AcquireLock(ctx, "latecomer", ttl)
	wantErr(t, w, err, ErrLocked, heldBy)
	select {
	case <-held.Lost():
		t.Fatalf("lock lost while renewed: %v", held.Err())
	default:
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(w.Err(err))
	}
	if err := held.Release(ctx); err != nil {
		t.Errorf("second release: %v", w.Err(err))
	}

	// A holder that dies without releasing: its lock expires and is taken over.
	crashed, err := a.AcquireLock(ctx, "crashed", ttl)
	if err != nil {
		t.Fatal(w.Err(err))
	}
	crashed.stopOnce.Do(func() { close(crashed.stop) })
	<-crashed.done
	_, err = b.AcquireLock(ctx, "too early", ttl)
	wantErr(t, w, err, ErrLocked, "crashed")
	// Expired, it is still not taken over within the grace: the holder's
	// last call may be in flight. The holder's own Check fails at expiry.
	time.Sleep(ttl + 500*time.Millisecond)
	wantErr(t, w, crashed.Check(), ErrLockLost, "expired")
	_, err = b.AcquireLock(ctx, "in the grace", ttl)
	wantErr(t, w, err, ErrLocked, "taken over")
	time.Sleep(LockGrace(ttl))
	taker, err := b.AcquireLock(ctx, "taker", ttl)
	if err != nil {
		t.Fatalf("take over an expired lock: %v", w.Err(err))
	}
	if taker.Token() <= crashed.Token() {
		t.Errorf("fencing token %d of the new holder is not greater than %d of the old", taker.Token(), crashed.Token())
	}
	if err := taker.Check(); err != nil {
		t.Errorf("Check of a held lock: %v", err)
	}
	if !strings.Contains(w.Logs(), "took over an expired lock") {
		t.Error("takeover not logged")
	}
	// The dead holder coming back cannot release the new holder's lock.
	wantErr(t, w, crashed.Release(ctx), ErrLockLost, "another contender changed")
	_, err = a.AcquireLock(ctx, "check", ttl)
	wantErr(t, w, err, ErrLocked, "taker")

	// Someone else overwrites the lock: the holder learns it at its next renewal.
	e, err := b.kvRead(ctx, "test", lockRel, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.kvWrite(ctx, "test", lockRel, e.version, lockDoc{Holder: "intruder", ID: "x", Expires: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-taker.Lost():
		wantErr(t, w, taker.Err(), ErrLockLost, "another contender changed")
	case <-time.After(2 * ttl):
		t.Fatal("overwritten lock not reported lost")
	}
	wantErr(t, w, taker.Release(ctx), ErrLockLost)
	_, err = a.AcquireLock(ctx, "check", ttl)
	wantErr(t, w, err, ErrLocked, "intruder")

	// A killed CLI's lock: unlock reads it and breaks it by its id only.
	if err := b.BreakLock(ctx, "x"); err != nil {
		t.Fatalf("break the intruder's lock: %v", w.Err(err))
	}
	killed, err := a.AcquireLock(ctx, "killed apply", time.Minute)
	if err != nil {
		t.Fatal(w.Err(err))
	}
	killed.stopOnce.Do(func() { close(killed.stop) })
	<-killed.done
	info, err := b.LockState(ctx)
	if err != nil || !info.Held || info.Holder != "killed apply" || info.PID != os.Getpid() || info.Grace != LockGrace(time.Minute) || info.Expired(time.Now()) {
		t.Fatalf("lock state: %+v, %v", info, err)
	}
	wantErr(t, w, b.BreakLock(ctx, "another id"), ErrConflict, "now held by")
	if err := b.BreakLock(ctx, info.ID); err != nil {
		t.Fatal(w.Err(err))
	}
	if info, err := b.LockState(ctx); err != nil || info.Held {
		t.Fatalf("after break: %+v, %v", info, err)
	}
	after, err := b.AcquireLock(ctx, "after break", ttl)
	if err != nil {
		t.Fatalf("acquire after break: %v", w.Err(err))
	}
	if after.Token() <= killed.Token() {
		t.Errorf("token %d after a break is not greater than %d", after.Token(), killed.Token())
	}
	_ = after.Release(ctx)

	_, err = a.AcquireLock(ctx, "", ttl)
	wantErr(t, w, err, ErrInvalid, "holder name is required")
	_, err = a.AcquireLock(ctx, "quick", time.Second)
	wantErr(t, w, err, ErrInvalid, "shorter than")
}

// A token with a 3 s TTL is renewed in the background and stays usable.
func TestTokenRenewed(t *testing.T) {
	setupAuth(t)
	w := leaktest.New(t)
	sec := write(t, root(t), "auth/token/create", map[string]any{
		"policies": []string{"atrest"}, "ttl": "3s", "explicit_max_ttl": "5m", "renewable": true,
	})
	cfg := baseConfig(t, w)
	cfg.TokenFile = tokenFile(t, sec.Auth.ClientToken)
	s := openStore(t, cfg)

	time.Sleep(8 * time.Second)
	k := mustNewKey(t, w, s, cluster.Secretbox)
	kr := mustKeyring(t, w, s)
	kr.Keys = []KeyInfo{InfoOf(k, RolePrimary)}
	mustUpdate(t, w, s, kr)
	if s.client.Token() != sec.Auth.ClientToken {
		t.Error("token was replaced, not renewed")
	}
	if n := strings.Count(w.Logs(), "renewed Vault token"); n < 2 {
		t.Errorf("token renewed %d times in 8 s, want at least 2", n)
	}
	if strings.Contains(w.Logs(), sec.Auth.ClientToken) {
		t.Error("the Vault token appears in the logs")
	}
}

// An AppRole token that reaches its max TTL is replaced by logging in
// again; the response-wrapped secret id, usable once, is kept in memory.
func TestAppRoleLoginAgain(t *testing.T) {
	setupAuth(t)
	w := leaktest.New(t)
	ctx := testCtx(t)
	rc := root(t)
	write(t, rc, "auth/approle/role/atrest-short", map[string]any{
		"token_policies": []string{"atrest"}, "token_ttl": "2s", "token_max_ttl": "4s",
	})
	rid, err := rc.Logical().ReadWithContext(ctx, "auth/approle/role/atrest-short/role-id")
	if err != nil {
		t.Fatal(err)
	}
	roleID := rid.Data["role_id"].(string)
	wrapper, err := rc.Clone()
	if err != nil {
		t.Fatal(err)
	}
	wrapper.SetToken(rc.Token())
	wrapper.SetWrappingLookupFunc(func(string, string) string { return "5m" })
	wrapped, err := wrapper.Logical().WriteWithContext(ctx, "auth/approle/role/atrest-short/secret-id", nil)
	if err != nil || wrapped.WrapInfo == nil {
		t.Fatalf("wrapped secret id: %v", err)
	}

	cfg := baseConfig(t, w)
	cfg.AuthMethod, cfg.AppRoleID, cfg.AppRoleWrapped = AuthAppRole, roleID, true
	cfg.AppRoleSecretIDFile = tokenFile(t, wrapped.WrapInfo.Token)
	s := openStore(t, cfg)
	first := s.client.Token()

	time.Sleep(10 * time.Second)
	k := mustNewKey(t, w, s, cluster.AESGCM)
	kr := mustKeyring(t, w, s)
	kr.Keys = []KeyInfo{InfoOf(k, RolePrimary)}
	mustUpdate(t, w, s, kr)
	if s.client.Token() == first {
		t.Error("token not replaced after its max TTL")
	}
	logs := w.Logs()
	if n := strings.Count(logs, "logged in to Vault"); n < 3 {
		t.Errorf("logged in %d times in 10 s with a 4 s max TTL, want at least 3", n)
	}
	if !strings.Contains(logs, "cannot be extended any further") {
		t.Error("re-login reason not logged")
	}

	// The wrapping token was used once, by atrest: a second reader fails loudly.
	_, err = Open(ctx, cfg)
	wantErr(t, w, err, ErrPermissionDenied, "unwrap AppRole secret id sys/wrapping/unwrap", "already used")

	// Plain secret id, and a wrong one.
	sid := write(t, rc, "auth/approle/role/atrest-short/secret-id", nil)
	plain := cfg
	plain.AppRoleWrapped = false
	plain.AppRoleSecretIDFile = tokenFile(t, sid.Data["secret_id"].(string))
	openStore(t, plain)
	plain.AppRoleSecretIDFile = tokenFile(t, "00000000-0000-0000-0000-000000000000")
	_, err = Open(ctx, plain)
	wantErr(t, w, err, ErrPermissionDenied, "log in to Vault with approle auth/approle/login", "refused the credentials")
	if strings.Contains(w.Logs(), sid.Data["secret_id"].(string)) || strings.Contains(w.Logs(), wrapped.WrapInfo.Token) {
		t.Error("AppRole credentials appear in the logs")
	}
}

// Kubernetes auth against the sandbox apiserver as Vault's TokenReview
// endpoint; the token file is read again at every login.
func TestKubernetesAuth(t *testing.T) {
	setupAuth(t)
	w := leaktest.New(t)
	ctx := testCtx(t)
	write(t, root(t), "auth/kubernetes/role/atrest", map[string]any{
		"bound_service_account_names": "atrest", "bound_service_account_namespaces": "default",
		"token_policies": []string{"atrest"}, "token_ttl": "1h",
	})
	jwt, err := sb.ServiceAccountToken(ctx, "default", "atrest", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig(t, w)
	cfg.AuthMethod, cfg.KubernetesRole, cfg.KubernetesTokenFile = AuthKubernetes, "atrest", tokenFile(t, jwt)
	s := openStore(t, cfg)
	k := mustNewKey(t, w, s, cluster.AESCBC)
	kr := mustKeyring(t, w, s)
	kr.Keys = []KeyInfo{InfoOf(k, RolePrimary)}
	mustUpdate(t, w, s, kr)

	// A rotated projected token is picked up at the next login ...
	jwt2, err := sb.ServiceAccountToken(ctx, "default", "atrest", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.KubernetesTokenFile, []byte(jwt2), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.auth.login(ctx); err != nil {
		t.Fatalf("login with the rotated token: %v", w.Err(err))
	}
	// ... and so is a broken one, as an error naming the login path.
	if err := os.WriteFile(cfg.KubernetesTokenFile, []byte("not-a-jwt"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = s.auth.login(ctx)
	wantErr(t, w, err, ErrPermissionDenied, "log in to Vault with kubernetes auth/kubernetes/login")
	// A token of another service account is refused by the role binding.
	jwt3, err := sb.ServiceAccountToken(ctx, "default", "intruder", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.KubernetesTokenFile, []byte(jwt3), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = s.auth.login(ctx)
	wantErr(t, w, err, ErrPermissionDenied, "refused the credentials")
	if strings.Contains(w.Logs(), jwt) {
		t.Error("the service-account token appears in the logs")
	}
}

// The VAULT_* environment is honoured when the settings leave fields empty.
func TestEnvironment(t *testing.T) {
	w := leaktest.New(t)
	token, err := os.ReadFile(sb.Vault.TokenFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("VAULT_ADDR", sb.Vault.Address)
	t.Setenv("VAULT_CACERT", sb.Vault.CAFile)
	t.Setenv("VAULT_TOKEN", strings.TrimSpace(string(token)))
	s := openStore(t, Config{Cluster: clusterName(t), Logger: w.Logger(), InsecureAllowHTTP: sb.Vault.PlainHTTP()})
	if _, err := s.Keyring(testCtx(t)); err != nil {
		t.Fatal(w.Err(err))
	}
	t.Setenv("VAULT_CACERT", "")
	_, err = Open(testCtx(t), Config{Cluster: clusterName(t), Logger: w.Logger(), TokenFile: sb.Vault.TokenFile, InsecureAllowHTTP: sb.Vault.PlainHTTP()})
	wantErr(t, w, err, ErrUnavailable, "look up Vault token", "certificate")
}

func TestPermissionDenied(t *testing.T) {
	setupAuth(t)
	w := leaktest.New(t)
	ctx := testCtx(t)
	admin := openStore(t, baseConfig(t, w))
	k := mustNewKey(t, w, admin, cluster.AESCBC)
	kr := mustKeyring(t, w, admin)
	kr.Keys = []KeyInfo{InfoOf(k, RolePrimary)}
	mustUpdate(t, w, admin, kr)

	sec := write(t, root(t), "auth/token/create", map[string]any{"policies": []string{"atrest-ro"}, "ttl": "10m"})
	cfg := baseConfig(t, w)
	cfg.TokenFile = tokenFile(t, sec.Auth.ClientToken)
	ro := openStore(t, cfg)
	rkr := mustKeyring(t, w, ro)
	rkr.DesiredHash = "changed"
	wantErr(t, w, ro.UpdateKeyring(ctx, rkr), ErrPermissionDenied, "write keyring "+ro.path("data", "keyring")+": permission denied", "does not grant create and update on this path")
	_, err := ro.NewKey(ctx, cluster.AESCBC)
	wantErr(t, w, err, ErrPermissionDenied, ro.path("metadata", "keys/"))
	if now := mustKeyring(t, w, admin); now.Version != kr.Version || now.DesiredHash != "" {
		t.Errorf("keyring changed by a denied write: %+v", now)
	}
}

// Vault stopped or sealed mid-operation: clear errors naming the path and
// the operation, and the keyring as it was.
func TestVaultDown(t *testing.T) {
	w := leaktest.New(t)
	ctx := testCtx(t)
	s := openStore(t, baseConfig(t, w))
	k1 := mustNewKey(t, w, s, cluster.AESCBC)
	kr := mustKeyring(t, w, s)
	kr.Keys = []KeyInfo{InfoOf(k1, RolePrimary)}
	mustUpdate(t, w, s, kr)
	lock, err := s.AcquireLock(ctx, "rotation", MinLockTTL)
	if err != nil {
		t.Fatal(w.Err(err))
	}

	// A rotation begins: the new key is stored, then Vault goes away.
	k2 := mustNewKey(t, w, s, cluster.AESCBC)
	next := *kr
	next.Keys = []KeyInfo{InfoOf(k2, RolePrimary), InfoOf(k1, RoleReader)}
	if err := sb.StopVault(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = sb.StartVault(context.Background())
		}
	})
	wantErr(t, w, s.UpdateKeyring(ctx, &next), ErrUnavailable, "read key "+k2.Name+" "+s.path("data", "keys/"+k2.Name)+": Vault is unreachable at "+sb.Vault.Address)
	if next.Version != kr.Version {
		t.Errorf("failed update moved the version to %d", next.Version)
	}
	_, err = s.Keyring(ctx)
	wantErr(t, w, err, ErrUnavailable, "read keyring "+s.path("data", "keyring")+": Vault is unreachable")
	_, err = s.NewKey(ctx, cluster.AESCBC)
	wantErr(t, w, err, ErrUnavailable)
	select {
	case <-lock.Lost():
		wantErr(t, w, lock.Err(), ErrLockLost, "not renewed before it expires")
	case <-time.After(3 * MinLockTTL):
		t.Error("lock not reported lost while Vault is down")
	}

	if err := sb.StartVault(ctx); err != nil {
		t.Fatal(err)
	}
	restarted = true
	got := mustKeyring(t, w, s)
	if got.Version != kr.Version || len(got.Keys) != 1 || got.Keys[0] != kr.Keys[0] {
		t.Fatalf("keyring after the outage: %+v, want %+v", got, kr)
	}
	// The stored key survived; the rotation goes on from where it stopped.
	mustUpdate(t, w, s, &next)

	// Sealed.
	if _, err := root(t).Logical().WriteWithContext(ctx, "sys/seal", nil); err != nil {
		t.Fatal(err)
	}
	restarted = false
	_, err = s.Keyring(ctx)
	wantErr(t, w, err, ErrSealed, "read keyring "+s.path("data", "keyring")+": Vault is sealed")
	stale := *got
	stale.DesiredHash = "x"
	wantErr(t, w, s.UpdateKeyring(ctx, &stale), ErrSealed)
	_, err = s.AcquireLock(ctx, "during seal", MinLockTTL)
	wantErr(t, w, err, ErrSealed, "acquire lock "+s.path("data", "lock"))
	if err := sb.StopVault(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sb.StartVault(ctx); err != nil { // unseals
		t.Fatal(err)
	}
	restarted = true
	if after := mustKeyring(t, w, s); after.Version != next.Version || after.Keys[0].Name != k2.Name {
		t.Errorf("keyring after the seal: %+v", after)
	}
}

// Many keyring updates (more than KV v2's default 10 versions, and more
// than the keyring keeps) never lose a key something still needs.
func TestManyUpdates(t *testing.T) {
	w := leaktest.New(t)
	ctx := testCtx(t)
	s := openStore(t, baseConfig(t, w))
	first := mustNewKey(t, w, s, cluster.AESCBC)
	kr := mustKeyring(t, w, s)
	kr.Keys = []KeyInfo{InfoOf(first, RolePrimary)}
	mustUpdate(t, w, s, kr)
	if err := s.AddSnapshotRef(ctx, "etcd-snap-1", []string{first.Name}); err != nil {
		t.Fatal(w.Err(err))
	}
	wantErr(t, w, s.DestroyKey(ctx, first.Name), ErrReferenced, "destroy key "+first.Name, "lists it as primary")

	var destroyed []string
	for range 20 {
		// rotate: [old, new(read)] -> [new, old] -> [new], then destroy old
		prev, _ := kr.Primary()
		k := mustNewKey(t, w, s, cluster.AESCBC)
		kr.Keys = []KeyInfo{{Name: prev.Name, Provider: prev.Provider, Created: prev.Created, Role: RolePrimary, Fingerprint: prev.Fingerprint}, InfoOf(k, RoleReader)}
		mustUpdate(t, w, s, kr)
		kr.Keys[0].Role, kr.Keys[1].Role = RoleReader, RolePrimary
		mustUpdate(t, w, s, kr)
		kr.Keys[0].Role = RoleRetired
		mustUpdate(t, w, s, kr)
		err := s.DestroyKey(ctx, prev.Name)
		if prev.Name == first.Name {
			wantErr(t, w, err, ErrReferenced, "etcd-snap-1")
		} else if err != nil {
			t.Fatal(w.Err(err))
		} else {
			destroyed = append(destroyed, prev.Name)
		}
		kr.Keys = kr.Keys[1:]
		mustUpdate(t, w, s, kr)
	}
	if kr.Version <= keyringMaxVersions {
		t.Fatalf("only %d keyring versions written", kr.Version)
	}
	// The first keyring version is gone from Vault; the first key is not.
	if e, err := s.kvRead(ctx, "test", keyringRel, 1); err != nil || e.version != 0 {
		t.Errorf("keyring version 1: %d %v", e.version, err)
	}
	got, err := s.Key(ctx, first.Name)
	if err != nil || !bytes.Equal(got.Secret, first.Secret) {
		t.Fatalf("key %s referenced by a snapshot lost after %d keyring versions: %v", first.Name, kr.Version, w.Err(err))
	}
	for _, k := range mustKeyring(t, w, s).Keys {
		if _, err := s.Key(ctx, k.Name); err != nil {
			t.Errorf("keyring key %s: %v", k.Name, w.Err(err))
		}
	}
	for _, name := range destroyed {
		_, err := s.Key(ctx, name)
		wantErr(t, w, err, ErrNotFound)
	}
	// Once the snapshot is pruned the key can go.
	if err := s.ReleaseSnapshotRef(ctx, "etcd-snap-1"); err != nil {
		t.Fatal(w.Err(err))
	}
	if err := s.DestroyKey(ctx, first.Name); err != nil {
		t.Fatal(w.Err(err))
	}
	_, err = s.Key(ctx, first.Name)
	wantErr(t, w, err, ErrNotFound)
	if refs, err := s.readRefsDestroying(ctx); err != nil || len(refs) != 0 {
		t.Errorf("destruction markers left: %v %v", refs, err)
	}
}

func (s *Store) readRefsDestroying(ctx context.Context) ([]string, error) {
	r, _, err := s.readRefs(ctx, "test")
	if err != nil {
		return nil, err
	}
	var out []string
	for name := range r.Destroying {
		out = append(out, name)
	}
	return out, nil
}

// A DestroyKey that stopped after announcing the destruction: the key can
// no longer gain references, and the next DestroyKey finishes.
func TestDestroyResumes(t *testing.T) {
	w := leaktest.New(t)
	ctx := testCtx(t)
	s := openStore(t, baseConfig(t, w))
	k := mustNewKey(t, w, s, cluster.AESCBC)
	if err := s.updateRefs(ctx, "test", func(r *refsDoc) (bool, error) {
		r.Destroying = map[string]time.Time{k.Name: time.Now()}
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, w, s.AddSnapshotRef(ctx, "etcd-snap-9", []string{k.Name}), ErrNotFound, "key "+k.Name+" is being destroyed")
	if err := s.DestroyKey(ctx, k.Name); err != nil {
		t.Fatal(w.Err(err))
	}
	_, err := s.Key(ctx, k.Name)
	wantErr(t, w, err, ErrNotFound)
	if left, _ := s.readRefsDestroying(ctx); len(left) != 0 {
		t.Errorf("markers left: %v", left)
	}
}

func adoptSecrets(t *testing.T, w *leaktest.Watch, data []byte) {
	for _, s := range secretsIn(string(data)) {
		raw, err := base64.URLEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		w.Key(cluster.Key{Secret: raw})
	}
}

func TestAdoptRKEState(t *testing.T) {
	w := leaktest.New(t)
	ctx := testCtx(t)
	s := openStore(t, baseConfig(t, w))
	data := readTestdata(t, "cluster-midrotation.rkestate")
	adoptSecrets(t, w, data)
	src := Source{Name: "testdata/cluster-midrotation.rkestate", Data: data}
	plan, err := planAdoption([]Source{src})
	if err != nil {
		t.Fatal(err)
	}

	// A crash of an earlier run left one key stored but unlisted.
	if err := s.PutKey(ctx, plan.keys[1]); err != nil {
		t.Fatal(w.Err(err))
	}
	a, err := s.Adopt(ctx, src)
	if err != nil {
		t.Fatal(w.Err(err))
	}
	report := a.String()
	w.Note(report)
	if a.AlreadyAdopted || a.KeyringVersion != 1 || len(a.Keys) != 2 || a.Keys[0].Name != "k-x4b9t" || a.Keys[0].Role != RolePrimary || a.Keys[1].Role != RoleReader {
		t.Fatalf("adoption: %+v", a)
	}
	for _, want := range []string{"Adopted 2 keys", "k-x4b9t", "k-7qd2m", a.Keys[0].Fingerprint, "jq 'del(.currentState.encryptionConfig, .desiredState.encryptionConfig)' testdata/cluster-midrotation.rkestate"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	kr := mustKeyring(t, w, s)
	if kr.Version != 1 || len(kr.Keys) != 2 || kr.Keys[0] != a.Keys[0] || kr.DeployedHash == "" || kr.DeployedHash != a.DeployedHash {
		t.Errorf("keyring: %+v", kr)
	}
	for _, k := range plan.keys {
		got, err := s.Key(ctx, k.Name)
		if err != nil || !bytes.Equal(got.Secret, k.Secret) || got.Provider != cluster.AESCBC {
			t.Errorf("adopted key %s: %v", k.Name, w.Err(err))
		}
	}

	// Again: nothing to do.
	again, err := s.Adopt(ctx, src)
	if err != nil || !again.AlreadyAdopted || again.KeyringVersion != 1 {
		t.Errorf("second adoption: %+v %v", again, w.Err(err))
	}
	// Another cluster's state into this keyring: refused, nothing written.
	steady := readTestdata(t, "cluster.rkestate")
	adoptSecrets(t, w, steady)
	_, err = s.Adopt(ctx, Source{Name: "cluster.rkestate", Data: steady})
	wantErr(t, w, err, ErrExists, "adopt keys "+s.path("data", "keyring"), "already holds keys k-x4b9t, k-7qd2m", "nothing was imported")
	_, err = s.Key(ctx, "k-fw5hn")
	wantErr(t, w, err, ErrNotFound)
	if now := mustKeyring(t, w, s); now.Version != 1 {
		t.Errorf("refused adoption wrote keyring version %d", now.Version)
	}
}

func TestAdoptConflictingKey(t *testing.T) {
	w := leaktest.New(t)
	ctx := testCtx(t)
	s := openStore(t, baseConfig(t, w))
	data := readTestdata(t, "cluster-midrotation.rkestate")
	adoptSecrets(t, w, data)
	// A different key already stored under one of the names.
	squatter := w.Key(cluster.Key{Name: "k-7qd2m", Provider: cluster.AESCBC, Secret: bytes.Repeat([]byte{1}, 32)})
	if err := s.PutKey(ctx, squatter); err != nil {
		t.Fatal(w.Err(err))
	}
	_, err := s.Adopt(ctx, Source{Name: "cluster.rkestate", Data: data})
	wantErr(t, w, err, ErrExists, "a different key named k-7qd2m", "nothing was imported")
	_, err = s.Key(ctx, "k-x4b9t")
	wantErr(t, w, err, ErrNotFound)
	if kr := mustKeyring(t, w, s); kr.Version != 0 {
		t.Errorf("keyring written: %+v", kr)
	}
}

// rkeStyleSecret makes a key as RKE does: 16 random bytes as 32 uppercase
// hex characters, base64-encoded.
func rkeStyleSecret(t *testing.T) string {
	k := mustKey(t, cluster.AESCBC)
	return base64.URLEncoding.EncodeToString([]byte(strings.ToUpper(hex.EncodeToString(k.Secret[:16]))))
}

// Adoption from the provider file on a controlplane node.
func TestAdoptProviderFile(t *testing.T) {
	w := leaktest.New(t)
	ctx := testCtx(t)
	s := openStore(t, baseConfig(t, w))
	file := filepath.Join(sb.Nodes[0].Dir, "etc-kubernetes", "ssl", "encryption.yaml")
	if _, err := os.Stat(file); err == nil {
		t.Fatalf("%s exists already", file)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}
	content := rkeProviderFile([2]string{"k-n3w00", rkeStyleSecret(t)}, [2]string{"k-0ld00", rkeStyleSecret(t)})
	adoptSecrets(t, w, []byte(content))
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(file) })

	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.Adopt(ctx, Source{Name: sb.Nodes[0].Name + ":/etc/kubernetes/ssl/encryption.yaml", Data: data})
	if err != nil {
		t.Fatal(w.Err(err))
	}
	w.Note(a.String())
	if len(a.Keys) != 2 || a.Keys[0].Name != "k-n3w00" || a.Keys[0].Role != RolePrimary || a.Keys[1].Name != "k-0ld00" || a.Keys[1].Role != RoleReader {
		t.Fatalf("adopted %+v", a.Keys)
	}
	cfg, err := cluster.ParseEncryptionConfig("encryption.yaml", "", data, "")
	if err != nil {
		t.Fatal(err)
	}
	if a.DeployedHash != ConfigHash(cfg.Render()) {
		t.Errorf("deployed hash %s", a.DeployedHash)
	}
	for _, want := range cfg.Keys() {
		got, err := s.Key(ctx, want.Name)
		if err != nil || !bytes.Equal(got.Secret, want.Secret) {
			t.Errorf("key %s: %v", want.Name, w.Err(err))
		}
	}
	if !strings.Contains(a.RKEStateRemoval, "jq 'del(.currentState.encryptionConfig, .desiredState.encryptionConfig)' cluster.rkestate") {
		t.Errorf("removal text:\n%s", a.RKEStateRemoval)
	}
}

// A KV version 1 mount would take "<mount>/data/..." writes as plain
// secrets without versions or check-and-set: Open refuses it.
func TestMountChecks(t *testing.T) {
	w := leaktest.New(t)
	write(t, root(t), "sys/mounts/kv1-"+clusterName(t), map[string]any{"type": "kv", "options": map[string]string{"version": "1"}})
	cfg := baseConfig(t, w)
	cfg.KVMount = "kv1-" + clusterName(t)
	_, err := Open(testCtx(t), cfg)
	wantErr(t, w, err, ErrInvalid, "check KV mount sys/internal/ui/mounts/"+cfg.KVMount, `is "kv" version "1", not kv version 2`)

	cfg.KVMount = "nothing-here"
	_, err = Open(testCtx(t), cfg)
	wantErr(t, w, err, ErrPermissionDenied, "check KV mount sys/internal/ui/mounts/nothing-here", `no secrets engine at "nothing-here"`)
}

// TestLockRenewalThatLanded: a renewal that timed out at atrest but was
// written by Vault (a Vault that froze, then answered) leaves the lock at
// a later version, still holding our acquisition. The next renewal must
// keep the lock, not take it for a contender's and give it up.
func TestLockRenewalThatLanded(t *testing.T) {
	w := leaktest.New(t)
	ctx := testCtx(t)
	s := openStore(t, baseConfig(t, w))
	const ttl = 30 * time.Second // renewals at 10 s: this test renews by hand
	l, err := s.AcquireLock(ctx, "frozen vault", ttl)
	if err != nil {
		t.Fatal(w.Err(err))
	}
	defer l.Release(ctx)
	l.mu.Lock()
	v := l.version
	l.mu.Unlock()
	// The write that landed unseen: our own document, one version on.
	if _, err := s.kvWrite(ctx, "renew lock", lockRel, v, l.doc(time.Now())); err != nil {
		t.Fatal(w.Err(err))
	}
	if err := l.renew(); err != nil {
		t.Fatalf("renewal after our own write landed: %v", w.Err(err))
	}
	// Another contender's document is still a conflict.
	l.mu.Lock()
	v = l.version
	l.mu.Unlock()
	other := l.doc(time.Now())
	other.ID = "someone-else"
	if _, err := s.kvWrite(ctx, "take over", lockRel, v, other); err != nil {
		t.Fatal(w.Err(err))
	}
	if err := l.renew(); !errors.Is(err, ErrConflict) {
		t.Fatalf("renewal after another contender's write: %v, want a conflict", err)
	}
}
