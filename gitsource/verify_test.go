package gitsource

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// signers are the keys the signature tests sign with.
type signers struct {
	dir            string
	alice, mallory string // SSH private key files
	alicePub       string
	malloryPub     string
	pgp, rogue     *openpgp.Entity
	allowed        string // allowed-signers file trusting alice
	keyring        string // armored keyring trusting pgp
}

func newSigners(t testing.TB) *signers {
	t.Helper()
	dir := t.TempDir()
	s := &signers{dir: dir, alice: filepath.Join(dir, "alice"), mallory: filepath.Join(dir, "mallory")}
	s.alicePub = newSSHKey(t, dir, "alice", "ed25519")
	s.malloryPub = newSSHKey(t, dir, "mallory", "ecdsa")
	s.allowed = writeFile(t, filepath.Join(dir, "allowed_signers"), "alice@example.com namespaces=\"git\" "+s.alicePub+"\n")
	s.pgp = newPGPEntity(t, "atrest release", "release@atrest.invalid")
	s.rogue = newPGPEntity(t, "rogue", "rogue@atrest.invalid")
	s.keyring = writeFile(t, filepath.Join(dir, "keyring.asc"), armoredPublicKey(t, s.pgp))
	return s
}

func newPGPEntity(t testing.TB, name, email string) *openpgp.Entity {
	t.Helper()
	e, err := openpgp.NewEntity(name, "", email, &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func armoredPublicKey(t testing.TB, e *openpgp.Entity) string {
	t.Helper()
	var buf bytes.Buffer
	w, err := armor.Encode(&buf, openpgp.PublicKeyType, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Serialize(w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	return buf.String()
}

func pgpFingerprint(e *openpgp.Entity) string {
	return strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint))
}

// sshSign returns the git options that make git sign with an SSH key.
func sshSign(key string) []string {
	return []string{"-c", "gpg.format=ssh", "-c", "user.signingkey=" + key}
}

// sshSignedCommit commits files signed by the SSH key, with real git
// (which runs ssh-keygen -Y sign -n git).
func (w *workRepo) sshSignedCommit(msg string, files map[string]string, key string) string {
	w.t.Helper()
	w.commit(msg, files)
	w.git(append(sshSign(key), "commit", "--quiet", "--amend", "--allow-empty", "--no-edit", "-S")...)
	return w.git("rev-parse", "HEAD")
}

// pgpSignedCommit commits files signed by the OpenPGP key, with go-git
// (real git would need gpg and an agent).
func (w *workRepo) pgpSignedCommit(msg string, files map[string]string, key *openpgp.Entity) string {
	w.t.Helper()
	for name, content := range files {
		writeFile(w.t, filepath.Join(w.dir, name), content)
		w.git("add", name)
	}
	repo, err := git.PlainOpen(w.dir)
	if err != nil {
		w.t.Fatal(err)
	}
	wt, err := repo.Worktree()
	if err != nil {
		w.t.Fatal(err)
	}
	who := &object.Signature{Name: "atrest test", Email: "test@atrest.invalid", When: time.Now()}
	h, err := wt.Commit(msg, &git.CommitOptions{Author: who, Committer: who, SignKey: key, AllowEmptyCommits: true})
	if err != nil {
		w.t.Fatal(err)
	}
	return h.String()
}

// pgpSignedTag creates an annotated tag signed by the OpenPGP key.
func (w *workRepo) pgpSignedTag(name, commit string, key *openpgp.Entity) {
	w.t.Helper()
	repo, err := git.PlainOpen(w.dir)
	if err != nil {
		w.t.Fatal(err)
	}
	_, err = repo.CreateTag(name, plumbing.NewHash(commit), &git.CreateTagOptions{
		Tagger:  &object.Signature{Name: "atrest test", Email: "test@atrest.invalid", When: time.Now()},
		Message: "release " + name,
		SignKey: key,
	})
	if err != nil {
		w.t.Fatal(err)
	}
}

// TestLocalSignatures follows main with both kinds of verification on:
// commits signed with SSH keys (by real git and ssh-keygen) and OpenPGP
// keys, unsigned, signed by untrusted keys, and tampered with.
func TestLocalSignatures(t *testing.T) {
	k := newSigners(t)
	w := newLocalRepo(t, map[string]string{"cluster.yml": "v0\n"})
	var logs logBuffer
	s, err := New(Config{URL: w.bare, Ref: "main", CacheDir: t.TempDir(), AllowedSignersFile: k.allowed,
		OpenPGPKeyringFile: k.keyring, Logger: newLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	wantReason(t, s, ReasonSignature, "commit "+w.git("rev-parse", "HEAD")+" refused: it is not signed")

	signed := w.sshSignedCommit("signed by alice", map[string]string{"cluster.yml": "v1\n"}, k.alice)
	w.push("main")
	rev, changed := mustPoll(t, s)
	aliceFP := strings.Fields(sshKeygen(t, k.dir, nil, "-l", "-E", "sha256", "-f", k.alice+".pub"))[1]
	if !changed || rev.Commit != signed || rev.Signer != "ssh alice@example.com (ssh-ed25519 "+aliceFP+")" || string(rev.Files["cluster.yml"]) != "v1\n" {
		t.Fatalf("SSH-signed commit: changed %v, %+v", changed, rev)
	}
	crossCheckWithSSHKeygen(t, s, k, signed)

	// Unsigned on top: refused, and again at the next poll without a fetch.
	w.commit("unsigned", map[string]string{"cluster.yml": "evil\n"})
	w.push("main")
	wantReason(t, s, ReasonSignature, "it is not signed")
	fetches := s.Stats().Fetches
	wantReason(t, s, ReasonSignature, "it is not signed")
	if s.Stats().Fetches != fetches {
		t.Error("a refused revision was fetched again")
	}
	if cur := s.Current(); cur == nil || cur.Commit != signed {
		t.Errorf("the refused revision replaced the one in force: %v", cur)
	}

	// Signed by a key that is not trusted, then trusted.
	mallorys := w.sshSignedCommit("signed by mallory", map[string]string{"cluster.yml": "v2\n"}, k.mallory)
	w.push("main")
	wantReason(t, s, ReasonSignature, "ecdsa-sha2-nistp256", "is not in the allowed signers")
	writeFile(t, k.allowed, "alice@example.com "+k.alicePub+"\nmallory@example.com "+k.malloryPub+"\n")
	fetches = s.Stats().Fetches
	rev, changed = mustPoll(t, s)
	if !changed || rev.Commit != mallorys || !strings.HasPrefix(rev.Signer, "ssh mallory@example.com") || s.Stats().Fetches != fetches {
		t.Fatalf("after trusting mallory: changed %v, %+v, fetches %d -> %d", changed, rev, fetches, s.Stats().Fetches)
	}

	// OpenPGP.
	pgpSigned := w.pgpSignedCommit("signed with OpenPGP", map[string]string{"cluster.yml": "v3\n"}, k.pgp)
	w.push("main")
	rev, changed = mustPoll(t, s)
	if !changed || rev.Commit != pgpSigned || rev.Signer != "openpgp atrest release <release@atrest.invalid> "+pgpFingerprint(k.pgp) {
		t.Fatalf("OpenPGP-signed commit: changed %v, %s signed by %q", changed, rev, rev.Signer)
	}
	w.pgpSignedCommit("signed by a rogue OpenPGP key", map[string]string{"cluster.yml": "v4\n"}, k.rogue)
	w.push("main")
	wantReason(t, s, ReasonSignature, "signed by an OpenPGP key that is not in "+k.keyring)

	// Tampered: alice's signature on a commit whose message was changed.
	raw := runGit(t, w.dir, nil, "cat-file", "commit", signed)
	forged := strings.Replace(raw, "signed by alice", "signed by alice, honest", 1)
	file := writeFile(t, filepath.Join(t.TempDir(), "forged"), forged+"\n")
	forgedHash := runGit(t, w.dir, nil, "hash-object", "-t", "commit", "-w", file)
	w.git("push", "--quiet", "--force", "origin", forgedHash+":refs/heads/main")
	wantReason(t, s, ReasonSignature, "commit "+forgedHash, "signature does not verify")
	if cur := s.Current(); cur == nil || cur.Commit != pgpSigned {
		t.Errorf("in force after the refusals: %v, want %s", cur, pgpSigned)
	}

	// Trust only SSH keys: the OpenPGP-signed commit is refused, saying why.
	w.git("push", "--quiet", "origin", pgpSigned+":refs/heads/keep-pgp", signed+":refs/heads/keep-ssh")
	sshOnly, err := New(Config{URL: w.bare, Ref: pgpSigned, CacheDir: t.TempDir(), AllowedSignersFile: k.allowed})
	if err != nil {
		t.Fatal(err)
	}
	wantReason(t, sshOnly, ReasonSignature, "it has an OpenPGP signature, but only SSH keys are trusted")
	pgpOnly, err := New(Config{URL: w.bare, Ref: signed, CacheDir: t.TempDir(), OpenPGPKeyringFile: k.keyring})
	if err != nil {
		t.Fatal(err)
	}
	wantReason(t, pgpOnly, ReasonSignature, "it has an SSH signature, but only OpenPGP keys are trusted")
}

// crossCheckWithSSHKeygen checks that the payload and signature split from
// the commit verify with the real ssh-keygen: the split is git's.
func crossCheckWithSSHKeygen(t *testing.T, s *Source, k *signers, commit string) {
	t.Helper()
	raw, _, err := rawObject(s.cache.repo, plumbing.NewHash(commit))
	if err != nil {
		t.Fatal(err)
	}
	payload, sig := splitCommitSignature(raw)
	sigFile := writeFile(t, filepath.Join(t.TempDir(), "commit.sig"), string(sig))
	out := sshKeygen(t, k.dir, payload, "-Y", "verify", "-f", k.allowed, "-I", "alice@example.com", "-n", "git", "-s", sigFile)
	if !strings.Contains(out, `Good "git" signature for alice@example.com`) {
		t.Errorf("ssh-keygen on the split commit: %s", out)
	}
}

// TestLocalSignedTags follows tags with verification on: the annotated tag
// must be signed by a trusted key as well as the commit.
func TestLocalSignedTags(t *testing.T) {
	k := newSigners(t)
	w := newLocalRepo(t, map[string]string{"cluster.yml": "v0\n"})
	signed := w.sshSignedCommit("signed", map[string]string{"cluster.yml": "v1\n"}, k.alice)
	w.git(append(sshSign(k.alice), "tag", "-s", "-m", "release v1", "v1")...)
	w.git("tag", "-a", "-m", "unsigned release", "v1-unsigned")
	w.pgpSignedTag("v1-pgp", signed, k.pgp)
	w.pgpSignedTag("v1-rogue", signed, k.rogue)
	unsigned := w.commit("unsigned", map[string]string{"cluster.yml": "v2\n"})
	w.git(append(sshSign(k.alice), "tag", "-s", "-m", "signed tag, unsigned commit", "v2")...)
	// A signed tag put under another name: v3 points at the tag object
	// signed as v1.
	w.git("update-ref", "refs/tags/v3", strings.TrimSpace(w.git("rev-parse", "refs/tags/v1")))
	w.push("main", "--tags")
	aliceFP := strings.Fields(sshKeygen(t, k.dir, nil, "-l", "-E", "sha256", "-f", k.alice+".pub"))[1]

	for _, tc := range []struct {
		ref       string
		tagSigner string // "" for a refusal
		why       string
	}{
		{"v1", "ssh alice@example.com (ssh-ed25519 " + aliceFP + ")", ""},
		{"refs/tags/v1-pgp", "openpgp atrest release <release@atrest.invalid> " + pgpFingerprint(k.pgp), ""},
		{"v1-unsigned", "", "tag v1-unsigned"},
		{"v1-rogue", "", "not in " + k.keyring},
		{"v2", "", "commit " + unsigned + " refused: it is not signed"},
		{"v3", "", `tag object is signed as "v1"`},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			s, err := New(Config{URL: w.bare, Ref: tc.ref, CacheDir: t.TempDir(), AllowedSignersFile: k.allowed, OpenPGPKeyringFile: k.keyring})
			if err != nil {
				t.Fatal(err)
			}
			if tc.tagSigner == "" {
				wantReason(t, s, ReasonSignature, tc.why)
				return
			}
			rev, _ := mustPoll(t, s)
			if rev.Commit != signed || rev.TagSigner != tc.tagSigner || !strings.HasPrefix(rev.Signer, "ssh alice@example.com") {
				t.Fatalf("commit %s, tag signer %q, signer %q", rev.Commit, rev.TagSigner, rev.Signer)
			}
		})
	}
}

func TestSplitCommitSignature(t *testing.T) {
	const sig = "-----BEGIN SSH SIGNATURE-----\n AAAA\n BBBB\n -----END SSH SIGNATURE-----\n"
	raw := "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n" +
		"author A <a@b> 1700000000 +0000\n" +
		"committer A <a@b> 1700000000 +0000\n" +
		"gpgsig " + sig +
		"gpgsig-sha256 -----BEGIN SSH SIGNATURE-----\n CCCC\n -----END SSH SIGNATURE-----\n" +
		"mergetag object 1234\n type commit\n\n" +
		"subject\n\ngpgsig in the body is not a header\n"
	payload, got := splitCommitSignature([]byte(raw))
	wantPayload := "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n" +
		"author A <a@b> 1700000000 +0000\n" +
		"committer A <a@b> 1700000000 +0000\n" +
		"mergetag object 1234\n type commit\n\n" +
		"subject\n\ngpgsig in the body is not a header\n"
	if string(payload) != wantPayload {
		t.Errorf("payload:\n%s\nwant:\n%s", payload, wantPayload)
	}
	if want := "-----BEGIN SSH SIGNATURE-----\nAAAA\nBBBB\n-----END SSH SIGNATURE-----\n"; string(got) != want {
		t.Errorf("signature:\n%s\nwant:\n%s", got, want)
	}
	unsigned := "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nmsg\n"
	if p, s := splitCommitSignature([]byte(unsigned)); s != nil || string(p) != unsigned {
		t.Errorf("unsigned commit split into %q, %q", p, s)
	}
}

func TestSplitTagSignature(t *testing.T) {
	head := "object 1234\ntype commit\ntag v1\ntagger A <a@b> 1 +0000\n\nrelease, quoting -----BEGIN PGP SIGNATURE----- mid-line\n"
	sig := "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n"
	payload, got := splitTagSignature([]byte(head + sig))
	if string(payload) != head || string(got) != sig {
		t.Errorf("split into %q, %q", payload, got)
	}
	if p, s := splitTagSignature([]byte(head + "no signature\n")); s != nil || !bytes.Equal(p, []byte(head+"no signature\n")) {
		t.Errorf("unsigned tag split into %q, %q", p, s)
	}
}

// TestSignatureTrustFilesAtPollTime: a trust file that turns bad after New
// fails the poll with ConfigInvalid, naming the field, not as a refusal.
func TestSignatureTrustFilesAtPollTime(t *testing.T) {
	k := newSigners(t)
	w := newLocalRepo(t, map[string]string{"cluster.yml": "v0\n"})
	w.sshSignedCommit("signed", nil, k.alice)
	w.push("main")
	s, err := New(Config{URL: w.bare, Ref: "main", CacheDir: t.TempDir(), AllowedSignersFile: k.allowed})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(k.allowed); err != nil {
		t.Fatal(err)
	}
	wantReason(t, s, ReasonConfig, "AllowedSignersFile", k.allowed)
}
