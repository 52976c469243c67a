//go:build sandbox

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/rke"
	"github.com/atrest-io/atrest/sandbox"
)

// RKE cannot run here (it pulls images), so these tests play its part as
// its source does it: the provider file from cluster.rkestate or from a
// key it just generated (rke.ManagedProviderFile, rke.GenerateKey), or
// from a custom_config (rke.DeployedFrom), written by its file deployer
// (rke.OnDisk: echo into a temporary file, mv, chmod 600) on every
// controlplane node, then its control plane deployed: the kube-apiserver
// container atrest made carries a flag cluster.yml lacks, so RKE replaces
// it with its own, one node at a time, each once /healthz answers.

// plainRKEUp is `rke up` run by someone, without atrest, deploying
// contents as RKE's provider file.
func plainRKEUp(t *testing.T, contents string) {
	t.Helper()
	for i := range sb.Nodes {
		file := providerFile(i)
		if err := os.Remove(file); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, rke.OnDisk(contents), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// RKE's healthcheck is /healthz: a kube-apiserver that cannot read
	// what atrest's key wrote serves, but its secrets cache never fills
	// and it is never ready (/readyz fails on informer-sync). Its /healthz
	// takes a minute to pass, so every node at once, as RKE does with
	// upgrade_strategy.max_unavailable_controlplane: 3.
	var wg sync.WaitGroup
	errs := make([]error, len(sb.Nodes))
	for i := range sb.Nodes {
		wg.Go(func() {
			if errs[i] = sb.RunAPIServer(context.Background(), i, sandbox.ProviderConfigFlag); errs[i] == nil {
				errs[i] = sb.WaitHealthy(context.Background(), i, 3*time.Minute)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// checkCreated reads every secret the traffic wrote through every node:
// what was written under an outside key must not be lost.
func (tr *traffic) checkCreated(t *testing.T) {
	t.Helper()
	for node, kc := range clients(t) {
		for _, n := range tr.created {
			s, err := kc.CoreV1().Secrets(n.Namespace).Get(context.Background(), n.Name, metav1.GetOptions{})
			if err != nil || string(s.Data["v"]) != "traffic" {
				t.Fatalf("node%d: %s written during the outside writer's work: %v", node+1, n, err)
			}
		}
	}
	t.Logf("%d secrets written during it, all readable through every node", len(tr.created))
}

// keyRole is the role `atrest status -o json` gives key name, and the
// node an outside writer left it on.
func keyRole(t *testing.T, name string) (role, outside string) {
	t.Helper()
	_, out := run(t, "status", "-o", "json")
	var st struct {
		Keys []struct{ Name, Role, Outside string }
	}
	if err := json.Unmarshal([]byte(jsonOf(out)), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	for _, k := range st.Keys {
		if k.Name == name {
			return k.Role, k.Outside
		}
	}
	return "", ""
}

// TestPlainRKEUp: someone runs plain `rke up` with encryption enabled,
// once with a state that holds no key (RKE generates one) and once with a
// stale one (an old key). Writes go on through every node. The next
// daemon cycle imports the outside key first, then converges readers
// first: every secret, those written under the outside key included, is
// readable through every node, the key is retired once the census has
// nothing under it, and the cluster is as Git says.
func TestPlainRKEUp(t *testing.T) {
	createSecrets(t, clients(t)[0])
	base, err := os.ReadFile(sb.ClusterYML)
	if err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(t.TempDir(), "webhook-secret")
	if err := os.WriteFile(secretFile, []byte("e2e-webhook-secret-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	commit(t, "Enable encryption at rest", map[string]string{
		"cluster.yml": strings.Replace(string(base), disabledBlock, managedBlock, 1), "atrest.yaml": "snapshots:\n  retention: 5\n"})
	d := startDaemon(t, "5s", secretFile)
	ours := converged(t, "enabled: true to converge", "aescbc:v1:", "", 5*time.Minute)
	eventually(t, "the daemon in sync", 3*time.Minute, func() (bool, string) {
		code, out := run(t, "plan")
		return code == 0, out
	})
	if err := d.signal(t, syscall.SIGTERM, 2*time.Minute); err != nil {
		t.Fatal(err)
	}

	fresh, err := rke.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []struct{ name, file string }{
		{"a state without keys: RKE generates " + fresh.Name, rke.ManagedProviderFile([]cluster.Key{fresh})},
		{"a stale state: RKE deploys " + fresh.Name + " again", rke.ManagedProviderFile([]cluster.Key{fresh})},
	} {
		t.Run(v.name, func(t *testing.T) {
			tr := startTraffic(t)
			tr.outside = true
			start := time.Now()
			plainRKEUp(t, v.file)
			t.Logf("plain rke up took %s; %d requests failed meanwhile", time.Since(start).Round(time.Second), tr.keyFails.Load()+tr.restarting.Load())
			d := startDaemon(t, "5s", secretFile)
			imported := strings.HasPrefix(v.name, "a state without")
			if imported {
				d.waitLog(t, time.Minute, "outside writer", "imported it before anything else", "node="+sb.Nodes[0].Name, "key="+fresh.Name)
			}
			d.waitLog(t, time.Minute, "drift:", "outside writer", fresh.Name)
			converged(t, "the cluster to converge back to its own key", ours, "", 8*time.Minute)
			eventually(t, "the daemon in sync", 3*time.Minute, func() (bool, string) {
				code, out := run(t, "plan")
				return code == 0, out
			})
			t.Logf("MEASURE plain rke up (%s): converged %s after it", v.name, time.Since(start).Round(time.Second))
			close(tr.stop)
			tr.wg.Wait()
			tr.stop = make(chan struct{})
			tr.checkCreated(t)
			tr.finish(t, "plain rke up")
			role, outside := keyRole(t, fresh.Name)
			if role != "retired" || outside != sb.Nodes[0].Name {
				t.Fatalf("key %s: role %q, found on %q; want retired, found on %s", fresh.Name, role, outside, sb.Nodes[0].Name)
			}
			m := d.metrics(t)
			if imported && !strings.Contains(m, `atrest_outside_keys_total{node="`+sb.Nodes[0].Name+`"} 1`) ||
				!strings.Contains(m, `atrest_outside_writer{node="`+sb.Nodes[0].Name+`"} 0`) {
				t.Errorf("metrics: %s", grepLines(m, "outside"))
			}
			if err := d.signal(t, syscall.SIGTERM, 2*time.Minute); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// standInEnv makes the test binary play `rke up` (standInRKE).
const standInEnv = "ATREST_E2E_STANDIN_RKE"

// standInRKE is `rke up --config FILE`, as far as encryption goes: it
// reads FILE and the state beside it, deploys the provider file RKE makes
// of FILE's custom_config on every node the way RKE's file deployer does,
// restarts every kube-apiserver when the state says RKE deployed another
// (ReconcileEncryptionProviderConfig), and writes the state back with the
// config in it, as UpdateClusterCurrentState does. It exits with
// $ATREST_E2E_STANDIN_EXIT after all that.
func standInRKE(args []string) int {
	if len(args) != 3 || args[0] != "up" || args[1] != "--config" {
		fmt.Fprintf(os.Stderr, "stand-in rke: bad arguments %q\n", args)
		return 64
	}
	config := args[2]
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "stand-in rke:", err); return 70 }
	yml, err := os.ReadFile(config)
	if err != nil {
		return fail(err)
	}
	file, err := rke.DeployedFrom(yml)
	if err != nil {
		return fail(err)
	}
	statePath := rke.StateFilePath(config)
	data, err := os.ReadFile(statePath)
	if err != nil {
		return fail(err)
	}
	var state map[string]any
	if err := json.Unmarshal(data, &state); err != nil {
		return fail(err)
	}
	cur := state["currentState"].(map[string]any)
	restart := cur["encryptionConfig"] != file
	for _, dir := range strings.Split(os.Getenv("ATREST_E2E_NODE_DIRS"), ":") {
		f := filepath.Join(dir, "etc-kubernetes", "ssl", "encryption.yaml")
		_ = os.Remove(f)
		if err := os.WriteFile(f, rke.OnDisk(file), 0o600); err != nil {
			return fail(err)
		}
	}
	if restart {
		fmt.Fprintln(os.Stdout, "[controlPlane] Encryption provider config has changed; reconciling cluster's encryption provider configuration")
		for _, sock := range strings.Split(os.Getenv("ATREST_E2E_DOCKER_SOCKETS"), ":") {
			cmd := exec.Command("docker", "restart", "kube-apiserver")
			cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+sock)
			if out, err := cmd.CombinedOutput(); err != nil {
				return fail(fmt.Errorf("docker restart: %v: %s", err, out))
			}
		}
	}
	cur["encryptionConfig"] = file
	state["desiredState"].(map[string]any)["encryptionConfig"] = file
	out, _ := json.MarshalIndent(state, "", "  ")
	if err := os.WriteFile(statePath, out, 0o600); err != nil {
		return fail(err)
	}
	if err := os.WriteFile(rke.KubeconfigPath(config), []byte("apiVersion: v1\nkind: Config\n"), 0o600); err != nil {
		return fail(err)
	}
	code, _ := strconv.Atoi(os.Getenv("ATREST_E2E_STANDIN_EXIT"))
	return code
}

// TestRKEUpThroughAtrest: `atrest rke up` gives rke the config atrest
// runs: rke deploys the same config, restarts no kube-apiserver, and the
// state holds no key afterwards, when rke succeeds and when it fails.
func TestRKEUpThroughAtrest(t *testing.T) {
	createSecrets(t, clients(t)[0])
	managed := clusterFile(t, "cluster.yml", managedBlock)
	setUp(t, "aescbc:v1:", managed)
	state := rke.StateFilePath(managed)
	if err := os.WriteFile(state, []byte(`{"currentState":{"rkeConfig":{"services":{"kubeApi":{}}},"certificatesBundle":{"kube-ca":{"certificatePEM":"x"}}},"desiredState":{"rkeConfig":{}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var dirs, socks []string
	for _, n := range sb.Nodes {
		dirs, socks = append(dirs, n.Dir), append(socks, n.DockerSocket)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	before := nodeFiles(t)
	running := make([][]byte, len(sb.Nodes))
	for i := range sb.Nodes {
		cfg, err := cluster.ParseEncryptionConfig("node", "", readNodeFile(t, i), "")
		if err != nil {
			t.Fatal(err)
		}
		running[i] = cfg.Render()
	}
	for _, exit := range []int{0, 1} {
		t.Run(fmt.Sprintf("rke exits %d", exit), func(t *testing.T) {
			env := []string{standInEnv + "=1", "ATREST_E2E_NODE_DIRS=" + strings.Join(dirs, ":"), "ATREST_E2E_DOCKER_SOCKETS=" + strings.Join(socks, ":"),
				"ATREST_E2E_STANDIN_EXIT=" + strconv.Itoa(exit)}
			// What `rke up` saves in the cluster (SaveFullStateToK8s): the
			// state, custom_config and provider file in it.
			kc := clients(t)[0]
			ctx := context.Background()
			_ = kc.CoreV1().Secrets("kube-system").Delete(ctx, "full-cluster-state", metav1.DeleteOptions{})
			inCluster := `{"currentState":{"encryptionConfig":"` + fw5hnSecret + `","rkeConfig":{"services":{"kubeApi":{"secretsEncryptionConfig":{"enabled":true,"customConfig":{"k":"` + fw5hnSecret + `"}}}}}},"desiredState":{"rkeConfig":{"nodes":[]}}}`
			if _, err := kc.CoreV1().Secrets("kube-system").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "full-cluster-state"},
				Data: map[string][]byte{"full-cluster-state": []byte(inCluster)}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			tr := startTraffic(t)
			start := time.Now()
			code, out := runEnv(t, env, "rke", "up", "--config", managed, "--rke", self)
			tr.finish(t, "atrest rke up")
			if code != exit || !strings.Contains(out, "holds no key") || !strings.Contains(out, "every node runs the same config as before") {
				t.Fatalf("atrest rke up: exit %d, want %d:\n%s", code, exit, out)
			}
			if n := startsSince(t, start); n != 0 || strings.Contains(out, "Encryption provider config has changed") {
				t.Fatalf("rke up restarted kube-apiserver %d times:\n%s", n, out)
			}
			data, err := os.ReadFile(state)
			if err != nil {
				t.Fatal(err)
			}
			if holds, err := rke.HoldsKeys(data); err != nil || holds || !bytes.Contains(data, []byte("certificatePEM")) {
				t.Fatalf("the state after rke up (holds keys %v, %v):\n%s", holds, err, data)
			}
			saved, err := kc.CoreV1().Secrets("kube-system").Get(ctx, "full-cluster-state", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if holds, err := rke.HoldsKeys(saved.Data["full-cluster-state"]); err != nil || holds || !bytes.Contains(saved.Data["full-cluster-state"], []byte(`"nodes"`)) {
				t.Fatalf("RKE's state in the cluster after rke up (holds keys %v, %v)", holds, err)
			}
			if leftover, _ := filepath.Glob(filepath.Join(os.TempDir(), "atrest-rke-up-*")); len(leftover) > 0 {
				t.Fatalf("left behind: %v", leftover)
			}
			// RKE's rendering of the same config: other bytes, the same config.
			if nodeFiles(t) == before {
				t.Fatal("the stand-in deployed nothing")
			}
			for i := range sb.Nodes {
				got, err := cluster.ParseEncryptionConfig("node", "", readNodeFile(t, i), "")
				if err != nil {
					t.Fatalf("node%d: the file RKE deployed does not parse: %v", i+1, err)
				}
				if !bytes.Equal(got.Render(), running[i]) {
					t.Fatalf("node%d: RKE deployed another config", i+1)
				}
			}
			eventually(t, "atrest to find nothing to do", 2*time.Minute, func() (bool, string) {
				code, out := run(t, "plan", "--config", managed)
				return code == 0, out
			})
			checkReadable(t)
		})
	}
}
