package main

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/atrest-io/atrest/settings/settingstest"
)

// A kubeconfig that does not verify the API is refused, naming the file,
// its cluster and the fix, unless a DANGEROUS setting allows it; then it
// is warned about.
func TestRESTConfigInsecure(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := func(name, cluster string) string {
		p := filepath.Join(dir, name)
		data := "apiVersion: v1\nkind: Config\nclusters: [{name: rke, cluster: {" + cluster + "}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: admin, context: {cluster: rke, user: u}}]\ncurrent-context: admin\n"
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	skip := kubeconfig("skip", `server: "https://10.0.0.1:6443", insecure-skip-tls-verify: true`)
	plain := kubeconfig("plain", `server: "http://10.0.0.1:8080"`)
	bare := kubeconfig("bare", `server: "10.0.0.1:8080"`) // client-go picks http without a CA
	verified := kubeconfig("verified", `server: "https://10.0.0.1:6443"`)
	tests := []struct {
		name     string
		args     []string
		wantErr  []string
		wantWarn []string
	}{
		{name: "verified (system roots)", args: []string{"--kubernetes-kubeconfig", verified}},
		{name: "insecure-skip-tls-verify refused", args: []string{"--kubernetes-kubeconfig", skip},
			wantErr: []string{"kubeconfig " + skip + " (kubernetes.kubeconfig, flag --kubernetes-kubeconfig), cluster \"rke\" of context \"admin\": insecure-skip-tls-verify: true",
				"remove it and give the cluster's certificate-authority(-data)", "DANGEROUS, allow it with kubernetes.insecureSkipTLSVerify (--kubernetes-insecure-skip-tls-verify, ATREST_KUBERNETES_INSECURE_SKIP_TLS_VERIFY)"}},
		{name: "insecure-skip-tls-verify allowed", args: []string{"--kubernetes-kubeconfig", skip, "--kubernetes-insecure-skip-tls-verify"},
			wantWarn: []string{"INSECURE: TLS certificate verification of the Kubernetes API is OFF", "setting=kubernetes.insecureSkipTLSVerify"}},
		{name: "http refused", args: []string{"--kubernetes-kubeconfig", plain},
			wantErr: []string{"kubeconfig " + plain, "server http://10.0.0.1:8080 is plain http", "kubernetes.insecureAllowHTTP (--kubernetes-insecure-allow-http"}},
		{name: "bare host:port is http, refused", args: []string{"--kubernetes-kubeconfig", bare},
			wantErr: []string{"server http://10.0.0.1:8080 is plain http"}},
		{name: "the skip allowance does not allow http", args: []string{"--kubernetes-kubeconfig", plain, "--kubernetes-insecure-skip-tls-verify"},
			wantErr: []string{"is plain http"}},
		{name: "http allowed", args: []string{"--kubernetes-kubeconfig", plain, "--kubernetes-insecure-allow-http"},
			wantWarn: []string{"INSECURE: the Kubernetes API is reached over plain http", "setting=kubernetes.insecureAllowHTTP", "server=http://10.0.0.1:8080"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			settingstest.ClearEnv(t)
			s := loadSettings(t, tt.args...)
			var logs bytes.Buffer
			_, err := restConfig(s, slog.New(slog.NewTextHandler(&logs, nil)))
			if len(tt.wantErr) == 0 && err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q: %v", w, err)
				}
			}
			for _, w := range tt.wantWarn {
				if !strings.Contains(logs.String(), w) {
					t.Errorf("logs do not say %q:\n%s", w, logs.String())
				}
			}
			if strings.Contains(logs.String(), "level=WARN") != (len(tt.wantWarn) > 0) {
				t.Errorf("unexpected warnings:\n%s", logs.String())
			}
		})
	}
}

// Every command that reaches Vault refuses VAULT_SKIP_VERIFY and a plain
// http Vault before it sends Vault anything.
func TestCommandsRefuseInsecureVault(t *testing.T) {
	var hits atomic.Int32
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		http.Error(w, "no", http.StatusForbidden)
	}))
	defer vault.Close()
	dir := t.TempDir()
	write := fileWriter(t, dir)
	config := write("cluster.yml", "cluster_name: prod\nnodes: [{address: 127.0.0.1, user: rke, role: [controlplane, etcd]}]\n")
	token := write("token", "s.test")
	for _, tt := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"http vault.address", nil, []string{"--vault-address", vault.URL}, "vault.address: \"" + vault.URL + "\" is plain http"},
		{"http VAULT_ADDR", map[string]string{"VAULT_ADDR": vault.URL}, nil, "VAULT_ADDR: \"" + vault.URL + "\" (environment variable) is plain http"},
		{"VAULT_SKIP_VERIFY", map[string]string{"VAULT_SKIP_VERIFY": "true"}, []string{"--vault-address", "https://" + strings.TrimPrefix(vault.URL, "http://")}, "VAULT_SKIP_VERIFY: \"true\" (environment variable) turns off"},
	} {
		for _, c := range [][]string{{"unlock"}, {"resume"}, {"plan"}, {"adopt", "--from-nodes=false", "--rkestate", write("cluster.rkestate", "{}")}} {
			t.Run(tt.name+"/"+c[0], func(t *testing.T) {
				settingstest.ClearEnv(t)
				for _, k := range []string{"VAULT_ADDR", "VAULT_AGENT_ADDR", "VAULT_SKIP_VERIFY"} {
					t.Setenv(k, tt.env[k])
				}
				args := append(append(append([]string{}, c...), "--config", config, "--cluster-name", "prod", "--vault-token-file", token), tt.args...)
				code, stdout, stderr := runCLI(t, args...)
				if code != exitError || !strings.Contains(stderr, tt.want) {
					t.Errorf("exit %d, want %d, and stderr saying %q\nstdout: %s\nstderr: %s", code, exitError, tt.want, stdout, stderr)
				}
				if n := hits.Swap(0); n != 0 {
					t.Errorf("Vault got %d requests", n)
				}
			})
		}
	}
}

// atrest run warns at start of every DANGEROUS setting in effect, and
// refuses an unverified kubeconfig then, before it polls Git or reaches
// anything.
func TestRunWarnsAndRefusesAtStart(t *testing.T) {
	settingstest.ClearEnv(t)
	dir := t.TempDir()
	write := fileWriter(t, dir)
	kubeconfig := write("kubeconfig", "apiVersion: v1\nkind: Config\nclusters: [{name: rke, cluster: {server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: admin, context: {cluster: rke, user: u}}]\ncurrent-context: admin\n")
	settingsFile := write("settings.yaml", "cluster:\n  name: prod\ngit:\n  url: "+filepath.Join(dir, "no-repo")+"\nvault:\n  address: http://127.0.0.1:1\n  insecureAllowHTTP: true\n  tokenFile: "+write("token", "s.test")+
		"\netcd:\n  endpoints: [http://127.0.0.1:1]\n  insecureAllowHTTP: true\nkubernetes:\n  kubeconfig: "+kubeconfig+"\nssh:\n  knownHostsFile: "+write("known_hosts", "")+"\nsnapshots:\n  dir: "+dir+"\nlisten:\n  metrics: 127.0.0.1:0\n")
	code, stdout, stderr := runCLI(t, "run", "--settings", settingsFile)
	if code != exitError {
		t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, exitError, stdout, stderr)
	}
	for _, w := range []string{
		`level=WARN msg="INSECURE: Vault at http://127.0.0.1:1 is reached over plain http" setting=vault.insecureAllowHTTP`,
		`level=WARN msg="INSECURE: etcd at http://127.0.0.1:1 is reached in plaintext" setting=etcd.insecureAllowHTTP`,
		"kubeconfig " + kubeconfig + " (kubernetes.kubeconfig, settings file " + settingsFile + `), cluster "rke" of context "admin": insecure-skip-tls-verify: true`,
	} {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr does not say %q:\n%s", w, stderr)
		}
	}
	if strings.Contains(stderr, "git") {
		t.Errorf("atrest run went on to Git:\n%s", stderr)
	}
}
