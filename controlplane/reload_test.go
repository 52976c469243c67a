package controlplane

import (
	"strings"
	"testing"
	"time"
)

// A slice of a v1.37 kube-apiserver's /metrics around the reload families.
const metricsText = `# HELP apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds [ALPHA] Timestamp of the last successful or failed automatic reload of encryption configuration split by apiserver identity.
# TYPE apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds gauge
apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds{apiserver_id_hash="sha256:aa",status="failure"} 1.7645e+09
apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds{apiserver_id_hash="sha256:aa",status="success"} 1.7646000005e+09
# HELP apiserver_encryption_config_controller_automatic_reloads_total [ALPHA] Total number of reload successes and failures of encryption configuration split by apiserver identity.
# TYPE apiserver_encryption_config_controller_automatic_reloads_total counter
apiserver_encryption_config_controller_automatic_reloads_total{apiserver_id_hash="sha256:aa",status="failure"} 2
apiserver_encryption_config_controller_automatic_reloads_total{apiserver_id_hash="sha256:aa",status="success"} 3
# HELP apiserver_encryption_config_controller_last_config_info [ALPHA] Information about the last applied encryption configuration with hash as label, split by apiserver identity.
# TYPE apiserver_encryption_config_controller_last_config_info gauge
apiserver_encryption_config_controller_last_config_info{apiserver_id_hash="sha256:aa",hash="sha256:0123"} 1
# HELP apiserver_request_total [STABLE] Counter of apiserver requests.
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",verb="GET"} 12
`

func TestParseReloadMetrics(t *testing.T) {
	m, err := parseReloadMetrics(strings.NewReader(metricsText))
	if err != nil {
		t.Fatal(err)
	}
	want := ReloadMetrics{
		ConfigHash: "sha256:0123", Successes: 3, Failures: 2,
		LastSuccess: time.Unix(1764600000, 500000000), LastFailure: time.Unix(1764500000, 0),
	}
	if m.ConfigHash != want.ConfigHash || m.Successes != want.Successes || m.Failures != want.Failures ||
		m.LastSuccess.Sub(want.LastSuccess).Abs() > time.Millisecond || !m.LastFailure.Equal(want.LastFailure) {
		t.Errorf("got %+v, want %+v", m, want)
	}
	// A kube-apiserver that never reloaded exports no series.
	m, err = parseReloadMetrics(strings.NewReader("# HELP apiserver_request_total x\n# TYPE apiserver_request_total counter\napiserver_request_total 1\n"))
	if err != nil || m != (ReloadMetrics{}) {
		t.Errorf("no reloads: %+v, %v", m, err)
	}
}

func TestParseVersion(t *testing.T) {
	for _, c := range []struct {
		body        string
		major, minr int
	}{
		{`{"major":"1","minor":"32","gitVersion":"v1.32.13"}`, 1, 32},
		{`{"major":"1","minor":"32+","gitVersion":"v1.32.5-rancher1"}`, 1, 32},
		{`{"major":"","minor":"","gitVersion":"v1.37.2"}`, 1, 37},
	} {
		v, err := parseVersion([]byte(c.body))
		if err != nil || v.Major != c.major || v.Minor != c.minr {
			t.Errorf("%s: %+v, %v", c.body, v, err)
		}
	}
	if _, err := parseVersion([]byte(`{"gitVersion":"unknown"}`)); err == nil {
		t.Error("a version without numbers was read")
	}
}

func TestReloadState(t *testing.T) {
	v132 := Version{Major: 1, Minor: 32}
	v137 := Version{Major: 1, Minor: 37}
	v129 := Version{Major: 1, Minor: 29}
	start := time.Unix(1000, 0)
	written := time.Unix(2000, 0)
	f := ProviderFile{Present: true, SHA256: "0123", ModTime: written}
	at := func(d time.Duration) time.Time { return written.Add(d) }
	cases := []struct {
		name string
		v    Version
		f    ProviderFile
		m    ReloadMetrics
		want LoadState
	}{
		{"v1.37: the hash in force is the file's", v137, f, ReloadMetrics{ConfigHash: "sha256:0123"}, LoadInForce},
		{"v1.37: another hash, no failure since the write", v137, f, ReloadMetrics{ConfigHash: "sha256:ffff", LastFailure: at(-time.Second)}, LoadUnknown},
		{"v1.37: another hash and a failure since the write", v137, f, ReloadMetrics{ConfigHash: "sha256:ffff", LastFailure: at(time.Second)}, LoadRefused},
		{"v1.32: written before the start", v132, ProviderFile{Present: true, ModTime: start.Add(-time.Second)}, ReloadMetrics{}, LoadInForce},
		{"v1.32: a success since the write", v132, f, ReloadMetrics{Successes: 1, LastSuccess: at(time.Second)}, LoadInForce},
		{"v1.32: a success before the write only", v132, f, ReloadMetrics{Successes: 1, LastSuccess: at(-time.Millisecond)}, LoadUnknown},
		{"v1.32: a failure since the write", v132, f, ReloadMetrics{LastSuccess: at(-time.Second), LastFailure: at(time.Second)}, LoadRefused},
		{"v1.32: a failure, then a success", v132, f, ReloadMetrics{LastFailure: at(time.Second), LastSuccess: at(2 * time.Second)}, LoadInForce},
		{"v1.32: a success, then a failure", v132, f, ReloadMetrics{LastSuccess: at(time.Second), LastFailure: at(2 * time.Second)}, LoadRefused},
		{"v1.29 proves nothing", v129, f, ReloadMetrics{LastSuccess: at(time.Second)}, LoadUnknown},
		{"no file", v137, ProviderFile{}, ReloadMetrics{ConfigHash: "sha256:"}, LoadUnknown},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := reloadState(c.v, c.f, start, c.m); got != c.want {
				t.Errorf("got %s, want %s", got, c.want)
			}
		})
	}
}
