package rke

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// standIn is an rke that checks what it is given, writes a state holding
// keys and a kubeconfig beside its cluster.yml, as `rke up` does, and
// ends as $MODE says: ok, fail, or on SIGINT.
const standIn = `#!/bin/sh
[ "$1" = up ] && [ "$2" = --config ] || { echo "bad args: $*" >&2; exit 64; }
cfg=$3; dir=$(dirname "$cfg"); state=${cfg%.yml}.rkestate
echo "$dir" > "$RECORD"
[ "$(stat -c %a "$dir")" = 700 ] && [ "$(stat -c %a "$cfg")" = 600 ] && [ "$(stat -c %a "$state")" = 600 ] || { echo "not private" >&2; exit 65; }
grep -q custom_config "$cfg" && grep -q encryptionConfig "$state" || { echo "not prepared" >&2; exit 66; }
write() {
  printf '{"currentState":{"encryptionConfig":"x","rkeConfig":{"services":{"kubeApi":{"secretsEncryptionConfig":{"enabled":true,"customConfig":{"k":"SECRET"}}}}}},"desiredState":{"encryptionConfig":"x","certificatesBundle":{"c":"new"}}}' > "$state"
  echo "kubeconfig from rke" > "$dir/kube_config_$(basename "$cfg")"
}
case $MODE in
ok) write; exit 0 ;;
fail) write; exit 3 ;;
signal) trap 'write; exit 130' INT; echo waiting; while :; do sleep 0.1; done ;;
esac
`

func TestRun(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "rke")
	if err := os.WriteFile(bin, []byte(standIn), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"ok", "fail", "signal"} {
		t.Run(mode, func(t *testing.T) {
			work := t.TempDir()
			config := filepath.Join(work, "cluster.yml")
			if err := os.WriteFile(StateFilePath(config), []byte(`{"currentState":{"rkeConfig":{}}}`), 0o600); err != nil {
				t.Fatal(err)
			}
			record := filepath.Join(work, "record")
			t.Setenv("MODE", mode)
			t.Setenv("RECORD", record)
			sigs := make(chan os.Signal, 1)
			var out bytes.Buffer
			if mode == "signal" {
				go func() {
					for !strings.Contains(syncRead(&out), "waiting") {
						time.Sleep(20 * time.Millisecond)
					}
					sigs <- syscall.SIGINT
				}()
			}
			res, err := Run(context.Background(), RunOptions{Binary: bin, Config: config,
				ClusterYML: []byte("custom_config: {}\n"), State: []byte(`{"currentState":{"encryptionConfig":"x"}}`),
				Signals: sigs, Stdout: &lockedWriter{b: &out}, Stderr: &lockedWriter{b: &out}})
			want := map[string]int{"ok": 0, "fail": 3, "signal": 130}[mode]
			if res.ExitCode != want || (err == nil) != (mode == "ok") {
				t.Fatalf("exit %d, err %v, want exit %d; rke said:\n%s", res.ExitCode, err, want, syncRead(&out))
			}
			state, err := os.ReadFile(StateFilePath(config))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(state, []byte("SECRET")) || bytes.Contains(state, []byte("encryptionConfig")) || !bytes.Contains(state, []byte(`"new"`)) {
				t.Errorf("the state kept is not rke's, stripped:\n%s", state)
			}
			if len(res.Removed) != 3 || !res.StateKept {
				t.Errorf("removed %v", res.Removed)
			}
			if st, _ := os.Stat(StateFilePath(config)); st.Mode().Perm() != 0o600 {
				t.Errorf("state mode %v", st.Mode())
			}
			if kc, err := os.ReadFile(KubeconfigPath(config)); err != nil || string(kc) != "kubeconfig from rke\n" || !res.Kubeconfig {
				t.Errorf("kubeconfig %q, %v, %v", kc, err, res.Kubeconfig)
			}
			dir, err := os.ReadFile(record)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(strings.TrimSpace(string(dir))); !os.IsNotExist(err) {
				t.Errorf("the private directory is still there: %v", err)
			}
		})
	}
}

func TestRunRefusesConfigArg(t *testing.T) {
	if _, err := Run(context.Background(), RunOptions{Binary: "true", Config: "cluster.yml", Args: []string{"--config=x.yml"}}); err == nil {
		t.Fatal("no error")
	}
}

// lockedWriter lets rke's output be read while it runs.
type lockedWriter struct{ b *bytes.Buffer }

var outMu = make(chan struct{}, 1)

func (w *lockedWriter) Write(p []byte) (int, error) {
	outMu <- struct{}{}
	defer func() { <-outMu }()
	return w.b.Write(p)
}

func syncRead(b *bytes.Buffer) string {
	outMu <- struct{}{}
	defer func() { <-outMu }()
	return b.String()
}
