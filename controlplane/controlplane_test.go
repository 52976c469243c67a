package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"testing"

	"k8s.io/client-go/rest"

	"github.com/atrest-io/atrest/cluster"
)

func TestProviderFileNeverShowsData(t *testing.T) {
	secret := "c2VjcmV0LWtleS1tYXRlcmlhbA=="
	f := newProviderFile([]byte("secret: " + secret + "\n"))
	state := NodeState{Node: "node1", File: f, Ready: true}
	var out bytes.Buffer
	for _, h := range []slog.Handler{slog.NewTextHandler(&out, nil), slog.NewJSONHandler(&out, nil)} {
		slog.New(h).Info("x", "file", f, "state", state)
	}
	js, err := json.Marshal(state)
	if err != nil {
		t.Fatal(err)
	}
	shown := []string{
		fmt.Sprint(f), fmt.Sprintf("%v %+v %#v %s", f, f, f, f),
		fmt.Sprint(state), fmt.Sprintf("%+v", state),
		out.String(), string(js),
	}
	for _, s := range shown {
		if strings.Contains(s, secret) || strings.Contains(s, "c2VjcmV0") {
			t.Errorf("file bytes shown: %s", s)
		}
	}
	if !strings.Contains(fmt.Sprint(f), f.SHA256) || !strings.Contains(string(js), f.SHA256) {
		t.Errorf("the hash is not shown: %s / %s", f, js)
	}
	if s := fmt.Sprint(ProviderFile{}); s != "absent" {
		t.Errorf("absent file prints %q", s)
	}
}

func TestShellQuote(t *testing.T) {
	for _, s := range []string{"", "plain", "/etc/kubernetes/ssl/encryption.yaml", "it's", "a'b'c", `$(rm -rf /) "x" \n ; | & * ~`, "new\nline"} {
		out, err := exec.Command("sh", "-c", "printf %s "+shellQuote(s)).Output()
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != s {
			t.Errorf("shellQuote(%q) comes out of sh as %q", s, out)
		}
	}
}

func TestCapped(t *testing.T) {
	c := &capped{max: 5}
	for _, p := range []string{"abc", "def", "ghi"} {
		if n, err := c.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if c.String() != "abcde" || !c.overflow {
		t.Errorf("capped holds %q, overflow %v", c.String(), c.overflow)
	}
}

func TestConnectRejectsBadOptions(t *testing.T) {
	cfg, err := cluster.Parse("cluster.yml", []byte("nodes:\n  - address: 10.0.0.1\n    user: rke\n    role: [controlplane]\n"))
	if err != nil {
		t.Fatal(err)
	}
	noCP, err := cluster.Parse("cluster.yml", []byte("nodes:\n  - address: 10.0.0.1\n    user: rke\n    role: [controlplane]\n  - address: 10.0.0.2\n    user: rke\n    role: [worker]\n"))
	if err != nil {
		t.Fatal(err)
	}
	noCP.Nodes = noCP.Nodes[1:]
	for _, tc := range []struct {
		name string
		cfg  *cluster.Config
		opts Options
		want string
	}{
		{"no known_hosts", cfg, Options{APIServer: &rest.Config{}}, "ssh.knownHostsFile"},
		{"no kube-apiserver credentials", cfg, Options{KnownHostsFile: "/nonexistent"}, "kubernetes.kubeconfig"},
		{"known_hosts missing", cfg, Options{KnownHostsFile: "/nonexistent/known_hosts", APIServer: &rest.Config{}}, "/nonexistent/known_hosts"},
		{"no controlplane node", noCP, Options{InsecureSkipHostKeyVerification: true, APIServer: &rest.Config{}}, "controlplane role"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Connect(context.Background(), tc.cfg, tc.opts)
			if err == nil {
				c.Close()
				t.Fatal("connected")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error does not say %q: %v", tc.want, err)
			}
		})
	}
}

func TestInsecureOptionWarnsLoudly(t *testing.T) {
	var logs bytes.Buffer
	cfg, err := cluster.Parse("cluster.yml", []byte("nodes:\n  - address: 127.0.0.1\n    port: 1\n    user: rke\n    role: [controlplane]\n    ssh_key_path: /nonexistent/key\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Connect(context.Background(), cfg, Options{
		InsecureSkipHostKeyVerification: true,
		APIServer:                       &rest.Config{},
		Logger:                          slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/key") || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Errorf("connect with an unreadable key: %v", err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "HOST KEY VERIFICATION IS DISABLED") {
		t.Errorf("no loud warning: %s", logs.String())
	}
}

func TestErrorMessages(t *testing.T) {
	notReady := nodeErr("node1", "wait for kube-apiserver /readyz", ErrNotReady, errors.New("not ready after 45s"))
	for _, tc := range []struct {
		name    string
		err     *RolloutError
		says    []string
		notSays []string
		is      []error
	}{
		{
			name: "rolled back",
			err:  &RolloutError{What: "rolling apply", Node: "node1", Index: 0, Total: 3, Untouched: []string{"node2", "node3"}, Changed: true, Err: &RollbackError{Node: "node1", Cause: notReady}},
			says: []string{"stopped at node1 (node 1 of 3)", "node1 was rolled back", "(node2, node3) were left untouched", "cause: node1: wait for kube-apiserver /readyz: kube-apiserver not ready: not ready after 45s"},
			is:   []error{ErrRolledBack, ErrNotReady},
		},
		{
			name:    "rollback failed",
			err:     &RolloutError{What: "rolling apply", Node: "node2", Index: 1, Total: 3, Done: []string{"node1"}, Untouched: []string{"node3"}, Changed: true, Err: &RollbackError{Node: "node2", Cause: notReady, Rollback: errors.New("start the previous container: boom")}},
			says:    []string{"node2 could NOT be rolled back", "manual repair", "node1 already had the change", "rollback: start the previous container: boom"},
			notSays: []string{"is ready"},
			is:      []error{ErrRollbackFailed, ErrNotReady},
		},
		{
			name: "refused before any change",
			err:  &RolloutError{What: "rolling apply", Node: "node3", Index: 2, Total: 3, Done: []string{"node1", "node2"}, Err: nodeErr("node3", "apply provider file", ErrNotReady, errors.New("not ready before the change"))},
			says: []string{"nothing was changed on node3", "node1, node2 already had the change"},
			is:   []error{ErrNotReady},
		},
		{
			name:    "lock lost",
			err:     &RolloutError{What: "rolling apply", Node: "node2", Index: 1, Total: 3, Done: []string{"node1"}, Untouched: []string{"node3"}, Changed: true, Err: nodeErr("node2", "roll the node back", nil, fmt.Errorf("%w: not going to restart container abc: lock lost", ErrFenced))},
			says:    []string{"node2 was left as it was when atrest lost its lock", "recovery repairs it", "cause: node2: roll the node back"},
			notSays: []string{"manual repair", "rolled back"},
			is:      []error{ErrFenced},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := tc.err.Error()
			for _, s := range tc.says {
				if !strings.Contains(msg, s) {
					t.Errorf("does not say %q:\n%s", s, msg)
				}
			}
			for _, s := range tc.notSays {
				if strings.Contains(msg, s) {
					t.Errorf("says %q:\n%s", s, msg)
				}
			}
			for _, k := range tc.is {
				if !errors.Is(tc.err, k) {
					t.Errorf("is not %v", k)
				}
			}
		})
	}
}
