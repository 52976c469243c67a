package controlplane

import (
	"slices"
	"testing"
)

const epc = "--encryption-provider-config"

func TestLookupFlag(t *testing.T) {
	for _, tc := range []struct {
		name      string
		args      []string
		flag      string
		wantValue string
		wantFound bool
	}{
		{"equals form", []string{"kube-apiserver", "--a=1", epc + "=/etc/kubernetes/ssl/encryption.yaml"}, flagProviderConfig, "/etc/kubernetes/ssl/encryption.yaml", true},
		{"separate value", []string{"kube-apiserver", epc, "/x.yaml", "--b=2"}, flagProviderConfig, "/x.yaml", true},
		{"absent", []string{"kube-apiserver", "--a=1"}, flagProviderConfig, "", false},
		{"longer flag is not it", []string{epc + "-automatic-reload"}, flagProviderConfig, "", false},
		{"last wins", []string{epc + "=/a", epc + "=/b"}, flagProviderConfig, "/b", true},
		{"bare at the end", []string{"x", epc}, flagProviderConfig, "", true},
		{"empty value", []string{epc + "="}, flagProviderConfig, "", true},
		{"after -- is not a flag", []string{"--", epc + "=/a"}, flagProviderConfig, "", false},
		{"bool bare", []string{"--encryption-provider-config-automatic-reload", "--x"}, flagAutomaticReload, "true", true},
		{"bool never takes the next arg", []string{"--encryption-provider-config-automatic-reload", "false"}, flagAutomaticReload, "true", true},
		{"bool with value", []string{"--encryption-provider-config-automatic-reload=false"}, flagAutomaticReload, "false", true},
		{"single dash is not it", []string{"-encryption-provider-config=/a"}, flagProviderConfig, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, found := lookupFlag(tc.args, tc.flag)
			if v != tc.wantValue || found != tc.wantFound {
				t.Errorf("lookupFlag(%q, %s) = %q, %v; want %q, %v", tc.args, tc.flag, v, found, tc.wantValue, tc.wantFound)
			}
		})
	}
}

func TestBoolFlag(t *testing.T) {
	for args, want := range map[string]bool{
		"--encryption-provider-config-automatic-reload":       true,
		"--encryption-provider-config-automatic-reload=true":  true,
		"--encryption-provider-config-automatic-reload=1":     true,
		"--encryption-provider-config-automatic-reload=false": false,
		"--encryption-provider-config-automatic-reload=junk":  false,
		"--other": false,
	} {
		if got := boolFlag([]string{args}, flagAutomaticReload); got != want {
			t.Errorf("boolFlag(%s) = %v", args, got)
		}
	}
}

func TestSetAndRemoveFlag(t *testing.T) {
	const path = "/etc/kubernetes/ssl/encryption.yaml"
	for _, tc := range []struct {
		name string
		in   []string
		set  []string // setFlag(in, flagProviderConfig, path)
		rm   []string // removeFlag(in, flagProviderConfig)
	}{
		{
			name: "absent: appended, everything else kept in order",
			in:   []string{"kube-apiserver", "--b=2", "--a=1"},
			set:  []string{"kube-apiserver", "--b=2", "--a=1", epc + "=" + path},
			rm:   []string{"kube-apiserver", "--b=2", "--a=1"},
		},
		{
			name: "present: replaced in place",
			in:   []string{"kube-apiserver", epc + "=/old.yaml", "--a=1"},
			set:  []string{"kube-apiserver", epc + "=" + path, "--a=1"},
			rm:   []string{"kube-apiserver", "--a=1"},
		},
		{
			name: "separate value and duplicates",
			in:   []string{"kube-apiserver", epc, "/old.yaml", "--a=1", epc + "=/other.yaml"},
			set:  []string{"kube-apiserver", epc + "=" + path, "--a=1"},
			rm:   []string{"kube-apiserver", "--a=1"},
		},
		{
			name: "reload flag is another flag",
			in:   []string{"kube-apiserver", "--encryption-provider-config-automatic-reload", epc + "=/a"},
			set:  []string{"kube-apiserver", "--encryption-provider-config-automatic-reload", epc + "=" + path},
			rm:   []string{"kube-apiserver", "--encryption-provider-config-automatic-reload"},
		},
		{
			name: "empty command",
			in:   nil,
			set:  []string{epc + "=" + path},
			rm:   []string{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.in)
			if got := setFlag(in, flagProviderConfig, path); !slices.Equal(got, tc.set) {
				t.Errorf("setFlag:\n got %q\nwant %q", got, tc.set)
			}
			if got := removeFlag(in, flagProviderConfig); !slices.Equal(got, tc.rm) {
				t.Errorf("removeFlag:\n got %q\nwant %q", got, tc.rm)
			}
			if !slices.Equal(in, tc.in) {
				t.Errorf("the input was modified: %q", in)
			}
		})
	}
	reload := []string{"x", "--encryption-provider-config-automatic-reload", "false", epc + "=/a"}
	if got := removeFlag(reload, flagAutomaticReload); !slices.Equal(got, []string{"x", "false", epc + "=/a"}) {
		t.Errorf("removeFlag of a boolean flag took the next argument: %q", got)
	}
}

func TestContainerPath(t *testing.T) {
	const file = "/etc/kubernetes/ssl/encryption.yaml"
	for _, tc := range []struct {
		name   string
		mounts []mount
		host   string
		want   string
	}{
		{"RKE bind", []mount{{"bind", "/etc/kubernetes", "/etc/kubernetes"}}, file, file},
		{"prefix_path", []mount{{"bind", "/opt/rke/etc/kubernetes", "/etc/kubernetes"}}, "/opt/rke" + file, file},
		{"most specific wins", []mount{{"bind", "/", "/host"}, {"bind", "/etc/kubernetes/ssl", "/ssl"}}, file, "/ssl/encryption.yaml"},
		{"root bind", []mount{{"bind", "/", "/host"}}, file, "/host" + file},
		{"the file itself", []mount{{"bind", file, "/enc.yaml"}}, file, "/enc.yaml"},
		{"no cover", []mount{{"bind", "/var/lib/kubelet", "/var/lib/kubelet"}}, file, ""},
		{"prefix of a name is no cover", []mount{{"bind", "/etc/kube", "/k"}}, file, ""},
		{"volumes do not count", []mount{{"volume", "/etc/kubernetes", "/etc/kubernetes"}}, file, ""},
		{"trailing slash", []mount{{"bind", "/etc/kubernetes/", "/etc/kubernetes"}}, file, file},
		{"none", nil, file, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := containerPath(tc.mounts, tc.host); got != tc.want {
				t.Errorf("containerPath = %q, want %q", got, tc.want)
			}
		})
	}
}
