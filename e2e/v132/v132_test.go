//go:build sandbox

// Package v132 runs each transition once through the atrest binary on
// kube-apiserver v1.32, RKE1's last Kubernetes line, while the e2e package
// runs them all on the current release. v1.32 exports no hash of the
// config in force, so its reloads are proven by the stamps of the last
// success and failure against the file's mtime: this is where that proof
// meets a real kube-apiserver.
package v132

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/sandbox"
	"github.com/atrest-io/atrest/sandbox/sandboxtest"
)

var (
	sb     *sandbox.Sandbox
	atrest string
)

// Few secrets: the point is each transition on this version, not scale.
const secretCount = 20

func TestMain(m *testing.M) {
	sandbox.RunHelper()
	kas, err := sandboxtest.Binary("kube-apiserver-v1.32")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(sandboxtest.MainWithAtrest(m, &atrest, &sb, func(bin string) sandbox.Options {
		return sandbox.Options{Nodes: 2, KubeAPIServer: kas, KMSPlugin: bin}
	}))
}

func run(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, atrest, append(args, "--settings", sb.SettingsFile)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String()
	} else if err != nil {
		t.Fatalf("atrest %v: %v", args, err)
	}
	return 0, out.String()
}

func clusterFile(t *testing.T, name, encryption string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), name)
	if err := sb.WriteClusterYML(file, encryption); err != nil {
		t.Fatal(err)
	}
	return file
}

// container is node i's kube-apiserver container: its id and when it last
// started, to count restarts and replacements.
func container(t *testing.T, i int) string {
	t.Helper()
	out, err := sb.Docker(context.Background(), i, "inspect", "--format", "{{.Id}} {{.State.StartedAt}}", "kube-apiserver")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func clients(t *testing.T) []kubernetes.Interface {
	t.Helper()
	var out []kubernetes.Interface
	for _, n := range sb.Nodes {
		cfg, err := clientcmd.BuildConfigFromFlags("", sb.Kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Host = n.APIServerURL
		out = append(out, kubernetes.NewForConfigOrDie(cfg))
	}
	return out
}

func value(i int) []byte { return []byte(fmt.Sprintf("v132-%03d", i)) }

// stored is the storage prefix of every secret the test wrote.
func stored(t *testing.T) map[string]int {
	t.Helper()
	return countStored(t, func(v []byte) (string, bool) { return cluster.StoragePrefix(v), true })
}

// keyIDs counts the test's secrets by the KMS v2 key_id in their envelope.
func keyIDs(t *testing.T) map[string]int {
	t.Helper()
	return countStored(t, cluster.KMSv2KeyID)
}

// countStored counts the test's secrets, read straight from etcd, by what
// label says of each stored value (those it gives no label are left out).
func countStored(t *testing.T, label func([]byte) (string, bool)) map[string]int {
	t.Helper()
	c, err := sb.EtcdClient()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Get(context.Background(), sb.EtcdPrefix+"/secrets/v132/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, kv := range resp.Kvs {
		if l, ok := label(kv.Value); ok {
			out[l]++
		}
	}
	return out
}

func TestTransitionsOnV132(t *testing.T) {
	if !strings.HasPrefix(sb.KubeAPIServerVersion, "v1.32.") {
		t.Fatalf("the sandbox runs kube-apiserver %s, not v1.32", sb.KubeAPIServerVersion)
	}
	ctx := context.Background()
	kcs := clients(t)
	if _, err := kcs[0].CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "v132"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range secretCount {
		if _, err := kcs[0].CoreV1().Secrets("v132").Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s-%03d", i)}, Data: map[string][]byte{"v": value(i)},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	managed := clusterFile(t, "managed.yml", "    secrets_encryption_config:\n      enabled: true\n")
	disabled := clusterFile(t, "disabled.yml", sandbox.DisabledBlock)
	custom := clusterFile(t, "custom.yml", `    secrets_encryption_config:
      enabled: true
      custom_config:
        apiVersion: apiserver.config.k8s.io/v1
        kind: EncryptionConfiguration
        resources:
          - resources: [secrets]
            providers:
              - secretbox:
                  keys:
                    - name: k-v132s
                      secret: 9m1Wd5rBzPz2sO0bTj3pq8Qm8cW0y1ZtRkq0nLq2Vb4=
              - identity: {}
`)

	transit := filepath.Join(t.TempDir(), "atrest.yaml")
	if err := os.WriteFile(transit, []byte("provider: vault-transit\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name     string
		args     []string
		want     string // storage prefix of every secret after it
		restarts bool   // whether it may restart or replace kube-apiserver
	}{
		// The first change sets the reload flag: each node's one restart.
		{"enable", []string{"apply", "--config", managed}, "aescbc:v1:", true},
		{"rotate", []string{"rotate-key", "--config", managed}, "aescbc:v1:", false},
		{"custom", []string{"apply", "--config", custom}, "secretbox:v1:k-v132s", false},
		{"back to managed", []string{"apply", "--config", managed}, "aescbc:v1:", false},
		// KMS v2 through atrest's plugin and Vault Transit, as v1.32 runs it.
		{"vault-transit", []string{"apply", "--config", managed, "--policy", transit}, cluster.TransitPrefix, false},
		{"rotate the Transit key", []string{"rotate-key", "--config", managed, "--policy", transit}, cluster.TransitPrefix, false},
		// Disable clears both flags, so it replaces each container.
		{"disable", []string{"apply", "--config", disabled}, "identity", true},
	}
	prev := ""
	for _, s := range steps {
		before := []string{container(t, 0), container(t, 1)}
		start := time.Now()
		code, out := run(t, s.args...)
		if code != 0 {
			t.Fatalf("%s: exit %d:\n%s", s.name, code, out)
		}
		restarted := 0
		for i := range sb.Nodes {
			if container(t, i) != before[i] {
				restarted++
			}
		}
		t.Logf("%s on %s: %s, %d of %d kube-apiservers restarted or replaced", s.name, sb.KubeAPIServerVersion, time.Since(start).Round(time.Second), restarted, len(sb.Nodes))
		if !s.restarts && restarted > 0 {
			t.Errorf("%s restarted %d kube-apiserver(s); after the first change every stage reloads", s.name, restarted)
		}
		got := stored(t)
		if s.name == "rotate the Transit key" {
			if ids := keyIDs(t); len(ids) != 1 || ids[cluster.TransitKeyID("transit", sandbox.TransitKey, 2)] != secretCount {
				t.Fatalf("%s: secrets by key_id %v, want all %d under version 2", s.name, ids, secretCount)
			}
		}
		if len(got) != 1 {
			t.Fatalf("%s: secrets under several prefixes: %v", s.name, got)
		}
		for p, n := range got {
			if !strings.HasPrefix(p, s.want) || n != secretCount || p == prev && s.name == "rotate" {
				t.Fatalf("%s: %d secrets under %s, want %d under %s (before: %s)", s.name, n, p, secretCount, s.want, prev)
			}
			prev = p
		}
		for node, kc := range kcs {
			for i := range secretCount {
				sec, err := kc.CoreV1().Secrets("v132").Get(ctx, fmt.Sprintf("s-%03d", i), metav1.GetOptions{})
				if err != nil || !bytes.Equal(sec.Data["v"], value(i)) {
					t.Fatalf("%s: node%d reads s-%03d: %v", s.name, node+1, i, err)
				}
			}
		}
		if code, out := run(t, append([]string{"plan"}, s.args[1:]...)...); code != 0 {
			t.Fatalf("%s: plan after it: exit %d:\n%s", s.name, code, out)
		}
	}
}
