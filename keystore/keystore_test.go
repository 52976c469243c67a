package keystore

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/atrest-io/atrest/cluster"
)

func TestConfigDefaults(t *testing.T) {
	cfg, err := Config{Cluster: "c1", KVMount: "/kv/", Prefix: "/teams/x/atrest/"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AuthMethod != AuthToken || cfg.AppRoleMount != "approle" || cfg.KubernetesMount != "kubernetes" ||
		cfg.KubernetesTokenFile != DefaultKubernetesTokenFile || cfg.KVMount != "kv" || cfg.Prefix != "teams/x/atrest" || cfg.Logger == nil {
		t.Errorf("defaults: %+v", cfg)
	}
	s := &Store{Session: &Session{cfg: cfg}, base: cfg.Prefix + "/" + cfg.Cluster}
	if got := s.path("data", "keys/k-abcde"); got != "kv/data/teams/x/atrest/c1/keys/k-abcde" {
		t.Errorf("path: %s", got)
	}
}

func TestConfigInvalid(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want []string
	}{
		{"no cluster", Config{}, []string{"cluster: required"}},
		{"cluster with slash", Config{Cluster: "a/b"}, []string{`cluster: "a/b" must be`}},
		{"dotdot prefix", Config{Cluster: "c", Prefix: "a/../b"}, []string{`prefix: "a/../b" is not a Vault path`}},
		{"unknown method", Config{Cluster: "c", AuthMethod: "ldap"}, []string{`authMethod: "ldap" is not one of token, approle, kubernetes`}},
		{"approle incomplete", Config{Cluster: "c", AuthMethod: AuthAppRole}, []string{"approleRoleID: required", "approleSecretIDFile: required"}},
		{"kubernetes without role", Config{Cluster: "c", AuthMethod: AuthKubernetes}, []string{"kubernetesRole: required"}},
		{"cert without key", Config{Cluster: "c", ClientCertFile: "c.pem"}, []string{"clientCertFile and clientKeyFile: give both or neither"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.withDefaults()
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("want ErrInvalid, got %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestClassify(t *testing.T) {
	const addr = "https://127.0.0.1:8200"
	for _, tc := range []struct {
		name   string
		err    error
		is     error
		saying string
	}{
		{"sealed", &vault.ResponseError{StatusCode: 503, Errors: []string{"Vault is sealed"}}, ErrSealed, "Vault is sealed"},
		{"denied", &vault.ResponseError{StatusCode: 403, Errors: []string{"permission denied"}}, ErrPermissionDenied, "does not grant read on this path"},
		{"cas", &vault.ResponseError{StatusCode: 400, Errors: []string{"check-and-set parameter did not match the current version"}}, ErrConflict, "check-and-set conflict"},
		{"server error", &vault.ResponseError{StatusCode: 500, Errors: []string{"internal error"}}, ErrUnavailable, "HTTP 500: internal error"},
		{"refused", &url.Error{Op: "Get", URL: addr + "/v1/secret/data/x", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}}, ErrUnavailable, "Vault is unreachable at " + addr + ": dial tcp: connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := classify(tc.err, capRead, addr)
			if !errors.Is(got, tc.is) || !strings.Contains(got.Error(), tc.saying) {
				t.Errorf("classify = %q, want %v saying %q", got, tc.is, tc.saying)
			}
			if strings.Contains(got.Error(), "\n") {
				t.Errorf("multi-line: %q", got)
			}
		})
	}
	op := &OpError{Op: "read keyring", Path: "secret/data/atrest/c1/keyring", Err: classify(&vault.ResponseError{StatusCode: 503, Errors: []string{"Vault is sealed"}}, capRead, addr)}
	if !strings.HasPrefix(op.Error(), "read keyring secret/data/atrest/c1/keyring: Vault is sealed") {
		t.Errorf("OpError: %q", op)
	}
}

func mustKey(t *testing.T, p cluster.Provider) cluster.Key {
	t.Helper()
	k, err := cluster.NewKey(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestValidateKeyring(t *testing.T) {
	a, b := mustKey(t, cluster.AESCBC), mustKey(t, cluster.Secretbox)
	for _, tc := range []struct {
		name string
		kr   *Keyring
		want string // "" = valid
	}{
		{"empty", &Keyring{}, ""},
		{"rotation", &Keyring{Keys: []KeyInfo{InfoOf(a, RolePrimary), InfoOf(b, RoleReader)}, Journal: NewJournal("rotate", "abc123", "snap-1", "deploy", "rewrite")}, ""},
		{"two primaries", &Keyring{Keys: []KeyInfo{InfoOf(a, RolePrimary), InfoOf(b, RolePrimary)}}, "2 keys are primary"},
		{"duplicate", &Keyring{Keys: []KeyInfo{InfoOf(a, RolePrimary), InfoOf(a, RoleReader)}}, "listed twice"},
		{"bad role", &Keyring{Keys: []KeyInfo{InfoOf(a, "writer")}}, `role: "writer"`},
		{"kms", &Keyring{Keys: []KeyInfo{{Name: "k", Provider: "kms", Role: RoleReader, Fingerprint: "x"}}}, `provider: "kms"`},
		{"name with slash", &Keyring{Keys: []KeyInfo{{Name: "../k", Provider: cluster.AESCBC, Role: RoleReader, Fingerprint: "x"}}}, `name: "../k" must be`},
		{"no fingerprint", &Keyring{Keys: []KeyInfo{{Name: "k", Provider: cluster.AESCBC, Role: RoleReader}}}, "fingerprint: required"},
		{"journal step state", &Keyring{Journal: &Journal{ID: "1", Transition: "enable", Steps: []JournalStep{{Name: "x", State: "half"}}}}, `state: "half"`},
		{"journal without id", &Keyring{Journal: &Journal{Transition: "enable"}}, "journal: id and transition are required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateKeyring(tc.kr)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want ErrInvalid saying %q", err, tc.want)
			}
		})
	}
}

func TestKeyringDocument(t *testing.T) {
	k := mustKey(t, cluster.AESCBC)
	kr := &Keyring{Version: 7, Keys: []KeyInfo{InfoOf(k, RolePrimary)}, DesiredHash: ConfigHash([]byte("x")),
		LastRotation: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Journal: NewJournal("rotate", "rev", "snap", "a")}
	raw, err := json.Marshal(keyringDoc{Schema: keyringSchema, Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(base64.StdEncoding.EncodeToString(k.Secret))) || bytes.Contains(raw, []byte(`"Version"`)) {
		t.Fatalf("keyring document holds material or the version: %s", raw)
	}
	got := &Keyring{}
	if err := json.Unmarshal(raw, &keyringDoc{Keyring: got}); err != nil {
		t.Fatal(err)
	}
	if got.Keys[0] != kr.Keys[0] || got.DesiredHash != kr.DesiredHash || !got.LastRotation.Equal(kr.LastRotation) || got.Journal.ID != kr.Journal.ID || got.Version != 0 {
		t.Errorf("round trip: %+v", got)
	}
	if p, ok := got.Primary(); !ok || p.Name != k.Name {
		t.Errorf("Primary: %v %v", p, ok)
	}
}

func TestLockedError(t *testing.T) {
	err := error(&LockedError{Path: "secret/data/atrest/c1/lock", Holder: "atrest daemon pod-1", Expires: time.Now().Add(time.Minute)})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), `held by "atrest daemon pod-1" until`) {
		t.Errorf("%v", err)
	}
}

// secretsIn returns every "secret:" value in s: the key material of
// provider files and rkestate test data.
var secretRE = regexp.MustCompile(`secret: ([A-Za-z0-9+/=_-]{16,})`)

func secretsIn(s string) []string {
	var out []string
	for _, m := range secretRE.FindAllStringSubmatch(strings.ReplaceAll(s, `\n`, "\n"), -1) {
		out = append(out, m[1])
	}
	return out
}

// assertNoMaterial fails if text holds any of the secrets (base64 as in the
// files) or their decoded bytes.
func assertNoMaterial(t *testing.T, what, text string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("%s contains key material (base64)", what)
		}
		if raw, err := base64.StdEncoding.DecodeString(s); err == nil && len(raw) >= 16 && strings.Contains(text, string(raw)) {
			t.Errorf("%s contains key material (raw)", what)
		}
	}
}

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rkeProviderFile renders a provider file the way RKE's template does.
func rkeProviderFile(keys ...[2]string) string {
	s := "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n  - secrets\n  providers:\n  - aescbc:\n      keys:"
	for _, k := range keys {
		s += fmt.Sprintf("\n      - name: %s\n        secret: %s", k[0], k[1])
	}
	return s + "\n  - identity: {}"
}

func TestPlanAdoption(t *testing.T) {
	steady := readTestdata(t, "cluster.rkestate")
	mid := readTestdata(t, "cluster-midrotation.rkestate")
	const s1, s2 = "QUFBQUJCQkJDQ0NDREREREVFRUVGRkZGMDAwMDExMTE=", "MjIyMjMzMzM0NDQ0NTU1NTY2NjY3Nzc3ODg4ODk5OTk="
	node1 := rkeProviderFile([2]string{"k-aaaaa", s1}, [2]string{"k-bbbbb", s2})
	node2 := rkeProviderFile([2]string{"k-bbbbb", s2}, [2]string{"k-aaaaa", s1})
	disabling := strings.Replace(rkeProviderFile([2]string{"k-aaaaa", s1}), "  - aescbc:", "  - identity: {}\n  - aescbc:", 1)
	disabling = strings.TrimSuffix(disabling, "\n  - identity: {}")
	kmsAndKey := "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - kms:\n      apiVersion: v2\n      name: vault-kms\n      endpoint: unix:///run/kms.sock\n  - aescbc:\n      keys:\n      - name: k-aaaaa\n        secret: " + s1 + "\n  - identity: {}\n"
	kmsOnly := "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - kms:\n      apiVersion: v2\n      name: vault-kms\n      endpoint: unix:///run/kms.sock\n  - identity: {}\n"
	secrets := append(secretsIn(string(steady)), secretsIn(string(mid))...)
	secrets = append(secrets, s1, s2)

	type want struct {
		keys, primary string // comma-separated names, primary first
		deployed      bool
		skipped       string
		warning       string
		removal       string
	}
	for _, tc := range []struct {
		name    string
		sources []Source
		want    want
		err     string
	}{
		{"rkestate", []Source{{"/home/ops/prod/cluster.rkestate", steady}}, want{keys: "k-fw5hn", primary: "k-fw5hn", deployed: true,
			removal: "jq 'del(.currentState.encryptionConfig, .desiredState.encryptionConfig)' /home/ops/prod/cluster.rkestate > /home/ops/prod/cluster.rkestate.new"}, ""},
		{"rkestate mid-rotation", []Source{{"cluster.rkestate", mid}}, want{keys: "k-x4b9t,k-7qd2m", primary: "k-x4b9t", deployed: true,
			warning: "desiredState.encryptionConfig with k-7qd2m"}, ""},
		{"nodes agree on keys, not order", []Source{{"node1:/etc/kubernetes/ssl/encryption.yaml", []byte(node1)}, {"node2:/etc/kubernetes/ssl/encryption.yaml", []byte(node2)}},
			want{keys: "k-aaaaa,k-bbbbb", primary: "k-aaaaa", warning: "node2:/etc/kubernetes/ssl/encryption.yaml with k-bbbbb"}, ""},
		{"identity writes", []Source{{"node1", []byte(disabling)}}, want{keys: "k-aaaaa", deployed: true}, ""},
		{"kms skipped", []Source{{"node1", []byte(kmsAndKey)}}, want{keys: "k-aaaaa", deployed: true, skipped: "kms:v2:vault-kms in node1: its keys stay in the KMS plugin"}, ""},
		{"unusable key name", []Source{{"node1", []byte(rkeProviderFile([2]string{"key one", s1}))}}, want{}, `node1: key name "key one" must be letters, digits`},
		{"kms only", []Source{{"node1", []byte(kmsOnly)}}, want{}, "the sources hold no aescbc, aesgcm or secretbox key"},
		{"no sources", nil, want{}, "no source given"},
		{"empty", []Source{{"node1", []byte("  \n")}}, want{}, "node1 is empty"},
		{"not a config", []Source{{"notes.txt", []byte("hello: world\n")}}, want{}, "notes.txt is neither an RKE cluster.rkestate nor a valid EncryptionConfiguration"},
		{"rkestate without encryption", []Source{{"cluster.rkestate", []byte(`{"desiredState":{"rkeConfig":{}},"currentState":{"rkeConfig":{}}}`)}}, want{},
			"cluster.rkestate has no currentState.encryptionConfig or desiredState.encryptionConfig"},
		{"rkestate with a broken config", []Source{{"cluster.rkestate", []byte(`{"currentState":{"encryptionConfig":"apiVersion: v1\nkind: EncryptionConfig\n"}}`)}}, want{},
			"currentState.encryptionConfig is not a valid EncryptionConfiguration"},
		// A config atrest cannot model is refused at adoption as everywhere.
		{"wildcard", []Source{{"node1", []byte(strings.Replace(rkeProviderFile([2]string{"k-aaaaa", s1}), "  - secrets\n", "  - '*.*'\n", 1))}}, want{},
			`node1: resources[0].resources[0]: "*.*" is a wildcard, and atrest cannot census or rewrite a wildcard`},
		{"sources disagree on material", []Source{{"node1", []byte(node1)}, {"node2", []byte(rkeProviderFile([2]string{"k-aaaaa", s2}))}}, want{},
			"key k-aaaaa differs between node1"},
		{"same name, two providers", []Source{{"node1", []byte(node1)}, {"node2", []byte(strings.Replace(rkeProviderFile([2]string{"k-aaaaa", s1}), "aescbc", "secretbox", 1))}}, want{},
			"key name k-aaaaa is aescbc in node1 but secretbox in node2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan, err := planAdoption(tc.sources)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error saying %q", err, tc.err)
				}
				assertNoMaterial(t, "error", err.Error(), secrets)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, k := range plan.keys {
				names = append(names, k.Name)
				if len(k.Secret) != 32 {
					t.Errorf("key %s: %d bytes", k.Name, len(k.Secret))
				}
			}
			if got := strings.Join(names, ","); got != tc.want.keys || plan.primary != tc.want.primary {
				t.Errorf("keys %s primary %q, want %s primary %q", got, plan.primary, tc.want.keys, tc.want.primary)
			}
			if (plan.deployedHash != "") != tc.want.deployed {
				t.Errorf("deployed hash %q, want one: %v", plan.deployedHash, tc.want.deployed)
			}
			if got := strings.Join(plan.skipped, "\n"); got != tc.want.skipped {
				t.Errorf("skipped %q, want %q", got, tc.want.skipped)
			}
			if w := strings.Join(plan.warnings, "\n"); !strings.Contains(w, tc.want.warning) || (tc.want.warning == "") != (w == "") {
				t.Errorf("warnings %q, want %q", w, tc.want.warning)
			}
			removal := plan.removal()
			if !strings.Contains(removal, tc.want.removal) || !strings.Contains(removal, "run `atrest rke up`") {
				t.Errorf("removal text:\n%s\nwant %q", removal, tc.want.removal)
			}
			assertNoMaterial(t, "removal text", removal, secrets)
		})
	}
}

// RKE's keys are 32 hex characters in URL-safe base64; both the rkestate
// and the provider file must yield the same bytes.
func TestPlanAdoptionMatchesRKEMaterial(t *testing.T) {
	data := readTestdata(t, "cluster.rkestate")
	plan, err := planAdoption([]Source{{"cluster.rkestate", data}})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := base64.URLEncoding.DecodeString(secretsIn(string(data))[0])
	if !bytes.Equal(plan.keys[0].Secret, want) {
		t.Error("adopted material differs from the rkestate's")
	}
	if !regexp.MustCompile(`^[0-9A-F]{32}$`).Match(plan.keys[0].Secret) {
		t.Error("testdata key is not RKE-shaped (32 uppercase hex characters)")
	}
}

func TestAdoptionReport(t *testing.T) {
	data := readTestdata(t, "cluster-midrotation.rkestate")
	plan, err := planAdoption([]Source{{"cluster.rkestate", data}})
	if err != nil {
		t.Fatal(err)
	}
	a := &Adoption{Cluster: "prod-eu1", Path: "secret/atrest/prod-eu1", KeyringVersion: 1, Warnings: plan.warnings, RKEStateRemoval: plan.removal()}
	for i, k := range plan.keys {
		a.Keys = append(a.Keys, InfoOf(k, map[bool]Role{true: RolePrimary, false: RoleReader}[i == 0]))
	}
	out := a.String()
	for _, w := range []string{"Adopted 2 keys of cluster prod-eu1", "k-x4b9t", "primary", "k-7qd2m", "reader", plan.keys[0].Fingerprint(), "full-cluster-state", "Warning: "} {
		if !strings.Contains(out, w) {
			t.Errorf("report lacks %q:\n%s", w, out)
		}
	}
	assertNoMaterial(t, "report", out, secretsIn(string(data)))
}

// The printed jq command works on a real-shaped rkestate, removes every
// key, keeps the rest, and keeps the file private.
func TestRemovalCommandRuns(t *testing.T) {
	if _, err := exec.LookPath("jq"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("jq is not installed: make test installs it (sandbox/install-deps.sh)")
		}
		t.Skip("jq not installed (make test installs it)")
	}
	data := readTestdata(t, "cluster-midrotation.rkestate")
	dir := t.TempDir()
	file := filepath.Join(dir, "cluster.rkestate")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	plan, err := planAdoption([]Source{{file, data}})
	if err != nil {
		t.Fatal(err)
	}
	var cmd string
	for line := range strings.SplitSeq(plan.removal(), "\n") {
		if strings.Contains(line, "jq ") {
			cmd = strings.TrimSpace(line)
		}
	}
	if out, err := exec.Command("sh", "-c", cmd).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	after, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if secrets := secretsIn(string(after)); len(secrets) != 0 {
		t.Errorf("%d keys left in the rkestate", len(secrets))
	}
	var st map[string]map[string]json.RawMessage
	if err := json.Unmarshal(after, &st); err != nil || st["currentState"]["certificatesBundle"] == nil || st["desiredState"]["rkeConfig"] == nil {
		t.Errorf("rest of the state lost: %v", err)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode after the edit: %v %v", fi.Mode(), err)
	}
}
