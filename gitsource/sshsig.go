package gitsource

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// This file verifies SSH signatures as `git verify-commit` does with
// gpg.format=ssh: the SSHSIG format of OpenSSH's PROTOCOL.sshsig, checked
// against an allowed-signers file (ssh-keygen(1), ALLOWED SIGNERS).

const (
	sshsigMagic   = "SSHSIG"
	sshsigVersion = 1
	// gitNamespace is the namespace git signs commits and tags in.
	gitNamespace = "git"
)

// sshSignature is a parsed SSHSIG blob.
type sshSignature struct {
	key       ssh.PublicKey // a plain key or an *ssh.Certificate
	namespace string
	hashAlg   string
	sig       *ssh.Signature
}

// parseSSHSignature parses an armored SSH signature
// ("-----BEGIN SSH SIGNATURE-----").
func parseSSHSignature(armored []byte) (*sshSignature, error) {
	block, rest := pem.Decode(armored)
	if block == nil || block.Type != "SSH SIGNATURE" {
		return nil, errors.New("not an armored SSH signature")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("data after the SSH signature")
	}
	blob := block.Bytes
	if !bytes.HasPrefix(blob, []byte(sshsigMagic)) {
		return nil, errors.New("SSH signature without the SSHSIG preamble")
	}
	var wire struct {
		Version   uint32
		PublicKey []byte
		Namespace string
		Reserved  string
		HashAlg   string
		Signature []byte
	}
	if err := ssh.Unmarshal(blob[len(sshsigMagic):], &wire); err != nil {
		return nil, fmt.Errorf("malformed SSH signature: %w", err)
	}
	if wire.Version != sshsigVersion {
		return nil, fmt.Errorf("SSH signature version %d, only %d is known", wire.Version, sshsigVersion)
	}
	key, err := ssh.ParsePublicKey(wire.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("SSH signature public key: %w", err)
	}
	sig, err := parseSSHSignatureBlob(wire.Signature)
	if err != nil {
		return nil, err
	}
	return &sshSignature{key: key, namespace: wire.Namespace, hashAlg: wire.HashAlg, sig: sig}, nil
}

// parseSSHSignatureBlob parses the wire form of an ssh.Signature: format,
// blob and, for security-key (sk-) algorithms, flags and counter.
func parseSSHSignatureBlob(b []byte) (*ssh.Signature, error) {
	var wire struct {
		Format string
		Blob   []byte
		Rest   []byte `ssh:"rest"`
	}
	if err := ssh.Unmarshal(b, &wire); err != nil {
		return nil, fmt.Errorf("malformed SSH signature blob: %w", err)
	}
	sig := &ssh.Signature{Format: wire.Format, Blob: wire.Blob}
	if strings.HasPrefix(wire.Format, "sk-") {
		sig.Rest = wire.Rest
	} else if len(wire.Rest) != 0 {
		return nil, errors.New("malformed SSH signature blob: trailing data")
	}
	return sig, nil
}

// verify checks that s is a signature of message in namespace.
func (s *sshSignature) verify(message []byte, namespace string) error {
	if s.namespace != namespace {
		return fmt.Errorf("signature is for namespace %q, not %q", s.namespace, namespace)
	}
	var h hash.Hash
	switch s.hashAlg {
	case "sha256":
		h = sha256.New()
	case "sha512":
		h = sha512.New()
	default:
		return fmt.Errorf("signature uses hash %q: only sha256 and sha512 are allowed", s.hashAlg)
	}
	// PROTOCOL.sshsig: RSA signatures must use SHA-2, never ssh-rsa (SHA-1).
	if s.sig.Format == ssh.KeyAlgoRSA {
		return errors.New("signature uses ssh-rsa (SHA-1): only rsa-sha2-256 and rsa-sha2-512 are allowed")
	}
	h.Write(message)
	signed := append([]byte(sshsigMagic), ssh.Marshal(struct {
		Namespace string
		Reserved  string
		HashAlg   string
		Hash      []byte
	}{namespace, "", s.hashAlg, h.Sum(nil)})...)
	if err := s.key.Verify(signed, s.sig); err != nil {
		return fmt.Errorf("signature does not verify: %w", err)
	}
	return nil
}

// allowedSigner is one line of an allowed-signers file.
type allowedSigner struct {
	principals    string // comma-separated pattern list
	key           ssh.PublicKey
	certAuthority bool
	namespaces    string // pattern list; "" means any
	validAfter    time.Time
	validBefore   time.Time
	line          int
}

// parseAllowedSigners parses an allowed-signers file (ssh-keygen(1),
// ALLOWED SIGNERS). A line that cannot be parsed is an error naming it:
// a trust list that is silently half-read is worse than none.
func parseAllowedSigners(name string, data []byte) ([]allowedSigner, error) {
	var out []allowedSigner
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseAllowedSignerLine(line)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", name, n, err)
		}
		s.line = n
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no signers", name)
	}
	return out, nil
}

func parseAllowedSignerLine(line string) (allowedSigner, error) {
	var s allowedSigner
	// The principals field, possibly quoted.
	var rest string
	if line[0] == '"' {
		end := strings.IndexByte(line[1:], '"')
		if end < 0 {
			return s, errors.New("unterminated quote in principals")
		}
		s.principals, rest = line[1:1+end], line[2+end:]
	} else {
		i := strings.IndexAny(line, " \t")
		if i < 0 {
			return s, errors.New("no key after the principals")
		}
		s.principals, rest = line[:i], line[i:]
	}
	if s.principals == "" {
		return s, errors.New("empty principals")
	}
	// What follows has the authorized_keys shape: [options] keytype key [comment].
	key, _, options, _, err := ssh.ParseAuthorizedKey([]byte(strings.TrimSpace(rest)))
	if err != nil {
		return s, fmt.Errorf("key: %w", err)
	}
	s.key = key
	for _, o := range options {
		name, value, hasValue := strings.Cut(o, "=")
		value = strings.Trim(value, `"`)
		switch strings.ToLower(name) {
		case "cert-authority":
			s.certAuthority = true
		case "namespaces":
			s.namespaces = value
		case "valid-after":
			if s.validAfter, err = parseSignerTime(value); err != nil {
				return s, fmt.Errorf("valid-after: %w", err)
			}
		case "valid-before":
			if s.validBefore, err = parseSignerTime(value); err != nil {
				return s, fmt.Errorf("valid-before: %w", err)
			}
		default:
			return s, fmt.Errorf("unknown option %q", o)
		}
		if hasValue != (strings.ToLower(name) != "cert-authority") {
			return s, fmt.Errorf("option %q: malformed", o)
		}
	}
	return s, nil
}

// parseSignerTime parses YYYYMMDD[Z] or YYYYMMDDHHMM[SS][Z]: UTC with Z,
// local time without, as ssh-keygen does.
func parseSignerTime(v string) (time.Time, error) {
	loc := time.Local
	if strings.HasSuffix(v, "Z") || strings.HasSuffix(v, "z") {
		loc, v = time.UTC, v[:len(v)-1]
	}
	layouts := map[int]string{8: "20060102", 12: "200601021504", 14: "20060102150405"}
	layout, ok := layouts[len(v)]
	if !ok {
		return time.Time{}, fmt.Errorf("%q is not YYYYMMDD[Z] or YYYYMMDDHHMM[SS][Z]", v)
	}
	return time.ParseInLocation(layout, v, loc)
}

// validAt says whether the signer line may vouch for a signature made at t.
func (a *allowedSigner) validAt(t time.Time) bool {
	if !a.validAfter.IsZero() && t.Before(a.validAfter) {
		return false
	}
	if !a.validBefore.IsZero() && t.After(a.validBefore) {
		return false
	}
	return true
}

// findSigner returns the principal the allowed signers vouch for s with,
// for a signature made at t in namespace ns, as `ssh-keygen -Y
// find-principals` followed by `-Y verify` would. The signature itself
// must have been verified already.
func findSigner(signers []allowedSigner, s *sshSignature, ns string, t time.Time) (string, error) {
	cert, isCert := s.key.(*ssh.Certificate)
	for i := range signers {
		a := &signers[i]
		if a.namespaces != "" && !matchPatternList(ns, a.namespaces) {
			continue
		}
		if !a.validAt(t) {
			continue
		}
		switch {
		case !isCert && !a.certAuthority && keysEqual(a.key, s.key):
			return a.principals, nil
		case isCert && a.certAuthority && keysEqual(a.key, cert.SignatureKey):
			if cert.CertType != ssh.UserCert {
				continue
			}
			checker := &ssh.CertChecker{Clock: func() time.Time { return t }}
			for _, p := range cert.ValidPrincipals {
				if !matchPatternList(p, a.principals) {
					continue
				}
				if err := checker.CheckCert(p, cert); err != nil {
					return "", fmt.Errorf("certificate %q: %w", cert.KeyId, err)
				}
				return p, nil
			}
		}
	}
	fp := ssh.FingerprintSHA256(s.key)
	if isCert {
		fp = "certificate " + cert.KeyId + " signed by " + ssh.FingerprintSHA256(cert.SignatureKey)
	}
	return "", fmt.Errorf("key %s %s is not in the allowed signers for namespace %q at %s",
		s.key.Type(), fp, ns, t.UTC().Format(time.RFC3339))
}

func keysEqual(a, b ssh.PublicKey) bool {
	return bytes.Equal(a.Marshal(), b.Marshal())
}

// matchPatternList matches s against an OpenSSH pattern list
// (ssh_config(5), PATTERNS): comma-separated patterns with * and ?, a
// pattern prefixed with ! excludes. Any negated match refuses.
func matchPatternList(s, list string) bool {
	matched := false
	for _, p := range strings.Split(list, ",") {
		p = strings.TrimSpace(p)
		negated := strings.HasPrefix(p, "!")
		if negated {
			p = p[1:]
		}
		if matchPattern(s, p) {
			if negated {
				return false
			}
			matched = true
		}
	}
	return matched
}

// matchPattern is OpenSSH's match_pattern: * matches any run, ? one byte.
func matchPattern(s, p string) bool {
	for len(p) > 0 {
		switch p[0] {
		case '*':
			p = p[1:]
			if p == "" {
				return true
			}
			for i := 0; i <= len(s); i++ {
				if matchPattern(s[i:], p) {
					return true
				}
			}
			return false
		case '?':
			if s == "" {
				return false
			}
		default:
			if s == "" || s[0] != p[0] {
				return false
			}
		}
		s, p = s[1:], p[1:]
	}
	return s == ""
}
