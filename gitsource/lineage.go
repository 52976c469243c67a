package gitsource

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// Ledger keeps the revision in force where whoever pushes to the
// repository cannot reach it (keystore.Store, in Vault). A signature proves
// who wrote a commit, not that it is the newest: without a ledger, a force
// push back to an older signed commit (the one from before encryption was
// enabled, or one naming a key since retired as leaked) would be obeyed.
type Ledger interface {
	// RevisionInForce returns the commit recorded last and its committer
	// time; "" when none is recorded yet.
	RevisionInForce(ctx context.Context) (commit string, committed time.Time, err error)
	// RecordRevision records commit, of ref, as the revision in force.
	RecordRevision(ctx context.Context, commit, ref string, committed time.Time) error
}

// lineageDepths are the depths the cache is deepened to, in turn, when
// the history it holds does not connect a new revision to the one in
// force. The first covers a push of a few commits at a fraction of the
// cost of the second; beyond the last, atrest refuses rather than fetch
// the whole history of a large repository, and the operator allows the
// revision by name (git.allowRevision).
var lineageDepths = []int{64, 4096}

// CheckLineage says whether rev may follow the revision in force that l
// records: it must be that revision, descend from it, be the pinned commit
// of Config.Ref, or be Config.AllowRevision. Anything else is refused with
// ReasonNotDescendant: a rollback or replay, or a history rewritten by a
// force push. It records nothing; see Admit. Its errors are *Error.
func (s *Source) CheckLineage(ctx context.Context, rev *Revision, l Ledger) error {
	_, err := s.lineage(ctx, rev, l)
	return err
}

// Admit checks rev's lineage (CheckLineage), then calls accept, then
// records rev as the revision in force. A revision refused by accept (a
// cluster.yml that does not parse) is not recorded: it never was in force.
func (s *Source) Admit(ctx context.Context, rev *Revision, l Ledger, accept func() error) error {
	prev, err := s.lineage(ctx, rev, l)
	if err != nil {
		return err
	}
	if accept != nil {
		if err := accept(); err != nil {
			return err
		}
	}
	if prev == rev.Commit {
		return nil
	}
	if err := l.RecordRevision(ctx, rev.Commit, rev.Ref, rev.Time); err != nil {
		return s.wrap(&Error{Reason: ReasonLedger, Err: fmt.Errorf("record revision %s as the one in force: %w", rev.Commit, err)})
	}
	return nil
}

// lineage checks rev against the ledger and returns the commit in force.
func (s *Source) lineage(ctx context.Context, rev *Revision, l Ledger) (string, error) {
	prev, prevTime, err := l.RevisionInForce(ctx)
	if err != nil {
		return "", s.wrap(&Error{Reason: ReasonLedger, Err: fmt.Errorf("read the revision in force: %w", err)})
	}
	switch {
	case prev == "":
		s.log.Info("no revision in force is recorded yet: this one is the first", "revision", rev.String())
		return prev, nil
	case prev == rev.Commit:
		return prev, nil
	case !s.pinned.IsZero() && s.pinned.String() == rev.Commit:
		// The operator named the commit in the settings: that is the
		// choice a rollback needs, made where a committer cannot make it.
		s.log.Info("the pinned commit replaces the revision in force", "revision", rev.String(), "was", prev)
		return prev, nil
	case s.cfg.AllowRevision != "" && s.cfg.AllowRevision == rev.Commit:
		s.log.Warn("accepting a revision that may not descend from the one in force, as git.allowRevision says: remove the setting once it is in force",
			"revision", rev.String(), "was", prev)
		return prev, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ok, err := s.descends(ctx, rev, plumbing.NewHash(prev))
	if err != nil {
		return prev, s.wrap(err)
	}
	if !ok {
		return prev, s.wrap(&Error{Reason: ReasonNotDescendant, Err: fmt.Errorf(
			"revision %s (committed %s) does not descend from %s (committed %s), the revision in force recorded in Vault: "+
				"a force push, a rollback or a replay of older history; nothing changes. "+
				"If this history is meant, set git.allowRevision to %s for this one revision",
			rev.Commit, rev.Time.UTC().Format(time.RFC3339), prev, prevTime.UTC().Format(time.RFC3339), rev.Commit)})
	}
	return prev, nil
}

// descends says whether ancestor is an ancestor of rev's commit, deepening
// the cache's shallow history as far as lineageDepths allows.
func (s *Source) descends(ctx context.Context, rev *Revision, ancestor plumbing.Hash) (bool, error) {
	head := plumbing.NewHash(rev.Commit)
	repo, err := s.cache.open()
	if err != nil {
		return false, &Error{Reason: ReasonCache, Err: err}
	}
	found, complete, err := reaches(repo, head, ancestor)
	if err != nil || found || complete {
		return found, err
	}
	if rev.Ref == "" {
		return false, &Error{Reason: ReasonNotDescendant, Err: fmt.Errorf("commit %s has no ref to deepen its history through", head)}
	}
	sess, done, err := s.session()
	if err != nil {
		return false, err
	}
	defer done()
	for _, depth := range lineageDepths {
		spec := config.RefSpec("+" + rev.Ref + ":" + fetchedRef.String())
		if err := s.fetchRefspec(ctx, sess, s.cache.repo, spec, depth); err != nil {
			return false, err
		}
		if repo = s.cache.repo; repo == nil {
			return false, &Error{Reason: ReasonCache, Err: errors.New("cache closed while deepening")}
		}
		if repo.Storer.HasEncodedObject(head) != nil {
			return false, &Error{Reason: ReasonCache, Err: fmt.Errorf("commit %s left the cache while deepening", head)}
		}
		if found, complete, err = reaches(repo, head, ancestor); err != nil || found || complete {
			return found, err
		}
		if moved, _ := repo.Reference(fetchedRef, false); moved != nil && !s.currentRef.IsZero() && moved.Hash() != s.currentRef {
			// The deepened history is the new tip's: this revision is
			// checked again when the next poll reads that tip.
			return false, &Error{Reason: ReasonRemote, Err: fmt.Errorf("%s moved while its history was read; the next poll checks again", rev.Ref)}
		}
	}
	s.log.Warn("the revision in force is not within the history read", "revision", rev.String(), "in_force", ancestor.String(), "depth", lineageDepths[len(lineageDepths)-1])
	return false, nil
}

// reaches walks the history of head in repo looking for ancestor. complete
// is true when the walk ended at root commits only, so that not finding
// ancestor is a definite answer; false when it met a commit whose parents
// the (shallow) cache does not hold.
func reaches(repo *git.Repository, head, ancestor plumbing.Hash) (found, complete bool, err error) {
	if head == ancestor {
		return true, true, nil
	}
	seen := map[plumbing.Hash]bool{head: true}
	queue := []plumbing.Hash{head}
	complete = true
	for len(queue) > 0 {
		h := queue[0]
		queue = queue[1:]
		c, err := object.GetCommit(repo.Storer, h)
		if errors.Is(err, plumbing.ErrObjectNotFound) {
			complete = false
			continue
		}
		if err != nil {
			return false, false, &Error{Reason: ReasonCache, Err: fmt.Errorf("read commit %s: %w", h, err)}
		}
		for _, p := range c.ParentHashes {
			if p == ancestor {
				return true, true, nil
			}
			if !seen[p] {
				seen[p] = true
				queue = append(queue, p)
			}
		}
	}
	return false, complete, nil
}
