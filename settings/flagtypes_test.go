package settings

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// TestFlagTypes: each kind of setting has its flag's type, and the same
// value round-trips through its flag, its variable and the file, while a
// bad one names the setting and its source whichever it came from.
func TestFlagTypes(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		key, typ, value, yaml, bad string
		get                        func(*Settings) any
		want                       any
	}{
		{"daemon.suspend", "bool", "true", "daemon: {suspend: true}", "maybe", func(s *Settings) any { return s.Daemon.Suspend }, true},
		{"kubernetes.burst", "int", "500", "kubernetes: {burst: 500}", "many", func(s *Settings) any { return s.Kubernetes.Burst }, 500},
		{"kubernetes.qps", "float", "250.5", "kubernetes: {qps: 250.5}", "fast", func(s *Settings) any { return s.Kubernetes.QPS }, 250.5},
		{"git.interval", "duration", "30s", "git: {interval: 30s}", "often", func(s *Settings) any { return s.Git.Interval }, 30 * time.Second},
		{"etcd.endpoints", "strings", "https://127.0.0.1:2379,https://127.0.0.2:2379", "etcd: {endpoints: [https://127.0.0.1:2379, https://127.0.0.2:2379]}", "", func(s *Settings) any { return s.Etcd.Endpoints }, []string{"https://127.0.0.1:2379", "https://127.0.0.2:2379"}},
		{"vault.address", "string", "https://vault.example:8200", "vault: {address: https://vault.example:8200}", "", func(s *Settings) any { return s.Vault.Address }, "https://vault.example:8200"},
	}
	fs := pflag.NewFlagSet("types", pflag.ContinueOnError)
	Bind(fs)
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			flag := "--" + FlagName(tt.key)
			if got := fs.Lookup(FlagName(tt.key)).Value.Type(); got != tt.typ {
				t.Errorf("%s is a %s flag, want %s", flag, got, tt.typ)
			}
			file := filepath.Join(dir, strings.ReplaceAll(tt.key, ".", "-")+".yaml")
			writeFile(t, file, tt.yaml+"\n")
			for _, src := range []struct {
				name string
				args []string
				env  map[string]string
			}{
				{"flag " + flag, []string{flag + "=" + tt.value}, nil},
				{"environment variable " + EnvName(tt.key), nil, map[string]string{EnvName(tt.key): tt.value}},
				{"settings file " + file, []string{"--settings", file}, nil},
			} {
				s, err := load(t, src.args, src.env)
				if err != nil {
					t.Errorf("from %s: %v", src.name, err)
					continue
				}
				if got := tt.get(s); !reflect.DeepEqual(got, tt.want) || s.Source(tt.key) != src.name {
					t.Errorf("from %s: %v (source %s), want %v", src.name, got, s.Source(tt.key), tt.want)
				}
			}
			if tt.bad == "" {
				return
			}
			for _, src := range []struct {
				name string
				args []string
				env  map[string]string
			}{
				{"(from flag " + flag + ")", []string{flag + "=" + tt.bad}, nil},
				{"(from environment variable " + EnvName(tt.key) + ")", nil, map[string]string{EnvName(tt.key): tt.bad}},
			} {
				if _, err := load(t, src.args, src.env); err == nil || !strings.Contains(err.Error(), tt.key) || !strings.Contains(err.Error(), src.name) {
					t.Errorf("%q %s: %v, want an error naming %s %s", tt.bad, src.name, err, tt.key, src.name)
				}
			}
		})
	}
	// A bare boolean flag is true.
	if s, err := load(t, []string{"--daemon-suspend"}, nil); err != nil || !s.Daemon.Suspend {
		t.Errorf("bare --daemon-suspend: %v %v", s, err)
	}
}
