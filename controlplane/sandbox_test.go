//go:build sandbox

package controlplane_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/sandbox"
	"github.com/atrest-io/atrest/sandbox/sandboxtest"
)

var sb *sandbox.Sandbox

func TestMain(m *testing.M) {
	os.Exit(sandboxtest.Main(m, sandbox.Options{Nodes: 3}, &sb))
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// etcdStorage is the StorageReader the reconciler would pass: raw reads
// from etcd with the sandbox's client certificate.
type etcdStorage struct{ c *clientv3.Client }

func (s etcdStorage) RawGet(ctx context.Context, key string) ([]byte, error) {
	resp, err := s.c.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0].Value, nil
}

func newEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(sb.EtcdCertFile, sb.EtcdKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(sb.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{sb.EtcdEndpoint},
		TLS:         &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool},
		DialTimeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// logBuffer collects everything the package logs, for leak checks, and
// passes it on to the test log.
type logBuffer struct {
	t  *testing.T
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func options(t *testing.T) (controlplane.Options, *logBuffer) {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", sb.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{t: t}
	return controlplane.Options{
		KnownHostsFile: sb.KnownHostsFile,
		Timeout:        30 * time.Second,
		ReadyTimeout:   2 * time.Minute,
		APIServer:      rc,
		Storage:        etcdStorage{newEtcd(t)},
		Logger:         slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}, logs
}

func loadCluster(t *testing.T) *cluster.Config {
	t.Helper()
	cfg, err := cluster.Load(sb.ClusterYML)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func connect(t *testing.T, cfg *cluster.Config, opts controlplane.Options) *controlplane.Cluster {
	t.Helper()
	c, err := controlplane.Connect(testCtx(t), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return c
}

func observe(t *testing.T, c *controlplane.Cluster) []controlplane.NodeState {
	t.Helper()
	states, err := c.Observe(testCtx(t))
	if err != nil {
		t.Fatalf("observe: %v", err)
	}
	return states
}

// hostFile is node i's provider file, seen from the host.
func hostFile(i int) string {
	return filepath.Join(sb.Nodes[i].Dir, "etc-kubernetes", "ssl", "encryption.yaml")
}

// dockerInspect is node i's kube-apiserver container as the docker CLI
// sees it: the independent view the tests check the package against.
type dockerView struct {
	ID         string          `json:"Id"`
	Image      string          `json:"Image"`
	Name       string          `json:"Name"`
	Config     json.RawMessage `json:"Config"`
	HostConfig json.RawMessage `json:"HostConfig"`
}

func dockerInspect(t *testing.T, i int) dockerView {
	t.Helper()
	out, err := sb.Docker(testCtx(t), i, "inspect", "kube-apiserver")
	if err != nil {
		t.Fatal(err)
	}
	var v []dockerView
	if err := json.Unmarshal([]byte(out), &v); err != nil || len(v) != 1 {
		t.Fatalf("docker inspect on %s: %v: %s", sb.Nodes[i].Name, err, out)
	}
	return v[0]
}

func containerNames(t *testing.T, i int) []string {
	t.Helper()
	out, err := sb.Docker(testCtx(t), i, "ps", "--all", "--format", "{{.Names}}")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(out)
}

// checkPristine fails unless every node is as the sandbox started it: no
// provider file, no flag, one container, ready.
func checkPristine(t *testing.T, c *controlplane.Cluster) {
	t.Helper()
	for i, s := range observe(t, c) {
		if s.File.Present || s.APIServer.EncryptionProviderConfig != "" || !s.Ready || !s.APIServer.Running {
			t.Errorf("%s is not back to its original state: file %s, flag %q, running %v, ready %v (%s)",
				s.Node, s.File, s.APIServer.EncryptionProviderConfig, s.APIServer.Running, s.Ready, s.NotReady)
		}
		if names := containerNames(t, i); !slices.Equal(names, []string{"kube-apiserver"}) {
			t.Errorf("%s has containers %v", s.Node, names)
		}
	}
}

func TestProviderFileOnEachNode(t *testing.T) {
	opts, _ := options(t)
	c := connect(t, loadCluster(t), opts)
	ctx := testCtx(t)
	nodes := c.Nodes()
	if len(nodes) != 3 {
		t.Fatalf("%d nodes", len(nodes))
	}
	content := func(i, round int) []byte { return fmt.Appendf(nil, "# %s, round %d\n", nodes[i].Name(), round) }

	for i, n := range nodes {
		if f, err := n.ReadProviderFile(ctx); err != nil || f.Present {
			t.Fatalf("%s before: %v, %v", n.Name(), f, err)
		}
		if err := n.WriteProviderFile(ctx, content(i, 1)); err != nil {
			t.Fatal(err)
		}
		// Each write lands on its own node only.
		for j := range nodes {
			data, err := os.ReadFile(hostFile(j))
			switch {
			case j <= i && (err != nil || !bytes.Equal(data, content(j, 1))):
				t.Errorf("after writing %s, %s holds %q (%v)", n.Name(), sb.Nodes[j].Name, data, err)
			case j > i && !errors.Is(err, os.ErrNotExist):
				t.Errorf("after writing %s, %s has a provider file: %v", n.Name(), sb.Nodes[j].Name, err)
			}
		}
		st, err := os.Stat(hostFile(i))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", n.Name(), st.Mode().Perm())
		}
	}
	// Overwrite one node; the others keep theirs.
	if err := nodes[1].WriteProviderFile(ctx, content(1, 2)); err != nil {
		t.Fatal(err)
	}
	states := observe(t, c)
	for i, s := range states {
		want := content(i, 1)
		if i == 1 {
			want = content(i, 2)
		}
		f, err := nodes[i].ReadProviderFile(ctx)
		if err != nil || !f.Present || !bytes.Equal(f.Data, want) {
			t.Errorf("%s reads %q (%v)", s.Node, f.Data, err)
		}
		if s.File.SHA256 != f.SHA256 || !s.Ready || s.APIServer.EncryptionProviderConfig != "" {
			t.Errorf("%s observed as %+v", s.Node, s)
		}
		if strings.Contains(fmt.Sprint(s), string(want)) || strings.Contains(fmt.Sprintf("%#v", s.File), string(want)) {
			t.Errorf("%s: the state prints the file's bytes", s.Node)
		}
		// No temporary file is left beside it.
		entries, _ := os.ReadDir(filepath.Dir(hostFile(i)))
		for _, e := range entries {
			// The lock and the fence token stay, by design.
			if strings.Contains(e.Name(), "atrest") && e.Name() != ".atrest-lock" && e.Name() != ".atrest-fence" {
				t.Errorf("%s: leftover %s", s.Node, e.Name())
			}
		}
	}
	// Read again, each file unchanged: only its hash is sent. A hand
	// edit is sent again.
	for i, n := range nodes {
		before := controlplane.FileFetches(n)
		if f, err := n.ReadProviderFile(ctx); err != nil || !f.Present || controlplane.FileFetches(n) != before {
			t.Errorf("%s: reading an unchanged file sent it again (%d fetches, were %d): %v", n.Name(), controlplane.FileFetches(n), before, err)
		}
		if i == 0 {
			if err := os.WriteFile(hostFile(i), []byte("# by hand\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if f, err := n.ReadProviderFile(ctx); err != nil || string(f.Data) != "# by hand\n" || controlplane.FileFetches(n) != before+1 {
				t.Errorf("%s after a hand edit reads %q (%v)", n.Name(), f.Data, err)
			}
		}
	}
	for i, n := range nodes {
		if err := n.RemoveProviderFile(ctx); err != nil {
			t.Fatal(err)
		}
		if err := n.RemoveProviderFile(ctx); err != nil {
			t.Fatalf("removing a removed file: %v", err)
		}
		if _, err := os.Stat(hostFile(i)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: file still there: %v", n.Name(), err)
		}
	}
	checkPristine(t, c)
}

// identityOnly is a provider file that changes nothing kube-apiserver
// writes: enough to switch the flag on.
const identityOnly = `apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - identity: {}
`

func TestFlagOnAndOffByRecreation(t *testing.T) {
	opts, _ := options(t)
	c := connect(t, loadCluster(t), opts)
	ctx := testCtx(t)
	const i = 1
	n := c.Nodes()[i]
	before := dockerInspect(t, i)
	a0, err := n.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a0.EncryptionProviderConfig != "" || a0.AutomaticReload || !a0.Running || a0.ProviderFileInContainer != "/etc/kubernetes/ssl/encryption.yaml" {
		t.Fatalf("before: %+v", a0)
	}
	if err := n.WriteProviderFile(ctx, []byte(identityOnly)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		_ = n.SetProviderConfigFlag(ctx, false)
		_ = n.RemoveProviderFile(ctx)
	})
	// A replacement left by an interrupted run is cleaned up first.
	if _, err := sb.Docker(ctx, i, "create", "--name=kube-apiserver-atrest-next", sb.KubeAPIServerImage(), "/usr/local/bin/kube-apiserver"); err != nil {
		t.Fatal(err)
	}

	if err := n.SetProviderConfigFlag(ctx, true); err != nil {
		t.Fatal(err)
	}
	on := dockerInspect(t, i)
	a1, err := n.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !a1.ProviderConfigSet() || a1.EncryptionProviderConfig != "/etc/kubernetes/ssl/encryption.yaml" || !a1.Running {
		t.Errorf("flag on: %+v", a1)
	}
	if on.ID == before.ID || a1.ContainerID != on.ID {
		t.Errorf("the container was not replaced: %s -> %s", before.ID, on.ID)
	}
	wantArgs := append(slices.Clone(a0.Args), "--encryption-provider-config=/etc/kubernetes/ssl/encryption.yaml")
	if !slices.Equal(a1.Args, wantArgs) {
		t.Errorf("flag on: args\n%q\nwant\n%q", a1.Args, wantArgs)
	}
	sameContainer(t, before, on)
	if names := containerNames(t, i); !slices.Equal(names, []string{"kube-apiserver"}) {
		t.Errorf("containers after flag on: %v", names)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	if err := n.SetProviderConfigFlag(ctx, true); err != nil {
		t.Fatal(err)
	}
	if again := dockerInspect(t, i); again.ID != on.ID {
		t.Error("setting a set flag replaced the container")
	}

	if err := n.SetProviderConfigFlag(ctx, false); err != nil {
		t.Fatal(err)
	}
	off := dockerInspect(t, i)
	a2, err := n.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a2.EncryptionProviderConfig != "" || !slices.Equal(a2.Args, a0.Args) || off.ID == on.ID {
		t.Errorf("flag off: %+v", a2)
	}
	sameContainer(t, before, off)
	if err := n.RemoveProviderFile(ctx); err != nil {
		t.Fatal(err)
	}

	// A run interrupted after stopping and renaming the old container:
	// the node has no kube-apiserver, and the next change puts it back.
	for _, args := range [][]string{{"stop", "kube-apiserver"}, {"rename", "kube-apiserver", "kube-apiserver-atrest-prev"}} {
		if _, err := sb.Docker(ctx, i, args...); err != nil {
			t.Fatal(err)
		}
	}
	_, err = n.Inspect(ctx)
	if !errors.Is(err, controlplane.ErrContainerMissing) || !strings.Contains(err.Error(), "kube-apiserver-atrest-prev") {
		t.Errorf("inspect with the container renamed away: %v", err)
	}
	if err := n.SetProviderConfigFlag(ctx, false); err != nil {
		t.Fatal(err)
	}
	if back := dockerInspect(t, i); back.ID != off.ID {
		t.Errorf("another container came back: %s, want %s", back.ID, off.ID)
	}
	checkPristine(t, c)
}

func TestConnectThroughBastion(t *testing.T) {
	opts, _ := options(t)
	cfg := loadCluster(t)
	// node1 doubles as the bastion: every node, itself included, is
	// reached through its SSH server.
	cfg.BastionHost = &cluster.Bastion{Address: sb.Nodes[0].Address, Port: 22, User: "root", SSHKeyPath: sb.SSHKeyFile}
	c := connect(t, cfg, opts)
	for _, s := range observe(t, c) {
		if !s.Ready || !s.APIServer.Running {
			t.Errorf("%s through the bastion: %+v", s.Node, s)
		}
	}
}

// sameContainer fails unless b runs as a does, but for the command:
// image, binds, env, network mode, restart policy, labels, everything.
func sameContainer(t *testing.T, a, b dockerView) {
	t.Helper()
	if a.Image != b.Image || a.Name != b.Name {
		t.Errorf("image or name changed: %s %s -> %s %s", a.Image, a.Name, b.Image, b.Name)
	}
	if !jsonEqual(a.HostConfig, b.HostConfig) {
		t.Errorf("HostConfig changed:\n%s\n%s", a.HostConfig, b.HostConfig)
	}
	var ac, bc map[string]any
	_ = json.Unmarshal(a.Config, &ac)
	_ = json.Unmarshal(b.Config, &bc)
	for _, m := range []map[string]any{ac, bc} {
		delete(m, "Cmd")
		delete(m, "Hostname") // Docker sets the host's name; it does not come from the old container
	}
	if !jsonEqual(mustJSON(ac), mustJSON(bc)) {
		t.Errorf("Config changed beyond the command:\n%s\n%s", mustJSON(ac), mustJSON(bc))
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return bytes.Equal(mustJSON(x), mustJSON(y))
}

// kubeDelete deletes a secret through node 1 as cluster admin.
func kubeDelete(t *testing.T, ns, name string) {
	t.Helper()
	client, err := sb.AdminClient()
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(testCtx(t), http.MethodDelete, sb.Nodes[0].APIServerURL+"/api/v1/namespaces/"+ns+"/secrets/"+name, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
		t.Fatalf("delete secret %s/%s: %s", ns, name, resp.Status)
	}
}

func TestRollingApplyAESCBC(t *testing.T) {
	opts, logs := options(t)
	c := connect(t, loadCluster(t), opts)
	ctx := testCtx(t)
	before := observe(t, c)
	key, err := cluster.NewKey(cluster.AESCBC, nil)
	if err != nil {
		t.Fatal(err)
	}
	file, err := cluster.ManagedConfig{Keys: []cluster.Key{key}}.Render()
	if err != nil {
		t.Fatal(err)
	}
	var errs []error
	keys := []cluster.Key{key}
	t.Cleanup(func() {
		// Take the key away only after removing what only it can read.
		kubeDelete(t, controlplane.CanaryNamespace, controlplane.CanaryName)
		if err := c.RollingRemove(context.Background()); err != nil {
			t.Errorf("rolling remove: %v", err)
			errs = append(errs, err)
		}
		after := observe(t, c)
		for i := range after {
			if !slices.Equal(after[i].APIServer.Args, before[i].APIServer.Args) {
				t.Errorf("%s: args after removal differ from the original:\n%q\n%q", after[i].Node, after[i].APIServer.Args, before[i].APIServer.Args)
			}
		}
		checkPristine(t, c)
		noKeyMaterial(t, keys, logs.String(), errs)
	})

	if err := c.RollingApply(ctx, file, key.Prefix()); err != nil {
		errs = append(errs, err)
		t.Fatal(err)
	}
	states := observe(t, c)
	want := sha256Hex(file)
	for _, s := range states {
		if s.File.SHA256 != want || !s.APIServer.ProviderConfigSet() || !s.Ready {
			t.Errorf("%s after the rollout: %+v", s.Node, s)
		}
	}
	for _, n := range c.Nodes() {
		got, err := n.Canary(ctx)
		if err != nil {
			errs = append(errs, err)
			t.Fatal(err)
		}
		if got != "aescbc:v1:"+key.Name {
			t.Errorf("%s writes the canary as %s, want aescbc:v1:%s", n.Name(), got, key.Name)
		}
	}
	// Running it again changes nothing: every node already runs the file.
	ids := map[string]string{}
	for _, s := range states {
		ids[s.Node] = s.APIServer.ContainerID
	}
	if err := c.RollingApply(ctx, file, key.Prefix()); err != nil {
		errs = append(errs, err)
		t.Fatal(err)
	}
	for _, s := range observe(t, c) {
		if s.APIServer.ContainerID != ids[s.Node] {
			t.Errorf("%s: a second identical rollout replaced the container", s.Node)
		}
	}

	// The first change set the reload flag beside the provider config:
	// that was each node's one restart.
	for _, s := range states {
		if !s.APIServer.AutomaticReload {
			t.Errorf("%s runs without --encryption-provider-config-automatic-reload after the first change", s.Node)
		}
	}

	// A rotation: every node reloads the file without a restart (same
	// container, same start), proven by its metrics, then writes with the
	// new key.
	key2, err := cluster.NewKey(cluster.AESCBC, []string{key.Name})
	if err != nil {
		t.Fatal(err)
	}
	keys = append(keys, key2)
	file2, err := cluster.ManagedConfig{Keys: []cluster.Key{key2, key}}.Render()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.RollingApply(ctx, file2, key2.Prefix()); err != nil {
		errs = append(errs, err)
		t.Fatal(err)
	}
	for i, s := range observe(t, c) {
		if s.APIServer.ContainerID != ids[s.Node] || !s.APIServer.StartedAt.Equal(states[i].APIServer.StartedAt) {
			t.Errorf("%s: kube-apiserver was restarted or replaced for a reload", s.Node)
		}
		if s.File.SHA256 != sha256Hex(file2) || !s.Ready || s.Load != controlplane.LoadInForce {
			t.Errorf("%s after the rotation: %+v", s.Node, s)
		}
	}
	if !strings.Contains(logs.String(), "without a restart") {
		t.Error("the rotation did not take the reload path")
	}

	// A file kube-apiserver refuses on reload (a KMS plugin that is not
	// there: the health check of new transformers fails) is put back on
	// every node, without a restart, and the error says which.
	refused := strings.Replace(string(file2), "  - identity: {}\n", `  - kms:
      apiVersion: v2
      name: missing-plugin
      endpoint: unix:///run/atrest-no-such-kms-plugin.sock
      timeout: 3s
  - identity: {}
`, 1)
	if _, err := cluster.ParseEncryptionConfig("refused", "", []byte(refused), ""); err != nil {
		t.Fatalf("the refused file does not parse: %v", err)
	}
	err = c.RollingApply(ctx, []byte(refused), key2.Prefix())
	if err == nil {
		t.Fatal("a file kube-apiserver refuses was reloaded")
	}
	t.Log(err)
	errs = append(errs, err)
	var re *controlplane.ReloadError
	if !errors.As(err, &re) || len(re.Reverted) != 3 || re.Revert != nil || !errors.Is(err, controlplane.ErrConfigRefused) || errors.Is(err, controlplane.ErrRollbackFailed) {
		t.Fatalf("error: %#v", err)
	}
	if !strings.Contains(err.Error(), "kube-apiserver says") {
		t.Error("the error does not give kube-apiserver's reason")
	}
	for i, s := range observe(t, c) {
		if s.APIServer.ContainerID != ids[s.Node] || !s.APIServer.StartedAt.Equal(states[i].APIServer.StartedAt) {
			t.Errorf("%s: kube-apiserver was restarted or replaced", s.Node)
		}
		if s.File.SHA256 != sha256Hex(file2) || s.Load != controlplane.LoadInForce {
			t.Errorf("%s: the previous file is not back in force: %+v", s.Node, s)
		}
	}
	for _, n := range c.Nodes() {
		if got, err := n.Canary(ctx); err != nil || got != key2.Prefix() {
			t.Errorf("%s writes the canary as %s (%v) after the revert, want %s", n.Name(), got, err, key2.Prefix())
		}
	}
}

// noKeyMaterial fails if a key appears in the logs or errors.
func noKeyMaterial(t *testing.T, keys []cluster.Key, logs string, errs []error) {
	t.Helper()
	var forms []string
	for _, k := range keys {
		forms = append(forms, base64.StdEncoding.EncodeToString(k.Secret.Bytes()), string(k.Secret.Bytes()))
	}
	texts := []string{logs}
	for _, err := range errs {
		texts = append(texts, err.Error())
	}
	for _, text := range texts {
		for _, f := range forms {
			if strings.Contains(text, f) {
				t.Fatal("key material in the logs or errors")
			}
		}
	}
	if !strings.Contains(logs, "provider file in effect") {
		t.Error("the leak check saw no logs")
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// kmsMissingSocket passes validation, but kube-apiserver waits for a KMS
// plugin that is not there and never becomes ready.
const kmsMissingSocket = `apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - kms:
          apiVersion: v2
          name: missing-plugin
          endpoint: unix:///run/atrest-no-such-kms-plugin.sock
          timeout: 3s
      - identity: {}
`

func TestRollingApplyRejectedConfigIsRolledBack(t *testing.T) {
	opts, _ := options(t)
	opts.ReadyTimeout = 45 * time.Second
	c := connect(t, loadCluster(t), opts)
	ctx := testCtx(t)
	before := observe(t, c)

	err := c.RollingApply(ctx, []byte(kmsMissingSocket), "kms:v2:missing-plugin")
	if err == nil {
		t.Fatal("a config kube-apiserver cannot start with was applied")
	}
	t.Log(err)
	var re *controlplane.RolloutError
	if !errors.As(err, &re) || re.Node != "node1" || !slices.Equal(re.Untouched, []string{"node2", "node3"}) || len(re.Done) != 0 || !re.Changed {
		t.Fatalf("error: %#v", re)
	}
	for _, kind := range []error{controlplane.ErrRolledBack, controlplane.ErrNotReady} {
		if !errors.Is(err, kind) {
			t.Errorf("error is not %v", kind)
		}
	}
	if errors.Is(err, controlplane.ErrRollbackFailed) {
		t.Error("rollback failed")
	}
	for _, want := range []string{"node1", "rolled back", "left untouched", "node2, node3", "container log"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q", want)
		}
	}
	// Node 1 is back as it was (same container: the replacement was
	// dropped), and the others were never touched.
	after := observe(t, c)
	for i := range after {
		if after[i].APIServer.ContainerID != before[i].APIServer.ContainerID {
			t.Errorf("%s: container %s, was %s", after[i].Node, after[i].APIServer.ContainerID, before[i].APIServer.ContainerID)
		}
	}
	checkPristine(t, c)
}

func TestChangedHostKeyIsRefused(t *testing.T) {
	opts, _ := options(t)
	cfg := loadCluster(t)
	real := knownKeys(t)
	dir := t.TempDir()

	// node1: hashed, and only its ECDSA key: must be accepted.
	// node2: other keys than its own: must be refused as changed.
	// node3: not listed: must be refused as unknown.
	var lines []string
	for _, k := range real[sb.Nodes[0].Address] {
		if k.Type() == ssh.KeyAlgoECDSA256 {
			lines = append(lines, knownhosts.Line([]string{knownhosts.HashHostname(sb.Nodes[0].Address)}, k))
		}
	}
	for _, k := range []ssh.PublicKey{newHostKey(t, "ed25519"), newHostKey(t, "ecdsa")} {
		lines = append(lines, knownhosts.Line([]string{sb.Nodes[1].Address}, k))
	}
	opts.KnownHostsFile = filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(opts.KnownHostsFile, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	_, err := controlplane.Connect(testCtx(t), cfg, opts)
	if err == nil {
		t.Fatal("connected to nodes with a changed and an unknown host key")
	}
	t.Log(err)
	if !errors.Is(err, controlplane.ErrHostKey) {
		t.Error("not ErrHostKey")
	}
	var he *controlplane.HostKeyError
	if !errors.As(err, &he) {
		t.Fatal("no HostKeyError")
	}
	msg := err.Error()
	if strings.Contains(msg, "node1") {
		t.Error("node1 (hashed entry, ECDSA only) was refused")
	}
	if !strings.Contains(msg, "node2") || !strings.Contains(msg, "CHANGED") || !strings.Contains(msg, "node3") || !strings.Contains(msg, "unknown") {
		t.Error("the error does not name node2 as changed and node3 as unknown")
	}
	for _, node := range sb.Nodes[1:] {
		found := false
		for _, k := range real[node.Address] {
			found = found || strings.Contains(msg, ssh.FingerprintSHA256(k))
		}
		if !found {
			t.Errorf("the error does not show the fingerprint %s presented", node.Name)
		}
	}

	// node1 alone connects: hashed entries and a key type other than the
	// server's favourite work.
	one := *cfg
	one.Nodes = cfg.Nodes[:1]
	c, err := controlplane.Connect(testCtx(t), &one, opts)
	if err != nil {
		t.Fatalf("node1 with a hashed ECDSA-only entry: %v", err)
	}
	c.Close()

	// A key the node does not accept: auth refused, naming the node.
	opts.KeyFile = filepath.Join(dir, "other_key")
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, _ := ssh.MarshalPrivateKey(priv, "")
	if err := os.WriteFile(opts.KeyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = controlplane.Connect(testCtx(t), &one, opts)
	if !errors.Is(err, controlplane.ErrAuthRefused) || !strings.Contains(err.Error(), "node1") {
		t.Errorf("connect with a key the node does not accept: %v", err)
	}
}

// knownKeys reads the sandbox's known_hosts: address -> host keys.
func knownKeys(t *testing.T) map[string][]ssh.PublicKey {
	t.Helper()
	data, err := os.ReadFile(sb.KnownHostsFile)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]ssh.PublicKey{}
	for len(data) > 0 {
		_, hosts, key, _, rest, err := ssh.ParseKnownHosts(data)
		if err != nil {
			break
		}
		for _, h := range hosts {
			out[h] = append(out[h], key)
		}
		data = rest
	}
	return out
}

func newHostKey(t *testing.T, kind string) ssh.PublicKey {
	t.Helper()
	var pub any
	switch kind {
	case "ed25519":
		p, _, _ := ed25519.GenerateKey(rand.Reader)
		pub = p
	default:
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		pub = &k.PublicKey
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestNodeDownChangesNothing(t *testing.T) {
	opts, _ := options(t)
	good := connect(t, loadCluster(t), opts)
	before := observe(t, good)

	cfg := loadCluster(t)
	// node4 is down: nothing listens at its address. node3's Docker does
	// not answer at the socket cluster.yml names.
	down := cfg.Nodes[0]
	down.Address = strings.TrimSuffix(sb.Nodes[0].Address, ".11") + ".19"
	down.HostnameOverride = "node4"
	cfg.Nodes = append(cfg.Nodes, down)
	cfg.Nodes[2].DockerSocket = "/var/run/no-such-docker.sock"

	_, err := controlplane.Connect(testCtx(t), cfg, opts)
	if err == nil {
		t.Fatal("connected to a cluster with a node down")
	}
	t.Log(err)
	msg := err.Error()
	for _, want := range []string{"2 of 4", "node4", down.Address, "unreachable", "node3", "docker", "/var/run/no-such-docker.sock", "nothing was changed"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error does not say %q", want)
		}
	}
	if strings.Contains(msg, "node1:") || strings.Contains(msg, "node2:") {
		t.Error("the error blames a healthy node")
	}
	if !errors.Is(err, controlplane.ErrUnreachable) || !errors.Is(err, controlplane.ErrDocker) {
		t.Error("the error is not ErrUnreachable and ErrDocker")
	}
	after := observe(t, good)
	for i := range after {
		if after[i].APIServer.ContainerID != before[i].APIServer.ContainerID || after[i].File.SHA256 != before[i].File.SHA256 || !after[i].Ready {
			t.Errorf("%s changed: %+v -> %+v", after[i].Node, before[i], after[i])
		}
	}
	checkPristine(t, good)
}
