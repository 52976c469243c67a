package gitsource

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// sshAuth is the go-git SSH AuthMethod of one poll: it hands go-git a
// complete ssh.ClientConfig, so host key checking, the host key algorithms
// and the dial timeout are ours, not go-git's defaults (which read
// ~/.ssh/known_hosts).
type sshAuth struct {
	user   string
	config *ssh.ClientConfig
}

// Name and String describe the method for go-git; no secret is in them.
func (a *sshAuth) Name() string   { return "atrest-ssh" }
func (a *sshAuth) String() string { return "atrest-ssh user " + a.user }

// ClientConfig returns a copy: go-git may adjust what it is given.
func (a *sshAuth) ClientConfig() (*ssh.ClientConfig, error) {
	c := *a.config
	return &c, nil
}

// closer is what an auth method holds open for a poll (the agent socket).
type closer func()

// authMethod builds the transport credentials for one poll from the files
// named in the config, read afresh so that rotated secrets are picked up.
func (s *Source) authMethod() (transport.AuthMethod, closer, error) {
	switch s.transport {
	case transportSSH:
		return s.sshAuthMethod()
	case transportHTTP:
		a, err := s.httpAuthMethod()
		return a, func() {}, err
	}
	return nil, func() {}, nil
}

func (s *Source) httpAuthMethod() (transport.AuthMethod, error) {
	switch {
	case s.cfg.BearerTokenFile != "":
		tok, err := readSecretFile("BearerTokenFile", s.cfg.BearerTokenFile)
		if err != nil {
			return nil, err
		}
		return &githttp.TokenAuth{Token: tok}, nil
	case s.cfg.PasswordFile != "":
		pw, err := readSecretFile("PasswordFile", s.cfg.PasswordFile)
		if err != nil {
			return nil, err
		}
		return &githttp.BasicAuth{Username: s.cfg.Username, Password: pw}, nil
	case s.cfg.Username != "":
		return &githttp.BasicAuth{Username: s.cfg.Username}, nil
	}
	return nil, nil
}

// readSecretFile reads a password or token file. The content never
// appears in an error.
func readSecretFile(field, name string) (string, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	secret := strings.TrimRight(string(data), "\r\n")
	if secret == "" {
		return "", fmt.Errorf("%s: %s is empty", field, name)
	}
	return secret, nil
}

func (s *Source) sshAuthMethod() (transport.AuthMethod, closer, error) {
	hostKeys, algos, err := s.hostKeyCheck()
	if err != nil {
		return nil, nil, err
	}
	cfg := &ssh.ClientConfig{
		User:              s.sshUser,
		HostKeyCallback:   hostKeys,
		HostKeyAlgorithms: algos,
		Timeout:           s.cfg.Timeout,
	}
	done := func() {}
	switch {
	case s.cfg.SSHKeyFile != "":
		signer, err := loadSSHKey(s.cfg.SSHKeyFile)
		if err != nil {
			return nil, nil, err
		}
		cfg.Auth = []ssh.AuthMethod{ssh.PublicKeys(signer)}
	case s.cfg.UseSSHAgent:
		sock := os.Getenv("SSH_AUTH_SOCK")
		if sock == "" {
			return nil, nil, errors.New("UseSSHAgent: SSH_AUTH_SOCK is not set")
		}
		conn, err := net.DialTimeout("unix", sock, 5*time.Second)
		if err != nil {
			return nil, nil, fmt.Errorf("UseSSHAgent: connect to the SSH agent at %s: %w", sock, err)
		}
		cfg.Auth = []ssh.AuthMethod{ssh.PublicKeysCallback(agent.NewClient(conn).Signers)}
		done = func() { conn.Close() }
	}
	return &sshAuth{user: s.sshUser, config: cfg}, done, nil
}

// loadSSHKey reads an unencrypted private key. The error never quotes the
// file's content.
func loadSSHKey(file string) (ssh.Signer, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("SSHKeyFile: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		return nil, fmt.Errorf("SSHKeyFile: %s is protected by a passphrase: give an unencrypted key, or load it into an SSH agent and set UseSSHAgent", file)
	}
	if err != nil {
		return nil, fmt.Errorf("SSHKeyFile: %s is not an SSH private key: %w", file, err)
	}
	return signer, nil
}

// hostKeyCheck returns the callback that verifies the server's host key
// against KnownHostsFile, and the host key algorithms to offer. The
// algorithms matter: a server with several host keys shows the one the
// client prefers, and a key of a type known_hosts does not list for the
// host counts as a mismatch, so the client must ask only for the types
// known_hosts has.
func (s *Source) hostKeyCheck() (ssh.HostKeyCallback, []string, error) {
	if s.cfg.InsecureSkipHostKeyVerification {
		return ssh.InsecureIgnoreHostKey(), nil, nil //nolint:gosec // the operator asked for it, loudly
	}
	file := s.cfg.KnownHostsFile
	db, err := knownhosts.New(file)
	if err != nil {
		return nil, nil, fmt.Errorf("KnownHostsFile: %w", err)
	}
	algos := hostKeyAlgorithms(db, s.sshHostPort)
	check := func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := db(hostname, remote, key)
		if err == nil {
			return nil
		}
		hk := &HostKeyError{Host: hostname, Fingerprint: ssh.FingerprintSHA256(key), KeyType: key.Type(), File: file}
		var keyErr *knownhosts.KeyError
		var revoked *knownhosts.RevokedError
		switch {
		case errors.As(err, &revoked):
			hk.Revoked = true
		case errors.As(err, &keyErr):
			for _, w := range keyErr.Want {
				hk.Want = append(hk.Want, w.Key.Type()+" "+ssh.FingerprintSHA256(w.Key))
			}
		default:
			return fmt.Errorf("check host key of %s against %s: %w", hostname, file, err)
		}
		return hk
	}
	return check, algos, nil
}

// probeKey is a key no known_hosts lists: asking the database about it
// makes it return every key it does list for a host. It is derived from a
// fixed seed: it is never used to sign anything.
func probeKey() ssh.PublicKey {
	k, _ := ssh.NewPublicKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0xa7}, ed25519.SeedSize)).Public())
	return k
}

// hostKeyAlgorithms lists the host key algorithms known_hosts has keys of
// for hostPort, in hostKeyPreference order; nil when the host is not
// listed (the handshake then fails in the callback with a clear error). It
// works for hashed entries too, because it asks the database rather than
// reading the file.
func hostKeyAlgorithms(db ssh.HostKeyCallback, hostPort string) []string {
	err := db(hostPort, &net.TCPAddr{IP: net.IPv4zero}, probeKey())
	var keyErr *knownhosts.KeyError
	if !errors.As(err, &keyErr) || len(keyErr.Want) == 0 {
		return nil
	}
	have := map[string]bool{}
	for _, w := range keyErr.Want {
		have[w.Key.Type()] = true
	}
	var algos []string
	for _, a := range hostKeyPreference {
		if have[keyTypeOfAlgorithm(a)] {
			algos = append(algos, a)
		}
	}
	// Types without an entry above (newer ones) are offered last, as is.
	for t := range have {
		if t != ssh.KeyAlgoRSA && !slices.Contains(algos, t) {
			algos = append(algos, t)
		}
	}
	return algos
}

// hostKeyPreference is the order host key algorithms are offered in. RSA
// keys are offered with SHA-2 signatures only, as OpenSSH does since 8.8.
var hostKeyPreference = []string{
	ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
	ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoSKED25519, ssh.KeyAlgoSKECDSA256,
}

// keyTypeOfAlgorithm maps a host key signature algorithm to the key type
// known_hosts records: the rsa-sha2-* algorithms use ssh-rsa keys.
func keyTypeOfAlgorithm(algo string) string {
	switch algo {
	case ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSASHA512:
		return ssh.KeyAlgoRSA
	}
	return algo
}
