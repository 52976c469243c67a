//go:build sandbox

package keystore

import (
	"testing"
	"time"

	"github.com/atrest-io/atrest/internal/leaktest"
)

// TestRevisionInForce records revisions on a real Vault: nothing at first,
// then the newest record, seen by a second store as by the first, with
// check-and-set on the document so that a plain `vault kv put` cannot
// move it.
func TestRevisionInForce(t *testing.T) {
	w := leaktest.New(t)
	cfg := baseConfig(t, w)
	s := openStore(t, cfg)
	ctx := testCtx(t)
	if c, at, err := s.RevisionInForce(ctx); err != nil || c != "" || !at.IsZero() {
		t.Fatalf("before any record: %q %v %v", c, at, err)
	}
	first := time.Date(2026, 11, 1, 3, 0, 0, 0, time.UTC)
	if err := s.RecordRevision(ctx, "1111111111111111111111111111111111111111", "refs/heads/main", first); err != nil {
		t.Fatal(err)
	}
	second := first.Add(time.Hour)
	if err := s.RecordRevision(ctx, "2222222222222222222222222222222222222222", "refs/heads/main", second); err != nil {
		t.Fatal(err)
	}
	// The same again writes nothing.
	if err := s.RecordRevision(ctx, "2222222222222222222222222222222222222222", "refs/heads/main", second); err != nil {
		t.Fatal(err)
	}
	other := openStore(t, cfg)
	c, at, err := other.RevisionInForce(ctx)
	if err != nil || c != "2222222222222222222222222222222222222222" || !at.Equal(second) {
		t.Fatalf("a second store reads %q %v %v", c, at, err)
	}
	_, v, err := other.readRevision(ctx, "test")
	if err != nil || v != 2 {
		t.Fatalf("the document has version %d (%v), want 2: one write per new revision", v, err)
	}
	// Without check-and-set, Vault refuses the write.
	if _, err := s.client.Logical().WriteWithContext(ctx, s.path("data", revisionRel), map[string]any{"data": map[string]any{"commit": "3333333333333333333333333333333333333333"}}); err == nil {
		t.Fatal("a write without check-and-set moved the revision in force")
	}
}
