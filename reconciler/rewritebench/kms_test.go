//go:build sandbox

package rewritebench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/reconciler"
	"github.com/atrest-io/atrest/sandbox"
	"github.com/atrest-io/atrest/settings"
)

// BenchmarkRewriteKMS measures, in one run on the one-node sandbox, the
// vault-transit provider (KMS v2 through atrest's plugin, Vault Transit)
// against aescbc: the rewrite of every secret after a rotation of each,
// the Vault calls the plugin makes during the KMS rewrite (counted by
// Vault's own audit log), the latency of one write through kube-apiserver
// under each, and the latency of the plugin's own Encrypt and Decrypt
// (each a Vault round trip). It prints numbers; it asserts none.
func BenchmarkRewriteKMS(b *testing.B) {
	ctx := context.Background()
	cfg, err := clientcmd.BuildConfigFromFlags("", sb.Kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	// The defaults atrest runs with (settings kubernetes.qps 0: no
	// client-side cap; 16 workers and the apiserver bound the rewrite).
	reconciler.SetRateLimit(cfg, settings.Default().Kubernetes.QPS, settings.Default().Kubernetes.Burst)
	kc := kubernetes.NewForConfigOrDie(cfg)
	createIn(b, ctx, kc, "kms-bench", 5000)
	total := countSecrets(b, ctx)

	// aescbc: a rotation as RKE's managed config does it, then the rewrite.
	keys := []cluster.Key{newKey(b, "k-kmsbench0"), newKey(b, "k-kmsbench1")}
	deploy(b, ctx, cluster.ManagedConfig{Keys: append([]cluster.Key{keys[0]}, leftKeys...)})
	deploy(b, ctx, cluster.ManagedConfig{Keys: append([]cluster.Key{keys[1], keys[0]}, leftKeys...)})
	aescbc := measureAtrest(b, ctx, cfg)
	aescbcWrite := writeLatency(b, ctx, kc, "aescbc")

	// vault-transit, as atrest sets it up: the Transit key, the plugin on
	// the node, readers first, the rewrite.
	dir := b.TempDir()
	clusterYML := filepath.Join(dir, "cluster.yml")
	if err := sb.WriteClusterYML(clusterYML, "    secrets_encryption_config:\n      enabled: true\n"); err != nil {
		b.Fatal(err)
	}
	policy := filepath.Join(dir, "atrest.yaml")
	if err := os.WriteFile(policy, []byte("provider: vault-transit\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if out, err := exec.CommandContext(ctx, atrestBin, "apply", "--config", clusterYML, "--policy", policy, "--settings", sb.SettingsFile).CombinedOutput(); err != nil {
		b.Fatalf("atrest apply to vault-transit: %v\n%s", err, out)
	}
	enable := time.Since(start)

	// A rotation in Vault; once kube-apiserver wraps with the new version
	// (its next status poll), every object is stale: the rewrite.
	vc, err := sb.VaultClient()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := vc.Logical().Write("transit/keys/"+sandbox.TransitKey+"/rotate", nil); err != nil {
		b.Fatal(err)
	}
	newID := cluster.TransitKeyID("transit", sandbox.TransitKey, 2)
	waitKeyID(b, ctx, kc, newID)
	audit := filepath.Join(dir, "vault-audit.log")
	if _, err := vc.Logical().Write("sys/audit/bench", map[string]any{"type": "file", "options": map[string]string{"file_path": audit}}); err != nil {
		b.Fatal(err)
	}
	kms := measureAtrest(b, ctx, cfg)
	if _, err := vc.Logical().Delete("sys/audit/bench"); err != nil {
		b.Fatal(err)
	}
	encrypts, decrypts := transitCalls(b, audit)
	kmsWrite := writeLatency(b, ctx, kc, "kms")
	enc, dec := pluginLatency(b, ctx)

	var lines []string
	report := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		lines = append(lines, line)
		fmt.Println(line)
	}
	report("rewrite of %d secrets after a rotation, one kube-apiserver + etcd + Vault on this machine:", total)
	report("  %-28s %8s %10s", "", "seconds", "secrets/s")
	report("  %-28s %8.2f %10.0f", "aescbc (key in the file)", aescbc.wall.Seconds(), float64(total)/aescbc.wall.Seconds())
	report("  %-28s %8.2f %10.0f", "vault-transit (KMS v2)", kms.wall.Seconds(), float64(total)/kms.wall.Seconds())
	report("  Vault calls by the plugin during the KMS rewrite: %d encrypt, %d decrypt (kube-apiserver wraps one data key per key_id, and caches unwrapped ones)", encrypts, decrypts)
	report("one secret written through kube-apiserver, 300 in a row: aescbc p50 %s p99 %s; vault-transit p50 %s p99 %s",
		pct(aescbcWrite, 50), pct(aescbcWrite, 99), pct(kmsWrite, 50), pct(kmsWrite, 99))
	report("the plugin itself, 200 calls each through its socket (each a Vault Transit round trip): Encrypt p50 %s p99 %s, Decrypt p50 %s p99 %s",
		pct(enc, 50), pct(enc, 99), pct(dec, 50), pct(dec, 99))
	report("atrest apply from aescbc to vault-transit (Transit key, plugin, two stages, rewrite, verify): %s", enable.Round(time.Second))
	_ = os.WriteFile(filepath.Join(os.TempDir(), "atrest-rewrite-kms-bench.txt"), []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

// createIn makes n secrets of about 1 KiB in five namespaces named prefix-N.
func createIn(b *testing.B, ctx context.Context, kc kubernetes.Interface, prefix string, n int) {
	for i := range 5 {
		_, _ = kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", prefix, i)}}, metav1.CreateOptions{})
	}
	sem := make(chan struct{}, 32)
	errs := make(chan error, n)
	for i := range n {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			payload := make([]byte, 1000)
			_, err := kc.CoreV1().Secrets(fmt.Sprintf("%s-%d", prefix, i%5)).Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s-%05d", i)},
				Data:       map[string][]byte{"value": payload},
			}, metav1.CreateOptions{})
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil && !strings.Contains(err.Error(), "already exists") {
			b.Fatal(err)
		}
	}
}

func countSecrets(b *testing.B, ctx context.Context) int {
	c, err := sb.EtcdClient()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Get(ctx, "/registry/secrets/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		b.Fatal(err)
	}
	return int(resp.Count)
}

// waitKeyID waits until a secret written through the node is wrapped with
// keyID: kube-apiserver takes a new Transit version at its next poll.
func waitKeyID(b *testing.B, ctx context.Context, kc kubernetes.Interface, keyID string) {
	c, err := sb.EtcdClient()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(3 * time.Minute)
	for i := 0; ; i++ {
		name := fmt.Sprintf("probe-%d", i)
		if _, err := kc.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		resp, err := c.Get(ctx, "/registry/secrets/default/"+name)
		_ = kc.CoreV1().Secrets("default").Delete(ctx, name, metav1.DeleteOptions{})
		if err == nil && len(resp.Kvs) == 1 {
			if id, _ := cluster.KMSv2KeyID(resp.Kvs[0].Value); id == keyID {
				return
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("kube-apiserver does not wrap with %s after 3 minutes", keyID)
		}
		time.Sleep(2 * time.Second)
	}
}

// transitCalls counts the Transit encrypt and decrypt requests in Vault's
// audit log.
func transitCalls(b *testing.B, audit string) (encrypts, decrypts int) {
	f, err := os.Open(audit)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `"type":"request"`) {
			continue
		}
		switch {
		case strings.Contains(line, `"path":"transit/encrypt/`):
			encrypts++
		case strings.Contains(line, `"path":"transit/decrypt/`):
			decrypts++
		}
	}
	return encrypts, decrypts
}

// writeLatency times 300 secret creates in a row through kube-apiserver,
// and deletes them.
func writeLatency(b *testing.B, ctx context.Context, kc kubernetes.Interface, tag string) []time.Duration {
	var out []time.Duration
	for i := range 300 {
		name := fmt.Sprintf("latency-%s-%03d", tag, i)
		start := time.Now()
		if _, err := kc.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string][]byte{"v": make([]byte, 1000)}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		out = append(out, time.Since(start))
		_ = kc.CoreV1().Secrets("default").Delete(ctx, name, metav1.DeleteOptions{})
	}
	return out
}

// pluginLatency times the node's plugin's Encrypt and Decrypt through its
// socket (on the host, under the node's /etc/kubernetes).
func pluginLatency(b *testing.B, ctx context.Context) (enc, dec []time.Duration) {
	sock := filepath.Join(sb.Nodes[0].Dir, "etc-kubernetes", "atrest-kms", "kms.sock")
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	c := kmsapi.NewKeyManagementServiceClient(conn)
	dek := make([]byte, 32)
	for i := range 200 {
		start := time.Now()
		r, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Uid: fmt.Sprintf("bench-%d", i), Plaintext: dek})
		if err != nil {
			b.Fatal(err)
		}
		enc = append(enc, time.Since(start))
		start = time.Now()
		if _, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Uid: fmt.Sprintf("bench-%d", i), Ciphertext: r.Ciphertext, KeyId: r.KeyId}); err != nil {
			b.Fatal(err)
		}
		dec = append(dec, time.Since(start))
	}
	return enc, dec
}

// pct is the p-th percentile of ds.
func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)].Round(10 * time.Microsecond)
}
