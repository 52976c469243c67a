package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/gitsource"
	"github.com/atrest-io/atrest/settings"
	"github.com/atrest-io/atrest/settings/settingstest"
)

func loadSettings(t *testing.T, args ...string) *settings.Settings {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	l := settings.Bind(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	s, err := l.Load()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCheckIdentity(t *testing.T) {
	settingstest.ClearEnv(t)
	tests := []struct {
		name   string
		pinned string
		named  string // cluster_name in cluster.yml; "" for none
		want   []string
	}{
		{name: "same name", pinned: "prod", named: "prod"},
		{name: "no cluster_name is RKE's local", pinned: "local", named: ""},
		{name: "another name", pinned: "prod", named: "prod-2", want: []string{
			`prod/cluster.yml: cluster_name: is "prod-2", but this atrest manages cluster.name "prod" (from flag --cluster-name)`,
			"refused, because it would open another keyring for the same nodes; nothing was opened or changed",
			"run atrest with that cluster's settings",
			"set cluster_name: prod in it",
			"the name of the keyring in Vault (under secret/atrest/)",
		}},
		{name: "no cluster_name, pinned to another", pinned: "prod", named: "", want: []string{
			`cluster_name: is not set, so RKE names the cluster "local", but this atrest manages cluster.name "prod"`,
			`or "local" if it had none`,
		}},
		{name: "case matters, as in Vault paths", pinned: "prod", named: "Prod", want: []string{`cluster_name: is "Prod"`}},
		{name: "explicit local against another", pinned: "prod", named: "local", want: []string{`cluster_name: is "local", but`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := loadSettings(t, "--cluster-name", tt.pinned)
			err := checkIdentity(s, &cluster.Config{ClusterName: tt.named}, "prod/cluster.yml")
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestRevisionParser: in the daemon, a revision of another cluster is a
// refused revision, as an invalid one is.
func TestRevisionParser(t *testing.T) {
	settingstest.ClearEnv(t)
	s := loadSettings(t, "--cluster-name", "prod")
	rev := func(name string) *gitsource.Revision {
		yml := "nodes: [{address: 10.0.0.1, user: rke, role: [controlplane, etcd]}]\nservices: {kube-api: {secrets_encryption_config: {enabled: true}}}\n"
		if name != "" {
			yml = "cluster_name: " + name + "\n" + yml
		}
		return &gitsource.Revision{Commit: "0123456789abcdef0123456789abcdef01234567", Files: map[string][]byte{"cluster.yml": []byte(yml)}}
	}
	src, err := gitsource.New(gitsource.Config{URL: t.TempDir(), CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ledger := &memLedger{}
	parse := revisionParser(s, src, ledger)
	tests := []struct {
		name  string
		named string
		want  string // "" accepted
	}{
		{"this cluster", "prod", ""},
		{"another cluster", "prod-2", `cluster.yml@0123456789ab: cluster_name: is "prod-2", but this atrest manages cluster.name "prod" (from flag --cluster-name)`},
		{"RKE's default", "", `cluster.yml@0123456789ab: cluster_name: is not set, so RKE names the cluster "local"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ledger.commit = ""
			d, err := parse(context.Background(), rev(tt.named))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want == "" && (d == nil || d.Config.ClusterName != tt.named):
				t.Fatalf("parsed %+v", d)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want it to say %q", err, tt.want)
			}
			if recorded := ledger.commit != ""; recorded != (tt.want == "") {
				t.Errorf("revision in force recorded %v: only an accepted revision is", recorded)
			}
		})
	}
}

// TestIdentityRefusedBeforeAnythingOpens runs every command that opens the
// keyring with settings that would reach a (fake) Vault, and a cluster.yml
// of another cluster: each exits 2 naming both names, and Vault hears
// nothing. A control run with the right cluster.yml does reach it, which
// shows the settings would have.
func TestIdentityRefusedBeforeAnythingOpens(t *testing.T) {
	settingstest.ClearEnv(t)
	var hits atomic.Int32
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, `{"errors":["permission denied"]}`, http.StatusForbidden)
	}))
	defer vault.Close()

	dir := t.TempDir()
	write := fileWriter(t, dir)
	nodes := "nodes: [{address: 127.0.0.1, user: rke, role: [controlplane, etcd]}]\nservices: {kube-api: {secrets_encryption_config: {enabled: true}}}\n"
	ours := write("ours.yml", "cluster_name: prod\n"+nodes)
	other := write("other.yml", "cluster_name: prod-2\n"+nodes)
	unnamed := write("unnamed.yml", nodes)
	known := write("known_hosts", "")
	kubeconfig := write("kubeconfig", "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n")
	settingsFile := write("settings.yaml", "cluster:\n  name: prod\nvault:\n  address: "+vault.URL+"\n  tokenFile: "+write("token", "s.test")+
		"\n  insecureAllowHTTP: true\netcd:\n  endpoints: [http://127.0.0.1:1]\n  insecureAllowHTTP: true\nkubernetes:\n  kubeconfig: "+kubeconfig+"\nssh:\n  knownHostsFile: "+known+"\n  timeout: 1s\nsnapshots:\n  dir: "+dir+"\n")

	commands := [][]string{
		{"plan"}, {"apply"}, {"rotate-key"}, {"status"}, {"snapshot", "save"},
		{"snapshot", "restore-config", "etcd-20260101T000000.000Z", "--out", filepath.Join(dir, "restore.yaml")},
		{"adopt", "--rkestate", write("cluster.rkestate", "{}")},
	}
	for _, config := range []struct {
		file string
		says string
	}{
		{other, `cluster_name: is "prod-2", but this atrest manages cluster.name "prod" (from settings file ` + settingsFile + ")"},
		{unnamed, `cluster_name: is not set, so RKE names the cluster "local", but this atrest manages cluster.name "prod"`},
	} {
		for _, c := range commands {
			t.Run(filepath.Base(config.file)+"/"+strings.Join(c[:min(len(c), 2)], " "), func(t *testing.T) {
				args := append(append([]string{}, c...), "--config", config.file, "--settings", settingsFile)
				code, stdout, stderr := runCLI(t, args...)
				if code != exitError {
					t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, exitError, stdout, stderr)
				}
				if !strings.Contains(stderr, config.file+": "+config.says) {
					t.Errorf("stderr does not say %q:\n%s", config.file+": "+config.says, stderr)
				}
				if n := hits.Swap(0); n != 0 {
					t.Errorf("Vault got %d requests before the cluster.yml was refused", n)
				}
			})
		}
	}

	t.Run("a flag pins it too", func(t *testing.T) {
		code, _, stderr := runCLI(t, "plan", "--config", ours, "--settings", settingsFile, "--cluster-name", "prod-eu-1")
		if code != exitError || !strings.Contains(stderr, `cluster_name: is "prod", but this atrest manages cluster.name "prod-eu-1" (from flag --cluster-name)`) {
			t.Errorf("exit %d:\n%s", code, stderr)
		}
		if n := hits.Swap(0); n != 0 {
			t.Errorf("Vault got %d requests before the cluster.yml was refused", n)
		}
	})
	t.Run("required", func(t *testing.T) {
		t.Setenv("ATREST_CLUSTER_NAME", "")
		empty := write("settings-no-name.yaml", strings.Replace(readFile(t, settingsFile), "cluster:\n  name: prod\n", "", 1))
		for _, c := range commands {
			args := append(append([]string{}, c...), "--config", ours, "--settings", empty)
			code, _, stderr := runCLI(t, args...)
			if code != exitError || !strings.Contains(stderr, "cluster.name: required") || !strings.Contains(stderr, "--cluster-name, ATREST_CLUSTER_NAME or cluster.name") {
				t.Errorf("atrest %s without cluster.name: exit %d:\n%s", strings.Join(c, " "), code, stderr)
			}
		}
		code, _, stderr := runCLI(t, "run", "--settings", empty)
		if code != exitError || !strings.Contains(stderr, "cluster.name: required") {
			t.Errorf("atrest run without cluster.name: exit %d:\n%s", code, stderr)
		}
		if n := hits.Swap(0); n != 0 {
			t.Errorf("Vault got %d requests without cluster.name", n)
		}
	})
	// Past the check, the same settings reach Vault: without it, the
	// refusals above would have opened the other cluster's keyring.
	for _, c := range [][]string{{"plan"}, {"apply"}, {"rotate-key"}, {"status"}, {"snapshot", "save"}, {"adopt", "--rkestate", write("control.rkestate", "{}"), "--from-nodes=false"}} {
		t.Run("control/"+strings.Join(c[:min(len(c), 2)], " "), func(t *testing.T) {
			args := append(append([]string{}, c...), "--config", ours, "--settings", settingsFile)
			code, _, stderr := runCLI(t, args...)
			if n := hits.Swap(0); code != exitError || n == 0 {
				t.Errorf("exit %d, %d requests to Vault: these settings do not reach Vault, so the refusals above prove nothing:\n%s", code, n, stderr)
			}
		})
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// memLedger is the ledger's bookkeeping; gitsource's and keystore's tests
// prove the real one.
type memLedger struct{ commit string }

func (l *memLedger) RevisionInForce(context.Context) (string, time.Time, error) {
	return l.commit, time.Time{}, nil
}

func (l *memLedger) RecordRevision(_ context.Context, commit, _ string, _ time.Time) error {
	l.commit = commit
	return nil
}
