package controlplane

import (
	"errors"
	"strings"
	"testing"
)

func TestHostPath(t *testing.T) {
	const sock = "/etc/kubernetes/kms/plugin.sock"
	for _, tc := range []struct {
		name   string
		mounts []mount
		in     string
		want   string
	}{
		{"RKE bind", []mount{{"bind", "/etc/kubernetes", "/etc/kubernetes"}}, sock, sock},
		{"prefix_path", []mount{{"bind", "/opt/rke/etc/kubernetes", "/etc/kubernetes"}}, sock, "/opt/rke" + sock},
		{"most specific wins", []mount{{"bind", "/etc/kubernetes", "/etc/kubernetes"}, {"bind", "/var/run/kms", "/etc/kubernetes/kms"}}, sock, "/var/run/kms/plugin.sock"},
		{"order does not matter", []mount{{"bind", "/var/run/kms", "/etc/kubernetes/kms"}, {"bind", "/etc/kubernetes", "/etc/kubernetes"}}, sock, "/var/run/kms/plugin.sock"},
		{"root bind", []mount{{"bind", "/srv/root", "/"}}, sock, "/srv/root" + sock},
		{"the socket itself", []mount{{"bind", "/run/plugin.sock", sock}}, sock, "/run/plugin.sock"},
		{"no cover", []mount{{"bind", "/var/lib/kubelet", "/var/lib/kubelet"}}, sock, ""},
		{"prefix of a name is no cover", []mount{{"bind", "/etc/kube", "/etc/kube"}}, sock, ""},
		{"volumes do not count", []mount{{"volume", "/var/lib/docker/volumes/x", "/etc/kubernetes"}}, sock, ""},
		{"trailing slash", []mount{{"bind", "/etc/kubernetes", "/etc/kubernetes/"}}, sock, sock},
		{"none", nil, sock, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := hostPath(tc.mounts, tc.in); got != tc.want {
				t.Errorf("hostPath = %q, want %q", got, tc.want)
			}
			// The reverse: where the container sees what was found.
			if tc.want != "" {
				if back := containerPath(tc.mounts, tc.want); back != tc.in {
					t.Errorf("containerPath(hostPath) = %q, want %q", back, tc.in)
				}
			}
		})
	}
}

func TestMountChecks(t *testing.T) {
	const (
		file = "/etc/kubernetes/ssl/encryption.yaml"
		ok   = "unix:///etc/kubernetes/kms/ok.sock"
		gone = "unix:///etc/kubernetes/kms/gone.sock"
	)
	rke := []mount{{"bind", "/etc/kubernetes", "/etc/kubernetes"}}
	sockets := map[string]bool{"/etc/kubernetes/kms/ok.sock": true}
	exists := func(host string) (bool, error) { return sockets[host], nil }
	type want struct{ what, problem string } // problem: a part of it; "" for passed
	for _, tc := range []struct {
		name   string
		mounts []mount
		req    PreflightRequest
		want   []want
	}{
		{"nothing asked", rke, PreflightRequest{}, nil},
		{"file mounted", rke, PreflightRequest{ProviderFile: true}, []want{{checkFileMount, ""}}},
		{"file not mounted", []mount{{"bind", "/var/lib/kubelet", "/var/lib/kubelet"}}, PreflightRequest{ProviderFile: true},
			[]want{{checkFileMount, "bind-mount /etc/kubernetes/ssl into it (RKE mounts /etc/kubernetes"}}},
		{"every KMS endpoint, each on its own", rke, PreflightRequest{ProviderFile: true, KMSEndpoints: []string{ok, gone}}, []want{
			{checkFileMount, ""},
			{checkKMSSocket + ok, ""},
			{checkKMSSocket + gone, "no socket at /etc/kubernetes/kms/gone.sock on the node (kube-apiserver sees it at /etc/kubernetes/kms/gone.sock): the KMS plugin must run on every controlplane node"},
		}},
		{"KMS socket not mounted", []mount{{"bind", "/etc/kubernetes/ssl", "/etc/kubernetes/ssl"}}, PreflightRequest{KMSEndpoints: []string{ok}},
			[]want{{checkKMSSocket + ok, "mounts nothing that holds /etc/kubernetes/kms/ok.sock"}}},
		{"KMS over TCP", rke, PreflightRequest{KMSEndpoints: []string{"tcp://127.0.0.1:1234"}},
			[]want{{checkKMSSocket + "tcp://127.0.0.1:1234", "not a unix:// socket"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := mountChecks("cp1", file, tc.mounts, tc.req, exists)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("checks %v, want %d", got, len(tc.want))
			}
			for i, w := range tc.want {
				g := got[i]
				if g.Node != "cp1" || g.What != w.what || g.Passed() != (w.problem == "") || !strings.Contains(g.Problem, w.problem) {
					t.Errorf("check %d: %+v, want %s with a problem containing %q", i, g, w.what, w.problem)
				}
			}
		})
	}
	t.Run("a node that cannot be asked is an error, not a failed check", func(t *testing.T) {
		_, err := mountChecks("cp1", file, rke, PreflightRequest{KMSEndpoints: []string{ok}}, func(string) (bool, error) {
			return false, ErrUnreachable
		})
		if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "cp1") {
			t.Errorf("error %v, want cp1 unreachable", err)
		}
	})
}

func TestSudoProblem(t *testing.T) {
	p := sudoProblem("deploy", "sudo wants a password")
	for _, want := range []string{`user "deploy" is not root`, "log in as root", `allow passwordless sudo for "deploy"`} {
		if !strings.Contains(p, want) {
			t.Errorf("%q does not say %q", p, want)
		}
	}
}
