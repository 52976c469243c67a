package reconciler

import (
	"slices"
	"testing"
)

func TestPageTracker(t *testing.T) {
	var got []string
	pt := newPageTracker(func(cont string) { got = append(got, cont) })
	p0 := pt.add(2, "t1")
	p1 := pt.add(1, "t2")
	p2 := pt.add(2, "t3")
	pt.done(p1, true) // out of order: page 0 still pending
	if len(got) != 0 {
		t.Fatalf("checkpoint %v before the first page is done", got)
	}
	pt.done(p0, true)
	pt.done(p0, true) // pages 0 and 1 done: the token after page 1
	if !slices.Equal(got, []string{"t2"}) {
		t.Fatalf("checkpoints %v, want [t2]", got)
	}
	pt.done(p2, false) // a failed object holds its page back for good
	pt.done(p2, true)
	p3 := pt.add(0, "t4")
	_ = p3
	if !slices.Equal(got, []string{"t2"}) {
		t.Fatalf("checkpoints %v past a failed object", got)
	}
	// The list starts over: what was listed before no longer counts.
	pt.restart()
	q0 := pt.add(1, "u1")
	pt.done(p2, true)
	pt.done(q0, true)
	if !slices.Equal(got, []string{"t2", "u1"}) {
		t.Fatalf("checkpoints %v after a restart, want [t2 u1]", got)
	}
}
