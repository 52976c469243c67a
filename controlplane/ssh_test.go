package controlplane

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/atrest-io/atrest/cluster"
)

func newSigner(t *testing.T, kind string) ssh.Signer {
	t.Helper()
	var key any
	switch kind {
	case "ed25519":
		_, key, _ = ed25519.GenerateKey(rand.Reader)
	case "ecdsa":
		key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "rsa":
		key, _ = rsa.GenerateKey(rand.Reader, 2048)
	}
	s, err := ssh.NewSignerFromKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// hostKeyFixture is a known_hosts file with: 10.0.0.1 hashed, with an
// ECDSA and an ed25519 key; host-b:2222 with an RSA key; and a revoked key.
type hostKeyFixture struct {
	file                   string
	aECDSA, aED25519, bRSA ssh.Signer
	revoked                ssh.Signer
}

func newHostKeyFixture(t *testing.T) hostKeyFixture {
	f := hostKeyFixture{aECDSA: newSigner(t, "ecdsa"), aED25519: newSigner(t, "ed25519"), bRSA: newSigner(t, "rsa"), revoked: newSigner(t, "ed25519")}
	lines := []string{
		"# a comment",
		knownhosts.Line([]string{knownhosts.HashHostname("10.0.0.1")}, f.aECDSA.PublicKey()),
		knownhosts.Line([]string{knownhosts.HashHostname("10.0.0.1")}, f.aED25519.PublicKey()),
		knownhosts.Line([]string{"[host-b]:2222"}, f.bRSA.PublicKey()),
		"@revoked * " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(f.revoked.PublicKey()))),
	}
	f.file = writeFile(t, "known_hosts", []byte(strings.Join(lines, "\n")+"\n"))
	return f
}

func TestHostKeyCallback(t *testing.T) {
	f := newHostKeyFixture(t)
	hk, err := newHostKeys(f.file, false)
	if err != nil {
		t.Fatal(err)
	}
	stranger := newSigner(t, "ed25519").PublicKey()
	for _, tc := range []struct {
		name    string
		addr    string
		key     ssh.PublicKey
		wantErr []string // all in the message; nil: accepted
	}{
		{"hashed entry, first key type", "10.0.0.1:22", f.aECDSA.PublicKey(), nil},
		{"hashed entry, second key type", "10.0.0.1:22", f.aED25519.PublicKey(), nil},
		{"non-default port", "host-b:2222", f.bRSA.PublicKey(), nil},
		{"changed key", "10.0.0.1:22", stranger, []string{"node-a", "CHANGED", "10.0.0.1:22", ssh.FingerprintSHA256(stranger), "man-in-the-middle",
			"line 2: ecdsa-sha2-nistp256 " + ssh.FingerprintSHA256(f.aECDSA.PublicKey()), "line 3: ssh-ed25519 " + ssh.FingerprintSHA256(f.aED25519.PublicKey())}},
		{"known key on another port", "host-b:22", f.bRSA.PublicKey(), []string{"unknown", "ssh-keyscan -p 22 host-b >> " + f.file}},
		{"unknown host", "10.9.9.9:22", stranger, []string{"node-a", "unknown", "10.9.9.9:22", "ssh-ed25519 " + ssh.FingerprintSHA256(stranger), "ssh-keyscan -p 22 10.9.9.9"}},
		{"revoked", "10.0.0.1:22", f.revoked.PublicKey(), []string{"REVOKED", ssh.FingerprintSHA256(f.revoked.PublicKey())}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, port, _ := net.SplitHostPort(tc.addr)
			remote := &net.TCPAddr{IP: net.ParseIP(host), Port: atoi(port)}
			err := hk.callback("node-a")(tc.addr, remote, tc.key)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var he *HostKeyError
			if !errors.As(err, &he) {
				t.Fatalf("error %v is not a HostKeyError", err)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not say %q:\n%v", want, err)
				}
			}
		})
	}
}

func atoi(s string) int {
	var n int
	fmt.Sscan(s, &n)
	return n
}

func TestHostKeyAlgorithms(t *testing.T) {
	f := newHostKeyFixture(t)
	hk, err := newHostKeys(f.file, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr string
		want []string
	}{
		// File order: the server proves the key the file lists first.
		{"10.0.0.1:22", []string{ssh.KeyAlgoECDSA256, ssh.KeyAlgoED25519}},
		{"host-b:2222", []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}},
		{"10.9.9.9:22", nil}, // unknown: the handshake fails with the presented key
	} {
		if got := hk.algorithms(tc.addr); !slices.Equal(got, tc.want) {
			t.Errorf("algorithms(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
	insecure, _ := newHostKeys("", true)
	if got := insecure.algorithms("10.0.0.1:22"); got != nil {
		t.Errorf("insecure: %v", got)
	}
	ca := newSigner(t, "ed25519")
	withCA := writeFile(t, "known_hosts", append(mustRead(t, f.file), []byte("@cert-authority *.example.com "+string(ssh.MarshalAuthorizedKey(ca.PublicKey())))...))
	hkCA, err := newHostKeys(withCA, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := hkCA.algorithms("10.0.0.1:22"); got != nil {
		t.Errorf("with a @cert-authority line the algorithms must stay open (certificates): %v", got)
	}
}

func mustRead(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNewHostKeysErrors(t *testing.T) {
	_, err := newHostKeys(filepath.Join(t.TempDir(), "missing"), false)
	if err == nil || !strings.Contains(err.Error(), "ssh.knownHostsFile") {
		t.Errorf("missing file: %v", err)
	}
	_, err = newHostKeys(writeFile(t, "known_hosts", []byte("not a known_hosts line\n")), false)
	if err == nil || !strings.Contains(err.Error(), "known_hosts") {
		t.Errorf("garbage file: %v", err)
	}
}

func privatePEM(t *testing.T, passphrase string) []byte {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	var block *pem.Block
	var err error
	if passphrase == "" {
		block, err = ssh.MarshalPrivateKey(key, "test")
	} else {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(key, "test", []byte(passphrase))
	}
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(block)
}

func TestPrivateKeySources(t *testing.T) {
	inline := privatePEM(t, "")
	fromPath := writeFile(t, "id_path", privatePEM(t, ""))
	fromSettings := writeFile(t, "id_settings", privatePEM(t, ""))
	pub := func(pemBytes []byte) string {
		s, err := ssh.ParsePrivateKey(pemBytes)
		if err != nil {
			t.Fatal(err)
		}
		return ssh.FingerprintSHA256(s.PublicKey())
	}
	for _, tc := range []struct {
		name    string
		l       login
		keyFile string
		want    string
		source  string
	}{
		{"inline wins over everything", login{key: cluster.Sensitive(inline), keyPath: fromPath}, fromSettings, pub(inline), "ssh_key (inline"},
		{"settings wins over ssh_key_path", login{keyPath: fromPath}, fromSettings, pub(mustRead(t, fromSettings)), "settings ssh.keyFile"},
		{"ssh_key_path", login{keyPath: fromPath}, "", pub(mustRead(t, fromPath)), "ssh_key_path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, source, err := privateKey(tc.l, tc.keyFile)
			if err != nil {
				t.Fatal(err)
			}
			if got := ssh.FingerprintSHA256(s.PublicKey()); got != tc.want || !strings.HasPrefix(source, tc.source) {
				t.Errorf("got %s from %s", got, source)
			}
		})
	}
}

func TestAuthMethodErrors(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "")
	keyPEM := privatePEM(t, "")
	key, _ := ssh.ParsePrivateKey(keyPEM)
	otherKey := newSigner(t, "ed25519")
	ca := newSigner(t, "ed25519")
	cert := func(k ssh.PublicKey) cluster.Sensitive {
		c := &ssh.Certificate{Key: k, CertType: ssh.UserCert, ValidPrincipals: []string{"rke"}, ValidBefore: ssh.CertTimeInfinity}
		if err := c.SignCert(rand.Reader, ca); err != nil {
			t.Fatal(err)
		}
		return cluster.Sensitive(ssh.MarshalAuthorizedKey(c))
	}
	missing := filepath.Join(t.TempDir(), "id_missing")
	for _, tc := range []struct {
		name    string
		l       login
		keyFile string
		wantErr []string // nil: no error
	}{
		{"key and matching certificate", login{key: cluster.Sensitive(keyPEM), cert: cert(key.PublicKey())}, "", nil},
		{"missing key file", login{keyPath: missing}, "", []string{"read SSH key", "ssh_key_path " + missing, "ssh.keyFile"}},
		{"missing settings key file", login{keyPath: "~/.ssh/id_rsa"}, missing, []string{"settings ssh.keyFile " + missing}},
		{"passphrase", login{key: cluster.Sensitive(privatePEM(t, "pw"))}, "", []string{"passphrase", "ssh-agent", "ssh_agent_auth: true"}},
		{"not a key", login{key: "hello"}, "", []string{"not a private key", "ssh_key (inline"}},
		{"certificate for another key", login{key: cluster.Sensitive(keyPEM), cert: cert(otherKey.PublicKey())}, "", []string{"ssh_cert (inline", ssh.FingerprintSHA256(otherKey.PublicKey()), "not among the keys"}},
		{"plain key as certificate", login{key: cluster.Sensitive(keyPEM), cert: cluster.Sensitive(ssh.MarshalAuthorizedKey(key.PublicKey()))}, "", []string{"not a certificate"}},
		{"missing certificate file", login{key: cluster.Sensitive(keyPEM), certPath: missing}, "", []string{"ssh_cert_path " + missing}},
		{"agent without SSH_AUTH_SOCK", login{agentAuth: true}, "", []string{"SSH_AUTH_SOCK", "ssh_agent_auth"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			methods, closeAgent, err := authMethods(tc.l, tc.keyFile, time.Second)
			closeAgent()
			if tc.wantErr == nil {
				if err != nil || len(methods) != 1 {
					t.Fatalf("%d methods, %v", len(methods), err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not say %q:\n%v", want, err)
				}
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") || strings.Contains(err.Error(), string(keyPEM[40:80])) {
				t.Errorf("key material in the error: %v", err)
			}
		})
	}
}

func TestExpandHome(t *testing.T) {
	t.Setenv("HOME", "/home/rke")
	for in, want := range map[string]string{
		"~/.ssh/id_rsa": "/home/rke/.ssh/id_rsa",
		"~":             "/home/rke",
		"/abs/key":      "/abs/key",
		"~other/key":    "~other/key",
		"rel/key":       "rel/key",
	} {
		if got, err := expandHome(in); err != nil || got != want {
			t.Errorf("expandHome(%q) = %q, %v", in, got, err)
		}
	}
}

func TestClassifyHandshake(t *testing.T) {
	l := login{name: "node1", addr: "10.0.0.1:22", user: "rke"}
	he := &HostKeyError{Node: "node1", Address: l.addr, File: "kh", KeyType: "ssh-ed25519", Fingerprint: "SHA256:x"}
	for _, tc := range []struct {
		err  error
		kind error
		says string
	}{
		{fmt.Errorf("ssh: handshake failed: %w", he), ErrHostKey, "SHA256:x"},
		{errors.New("ssh: handshake failed: ssh: unable to authenticate, attempted methods [none publickey], no supported methods remain"), ErrAuthRefused, `user "rke"`},
		{fmt.Errorf("ssh: handshake failed: %w", io.EOF), ErrUnreachable, "closed the connection"},
		{errors.New("ssh: handshake failed: ssh: no common algorithm for host key; we offered: [ssh-ed25519], peer offered: [rsa-sha2-512]"), ErrHostKey, "no common algorithm"},
	} {
		err := classifyHandshake(l, tc.err)
		if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), "node1") || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("classify(%v) = %v, want kind %v", tc.err, err, tc.kind)
		}
	}
}

func TestAgentSigners(t *testing.T) {
	_, agentKey, _ := ed25519.GenerateKey(rand.Reader)
	keyring := agent.NewKeyring()
	if err := keyring.Add(agent.AddedKey{PrivateKey: agentKey}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = agent.ServeAgent(keyring, c); c.Close() }()
		}
	}()
	t.Setenv("SSH_AUTH_SOCK", sock)

	agentPub, _ := ssh.NewPublicKey(agentKey.Public())
	ca := newSigner(t, "ed25519")
	c := &ssh.Certificate{Key: agentPub, CertType: ssh.UserCert, ValidPrincipals: []string{"rke"}, ValidBefore: ssh.CertTimeInfinity}
	if err := c.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	fileKey := privatePEM(t, "")
	filePub, _ := ssh.ParsePrivateKey(fileKey)
	missing := filepath.Join(t.TempDir(), "id_missing")
	protected := writeFile(t, "id_protected", privatePEM(t, "pw"))

	fp := func(k ssh.PublicKey) string {
		if cert, ok := k.(*ssh.Certificate); ok {
			return "cert:" + ssh.FingerprintSHA256(cert.Key)
		}
		return ssh.FingerprintSHA256(k)
	}
	for _, tc := range []struct {
		name string
		l    login
		want []string
	}{
		{"agent only: a missing key file is fine", login{agentAuth: true, keyPath: missing}, []string{fp(agentPub)}},
		{"agent only: a passphrase-protected file is left to the agent", login{agentAuth: true, keyPath: protected}, []string{fp(agentPub)}},
		{"agent, then the key file", login{agentAuth: true, key: cluster.Sensitive(fileKey)}, []string{fp(agentPub), fp(filePub.PublicKey())}},
		{"certificate first, for the agent's key", login{agentAuth: true, keyPath: missing, cert: cluster.Sensitive(ssh.MarshalAuthorizedKey(c))}, []string{"cert:" + ssh.FingerprintSHA256(agentPub), fp(agentPub)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signers, closeAgent, err := loginSigners(tc.l, "", time.Second)
			defer closeAgent()
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range signers {
				got = append(got, fp(s.PublicKey()))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("signers %v, want %v", got, tc.want)
			}
		})
	}
}
