//go:build sandbox

package examples

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/internal/leaktest"
	"github.com/atrest-io/atrest/keystore"
	"github.com/atrest-io/atrest/keystore/keystoretest"
	"github.com/atrest-io/atrest/sandbox"
	"github.com/atrest-io/atrest/sandbox/sandboxtest"
)

var sb *sandbox.Sandbox

func TestMain(m *testing.M) {
	os.Exit(sandboxtest.MainWithAtrest(m, &atrestBin, &sb, func(bin string) sandbox.Options {
		return sandbox.Options{Nodes: 1, KMSPlugin: bin}
	}))
}

// The release the Vault role is set up for, as the chart would run it.
const (
	releaseNamespace = "atrest-example"
	serviceAccount   = "atrest"
	policyName       = "atrest"
	roleName         = "atrest"
	// chartAudience is the chart's vault.kubernetes.audience default.
	chartAudience = "vault"
	// destroyPolicyName is vault-policy-destroy.hcl's, the operator's.
	destroyPolicyName = "atrest-destroy"
)

// TestVaultPolicy sets Vault up with the examples (vault-policy.hcl through
// vault-kubernetes-auth.sh), then proves the policy is enough: the real
// atrest binary, with a token holding only that policy, enables encryption
// on the sandbox, saves a snapshot and reports status, and a token from the
// Kubernetes-auth role does the same for status. Then it proves the policy
// is no more than that: the token's capabilities on atrest's documents are
// exactly the ones atrest uses, and it can reach nothing else.
func TestVaultPolicy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	example, err := cluster.Load("cluster.yml")
	if err != nil {
		t.Fatal(err)
	}
	name := example.ClusterName
	root := rootClient(t)
	kube := kubeClient(t)
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: releaseNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	t.Log("vault-kubernetes-auth.sh on the sandbox's Kubernetes auth mount, twice: it must be idempotent")
	for range 2 {
		runScript(t, ctx, "ATREST_NAMESPACE="+releaseNamespace, "ATREST_SERVICE_ACCOUNT="+serviceAccount)
	}
	t.Log("vault-kubernetes-auth.sh enabling and configuring a mount of its own (Vault outside the cluster)")
	reviewer, err := sb.ServiceAccountToken(ctx, "kube-system", "vault-token-reviewer", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	runScript(t, ctx, "ATREST_NAMESPACE="+releaseNamespace, "ATREST_SERVICE_ACCOUNT="+serviceAccount,
		"ATREST_VAULT_AUTH_MOUNT=kubernetes-example", "KUBERNETES_HOST="+sb.Nodes[0].APIServerURL,
		"KUBERNETES_CA_CERT_FILE="+sb.CAFile, "TOKEN_REVIEWER_JWT_FILE="+writeFile(t, "reviewer-jwt", reviewer))

	// The chart's pod logs in with a token projected for the audience
	// vault (the chart's and the script's default), as the kubelet
	// requests it; its API token is for kube-apiserver's own audiences.
	jwt, err := sb.ServiceAccountTokenFor(ctx, releaseNamespace, serviceAccount, time.Hour, chartAudience)
	if err != nil {
		t.Fatal(err)
	}
	apiToken, err := sb.ServiceAccountToken(ctx, releaseNamespace, serviceAccount, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, mount := range []string{"kubernetes", "kubernetes-example"} {
		auth, err := login(ctx, root, mount, jwt)
		if err != nil {
			t.Fatalf("log in at auth/%s with role %s as %s/%s with a token for audience %s: %v", mount, roleName, releaseNamespace, serviceAccount, chartAudience, err)
		}
		if !slices.Equal(auth.Policies, []string{policyName}) {
			t.Errorf("auth/%s: the role's token has policies %v, want only %q (not Vault's default)", mount, auth.Policies, policyName)
		}
		if _, err := login(ctx, root, mount, apiToken); err == nil {
			t.Errorf("auth/%s: the role accepts %s/%s's API token (kube-apiserver's audience): it must require audience %s", mount, releaseNamespace, serviceAccount, chartAudience)
		}
	}
	if data, err := root.Logical().ReadWithContext(ctx, "auth/kubernetes/role/"+roleName); err != nil || data == nil || data.Data["audience"] != chartAudience {
		t.Errorf("the role's audience: %v %v, want %s", data, err, chartAudience)
	}
	other, err := sb.ServiceAccountTokenFor(ctx, releaseNamespace, "not-atrest", time.Hour, chartAudience)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := login(ctx, root, "kubernetes", other); err == nil {
		t.Errorf("service account %s/not-atrest logged in with role %s: the role must be bound to %s only", releaseNamespace, roleName, serviceAccount)
	}

	restricted, err := root.Auth().Token().CreateWithContext(ctx, &vault.TokenCreateRequest{Policies: []string{policyName}, NoDefaultPolicy: true, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	token := restricted.Auth.ClientToken
	tokenFile := writeFile(t, "vault-token", token)
	config := sandboxCluster(t, name)
	// The sandbox's settings, for the example's cluster.
	env := []string{"ATREST_SETTINGS=" + sb.SettingsFile, "ATREST_CLUSTER_NAME=" + name, "ATREST_VAULT_TOKEN_FILE=" + tokenFile}
	leak := leaktest.New(t)

	t.Run("enough", func(t *testing.T) {
		code, out := atrest(t, env, "apply", "--config", config)
		leak.Note(out)
		if code != 0 {
			t.Fatalf("apply enabling encryption with only the example policy: exit %d:\n%s", code, out)
		}
		code, out = atrest(t, env, "snapshot", "save", "--config", config)
		leak.Note(out)
		if code != 0 {
			t.Fatalf("snapshot save with only the example policy: exit %d:\n%s", code, out)
		}
		code, out = atrest(t, env, "status", "--config", config)
		leak.Note(out)
		if code != 0 || !strings.Contains(out, "in sync") || !strings.Contains(out, ": aescbc, primary") {
			t.Fatalf("status with only the example policy: exit %d:\n%s", code, out)
		}
		k8sEnv := []string{"ATREST_SETTINGS=" + sb.SettingsFile, "ATREST_CLUSTER_NAME=" + name, "ATREST_VAULT_AUTH_METHOD=kubernetes",
			"ATREST_VAULT_KUBERNETES_ROLE=" + roleName, "ATREST_VAULT_KUBERNETES_TOKEN_FILE=" + writeFile(t, "sa-jwt", jwt)}
		code, out = atrest(t, k8sEnv, "status", "--config", config)
		leak.Note(out)
		if code != 0 || !strings.Contains(out, "in sync") {
			t.Fatalf("status logged in with the example Kubernetes-auth role: exit %d:\n%s", code, out)
		}
		// Every key atrest generated is forbidden in what it printed.
		keys, err := keystoretest.Keys(ctx, sb, name)
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) == 0 {
			t.Fatal("apply left no key in the keyring")
		}
		for _, k := range keys {
			leak.Key(k)
		}
	})

	t.Run("no more", func(t *testing.T) {
		base := "atrest/" + name
		// What atrest does with each document (see the policy's comments
		// and keystore/kv.go); Vault reports "deny" for no capability.
		docs := []string{"update", "read"}
		meta := []string{"create", "update"}
		metaDir := []string{"create", "update", "delete", "list"}
		metaKeys := []string{"create", "update", "list"} // key material is never deleted by the daemon
		deny := []string{"deny"}
		want := map[string][]string{
			"secret/data/" + base + "/keyring":              docs,
			"secret/data/" + base + "/lock":                 docs,
			"secret/data/" + base + "/snapshots":            docs,
			"secret/data/" + base + "/keys/k-abcde":         docs,
			"secret/data/" + base + "/daemons/atrest-0":     docs,
			"secret/metadata/" + base + "/keyring":          meta,
			"secret/metadata/" + base + "/lock":             meta,
			"secret/metadata/" + base + "/snapshots":        meta,
			"secret/data/" + base + "/revision":             docs,
			"secret/metadata/" + base + "/revision":         meta,
			"secret/metadata/" + base + "/keys/k-abcde":     metaKeys,
			"secret/metadata/" + base + "/keys/":            metaKeys,
			"secret/metadata/" + base + "/daemons/atrest-0": metaDir,
			"secret/metadata/" + base + "/daemons/":         metaDir,
			"auth/token/lookup-self":                        {"read"},
			"auth/token/renew-self":                         {"update"},
			"secret/data/atrest/other-cluster/keyring":      deny,
			"secret/data/atrest/other-cluster/keys/k-abcde": deny,
			"secret/metadata/atrest/":                       deny,
			"secret/metadata/" + base + "/":                 deny,
			"secret/data/" + base + "/anything-else":        deny,
			"secret/data/" + base + "/keys/k-abcde/nested":  docs, // the glob's own reach, within this cluster's keys
			"secret/delete/" + base + "/keys/k-abcde":       deny,
			"secret/destroy/" + base + "/keys/k-abcde":      deny,
			"secret/undelete/" + base + "/keyring":          deny,
			"secret/config":                                 deny,
			"secret/data/other":                             deny,
			"sys/mounts":                                    deny,
			"sys/policies/acl/" + policyName:                deny,
			"sys/auth/kubernetes":                           deny,
			"auth/kubernetes/role/" + roleName:              deny,
			"auth/token/create":                             deny,
			"auth/token/lookup":                             deny,
		}
		for _, p := range slices.Sorted(maps.Keys(want)) {
			got, err := root.Sys().CapabilitiesWithContext(ctx, token, p)
			if err != nil {
				t.Fatalf("capabilities of the token on %s: %v", p, err)
			}
			slices.Sort(got)
			w := slices.Sorted(slices.Values(want[p]))
			if !slices.Equal(got, w) {
				t.Errorf("%s: the example policy grants %v, want %v", p, got, w)
			}
		}

		// And the real requests are refused, not just reported so.
		c, err := root.Clone()
		if err != nil {
			t.Fatal(err)
		}
		c.SetToken(token)
		refused := []struct {
			what string
			do   func(context.Context) error
		}{
			{"read another cluster's keyring", func(ctx context.Context) error {
				_, err := c.Logical().ReadWithContext(ctx, "secret/data/atrest/other-cluster/keyring")
				return err
			}},
			{"list the clusters under the prefix", func(ctx context.Context) error {
				_, err := c.Logical().ListWithContext(ctx, "secret/metadata/atrest/")
				return err
			}},
			{"soft-delete the keyring", func(ctx context.Context) error {
				_, err := c.Logical().DeleteWithContext(ctx, "secret/data/"+base+"/keyring")
				return err
			}},
			{"destroy the keyring's metadata", func(ctx context.Context) error {
				_, err := c.Logical().DeleteWithContext(ctx, "secret/metadata/"+base+"/keyring")
				return err
			}},
			{"destroy a key's material, every version", func(ctx context.Context) error {
				_, err := c.Logical().DeleteWithContext(ctx, "secret/metadata/"+base+"/keys/"+someKey(t, ctx, name))
				return err
			}},
			{"destroy a key's versions", func(ctx context.Context) error {
				_, err := c.Logical().WriteWithContext(ctx, "secret/destroy/"+base+"/keys/"+someKey(t, ctx, name), map[string]any{"versions": []int{1}})
				return err
			}},
			{"read the mounts", func(ctx context.Context) error {
				_, err := c.Logical().ReadWithContext(ctx, "sys/mounts")
				return err
			}},
			{"create a token", func(ctx context.Context) error {
				_, err := c.Auth().Token().CreateWithContext(ctx, &vault.TokenCreateRequest{Policies: []string{policyName}})
				return err
			}},
		}
		for _, r := range refused {
			err := r.do(ctx)
			var re *vault.ResponseError
			if !errors.As(err, &re) || re.StatusCode != http.StatusForbidden {
				t.Errorf("%s with the example policy: %v, want 403 permission denied", r.what, err)
			}
		}
		if keys, err := keystoretest.Keys(ctx, sb, name); err != nil || len(keys) == 0 {
			t.Errorf("the keys after the refused requests: %d, %v", len(keys), err)
		}
	})

	t.Run("destroy-retired", func(t *testing.T) {
		testDestroyRetired(t, ctx, root, leak, name, config, env)
	})

	t.Run("vault-transit", func(t *testing.T) {
		testTransitPolicy(t, ctx, root, leak, name, config, env, token)
	})
}

// testTransitPolicy proves the examples' vault-transit policies enough and
// no more: the plugins' AppRole role made as vault-policy-kms-plugin.hcl
// says, atrest with only vault-policy.hcl's token switches the cluster to
// provider vault-transit (Transit key, a secret id per node, the plugin on
// the node, rewrite), and then neither token reaches more than it lists.
func testTransitPolicy(t *testing.T, ctx context.Context, root *vault.Client, leak *leaktest.Watch, name, config string, env []string, token string) {
	pluginPolicy, err := os.ReadFile("vault-policy-kms-plugin.hcl")
	if err != nil {
		t.Fatal(err)
	}
	role := "atrest-kms-" + name
	transitKey := "atrest-" + name
	if err := root.Sys().PutPolicyWithContext(ctx, role, string(pluginPolicy)); err != nil {
		t.Fatal(err)
	}
	// As the policy file's comment says to make it.
	if _, err := root.Logical().WriteWithContext(ctx, "auth/approle/role/"+role, map[string]any{
		"token_policies": role, "token_ttl": "1h", "token_max_ttl": "24h", "secret_id_ttl": "0", "secret_id_num_uses": 0,
	}); err != nil {
		t.Fatal(err)
	}
	policy := writeFile(t, "atrest.yaml", "provider: vault-transit\n")
	code, out := atrest(t, env, "apply", "--config", config, "--policy", policy)
	leak.Note(out)
	if code != 0 || !strings.Contains(out, "create the Transit key") || !strings.Contains(out, "start the KMS plugin") {
		t.Fatalf("apply switching to vault-transit with only the example policy: exit %d:\n%s", code, out)
	}
	code, out = atrest(t, env, "snapshot", "save", "--config", config, "--policy", policy)
	leak.Note(out)
	if code != 0 {
		t.Fatalf("snapshot save under vault-transit with only the example policy: exit %d:\n%s", code, out)
	}
	snap := ""
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(line, "saved "); ok {
			snap, _, _ = strings.Cut(rest, ":")
		}
	}
	code, out = atrest(t, env, "snapshot", "verify", "--decrypt", snap, "--config", config, "--policy", policy)
	leak.Note(out)
	if code != 0 || !strings.Contains(out, "Restorable") {
		t.Errorf("the drill of a vault-transit snapshot with only the example policy: exit %d:\n%s", code, out)
	}

	plugin, err := root.Auth().Token().CreateWithContext(ctx, &vault.TokenCreateRequest{Policies: []string{role}, NoDefaultPolicy: true, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	rw := []string{"create", "read", "update"}
	upd := []string{"update"}
	deny := []string{"deny"}
	for _, c := range []struct {
		token string
		who   string
		want  map[string][]string
	}{
		{token, "vault-policy.hcl", map[string][]string{
			"transit/keys/" + transitKey: rw, "transit/keys/" + transitKey + "/rotate": upd, "transit/keys/" + transitKey + "/config": upd,
			"transit/encrypt/" + transitKey: upd, "transit/decrypt/" + transitKey: upd,
			"transit/keys/" + transitKey + "/trim": deny, "transit/export/encryption-key/" + transitKey: deny, "transit/keys/atrest-other": deny,
			"auth/approle/role/" + role + "/role-id": {"read"}, "auth/approle/role/" + role + "/secret-id": upd,
			"auth/approle/role/" + role + "/secret-id-accessor/destroy": upd,
			"auth/approle/role/" + role:                                 deny, "auth/approle/role/atrest-kms-other/secret-id": deny, "sys/policies/acl/" + role: deny,
		}},
		{plugin.Auth.ClientToken, "vault-policy-kms-plugin.hcl", map[string][]string{
			"transit/encrypt/" + transitKey: upd, "transit/decrypt/" + transitKey: upd,
			"transit/keys/" + transitKey: deny, "transit/keys/" + transitKey + "/rotate": deny, "transit/encrypt/atrest-other": deny,
			"secret/data/atrest/" + name + "/keyring": deny, "auth/approle/role/" + role + "/secret-id": deny,
		}},
	} {
		for _, p := range slices.Sorted(maps.Keys(c.want)) {
			got, err := root.Sys().CapabilitiesWithContext(ctx, c.token, p)
			if err != nil {
				t.Fatalf("capabilities on %s: %v", p, err)
			}
			slices.Sort(got)
			if w := slices.Sorted(slices.Values(c.want[p])); !slices.Equal(got, w) {
				t.Errorf("%s: %s grants %v, want %v", p, c.who, got, w)
			}
		}
	}
}

// TestVaultPolicy's last part, in its own function for reading:
// destroy-retired with the real binary. The daemon's policy cannot destroy
// a retired key; the operator's vault-policy-destroy.hcl can, and is no
// more than that.
func testDestroyRetired(t *testing.T, ctx context.Context, root *vault.Client, leak *leaktest.Watch, name, config string, daemonEnv []string) {
	policy, err := os.ReadFile("vault-policy-destroy.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if err := root.Sys().PutPolicyWithContext(ctx, destroyPolicyName, string(policy)); err != nil {
		t.Fatal(err)
	}
	op, err := root.Auth().Token().CreateWithContext(ctx, &vault.TokenCreateRequest{Policies: []string{destroyPolicyName}, NoDefaultPolicy: true, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	opEnv := []string{"ATREST_SETTINGS=" + sb.SettingsFile, "ATREST_CLUSTER_NAME=" + name, "ATREST_VAULT_TOKEN_FILE=" + writeFile(t, "operator-token", op.Auth.ClientToken)}

	// A retired key no snapshot needs, beside the deployed primary (which
	// the snapshots saved above need).
	ks, err := keystore.Open(ctx, keystore.Config{Address: sb.Vault.Address, CAFile: sb.Vault.CAFile, AuthMethod: keystore.AuthToken, InsecureAllowHTTP: sb.Vault.PlainHTTP(),
		TokenFile: sb.Vault.TokenFile, KVMount: "secret", Prefix: "atrest", Cluster: name})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	before, err := keystoretest.Keys(ctx, sb, name)
	if err != nil || len(before) == 0 {
		t.Fatalf("the deployed keys: %v %v", before, err)
	}
	k, err := ks.NewKey(ctx, cluster.AESCBC)
	if err != nil {
		t.Fatal(err)
	}
	leak.Key(k)
	kr, err := ks.Keyring(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kr.Keys = append(kr.Keys, keystore.InfoOf(k, keystore.RoleRetired))
	if err := ks.UpdateKeyring(ctx, kr); err != nil {
		t.Fatal(err)
	}

	code, out := atrest(t, daemonEnv, "keys", "destroy-retired", "--config", config)
	leak.Note(out)
	if code != 2 || !strings.Contains(out, "permission denied") {
		t.Errorf("destroy-retired with the daemon's policy: exit %d, want 2 and permission denied:\n%s", code, out)
	}
	if _, err := ks.Key(ctx, k.Name); err != nil {
		t.Fatalf("the daemon's policy destroyed %s: %v", k.Name, err)
	}
	if refs, err := root.Logical().ReadWithContext(ctx, "secret/data/atrest/"+name+"/snapshots"); err != nil || refs == nil {
		t.Errorf("the snapshot references: %v %v", refs, err)
	} else if data, _ := refs.Data["data"].(map[string]any); data["destroying"] != nil {
		t.Errorf("the refused destruction left its announcement: %v", data["destroying"])
	}

	code, out = atrest(t, opEnv, "keys", "destroy-retired", "--dry-run", "--config", config)
	leak.Note(out)
	if code != 0 || !strings.Contains(out, k.Name+" (aescbc "+k.Fingerprint()) || !strings.Contains(out, ": would destroy") || !strings.Contains(out, "dry run: nothing was changed") {
		t.Errorf("destroy-retired --dry-run with the destroy policy: exit %d:\n%s", code, out)
	}
	code, out = atrest(t, opEnv, "keys", "destroy-retired", "-o", "json", "--config", config)
	leak.Note(out)
	var report struct {
		Cluster string
		Keys    []keystore.RetiredKey
	}
	if code != 0 {
		t.Fatalf("destroy-retired with the destroy policy: exit %d:\n%s", code, out)
	}
	start := strings.Index(out, "{\n  \"cluster\"") // the report, after any log line
	if start < 0 {
		t.Fatalf("destroy-retired -o json printed no report:\n%s", out)
	}
	if err := json.NewDecoder(strings.NewReader(out[start:])).Decode(&report); err != nil {
		t.Fatalf("destroy-retired -o json: %v\n%s", err, out)
	}
	if report.Cluster != name || len(report.Keys) != 1 || report.Keys[0].Name != k.Name || report.Keys[0].Action != keystore.RetiredDestroyed {
		t.Errorf("destroy-retired reports %+v, want %s destroyed", report, k.Name)
	}
	if _, err := ks.Key(ctx, k.Name); !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("key %s after destroy-retired: %v, want it gone", k.Name, err)
	}
	if sec, err := root.Logical().ReadWithContext(ctx, "secret/metadata/atrest/"+name+"/keys/"+k.Name); err != nil || sec != nil {
		t.Errorf("the metadata of %s after destroy-retired: %v %v, want none (every version destroyed)", k.Name, sec, err)
	}
	after, err := keystoretest.Keys(ctx, sb, name)
	if err != nil || len(after) != len(before) {
		t.Fatalf("the deployed keys after destroy-retired: %d keys, %v; want the %d before", len(after), err, len(before))
	}
	for i := range before {
		if after[i].Fingerprint() != before[i].Fingerprint() {
			t.Errorf("deployed key %s changed", before[i].Name)
		}
	}

	base := "atrest/" + name
	deny := []string{"deny"}
	want := map[string][]string{
		"secret/data/" + base + "/keyring":            {"read", "update"},
		"secret/data/" + base + "/lock":               {"read", "update"},
		"secret/metadata/" + base + "/lock":           {"create", "update"},
		"secret/data/" + base + "/snapshots":          {"read", "update"},
		"secret/metadata/" + base + "/snapshots":      {"create", "update"},
		"secret/metadata/" + base + "/keys/k-abcde":   {"delete"},
		"secret/data/" + base + "/keys/k-abcde":       deny, // no key material is read
		"secret/metadata/" + base + "/keys/":          {"delete"},
		"secret/metadata/" + base + "/keyring":        deny,
		"secret/data/" + base + "/daemons/atrest-0":   deny,
		"secret/data/" + base + "/preserved/k/fp":     deny,
		"secret/metadata/atrest/other-cluster/keys/k": deny,
		"secret/destroy/" + base + "/keys/k-abcde":    deny,
		"auth/token/lookup-self":                      {"read"},
		"auth/token/renew-self":                       {"update"},
		"sys/policies/acl/" + destroyPolicyName:       deny,
		"auth/token/create":                           deny,
	}
	for _, p := range slices.Sorted(maps.Keys(want)) {
		got, err := root.Sys().CapabilitiesWithContext(ctx, op.Auth.ClientToken, p)
		if err != nil {
			t.Fatalf("capabilities of the operator's token on %s: %v", p, err)
		}
		slices.Sort(got)
		if w := slices.Sorted(slices.Values(want[p])); !slices.Equal(got, w) {
			t.Errorf("%s: vault-policy-destroy.hcl grants %v, want %v", p, got, w)
		}
	}
}

// someKey is the name of a key of the cluster's keyring (atrest's apply
// made it), or a name no key has.
func someKey(t *testing.T, ctx context.Context, name string) string {
	keys, err := keystoretest.Keys(ctx, sb, name)
	if err != nil || len(keys) == 0 {
		t.Logf("no key in the keyring of %s (%v): using a made-up name", name, err)
		return "k-abcde"
	}
	return keys[0].Name
}

// runScript runs vault-kubernetes-auth.sh with the vault CLI as the
// sandbox Vault's root.
func runScript(t *testing.T, ctx context.Context, env ...string) {
	t.Helper()
	root, err := os.ReadFile(sb.Vault.TokenFile)
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := os.Symlink(vaultBinary(t), filepath.Join(bin, "vault")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "./vault-kubernetes-auth.sh")
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "HOME="+t.TempDir(),
		"VAULT_ADDR="+sb.Vault.Address, "VAULT_TOKEN="+strings.TrimSpace(string(root)), "VAULT_CACERT="+sb.Vault.CAFile)
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("vault-kubernetes-auth.sh %v: %v\n%s", env, err, out)
	}
}

// vaultBinary is the vault CLI: the same binary as the sandbox's server.
func vaultBinary(t *testing.T) string {
	if v := os.Getenv("ATREST_VAULT"); v != "" {
		return v
	}
	out, err := exec.Command("../tools/build.sh", "vault").Output()
	if err != nil {
		t.Fatalf("no vault CLI: set ATREST_VAULT or build it with tools/build.sh vault: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// login logs in with a service-account token at auth/<mount>, as atrest
// would, and returns the login's auth data.
func login(ctx context.Context, root *vault.Client, mount, jwt string) (*vault.SecretAuth, error) {
	c, err := root.Clone()
	if err != nil {
		return nil, err
	}
	c.ClearToken()
	sec, err := c.Logical().WriteWithContext(ctx, "auth/"+mount+"/login", map[string]any{"role": roleName, "jwt": jwt})
	if err != nil {
		return nil, err
	}
	if sec == nil || sec.Auth == nil {
		return nil, errors.New("no auth data in the login answer")
	}
	return sec.Auth, nil
}

func rootClient(t *testing.T) *vault.Client {
	t.Helper()
	c, err := sb.VaultClient()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func kubeClient(t *testing.T) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", sb.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Timeout = 30 * time.Second
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

// sandboxCluster is the sandbox's cluster.yml with the example's
// cluster_name (the policy is written for it) and encryption enabled.
func sandboxCluster(t *testing.T, name string) string {
	t.Helper()
	base, err := os.ReadFile(sb.ClusterYML)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(base), "cluster_name: atrest-sandbox\n", "cluster_name: "+name+"\n", 1)
	s = strings.Replace(s, "    secrets_encryption_config:\n      enabled: false\n", "    secrets_encryption_config:\n      enabled: true\n", 1)
	if !strings.Contains(s, "cluster_name: "+name+"\n") || !strings.Contains(s, "      enabled: true\n") {
		t.Fatalf("the sandbox's cluster.yml changed shape; cannot name it %s and enable encryption:\n%s", name, base)
	}
	return writeFile(t, "cluster.yml", s)
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
