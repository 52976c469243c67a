package gitsource

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestNewValidates(t *testing.T) {
	dir := t.TempDir()
	newSSHKey(t, dir, "id", "ed25519")
	key := filepath.Join(dir, "id")
	hostPub := newSSHKey(t, dir, "host", "ed25519")
	known := writeFile(t, filepath.Join(dir, "known_hosts"), "git.example.com "+hostPub+"\n[git.example.com]:2222 "+hostPub+"\n")
	sshKeygen(t, dir, nil, "-q", "-t", "ed25519", "-N", "secret", "-f", filepath.Join(dir, "locked"))
	pw := writeFile(t, filepath.Join(dir, "pw"), "pw\n")
	empty := writeFile(t, filepath.Join(dir, "empty"), "")
	notPEM := writeFile(t, filepath.Join(dir, "not.pem"), "hello\n")
	cache := filepath.Join(dir, "cache")
	ssh := Config{URL: "ssh://git@git.example.com/org/repo.git", SSHKeyFile: key, KnownHostsFile: known, CacheDir: cache}

	for _, tc := range []struct {
		name string
		cfg  Config
		errs []string // fragments; none: valid
	}{
		{"ssh ok", ssh, nil},
		{"scp-like ok", with(ssh, func(c *Config) { c.URL = "git@git.example.com:org/repo.git" }), nil},
		{"ssh port ok", with(ssh, func(c *Config) { c.URL = "ssh://git@git.example.com:2222/org/repo.git" }), nil},
		{"https ok", Config{URL: "https://git.example.com/org/repo.git", Username: "u", PasswordFile: pw, CacheDir: cache}, nil},
		{"local ok", Config{URL: "./repo", Ref: "refs/tags/v1.2.3", Path: "clusters/prod", CacheDir: cache}, nil},
		{"pinned ok", Config{URL: "/srv/repo", Ref: strings.Repeat("A1", 20), CacheDir: cache}, nil},
		{"insecure ssh ok", with(ssh, func(c *Config) { c.KnownHostsFile, c.InsecureSkipHostKeyVerification = "", true }), nil},

		{"nothing", Config{}, []string{"URL: required", "CacheDir: required"}},
		{"git://", Config{URL: "git://host/repo", CacheDir: cache}, []string{"URL:", "neither authenticated nor encrypted"}},
		{"ftp", Config{URL: "ftp://host/repo", CacheDir: cache}, []string{"URL:", `unsupported scheme "ftp"`}},
		{"password in URL", Config{URL: "https://u:hunter2@host/repo", CacheDir: cache}, []string{"URL: contains a password: put it in PasswordFile"}},
		{"short hash", Config{URL: "/srv/repo", Ref: "a1b2c3d", CacheDir: cache}, []string{"Ref:", "abbreviated commit"}},
		{"bad ref", Config{URL: "/srv/repo", Ref: "main..dev", CacheDir: cache}, []string{"Ref:", "not a valid"}},
		{"path escapes", Config{URL: "/srv/repo", Path: "../etc", CacheDir: cache}, []string{"Path:", "inside the repository"}},
		{"absolute path", Config{URL: "/srv/repo", Path: "/etc", CacheDir: cache}, []string{"Path:"}},
		{"file escapes", Config{URL: "/srv/repo", Files: []string{"../x.yml"}, CacheDir: cache}, []string{"Files:", "clean relative"}},
		{"file twice", Config{URL: "/srv/repo", Files: []string{"a.yml"}, OptionalFiles: []string{"a.yml"}, CacheDir: cache}, []string{"Files:", "named twice"}},
		{"only optional files", Config{URL: "/srv/repo", OptionalFiles: []string{"a.yml"}, CacheDir: cache}, []string{"Files: name at least one"}},
		{"negative size", Config{URL: "/srv/repo", MaxFileSize: -1, CacheDir: cache}, []string{"MaxFileSize:"}},
		{"ssh without key", with(ssh, func(c *Config) { c.SSHKeyFile = "" }), []string{"SSHKeyFile: required for an SSH URL"}},
		{"ssh key and agent", with(ssh, func(c *Config) { c.UseSSHAgent = true }), []string{"either SSHKeyFile or UseSSHAgent"}},
		{"ssh key missing", with(ssh, func(c *Config) { c.SSHKeyFile = filepath.Join(dir, "nope") }), []string{"SSHKeyFile:", "nope"}},
		{"ssh key locked", with(ssh, func(c *Config) { c.SSHKeyFile = filepath.Join(dir, "locked") }), []string{"SSHKeyFile:", "passphrase", "UseSSHAgent"}},
		{"ssh key not a key", with(ssh, func(c *Config) { c.SSHKeyFile = notPEM }), []string{"SSHKeyFile:", "not an SSH private key"}},
		{"no known_hosts", with(ssh, func(c *Config) { c.KnownHostsFile = "" }), []string{"KnownHostsFile: required for an SSH URL"}},
		{"host not in known_hosts", with(ssh, func(c *Config) { c.URL = "ssh://git@other.example.com/repo" }), []string{"KnownHostsFile:", "no key for other.example.com:22"}},
		{"https options on ssh", with(ssh, func(c *Config) { c.PasswordFile = pw }), []string{"PasswordFile: is for HTTPS URLs"}},
		{"password without user", Config{URL: "https://h/r", PasswordFile: pw, CacheDir: cache}, []string{"Username: required with PasswordFile"}},
		{"password and token", Config{URL: "https://h/r", Username: "u", PasswordFile: pw, BearerTokenFile: pw, CacheDir: cache}, []string{"BearerTokenFile: give either"}},
		{"empty token", Config{URL: "https://h/r", BearerTokenFile: empty, CacheDir: cache}, []string{"BearerTokenFile:", "is empty"}},
		{"bad CA", Config{URL: "https://h/r", CAFile: notPEM, CacheDir: cache}, []string{"CAFile:", "no PEM certificate"}},
		{"ssh options on https", Config{URL: "https://h/r", KnownHostsFile: known, CacheDir: cache}, []string{"KnownHostsFile: is for SSH URLs"}},
		{"bad allowed signers", Config{URL: "/srv/repo", AllowedSignersFile: notPEM, CacheDir: cache}, []string{"AllowedSignersFile:", "line 1"}},
		{"bad keyring", Config{URL: "/srv/repo", OpenPGPKeyringFile: notPEM, CacheDir: cache}, []string{"OpenPGPKeyringFile:", "not an armored OpenPGP keyring"}},
		{"cache dir is a file", Config{URL: "/srv/repo", CacheDir: pw}, []string{"CacheDir:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, f := range tc.errs {
				if !strings.Contains(err.Error(), f) {
					t.Errorf("error does not say %q: %v", f, err)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error shows the password: %v", err)
			}
		})
	}
}

func with(c Config, f func(*Config)) Config {
	f(&c)
	return c
}

// TestHostKeyAlgorithms: the algorithms offered follow the key types
// known_hosts lists for the host, hashed entries included.
func TestHostKeyAlgorithms(t *testing.T) {
	dir := t.TempDir()
	ed := newSSHKey(t, dir, "ed", "ed25519")
	ec := newSSHKey(t, dir, "ec", "ecdsa")
	rsa := newSSHKey(t, dir, "rsa", "rsa")
	file := writeFile(t, filepath.Join(dir, "known_hosts"), strings.Join([]string{
		"[127.0.0.9]:2222 " + ec,
		"[127.0.0.9]:2222 " + ed,
		"git.example.com,10.0.0.1 " + rsa,
		"@revoked * " + rsa, // revoked lines are not offered as algorithms
	}, "\n")+"\n")
	// Hash every host name, as HashKnownHosts does.
	sshKeygen(t, dir, nil, "-q", "-H", "-f", file)
	data, _ := os.ReadFile(file)
	if strings.Contains(string(data), "127.0.0.9") {
		t.Fatalf("ssh-keygen -H left names:\n%s", data)
	}
	db, err := knownhosts.New(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		host string
		want []string
	}{
		{"127.0.0.9:2222", []string{ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256}},
		{"git.example.com:22", []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}},
		{"10.0.0.1:22", []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}},
		{"127.0.0.9:22", nil},
		{"unknown.example.com:22", nil},
	} {
		if got := hostKeyAlgorithms(db, tc.host); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.host, got, tc.want)
		}
	}

	// The callback names what the server showed and what was expected.
	s := &Source{cfg: Config{KnownHostsFile: file}, sshHostPort: "127.0.0.9:2222"}
	check, algos, err := s.hostKeyCheck()
	if err != nil || len(algos) != 2 {
		t.Fatal(algos, err)
	}
	other := newSSHKey(t, dir, "other", "ed25519")
	otherKey, _, _, _, _ := ssh.ParseAuthorizedKey([]byte(other))
	edKey, _, _, _, _ := ssh.ParseAuthorizedKey([]byte(ed))
	addr := &net.TCPAddr{IP: net.ParseIP("127.0.0.9"), Port: 2222}
	if err := check("127.0.0.9:2222", addr, edKey); err != nil {
		t.Errorf("the listed key: %v", err)
	}
	err = check("127.0.0.9:2222", addr, otherKey)
	var hk *HostKeyError
	if !errors.As(err, &hk) || hk.Fingerprint != ssh.FingerprintSHA256(otherKey) || len(hk.Want) != 2 ||
		!strings.Contains(err.Error(), "host key mismatch for 127.0.0.9:2222: it showed ssh-ed25519 "+ssh.FingerprintSHA256(otherKey)) ||
		!strings.Contains(err.Error(), ssh.FingerprintSHA256(edKey)) {
		t.Errorf("a wrong key: %v", err)
	}
	if classify(err) != ReasonHostKeyMismatch {
		t.Errorf("classified as %s", classify(err))
	}
	err = check("unknown.example.com:22", &net.TCPAddr{IP: net.ParseIP("10.9.9.9"), Port: 22}, otherKey)
	if !errors.As(err, &hk) || !strings.Contains(err.Error(), "is not in "+file) {
		t.Errorf("an unknown host: %v", err)
	}
	rsaKey, _, _, _, _ := ssh.ParseAuthorizedKey([]byte(rsa))
	err = check("git.example.com:22", &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 22}, rsaKey)
	if !errors.As(err, &hk) || !hk.Revoked || !strings.Contains(err.Error(), "marked @revoked") {
		t.Errorf("a revoked key: %v", err)
	}
}
