package controlplane

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
)

func frame(stream byte, payload string) []byte {
	h := make([]byte, 8, 8+len(payload))
	h[0] = stream
	binary.BigEndian.PutUint32(h[4:], uint32(len(payload)))
	return append(h, payload...)
}

func TestDemux(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []byte
		want    string
		wantErr string
	}{
		{"empty", nil, "", ""},
		{"stdout and stderr interleaved", bytes.Join([][]byte{frame(1, "I0101 start\n"), frame(2, "E0101 boom\n"), frame(1, "I0101 end\n")}, nil), "I0101 start\nE0101 boom\nI0101 end\n", ""},
		{"empty frame", bytes.Join([][]byte{frame(1, ""), frame(2, "x")}, nil), "x", ""},
		{"frame larger than a read", frame(1, strings.Repeat("a", 100000)), strings.Repeat("a", 100000), ""},
		{"cut payload", frame(1, "hello")[:10], "he", "cut at 2"},
		{"cut header", frame(1, "hello")[:5], "", "frame header"},
		{"raw stream is not multiplexed", []byte("I0101 plain text log\n"), "", "bad frame header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := demux(&out, bytes.NewReader(tc.in))
			if out.String() != tc.want {
				t.Errorf("output %q, want %q", out.String(), tc.want)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("error %v, want one saying %q", err, tc.wantErr)
			}
		})
	}
}

func TestLastLines(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 5, "a\nb\nc"},
		{"", 3, ""},
	} {
		if got := lastLines(tc.in, tc.n); got != tc.want {
			t.Errorf("lastLines(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

func TestPickAPIVersion(t *testing.T) {
	for _, tc := range []struct {
		server, want, wantErr string
	}{
		{"1.41", "1.41", ""},  // Docker 20.10
		{"1.24", "1.24", ""},  // the oldest spoken
		{"1.47", "1.47", ""},  // the newest known
		{"1.51", "1.47", ""},  // newer engines speak older versions
		{"1.100", "1.47", ""}, // compared as numbers, not strings
		{"1.23", "", "older than"},
		{"", "", "does not report"},
	} {
		got, err := pickAPIVersion(tc.server)
		if got != tc.want || (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("pickAPIVersion(%q) = %q, %v; want %q, error %q", tc.server, got, err, tc.want, tc.wantErr)
		}
	}
}

func inspected(t *testing.T, js string) *container {
	t.Helper()
	var raw struct {
		container
		NetworkSettings struct{ Networks map[string]json.RawMessage }
	}
	if err := json.Unmarshal([]byte(js), &raw); err != nil {
		t.Fatal(err)
	}
	c := raw.container
	c.networks = raw.NetworkSettings.Networks
	if err := json.Unmarshal(c.Config, &c.config); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(c.HostConfig, &c.hostConfig); err != nil {
		t.Fatal(err)
	}
	return &c
}

func TestCreateBody(t *testing.T) {
	hostConfig := `{"Binds":["/etc/kubernetes:/etc/kubernetes:z"],"NetworkMode":"%s","RestartPolicy":{"Name":"always","MaximumRetryCount":0},"Privileged":true}`
	config := `{"Hostname":"h1","Image":"rancher/hyperkube:v1","Env":["A=1"],"Entrypoint":["/opt/rke-tools/entrypoint.sh"],"Cmd":["kube-apiserver","--a=1"],"Labels":{"io.rancher.rke.container.name":"kube-apiserver"},"FutureField":{"x":1}}`
	for _, tc := range []struct {
		name         string
		mode         string
		networks     string
		wantHostname bool
		wantNetCfg   bool
	}{
		{"host network: everything kept", "host", `{"host":{"NetworkID":"n1"}}`, true, false},
		{"container network: name fields dropped", "container:abc", `{}`, false, false},
		{"user network: attachments kept", "mynet", `{"mynet":{"IPAMConfig":{"IPv4Address":"10.0.0.5"},"Aliases":["api"],"IPAddress":"10.0.0.5"}}`, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hc := strings.Replace(hostConfig, "%s", tc.mode, 1)
			old := inspected(t, `{"Id":"abc","Image":"sha256:1","Config":`+config+`,"HostConfig":`+hc+`,"NetworkSettings":{"Networks":`+tc.networks+`}}`)
			body, err := createBody(old, "rancher/hyperkube:v1", []string{"kube-apiserver", "--a=1", "--b=2"})
			if err != nil {
				t.Fatal(err)
			}
			if string(body["Cmd"]) != `["kube-apiserver","--a=1","--b=2"]` || string(body["Image"]) != `"rancher/hyperkube:v1"` {
				t.Errorf("Cmd %s, Image %s", body["Cmd"], body["Image"])
			}
			if !jsonEq(t, body["HostConfig"], []byte(hc)) {
				t.Errorf("HostConfig %s, want %s", body["HostConfig"], hc)
			}
			for _, k := range []string{"Env", "Entrypoint", "Labels", "FutureField"} {
				var want map[string]json.RawMessage
				_ = json.Unmarshal([]byte(config), &want)
				if !jsonEq(t, body[k], want[k]) {
					t.Errorf("%s: %s, want %s", k, body[k], want[k])
				}
			}
			if _, ok := body["Hostname"]; ok != tc.wantHostname {
				t.Errorf("Hostname kept: %v", ok)
			}
			nc, ok := body["NetworkingConfig"]
			if ok != tc.wantNetCfg {
				t.Fatalf("NetworkingConfig: %s", nc)
			}
			if ok && !jsonEq(t, nc, []byte(`{"EndpointsConfig":{"mynet":{"IPAMConfig":{"IPv4Address":"10.0.0.5"},"Links":null,"Aliases":["api"]}}}`)) {
				t.Errorf("NetworkingConfig %s", nc)
			}
		})
	}
}

func jsonEq(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

func TestDescribe(t *testing.T) {
	c := inspected(t, `{"Id":"abc","Image":"sha256:1","State":{"Status":"running","Running":true},
		"Mounts":[{"Type":"bind","Source":"/opt/rke/etc/kubernetes","Destination":"/etc/kubernetes"}],
		"Config":{"Image":"rancher/hyperkube:v1","Entrypoint":"/opt/rke-tools/entrypoint.sh","Cmd":["kube-apiserver","--encryption-provider-config=/etc/kubernetes/ssl/encryption.yaml","--encryption-provider-config-automatic-reload=true"]},
		"HostConfig":{"NetworkMode":"host"}}`)
	a := describe(c, "/opt/rke/etc/kubernetes/ssl/encryption.yaml")
	if !a.Running || a.Status != "running" || a.Image != "rancher/hyperkube:v1" || !a.AutomaticReload ||
		a.EncryptionProviderConfig != "/etc/kubernetes/ssl/encryption.yaml" || !a.ProviderConfigSet() ||
		a.Args[0] != "/opt/rke-tools/entrypoint.sh" || len(a.Args) != 4 {
		t.Errorf("describe: %+v", a)
	}
	if a2 := describe(c, "/etc/kubernetes/ssl/encryption.yaml"); a2.ProviderConfigSet() {
		t.Error("flag counted as set for a file the container does not mount")
	}
}
