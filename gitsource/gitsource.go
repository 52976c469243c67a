// Package gitsource follows a ref of a Git repository and returns the files
// atrest reads (cluster.yml, atrest.yaml) at the commit it points to.
//
// A poll first asks the remote which commit the ref points to (what `git
// ls-remote` does: one ref advertisement, kilobytes). Only when that differs
// from what the previous poll saw does it fetch, shallowly (depth 1), into a
// cache directory the Source owns. History rewritten on the remote (a force
// push) is no special case: the new commit is simply the desired state, and
// any inconsistency in the cache is answered by wiping it and fetching
// afresh, so the cache never wedges.
//
// Transport: SSH (ssh:// and scp-like user@host:path) with the host key
// verified against a known_hosts file, HTTP(S) with basic auth or a bearer
// token and an optional CA bundle, and local paths. With AllowedSignersFile
// or OpenPGPKeyringFile set, the commit (and the annotated tag, for a tag
// ref) must carry a signature by a trusted key, or the revision is refused
// and the previous one stays in force.
package gitsource

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/transport"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/ProtonMail/go-crypto/openpgp"
)

// Defaults of the Config.
const (
	DefaultMaxFileSize = 4 << 20
	DefaultTimeout     = time.Minute
	// DefaultFile is the file that must be at the revision.
	DefaultFile = "cluster.yml"
	// DefaultOptionalFile is read when present.
	DefaultOptionalFile = "atrest.yaml"
)

// Config says which repository, ref and folder to follow and how to reach
// and trust the remote.
type Config struct {
	// URL of the repository: ssh://[user@]host[:port]/path,
	// [user@]host:path (scp-like SSH), https://host/path, http://host/path,
	// file:///path or a local path. A password in the URL is refused: use
	// PasswordFile.
	URL string
	// Ref to follow: a branch (main or refs/heads/main), a tag (v1 or
	// refs/tags/v1), HEAD (the remote's default branch; the default), or a
	// full 40-hex commit hash, which pins the revision.
	Ref string
	// Path is the folder inside the repository that holds the files
	// (default ".", the top).
	Path string

	// SSHKeyFile is an unencrypted private key for SSH.
	SSHKeyFile string
	// KnownHostsFile verifies the SSH server's host key (hashed entries and
	// several keys per host work). Required for SSH.
	KnownHostsFile string
	// UseSSHAgent authenticates over SSH with the keys of the agent at
	// $SSH_AUTH_SOCK, instead of SSHKeyFile.
	UseSSHAgent bool

	// Username and PasswordFile are HTTP basic auth credentials.
	Username, PasswordFile string
	// BearerTokenFile holds an HTTP bearer token (instead of a password).
	BearerTokenFile string
	// CAFile is a PEM bundle of CAs that verify an HTTPS server, in
	// addition to the system roots.
	CAFile string

	// InsecureSkipHostKeyVerification accepts any SSH host key. Dangerous:
	// anyone on the path can then serve the desired state.
	InsecureSkipHostKeyVerification bool
	// InsecureSkipTLSVerify accepts any HTTPS certificate. Dangerous, as
	// above.
	InsecureSkipTLSVerify bool

	// CacheDir is where fetched objects are kept between polls (and
	// restarts). The Source owns it: nothing else may write there.
	CacheDir string

	// AllowedSignersFile turns on SSH signature verification: an
	// allowed-signers file as for git's gpg.ssh.allowedSignersFile.
	AllowedSignersFile string
	// OpenPGPKeyringFile turns on OpenPGP signature verification: an
	// armored keyring of the trusted public keys.
	OpenPGPKeyringFile string

	// AllowRevision is one full commit hash that CheckLineage accepts even
	// when it does not descend from the revision in force: the operator's
	// way to roll back on purpose, or to follow a rewritten history, one
	// named revision at a time.
	AllowRevision string

	// MaxFileSize caps the size of every file read (default 4 MiB).
	MaxFileSize int64
	// Files must be under Path at the revision; OptionalFiles are read
	// when present. When both are nil: cluster.yml, and atrest.yaml
	// optionally.
	Files, OptionalFiles []string

	// Timeout bounds each network operation: the ref listing, the fetch
	// (default 1 minute).
	Timeout time.Duration

	// Logger receives the warnings and changes (default slog.Default()).
	Logger *slog.Logger
}

// Revision is what the followed ref pointed to at a poll. Polls return the
// same Revision for as long as it stays in force: treat it as read-only.
type Revision struct {
	// Commit is the full hash of the commit.
	Commit string
	// Ref is the full name of the ref followed (refs/heads/main,
	// refs/tags/v1, HEAD), or "" for a pinned commit.
	Ref string
	// Tag is the tag's short name when Ref is a tag.
	Tag string
	// Time is the commit's committer time.
	Time time.Time
	// Subject is the first line of the commit message.
	Subject string
	// Files maps each file name (as configured) to its content; an optional
	// file that is absent has no entry.
	Files map[string][]byte
	// Signer names who signed the commit when verification is on:
	// "ssh <principal> (<key type> <fingerprint>)" or
	// "openpgp <name> <fingerprint>".
	Signer string
	// TagSigner names who signed the annotated tag, for a tag ref with
	// verification on.
	TagSigner string
}

// String is the revision in the form of Flux's source revisions:
// main@sha1:<hash>, v1@sha1:<hash>, or sha1:<hash> for a pinned commit.
func (r *Revision) String() string {
	if r == nil {
		return "<none>"
	}
	name := r.Tag
	if name == "" && r.Ref != "" {
		name = plumbing.ReferenceName(r.Ref).Short()
	}
	if name == "" {
		return "sha1:" + r.Commit
	}
	return name + "@sha1:" + r.Commit
}

// Stats counts what the Source did, for metrics.
type Stats struct {
	Polls       uint64 // calls to Poll
	Changes     uint64 // polls that returned a new revision
	Failures    uint64 // polls that returned an error
	Fetches     uint64 // fetches from the remote (a poll of an unchanged ref makes none)
	CacheResets uint64 // times the cache was wiped and rebuilt
	// BytesFetched is the size of the pack data written to the cache by
	// fetches: what the fetches transferred, near enough.
	BytesFetched int64
	// LastPoll is when the last poll started.
	LastPoll time.Time
	// LastPollDuration, LastListDuration and LastFetchDuration are how long
	// the last poll, ref listing and fetch took.
	LastPollDuration, LastListDuration, LastFetchDuration time.Duration
	// LastError is the reason of the last poll's failure, "" when it
	// succeeded.
	LastError Reason
}

type transportKind int

const (
	transportFile transportKind = iota
	transportSSH
	transportHTTP
)

// Source follows one ref of one repository. Its methods are safe for
// concurrent use; polls run one at a time.
type Source struct {
	cfg       Config
	log       *slog.Logger
	url       string // as go-git dials it
	redacted  string // for errors and logs
	transport transportKind
	// sshUser and sshHostPort are the SSH login and the address whose host
	// keys are looked up.
	sshUser, sshHostPort string
	pinned               plumbing.Hash
	verifier             verifier

	mu      sync.Mutex
	cache   *cache
	current *Revision
	// currentRef is what the ref pointed at when current was read: the
	// commit, or the annotated tag object.
	currentRef plumbing.Hash
	stats      Stats
	// straggler is closed when a network call a poll gave up on returns.
	straggler chan struct{}
}

// New validates cfg and returns a Source. Every problem is reported at
// once, each naming its Config field. New does no network I/O.
func New(cfg Config) (*Source, error) {
	s := &Source{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.Default()
	}
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}

	// Defaults.
	if s.cfg.Ref == "" {
		s.cfg.Ref = "HEAD"
	}
	if s.cfg.Path == "" {
		s.cfg.Path = "."
	}
	if s.cfg.MaxFileSize == 0 {
		s.cfg.MaxFileSize = DefaultMaxFileSize
	}
	if s.cfg.Timeout == 0 {
		s.cfg.Timeout = DefaultTimeout
	}
	if s.cfg.Files == nil && s.cfg.OptionalFiles == nil {
		s.cfg.Files = []string{DefaultFile}
		s.cfg.OptionalFiles = []string{DefaultOptionalFile}
	}

	if err := s.parseURL(); err != nil {
		bad("URL", "%v", err)
	}
	s.checkRef(bad)
	if p := path.Clean(filepath.ToSlash(s.cfg.Path)); path.IsAbs(p) || p == ".." || strings.HasPrefix(p, "../") {
		bad("Path", "%q must be a folder inside the repository", s.cfg.Path)
	} else {
		s.cfg.Path = p
	}
	if len(s.cfg.Files) == 0 {
		bad("Files", "name at least one file that must be at the revision")
	}
	seen := map[string]bool{}
	for _, f := range append(append([]string{}, s.cfg.Files...), s.cfg.OptionalFiles...) {
		if c := path.Clean(f); f == "" || c != f || path.IsAbs(f) || c == "." || c == ".." || strings.HasPrefix(c, "../") {
			bad("Files", "%q must be a clean relative file name under Path", f)
		}
		if seen[f] {
			bad("Files", "%q is named twice", f)
		}
		seen[f] = true
	}
	if s.cfg.MaxFileSize < 0 {
		bad("MaxFileSize", "must be positive, not %d", s.cfg.MaxFileSize)
	}
	if s.cfg.Timeout < 0 {
		bad("Timeout", "must be positive, not %v", s.cfg.Timeout)
	}
	switch s.transport {
	case transportSSH:
		s.checkSSH(bad)
	case transportHTTP:
		s.checkHTTP(bad)
	}
	s.checkTrust(bad)
	if s.cfg.AllowRevision != "" && !isFullHash(s.cfg.AllowRevision) {
		bad("AllowRevision", "%q must be a full 40-hex commit hash: a rollback is allowed for one named commit, never a branch or a prefix", s.cfg.AllowRevision)
	}
	s.cfg.AllowRevision = strings.ToLower(s.cfg.AllowRevision)
	if s.cfg.CacheDir == "" {
		bad("CacheDir", "required: a directory the source owns, for fetched objects")
	}
	// Bad input changes nothing: the cache directory is made only for a
	// valid config.
	if len(errs) == 0 {
		if err := os.MkdirAll(s.cfg.CacheDir, 0o700); err != nil {
			bad("CacheDir", "%v", err)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("git source: %w", errors.Join(errs...))
	}
	s.cache = &cache{dir: filepath.Join(s.cfg.CacheDir, "repo.git"), maxPacks: defaultMaxPacks}
	s.verifier = verifier{allowedSignersFile: s.cfg.AllowedSignersFile, keyringFile: s.cfg.OpenPGPKeyringFile}

	if s.cfg.InsecureSkipHostKeyVerification && s.transport == transportSSH {
		s.log.Warn("INSECURE: SSH host key verification of the Git server is OFF: anyone who can intercept the connection can serve the desired state",
			"url", s.redacted, "setting", "InsecureSkipHostKeyVerification")
	}
	if s.cfg.InsecureSkipTLSVerify && s.transport == transportHTTP {
		s.log.Warn("INSECURE: TLS certificate verification of the Git server is OFF: anyone who can intercept the connection can serve the desired state",
			"url", s.redacted, "setting", "InsecureSkipTLSVerify")
	}
	if !s.verifier.enabled() {
		s.log.Debug("git signature verification is off", "url", s.redacted)
	}
	return s, nil
}

func (s *Source) parseURL() error {
	raw := s.cfg.URL
	if raw == "" {
		return errors.New("required: ssh://, user@host:path, https:// or a local path")
	}
	if strings.HasPrefix(raw, "/") || strings.HasPrefix(raw, ".") {
		abs, err := filepath.Abs(raw)
		if err != nil {
			return err
		}
		raw = abs
	}
	ep, err := transport.NewEndpoint(raw)
	if err != nil {
		return fmt.Errorf("%q is not a Git URL: %v", s.cfg.URL, err)
	}
	if ep.Password != "" {
		return errors.New("contains a password: put it in PasswordFile (or BearerTokenFile) instead")
	}
	s.url, s.redacted = raw, raw
	switch ep.Protocol {
	case "ssh":
		s.transport = transportSSH
		s.sshUser = ep.User
		if s.sshUser == "" {
			s.sshUser = gitssh.DefaultUsername
		}
		port := ep.Port
		if port <= 0 {
			port = gitssh.DefaultPort
		}
		s.sshHostPort = net.JoinHostPort(strings.Trim(ep.Host, "[]"), strconv.Itoa(port))
	case "http", "https":
		s.transport = transportHTTP
		if u, err := url.Parse(raw); err == nil {
			s.redacted = u.Redacted()
		}
	case "file":
		s.transport = transportFile
	case "git":
		return fmt.Errorf("%q uses git://, which is neither authenticated nor encrypted: use ssh:// or https://", s.cfg.URL)
	default:
		return fmt.Errorf("%q: unsupported scheme %q: use ssh://, user@host:path, https:// or a local path", s.cfg.URL, ep.Protocol)
	}
	return nil
}

func (s *Source) checkRef(bad func(string, string, ...any)) {
	ref := s.cfg.Ref
	if isFullHash(ref) {
		s.pinned = plumbing.NewHash(strings.ToLower(ref))
		return
	}
	if isHex(ref) && len(ref) >= 7 && len(ref) < 40 {
		bad("Ref", "%q looks like an abbreviated commit: pin the full 40-hex hash", ref)
		return
	}
	name := plumbing.ReferenceName(ref)
	if !strings.HasPrefix(ref, "refs/") {
		name = plumbing.NewBranchReferenceName(ref)
	}
	if ref != "HEAD" {
		if err := name.Validate(); err != nil {
			bad("Ref", "%q is not a valid branch, tag or ref name: %v", ref, err)
		}
	}
}

func (s *Source) checkSSH(bad func(string, string, ...any)) {
	switch {
	case s.cfg.SSHKeyFile != "" && s.cfg.UseSSHAgent:
		bad("SSHKeyFile", "give either SSHKeyFile or UseSSHAgent, not both")
	case s.cfg.SSHKeyFile != "":
		if _, err := loadSSHKey(s.cfg.SSHKeyFile); err != nil {
			bad("SSHKeyFile", "%v", strings.TrimPrefix(err.Error(), "SSHKeyFile: "))
		}
	case s.cfg.UseSSHAgent:
		if os.Getenv("SSH_AUTH_SOCK") == "" {
			bad("UseSSHAgent", "SSH_AUTH_SOCK is not set: no agent to ask for keys")
		}
	default:
		bad("SSHKeyFile", "required for an SSH URL (or set UseSSHAgent)")
	}
	switch {
	case s.cfg.InsecureSkipHostKeyVerification:
	case s.cfg.KnownHostsFile == "":
		bad("KnownHostsFile", "required for an SSH URL: the server's host key must be verified (InsecureSkipHostKeyVerification turns that off)")
	default:
		db, err := knownhosts.New(s.cfg.KnownHostsFile)
		if err != nil {
			bad("KnownHostsFile", "%v", err)
		} else if hostKeyAlgorithms(db, s.sshHostPort) == nil {
			bad("KnownHostsFile", "%s has no key for %s: add the Git server's host key (ssh-keyscan, checked out of band)", s.cfg.KnownHostsFile, s.sshHostPort)
		}
	}
	for field, v := range map[string]string{"PasswordFile": s.cfg.PasswordFile, "BearerTokenFile": s.cfg.BearerTokenFile, "CAFile": s.cfg.CAFile} {
		if v != "" {
			bad(field, "is for HTTPS URLs; %s is an SSH URL", s.redacted)
		}
	}
}

func (s *Source) checkHTTP(bad func(string, string, ...any)) {
	if s.cfg.PasswordFile != "" && s.cfg.Username == "" {
		bad("Username", "required with PasswordFile")
	}
	if s.cfg.PasswordFile != "" && s.cfg.BearerTokenFile != "" {
		bad("BearerTokenFile", "give either PasswordFile or BearerTokenFile, not both")
	}
	for field, name := range map[string]string{"PasswordFile": s.cfg.PasswordFile, "BearerTokenFile": s.cfg.BearerTokenFile} {
		if name != "" {
			if _, err := readSecretFile(field, name); err != nil {
				bad(field, "%v", strings.TrimPrefix(err.Error(), field+": "))
			}
		}
	}
	if s.cfg.CAFile != "" {
		if _, err := readCABundle(s.cfg.CAFile); err != nil {
			bad("CAFile", "%v", err)
		}
	}
	for field, v := range map[string]string{"SSHKeyFile": s.cfg.SSHKeyFile, "KnownHostsFile": s.cfg.KnownHostsFile} {
		if v != "" {
			bad(field, "is for SSH URLs; %s is an HTTP(S) URL", s.redacted)
		}
	}
	if u, err := url.Parse(s.url); err == nil && u.Scheme == "http" && (s.cfg.PasswordFile != "" || s.cfg.BearerTokenFile != "") {
		if ip := net.ParseIP(u.Hostname()); (ip == nil || !ip.IsLoopback()) && u.Hostname() != "localhost" {
			s.log.Warn("INSECURE: Git credentials are sent in clear text over http://; use https://", "url", s.redacted)
		}
	}
}

// readCABundle reads a PEM file that must hold at least one certificate.
func readCABundle(name string) ([]byte, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	n := 0
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			if _, err := x509.ParseCertificate(b.Bytes); err != nil {
				return nil, fmt.Errorf("%s: %v", name, err)
			}
			n++
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", name)
	}
	return data, nil
}

func (s *Source) checkTrust(bad func(string, string, ...any)) {
	if f := s.cfg.AllowedSignersFile; f != "" {
		data, err := os.ReadFile(f)
		if err == nil {
			_, err = parseAllowedSigners(f, data)
		}
		if err != nil {
			bad("AllowedSignersFile", "%v", err)
		}
	}
	if f := s.cfg.OpenPGPKeyringFile; f != "" {
		file, err := os.Open(f)
		if err != nil {
			bad("OpenPGPKeyringFile", "%v", err)
			return
		}
		defer file.Close()
		keys, err := openpgp.ReadArmoredKeyRing(file)
		switch {
		case err != nil:
			bad("OpenPGPKeyringFile", "%s is not an armored OpenPGP keyring: %v", f, err)
		case len(keys) == 0:
			bad("OpenPGPKeyringFile", "%s holds no keys", f)
		}
	}
}

func isHex(s string) bool {
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return s != ""
}

func isFullHash(s string) bool { return len(s) == 40 && isHex(s) }

// Current returns the revision in force: the last one a poll accepted, or
// nil before the first. A refused revision never replaces it.
func (s *Source) Current() *Revision {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// Stats returns the counters.
func (s *Source) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Poll returns the revision the ref points to now, and whether it differs
// from the one in force. When the remote still points where it did, Poll
// costs one ref listing and returns the revision in force with changed
// false; nothing is fetched. A pinned commit already read costs nothing.
//
// On error (a *Error with its Reason), the revision in force stays as it
// was and rev is nil. A refused revision (bad signature, missing file) is
// checked again at every poll, from the cache, without fetching it again.
func (s *Source) Poll(ctx context.Context) (rev *Revision, changed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := time.Now()
	s.stats.Polls++
	s.stats.LastPoll = start
	rev, changed, err = s.poll(ctx)
	s.stats.LastPollDuration = time.Since(start)
	s.stats.LastError = ""
	if err != nil {
		err = s.wrap(err)
		s.stats.Failures++
		s.stats.LastError = ReasonOf(err)
		return nil, false, err
	}
	if changed {
		s.stats.Changes++
		s.log.Info("git source has a new revision", "url", s.redacted, "revision", rev.String(),
			"subject", rev.Subject, "signer", rev.Signer)
	}
	return rev, changed, nil
}

// wrap makes err a *Error naming the source, classifying it if it is not
// classified yet.
func (s *Source) wrap(err error) error {
	var e *Error
	if errors.As(err, &e) {
		if e.URL == "" {
			e.URL, e.Ref = s.redacted, s.cfg.Ref
		}
		return err
	}
	return &Error{Reason: classify(err), URL: s.redacted, Ref: s.cfg.Ref, Err: err}
}
