//go:build sandbox

package keystore

import (
	"strings"
	"testing"
	"time"

	"github.com/atrest-io/atrest/internal/leaktest"
)

func TestDaemonState(t *testing.T) {
	w := leaktest.New(t)
	s := openStore(t, baseConfig(t, w))
	ctx := testCtx(t)

	if got, err := s.DaemonStates(ctx); err != nil || len(got) != 0 {
		t.Fatalf("DaemonStates before any daemon = %v, %v; want none", got, err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	a := DaemonState{Instance: "atrest-7f9c-x2", Heartbeat: now, Interval: time.Minute, Revision: "abc", Result: "in-sync", NextRotation: now.Add(time.Hour)}
	b := DaemonState{Instance: "pod/../../keyring", Heartbeat: now.Add(-time.Hour), Interval: time.Minute, Result: "failed", Error: "boom", Failures: 3}
	for _, st := range []DaemonState{a, b, a} { // a twice: the second write replaces the first
		if err := s.PutDaemonState(ctx, st); err != nil {
			t.Fatalf("PutDaemonState(%s): %v", st.Instance, w.Err(err))
		}
	}
	got, err := s.DaemonStates(ctx)
	if err != nil {
		t.Fatal(w.Err(err))
	}
	if len(got) != 2 {
		t.Fatalf("DaemonStates = %+v, want 2", got)
	}
	byName := map[string]DaemonState{}
	for _, st := range got {
		byName[st.Instance] = st
	}
	if st := byName[a.Instance]; st.Revision != "abc" || !st.NextRotation.Equal(a.NextRotation) || st.Stale(now) {
		t.Fatalf("state of %s = %+v", a.Instance, st)
	}
	if st := byName[b.Instance]; st.Failures != 3 || !st.Stale(now) {
		t.Fatalf("state of %s = %+v, want 3 failures and stale", b.Instance, st)
	}
	// The path-like instance name stayed inside daemons/: the keyring is untouched.
	if kr := mustKeyring(t, w, s); len(kr.Keys) != 0 {
		t.Fatalf("keyring changed: %+v", kr)
	}
	if md := metadata(t, s, "daemons/pod-..-..-keyring"); md == nil {
		t.Fatal("the cleaned instance name is not where expected")
	}
	if err := s.ForgetDaemon(ctx, b.Instance); err != nil {
		t.Fatal(w.Err(err))
	}
	if got, _ := s.DaemonStates(ctx); len(got) != 1 || got[0].Instance != a.Instance {
		t.Fatalf("after ForgetDaemon: %+v", got)
	}
	if err := s.PutDaemonState(ctx, DaemonState{Instance: "..."}); err == nil || !strings.Contains(err.Error(), "instance name") {
		t.Fatalf("an empty cleaned name: %v", err)
	}
}
