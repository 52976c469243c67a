//go:build sandbox

package examples

import (
	"bytes"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
)

// TestPlainHTTPVault plays the eavesdropper on the path to the sandbox's
// plain-http Vault: a relay that records what crosses it. The real atrest
// binary, with the sandbox's settings but without vault.insecureAllowHTTP,
// refuses the http:// address before it sends a byte; VAULT_SKIP_VERIFY
// alone is refused too. With the setting it works, warns that it is
// insecure, naming the setting, and the relay reads the Vault token in the
// clear: what the setting lets anyone on the path do.
func TestPlainHTTPVault(t *testing.T) {
	if !sb.Vault.PlainHTTP() {
		t.Fatal("this package's sandbox must run Vault on plain http (not PersistentVault): the test needs a plain-http Vault to refuse")
	}
	target, err := url.Parse(sb.Vault.Address)
	if err != nil {
		t.Fatal(err)
	}
	relay := newRelay(t, target.Host)
	token, err := os.ReadFile(sb.Vault.TokenFile)
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"ATREST_SETTINGS=" + sb.SettingsFile, "ATREST_VAULT_ADDRESS=http://" + relay.addr, "VAULT_ADDR=", "VAULT_AGENT_ADDR=", "VAULT_SKIP_VERIFY="}
	unlock := []string{"unlock", "--config", sb.ClusterYML}

	t.Run("refused without the setting", func(t *testing.T) {
		code, out := atrest(t, append(env, "ATREST_VAULT_INSECURE_ALLOW_HTTP=false"), unlock...)
		if code != 2 {
			t.Errorf("exit %d, want 2:\n%s", code, out)
		}
		for _, w := range []string{`vault.address: "http://` + relay.addr + `" is plain http`, "use an https:// address", "DANGEROUS, allow it with vault.insecureAllowHTTP", "(from environment variable ATREST_VAULT_ADDRESS)"} {
			if !strings.Contains(out, w) {
				t.Errorf("output does not say %q:\n%s", w, out)
			}
		}
		if n, _ := relay.seen(); n != 0 {
			t.Errorf("atrest opened %d connections to the plain-http Vault before refusing it", n)
		}
	})
	t.Run("VAULT_SKIP_VERIFY alone is refused", func(t *testing.T) {
		code, out := atrest(t, append(env, "VAULT_SKIP_VERIFY=true"), unlock...)
		if code != 2 || !strings.Contains(out, `VAULT_SKIP_VERIFY: "true" (environment variable) turns off the verification`) || !strings.Contains(out, "vault.insecureSkipTLSVerify") {
			t.Errorf("exit %d, want 2 and VAULT_SKIP_VERIFY refused:\n%s", code, out)
		}
		if n, _ := relay.seen(); n != 0 {
			t.Errorf("atrest opened %d connections to Vault before refusing VAULT_SKIP_VERIFY", n)
		}
	})
	t.Run("works, warned, with the setting", func(t *testing.T) {
		code, out := atrest(t, append(env, "ATREST_VAULT_INSECURE_ALLOW_HTTP=true"), unlock...)
		if code != 0 || !strings.Contains(out, "the transition lock is free") {
			t.Fatalf("exit %d, want 0:\n%s", code, out)
		}
		if !strings.Contains(out, `level=WARN msg="INSECURE: Vault is reached over plain http`) || !strings.Contains(out, "setting=vault.insecureAllowHTTP") {
			t.Errorf("no warning naming vault.insecureAllowHTTP:\n%s", out)
		}
		n, clear := relay.seen()
		if n == 0 || !bytes.Contains(clear, bytes.TrimSpace(token)) {
			t.Errorf("the relay saw %d connections and no token in the clear: this test no longer shows what the setting allows", n)
		}
	})
}

// relay forwards TCP to target and keeps what the client sent.
type relay struct {
	addr  string
	mu    sync.Mutex
	conns int
	sent  bytes.Buffer
}

func newRelay(t *testing.T, target string) *relay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	r := &relay{addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.conns++
			r.mu.Unlock()
			go r.serve(c, target)
		}
	}()
	return r
}

func (r *relay) serve(c net.Conn, target string) {
	defer c.Close()
	up, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	go func() {
		_, _ = io.Copy(c, up)
		c.Close()
	}()
	_, _ = io.Copy(up, io.TeeReader(c, writerFunc(func(p []byte) (int, error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.sent.Write(p)
	})))
}

func (r *relay) seen() (int, []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns, bytes.Clone(r.sent.Bytes())
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
