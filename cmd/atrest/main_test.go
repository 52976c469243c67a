package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	policyDir := filepath.Join(dir, "withpolicy")
	write("withpolicy/cluster.yml", "cluster_name: demo\nnodes: [{address: 127.0.0.11, user: atrest, role: [controlplane, etcd]}]\nservices: {kube-api: {secrets_encryption_config: {enabled: true}}}\n")
	write("withpolicy/atrest.yaml", "provider: secretbox\nrotation: {schedule: \"@monthly\"}\n")
	reloading := write("reloading.yml", "cluster_name: demo\nnodes: [{address: 127.0.0.11, user: atrest, role: [controlplane, etcd]}]\nservices: {kube-api: {extra_args: {encryption-provider-config-automatic-reload: \"true\"}, secrets_encryption_config: {enabled: true}}}\n")
	badPolicy := write("bad-atrest.yaml", "rotation: {schedule: \"every month\"}\n")
	broken := write("broken.yml", "nodes:\n  - address: a\n    role: [controlplane]\nservices:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n      custom_config:\n        apiVersion: apiserver.config.k8s.io/v1\n        kind: EncryptionConfiguration\n        resources:\n          - resources: [secrets]\n            providers:\n              - aescbc:\n                  keys:\n                    - name: k1\n                      secret: c2VjcmV0MTI=\n")

	tests := []struct {
		name      string
		args      []string
		code      int
		stdout    []string
		notStdout []string
		stderr    []string
		secrets   []string // must appear nowhere
	}{
		{name: "managed doc example", args: []string{"validate", "--config", "../../cluster/testdata/managed.yml"}, code: 0,
			stdout: []string{"managed.yml: valid: cluster \"demo\", 2 controlplane node(s) (10.0.0.1, 10.0.0.2), encryption managed; no atrest.yaml, defaults: managed provider aescbc"}},
		{name: "custom aescbc doc example", args: []string{"validate", "--config", "../../cluster/testdata/custom-aescbc.yml"}, code: 0,
			stdout:  []string{"encryption custom (secrets: aescbc:v1:k-fw5hn, identity)"},
			secrets: []string{"RTczRjFDODMwQzAyMDVBREU4NDJBMUZFNDhCNzM5N0I="}},
		{name: "kms doc example needs v2", args: []string{"validate", "--config", "../../cluster/testdata/custom-kms-doc.yml"}, code: 2,
			stderr: []string{"custom-kms-doc.yml: services.kube-api.secrets_encryption_config.custom_config.resources[0].providers[0].kms.apiVersion: KMS v1"}},
		{name: "kms completed", args: []string{"validate", "--config", "../../cluster/testdata/custom-kms.yml"}, code: 0,
			stdout: []string{"kms:v2:aws-encryption-provider"}},
		{name: "policy found beside cluster.yml", args: []string{"validate", "--config", filepath.Join(policyDir, "cluster.yml")}, code: 0,
			stdout: []string{"atrest.yaml: managed provider secretbox, rotation \"@monthly\" (next "}},
		{name: "managed, reload flag kept by rke up: no note", args: []string{"validate", "--config", reloading}, code: 0,
			stdout: []string{"reloading.yml: valid"}, notStdout: []string{"note:"}},
		{name: "every error at once", args: []string{"validate", "--config", broken, "--policy", badPolicy}, code: 2,
			stderr: []string{
				"broken.yml: nodes[0].user: required",
				"broken.yml: services.kube-api.secrets_encryption_config.custom_config.resources[0].providers[0].aescbc.keys[0].secret: must decode to 16, 24 or 32 bytes (it decodes to 8)",
				"bad-atrest.yaml: rotation.schedule: \"every month\" is not a schedule",
			},
			secrets: []string{"c2VjcmV0MTI="}},
		{name: "missing file", args: []string{"validate", "--config", filepath.Join(dir, "nope.yml")}, code: 2, stderr: []string{"nope.yml"}},
		{name: "explicit policy must exist", args: []string{"validate", "--config", "../../cluster/testdata/managed.yml", "--policy", filepath.Join(dir, "nope.yaml")}, code: 2, stderr: []string{"nope.yaml"}},
		{name: "version", args: []string{"version"}, code: 0, stdout: []string{"atrest dev"}},
		{name: "help lists only working commands", args: []string{"--help"}, code: 0, stdout: []string{"validate", "version"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.args...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, stdout, stderr)
			}
			for _, w := range tt.stdout {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout does not contain %q:\n%s", w, stdout)
				}
			}
			for _, w := range tt.notStdout {
				if strings.Contains(stdout, w) {
					t.Errorf("stdout contains %q:\n%s", w, stdout)
				}
			}
			for _, w := range tt.stderr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not contain %q:\n%s", w, stderr)
				}
			}
			for _, s := range tt.secrets {
				if strings.Contains(stdout+stderr, s) {
					t.Errorf("output shows key material %q", s)
				}
			}
			if tt.code == 0 && tt.args[0] == "validate" {
				// One summary line, then at most the note on the reload flag.
				lines := strings.Split(strings.TrimSpace(stdout), "\n")
				if len(lines) > 2 || len(lines) == 2 && !strings.HasPrefix(lines[1], "note: add encryption-provider-config-automatic-reload: \"true\" to services.kube-api.extra_args") {
					t.Errorf("validate should print one line and the reload note, got:\n%s", stdout)
				}
			}
		})
	}
}

func TestHelpListsCommands(t *testing.T) {
	_, stdout, _ := runCLI(t, "--help")
	for _, c := range []string{"validate", "plan", "apply", "status", "rotate-key", "snapshot", "adopt", "run", "version"} {
		if !strings.Contains(stdout, "\n  "+c+" ") {
			t.Errorf("--help does not list %q:\n%s", c, stdout)
		}
	}
	if !strings.Contains(stdout, "\n  completion ") {
		t.Errorf("--help does not list completion")
	}
}

func TestRunRefusesBadSettings(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"nothing set", []string{"run"}, []string{"cluster.name", "git.url", "vault.address", "etcd.endpoints", "snapshots.dir"}},
		{"webhook without a secret", []string{"run", "--listen-webhook", "127.0.0.1:0"}, []string{"listen.webhookSecretFile"}},
		{"bad backoff", []string{"run", "--daemon-max-backoff", "0s"}, []string{"daemon.maxBackoff"}},
		{"bad listen", []string{"run", "--listen-metrics", "nonsense"}, []string{"listen.metrics", "not host:port"}},
		{"missing signers file", []string{"run", "--git-url", "https://git.example/x.git", "--git-allowed-signers-file", dir + "/nope"}, []string{"git.allowedSignersFile"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("VAULT_ADDR", "")
			code, _, stderr := runCLI(t, tt.args...)
			if code != exitError {
				t.Fatalf("exit %d, want %d:\n%s", code, exitError, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not name %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// fileWriter returns a function that writes a file of data under dir,
// mode 0600 (tests keep tokens in such files), and returns its path.
func fileWriter(t *testing.T, dir string) func(name, data string) string {
	return func(name, data string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
}
