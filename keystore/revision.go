package keystore

import (
	"context"
	"time"
)

const revisionRel = "revision"

// revisionMaxVersions keeps the recent history of revisions in force, for
// an operator asking what ran when (`vault kv get -version=N`).
const revisionMaxVersions = 50

// revisionDoc is the Git revision in force: the commit atrest last
// accepted as the desired state. It lives in Vault, beside the keys,
// because whoever can push to the repository must not be able to move it
// back (gitsource.Ledger).
type revisionDoc struct {
	Schema    int       `json:"schema"`
	Commit    string    `json:"commit"`
	Ref       string    `json:"ref,omitempty"`
	Committed time.Time `json:"committed"`
	Accepted  time.Time `json:"accepted"`
}

// RevisionInForce returns the commit recorded by RecordRevision and its
// committer time; "" when none is recorded.
func (s *Store) RevisionInForce(ctx context.Context) (string, time.Time, error) {
	d, _, err := s.readRevision(ctx, "read the revision in force")
	if err != nil {
		return "", time.Time{}, err
	}
	return d.Commit, d.Committed, nil
}

func (s *Store) readRevision(ctx context.Context, op string) (*revisionDoc, int, error) {
	d := &revisionDoc{}
	v, err := s.readDoc(ctx, op, revisionRel, d)
	if err != nil {
		return nil, 0, err
	}
	return d, v, nil
}

// RecordRevision records commit (of ref, committed at committed) as the
// revision in force, with check-and-set: a concurrent record is read again
// and overwritten, because the caller has just checked that commit
// descends from what it read, and the newest check wins.
func (s *Store) RecordRevision(ctx context.Context, commit, ref string, committed time.Time) error {
	recorded := false
	err := updateDoc(ctx, s, "record the revision in force", revisionRel, revisionMaxVersions, s.readRevision, func(d *revisionDoc) (bool, error) {
		if recorded = d.Commit != commit; !recorded {
			return false, nil
		}
		*d = revisionDoc{Schema: 1, Commit: commit, Ref: ref, Committed: committed.UTC(), Accepted: time.Now().UTC()}
		return true, nil
	})
	if err == nil && recorded {
		s.log.Info("revision in force recorded", "revision", commit, "ref", ref)
	}
	return err
}
