package cluster

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
)

// Where RKE takes a string it takes any scalar, as yaml.v2 gives it: the
// text it is written with, or, when custom_config is a mapping and RKE has
// re-encoded the file through JSON first, the text of its JSON value. The
// wants are what rancher/rke cluster.ParseConfig's decoding gives.
func TestRKEScalarText(t *testing.T) {
	tests := []struct {
		yaml        string
		text, viaJS string // without, and with, a custom_config mapping
	}{
		{"4", "4", "4"},
		{"250", "250", "250"},
		{"true", "true", "true"},
		{"True", "True", "true"},
		{"yes", "yes", "true"},
		{"1.0", "1.0", "1"},
		{".5", ".5", "0.5"},
		{"1e3", "1e3", "1000"},
		{"0x1F", "0x1F", "31"},
		{"12345678901234567890", "12345678901234567890", "12345678901234567000"},
		{`"07"`, "07", "07"},
		{"2001-12-14", "2001-12-14", "2001-12-14"},
		{"", "", ""},
	}
	custom := "    secrets_encryption_config:\n      enabled: true\n      custom_config:\n        apiVersion: apiserver.config.k8s.io/v1\n        kind: EncryptionConfiguration\n        resources:\n          - resources: [secrets]\n            providers:\n              - identity: {}\n"
	for _, tt := range tests {
		for _, viaJSON := range []bool{false, true} {
			want := tt.text
			yml := nodesYAML + "services:\n  kube-api:\n    extra_args:\n      v: " + tt.yaml + "\n    extra_binds:\n      - " + tt.yaml + "\n"
			if viaJSON {
				want = tt.viaJS
				yml += custom
			}
			t.Run(fmt.Sprintf("%s/custom_config=%v", tt.yaml, viaJSON), func(t *testing.T) {
				cfg, err := Parse("cluster.yml", []byte(yml))
				if err != nil {
					t.Fatal(err)
				}
				if got := cfg.KubeAPI.ExtraArgs["v"]; got != want {
					t.Errorf("extra_args.v = %q, want %q", got, want)
				}
				if got := cfg.KubeAPI.ExtraBinds; !slices.Equal(got, []string{want}) {
					t.Errorf("extra_binds = %q, want [%q]", got, want)
				}
			})
		}
	}
}

// Every service's extra_args, extra_args_array, extra_binds and extra_env
// (and their win_ forms) take numbers and booleans.
func TestRKEServicesTakeScalars(t *testing.T) {
	services := []string{"etcd", "kube-api", "kube-controller", "scheduler", "kubelet", "kubeproxy"}
	body := func(prefix string) string {
		return "    " + prefix + "extra_args:\n      v: 4\n      profiling: false\n" +
			"    " + prefix + "extra_args_array:\n      v: [1, true]\n" +
			"    " + prefix + "extra_binds: [8, false]\n" +
			"    " + prefix + "extra_env: [2.5, yes]\n"
	}
	want := rkeService{
		ExtraArgs: rkeArgs{"v": "4", "profiling": "false"}, ExtraArgsArray: rkeArgsArray{"v": {"1", "true"}},
		ExtraBinds: rkeList{"8", "false"}, ExtraEnv: rkeList{"2.5", "yes"},
	}
	for _, svc := range services {
		for _, prefix := range []string{"", "win_"} {
			t.Run(prefix+svc, func(t *testing.T) {
				yml := nodesYAML + "services:\n  " + svc + ":\n" + body(prefix)
				if _, err := Parse("cluster.yml", []byte(yml)); err != nil {
					t.Fatal(err)
				}
				var raw rawConfig
				l := &errorList{file: "cluster.yml"}
				if !decodeAsRKE([]byte(yml), &raw, l) {
					t.Fatal(l.errs)
				}
				got := map[string]rkeService{
					"etcd": raw.Services.Etcd.rkeService, "kube-api": raw.Services.KubeAPI.rkeService,
					"kube-controller": raw.Services.KubeController, "scheduler": raw.Services.Scheduler,
					"kubelet": raw.Services.Kubelet, "kubeproxy": raw.Services.Kubeproxy,
				}[svc]
				if prefix == "win_" {
					got = rkeService{ExtraArgs: got.WinExtraArgs, ExtraArgsArray: got.WinExtraArgsArray, ExtraBinds: got.WinExtraBinds, ExtraEnv: got.WinExtraEnv}
				}
				if !maps.Equal(got.ExtraArgs, want.ExtraArgs) || !maps.EqualFunc(got.ExtraArgsArray, want.ExtraArgsArray, slices.Equal) ||
					!slices.Equal(got.ExtraBinds, want.ExtraBinds) || !slices.Equal(got.ExtraEnv, want.ExtraEnv) {
					t.Errorf("services.%s = %+v\nwant %+v", svc, got, want)
				}
			})
		}
	}
}

// Scalars elsewhere that RKE types as strings: a numeric user or hostname.
func TestRKENodeScalars(t *testing.T) {
	yml := "nodes:\n  - address: 10.0.0.1\n    user: 1000\n    hostname_override: 7\n    role: [controlplane]\ncluster_name: 2024\n"
	cfg, err := Parse("cluster.yml", []byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	if n := cfg.Nodes[0]; n.User != "1000" || n.HostnameOverride != "7" || cfg.ClusterName != "2024" {
		t.Errorf("node %+v, cluster_name %q", n, cfg.ClusterName)
	}
}

// What yaml.v2 alone refuses is reported with its line, and never with the
// value, which may be an inline key.
func TestDecodeAsRKEError(t *testing.T) {
	var raw rawConfig
	l := &errorList{file: "cluster.yml"}
	if decodeAsRKE([]byte("nodes:\n  - ssh_key: [secret-material]\n    address: a\n"), &raw, l) {
		t.Fatal("decodeAsRKE accepted a list as an ssh_key")
	}
	msg := l.errs.Error()
	if !strings.HasPrefix(msg, "cluster.yml: RKE cannot read this file: ") || !strings.Contains(msg, "line 2") {
		t.Errorf("error = %q", msg)
	}
	l = &errorList{file: "cluster.yml"}
	decodeAsRKE([]byte("nodes:\n  - address: [a]\n    ssh_key: secret-material\n    role: secret-material\n"), &raw, l)
	if msg := l.errs.Error(); strings.Contains(msg, "secret-material") || strings.Contains(msg, "rke") {
		t.Errorf("error shows the value or a Go type: %q", msg)
	}
}
