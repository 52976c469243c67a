//go:build sandbox

package controlplane_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
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
