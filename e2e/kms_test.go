//go:build sandbox

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/internal/leaktest"
	"github.com/atrest-io/atrest/keystore/keystoretest"
	"github.com/atrest-io/atrest/sandbox"
)

// keyIDs counts the secrets by storage prefix and, under a KMS v2
// provider, by the key_id in their envelope: "kms:v2:NAME key_id".
func keyIDs(t *testing.T) map[string]int {
	t.Helper()
	resp, err := etcdClient(t).Get(context.Background(), "/registry/secrets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, kv := range resp.Kvs {
		p := cluster.StoragePrefix(kv.Value)
		if id, ok := cluster.KMSv2KeyID(kv.Value); ok {
			p = cluster.KeyIDLabel(p, id)
		}
		counts[p]++
	}
	return counts
}

// allUnder checks every secret is stored as want (a keyIDs label, or a
// prefix of one).
func allUnder(t *testing.T, what, want string) {
	t.Helper()
	for label, n := range keyIDs(t) {
		if !strings.HasPrefix(label, want) {
			t.Fatalf("%s: %d secrets stored as %s, want all as %s", what, n, label, want)
		}
	}
}

func transitLabel(v int) string {
	return cluster.KeyIDLabel(cluster.TransitPrefix, cluster.TransitKeyID("transit", sandbox.TransitKey, v))
}

// transitState reads the sandbox's Transit key as Vault says.
func transitState(t *testing.T) (latest, minDecryption int) {
	t.Helper()
	sec, err := vaultClient(t).Logical().Read("transit/keys/" + sandbox.TransitKey)
	if err != nil || sec == nil {
		t.Fatalf("read the Transit key: %v", err)
	}
	num := func(k string) int {
		n, _ := sec.Data[k].(json.Number).Int64()
		return int(n)
	}
	return num("latest_version"), num("min_decryption_version")
}

// providerFiles are every node's provider file.
func providerFiles(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, n := range sb.Nodes {
		b, err := os.ReadFile(filepath.Join(n.Dir, "etc-kubernetes", "ssl", "encryption.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

// pluginLogs are the plugin containers' logs, every node.
func pluginLogs(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for i := range sb.Nodes {
		out, err := sb.Docker(context.Background(), i, "logs", "atrest-kms")
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(out)
	}
	return b.String()
}

// pluginContainer is node i's plugin: its id, pid and restart count.
func pluginContainer(t *testing.T, i int) (id string, pid, restarts int) {
	t.Helper()
	out, err := sb.Docker(context.Background(), i, "inspect", "--format", "{{.Id}} {{.State.Pid}} {{.RestartCount}}", "atrest-kms")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	pid, _ = strconv.Atoi(f[1])
	restarts, _ = strconv.Atoi(f[2])
	return f[0], pid, restarts
}

// secretIDAccessors are the accessors of the plugins' AppRole secret ids
// Vault holds.
func secretIDAccessors(t *testing.T) []string {
	t.Helper()
	sec, err := vaultClient(t).Logical().List("auth/approle/role/" + sandbox.PluginRole + "/secret-id")
	if err != nil {
		t.Fatal(err)
	}
	if sec == nil {
		return nil
	}
	var out []string
	for _, k := range sec.Data["keys"].([]any) {
		out = append(out, k.(string))
	}
	return out
}

// TestKMS carries the vault-transit provider through its life on the
// 3-node sandbox, with real Vault Transit and atrest's plugin in a
// container on every node, traffic through every node all along: enable
// from identity, a rotation, back to aescbc, enable from aescbc, a
// scheduled rotation, Vault unreachable in a rewrite, the plugin killed
// and removed on one node, and the drill and restore config of a snapshot
// from before a rotation. No provider file ever holds key material, and
// nothing atrest or the plugins print holds a key or a credential.
func TestKMS(t *testing.T) {
	if sb.KMSPluginImage() == "" {
		t.Fatal("the e2e sandbox has no KMS plugin image (sandbox.Options.KMSPlugin)")
	}
	createSecrets(t, clients(t)[0])
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	transitPolicy := write("transit.yaml", "provider: vault-transit\nsnapshots:\n  retention: 10\n")
	aescbcPolicy := write("aescbc.yaml", "provider: aescbc\nsnapshots:\n  retention: 10\n")
	managed := clusterFile(t, "managed.yml", managedBlock)
	disabled := clusterFile(t, "disabled.yml", disabledBlock)
	watch := leaktest.New(t)
	var said []string
	apply := func(what string, args ...string) string {
		t.Helper()
		tr := startTraffic(t)
		start := time.Now()
		code, out := run(t, args...)
		said = append(said, out)
		tr.finish(t, what)
		if code != 0 {
			t.Fatalf("%s: atrest %s: exit %d:\n%s", what, strings.Join(args, " "), code, out)
		}
		t.Logf("%s: %s", what, time.Since(start).Round(time.Second))
		return out
	}
	noKeysOnNodes := func(what string) {
		t.Helper()
		for i, f := range providerFiles(t) {
			if strings.Contains(f, "secret:") || strings.Contains(f, "aescbc") {
				t.Errorf("%s: node%d's provider file holds key material:\n%s", what, i+1, f)
			}
		}
	}

	// From encryption off, whatever the tests before left.
	if code, out := run(t, "apply", "--config", disabled); code != 0 {
		t.Fatalf("disable first: exit %d:\n%s", code, out)
	}

	// 1. Enable from identity: the Transit key, the plugin on every node,
	// readers first, then the rewrite.
	out := apply("enable vault-transit from identity", "apply", "--config", managed, "--policy", transitPolicy)
	for _, want := range []string{"create the Transit key", "start the KMS plugin", "enable complete"} {
		if !strings.Contains(out, want) {
			t.Errorf("enable: the output does not say %q:\n%s", want, out)
		}
	}
	allUnder(t, "after the enable", transitLabel(1))
	noKeysOnNodes("after the enable")
	if n := len(secretIDAccessors(t)); n != len(sb.Nodes) {
		t.Errorf("after the enable Vault holds %d plugin secret ids, want one per node (%d)", n, len(sb.Nodes))
	}
	code, status := run(t, "status", "--config", managed, "--policy", transitPolicy)
	said = append(said, status)
	if code != 0 || !strings.Contains(status, "kms plugin: healthy, key_id transit/"+sandbox.TransitKey+":v1") || !strings.Contains(status, "transit key transit/"+sandbox.TransitKey+": latest version 1") {
		t.Errorf("status after the enable: exit %d:\n%s", code, status)
	}
	if code, out := run(t, "plan", "--config", managed, "--policy", transitPolicy); code != 0 {
		t.Errorf("plan after the enable: exit %d:\n%s", code, out)
	}

	// 2. A rotation: a new Transit version, every apiserver wraps with it,
	// the rewrite; the snapshot before it still needs version 1.
	out = apply("rotate the Transit key", "rotate-key", "--config", managed, "--policy", transitPolicy)
	if strings.Contains(out, "deploy secrets") {
		t.Errorf("a Transit rotation deployed a provider file:\n%s", out)
	}
	allUnder(t, "after the rotation", transitLabel(2))
	if latest, minDec := transitState(t); latest != 2 || minDec != 1 {
		t.Errorf("after the rotation the Transit key is at version %d, decrypting from %d; want 2 and 1 (the snapshot before the rotation needs 1)", latest, minDec)
	}
	beforeRotation := snapshotNamed(t, "before rotate")
	if code, rep := run(t, "snapshot", "verify", "--decrypt", beforeRotation); code != 0 || !strings.Contains(rep, "Restorable") {
		t.Errorf("drill of %s (from before the rotation, under version 1): exit %d:\n%s", beforeRotation, code, rep)
	}
	rcFile := filepath.Join(dir, "restore.yaml")
	code, out = run(t, "snapshot", "restore-config", beforeRotation, "--out", rcFile)
	said = append(said, out)
	if code != 0 || !strings.Contains(out, "atrest kms-plugin") || !strings.Contains(out, "version(s) 1") {
		t.Errorf("restore-config %s: exit %d:\n%s", beforeRotation, code, out)
	}
	if rc, err := os.ReadFile(rcFile); err != nil || !strings.Contains(string(rc), cluster.TransitProviderName) || strings.Contains(string(rc), "secret:") {
		t.Errorf("restore config of %s: %v\n%s", beforeRotation, err, rc)
	}

	// The snapshot's real restore agrees with its drill: etcd restored
	// from it, kube-apiserver on the restore config, node1's plugin
	// unwrapping its data keys with Transit version 1, every secret read.
	r, err := sb.RestoreSnapshot(context.Background(), filepath.Join(sb.Dir, "snapshots", beforeRotation+".db"), rcFile, "/readyz")
	if err != nil {
		t.Fatalf("restore %s: %v", beforeRotation, err)
	}
	restoredCfg := restConfigFor(t, 0)
	restoredCfg.Host = r.APIServer
	restoredKC := kubernetes.NewForConfigOrDie(restoredCfg)
	for i := range secretCount {
		s, err := restoredKC.CoreV1().Secrets(nsOf(i)).Get(context.Background(), fmt.Sprintf("s-%05d", i), metav1.GetOptions{})
		if err != nil || !bytes.Equal(s.Data["v"], value(i)) {
			t.Fatalf("the restore of %s reads s-%05d: %v", beforeRotation, i, err)
		}
	}
	if err := r.Stop(); err != nil {
		t.Error(err)
	}

	// 3. The plugin killed on one node: Docker starts it again, and
	// nothing needs doing. Removed, atrest starts it again with a fresh
	// credential and revokes the old one.
	_, pid, restarts := pluginContainer(t, 1)
	// On the node (its own PID namespace), as a crash or the OOM killer
	// would: not `docker kill`, after which Docker restarts nothing.
	if out, err := exec.Command("ssh", "-i", sb.SSHKeyFile, "-o", "UserKnownHostsFile="+sb.KnownHostsFile, "-o", "BatchMode=yes",
		"root@"+sb.Nodes[1].Address, "kill -9 "+strconv.Itoa(pid)).CombinedOutput(); err != nil {
		t.Fatalf("kill node2's plugin: %v: %s", err, out)
	}
	eventually(t, "node2's plugin to be started again", time.Minute, func() (bool, string) {
		_, p, r := pluginContainer(t, 1)
		return r > restarts && p != pid && p != 0, fmt.Sprintf("pid %d, restarts %d", p, r)
	})
	eventually(t, "nothing to do after the plugin came back", 2*time.Minute, func() (bool, string) {
		code, out := run(t, "plan", "--config", managed, "--policy", transitPolicy)
		return code == 0, out
	})
	before := secretIDAccessors(t)
	if _, err := sb.Docker(context.Background(), 1, "rm", "-f", "atrest-kms"); err != nil {
		t.Fatal(err)
	}
	// From the moment node2's kube-apiserver sees its plugin gone (it asks
	// once a minute while healthy): the repair is done when it serves
	// again, not when the plugin answers, or the next plan finds node2
	// not ready and stalls.
	node2 := kubernetes.NewForConfigOrDie(restConfigFor(t, 1))
	eventually(t, "node2's kube-apiserver to fail its KMS check", 2*time.Minute, func() (bool, string) {
		body, err := node2.Discovery().RESTClient().Get().AbsPath("/readyz").Param("verbose", "true").DoRaw(context.Background())
		return err != nil && strings.Contains(string(body), "[-]kms-provider"), string(body)
	})
	out = apply("repair node2's plugin", "apply", "--config", managed, "--policy", transitPolicy)
	if !strings.Contains(out, "start the KMS plugin (atrest-kms) with a fresh Vault credential on node2,") {
		t.Errorf("repair: want the plugin started again on node2 alone:\n%s", out)
	}
	if after := secretIDAccessors(t); len(after) != len(before) || strings.Join(after, ",") == strings.Join(before, ",") {
		t.Errorf("plugin secret ids before the repair %v, after %v: want node2's replaced, as many as before", before, after)
	}

	// And on demand, every node's: each replaced, none left behind.
	before = secretIDAccessors(t)
	tr := startTraffic(t)
	code, out = run(t, "keys", "rotate-plugin-credentials", "--config", managed, "--policy", transitPolicy)
	tr.finish(t, "rotate the plugins' credentials")
	said = append(said, out)
	after := secretIDAccessors(t)
	if code != 0 || len(after) != len(sb.Nodes) || slices.ContainsFunc(after, func(a string) bool { return slices.Contains(before, a) }) {
		t.Errorf("rotate-plugin-credentials: exit %d, secret ids before %v, after %v:\n%s", code, before, after, out)
	}

	// A new plugin image rolls out node by node; one that does not start
	// is put back on the first node, and goes no further.
	for i := range sb.Nodes {
		for tag, from := range map[string]string{"atrest-sandbox/atrest:kms-next": sb.KMSPluginImage(), "atrest-sandbox/atrest:broken": sb.KubeAPIServerImage()} {
			if _, err := sb.Docker(context.Background(), i, "tag", from, tag); err != nil {
				t.Fatal(err)
			}
		}
	}
	ids := func() []string {
		var out []string
		for i := range sb.Nodes {
			id, _, _ := pluginContainer(t, i)
			out = append(out, id)
		}
		return out
	}
	was := ids()
	code, out = run(t, "apply", "--config", managed, "--policy", transitPolicy, "--kms-image", "atrest-sandbox/atrest:broken")
	said = append(said, out)
	if code == 0 || !strings.Contains(out, "stopped at node1") || !slices.Equal(ids(), was) {
		t.Errorf("a plugin image that does not start: exit %d, containers %v, were %v:\n%s", code, ids(), was, out)
	}
	apply("upgrade the plugin", "apply", "--config", managed, "--policy", transitPolicy, "--kms-image", "atrest-sandbox/atrest:kms-next")
	now := ids()
	for i := range now {
		if now[i] == was[i] {
			t.Errorf("node%d's plugin was not upgraded", i+1)
		}
	}
	if code, out := run(t, "plan", "--config", managed, "--policy", transitPolicy, "--kms-image", "atrest-sandbox/atrest:kms-next"); code != 0 {
		t.Errorf("plan after the upgrade: exit %d:\n%s", code, out)
	}

	// 4. Back to aescbc, the same way: readers first, rewrite, and the
	// plugin goes once nothing needs it.
	apply("back to aescbc", "apply", "--config", managed, "--policy", aescbcPolicy)
	allUnder(t, "after the switch to aescbc", "aescbc:v1:")
	for i := range sb.Nodes {
		if out, err := sb.Docker(context.Background(), i, "ps", "-a", "--filter", "name=atrest-kms", "--format", "{{.Names}}"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("node%d still has a plugin container after the switch to aescbc: %q %v", i+1, out, err)
		}
	}
	if ids := secretIDAccessors(t); len(ids) != 0 {
		t.Errorf("plugin secret ids left in Vault after the plugins were removed: %v", ids)
	}

	// 5. Enable from aescbc: the aescbc key stays a reader until the
	// census is clean.
	apply("vault-transit from aescbc", "apply", "--config", managed, "--policy", transitPolicy)
	allUnder(t, "after the switch from aescbc", transitLabel(2))
	noKeysOnNodes("after the switch from aescbc")

	// 6. A scheduled rotation, by the daemon; Vault unreachable in the
	// rewrite of the next one: the daemon stops, and resumes once Vault
	// answers again.
	said = append(said, kmsDaemonRotations(t)...)
	logs := pluginLogs(t)

	// 7. Off again, as the tests after this one expect: the plugins go,
	// with their credentials.
	apply("disable from vault-transit", "apply", "--config", disabled)
	allUnder(t, "after the disable", cluster.PrefixIdentity)
	if ids := secretIDAccessors(t); len(ids) != 0 {
		t.Errorf("plugin secret ids left in Vault after the disable: %v", ids)
	}

	// Nothing printed holds a key, a plugin's secret id or a Vault token.
	keys, err := keystoretest.Keys(context.Background(), sb, sandbox.ClusterName)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		watch.Key(k)
	}
	for i, n := range sb.Nodes {
		if id, err := os.ReadFile(filepath.Join(n.Dir, "etc-atrest-kms", "secret-id")); err == nil {
			watch.Key(cluster.Key{Name: fmt.Sprintf("node%d-secret-id", i+1), Provider: cluster.AESCBC, Secret: []byte(strings.TrimSpace(string(id)))})
		}
	}
	said = append(said, logs)
	for _, s := range said {
		_, _ = watch.Write([]byte(s))
		if strings.Contains(s, "hvs.") {
			t.Errorf("a Vault token shows in what was printed")
		}
	}
}

// snapshotNamed is the newest kept snapshot whose reason is reason.
func snapshotNamed(t *testing.T, reason string) string {
	t.Helper()
	_, list := run(t, "snapshot", "list")
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, reason) {
			name, _, _ := strings.Cut(line, " ")
			return name
		}
	}
	t.Fatalf("no snapshot %q in:\n%s", reason, list)
	return ""
}

// kmsDaemonRotations runs the daemon on the vault-transit provider with a
// schedule: a scheduled rotation, in whose rewrite Vault stops answering
// for a while. The daemon stops, then carries on once Vault answers, and
// the cluster settles under the new version. It returns what the daemon
// said.
func kmsDaemonRotations(t *testing.T) []string {
	t.Helper()
	base, err := os.ReadFile(sb.ClusterYML)
	if err != nil {
		t.Fatal(err)
	}
	yml := strings.Replace(string(base), disabledBlock, managedBlock, 1)
	secretFile := filepath.Join(t.TempDir(), "webhook-secret")
	if err := os.WriteFile(secretFile, []byte("e2e-webhook-secret-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const quiet = "provider: vault-transit\nsnapshots:\n  retention: 10\n"
	from, _ := transitState(t)
	commit(t, "vault-transit, rotated every 30s", map[string]string{"cluster.yml": yml,
		"atrest.yaml": "provider: vault-transit\nrotation:\n  schedule: \"@every 30s\"\nsnapshots:\n  retention: 10\n"})
	// A slow rewrite, so that Vault can be paused in it.
	d := startDaemonArgs(t, "5s", secretFile, "--daemon-max-backoff", "20s", "--kubernetes-qps", "15")
	eventually(t, "a scheduled rotation of the Transit key, in its rewrite", 5*time.Minute, func() (bool, string) {
		l, _ := transitState(t)
		return l > from && strings.Contains(d.logs(), "step=rewrite"), fmt.Sprintf("latest version %d", l)
	})
	to, _ := transitState(t)
	commit(t, "no more scheduled rotation", map[string]string{"atrest.yaml": quiet})
	pauseVault(t, 90*time.Second)
	eventually(t, "the cluster to settle under the rotated version", 8*time.Minute, func() (bool, string) {
		for label, n := range keyIDs(t) {
			if label != transitLabel(to) {
				return false, fmt.Sprintf("%d under %s", n, label)
			}
		}
		code, out := run(t, "plan")
		return code == 0, out
	})
	if l, _ := transitState(t); l != to {
		t.Errorf("the Transit key is at version %d, want %d: one scheduled rotation", l, to)
	}
	logs := d.logs()
	if !strings.Contains(logs, "Vault is unreachable") && !strings.Contains(logs, "lock lost") {
		t.Logf("the daemon did not report Vault down in the rewrite (it may have finished first):\n%s", logs)
	}
	if err := d.signal(t, syscall.SIGTERM, 2*time.Minute); err != nil {
		t.Errorf("atrest run after SIGTERM: %v", err)
	}
	return []string{d.logs()}
}

// pauseVault stops the sandbox's Vault process for d (SIGSTOP, then
// SIGCONT): unreachable, with nothing lost.
func pauseVault(t *testing.T, d time.Duration) {
	t.Helper()
	pid := sb.VaultPID()
	if err := exec.Command("kill", "-STOP", strconv.Itoa(pid)).Run(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = exec.Command("kill", "-CONT", strconv.Itoa(pid)).Run()
		}
	}()
	t.Logf("Vault (pid %d) paused for %s", pid, d)
	time.Sleep(d)
	if err := exec.Command("kill", "-CONT", strconv.Itoa(pid)).Run(); err != nil {
		t.Fatal(err)
	}
	resumed = true
}
