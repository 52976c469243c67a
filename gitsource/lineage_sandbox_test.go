//go:build sandbox

package gitsource

import (
	"fmt"
	"testing"
)

// TestSandboxLineageDeepens checks lineage against real git servers (git
// upload-pack over SSH, git http-backend over smart HTTP): a push of 70
// commits on top of the revision in force is accepted from an empty
// cache, which takes deepening the shallow clone past its first step, and
// main forced back to the revision before is refused.
func TestSandboxLineageDeepens(t *testing.T) {
	w := sandboxWork(t)
	inForce := w.commit("in force", map[string]string{"atrest.yaml": "snapshots:\n  retention: 3\n"})
	for i := range 69 {
		w.commit(fmt.Sprintf("step %d", i), nil)
	}
	tip := w.commit("tip", map[string]string{"atrest.yaml": "snapshots:\n  retention: 4\n"})
	w.push("HEAD:main")
	t.Cleanup(func() { w.push("--force", tip+":main") })
	for name, cfg := range map[string]Config{"ssh": sshConfig(t, "main"), "http": httpConfig(t, "main")} {
		t.Run(name, func(t *testing.T) {
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			l := &memLedger{commit: inForce}
			rev, _ := mustPoll(t, s)
			if err := s.Admit(testCtx(t), rev, l, nil); err != nil || l.commit != tip {
				t.Fatalf("70 commits ahead of the revision in force: %v, ledger %+v", err, l)
			}
			// The tip at depth 1, then deepened to 64 (not far enough) and
			// to 4096.
			if f := s.Stats().Fetches; f != 3 {
				t.Errorf("%d fetches, want 3: the poll's and two deepenings", f)
			}
			w.push("--force", inForce+":main")
			defer w.push("--force", tip+":main")
			back, _ := mustPoll(t, s)
			if err := s.CheckLineage(testCtx(t), back, l); ReasonOf(err) != ReasonNotDescendant {
				t.Fatalf("main forced back to %s: %v, want %s", inForce, err, ReasonNotDescendant)
			}
		})
	}
}
