package gitsource

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"golang.org/x/crypto/ssh"
)

// Signatures are verified on the raw objects, byte for byte as git hashed
// them, not on go-git's re-encoding of them: a header go-git does not model
// would otherwise change the signed payload.

const (
	pgpSignatureStart = "-----BEGIN PGP SIGNATURE-----"
	pgpMessageStart   = "-----BEGIN PGP MESSAGE-----"
	sshSignatureStart = "-----BEGIN SSH SIGNATURE-----"
)

// splitCommitSignature splits a raw commit object into the payload git
// signs (the object without its gpgsig headers) and the signature in its
// gpgsig header, as git's parse_buffer_signed_by_header does. sig is nil
// for an unsigned commit.
func splitCommitSignature(raw []byte) (payload, sig []byte) {
	const (
		inPayload = iota
		inSig
		inSkipped
	)
	var p, s bytes.Buffer
	state := inPayload
	for rest := raw; len(rest) > 0; {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line = rest[:i+1]
		}
		rest = rest[len(line):]
		if line[0] == '\n' {
			// The end of the headers: the message is payload as it is.
			p.Write(line)
			p.Write(rest)
			break
		}
		if line[0] == ' ' {
			// A continuation of the header above.
			switch state {
			case inSig:
				s.Write(line[1:])
			case inPayload:
				p.Write(line)
			}
			continue
		}
		state = inPayload
		switch {
		case bytes.HasPrefix(line, []byte("gpgsig ")):
			state = inSig
			s.Write(line[len("gpgsig "):])
		case bytes.HasPrefix(line, []byte("gpgsig-sha256 ")):
			// The signature of the SHA-256 form of the object: not ours to
			// check in a SHA-1 repository, and not part of the payload.
			state = inSkipped
		default:
			p.Write(line)
		}
	}
	if s.Len() == 0 {
		return raw, nil
	}
	return p.Bytes(), s.Bytes()
}

// splitTagSignature splits a raw tag object into the signed payload and the
// signature git appends to the tag message: from the last line that starts
// a signature, as git's parse_signed_buffer does. sig is nil for an
// unsigned tag.
func splitTagSignature(raw []byte) (payload, sig []byte) {
	start := -1
	for off := 0; off < len(raw); {
		for _, marker := range []string{pgpSignatureStart, pgpMessageStart, sshSignatureStart} {
			if bytes.HasPrefix(raw[off:], []byte(marker)) {
				start = off
			}
		}
		i := bytes.IndexByte(raw[off:], '\n')
		if i < 0 {
			break
		}
		off += i + 1
	}
	if start < 0 {
		return raw, nil
	}
	return raw[:start], raw[start:]
}

// verifier checks signatures against the trust files of the Config, read
// afresh for every revision, so that an operator's change to them is seen
// at the next poll without a restart.
type verifier struct {
	allowedSignersFile string
	keyringFile        string
}

func (v *verifier) enabled() bool { return v.allowedSignersFile != "" || v.keyringFile != "" }

// verify checks the signature of one object (kind "commit" or "tag") made
// at t, and returns who signed it.
func (v *verifier) verify(kind, hash string, payload, sig []byte, t time.Time) (string, error) {
	refuse := func(format string, args ...any) error {
		return &SignatureError{Object: kind, Hash: hash, Why: fmt.Sprintf(format, args...)}
	}
	switch {
	case len(sig) == 0:
		return "", refuse("it is not signed, and signature verification is on")
	case bytes.HasPrefix(sig, []byte(sshSignatureStart)):
		if v.allowedSignersFile == "" {
			return "", refuse("it has an SSH signature, but only OpenPGP keys are trusted (set AllowedSignersFile to trust SSH keys)")
		}
		return v.verifySSH(payload, sig, t, refuse)
	case bytes.HasPrefix(sig, []byte(pgpSignatureStart)), bytes.HasPrefix(sig, []byte(pgpMessageStart)):
		if v.keyringFile == "" {
			return "", refuse("it has an OpenPGP signature, but only SSH keys are trusted (set OpenPGPKeyringFile to trust OpenPGP keys)")
		}
		return v.verifyOpenPGP(payload, sig, refuse)
	default:
		return "", refuse("its signature is of an unknown kind (not OpenPGP, not SSH; X.509 is not supported)")
	}
}

func (v *verifier) verifySSH(payload, sig []byte, t time.Time, refuse func(string, ...any) error) (string, error) {
	data, err := os.ReadFile(v.allowedSignersFile)
	if err != nil {
		return "", &Error{Reason: ReasonConfig, Err: fmt.Errorf("AllowedSignersFile: %w", err)}
	}
	signers, err := parseAllowedSigners(v.allowedSignersFile, data)
	if err != nil {
		return "", &Error{Reason: ReasonConfig, Err: fmt.Errorf("AllowedSignersFile: %w", err)}
	}
	s, err := parseSSHSignature(sig)
	if err != nil {
		return "", refuse("%v", err)
	}
	if err := s.verify(payload, gitNamespace); err != nil {
		return "", refuse("%v", err)
	}
	who, err := findSigner(signers, s, gitNamespace, t)
	if err != nil {
		return "", refuse("%v", err)
	}
	return fmt.Sprintf("ssh %s (%s)", who, fingerprintOfSigner(s)), nil
}

func fingerprintOfSigner(s *sshSignature) string {
	if cert, ok := s.key.(*ssh.Certificate); ok {
		return fmt.Sprintf("certificate %q of %s %s", cert.KeyId, cert.Key.Type(), ssh.FingerprintSHA256(cert.Key))
	}
	return s.key.Type() + " " + ssh.FingerprintSHA256(s.key)
}

func (v *verifier) verifyOpenPGP(payload, sig []byte, refuse func(string, ...any) error) (string, error) {
	f, err := os.Open(v.keyringFile)
	if err != nil {
		return "", &Error{Reason: ReasonConfig, Err: fmt.Errorf("OpenPGPKeyringFile: %w", err)}
	}
	defer f.Close()
	keyring, err := openpgp.ReadArmoredKeyRing(f)
	if err != nil {
		return "", &Error{Reason: ReasonConfig, Err: fmt.Errorf("OpenPGPKeyringFile: %s is not an armored OpenPGP keyring: %w", v.keyringFile, err)}
	}
	signer, err := openpgp.CheckArmoredDetachedSignature(keyring, bytes.NewReader(payload), bytes.NewReader(sig), &packet.Config{})
	if err != nil {
		if errors.Is(err, pgperrors.ErrUnknownIssuer) {
			return "", refuse("it is signed by an OpenPGP key that is not in %s", v.keyringFile)
		}
		return "", refuse("OpenPGP signature does not verify: %v", err)
	}
	name := ""
	if id := signer.PrimaryIdentity(); id != nil {
		name = id.Name
	}
	return strings.TrimSpace(fmt.Sprintf("openpgp %s %s", name,
		strings.ToUpper(hex.EncodeToString(signer.PrimaryKey.Fingerprint)))), nil
}
