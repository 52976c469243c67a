package cluster

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestLoadExamples(t *testing.T) {
	tests := []struct {
		file          string
		mode          Mode
		controlplanes []string
		providers     []string // EncryptionConfig.Providers for custom
	}{
		{file: "managed.yml", mode: Managed, controlplanes: []string{"10.0.0.1", "10.0.0.2"}},
		{file: "custom-aescbc.yml", mode: Custom, controlplanes: []string{"10.0.0.1"},
			providers: []string{"secrets: aescbc:v1:k-fw5hn, identity"}},
		{file: "custom-kms.yml", mode: Custom, controlplanes: []string{"10.0.0.1"},
			providers: []string{"secrets: kms:v2:aws-encryption-provider, identity"}},
		{file: "full.yml", mode: Managed, controlplanes: []string{"cp-1", "cp-2", "cp-3"}},
		{file: "rke-example.yml", mode: Custom, controlplanes: []string{"1.1.1.1"},
			providers: []string{"secrets: aescbc:v1:k-fw5hn, identity"}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			cfg, err := Load(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if cfg.Desired.Mode != tt.mode {
				t.Errorf("mode = %s, want %s", cfg.Desired.Mode, tt.mode)
			}
			var names []string
			for _, n := range cfg.ControlPlaneNodes() {
				names = append(names, n.Name())
			}
			if !slices.Equal(names, tt.controlplanes) {
				t.Errorf("controlplane nodes = %v, want %v", names, tt.controlplanes)
			}
			if tt.mode == Custom {
				if got := cfg.Desired.Custom.Providers(); !slices.Equal(got, tt.providers) {
					t.Errorf("providers = %q, want %q", got, tt.providers)
				}
				// The canonical rendering must itself parse and validate.
				if _, err := ParseEncryptionConfig("rendered", "", cfg.Desired.Custom.Render(), cfg.KubeAPI.ExtraArgs["feature-gates"]); err != nil {
					t.Errorf("rendered custom config does not validate: %v", err)
				}
			}
		})
	}
}

// RKE's own example writes extra_args as numbers; RKE reads them as text.
func TestRKEExampleExtraArgs(t *testing.T) {
	cfg, err := Load("testdata/rke-example.yml")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"audit-log-path": "-", "delete-collection-workers": "3", "v": "4"}
	if !maps.Equal(cfg.KubeAPI.ExtraArgs, want) {
		t.Errorf("kube-api extra_args = %q, want %q", cfg.KubeAPI.ExtraArgs, want)
	}
}

func TestNodeDefaults(t *testing.T) {
	cfg, err := Load("testdata/full.yml")
	if err != nil {
		t.Fatal(err)
	}
	cp := cfg.ControlPlaneNodes()
	want := []Node{
		{Address: "203.0.113.10", Port: 22, InternalAddress: "10.1.0.10", HostnameOverride: "cp-1",
			Roles: []string{"controlplane", "etcd"}, User: "ubuntu", DockerSocket: "/var/run/docker.sock",
			SSHKeyPath: "~/.ssh/id_ed25519", SSHCertPath: "~/.ssh/id_ed25519-cert.pub"},
		{Address: "203.0.113.11", Port: 22, InternalAddress: "10.1.0.11", HostnameOverride: "cp-2",
			Roles: []string{"controlplane", "etcd"}, User: "ubuntu", DockerSocket: "/var/run/docker.sock",
			SSHKeyPath: "~/.ssh/cp2", SSHCertPath: "~/.ssh/id_ed25519-cert.pub"},
		{Address: "203.0.113.12", Port: 22, HostnameOverride: "cp-3",
			Roles: []string{"controlplane", "etcd"}, User: "ubuntu", DockerSocket: "/var/run/docker.sock",
			SSHAgentAuth: true, SSHKeyPath: "~/.ssh/id_ed25519", SSHCertPath: "~/.ssh/id_ed25519-cert.pub"},
	}
	if len(cp) != len(want) {
		t.Fatalf("got %d controlplane nodes, want %d", len(cp), len(want))
	}
	for i := range want {
		if !nodeEqual(cp[i], want[i]) {
			t.Errorf("node %d = %+v\nwant %+v", i, cp[i], want[i])
		}
	}
	if got := cfg.ProviderFilePath(); got != "/opt/rke/etc/kubernetes/ssl/encryption.yaml" {
		t.Errorf("ProviderFilePath = %s", got)
	}
	if b := cfg.BastionHost; b == nil || b.Address != "198.51.100.1" || b.Port != 2222 || b.User != "jump" || b.SSHKeyPath != "~/.ssh/bastion" {
		t.Errorf("bastion = %+v", b)
	}

	m, err := Load("testdata/managed.yml")
	if err != nil {
		t.Fatal(err)
	}
	n1, n2 := m.Nodes[0], m.Nodes[1]
	if n1.Port != 22 || n1.SSHKeyPath != "/keys/default" || n1.DockerSocket != DefaultDockerSocket {
		t.Errorf("node 1 defaults: %+v", n1)
	}
	if n2.Port != 2222 || n2.SSHKeyPath != "/keys/node2" {
		t.Errorf("node 2 overrides: %+v", n2)
	}
	if got := m.ProviderFilePath(); got != "/etc/kubernetes/ssl/encryption.yaml" {
		t.Errorf("ProviderFilePath = %s", got)
	}
}

func nodeEqual(a, b Node) bool {
	return a.Address == b.Address && a.Port == b.Port && a.InternalAddress == b.InternalAddress &&
		a.HostnameOverride == b.HostnameOverride && slices.Equal(a.Roles, b.Roles) && a.User == b.User &&
		a.DockerSocket == b.DockerSocket && a.SSHAgentAuth == b.SSHAgentAuth && a.SSHKeyPath == b.SSHKeyPath &&
		a.SSHCertPath == b.SSHCertPath && a.SSHKey == b.SSHKey && a.SSHCert == b.SSHCert
}

const nodesYAML = `
nodes:
  - address: 10.0.0.1
    user: rke
    role: [controlplane]
`

// withConfig wraps a custom_config body (indented by 8) into a cluster.yml.
func withConfig(body string) string {
	return nodesYAML + `services:
  kube-api:
    secrets_encryption_config:
      enabled: true
      custom_config:
        apiVersion: apiserver.config.k8s.io/v1
        kind: EncryptionConfiguration
` + body
}

const (
	key32 = "RTczRjFDODMwQzAyMDVBREU4NDJBMUZFNDhCNzM5N0I=" // 32 bytes
	key8  = "c2VjcmV0MTI="                                 // 8 bytes
)

func TestParseDesired(t *testing.T) {
	tests := []struct {
		name string
		yml  string
		mode Mode
	}{
		{"absent block", nodesYAML, Disabled},
		{"enabled false", nodesYAML + "services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: false\n", Disabled},
		{"disabled ignores custom_config", nodesYAML + "services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: false\n      custom_config:\n        resources: []\n", Disabled},
		{"enabled", nodesYAML + "services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n", Managed},
		{"custom_config null", nodesYAML + "services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n      custom_config:\n", Managed},
		{"one key in two resource lists", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - aescbc:\n                  keys:\n                    - name: k1\n                      secret: " + key32 + "\n          - resources: [configmaps]\n            providers:\n              - aescbc:\n                  keys:\n                    - name: k1\n                      secret: " + key32 + "\n"), Custom},
		{"custom secretbox", withConfig("        resources:\n          - resources: [secrets, configmaps]\n            providers:\n              - secretbox:\n                  keys:\n                    - name: k1\n                      secret: " + key32 + "\n"), Custom},
		{"kms v1 with feature gate", nodesYAML + "services:\n  kube-api:\n    extra_args:\n      feature-gates: Foo=false,KMSv1=true\n    secrets_encryption_config:\n      enabled: true\n      custom_config:\n        apiVersion: apiserver.config.k8s.io/v1\n        kind: EncryptionConfiguration\n        resources:\n          - resources: [secrets]\n            providers:\n              - kms:\n                  name: a\n                  endpoint: unix:///k.sock\n", Custom},
		{"unknown top-level section of another tool is not allowed but RKE ones are", nodesYAML + "network:\n  plugin: calico\naddons: ''\n", Disabled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("cluster.yml", []byte(tt.yml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if cfg.Desired.Mode != tt.mode {
				t.Errorf("mode = %s, want %s", cfg.Desired.Mode, tt.mode)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	const enc = "services.kube-api.secrets_encryption_config"
	const cc = enc + ".custom_config"
	tests := []struct {
		name string
		yml  string
		want []string // substrings of the error lines, in order
	}{
		{"not YAML", "nodes: [", []string{"cluster.yml: not valid YAML"}},
		{"tabs", "nodes:\n\t- address: x\n", []string{"cluster.yml: not valid YAML", "tabs"}},
		{"a list", "- a\n- b\n", []string{"cluster.yml: must be a YAML mapping of keys to values, not a list"}},
		{"a scalar", "hello\n", []string{"not a string"}},
		{"empty", "  \n", []string{"cluster.yml: file is empty"}},
		{"duplicate key", nodesYAML + "services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n      enabled: false\n", []string{"not valid YAML", "already set"}},
		{"typo in block name", nodesYAML + "services:\n  kube-api:\n    secrets_encryption_confg:\n      enabled: true\n",
			[]string{"cluster.yml: services.kube-api.secrets_encryption_confg: not a field RKE knows; did you mean \"secrets_encryption_config\"?"}},
		{"unknown field in block", nodesYAML + "services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n      provider: aesgcm\n",
			[]string{enc + ".provider: not a field RKE knows"}},
		{"typo in services", nodesYAML + "service:\n  kube-api: {}\n", []string{"cluster.yml: service: not a field RKE knows; did you mean \"services\"?"}},
		{"enabled not bool", nodesYAML + "services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: maybe\n",
			[]string{enc + ".enabled: must be true or false, not a string"}},
		{"no nodes", "services: {}\n", []string{"nodes: no node has the controlplane role"}},
		{"node without address and user", "nodes:\n  - role: [controlplane]\n", []string{"nodes[0].address: required", "nodes[0].user: required"}},
		{"bad role and port", "nodes:\n  - address: a\n    user: u\n    port: 70000\n    role: [controlplane, master]\n",
			[]string{"nodes[0].port: must be between 1 and 65535", "nodes[0].role[1]: \"master\" is not a role"}},
		{"port not a number", "nodes:\n  - address: a\n    user: u\n    port: ssh\n    role: [controlplane]\n", []string{"nodes.port: must be a whole number"}},
		{"duplicate address", "nodes:\n  - {address: a, user: u, role: [controlplane]}\n  - {address: a, user: u, role: [worker]}\n", []string{"nodes[1].address: \"a\" is also the address of nodes[0]"}},
		{"relative prefix_path", nodesYAML + "prefix_path: opt/rke\n", []string{"prefix_path: must be an absolute path"}},
		{"flag atrest owns", nodesYAML + "services:\n  kube-api:\n    extra_args:\n      encryption-provider-config: /x\n", []string{"services.kube-api.extra_args.encryption-provider-config: is managed by atrest"}},
		{"bastion without user", nodesYAML + "bastion_host:\n  address: b\n", []string{"bastion_host.user: required"}},
		{"flag atrest owns in extra_args_array", nodesYAML + "services:\n  kube-api:\n    extra_args_array:\n      encryption-provider-config: [/x]\n", []string{"services.kube-api.extra_args_array.encryption-provider-config: is managed by atrest"}},
		// Where RKE takes a string, it takes any scalar, and refuses a list
		// or a mapping ("cannot unmarshal !!seq into string"): so does atrest.
		{"extra_args value a list", nodesYAML + "services:\n  kubelet:\n    extra_args:\n      max-pods: [250]\n", []string{"services.kubelet.extra_args.max-pods: must be a string, number or true/false, not a list"}},
		{"extra_args a list", nodesYAML + "services:\n  etcd:\n    extra_args: [v]\n", []string{"services.etcd.extra_args: must be a mapping, not a list"}},
		{"extra_binds a string", nodesYAML + "services:\n  kube-api:\n    extra_binds: /a:/b\n", []string{"services.kube-api.extra_binds: must be a list, not a string"}},
		{"extra_env entry a mapping", nodesYAML + "services:\n  scheduler:\n    extra_env:\n      - A=1\n      - {B: 2}\n", []string{"services.scheduler.extra_env[1]: must be a string, number or true/false, not a mapping"}},
		{"extra_args_array entry a list", nodesYAML + "services:\n  kubeproxy:\n    extra_args_array:\n      v: [1, [2]]\n", []string{"services.kubeproxy.extra_args_array.v[1]: must be a string, number or true/false, not a list"}},
		{"win_extra_args value a mapping", nodesYAML + "services:\n  kube-controller:\n    win_extra_args:\n      v: {x: 1}\n", []string{"services.kube-controller.win_extra_args.v: must be a string, number or true/false, not a mapping"}},
		{"infinity, which RKE's JSON step cannot encode either", nodesYAML + "services:\n  kubelet:\n    extra_args:\n      v: .inf\n", []string{"cluster.yml: not valid YAML: json: unsupported value"}},
		{"user a list", "nodes:\n  - address: a\n    user: [u]\n    role: [controlplane]\n", []string{"nodes.user: must be a string, number or true/false, not a list"}},
		{"role entry a mapping", "nodes:\n  - address: a\n    user: u\n    role: [{controlplane: true}]\n", []string{"nodes.role[0]: must be a string, number or true/false, not a mapping"}},

		{"empty resources", withConfig("        resources: []\n"), []string{cc + ".resources: required"}},
		{"no providers", withConfig("        resources:\n          - resources: [secrets]\n"), []string{cc + ".resources[0].providers: required"}},
		{"wrong key length", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - aescbc:\n                  keys:\n                    - name: k1\n                      secret: " + key8 + "\n"),
			[]string{cc + ".resources[0].providers[0].aescbc.keys[0].secret: must decode to 16, 24 or 32 bytes (it decodes to 8)"}},
		{"secretbox needs 32", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - secretbox:\n                  keys:\n                    - name: k1\n                      secret: c2VjcmV0IGlzIHNlY3VyZQ==\n"),
			[]string{cc + ".resources[0].providers[0].secretbox.keys[0].secret: must decode to 32 bytes (it decodes to 16)"}},
		{"not base64", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - aescbc:\n                  keys:\n                    - name: k1\n                      secret: not*base64\n"),
			[]string{cc + ".resources[0].providers[0].aescbc.keys[0].secret: must be standard base64"}},
		{"key without name", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - aescbc:\n                  keys:\n                    - secret: " + key32 + "\n"),
			[]string{cc + ".resources[0].providers[0].aescbc.keys[0].name: required"}},
		{"no keys", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - aescbc:\n                  keys: []\n"),
			[]string{cc + ".resources[0].providers[0].aescbc.keys: required"}},
		{"two providers in one entry", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - identity: {}\n                aescbc:\n                  keys:\n                    - name: k1\n                      secret: " + key32 + "\n"),
			[]string{cc + ".resources[0].providers[0]: more than one provider specified in a single element"}},
		{"empty provider", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - {}\n"),
			[]string{cc + ".resources[0].providers[0]: provider does not contain any of the expected providers"}},
		{"unknown field inside custom_config", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - aescbc:\n                  keys:\n                    - name: k1\n                      secret: " + key32 + "\n                      algorithm: x\n"),
			[]string{cc + ".resources[0].providers[0].aescbc.keys[0].algorithm: unknown field"}},
		{"unknown provider", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - aes256:\n                  keys: []\n"),
			[]string{cc + ".resources[0].providers[0].aes256: unknown field"}},
		{"duplicate key names", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - aescbc:\n                  keys:\n                    - name: k1\n                      secret: " + key32 + "\n                    - name: k1\n                      secret: c2VjcmV0IGlzIHNlY3VyZQ==\n"),
			[]string{cc + ".resources[0].providers[0].aescbc.keys[1].name: key name \"k1\" is also used at resources[0].providers[0].aescbc.keys[0].name"}},
		{"same key name, other material, in two resource lists", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - aescbc:\n                  keys:\n                    - name: k1\n                      secret: " + key32 + "\n          - resources: [configmaps]\n            providers:\n              - aescbc:\n                  keys:\n                    - name: k1\n                      secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"),
			[]string{cc + ".resources[1].providers[0].aescbc.keys[0].name: key \"k1\" has other material here than at resources[0].providers[0].aescbc.keys[0].name; a key is its material: give the new key a new name"}},
		{"same key name for two providers", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - aescbc:\n                  keys:\n                    - name: k1\n                      secret: " + key32 + "\n          - resources: [configmaps]\n            providers:\n              - secretbox:\n                  keys:\n                    - name: k1\n                      secret: " + key32 + "\n"),
			[]string{cc + ".resources[1].providers[0].secretbox.keys[0].name: key name \"k1\" is used by secretbox here and by aescbc at resources[0].providers[0].aescbc.keys[0].name"}},
		{"kms name with colon", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - kms:\n                  apiVersion: v2\n                  name: a:b\n                  endpoint: unix:///k.sock\n"),
			[]string{cc + ".resources[0].providers[0].kms.name: invalid KMS provider name a:b, must not contain ':'"}},
		{"kms v1 without gate", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - kms:\n                  name: a\n                  endpoint: unix:///k.sock\n"),
			[]string{cc + ".resources[0].providers[0].kms.apiVersion: KMS v1"}},
		{"kms tcp endpoint", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - kms:\n                  apiVersion: v2\n                  name: a\n                  endpoint: tcp://1.2.3.4:80\n"),
			[]string{cc + ".resources[0].providers[0].kms.endpoint: unsupported scheme \"tcp\""}},
		{"overlapping resources", withConfig("        resources:\n          - resources: [secrets, '*.']\n            providers:\n              - identity: {}\n"),
			[]string{cc + ".resources[0].resources: using overlapping resources", cc + ".resources[0].resources[1]: \"*.\" is a wildcard"}},
		{"wildcard", withConfig("        resources:\n          - resources: ['*.*']\n            providers:\n              - identity: {}\n"),
			[]string{cc + ".resources[0].resources[0]: \"*.*\" is a wildcard, and atrest cannot census or rewrite a wildcard: list the resources (for example secrets, configmaps) instead"}},
		{"resource in two lists", withConfig("        resources:\n          - resources: [secrets]\n            providers:\n              - identity: {}\n          - resources: [secrets]\n            providers:\n              - identity: {}\n"),
			[]string{cc + ".resources[1].resources[0]: resource \"secrets\" is also listed at resources[0].resources[0]; kube-apiserver gives it the providers of every list, in order; atrest models one list per resource: merge them into one list"}},
		{"duplicate in one list", withConfig("        resources:\n          - resources: [secrets, secrets]\n            providers:\n              - identity: {}\n"),
			[]string{cc + ".resources[0].resources: the same resource cannot be specified multiple times"}},
		{"capital resource", withConfig("        resources:\n          - resources: [Secrets]\n            providers:\n              - identity: {}\n"),
			[]string{"resource name should not contain capital letters"}},
		{"wrong kind", nodesYAML + "services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n      custom_config:\n        apiVersion: v1\n        kind: Secret\n",
			[]string{cc + ".apiVersion: must be apiserver.config.k8s.io/v1, not \"v1\"", cc + ".kind: must be EncryptionConfiguration, not \"Secret\""}},
		{"custom_config a list", nodesYAML + "services:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n      custom_config: [a]\n",
			[]string{cc + ": must be an EncryptionConfiguration mapping, not a list"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("cluster.yml", []byte(tt.yml))
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", cfg.Desired)
			}
			if cfg != nil {
				t.Errorf("Parse returned a config with an error")
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not contain %q:\n%s", w, msg)
				}
			}
			for _, line := range strings.Split(msg, "\n") {
				if !strings.HasPrefix(line, "cluster.yml: ") {
					t.Errorf("error line does not name the file: %q", line)
				}
			}
			assertNoSecrets(t, msg)
		})
	}
}

// assertNoSecrets fails when msg holds any key material used in these tests.
func assertNoSecrets(t *testing.T, msg string) {
	t.Helper()
	for _, s := range []string{key32, key8, "c2VjcmV0IGlzIHNlY3VyZQ==", "not*base64"} {
		if strings.Contains(msg, s) {
			t.Errorf("error shows key material %q:\n%s", s, msg)
		}
	}
}

func TestParseCollectsEveryError(t *testing.T) {
	yml := "nodes:\n  - role: [controlplane, boss]\nservices:\n  kube-api:\n    extra_args:\n      encryption-provider-config: /x\n"
	_, err := Parse("c.yml", []byte(yml))
	es := AsErrors(err)
	if len(es) != 4 {
		t.Fatalf("got %d errors, want 4 (address, role, user, extra_args):\n%v", len(es), err)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "missing.yml")); err == nil || !strings.Contains(err.Error(), "missing.yml") {
		t.Errorf("missing file: %v", err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("directory: %v", err)
	}
	big := filepath.Join(dir, "big.yml")
	if err := os.WriteFile(big, make([]byte, MaxFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("big file: %v", err)
	}
}
