//go:build sandbox

package controlplane_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/atrest-io/atrest/controlplane"
)

// leftoverTmp lists the temporary files of provider-file writes beside
// node i's provider file.
func leftoverTmp(t *testing.T, i int) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(filepath.Dir(hostFile(i)), ".encryption.yaml.atrest.*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// A write cut off half way (atrest killed mid-stream) must leave the old
// file, whole, and its temporary file must not outlive the next write.
func TestWriteCutMidStreamKeepsOldFile(t *testing.T) {
	const i = 0
	opts, _ := options(t)
	cut := make(chan *controlplane.Node, 1)
	opts.Failpoint = func(name string) {
		if name != controlplane.FailpointWriteMidStream {
			return
		}
		select {
		case n := <-cut:
			// Let the first half reach the node before the cut.
			time.Sleep(300 * time.Millisecond)
			if err := controlplane.CutSSH(n); err != nil {
				t.Errorf("cut SSH: %v", err)
			}
		default:
		}
	}
	c := connect(t, loadCluster(t), opts)
	ctx := testCtx(t)
	n := c.Nodes()[i]
	old := []byte("# the old file\n" + strings.Repeat("# old\n", 100))
	if err := n.WriteProviderFile(ctx, old); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(hostFile(i)) })

	cut <- n
	err := n.WriteProviderFile(ctx, []byte(strings.Repeat("# new\n", 4000)))
	if err == nil {
		t.Fatal("a write whose connection was cut half way succeeded")
	}
	t.Log(err)
	// The node finishes the script on its own once it sees the cut: wait
	// for it to drop (or, before the fix, rename) its temporary file.
	deadline := time.Now().Add(15 * time.Second)
	for len(leftoverTmp(t, i)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	if got, err := os.ReadFile(hostFile(i)); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("after the cut write the node holds %d bytes (%v), want the old %d", len(got), err, len(old))
	}

	c2 := connect(t, loadCluster(t), opts)
	if err := c2.Nodes()[i].WriteProviderFile(ctx, old); err != nil {
		t.Fatal(err)
	}
	if tmp := leftoverTmp(t, i); len(tmp) > 0 {
		t.Errorf("temporary files left after the next write: %v", tmp)
	}
}

// A write fenced off by a greater token on the node is refused and leaves
// the file as it was.
func TestFencedWriteIsRefused(t *testing.T) {
	const i = 1
	opts, _ := options(t)
	c := connect(t, loadCluster(t), opts)
	n := c.Nodes()[i]
	old := []byte("# written under token 7\n")
	if err := n.WriteProviderFile(controlplane.WithFence(testCtx(t), controlplane.Fence{Token: 7}), old); err != nil {
		t.Fatal(err)
	}
	fence := filepath.Join(filepath.Dir(hostFile(i)), ".atrest-fence")
	t.Cleanup(func() {
		_ = os.Remove(hostFile(i))
		_ = os.Remove(fence)
	})
	if got, _ := os.ReadFile(fence); string(got) != "7\n" {
		t.Fatalf("the node's fence token file holds %q", got)
	}
	err := n.WriteProviderFile(controlplane.WithFence(testCtx(t), controlplane.Fence{Token: 6}), []byte("# stale holder\n"))
	t.Log(err)
	if !errors.Is(err, controlplane.ErrFenced) {
		t.Fatalf("a write with a smaller token: %v", err)
	}
	if got, err := os.ReadFile(hostFile(i)); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("the fenced write changed the file: %q (%v)", got, err)
	}
	// A lost lock stops the write before it reaches the node.
	lost := controlplane.Fence{Token: 8, Check: func() error { return errors.New("lock lost") }}
	if err := n.RemoveProviderFile(controlplane.WithFence(testCtx(t), lost)); !errors.Is(err, controlplane.ErrFenced) {
		t.Fatalf("a removal with the lock lost: %v", err)
	}
	if _, err := os.Stat(hostFile(i)); err != nil {
		t.Fatal(err)
	}
}

// A run killed at each point of a container swap leaves the leftovers a
// real crash would (the goroutine ends there, deferring nothing), and
// Recover leaves kube-apiserver ready under its name, and nothing else.
func TestRecoverAfterInterruptedSwap(t *testing.T) {
	const i = 2
	opts, _ := options(t)
	var crashAt atomic.Value
	crashAt.Store("")
	opts.Failpoint = func(name string) {
		if name == crashAt.Load() {
			runtime.Goexit()
		}
	}
	c, n := swapNode(t, opts, i)
	ctx := testCtx(t)
	for _, tc := range []struct {
		failpoint string
		leftover  []string // the containers the crash leaves
		flagOn    bool     // whether the replacement survives recovery
	}{
		{controlplane.FailpointSwapAfterStop, []string{"kube-apiserver", "kube-apiserver-atrest-next"}, false},
		{controlplane.FailpointSwapAfterRename, []string{"kube-apiserver-atrest-next", "kube-apiserver-atrest-prev"}, false},
		{controlplane.FailpointSwapAfterStart, []string{"kube-apiserver", "kube-apiserver-atrest-prev"}, true},
	} {
		crashAt.Store(tc.failpoint)
		done := make(chan struct{})
		returned := false
		go func() {
			defer close(done)
			_ = n.SetProviderConfigFlag(ctx, true)
			returned = true
		}()
		<-done
		crashAt.Store("")
		if returned {
			t.Fatalf("%s: the swap did not stop at the failpoint", tc.failpoint)
		}
		names := containerNames(t, i)
		slices.Sort(names)
		if !slices.Equal(names, tc.leftover) {
			t.Fatalf("%s: the crash left containers %v, want %v", tc.failpoint, names, tc.leftover)
		}
		if err := c.Recover(ctx); err != nil {
			t.Fatalf("%s: recover: %v", tc.failpoint, err)
		}
		if names := containerNames(t, i); !slices.Equal(names, []string{"kube-apiserver"}) {
			t.Errorf("%s: after recovery the node has containers %v", tc.failpoint, names)
		}
		s := observe(t, c)[i]
		if !s.Ready || !s.APIServer.Running || s.APIServer.ProviderConfigSet() != tc.flagOn {
			t.Errorf("%s: after recovery: ready %v (%s), running %v, flag %q", tc.failpoint, s.Ready, s.NotReady, s.APIServer.Running, s.APIServer.EncryptionProviderConfig)
		}
	}
	// With nothing left over, recovery changes nothing.
	id := dockerInspect(t, i).ID
	if err := c.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if dockerInspect(t, i).ID != id {
		t.Error("a recovery with nothing to do replaced the container")
	}
}

// A step killed after it replaced the provider file leaves the previous
// one as a backup: Recover keeps the new file when kube-apiserver is ready
// (the planner reloads it), and puts the previous one back when it is not.
func TestRecoverProviderFileFromBackup(t *testing.T) {
	const i = 0
	opts, _ := options(t)
	opts.ReadyTimeout = 45 * time.Second
	c := connect(t, loadCluster(t), opts)
	ctx := testCtx(t)
	n := c.Nodes()[i]
	backup := filepath.Join(filepath.Dir(hostFile(i)), ".encryption.yaml.atrest-prev")
	if err := n.WriteProviderFile(ctx, []byte(identityOnly)); err != nil {
		t.Fatal(err)
	}
	if err := n.SetProviderConfigFlag(ctx, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if err := n.SetProviderConfigFlag(ctx, false); err != nil {
			t.Error(err)
		}
		_ = n.RemoveProviderFile(ctx)
		_ = os.Remove(backup)
		checkPristine(t, c)
	})
	recoverTo := func(want string) {
		t.Helper()
		if err := c.Recover(ctx); err != nil {
			t.Fatalf("recover: %v", err)
		}
		if got, err := os.ReadFile(hostFile(i)); err != nil || string(got) != want {
			t.Errorf("after recovery the file holds %q (%v), want %q", got, err, want)
		}
		if _, err := os.Stat(backup); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the backup is still there: %v", err)
		}
		if s := observe(t, c)[i]; !s.Ready {
			t.Errorf("not ready after recovery: %s", s.NotReady)
		}
	}

	second := identityOnly + "# second\n"
	if err := os.WriteFile(backup, []byte(identityOnly), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := n.WriteProviderFile(ctx, []byte(second)); err != nil {
		t.Fatal(err)
	}
	recoverTo(second)

	if err := os.WriteFile(backup, []byte(second), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := n.WriteProviderFile(ctx, []byte(kmsMissingSocket)); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Docker(ctx, i, "restart", "kube-apiserver"); err != nil {
		t.Fatal(err)
	}
	recoverTo(second)
}

// A holder that loses its lock in the middle of a swap stops there, and
// does not put the old container back: that is the new holder's Recover.
func TestLockLostMidSwapStops(t *testing.T) {
	const i = 1
	opts, _ := options(t)
	var lost atomic.Bool
	opts.Failpoint = func(name string) {
		if name == controlplane.FailpointSwapAfterStop {
			lost.Store(true)
		}
	}
	_, n := swapNode(t, opts, i)
	ctx := testCtx(t)
	fence := controlplane.Fence{Token: 1, Check: func() error {
		if lost.Load() {
			return errors.New("lock lost")
		}
		return nil
	}}
	err := n.SetProviderConfigFlag(controlplane.WithFence(ctx, fence), true)
	t.Log(err)
	if !errors.Is(err, controlplane.ErrFenced) || errors.Is(err, controlplane.ErrRolledBack) {
		t.Fatalf("a swap whose lock was lost: %v", err)
	}
	names := containerNames(t, i)
	slices.Sort(names)
	if !slices.Equal(names, []string{"kube-apiserver", "kube-apiserver-atrest-next"}) {
		t.Errorf("the fenced swap went on: containers %v", names)
	}
}

// swapNode connects with opts and gives node i a provider file its
// kube-apiserver can start with, for a swap to set the flag; cleanup
// recovers what the test left and takes the flag and the file away.
func swapNode(t *testing.T, opts controlplane.Options, i int) (*controlplane.Cluster, *controlplane.Node) {
	t.Helper()
	c := connect(t, loadCluster(t), opts)
	n := c.Nodes()[i]
	if err := n.WriteProviderFile(testCtx(t), []byte(identityOnly)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if err := c.Recover(ctx); err != nil {
			t.Error(err)
		}
		if err := n.SetProviderConfigFlag(ctx, false); err != nil {
			t.Error(err)
		}
		_ = n.RemoveProviderFile(ctx)
		checkPristine(t, c)
	})
	return c, n
}
