//go:build sandbox

package gitsource

import (
	"bufio"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/atrest-io/atrest/sandbox"
	"github.com/atrest-io/atrest/sandbox/sandboxtest"
)

var sb *sandbox.Sandbox

func TestMain(m *testing.M) {
	os.Exit(sandboxtest.Main(m, sandbox.Options{Nodes: 1}, &sb))
}

// sandboxWork clones the sandbox repository over SSH, with real git, to
// commit, tag and force-push in.
func sandboxWork(t *testing.T) *workRepo {
	t.Helper()
	w := &workRepo{t: t, dir: filepath.Join(t.TempDir(), "work"), env: []string{
		fmt.Sprintf("GIT_SSH_COMMAND=ssh -i %s -o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o BatchMode=yes",
			sb.Git.SSHKeyFile, sb.KnownHostsFile),
	}}
	runGit(t, "", w.env, "clone", "--quiet", sb.Git.SSHURL, w.dir)
	return w
}

// httpLog is the sandbox Git server's request log: one line per request.
type httpLog struct{ file string }

func (l httpLog) lines(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(l.file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "/cluster.git/") {
			out = append(out, sc.Text())
		}
	}
	return out
}

// since waits (bounded) until the log has n lines after the first `from`,
// and returns those after `from`: the server logs a request after it has
// answered it, so the line may land just after the poll returns.
func (l httpLog) since(t *testing.T, from, n int) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		lines := l.lines(t)
		if len(lines)-from >= n || time.Now().After(deadline) {
			time.Sleep(200 * time.Millisecond) // and nothing more comes
			return l.lines(t)[from:]
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func httpConfig(t *testing.T, ref string) Config {
	return Config{URL: sb.Git.HTTPURL, Ref: ref, Username: sb.Git.Username, PasswordFile: sb.Git.PasswordFile, CacheDir: t.TempDir()}
}

func sshConfig(t *testing.T, ref string) Config {
	return Config{URL: sb.Git.SSHURL, Ref: ref, SSHKeyFile: sb.Git.SSHKeyFile, KnownHostsFile: sb.KnownHostsFile, CacheDir: t.TempDir()}
}

// TestSandboxHTTPFollowsMain follows main over HTTP with basic auth, and
// reads the server's request log to see what each poll cost.
func TestSandboxHTTPFollowsMain(t *testing.T) {
	log := httpLog{filepath.Join(sb.Dir, "git", "http.log")}
	var logs logBuffer
	cfg := httpConfig(t, "main")
	cfg.Logger = newLogger(&logs)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	before := len(log.lines(t))
	rev, changed := mustPoll(t, s)
	if !changed || !strings.Contains(string(rev.Files["cluster.yml"]), "nodes:") {
		t.Fatalf("first poll: changed %v, %+v", changed, rev)
	}
	first := log.since(t, before, 3)
	t.Logf("first poll, server log:\n%s", strings.Join(first, "\n"))
	if !containsLine(first, "POST /cluster.git/git-upload-pack") {
		t.Errorf("the first poll fetched nothing")
	}

	before = len(log.lines(t))
	if again, changed := mustPoll(t, s); changed || again != rev {
		t.Fatalf("unchanged poll: changed %v, %v", changed, again)
	}
	unchanged := log.since(t, before, 1)
	t.Logf("unchanged poll, server log:\n%s", strings.Join(unchanged, "\n"))
	if len(unchanged) != 1 || !strings.Contains(unchanged[0], "GET /cluster.git/info/refs?service=git-upload-pack 200") {
		t.Errorf("an unchanged poll must be one ref advertisement, not:\n%s", strings.Join(unchanged, "\n"))
	}

	hash, err := sb.Commit(testCtx(t), "add policy", map[string]string{"atrest.yaml": "rotation: monthly\n"})
	if err != nil {
		t.Fatal(err)
	}
	rev, changed = mustPoll(t, s)
	if !changed || rev.Commit != hash || rev.Subject != "add policy" || string(rev.Files["atrest.yaml"]) != "rotation: monthly\n" {
		t.Fatalf("after sb.Commit: changed %v, %+v", changed, rev)
	}

	for _, tc := range []struct {
		name string
		cfg  func(*Config)
		want Reason
		says []string
	}{
		{"missing ref", func(c *Config) { c.Ref = "release" }, ReasonRefNotFound, []string{"release is not on the remote", "main"}},
		{"missing file", func(c *Config) { c.Files = []string{"cluster.yml", "nodes.yml"} }, ReasonFileNotFound, []string{"nodes.yml is not at commit " + hash}},
		{"file too large", func(c *Config) { c.MaxFileSize = 16 }, ReasonFileTooLarge, []string{"cluster.yml at commit " + hash, "over the limit of 16"}},
		{"wrong password", func(c *Config) { c.PasswordFile = writeFile(t, filepath.Join(t.TempDir(), "pw"), "not-the-password") }, ReasonAuthRefused, []string{sb.Git.HTTPURL}},
		{"wrong repository", func(c *Config) { c.URL = strings.Replace(c.URL, "cluster.git", "nothing.git", 1) }, ReasonRepositoryNotFound, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := httpConfig(t, "main")
			cfg.Logger = newLogger(&logs)
			tc.cfg(&cfg)
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = wantReason(t, s, tc.want, tc.says...)
			t.Logf("%s: %v", tc.name, err)
		})
	}
	pw, err := os.ReadFile(sb.Git.PasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), strings.TrimSpace(string(pw))) || strings.Contains(logs.String(), "not-the-password") {
		t.Errorf("a password is in the log:\n%s", logs.String())
	}
}

func containsLine(lines []string, fragment string) bool {
	for _, l := range lines {
		if strings.Contains(l, fragment) {
			return true
		}
	}
	return false
}

// cacheState lists every file of a cache directory with its size and
// modification time: an unchanged poll must leave it as it was.
func cacheState(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %d %d\n", p, info.Size(), info.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestSandboxSSH follows a branch over SSH with a hashed known_hosts file
// that lists the server's two host keys: a new commit, a force push, a
// tag, pinned commits, a wrong host key and a key the server refuses.
func TestSandboxSSH(t *testing.T) {
	w := sandboxWork(t)
	w.git("checkout", "--quiet", "-b", "ssh-follow")
	base := w.commit("ssh base", map[string]string{"cluster.yml": "ssh: base\n"})
	w.push("ssh-follow")

	hashed := filepath.Join(t.TempDir(), "known_hosts")
	data, err := os.ReadFile(sb.KnownHostsFile)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, hashed, string(data))
	sshKeygen(t, "", nil, "-q", "-H", "-f", hashed)
	if hashedData, _ := os.ReadFile(hashed); strings.Contains(string(hashedData), sb.Nodes[0].Address) {
		t.Fatal("known_hosts is not hashed")
	}

	var logs logBuffer
	cfg := sshConfig(t, "ssh-follow")
	cfg.KnownHostsFile, cfg.Logger = hashed, newLogger(&logs)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rev, changed := mustPoll(t, s)
	if !changed || rev.Commit != base || string(rev.Files["cluster.yml"]) != "ssh: base\n" || s.Stats().Fetches != 1 {
		t.Fatalf("first poll over SSH: changed %v, %+v, %+v", changed, rev, s.Stats())
	}
	state := cacheState(t, cfg.CacheDir)
	if _, changed := mustPoll(t, s); changed {
		t.Error("unchanged poll changed")
	}
	if st := s.Stats(); st.Fetches != 1 || cacheState(t, cfg.CacheDir) != state {
		t.Errorf("an unchanged poll over SSH fetched or touched the cache: %+v", st)
	}
	t.Logf("unchanged poll over SSH: %v (ref listing %v)", s.Stats().LastPollDuration, s.Stats().LastListDuration)

	second := w.commit("ssh second", map[string]string{"cluster.yml": "ssh: second\n"})
	w.push("ssh-follow")
	if rev, changed = mustPoll(t, s); !changed || rev.Commit != second {
		t.Fatalf("new commit over SSH: changed %v, %+v", changed, rev)
	}

	// A force push: history rewritten under the source.
	w.git("reset", "--quiet", "--hard", base)
	rewritten := w.commit("ssh rewritten", map[string]string{"cluster.yml": "ssh: rewritten\n"})
	w.push("--force", "ssh-follow")
	if rev, changed = mustPoll(t, s); !changed || rev.Commit != rewritten || string(rev.Files["cluster.yml"]) != "ssh: rewritten\n" {
		t.Fatalf("after a force push: changed %v, %+v", changed, rev)
	}

	// Tags and pinned commits.
	w.git("tag", "-a", "-m", "ssh release", "ssh-v1", base)
	w.push("ssh-v1")
	for _, tc := range []struct{ name, ref, commit, tag, content string }{
		{"annotated tag", "ssh-v1", base, "ssh-v1", "ssh: base\n"},
		{"pinned tip", rewritten, rewritten, "", "ssh: rewritten\n"},
		// Not a tip: the server does not serve commits by hash over SSH,
		// so the source fetches the branches' history once.
		{"pinned non-tip", base, base, "", "ssh: base\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(sshConfig(t, tc.ref))
			if err != nil {
				t.Fatal(err)
			}
			rev, changed := mustPoll(t, s)
			if !changed || rev.Commit != tc.commit || rev.Tag != tc.tag || string(rev.Files["cluster.yml"]) != tc.content {
				t.Fatalf("changed %v, %+v", changed, rev)
			}
		})
	}

	// The key from an SSH agent instead of a file.
	t.Run("ssh agent", func(t *testing.T) {
		sock := startSSHAgent(t, sb.Git.SSHKeyFile)
		t.Setenv("SSH_AUTH_SOCK", sock)
		cfg := sshConfig(t, "ssh-follow")
		cfg.SSHKeyFile, cfg.UseSSHAgent = "", true
		s, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if rev, _ := mustPoll(t, s); rev.Commit != rewritten {
			t.Fatalf("through the agent: %+v", rev)
		}
	})

	// known_hosts lists node1's keys under the Git server's address.
	u, err := url.Parse(sb.Git.SSHURL)
	if err != nil {
		t.Fatal(err)
	}
	gitHost := u.Hostname()
	var wrong []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, sb.Nodes[0].Address+" ") {
			wrong = append(wrong, gitHost+strings.TrimPrefix(line, sb.Nodes[0].Address))
		}
	}
	cfg = sshConfig(t, "ssh-follow")
	cfg.KnownHostsFile = writeFile(t, filepath.Join(t.TempDir(), "wrong_known_hosts"), strings.Join(wrong, "\n")+"\n")
	bad, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = wantReason(t, bad, ReasonHostKeyMismatch, "host key mismatch for "+gitHost, "SHA256:")
	t.Logf("wrong host key: %v", err)

	// A key the server does not accept.
	dir := t.TempDir()
	newSSHKey(t, dir, "stranger", "ed25519")
	cfg = sshConfig(t, "ssh-follow")
	cfg.SSHKeyFile = filepath.Join(dir, "stranger")
	stranger, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = wantReason(t, stranger, ReasonAuthRefused, "unable to authenticate")
	t.Logf("refused key: %v", err)
}

// startSSHAgent runs a real ssh-agent holding key, stopped (by PID) when
// the test ends, and returns its socket.
func startSSHAgent(t *testing.T, key string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	agent := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		agent.Process.Kill()
		agent.Wait()
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("ssh-agent did not create its socket")
		}
	}
	add := exec.Command("ssh-add", "-q", key)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v: %s", err, out)
	}
	return sock
}

// TestSandboxSignatures follows a branch over HTTP with SSH and OpenPGP
// verification on: commits signed by ssh-keygen (through git with
// gpg.format=ssh) and by a generated OpenPGP key pass, an unsigned one is
// refused and the signed revision stays in force, and a signed tag is
// verified with its commit.
func TestSandboxSignatures(t *testing.T) {
	k := newSigners(t)
	w := sandboxWork(t)
	w.git("checkout", "--quiet", "-b", "signed")
	signed := w.sshSignedCommit("signed by alice", map[string]string{"cluster.yml": "signed: ssh\n"}, k.alice)
	w.push("signed")

	cfg := httpConfig(t, "signed")
	cfg.AllowedSignersFile, cfg.OpenPGPKeyringFile = k.allowed, k.keyring
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rev, changed := mustPoll(t, s)
	if !changed || rev.Commit != signed || !strings.HasPrefix(rev.Signer, "ssh alice@example.com (ssh-ed25519 SHA256:") {
		t.Fatalf("SSH-signed commit: changed %v, %s signed by %q", changed, rev, rev.Signer)
	}
	t.Logf("accepted %s, signed by %s", rev, rev.Signer)

	unsigned := w.commit("unsigned", map[string]string{"cluster.yml": "signed: no\n"})
	w.push("signed")
	err = wantReason(t, s, ReasonSignature, "commit "+unsigned+" refused: it is not signed")
	t.Logf("refused: %v", err)
	if cur := s.Current(); cur == nil || cur.Commit != signed {
		t.Errorf("in force after the refusal: %v", cur)
	}

	pgp := w.pgpSignedCommit("signed with OpenPGP", map[string]string{"cluster.yml": "signed: openpgp\n"}, k.pgp)
	w.push("signed")
	rev, changed = mustPoll(t, s)
	if !changed || rev.Commit != pgp || rev.Signer != "openpgp atrest release <release@atrest.invalid> "+pgpFingerprint(k.pgp) {
		t.Fatalf("OpenPGP-signed commit: changed %v, %s signed by %q", changed, rev, rev.Signer)
	}
	t.Logf("accepted %s, signed by %s", rev, rev.Signer)

	w.git(append(sshSign(k.alice), "tag", "-s", "-m", "signed release", "signed-v1", signed)...)
	w.push("signed-v1")
	cfg = httpConfig(t, "signed-v1")
	cfg.AllowedSignersFile = k.allowed
	tagged, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rev, _ = mustPoll(t, tagged)
	if rev.Tag != "signed-v1" || rev.Commit != signed || !strings.HasPrefix(rev.TagSigner, "ssh alice@example.com") {
		t.Fatalf("signed tag: %s, tag signer %q", rev, rev.TagSigner)
	}
}
