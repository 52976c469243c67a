package gitsource

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// memLedger is the ledger's bookkeeping in memory; keystore's sandbox
// tests prove the Vault one.
type memLedger struct {
	commit, ref string
	committed   time.Time
	records     int
}

func (l *memLedger) RevisionInForce(context.Context) (string, time.Time, error) {
	return l.commit, l.committed, nil
}

func (l *memLedger) RecordRevision(_ context.Context, commit, ref string, committed time.Time) error {
	l.commit, l.ref, l.committed = commit, ref, committed
	l.records++
	return nil
}

// TestLineageRefusesRollback plays the attacker who can push signed
// history but not write Vault: a force push back to an older signed
// commit, and a rewritten history, are refused with the setting that
// allows them named; descendants are accepted however far the cache must
// deepen, from a warm cache and from an empty one.
func TestLineageRefusesRollback(t *testing.T) {
	k := newSigners(t)
	w := newLocalRepo(t, map[string]string{"cluster.yml": clusterV1})
	plain := w.sshSignedCommit("encryption off", map[string]string{"cluster.yml": "nodes: []\n# plain\n"}, k.alice)
	w.push("--force", "main")
	cfg := Config{URL: w.bare, Ref: "main", CacheDir: t.TempDir(), AllowedSignersFile: k.allowed}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l := &memLedger{}
	admit := func(s *Source) (*Revision, error) {
		t.Helper()
		rev, _ := mustPoll(t, s)
		return rev, s.Admit(testCtx(t), rev, l, nil)
	}
	if _, err := admit(s); err != nil || l.commit != plain {
		t.Fatalf("first revision: %v, ledger %+v", err, l)
	}

	// Enabled, then 70 more commits in one push: beyond the first
	// deepening.
	enabled := w.sshSignedCommit("encryption on", map[string]string{"cluster.yml": "nodes: []\n# enabled\n"}, k.alice)
	w.push("main")
	if _, err := admit(s); err != nil || l.commit != enabled {
		t.Fatalf("a child: %v, ledger %+v", err, l)
	}
	for i := range 70 {
		w.commit(fmt.Sprintf("step %d", i), map[string]string{"cluster.yml": fmt.Sprintf("nodes: []\n# %d\n", i)})
	}
	tip := w.sshSignedCommit("tip", map[string]string{"cluster.yml": "nodes: []\n# tip\n"}, k.alice)
	w.push("main")
	if _, err := admit(s); err != nil || l.commit != tip {
		t.Fatalf("71 commits ahead: %v, ledger %+v", err, l)
	}

	// The attack: the ref forced back to the signed commit from before
	// encryption was enabled.
	w.push("--force", plain+":main")
	records := l.records
	rev, err := admit(s)
	if rev.Commit != plain || rev.Signer == "" {
		t.Fatalf("the rollback target should poll as a validly signed revision: %+v", rev)
	}
	if ReasonOf(err) != ReasonNotDescendant || !strings.Contains(err.Error(), "git.allowRevision") || !strings.Contains(err.Error(), tip) {
		t.Fatalf("rollback to %s: %v, want %s naming the revision in force and git.allowRevision", plain, err, ReasonNotDescendant)
	}
	if l.commit != tip || l.records != records {
		t.Fatalf("a refused revision was recorded: %+v", l)
	}
	if err := s.CheckLineage(testCtx(t), rev, l); ReasonOf(err) != ReasonNotDescendant {
		t.Fatalf("CheckLineage of the rollback: %v", err)
	}

	// A history rewritten from an old commit: refused too, from an empty
	// cache (a restarted pod) as from a warm one.
	w.git("reset", "--quiet", "--hard", enabled)
	rewritten := w.sshSignedCommit("rewritten", map[string]string{"cluster.yml": "nodes: []\n# rewritten\n"}, k.alice)
	w.push("--force", "main")
	if _, err := admit(s); ReasonOf(err) != ReasonNotDescendant {
		t.Fatalf("rewritten history: %v", err)
	}
	cold, err := New(Config{URL: w.bare, Ref: "main", CacheDir: t.TempDir(), AllowedSignersFile: k.allowed})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admit(cold); ReasonOf(err) != ReasonNotDescendant {
		t.Fatalf("rewritten history from an empty cache: %v", err)
	}

	// The operator allows the one revision by name; it becomes the
	// revision in force, and its descendants follow.
	cfg.AllowRevision, cfg.CacheDir = strings.ToUpper(rewritten), t.TempDir()
	allowed, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admit(allowed); err != nil || l.commit != rewritten {
		t.Fatalf("allowed by git.allowRevision: %v, ledger %+v", err, l)
	}
	for i := range 3 {
		w.commit(fmt.Sprintf("after %d", i), nil)
	}
	next := w.sshSignedCommit("next", map[string]string{"cluster.yml": "nodes: []\n# next\n"}, k.alice)
	w.push("main")
	fresh, err := New(Config{URL: w.bare, Ref: "main", CacheDir: t.TempDir(), AllowedSignersFile: k.allowed})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admit(fresh); err != nil || l.commit != next {
		t.Fatalf("a descendant from an empty cache: %v, ledger %+v", err, l)
	}

	// A revision accept refuses is not recorded.
	w.sshSignedCommit("bad", nil, k.alice)
	w.push("main")
	rev, _ = mustPoll(t, fresh)
	if err := fresh.Admit(testCtx(t), rev, l, func() error { return fmt.Errorf("cluster.yml does not parse") }); err == nil || l.commit != next {
		t.Fatalf("a revision accept refused: %v, ledger %+v", err, l)
	}
}

func TestAllowRevisionIsAFullHash(t *testing.T) {
	_, err := New(Config{URL: t.TempDir(), CacheDir: t.TempDir(), AllowRevision: "main"})
	if err == nil || !strings.Contains(err.Error(), "AllowRevision") {
		t.Fatalf("AllowRevision main: %v", err)
	}
}
