package sandbox

import (
	"context"
	"crypto/subtle"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

const gitSSHDConfig = `ListenAddress %[1]s:22
HostKey %[2]s/ssh_host_ed25519_key
HostKey %[2]s/ssh_host_ecdsa_key
PidFile %[2]s/sshd.pid
AuthorizedKeysFile %[2]s/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding no
X11Forwarding no
`

// GitUsername is the HTTP user of the sandbox's Git server.
const GitUsername = "atrest"

func (sb *Sandbox) startGit(ctx context.Context) error {
	ip := sb.infraIP()
	dir := sb.path("git")
	sb.Git = GitInfo{
		Bare:         filepath.Join(dir, "cluster.git"),
		SSHKeyFile:   sb.path("ssh", "git_ed25519"),
		HTTPURL:      "http://" + ip + ":8080/cluster.git",
		Username:     GitUsername,
		PasswordFile: filepath.Join(dir, "password"),
	}
	sb.Git.SSHURL = "ssh://root@" + ip + ":22" + sb.Git.Bare
	if err := os.MkdirAll(filepath.Join(dir, "ssh"), 0o700); err != nil {
		return err
	}
	if err := git(ctx, "", "init", "--quiet", "--bare", "--initial-branch=main", sb.Git.Bare); err != nil {
		return err
	}
	if err := git(ctx, sb.Git.Bare, "config", "http.receivepack", "true"); err != nil {
		return err
	}
	if err := writeFile(sb.Git.PasswordFile, []byte(randomHex(12))); err != nil {
		return err
	}
	if _, err := newSSHKey(sb.Git.SSHKeyFile, "atrest-sandbox-git"); err != nil {
		return err
	}
	gitPub, err := os.ReadFile(sb.Git.SSHKeyFile + ".pub")
	if err != nil {
		return err
	}
	sshDir := filepath.Join(dir, "ssh")
	if err := writeFile(filepath.Join(sshDir, "authorized_keys"), gitPub); err != nil {
		return err
	}
	hostLines, err := writeHostKeys(sshDir, ip)
	if err != nil {
		return err
	}
	if err := appendFile(sb.KnownHostsFile, hostLines); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(sshDir, "sshd_config"), fmt.Appendf(nil, gitSSHDConfig, ip, sshDir)); err != nil {
		return err
	}
	// sshd's privilege separation directory, on the host.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	// Its own PID namespace, so stopping it also ends every session.
	sshd := exec.Command("unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc",
		"/usr/sbin/sshd", "-D", "-f", filepath.Join(sshDir, "sshd_config"), "-E", filepath.Join(dir, "sshd.log"))
	p, err := startProc("git-sshd", sshd, filepath.Join(dir, "sshd.out"))
	if err != nil {
		return err
	}
	p.Namespace = true
	if err := sb.track(p); err != nil {
		return err
	}
	if err := waitFor(ctx, "git sshd", 20*time.Second, p, tcpCheck(ip+":22")); err != nil {
		return fmt.Errorf("%w\n--- sshd log ---\n%s", err, tail(filepath.Join(dir, "sshd.log"), 20))
	}

	self, err := os.Executable()
	if err != nil {
		return err
	}
	httpd := exec.Command(self)
	httpd.Env = append(os.Environ(),
		helperEnv+"=git-http",
		"ATREST_SANDBOX_GIT_ADDR="+ip+":8080",
		"ATREST_SANDBOX_GIT_ROOT="+dir,
		"ATREST_SANDBOX_GIT_USER="+GitUsername,
		"ATREST_SANDBOX_GIT_PASSWORD_FILE="+sb.Git.PasswordFile,
	)
	hp, err := startProc("git-http", httpd, filepath.Join(dir, "http.log"))
	if err != nil {
		return err
	}
	if err := sb.track(hp); err != nil {
		return err
	}
	return waitFor(ctx, "git http", 20*time.Second, hp, tcpCheck(ip+":8080"))
}

func tcpCheck(addr string) func(context.Context) error {
	return func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}
}

func git(ctx context.Context, dir string, args ...string) error {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+os.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Commit writes files (path -> content) into the sandbox's repository on
// branch main as one commit, as an operator's push would, and returns the
// new commit's hash.
func (sb *Sandbox) Commit(ctx context.Context, message string, files map[string]string) (string, error) {
	work, err := os.MkdirTemp(sb.path("git"), "work-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	if err := git(ctx, "", "clone", "--quiet", sb.Git.Bare, work); err != nil {
		return "", err
	}
	if err := git(ctx, work, "checkout", "--quiet", "-B", "main"); err != nil {
		return "", err
	}
	for name, content := range files {
		if err := writeFile(filepath.Join(work, name), []byte(content)); err != nil {
			return "", err
		}
		if err := git(ctx, work, "add", name); err != nil {
			return "", err
		}
	}
	id := []string{"-c", "user.name=atrest sandbox", "-c", "user.email=sandbox@atrest.invalid"}
	if err := git(ctx, work, append(id, "commit", "--quiet", "--allow-empty", "-m", message)...); err != nil {
		return "", err
	}
	if err := git(ctx, work, "push", "--quiet", "origin", "main"); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, "git", "-C", work, "rev-parse", "HEAD").Output()
	if err != nil {
		return "", fmt.Errorf("git rev-parse: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// ForcePush points branch main of the sandbox's repository at commit, as
// a force push by whoever can write the repository would: the attack that
// rolls the desired state back to older history.
func (sb *Sandbox) ForcePush(ctx context.Context, commit string) error {
	return git(ctx, "", "--git-dir="+sb.Git.Bare, "update-ref", "refs/heads/main", commit)
}

func appendFile(name, data string) error {
	f, err := os.OpenFile(name, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// helperEnv marks a process the sandbox started from its own executable to
// play a part (the Git HTTP server) that must outlive the starting command.
const helperEnv = "ATREST_SANDBOX_HELPER"

// RunHelper makes this process a sandbox helper when it was started as one,
// and then never returns. Every binary that calls Start (the sandbox
// command, and test binaries in TestMain) calls RunHelper first.
func RunHelper() {
	switch os.Getenv(helperEnv) {
	case "":
		return
	case "git-http":
		err := serveGitHTTP(os.Getenv("ATREST_SANDBOX_GIT_ADDR"), os.Getenv("ATREST_SANDBOX_GIT_ROOT"),
			os.Getenv("ATREST_SANDBOX_GIT_USER"), os.Getenv("ATREST_SANDBOX_GIT_PASSWORD_FILE"))
		log.Fatal(err)
	default:
		log.Fatalf("unknown sandbox helper %q", os.Getenv(helperEnv))
	}
}

// serveGitHTTP serves the repositories under root with git's smart HTTP
// protocol (git http-backend, as CGI), behind basic auth, and logs one line
// per request with the bytes sent, so tests can see what a poll cost.
func serveGitHTTP(addr, root, user, passwordFile string) error {
	pw, err := os.ReadFile(passwordFile)
	if err != nil {
		return err
	}
	gitBin, err := exec.LookPath("git")
	if err != nil {
		return err
	}
	backend := &cgi.Handler{
		Path: gitBin,
		Args: []string{"http-backend"},
		Env:  []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1", "GIT_CONFIG_NOSYSTEM=1"},
	}
	logger := log.New(os.Stdout, "", log.LstdFlags|log.Lmicroseconds)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 || subtle.ConstantTimeCompare([]byte(p), pw) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="atrest sandbox git"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			logger.Printf("%s %s?%s 401", r.Method, r.URL.Path, r.URL.RawQuery)
			return
		}
		cw := &countingWriter{ResponseWriter: w}
		backend.ServeHTTP(cw, r)
		logger.Printf("%s %s?%s %d bytes=%d", r.Method, r.URL.Path, r.URL.RawQuery, cw.status, cw.n)
	})
	srv := &http.Server{Addr: addr, Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	return srv.ListenAndServe()
}

type countingWriter struct {
	http.ResponseWriter
	n      int64
	status int
}

func (c *countingWriter) WriteHeader(code int) {
	c.status = code
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}
