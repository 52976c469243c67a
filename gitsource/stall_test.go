package gitsource

import (
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestStalledSSHServer: a server that accepts the connection and never
// speaks must not hold a poll beyond Timeout, and a call left hanging must
// not be joined by another until it returns.
func TestStalledSSHServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	accepted := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(conns)
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	port := ln.Addr().(*net.TCPAddr).Port
	dir := t.TempDir()
	newSSHKey(t, dir, "id", "ed25519")
	hostPub := newSSHKey(t, dir, "host", "ed25519")
	known := writeFile(t, filepath.Join(dir, "known_hosts"), "[127.0.0.1]:"+itoa(port)+" "+hostPub+"\n")
	s, err := New(Config{URL: "ssh://git@127.0.0.1:" + itoa(port) + "/repo.git", Ref: "main", SSHKeyFile: filepath.Join(dir, "id"),
		KnownHostsFile: known, CacheDir: t.TempDir(), Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	wantReason(t, s, ReasonUnreachable, "list refs: no answer")
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the poll took %v with a Timeout of 300ms", took)
	}
	wantReason(t, s, ReasonUnreachable, "still hangs", "not starting another")
	if n := accepted(); n != 1 {
		t.Errorf("%d connections while one hangs, want 1", n)
	}

	// The hanging connection ends: the next poll tries again.
	mu.Lock()
	conns[0].Close()
	mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for accepted() < 2 && time.Now().Before(deadline) {
		if _, _, err := s.Poll(testCtx(t)); err == nil {
			t.Fatal("a poll of a server that never answers succeeded")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := accepted(); n != 2 {
		t.Errorf("after the hanging call returned: %d connections, want 2", n)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
