package controlplane

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/atrest-io/atrest/cluster"
)

func TestParseHealth(t *testing.T) {
	for _, tc := range []struct {
		out   string
		keyID string
		ok    bool
	}{
		{"/etc/kubernetes/atrest-kms/kms.sock: healthz ok, key_id transit/k:v2, version v2\n", "transit/k:v2", true},
		{"/x.sock: healthz vault down, key_id transit/k:v2, version v2\n", "transit/k:v2", false},
		{"error: kms plugin at /x.sock: status: rpc error: connection refused\n", "", false},
	} {
		id, ok := parseHealth(tc.out)
		if id != tc.keyID || ok != tc.ok {
			t.Errorf("parseHealth(%q) = %q %v, want %q %v", tc.out, id, ok, tc.keyID, tc.ok)
		}
	}
}

// TestPluginBody: the container runs atrest's plugin restarted always,
// on the host network, with the socket where kube-apiserver's container
// sees it and the credential read-only, and labelled with its spec.
func TestPluginBody(t *testing.T) {
	spec := PluginSpec{Image: "registry.example/atrest:v1", Args: []string{"--transit-key", "k"}, Binds: []string{"/etc/ssl/vault.pem:/etc/ssl/vault.pem:ro"}}
	body := pluginBody(spec, "/opt/rke/etc/kubernetes/atrest-kms")
	var got struct {
		Image      string
		Entrypoint []string
		Cmd        []string
		Labels     map[string]string
		HostConfig struct {
			NetworkMode   string
			RestartPolicy struct{ Name string }
			Binds         []string
		}
	}
	b, _ := json.Marshal(body)
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := []string{"/opt/rke/etc/kubernetes/atrest-kms:" + cluster.KMSSocketDir, KMSCredentialDir + ":" + KMSCredentialDir + ":ro", "/etc/ssl/vault.pem:/etc/ssl/vault.pem:ro"}
	if got.Image != spec.Image || !slices.Equal(got.Entrypoint, []string{KMSPluginBinary}) || !slices.Equal(got.Cmd, []string{"kms-plugin", "--transit-key", "k"}) ||
		got.HostConfig.NetworkMode != "host" || got.HostConfig.RestartPolicy.Name != "always" || !slices.Equal(got.HostConfig.Binds, want) ||
		got.Labels[specLabel] != spec.Hash() {
		t.Errorf("create body: %s", b)
	}
	other := spec
	other.Image = "registry.example/atrest:v2"
	if other.Hash() == spec.Hash() {
		t.Error("another image has the same spec hash: the plugin would not be upgraded")
	}
	st := PluginState{Present: true, Running: true, Healthy: true, SpecHash: spec.Hash(), KeyID: "transit/k:v1"}
	if !st.Current(spec) || st.Current(other) || !strings.Contains(st.String(), "key_id transit/k:v1") {
		t.Errorf("state %v: current for spec, not for another", st)
	}
}

func TestKMSHealthy(t *testing.T) {
	readyz := func(lines ...string) error {
		body := []byte(strings.Join(append(lines, "readyz check failed\n"), "\n"))
		return &NotReadyError{Status: "500 Internal Server Error", Failed: failedNames(body), Detail: failedChecks(body)}
	}
	for _, tc := range []struct {
		name   string
		answer error
		want   bool
	}{
		{"ready", nil, true},
		{"the aggregate check (automatic reload)", readyz("[+]ping ok", "[-]kms-providers failed: reason withheld", "[+]etcd ok"), false},
		{"one provider's check", readyz("[+]ping ok", "[-]kms-provider-0 failed: reason withheld"), false},
		{"a key it lacks, not its plugin", readyz("[+]ping ok", "[+]kms-providers ok", "[-]informer-sync failed: reason withheld"), true},
		{"no answer at all", errors.New("dial tcp 127.0.0.2:6443: connection refused"), false},
	} {
		if got := kmsHealthy(tc.answer); got != tc.want {
			t.Errorf("%s: kmsHealthy = %v, want %v", tc.name, got, tc.want)
		}
	}
}
