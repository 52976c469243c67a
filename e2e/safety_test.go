//go:build sandbox

package e2e

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/sandbox"
)

// The tests of this file remove assumptions atrest made without checking
// them: that a key name is a key (TestKeyIsItsMaterial), that the file on
// a node is what its kube-apiserver runs (TestUnloadedProviderFile), and
// that kube-apiserver stores under /registry (TestEtcdPrefix).

// Material of the custom config's key k-fw5hn, and other material under
// the same name.
const (
	fw5hnSecret = "RTczRjFDODMwQzAyMDVBREU4NDJBMUZFNDhCNzM5N0I="
	otherSecret = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
)

func providerFile(i int) string {
	return filepath.Join(sb.Nodes[i].Dir, "etc-kubernetes", "ssl", "encryption.yaml")
}

func readNodeFile(t *testing.T, i int) []byte {
	t.Helper()
	data, err := os.ReadFile(providerFile(i))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// writeNodeFile changes node i's provider file behind atrest's back, as a
// hand edit or a crash between write and restart would leave it: the
// kube-apiserver keeps running what it loaded.
func writeNodeFile(t *testing.T, i int, data []byte) {
	t.Helper()
	if err := os.WriteFile(providerFile(i), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func startedAt(t *testing.T, i int) string {
	t.Helper()
	out, err := sb.Docker(context.Background(), i, "inspect", "-f", "{{.State.StartedAt}}", "kube-apiserver")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func noMaterial(t *testing.T, out string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Fatal("the output shows key material")
		}
	}
}

// setUp brings the cluster to config (without traffic: the other tests
// prove the transitions; these start from their end), stored as want.
func setUp(t *testing.T, want, config string) {
	t.Helper()
	if code, out := run(t, "apply", "--config", config); code != 0 {
		t.Fatalf("set up %s: exit %d:\n%s", config, code, out)
	}
	checkStored(t, want)
}

// TestKeyIsItsMaterial: the same key name with other material, inside one
// config, from Git and from a node, is refused before anything changes,
// naming the key and the two sources; material found on a node is kept
// in Vault; and once the node's file is put back, atrest converges.
func TestKeyIsItsMaterial(t *testing.T) {
	createSecrets(t, clients(t)[0]) // when run alone; a no-op after the others
	custom := clusterFile(t, "custom.yml", customBlock)

	// Inside one config: validate refuses it.
	twoLists := clusterFile(t, "two-lists.yml", strings.Replace(customBlock, "              - identity: {}\n", `              - identity: {}
          - resources: [configmaps]
            providers:
              - aescbc:
                  keys:
                    - name: k-fw5hn
                      secret: `+otherSecret+`
`, 1))
	code, out := runArgs(t, "validate", "--config", twoLists)
	if code != 2 || !strings.Contains(out, `custom_config.resources[1].providers[0].aescbc.keys[0].name: key "k-fw5hn" has other material here than at resources[0].providers[0].aescbc.keys[0].name`) {
		t.Fatalf("validate of one name with two materials: exit %d:\n%s", code, out)
	}
	noMaterial(t, out, fw5hnSecret, otherSecret)

	setUp(t, "aescbc:v1:k-fw5hn", custom)

	// From Git: the classic hand rotation, a new secret under the old name.
	rotatedByHand := clusterFile(t, "rotated-by-hand.yml", strings.Replace(customBlock, fw5hnSecret, otherSecret, 1))
	before := nodeFiles(t)
	for _, cmd := range []string{"plan", "apply"} {
		code, out = run(t, cmd, "--config", rotatedByHand)
		if code != 2 || !strings.Contains(out, "key k-fw5hn: cluster.yml's custom_config holds other material") ||
			!strings.Contains(out, "than Vault") || !strings.Contains(out, "Give the new key a new name") {
			t.Fatalf("%s with a reused key name: exit %d:\n%s", cmd, code, out)
		}
		noMaterial(t, out, fw5hnSecret, otherSecret)
	}
	if nodeFiles(t) != before {
		t.Fatal("a refused cluster.yml changed a node's provider file")
	}

	// From a node: someone puts other material under k-fw5hn on node 3.
	original := readNodeFile(t, 2)
	writeNodeFile(t, 2, []byte(strings.Replace(string(original), fw5hnSecret, otherSecret, 1)))
	edited := nodeFiles(t)
	code, out = run(t, "apply", "--config", custom)
	if code != 2 || !strings.Contains(out, "key k-fw5hn: node "+sb.Nodes[2].Name+"'s provider file holds other material") || !strings.Contains(out, "kept in Vault") {
		t.Fatalf("apply with other material on a node: exit %d:\n%s", code, out)
	}
	noMaterial(t, out, fw5hnSecret, otherSecret)
	if nodeFiles(t) != edited {
		t.Fatal("atrest overwrote the node's material, which may be the only copy of what etcd holds")
	}
	other := cluster.Key{Name: "k-fw5hn", Provider: cluster.AESCBC, Secret: mustBase64(t, otherSecret)}
	preserved := readVault(t, "atrest/"+clusterNameOf(t)+"/preserved/k-fw5hn/"+strings.TrimPrefix(other.Fingerprint(), "sha256:"))
	if preserved["secret"] != otherSecret || preserved["fingerprint"] != other.Fingerprint() {
		t.Fatalf("the node's material is not preserved in Vault: %v", redactedKeys(preserved))
	}

	// The operator puts the file back. On the restart path it is newer
	// than the apiserver, so atrest restarts that node on it (it is safe:
	// every node reads what it writes with); with automatic reload the
	// node loads it by itself, and its metrics prove it. Either way all is
	// as Git says.
	// With automatic reload the node may load the file between atrest's
	// observation and its next step: the plan then ends after its
	// snapshot, which is as right as a reload atrest proves itself.
	writeNodeFile(t, 2, original)
	code, out = run(t, "apply", "--config", custom)
	if code != 0 {
		t.Fatalf("apply after the file was put back: exit %d:\n%s", code, out)
	}
	for _, n := range sb.Nodes[:2] {
		if strings.Contains(out, "restart kube-apiserver on "+n.Name) {
			t.Fatalf("apply after node %s's file was put back restarted %s:\n%s", sb.Nodes[2].Name, n.Name, out)
		}
	}
	checkStored(t, "aescbc:v1:k-fw5hn")
	checkReadable(t)
	if code, out := run(t, "plan", "--config", custom); code != 0 {
		t.Fatalf("plan after convergence: exit %d:\n%s", code, out)
	}
}

// TestUnloadedProviderFile: a node whose provider file changed after its
// kube-apiserver started runs something unknown. atrest restarts it on its
// file first when every other node reads what that file writes with, and
// refuses, changing nothing, when not.
func TestUnloadedProviderFile(t *testing.T) {
	createSecrets(t, clients(t)[0])
	custom := clusterFile(t, "custom.yml", customBlock)
	setUp(t, "aescbc:v1:k-fw5hn", custom)
	// A file written behind atrest's back stays unloaded only on the
	// restart path: with automatic reload kube-apiserver loads it by
	// itself. The nodes run as RKE sets them up, and atrest keeps them so.
	for i := range sb.Nodes {
		if err := sb.RecreateAPIServer(context.Background(), i, sandbox.ProviderConfigFlag); err != nil {
			t.Fatal(err)
		}
	}
	run := func(t *testing.T, args ...string) (int, string) { return runEnv(t, restartOnly, args...) }

	// A key only node 2 has, as a writer: restarting node 2 on that file
	// would write secrets the others cannot read.
	extra := cluster.Key{Name: "k-e2e01", Provider: cluster.AESCBC, Secret: []byte("0123456789abcdef0123456789abcdef")}
	fw5hn := cluster.Key{Name: "k-fw5hn", Provider: cluster.AESCBC, Secret: mustBase64(t, fw5hnSecret)}
	keys := map[string]cluster.Key{extra.Name: extra, fw5hn.Name: fw5hn}
	render := func(order ...cluster.Key) []byte {
		chain := cluster.Chain{}
		for _, k := range order {
			chain = append(chain, cluster.EntryOf(k))
		}
		data, err := cluster.RenderChains(cluster.Chains{"secrets": append(chain, cluster.Identity)}, func(n string) (cluster.Key, error) { return keys[n], nil })
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	original := readNodeFile(t, 1)
	started := startedAt(t, 1)
	writeNodeFile(t, 1, render(extra, fw5hn))
	code, out := run(t, "apply", "--config", custom)
	if code != 2 || !strings.Contains(out, "node "+sb.Nodes[1].Name+": its provider file was written after its kube-apiserver started") ||
		!strings.Contains(out, "aescbc:v1:k-e2e01, which node") {
		t.Fatalf("apply with an unsafe unloaded file: exit %d:\n%s", code, out)
	}
	if startedAt(t, 1) != started {
		t.Fatal("atrest restarted a node on a file the others cannot read")
	}

	// A crash between writing a readers-first stage and the restart: the
	// file adds a reader. The next apply restarts node 2 on it before
	// anything else, then converges to Git's config.
	writeNodeFile(t, 1, render(fw5hn, extra))
	code, out = run(t, "plan", "--config", custom)
	if code != 1 || !strings.Contains(out, "restart kube-apiserver on "+sb.Nodes[1].Name+" so that it loads its provider file") {
		t.Fatalf("plan with an unloaded readers-only file: exit %d:\n%s", code, out)
	}
	tr := startTraffic(t)
	code, out = run(t, "apply", "--config", custom)
	tr.finish(t, "reload")
	if code != 0 || !strings.Contains(out, "restart kube-apiserver on "+sb.Nodes[1].Name) {
		t.Fatalf("apply with an unloaded readers-only file: exit %d:\n%s", code, out)
	}
	if startedAt(t, 1) == started {
		t.Fatal("node 2 was not restarted on its file")
	}
	if string(readNodeFile(t, 1)) != string(original) {
		t.Fatal("node 2 did not converge to cluster.yml's config")
	}
	checkStored(t, "aescbc:v1:k-fw5hn")
	checkReadable(t)
}

// TestEtcdPrefix runs an enable and a rotation on apiservers that store
// under a non-default --etcd-prefix: the census, the verify and the drop
// of the old key count there, not under /registry. (A disable drops its
// last key by the same census and verify; TestTransitions runs it.)
func TestEtcdPrefix(t *testing.T) {
	ctx := context.Background()
	// The nodes keep the config they run, under a prefix that starts
	// empty; the data under /registry, and the config that reads it, are
	// put back at the end.
	saved := make([][]byte, len(sb.Nodes))
	for i := range sb.Nodes {
		data, err := os.ReadFile(providerFile(i))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		saved[i] = data
	}
	recreate := func(extra ...string) {
		for i := range sb.Nodes {
			args := extra
			if saved[i] != nil {
				args = append([]string{sandbox.ProviderConfigFlag}, extra...)
			}
			if err := sb.RecreateAPIServer(ctx, i, args...); err != nil {
				t.Fatal(err)
			}
		}
	}
	const prefix = "/atrest-e2e"
	recreate("--etcd-prefix=" + prefix)
	t.Cleanup(func() {
		for i := range sb.Nodes {
			if saved[i] == nil {
				_ = os.Remove(providerFile(i))
			} else if err := os.WriteFile(providerFile(i), saved[i], 0o600); err != nil {
				t.Error(err)
			}
		}
		recreate()
	})
	createSecrets(t, clients(t)[0]) // under the new prefix

	managed := clusterFile(t, "managed.yml", managedBlock)
	step := func(name, want string, args ...string) string {
		t.Helper()
		tr := startTraffic(t)
		code, out := run(t, args...)
		tr.finish(t, name)
		if code != 0 {
			t.Fatalf("%s: exit %d:\n%s", name, code, out)
		}
		got := checkStoredAt(t, prefix, want)
		checkReadable(t)
		if code, out := run(t, "plan", "--config", args[len(args)-1]); code != 0 {
			t.Fatalf("%s: plan after it: exit %d:\n%s", name, code, out)
		}
		return got
	}
	k1 := step("managed", "aescbc:v1:", "apply", "--config", managed)
	k2 := step("rotate", "aescbc:v1:", "rotate-key", "--config", managed)
	if k1 == k2 {
		t.Fatalf("rotate-key kept %s", k1)
	}

	// cluster.yml that names another prefix than the apiservers run with
	// is refused.
	wrong := clusterFile(t, "wrong-prefix.yml", strings.Replace(disabledBlock, "    secrets_encryption_config:", "    extra_args:\n      etcd-prefix: /elsewhere\n    secrets_encryption_config:", 1))
	code, out := run(t, "plan", "--config", wrong)
	if code != 2 || !strings.Contains(out, "cluster.yml gives kube-apiserver --etcd-prefix /elsewhere") {
		t.Fatalf("plan with another prefix in cluster.yml: exit %d:\n%s", code, out)
	}
}

// TestUnmanagedAPIServer: a kube-apiserver that serves the cluster from a
// host cluster.yml does not list stops every change, named; once it is
// gone, atrest plans again.
func TestUnmanagedAPIServer(t *testing.T) {
	ctx := context.Background()
	managed := clusterFile(t, "managed.yml", managedBlock)
	stray, err := sb.StartStrayAPIServer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stray.Stop() })
	before := nodeFiles(t)
	for _, cmd := range []string{"plan", "apply"} {
		code, out := run(t, cmd, "--config", managed)
		if code != 2 || !strings.Contains(out, "host "+stray.Name) || !strings.Contains(out, "no controlplane node of cluster.yml") {
			t.Fatalf("%s with a stray apiserver serving: exit %d:\n%s", cmd, code, out)
		}
	}
	if nodeFiles(t) != before {
		t.Fatal("atrest changed a node while an apiserver it does not manage serves")
	}
	if err := stray.Stop(); err != nil {
		t.Fatal(err)
	}
	// Since v1.35 a clean shutdown deletes the identity lease: atrest
	// plans again (0 or 1, not a refusal).
	deadline := time.Now().Add(time.Minute)
	for {
		code, out := run(t, "plan", "--config", managed)
		if code != 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("plan after the stray apiserver stopped: exit %d:\n%s", code, out)
		}
		time.Sleep(2 * time.Second)
	}
}

// Helpers for Vault.

func vaultClient(t *testing.T) *vault.Client {
	t.Helper()
	c, err := sb.VaultClient()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// readVault reads a KV v2 document of the sandbox's "secret" mount.
func readVault(t *testing.T, rel string) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := vaultClient(t).KVv2("secret").Get(ctx, rel)
	if err != nil {
		t.Fatalf("vault: read %s: %v", rel, err)
	}
	return s.Data
}

func redactedKeys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func clusterNameOf(t *testing.T) string {
	t.Helper()
	cfg, err := cluster.Load(sb.ClusterYML)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.ClusterName
}

func mustBase64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
