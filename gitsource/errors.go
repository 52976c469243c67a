package gitsource

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/transport"
)

// Reason says what kind of failure a Poll met. It is stable, short and
// CamelCase, so the daemon can use it as a status condition reason and a
// metric label.
type Reason string

// The reasons a Poll fails.
const (
	// ReasonUnreachable: the remote did not answer (DNS, connection refused,
	// timeout, connection dropped).
	ReasonUnreachable Reason = "Unreachable"
	// ReasonAuthRefused: the remote refused the credentials, or asked for
	// credentials that were not configured.
	ReasonAuthRefused Reason = "AuthRefused"
	// ReasonHostKeyMismatch: the SSH server showed a host key that
	// known_hosts does not list for it.
	ReasonHostKeyMismatch Reason = "HostKeyMismatch"
	// ReasonTLSVerify: the HTTPS server's certificate did not verify.
	ReasonTLSVerify Reason = "TLSVerifyFailed"
	// ReasonRepositoryNotFound: the URL names no repository, or an empty one.
	ReasonRepositoryNotFound Reason = "RepositoryNotFound"
	// ReasonRefNotFound: the branch, tag or pinned commit is not on the remote.
	ReasonRefNotFound Reason = "RefNotFound"
	// ReasonFileNotFound: a required file (or the folder) is not at the revision.
	ReasonFileNotFound Reason = "FileNotFound"
	// ReasonFileTooLarge: a file at the revision is larger than MaxFileSize.
	ReasonFileTooLarge Reason = "FileTooLarge"
	// ReasonNotAFile: a name at the revision is a folder, symlink or submodule.
	ReasonNotAFile Reason = "NotAFile"
	// ReasonSignature: signature verification is on and the commit or tag is
	// unsigned, signed by a key that is not trusted, or badly signed.
	ReasonSignature Reason = "SignatureRefused"
	// ReasonNotDescendant: the revision does not descend from the revision
	// in force that the ledger records (a force push, a rollback, a replay
	// of older signed history), and the settings do not allow it by name.
	ReasonNotDescendant Reason = "NotDescendant"
	// ReasonLedger: the revision in force could not be read from the
	// ledger (Vault) or recorded there.
	ReasonLedger Reason = "LedgerFailed"
	// ReasonConfig: a credential or trust file named in the Config could not
	// be used at poll time (deleted, unreadable, malformed).
	ReasonConfig Reason = "ConfigInvalid"
	// ReasonCache: the local cache could not be used or rebuilt.
	ReasonCache Reason = "CacheFailed"
	// ReasonRemote: any other failure talking to the remote.
	ReasonRemote Reason = "RemoteFailed"
)

// Error is the error every failed Poll returns: what failed (Reason), where
// (the redacted URL and the ref), and the cause.
type Error struct {
	Reason Reason
	URL    string // without any password
	Ref    string
	Err    error
}

// Error says what failed, where, and why.
func (e *Error) Error() string {
	return fmt.Sprintf("git source %s (ref %s): %s: %v", e.URL, e.Ref, e.Reason, e.Err)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the Reason of a Poll error, or "" when err is not one.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// HostKeyError is the cause of a ReasonHostKeyMismatch error. It names the
// key the server showed by fingerprint, so an operator can compare it with
// the one they expect, and the fingerprints known_hosts lists for the host.
type HostKeyError struct {
	Host        string   // host:port as dialled
	Fingerprint string   // SHA256 fingerprint of the key the server showed
	KeyType     string   // its type, e.g. ssh-ed25519
	Want        []string // "type SHA256:..." of each key known_hosts lists; empty when the host is not listed at all
	File        string   // the known_hosts file
	Revoked     bool     // the key is marked @revoked in known_hosts
}

// Error names the host, the key it showed and the keys expected.
func (e *HostKeyError) Error() string {
	switch {
	case e.Revoked:
		return fmt.Sprintf("host key %s %s of %s is marked @revoked in %s", e.KeyType, e.Fingerprint, e.Host, e.File)
	case len(e.Want) == 0:
		return fmt.Sprintf("host %s is not in %s (it showed %s %s); add its key after checking that fingerprint out of band",
			e.Host, e.File, e.KeyType, e.Fingerprint)
	default:
		return fmt.Sprintf("host key mismatch for %s: it showed %s %s, but %s lists %s; the key changed or someone is intercepting the connection",
			e.Host, e.KeyType, e.Fingerprint, e.File, strings.Join(e.Want, ", "))
	}
}

// SignatureError is the cause of a ReasonSignature error.
type SignatureError struct {
	Object string // "commit" or "tag"
	Hash   string
	Why    string
}

// Error names the object refused and why.
func (e *SignatureError) Error() string {
	return fmt.Sprintf("%s %s refused: %s", e.Object, e.Hash, e.Why)
}

// classify turns an error from go-git or the network into a Reason.
func classify(err error) Reason {
	var (
		hk      *HostKeyError
		netErr  net.Error
		opErr   *net.OpError
		dnsErr  *net.DNSError
		unkAuth x509.UnknownAuthorityError
		host    x509.HostnameError
		certInv x509.CertificateInvalidError
		tlsVer  *tls.CertificateVerificationError
	)
	switch {
	case err == nil:
		return ""
	case errors.As(err, &hk):
		return ReasonHostKeyMismatch
	case errors.As(err, &tlsVer), errors.As(err, &unkAuth), errors.As(err, &host), errors.As(err, &certInv):
		return ReasonTLSVerify
	case errors.Is(err, transport.ErrAuthenticationRequired), errors.Is(err, transport.ErrAuthorizationFailed),
		errors.Is(err, transport.ErrInvalidAuthMethod):
		return ReasonAuthRefused
	case errors.Is(err, transport.ErrRepositoryNotFound), errors.Is(err, transport.ErrEmptyRemoteRepository):
		return ReasonRepositoryNotFound
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &dnsErr), errors.As(err, &opErr), errors.As(err, &netErr):
		return ReasonUnreachable
	}
	// x/crypto/ssh reports a refused key as text only.
	msg := err.Error()
	switch {
	case strings.Contains(msg, "unable to authenticate"), strings.Contains(msg, "no supported methods remain"):
		return ReasonAuthRefused
	case strings.Contains(msg, "connection reset"), strings.Contains(msg, "broken pipe"),
		strings.Contains(msg, "unexpected EOF"), strings.Contains(msg, "connection refused"):
		return ReasonUnreachable
	}
	return ReasonRemote
}
