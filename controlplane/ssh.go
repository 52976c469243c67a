package controlplane

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/atrest-io/atrest/cluster"
)

// login is how to log in to one SSH server: a node or the bastion.
type login struct {
	name      string // for errors: the node's name, or "bastion host ADDR"
	addr      string // host:port
	user      string
	agentAuth bool
	key       cluster.Sensitive // inline private key
	keyPath   string
	cert      cluster.Sensitive // inline certificate
	certPath  string
}

func nodeLogin(n cluster.Node) login {
	return login{
		name: n.Name(), addr: net.JoinHostPort(n.Address, strconv.Itoa(n.Port)), user: n.User,
		agentAuth: n.SSHAgentAuth, key: n.SSHKey, keyPath: n.SSHKeyPath, cert: n.SSHCert, certPath: n.SSHCertPath,
	}
}

func bastionLogin(b *cluster.Bastion) login {
	addr := net.JoinHostPort(b.Address, strconv.Itoa(b.Port))
	return login{
		name: "bastion host " + addr, addr: addr, user: b.User,
		agentAuth: b.SSHAgentAuth, key: b.SSHKey, keyPath: b.SSHKeyPath, cert: b.SSHCert, certPath: b.SSHCertPath,
	}
}

// HostKeyError is an SSH host key that known_hosts does not vouch for. It
// names the node and the fingerprint of the key the server presented, so
// that an operator can compare it with the host's real key.
type HostKeyError struct {
	Node        string
	Address     string // host:port dialled
	File        string // the known_hosts file
	KeyType     string // type of the presented key ("ssh-ed25519")
	Fingerprint string // SHA256 fingerprint of the presented key
	// Known lists the keys known_hosts has for the address
	// ("line 3: ssh-ed25519 SHA256:..."); empty when the host is unknown.
	Known   []string
	Revoked bool // the presented key is marked @revoked
}

func (e *HostKeyError) Error() string {
	switch {
	case e.Revoked:
		return fmt.Sprintf("host key of %s (%s) is REVOKED in %s: it presented %s %s; refusing to connect", e.Node, e.Address, e.File, e.KeyType, e.Fingerprint)
	case len(e.Known) == 0:
		host, port, _ := net.SplitHostPort(e.Address)
		return fmt.Sprintf("host key of %s (%s) is unknown: it presented %s %s, and %s has no entry for it; if that is the host's real key (check with ssh-keygen -lf on the host), add it: ssh-keyscan -p %s %s >> %s",
			e.Node, e.Address, e.KeyType, e.Fingerprint, e.File, port, host, e.File)
	}
	return fmt.Sprintf("host key of %s (%s) CHANGED: it presented %s %s, but %s lists %s; this may be a man-in-the-middle attack; if the host was rebuilt, check its new key on the host and update %s",
		e.Node, e.Address, e.KeyType, e.Fingerprint, e.File, strings.Join(e.Known, ", "), e.File)
}

// hostKeys checks host keys against a known_hosts file, or accepts any key
// when verification is switched off.
type hostKeys struct {
	file     string
	check    ssh.HostKeyCallback // nil: accept anything
	hasCerts bool                // the file has @cert-authority lines
}

func newHostKeys(file string, insecure bool) (*hostKeys, error) {
	if insecure {
		return &hostKeys{}, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("known_hosts file (settings ssh.knownHostsFile): %w", err)
	}
	check, err := knownhosts.New(file)
	if err != nil {
		return nil, fmt.Errorf("known_hosts file %s: %w", file, err)
	}
	return &hostKeys{file: file, check: check, hasCerts: bytes.Contains(data, []byte("@cert-authority"))}, nil
}

// callback verifies the key the server of node presents.
func (h *hostKeys) callback(node string) ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		if h.check == nil {
			return nil
		}
		err := h.check(hostname, remote, key)
		if err == nil {
			return nil
		}
		return hostKeyError(node, hostname, h.file, key, err)
	}
}

// hostKeyError turns a knownhosts failure into a HostKeyError.
func hostKeyError(node, addr, file string, key ssh.PublicKey, err error) error {
	he := &HostKeyError{Node: node, Address: addr, File: file, KeyType: key.Type(), Fingerprint: ssh.FingerprintSHA256(key)}
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	switch {
	case errors.As(err, &ke):
		for _, k := range ke.Want {
			he.Known = append(he.Known, fmt.Sprintf("line %d: %s %s", k.Line, k.Key.Type(), ssh.FingerprintSHA256(k.Key)))
		}
	case errors.As(err, &re):
		he.Revoked = true
	default:
		// A certificate that no @cert-authority line vouches for, or a
		// malformed address: say what knownhosts said.
		return fmt.Errorf("host key of %s (%s), %s %s: %w", node, addr, key.Type(), ssh.FingerprintSHA256(key), err)
	}
	return he
}

// placeholderKey is a key no host has: checking it against known_hosts
// yields every key the file holds for an address.
var placeholderKey = func() ssh.PublicKey {
	k, err := ssh.NewPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	if err != nil {
		panic(err)
	}
	return k
}()

// algorithms returns the host key algorithms to ask addr for: those of the
// keys known_hosts holds for it. Without this the server picks its
// favourite type, and a host listed with only its ECDSA key fails the check
// when it offers ed25519. Nil means the client's defaults.
func (h *hostKeys) algorithms(addr string) []string {
	if h.check == nil || h.hasCerts {
		// A host certificate is checked against its CA, not listed per
		// host: restricting would hide it.
		return nil
	}
	err := h.check(addr, addrString(addr), placeholderKey)
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) {
		return nil
	}
	var algos []string
	for _, k := range ke.Want {
		for _, a := range algorithmsForKeyType(k.Key.Type()) {
			if !slices.Contains(algos, a) {
				algos = append(algos, a)
			}
		}
	}
	return algos
}

// algorithmsForKeyType maps a known_hosts key type to the host key
// algorithms that prove possession of such a key.
func algorithmsForKeyType(t string) []string {
	if t == ssh.KeyAlgoRSA {
		// An RSA key signs with SHA-2 on any current server; ssh-rsa
		// (SHA-1) last, for old ones.
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{t}
}

// addrString is a net.Addr that is just a host:port string.
type addrString string

func (a addrString) Network() string { return "tcp" }
func (a addrString) String() string  { return string(a) }

// authMethods builds the ways to log in with l: the agent's keys when
// ssh_agent_auth is set, then the private key (inline ssh_key, else
// keyFile from settings, else ssh_key_path), each paired with the
// certificate when one is given. closeAgent must be called after the
// handshake.
func authMethods(l login, keyFile string, timeout time.Duration) (methods []ssh.AuthMethod, closeAgent func(), err error) {
	signers, closeAgent, err := loginSigners(l, keyFile, timeout)
	if err != nil {
		return nil, closeAgent, err
	}
	return []ssh.AuthMethod{ssh.PublicKeys(signers...)}, closeAgent, nil
}

// loginSigners returns the keys authMethods offers, in order.
func loginSigners(l login, keyFile string, timeout time.Duration) (signers []ssh.Signer, closeAgent func(), err error) {
	closeAgent = func() {}
	if l.agentAuth {
		sock := os.Getenv("SSH_AUTH_SOCK")
		if sock == "" {
			return nil, closeAgent, errors.New("ssh_agent_auth is set but SSH_AUTH_SOCK is not: start ssh-agent and add the key, or unset ssh_agent_auth")
		}
		conn, err := net.DialTimeout("unix", sock, timeout)
		if err != nil {
			return nil, closeAgent, fmt.Errorf("ssh agent at SSH_AUTH_SOCK: %w", err)
		}
		closeAgent = func() { conn.Close() }
		// The agent signs during the handshake, which the dial bounds by
		// timeout as well.
		_ = conn.SetDeadline(time.Now().Add(2 * timeout))
		agentSigners, err := agent.NewClient(conn).Signers()
		if err != nil {
			conn.Close()
			return nil, func() {}, fmt.Errorf("ssh agent at SSH_AUTH_SOCK: list keys: %w", err)
		}
		signers = append(signers, agentSigners...)
	}

	key, source, err := privateKey(l, keyFile)
	switch {
	case err != nil && l.agentAuth && (errors.Is(err, os.ErrNotExist) || isPassphraseMissing(err)):
		// The agent holds the key: the file is optional.
	case err != nil:
		closeAgent()
		return nil, func() {}, err
	case key != nil:
		signers = append(signers, key)
	}
	if len(signers) == 0 {
		closeAgent()
		return nil, func() {}, fmt.Errorf("no SSH key: the agent has none and %s gives none", source)
	}

	cert, certSource, err := certificate(l)
	if err != nil {
		closeAgent()
		return nil, func() {}, err
	}
	if cert != nil {
		var certSigners []ssh.Signer
		for _, s := range signers {
			if bytes.Equal(s.PublicKey().Marshal(), cert.Key.Marshal()) {
				cs, err := ssh.NewCertSigner(cert, s)
				if err != nil {
					closeAgent()
					return nil, func() {}, fmt.Errorf("%s: %w", certSource, err)
				}
				certSigners = append(certSigners, cs)
			}
		}
		if len(certSigners) == 0 {
			closeAgent()
			offered := source
			if l.agentAuth {
				offered += " and the agent"
			}
			return nil, func() {}, fmt.Errorf("%s certifies key %s, which is not among the keys offered (%s)", certSource, ssh.FingerprintSHA256(cert.Key), offered)
		}
		// The certificate first: a server that trusts the CA may not
		// list the bare key.
		signers = append(certSigners, signers...)
	}
	return signers, closeAgent, nil
}

// privateKey reads and parses the private key for l. source names where it
// came from, for errors; a nil key and nil error cannot happen.
func privateKey(l login, keyFile string) (ssh.Signer, string, error) {
	var data []byte
	var source string
	switch {
	case l.key != "":
		source = "ssh_key (inline in cluster.yml)"
		data = []byte(l.key)
	default:
		file := l.keyPath
		source = "ssh_key_path " + file
		if keyFile != "" {
			file = keyFile
			source = "settings ssh.keyFile " + file
		}
		file, err := expandHome(file)
		if err != nil {
			return nil, source, fmt.Errorf("%s: %w", source, err)
		}
		if data, err = os.ReadFile(file); err != nil {
			return nil, source, fmt.Errorf("read SSH key (%s): %w; set ssh_key_path in cluster.yml or ssh.keyFile in the settings", source, err)
		}
	}
	s, err := ssh.ParsePrivateKey(data)
	if isPassphraseMissing(err) {
		return nil, source, fmt.Errorf("SSH key (%s) is protected by a passphrase, which atrest cannot ask for: add it to ssh-agent and set ssh_agent_auth: true: %w", source, err)
	}
	if err != nil {
		// The parser's message never holds key bytes.
		return nil, source, fmt.Errorf("SSH key (%s) is not a private key atrest can use: %w", source, err)
	}
	return s, source, nil
}

func isPassphraseMissing(err error) bool {
	var pm *ssh.PassphraseMissingError
	return errors.As(err, &pm)
}

// certificate reads the SSH certificate for l, if one is configured.
func certificate(l login) (*ssh.Certificate, string, error) {
	var data []byte
	var source string
	switch {
	case l.cert != "":
		source = "ssh_cert (inline in cluster.yml)"
		data = []byte(l.cert)
	case l.certPath != "":
		source = "ssh_cert_path " + l.certPath
		file, err := expandHome(l.certPath)
		if err != nil {
			return nil, source, fmt.Errorf("%s: %w", source, err)
		}
		if data, err = os.ReadFile(file); err != nil {
			return nil, source, fmt.Errorf("read SSH certificate (%s): %w", source, err)
		}
	default:
		return nil, "", nil
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return nil, source, fmt.Errorf("SSH certificate (%s): %w", source, err)
	}
	cert, ok := pub.(*ssh.Certificate)
	if !ok {
		return nil, source, fmt.Errorf("SSH certificate (%s) is a plain %s public key, not a certificate", source, pub.Type())
	}
	return cert, source, nil
}

// expandHome expands a leading ~/ as RKE does.
func expandHome(p string) (string, error) {
	if p != "~" && !strings.HasPrefix(p, "~/") {
		return p, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("expand %s: %w", p, err)
	}
	return filepath.Join(home, strings.TrimPrefix(p, "~")), nil
}

// dialer opens SSH connections, directly or through a bastion.
type dialer struct {
	hostKeys *hostKeys
	keyFile  string
	timeout  time.Duration
	via      *ssh.Client // the bastion, or nil
}

// dial logs in to l. The error is a *NodeError of kind ErrUnreachable,
// ErrAuthRefused or ErrHostKey (or nil kind for local problems such as an
// unreadable key).
func (d *dialer) dial(ctx context.Context, l login) (*ssh.Client, error) {
	const op = "connect over SSH"
	methods, closeAgent, err := authMethods(l, d.keyFile, d.timeout)
	if err != nil {
		return nil, nodeErr(l.name, op, nil, err)
	}
	defer closeAgent()

	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	var conn net.Conn
	if d.via != nil {
		conn, err = d.via.DialContext(ctx, "tcp", l.addr)
	} else {
		var nd net.Dialer
		conn, err = nd.DialContext(ctx, "tcp", l.addr)
	}
	if err != nil {
		how := "dial " + l.addr
		if d.via != nil {
			how += " through the bastion host"
		}
		return nil, nodeErr(l.name, op, ErrUnreachable, fmt.Errorf("%s: %w", how, err))
	}
	// Deadlines do not work on connections tunnelled through a bastion:
	// closing the connection is what bounds the handshake.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	cfg := &ssh.ClientConfig{
		User:              l.user,
		Auth:              methods,
		HostKeyCallback:   d.hostKeys.callback(l.name),
		HostKeyAlgorithms: d.hostKeys.algorithms(l.addr),
		Timeout:           d.timeout,
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, l.addr, cfg)
	if !stop() {
		// The handshake ran out of time, whatever it returned.
		if err == nil {
			c.Close()
		}
		return nil, nodeErr(l.name, op, ErrUnreachable, fmt.Errorf("SSH handshake with %s: no answer within %s", l.addr, d.timeout))
	}
	if err != nil {
		conn.Close()
		return nil, classifyHandshake(l, err)
	}
	return ssh.NewClient(c, chans, reqs), nil
}

func classifyHandshake(l login, err error) error {
	const op = "connect over SSH"
	var he *HostKeyError
	switch {
	case errors.As(err, &he):
		return nodeErr(l.name, op, ErrHostKey, he)
	case strings.Contains(err.Error(), "host key"):
		// A certificate no CA vouches for: hostKeyError said so.
		return nodeErr(l.name, op, ErrHostKey, err)
	case strings.Contains(err.Error(), "unable to authenticate"):
		return nodeErr(l.name, op, ErrAuthRefused, fmt.Errorf("user %q at %s: %w; check the node's authorized_keys and the key in cluster.yml (ssh_key_path) or settings (ssh.keyFile)", l.user, l.addr, err))
	case errors.Is(err, io.EOF):
		return nodeErr(l.name, op, ErrUnreachable, fmt.Errorf("%s closed the connection during the SSH handshake: %w", l.addr, err))
	}
	return nodeErr(l.name, op, ErrUnreachable, err)
}
