package gitsource

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sshKeygen runs the real ssh-keygen.
func sshKeygen(t testing.TB, dir string, stdin []byte, args ...string) string {
	t.Helper()
	cmd := exec.Command("ssh-keygen", args...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newSSHKey makes an unencrypted key pair dir/name, dir/name.pub and
// returns the public key line.
func newSSHKey(t testing.TB, dir, name, typ string) string {
	t.Helper()
	args := []string{"-q", "-t", typ, "-N", "", "-C", name, "-f", filepath.Join(dir, name)}
	if typ == "rsa" {
		args = append(args, "-b", "2048")
	}
	sshKeygen(t, dir, nil, args...)
	pub, err := os.ReadFile(filepath.Join(dir, name+".pub"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(pub))
}

// TestSSHSignatureAgainstSSHKeygen verifies signatures made by the real
// ssh-keygen -Y sign, with every key type and a certificate, against
// allowed-signers lines with their options.
func TestSSHSignatureAgainstSSHKeygen(t *testing.T) {
	dir := t.TempDir()
	msg := []byte("tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor a <a@b> 1 +0000\n\nmsg\n")
	sign := func(key, ns string) []byte {
		file := filepath.Join(dir, "msg-"+key+"-"+ns)
		if err := os.WriteFile(file, msg, 0o600); err != nil {
			t.Fatal(err)
		}
		sshKeygen(t, dir, nil, "-Y", "sign", "-f", filepath.Join(dir, key), "-n", ns, file)
		sig, err := os.ReadFile(file + ".sig")
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
	ed := newSSHKey(t, dir, "ed", "ed25519")
	ecdsa := newSSHKey(t, dir, "ecdsa", "ecdsa")
	rsa := newSSHKey(t, dir, "rsa", "rsa")
	newSSHKey(t, dir, "other", "ed25519")
	ca := newSSHKey(t, dir, "ca", "ed25519")
	newSSHKey(t, dir, "user", "ed25519")
	sshKeygen(t, dir, nil, "-q", "-s", filepath.Join(dir, "ca"), "-I", "alice-laptop", "-n", "alice@example.com", "-V", "20200101:20400101", filepath.Join(dir, "user.pub"))
	when := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

	for _, tc := range []struct {
		name    string
		key     string // file that signs
		ns      string
		allowed string
		tamper  bool
		at      time.Time // when the commit was made (default: when)
		want    string    // principal; "" for a refusal
		why     string    // fragment of the refusal
	}{
		{"ed25519", "ed", "git", "alice@example.com " + ed, false, time.Time{}, "alice@example.com", ""},
		{"ecdsa", "ecdsa", "git", "bob@example.com " + ecdsa, false, time.Time{}, "bob@example.com", ""},
		{"rsa (sha512)", "rsa", "git", "carol@example.com " + rsa, false, time.Time{}, "carol@example.com", ""},
		{"several principals, quoted", "ed", "git", `"alice@example.com,al@example.com" ` + ed, false, time.Time{}, "alice@example.com,al@example.com", ""},
		{"namespaces allow git", "ed", "git", `alice@example.com namespaces="file,git" ` + ed, false, time.Time{}, "alice@example.com", ""},
		{"valid window covers the commit", "ed", "git", `alice@example.com valid-after="20290101",valid-before="20310101Z" ` + ed, false, time.Time{}, "alice@example.com", ""},
		{"certificate from a trusted CA", "user-cert.pub", "git", `*@example.com cert-authority ` + ca, false, time.Time{}, "alice@example.com", ""},
		{"certificate expired at commit time", "user-cert.pub", "git", `*@example.com cert-authority ` + ca, false, time.Date(2041, 1, 1, 0, 0, 0, 0, time.UTC), "", "expired"},

		{"key not listed", "other", "git", "alice@example.com " + ed, false, time.Time{}, "", "is not in the allowed signers"},
		{"wrong namespace in the signature", "ed", "file", "alice@example.com " + ed, false, time.Time{}, "", `namespace "file", not "git"`},
		{"namespaces exclude git", "ed", "git", `alice@example.com namespaces="file" ` + ed, false, time.Time{}, "", "is not in the allowed signers"},
		{"key expired before the commit", "ed", "git", `alice@example.com valid-before="20291231" ` + ed, false, time.Time{}, "", "is not in the allowed signers"},
		{"key valid only after the commit", "ed", "git", `alice@example.com valid-after="203101010000Z" ` + ed, false, time.Time{}, "", "is not in the allowed signers"},
		{"tampered message", "ed", "git", "alice@example.com " + ed, true, time.Time{}, "", "does not verify"},
		{"certificate key listed as a plain key", "user-cert.pub", "git", "alice@example.com " + ca, false, time.Time{}, "", "certificate alice-laptop signed by"},
		{"certificate principal not allowed", "user-cert.pub", "git", `bob@example.com cert-authority ` + ca, false, time.Time{}, "", "is not in the allowed signers"},
		{"CA listed without cert-authority", "user-cert.pub", "git", `alice@example.com ` + ca, false, time.Time{}, "", "is not in the allowed signers"},
		{"plain key listed as a CA", "ed", "git", `alice@example.com cert-authority ` + ed, false, time.Time{}, "", "is not in the allowed signers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			armored := sign(tc.key, tc.ns)
			sig, err := parseSSHSignature(armored)
			if err != nil {
				t.Fatal(err)
			}
			signers, err := parseAllowedSigners("allowed_signers", []byte("# trusted\n\n"+tc.allowed+"\n"))
			if err != nil {
				t.Fatal(err)
			}
			m := msg
			if tc.tamper {
				m = bytes.Replace(msg, []byte("msg"), []byte("gsm"), 1)
			}
			var who string
			err = sig.verify(m, gitNamespace)
			if err == nil {
				at := when
				if !tc.at.IsZero() {
					at = tc.at
				}
				who, err = findSigner(signers, sig, gitNamespace, at)
			}
			switch {
			case tc.want != "" && (err != nil || who != tc.want):
				t.Fatalf("got %q, %v; want %q", who, err, tc.want)
			case tc.want == "" && err == nil:
				t.Fatalf("accepted as %q", who)
			case tc.want == "" && !strings.Contains(err.Error(), tc.why):
				t.Fatalf("refused with %q, want it to say %q", err, tc.why)
			}
		})
	}
}

func TestParseSSHSignatureRejectsGarbage(t *testing.T) {
	for name, in := range map[string]string{
		"not armored":  "hello",
		"wrong armor":  "-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n",
		"no preamble":  "-----BEGIN SSH SIGNATURE-----\nQUFBQUFB\n-----END SSH SIGNATURE-----\n",
		"truncated":    "-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQ==\n-----END SSH SIGNATURE-----\n",
		"bad version":  "-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAgAAAAA=\n-----END SSH SIGNATURE-----\n",
		"trailing pem": "-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQ==\n-----END SSH SIGNATURE-----\ntrailing\n",
	} {
		if _, err := parseSSHSignature([]byte(in)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestParseAllowedSigners(t *testing.T) {
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMIgLwfyzgD8HXdGLBz9CO3r4LQqoq8Hq3YHxo5+Tgsv comment here"
	for _, tc := range []struct {
		line string
		err  string // "" when valid
	}{
		{"alice@example.com " + key, ""},
		{`"alice@example.com,bob@example.com" namespaces="git",valid-after="20240101" ` + key, ""},
		{"*@example.com cert-authority " + key, ""},
		{`alice@example.com VALID-BEFORE="202401011200" ` + key, ""},
		{"alice@example.com", "no key after the principals"},
		{`"alice@example.com ` + key, "unterminated quote"},
		{`alice@example.com nope=1 ` + key, `unknown option "nope=1"`},
		{`alice@example.com valid-after="2024" ` + key, "valid-after"},
		{`alice@example.com cert-authority="x" ` + key, "malformed"},
		{`alice@example.com namespaces ` + key, "malformed"},
		{"alice@example.com ssh-ed25519 notbase64", "key:"},
	} {
		_, err := parseAllowedSigners("signers", []byte(tc.line+"\n"))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.line, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "signers line 1")):
			t.Errorf("%q: error %v, want it to say %q and name the line", tc.line, err, tc.err)
		}
	}
	if _, err := parseAllowedSigners("signers", []byte("# nothing\n")); err == nil || !strings.Contains(err.Error(), "lists no signers") {
		t.Errorf("an empty allowed-signers file: %v", err)
	}
}

func TestParseSignerTime(t *testing.T) {
	for in, want := range map[string]time.Time{
		"20240102Z":       time.Date(2024, 1, 2, 0, 0, 0, 0, time.UTC),
		"202401021504Z":   time.Date(2024, 1, 2, 15, 4, 0, 0, time.UTC),
		"20240102150405Z": time.Date(2024, 1, 2, 15, 4, 5, 0, time.UTC),
		"20240102":        time.Date(2024, 1, 2, 0, 0, 0, 0, time.Local),
	} {
		if got, err := parseSignerTime(in); err != nil || !got.Equal(want) {
			t.Errorf("%s: %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "2024", "2024010", "20241302", "abcdefgh"} {
		if _, err := parseSignerTime(in); err == nil {
			t.Errorf("%q parsed", in)
		}
	}
}

func TestMatchPatternList(t *testing.T) {
	for _, tc := range []struct {
		s, list string
		want    bool
	}{
		{"git", "git", true},
		{"git", "file,git", true},
		{"git", "file", false},
		{"alice@example.com", "*@example.com", true},
		{"alice@example.com", "alice@example.co?", true},
		{"alice@example.com", "*@example.org", false},
		{"alice@example.com", "*@example.com,!alice@*", false},
		{"bob@example.com", "*@example.com,!alice@*", true},
		{"", "*", true},
		{"a", "", false},
		{"abc", "a*c*", true},
		{"abc", "a**b*c", true},
		{"ab", "a?c", false},
	} {
		if got := matchPatternList(tc.s, tc.list); got != tc.want {
			t.Errorf("matchPatternList(%q, %q) = %v", tc.s, tc.list, got)
		}
	}
}
