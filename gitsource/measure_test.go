package gitsource

import (
	"bufio"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The measurement of issue 7: what an unchanged poll costs next to a full
// `git fetch` of the same repository, over git's smart HTTP protocol on
// loopback (git http-backend, as the sandbox serves it). Run it with
//
//	go test -run '^$' -bench PollVsGitFetch ./gitsource/
//
// It prints bytes sent by the server, requests and time per operation for
// each, side by side: an unchanged Poll, real `git ls-remote` (the same
// question asked by git), the first Poll of a fresh cache (a shallow
// fetch), and a full `git fetch` into an empty repository.

const (
	measureCommits  = 2000
	measureFiles    = 50        // files the commits rewrite in turn
	measureBlobSize = 25 * 1024 // incompressible bytes per commit: 2,000 x 25 KiB = 50 MiB
)

// buildHistory creates a bare repository with measureCommits commits on
// main, each replacing one of measureFiles files with fresh random bytes
// (so neither zlib nor deltas shrink the history), and cluster.yml. It
// streams the history into git fast-import: one process, one pack.
func buildHistory(b *testing.B, bare string) {
	b.Helper()
	runGit(b, "", nil, "init", "--quiet", "--bare", "--initial-branch=main", bare)
	cmd := exec.Command("git", "fast-import", "--quiet", "--done")
	cmd.Dir = bare
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "HOME="+os.TempDir())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(stdin, 1<<20)
	rng := rand.New(rand.NewChaCha8([32]byte{7}))
	blob := make([]byte, measureBlobSize)
	when := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	cluster := "nodes:\n  - address: 10.0.0.1\n    role: [controlplane, etcd]\n"
	for i := 1; i <= measureCommits; i++ {
		for j := 0; j < len(blob); j += 8 {
			v := rng.Uint64()
			for k := 0; k < 8 && j+k < len(blob); k++ {
				blob[j+k] = byte(v >> (8 * k))
			}
		}
		fmt.Fprintf(w, "blob\nmark :%d\ndata %d\n", 2*i-1, len(blob))
		w.Write(blob)
		msg := fmt.Sprintf("commit %d", i)
		fmt.Fprintf(w, "\ncommit refs/heads/main\nmark :%d\ncommitter atrest <measure@atrest.invalid> %d +0000\ndata %d\n%s\n",
			2*i, when+int64(i), len(msg), msg)
		if i > 1 {
			fmt.Fprintf(w, "from :%d\n", 2*i-2)
		} else {
			fmt.Fprintf(w, "M 100644 inline cluster.yml\ndata %d\n%s\n", len(cluster), cluster)
		}
		fmt.Fprintf(w, "M 100644 :%d data/f%02d.bin\n\n", 2*i-1, i%measureFiles)
	}
	fmt.Fprint(w, "done\n")
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		b.Fatalf("git fast-import: %v\n%s", err, out)
	}
}

// measurement is one line of the side-by-side table.
type measurement struct {
	name          string
	ns            float64
	respBytes     float64
	reqBytes      float64
	requests      float64
	uploadPackReq float64
}

// measure runs op b.N times against srv and records the per-op averages.
func measure(b *testing.B, srv *gitHTTPServer, name string, op func(b *testing.B, i int), into *measurement) {
	b.Run(name, func(b *testing.B) {
		r0, p0, by0 := srv.snapshot()
		q0 := srv.reqBytes.Load()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			op(b, i)
		}
		b.StopTimer()
		r1, p1, by1 := srv.snapshot()
		n := float64(b.N)
		*into = measurement{
			name: name, ns: float64(b.Elapsed().Nanoseconds()) / n,
			respBytes: float64(by1-by0) / n, reqBytes: float64(srv.reqBytes.Load()-q0) / n,
			requests: float64(r1-r0) / n, uploadPackReq: float64(p1-p0) / n,
		}
		b.ReportMetric(into.respBytes, "resp-B/op")
		b.ReportMetric(into.requests, "requests/op")
	})
}

func BenchmarkPollVsGitFetch(b *testing.B) {
	root := b.TempDir()
	bare := filepath.Join(root, "big.git")
	start := time.Now()
	buildHistory(b, bare)
	var packBytes int64
	packs, _ := filepath.Glob(filepath.Join(bare, "objects", "pack", "*.pack"))
	for _, p := range packs {
		if info, err := os.Stat(p); err == nil {
			packBytes += info.Size()
		}
	}
	count := runGit(b, bare, nil, "rev-list", "--count", "main")
	fmt.Printf("repository: %s commits, %.1f MiB of packed history, built in %v\n", count, float64(packBytes)/(1<<20), time.Since(start).Round(time.Millisecond))

	srv := &gitHTTPServer{root: root}
	hs := httptest.NewServer(srv)
	b.Cleanup(hs.Close)
	url := hs.URL + "/big.git"

	// The source under test has polled once: its cache holds the tip.
	quiet := slog.New(slog.DiscardHandler)
	s, err := New(Config{URL: url, Ref: "main", CacheDir: b.TempDir(), Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	if _, _, err := s.Poll(testCtx(b)); err != nil {
		b.Fatal(err)
	}

	var poll, lsRemote, first, full measurement
	measure(b, srv, "poll-unchanged", func(b *testing.B, _ int) {
		if _, changed, err := s.Poll(testCtx(b)); err != nil || changed {
			b.Fatalf("unchanged poll: changed %v, %v", changed, err)
		}
	}, &poll)
	measure(b, srv, "git-ls-remote", func(b *testing.B, _ int) {
		runGit(b, "", nil, "ls-remote", "--quiet", url, "refs/heads/main")
	}, &lsRemote)
	measure(b, srv, "poll-first-shallow", func(b *testing.B, i int) {
		b.StopTimer()
		fresh, err := New(Config{URL: url, Ref: "main", CacheDir: filepath.Join(root, fmt.Sprintf("first-%d-%d", b.N, i)), Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, changed, err := fresh.Poll(testCtx(b)); err != nil || !changed {
			b.Fatalf("first poll: changed %v, %v", changed, err)
		}
	}, &first)
	measure(b, srv, "git-fetch-full", func(b *testing.B, i int) {
		b.StopTimer()
		dst := filepath.Join(root, fmt.Sprintf("fetch-%d-%d.git", b.N, i))
		runGit(b, "", nil, "init", "--quiet", "--bare", dst)
		b.StartTimer()
		runGit(b, dst, nil, "fetch", "--quiet", "--no-tags", url, "+refs/heads/*:refs/heads/*")
		b.StopTimer()
		os.RemoveAll(dst)
		b.StartTimer()
	}, &full)

	var t strings.Builder
	fmt.Fprintf(&t, "\n%-20s %14s %12s %10s %14s %12s\n", "operation", "time/op", "server B/op", "client B/op", "requests/op", "upload-pack")
	for _, m := range []measurement{poll, lsRemote, first, full} {
		fmt.Fprintf(&t, "%-20s %14v %12.0f %10.0f %14.1f %12.1f\n", m.name, time.Duration(m.ns).Round(time.Microsecond),
			m.respBytes, m.reqBytes, m.requests, m.uploadPackReq)
	}
	if poll.respBytes > 0 && poll.ns > 0 {
		fmt.Fprintf(&t, "an unchanged poll moves %.0fx fewer bytes than a full git fetch, and takes %.0fx less time\n",
			full.respBytes/poll.respBytes, full.ns/poll.ns)
	}
	// Printed, not logged: a parent benchmark's log is not shown.
	fmt.Print(t.String())
}
