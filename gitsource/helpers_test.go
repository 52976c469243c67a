package gitsource

import (
	"bytes"
	"context"
	"crypto/subtle"
	"io"
	"log/slog"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testCtx is a context that ends with the test, bounded.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// runGit runs real git in dir and returns its trimmed output.
func runGit(t testing.TB, dir string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(),
		"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "HOME="+os.TempDir(),
		"GIT_AUTHOR_NAME=atrest test", "GIT_AUTHOR_EMAIL=test@atrest.invalid",
		"GIT_COMMITTER_NAME=atrest test", "GIT_COMMITTER_EMAIL=test@atrest.invalid",
		"GIT_TERMINAL_PROMPT=0"), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// workRepo is a non-bare clone the tests commit in and push from.
type workRepo struct {
	t    testing.TB
	dir  string
	env  []string
	bare string
}

// newLocalRepo creates a bare repository with one commit on main holding
// files, and a clone of it to work in.
func newLocalRepo(t testing.TB, files map[string]string) *workRepo {
	t.Helper()
	root := t.TempDir()
	w := &workRepo{t: t, dir: filepath.Join(root, "work"), bare: filepath.Join(root, "remote.git")}
	runGit(t, root, nil, "init", "--quiet", "--bare", "--initial-branch=main", w.bare)
	runGit(t, root, nil, "clone", "--quiet", w.bare, w.dir)
	runGit(t, w.dir, nil, "checkout", "--quiet", "-B", "main")
	w.commit("initial", files)
	w.git("push", "--quiet", "origin", "main")
	return w
}

func (w *workRepo) git(args ...string) string {
	w.t.Helper()
	return runGit(w.t, w.dir, w.env, args...)
}

// commit writes files (an empty content removes the file) and commits
// them with extra arguments to git commit (e.g. -S); it returns the hash.
func (w *workRepo) commit(msg string, files map[string]string, args ...string) string {
	w.t.Helper()
	for name, content := range files {
		p := filepath.Join(w.dir, name)
		if content == "" {
			w.git("rm", "--quiet", name)
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			w.t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			w.t.Fatal(err)
		}
		w.git("add", name)
	}
	w.git(append([]string{"commit", "--quiet", "--allow-empty", "-m", msg}, args...)...)
	return w.git("rev-parse", "HEAD")
}

// push pushes main (and anything else named) to the remote.
func (w *workRepo) push(args ...string) {
	w.t.Helper()
	w.git(append([]string{"push", "--quiet", "origin"}, args...)...)
}

// logBuffer captures a Source's log.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func newLogger(w *logBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// gitHTTPServer serves the bare repositories under root with git's smart
// HTTP protocol (git http-backend as CGI, as the sandbox does) and counts
// the requests and the bytes of the responses.
type gitHTTPServer struct {
	root     string
	auth     func(*http.Request) bool // nil: no auth
	requests atomic.Int64
	bytes    atomic.Int64
	posts    atomic.Int64 // git-upload-pack requests: fetches
	reqBytes atomic.Int64 // request bodies
}

func (g *gitHTTPServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if g.auth != nil && !g.auth(r) {
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	gitBin, err := exec.LookPath("git")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	g.requests.Add(1)
	if r.Method == http.MethodPost {
		g.posts.Add(1)
	}
	body := &countingReader{r: r.Body}
	r.Body = body
	defer func() { g.reqBytes.Add(body.n) }()
	h := &cgi.Handler{
		Path: gitBin,
		Args: []string{"http-backend"},
		Env:  []string{"GIT_PROJECT_ROOT=" + g.root, "GIT_HTTP_EXPORT_ALL=1", "GIT_CONFIG_NOSYSTEM=1", "HOME=" + os.TempDir()},
	}
	cw := &countingWriter{ResponseWriter: w}
	h.ServeHTTP(cw, r)
	g.bytes.Add(cw.n)
}

// snapshot returns requests, fetches (POSTs) and response bytes so far.
func (g *gitHTTPServer) snapshot() (requests, posts, bytes int64) {
	return g.requests.Load(), g.posts.Load(), g.bytes.Load()
}

func basicAuth(user, password string) func(*http.Request) bool {
	return func(r *http.Request) bool {
		u, p, ok := r.BasicAuth()
		return ok && subtle.ConstantTimeCompare([]byte(u), []byte(user)) == 1 && subtle.ConstantTimeCompare([]byte(p), []byte(password)) == 1
	}
}

func bearerAuth(token string) func(*http.Request) bool {
	return func(r *http.Request) bool {
		return subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+token)) == 1
	}
}

type countingReader struct {
	r io.ReadCloser
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

// writeFile writes a test file, 0600.
func writeFile(t testing.TB, name, content string) string {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return name
}

// mustPoll polls and fails the test on error.
func mustPoll(t testing.TB, s *Source) (*Revision, bool) {
	t.Helper()
	rev, changed, err := s.Poll(testCtx(t))
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	return rev, changed
}

// wantReason polls and checks that it fails with the reason, and that the
// message holds every one of the fragments.
func wantReason(t testing.TB, s *Source, want Reason, fragments ...string) error {
	t.Helper()
	rev, _, err := s.Poll(testCtx(t))
	if err == nil {
		t.Fatalf("poll succeeded with %s, want %s", rev, want)
	}
	if got := ReasonOf(err); got != want {
		t.Fatalf("poll error reason %q, want %q: %v", got, want, err)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("poll error does not say %q: %v", f, err)
		}
	}
	return err
}
