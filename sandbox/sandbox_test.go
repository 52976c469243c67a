//go:build sandbox

package sandbox_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/atrest-io/atrest/sandbox"
	"github.com/atrest-io/atrest/sandbox/sandboxtest"
	"github.com/atrest-io/atrest/settings"
)

var sb *sandbox.Sandbox

func TestMain(m *testing.M) {
	os.Exit(sandboxtest.Main(m, sandbox.Options{Nodes: 3}, &sb))
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return c
}

// kubeDo calls node i's kube-apiserver as cluster admin.
func kubeDo(t *testing.T, i int, method, path string, body any) (int, []byte) {
	t.Helper()
	c, err := sb.AdminClient()
	if err != nil {
		t.Fatal(err)
	}
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequestWithContext(ctx(t), method, sb.Nodes[i].APIServerURL+path, r)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s on %s: %v", method, path, sb.Nodes[i].Name, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

func createSecret(t *testing.T, node int, name, value string) {
	t.Helper()
	code, body := kubeDo(t, node, http.MethodPost, "/api/v1/namespaces/default/secrets", map[string]any{
		"metadata":   map[string]string{"name": name},
		"stringData": map[string]string{"value": value},
	})
	if code != http.StatusCreated {
		t.Fatalf("create secret %s: %d %s", name, code, body)
	}
}

func readSecret(t *testing.T, node int, name string) string {
	t.Helper()
	code, body := kubeDo(t, node, http.MethodGet, "/api/v1/namespaces/default/secrets/"+name, nil)
	if code != http.StatusOK {
		t.Fatalf("read secret %s through %s: %d %s", name, sb.Nodes[node].Name, code, body)
	}
	var s struct {
		Data map[string][]byte `json:"data"`
	}
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatal(err)
	}
	return string(s.Data["value"])
}

func TestSecretReadThroughEveryNode(t *testing.T) {
	createSecret(t, 0, "shared", "written-by-node1")
	for i := range sb.Nodes {
		if got := readSecret(t, i, "shared"); got != "written-by-node1" {
			t.Errorf("%s reads %q", sb.Nodes[i].Name, got)
		}
	}
}

func sshClient(t *testing.T, node int) *ssh.Client {
	t.Helper()
	key, err := os.ReadFile(sb.SSHKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	hostKeys, err := knownhosts.New(sb.KnownHostsFile)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ssh.Dial("tcp", sb.Nodes[node].Address+":22", &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: hostKeys,
		Timeout:         10 * time.Second,
	})
	if err != nil {
		t.Fatalf("ssh to %s: %v", sb.Nodes[node].Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func run(t *testing.T, c *ssh.Client, cmd string) string {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.CombinedOutput(cmd)
	if err != nil {
		t.Fatalf("%s: %v: %s", cmd, err, out)
	}
	return string(out)
}

func TestEachNodeHasItsOwnEtcKubernetes(t *testing.T) {
	for _, n := range sb.Nodes {
		if err := os.WriteFile(filepath.Join(n.Dir, "etc-kubernetes", "whoami"), []byte(n.Name), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c := sshClient(t, 1)
	if got := run(t, c, "cat /etc/kubernetes/whoami"); got != "node2" {
		t.Errorf("node2 sees /etc/kubernetes/whoami = %q", got)
	}
	// A file written over SSH on node 2 lands in node 2's directory only.
	run(t, c, "echo from-ssh > /etc/kubernetes/ssh-was-here")
	if _, err := os.Stat(filepath.Join(sb.Nodes[1].Dir, "etc-kubernetes", "ssh-was-here")); err != nil {
		t.Errorf("node2's write is not in node2's directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(sb.Nodes[0].Dir, "etc-kubernetes", "ssh-was-here")); err == nil {
		t.Error("node2's write reached node1")
	}
}

func TestSSHRefusesUnknownHostKey(t *testing.T) {
	// known_hosts with node 1's keys listed under node 2's address: node 2's
	// real key does not match and the connection must be refused.
	data, err := os.ReadFile(sb.KnownHostsFile)
	if err != nil {
		t.Fatal(err)
	}
	var wrong []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, sb.Nodes[0].Address+" ") {
			wrong = append(wrong, strings.Replace(line, sb.Nodes[0].Address, sb.Nodes[1].Address, 1))
		}
	}
	file := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(file, []byte(strings.Join(wrong, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hostKeys, _ := knownhosts.New(file)
	key, _ := os.ReadFile(sb.SSHKeyFile)
	signer, _ := ssh.ParsePrivateKey(key)
	_, err = ssh.Dial("tcp", sb.Nodes[1].Address+":22", &ssh.ClientConfig{
		User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: hostKeys, Timeout: 10 * time.Second,
	})
	if err == nil || !strings.Contains(err.Error(), "key mismatch") {
		t.Fatalf("connection with a wrong host key: %v", err)
	}
}

// dockerOverSSH is an HTTP client for node i's Docker engine, reached as
// RKE reaches it: a Unix-socket forward over the node's SSH connection.
func dockerOverSSH(t *testing.T, node int) *http.Client {
	c := sshClient(t, node)
	return &http.Client{Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			return c.Dial("unix", "/var/run/docker.sock")
		},
	}, Timeout: time.Minute}
}

func TestDockerOverSSHRestartsAPIServer(t *testing.T) {
	d := dockerOverSSH(t, 1)
	resp, err := d.Get("http://docker/containers/json")
	if err != nil {
		t.Fatal(err)
	}
	var list []struct {
		Names []string
		State string
	}
	err = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Names[0] != "/kube-apiserver" || list[0].State != "running" {
		t.Fatalf("node2 containers: %+v", list)
	}
	resp, err = d.Post("http://docker/containers/kube-apiserver/restart?t=10", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("restart: %s", resp.Status)
	}
	if err := sb.WaitReady(ctx(t), 1, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
}

func etcdClient(t *testing.T) *clientv3.Client {
	t.Helper()
	c, err := sb.EtcdClient()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestEncryptionConfigOnNode1(t *testing.T) {
	const keyName = "k-sbx01"
	config := `apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - aescbc:
          keys:
            - name: ` + keyName + `
              secret: RTczRjFDODMwQzAyMDVBREU4NDJBMUZFNDhCNzM5N0I=
      - identity: {}
`
	file := filepath.Join(sb.Nodes[0].Dir, "etc-kubernetes", "ssl", "encryption.yaml")
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	recreate := func(extra ...string) {
		t.Helper()
		if err := sb.RecreateAPIServer(ctx(t), 0, extra...); err != nil {
			t.Fatal(err)
		}
	}
	recreate(sandbox.ProviderConfigFlag)
	t.Cleanup(func() { recreate() })
	// Before node 1 loses the key (cleanups run last first): remove what
	// only it can read, or every apiserver's watch cache chokes on it.
	t.Cleanup(func() {
		if code, body := kubeDo(t, 0, http.MethodDelete, "/api/v1/namespaces/default/secrets/encrypted-by-node1", nil); code != http.StatusOK {
			t.Errorf("delete encrypted secret: %d %s", code, body)
		}
	})

	createSecret(t, 0, "encrypted-by-node1", "top-secret")
	resp, err := etcdClient(t).Get(ctx(t), sb.EtcdPrefix+"/secrets/default/encrypted-by-node1")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("etcd has %d values for the secret", len(resp.Kvs))
	}
	raw := resp.Kvs[0].Value
	if want := "k8s:enc:aescbc:v1:" + keyName + ":"; !bytes.HasPrefix(raw, []byte(want)) {
		t.Fatalf("stored value starts %q, want %q", raw[:min(len(raw), 40)], want)
	}
	if bytes.Contains(raw, []byte("top-secret")) {
		t.Fatal("plaintext in etcd")
	}
	// Node 2 has no key: it cannot read what node 1 encrypted.
	if code, _ := kubeDo(t, 1, http.MethodGet, "/api/v1/namespaces/default/secrets/encrypted-by-node1", nil); code == http.StatusOK {
		t.Error("node2 read a secret encrypted with a key it does not have")
	}
	if got := readSecret(t, 0, "encrypted-by-node1"); got != "top-secret" {
		t.Errorf("node1 reads %q", got)
	}
}

func TestGitCloneOverSSHAndHTTP(t *testing.T) {
	dir := t.TempDir()
	gitEnv := append(os.Environ(),
		fmt.Sprintf("GIT_SSH_COMMAND=ssh -i %s -o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o BatchMode=yes", sb.Git.SSHKeyFile, sb.KnownHostsFile),
		"GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=/bin/false")
	gitRun := func(args ...string) ([]byte, error) {
		cmd := exec.Command("git", args...)
		cmd.Env = gitEnv
		return cmd.CombinedOutput()
	}
	if out, err := gitRun("clone", "--quiet", sb.Git.SSHURL, filepath.Join(dir, "ssh")); err != nil {
		t.Fatalf("clone over SSH: %v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "ssh", "cluster.yml")); err != nil {
		t.Errorf("cluster.yml not in the clone: %v", err)
	}
	pw, _ := os.ReadFile(sb.Git.PasswordFile)
	withAuth := strings.Replace(sb.Git.HTTPURL, "http://", "http://"+sb.Git.Username+":"+string(pw)+"@", 1)
	if out, err := gitRun("clone", "--quiet", withAuth, filepath.Join(dir, "http")); err != nil {
		t.Fatalf("clone over HTTP: %v: %s", err, out)
	}
	wrong := strings.Replace(sb.Git.HTTPURL, "http://", "http://"+sb.Git.Username+":wrong@", 1)
	out, err := gitRun("clone", "--quiet", wrong, filepath.Join(dir, "wrong"))
	if err == nil || !strings.Contains(string(out), "Authentication failed") {
		t.Fatalf("clone with a wrong password: %v: %s", err, out)
	}
}

func TestOutputs(t *testing.T) {
	fs := newFlagSet()
	l := settings.Bind(fs)
	if err := fs.Parse([]string{"--settings", sb.SettingsFile}); err != nil {
		t.Fatal(err)
	}
	s, err := l.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(settings.NeedGit, settings.NeedVault, settings.NeedEtcd, settings.NeedKubernetes, settings.NeedSSH, settings.NeedSnapshots, settings.NeedListen); err != nil {
		t.Fatalf("the sandbox's settings.yaml is not valid: %v", err)
	}
	// The plain-http Vault is allowed by name, and only then.
	if s.Vault.InsecureAllowHTTP != sb.Vault.PlainHTTP() || s.Vault.InsecureSkipTLSVerify || s.Etcd.InsecureAllowHTTP || s.Kubernetes.InsecureSkipTLSVerify || s.Kubernetes.InsecureAllowHTTP {
		t.Errorf("the sandbox's settings allow %+v %+v %+v for Vault at %s", s.Vault, s.Etcd, s.Kubernetes, sb.Vault.Address)
	}
	// The tests and the demo rotate every few seconds and disable.
	if s.Policy.MinRotationInterval != 10*time.Second || !s.Policy.AllowDisable {
		t.Errorf("the sandbox's policy settings: %+v, want minRotationInterval 10s and allowDisable", s.Policy)
	}
	out, err := exec.Command("go", "run", "../cmd/atrest", "validate", "--config", sb.ClusterYML).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "3 controlplane node(s) (node1, node2, node3), encryption disabled") {
		t.Fatalf("atrest validate of the sandbox cluster.yml: %v: %s", err, out)
	}
	// Every file that holds a key or a token is 0600.
	for _, f := range []string{sb.SSHKeyFile, sb.AdminKey, sb.EtcdKeyFile, sb.Vault.TokenFile, sb.Git.PasswordFile} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", f, st.Mode().Perm())
		}
	}
}

func TestVaultAnswers(t *testing.T) {
	token, _ := os.ReadFile(sb.Vault.TokenFile)
	req, _ := http.NewRequestWithContext(ctx(t), http.MethodGet, sb.Vault.Address+"/v1/sys/auth", nil)
	req.Header.Set("X-Vault-Token", strings.TrimSpace(string(token)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var auths map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&auths)
	if _, ok := auths["kubernetes/"]; !ok {
		t.Fatalf("kubernetes auth is not enabled: %v", auths)
	}
}

// identityLeases returns the host name label of every kube-apiserver
// identity Lease, read through node i, by lease name.
func identityLeases(t *testing.T, i int) map[string]string {
	t.Helper()
	code, body := kubeDo(t, i, http.MethodGet, "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases?labelSelector=apiserver.kubernetes.io%2Fidentity%3Dkube-apiserver", nil)
	if code != http.StatusOK {
		t.Fatalf("list leases: %d %s", code, body)
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name   string            `json:"name"`
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
		} `json:"items"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range list.Items {
		out[l.Metadata.Name] = l.Metadata.Labels["kubernetes.io/hostname"]
	}
	return out
}

// eventually retries check every half second until it returns "" or
// timeout passes, then fails with what it last returned.
func eventually(t *testing.T, timeout time.Duration, check func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, msg)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func hostSet(leases map[string]string) []string {
	var hosts []string
	for _, h := range leases {
		hosts = append(hosts, h)
	}
	slices.Sort(hosts)
	return hosts
}

func TestEachNodeHasItsOwnHostName(t *testing.T) {
	var want []string
	for i, n := range sb.Nodes {
		want = append(want, n.Name)
		if got := strings.TrimSpace(run(t, sshClient(t, i), "uname -n")); got != n.Name {
			t.Errorf("%s: uname -n over SSH says %q", n.Name, got)
		}
		// As on an RKE node, Docker gives the host-network container
		// the host's name.
		out, err := sb.Docker(ctx(t), i, "inspect", "--format", "{{.Config.Hostname}} {{.HostConfig.UTSMode}}", "kube-apiserver")
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(out); got != n.Name {
			t.Errorf("%s: the kube-apiserver container's host name and UTS mode: %q", n.Name, got)
		}
	}
	if h, _ := os.Hostname(); slices.Contains(want, h) {
		t.Fatalf("the machine itself is called %s: the test proves nothing", h)
	}
	// What kube-apiserver itself sees: the host name on its identity Lease.
	eventually(t, time.Minute, func() string {
		if got := hostSet(identityLeases(t, 0)); !slices.Equal(got, want) {
			return fmt.Sprintf("identity leases name the hosts %q, want %q", got, want)
		}
		return ""
	})
}

func TestStrayAPIServer(t *testing.T) {
	stray, err := sb.StartStrayAPIServer(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stray.Stop(); err != nil {
			t.Error(err)
		}
	})
	for _, n := range sb.Nodes {
		if stray.Name == n.Name || stray.Address == n.Address {
			t.Fatalf("the stray %s at %s is also node %s at %s", stray.Name, stray.Address, n.Name, n.Address)
		}
	}
	state := func() string {
		data, err := os.ReadFile(filepath.Join(sb.Dir, "sandbox.json"))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	if !strings.Contains(state(), stray.Name+" kube-apiserver") {
		t.Error("the stray is not in the sandbox's state file: a crash would leave it running")
	}
	// It serves the same cluster: it reads what a node wrote.
	createSecret(t, 0, "seen-by-stray", "written-by-node1")
	t.Cleanup(func() { kubeDo(t, 0, http.MethodDelete, "/api/v1/namespaces/default/secrets/seen-by-stray", nil) })
	code, body := strayDo(t, stray, "/api/v1/namespaces/default/secrets/seen-by-stray")
	if code != http.StatusOK || !strings.Contains(string(body), base64Std("written-by-node1")) {
		t.Errorf("read through the stray: %d %s", code, body)
	}
	eventually(t, time.Minute, func() string {
		if got := hostSet(identityLeases(t, 0)); !slices.Contains(got, stray.Name) {
			return fmt.Sprintf("no identity lease names the stray's host %s: %q", stray.Name, got)
		}
		return ""
	})

	if err := stray.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := stray.Stop(); err != nil {
		t.Errorf("second stop: %v", err)
	}
	if c, err := net.DialTimeout("tcp", stray.Address+":6443", time.Second); err == nil {
		c.Close()
		t.Error("the stray still listens after Stop")
	}
	if strings.Contains(state(), stray.Name+" kube-apiserver") {
		t.Error("the stopped stray is still in the sandbox's state file")
	}
	// kube-apiserver (v1.35+) deletes its identity lease when it shuts
	// down cleanly: the stop gave it the time to.
	eventually(t, 30*time.Second, func() string {
		if got := hostSet(identityLeases(t, 0)); slices.Contains(got, stray.Name) {
			return fmt.Sprintf("the stopped stray's lease is still there: %q", got)
		}
		return ""
	})
}

func strayDo(t *testing.T, s *sandbox.StrayAPIServer, path string) (int, []byte) {
	t.Helper()
	c, err := sb.AdminClient()
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx(t), http.MethodGet, s.APIServerURL+path, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s on %s: %v", path, s.Name, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

func base64Std(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
