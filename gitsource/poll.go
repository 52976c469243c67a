package gitsource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/memory"
)

// stragglerGrace is how long a network call may take to notice that its
// context ended before it is left behind.
const stragglerGrace = 2 * time.Second

// bounded runs one go-git network call within Timeout. go-git honours the
// context only once connected: an SSH server that accepts the connection
// and then says nothing would hold the call, and the poll, forever. When
// the context ends first, the call is left behind, and the polls that
// follow fail fast until it returns: at most one is ever left, and never do
// two write the cache at once.
func (s *Source) bounded(ctx context.Context, op string, call func(context.Context) error) error {
	if s.straggler != nil {
		select {
		case <-s.straggler:
			s.straggler = nil
		default:
			return &Error{Reason: ReasonUnreachable, Err: fmt.Errorf("%s: a connection of an earlier poll still hangs (no answer within %v); not starting another", op, s.cfg.Timeout)}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		err = call(ctx)
	}()
	select {
	case <-done:
		return err
	case <-ctx.Done():
	}
	select {
	case <-done:
		return err
	case <-time.After(min(stragglerGrace, s.cfg.Timeout)):
		s.straggler = done
		return &Error{Reason: ReasonUnreachable, Err: fmt.Errorf("%s: no answer: %w", op, ctx.Err())}
	}
}

// fetchedRef is where the cache keeps the ref it last fetched.
const fetchedRef = plumbing.ReferenceName("refs/atrest/fetched")

// maxTagDepth bounds how many tags of tags are followed to the commit.
const maxTagDepth = 8

// errInconsistent marks an object missing from a cache that should hold
// it: the cache is then wiped and fetched afresh.
var errInconsistent = errors.New("cache is missing objects")

// target is what the ref points to on the remote.
type target struct {
	ref     plumbing.ReferenceName // full name; "" for a pinned commit
	refHash plumbing.Hash          // the commit, or the annotated tag object
}

// session is what one poll needs to talk to the remote.
type session struct {
	auth     transport.AuthMethod
	caBundle []byte
}

func (s *Source) poll(ctx context.Context) (*Revision, bool, error) {
	if !s.pinned.IsZero() {
		return s.pollPinned(ctx)
	}
	sess, done, err := s.session()
	if err != nil {
		return nil, false, err
	}
	defer done()
	t, err := s.resolve(ctx, sess)
	if err != nil {
		return nil, false, err
	}
	if s.current != nil && t.refHash == s.currentRef && t.ref.String() == s.current.Ref {
		s.log.Debug("git source unchanged", "url", s.redacted, "revision", s.current.String())
		return s.current, false, nil
	}
	rev, t, err := s.obtain(ctx, sess, t)
	if err != nil {
		return nil, false, err
	}
	return s.accept(rev, t.refHash), true, nil
}

func (s *Source) accept(rev *Revision, refHash plumbing.Hash) *Revision {
	s.current, s.currentRef = rev, refHash
	return rev
}

// session builds the credentials of one poll.
func (s *Source) session() (*session, func(), error) {
	auth, done, err := s.authMethod()
	if err != nil {
		return nil, nil, &Error{Reason: ReasonConfig, Err: err}
	}
	sess := &session{auth: auth}
	if s.cfg.CAFile != "" {
		if sess.caBundle, err = readCABundle(s.cfg.CAFile); err != nil {
			done()
			return nil, nil, &Error{Reason: ReasonConfig, Err: fmt.Errorf("CAFile: %w", err)}
		}
	}
	return sess, done, nil
}

// list asks the remote for its refs: the ref advertisement, no objects.
func (s *Source) list(ctx context.Context, sess *session) ([]*plumbing.Reference, error) {
	start := time.Now()
	remote := git.NewRemote(memory.NewStorage(), &config.RemoteConfig{Name: "origin", URLs: []string{s.url}})
	var refs []*plumbing.Reference
	err := s.bounded(ctx, "list refs", func(ctx context.Context) (err error) {
		refs, err = remote.ListContext(ctx, &git.ListOptions{
			Auth:            sess.auth,
			CABundle:        sess.caBundle,
			InsecureSkipTLS: s.cfg.InsecureSkipTLSVerify,
			PeelingOption:   git.AppendPeeled,
		})
		return err
	})
	s.stats.LastListDuration = time.Since(start)
	var e *Error
	if errors.As(err, &e) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("list refs: %w", err)
	}
	return refs, nil
}

// resolve finds what the configured ref points to on the remote.
func (s *Source) resolve(ctx context.Context, sess *session) (target, error) {
	refs, err := s.list(ctx, sess)
	if err != nil {
		return target{}, err
	}
	byName := make(map[plumbing.ReferenceName]*plumbing.Reference, len(refs))
	for _, r := range refs {
		byName[r.Name()] = r
	}
	notFound := func(format string, args ...any) error {
		return &Error{Reason: ReasonRefNotFound, Err: fmt.Errorf(format+"%s", append(args, s.refHint(refs))...)}
	}
	ref := s.cfg.Ref
	var candidates []plumbing.ReferenceName
	switch {
	case ref == "HEAD", strings.HasPrefix(ref, "refs/"):
		candidates = []plumbing.ReferenceName{plumbing.ReferenceName(ref)}
	default:
		candidates = []plumbing.ReferenceName{plumbing.NewBranchReferenceName(ref), plumbing.NewTagReferenceName(ref)}
	}
	var found []*plumbing.Reference
	for _, c := range candidates {
		if r, ok := byName[c]; ok {
			found = append(found, r)
		}
	}
	switch len(found) {
	case 0:
		return target{}, notFound("%s is not on the remote", ref)
	case 2:
		return target{}, notFound("%s is ambiguous: the remote has both %s and %s; set Ref to the full name", ref, found[0].Name(), found[1].Name())
	}
	r := found[0]
	// HEAD may come as a symbolic ref to the default branch.
	for i := 0; r.Type() == plumbing.SymbolicReference; i++ {
		next, ok := byName[r.Target()]
		if !ok || i == 5 {
			return target{}, notFound("%s points to %s, which is not on the remote", r.Name(), r.Target())
		}
		r = next
	}
	if r.Type() != plumbing.HashReference {
		return target{}, notFound("%s does not resolve to an object", ref)
	}
	return target{ref: found[0].Name(), refHash: r.Hash()}, nil
}

// refHint lists a few branches and tags of the remote, to help fix a typo.
func (s *Source) refHint(refs []*plumbing.Reference) string {
	var names []string
	for _, r := range refs {
		if (r.Name().IsBranch() || r.Name().IsTag()) && !strings.HasSuffix(r.Name().String(), "^{}") {
			names = append(names, r.Name().Short())
		}
	}
	if len(names) == 0 {
		return ""
	}
	slices.Sort(names)
	more := ""
	if len(names) > 10 {
		names, more = names[:10], ", ..."
	}
	return " (the remote has " + strings.Join(names, ", ") + more + ")"
}

// pollPinned reads a pinned commit: from the cache when it is there (no
// network at all: a commit hash names its content for good), else fetched.
func (s *Source) pollPinned(ctx context.Context) (*Revision, bool, error) {
	if s.current != nil {
		return s.current, false, nil
	}
	repo, err := s.cache.open()
	if err != nil {
		return nil, false, &Error{Reason: ReasonCache, Err: err}
	}
	t := target{refHash: s.pinned}
	if s.cache.has(s.pinned) {
		rev, err := s.load(repo, t)
		if err == nil {
			return s.accept(rev, s.pinned), true, nil
		}
		if !errors.Is(err, errInconsistent) {
			return nil, false, err
		}
	}
	sess, done, err := s.session()
	if err != nil {
		return nil, false, err
	}
	defer done()
	rev, _, err := s.obtain(ctx, sess, t)
	if err != nil {
		return nil, false, err
	}
	return s.accept(rev, s.pinned), true, nil
}

// obtain reads the revision t names from the cache, fetching it first when
// the cache does not hold it, and returns it with t as read (a fetch may
// find the ref moved since it was listed). Any sign of an inconsistent
// cache (an object that should be there and is not, a fetch that fails on
// the local side) wipes the cache and fetches once more from scratch.
func (s *Source) obtain(ctx context.Context, sess *session, t target) (*Revision, target, error) {
	for attempt := 0; ; attempt++ {
		repo, err := s.cache.open()
		if err != nil {
			if attempt == 0 {
				s.resetCache("cannot open", err)
				continue
			}
			return nil, t, &Error{Reason: ReasonCache, Err: err}
		}
		if !s.cache.has(t.refHash) {
			if t, err = s.fetch(ctx, sess, repo, t); err != nil {
				if attempt == 0 && ctx.Err() == nil && mayBeLocal(err) {
					s.resetCache("fetch failed", err)
					continue
				}
				return nil, t, err
			}
			// The fetch may have rebuilt the cache.
			repo = s.cache.repo
		}
		rev, err := s.load(repo, t)
		if errors.Is(err, errInconsistent) && attempt == 0 {
			s.resetCache("inconsistent", err)
			continue
		}
		if errors.Is(err, errInconsistent) {
			return nil, t, &Error{Reason: ReasonCache, Err: err}
		}
		return rev, t, err
	}
}

// mayBeLocal says whether a failed fetch may be the cache's fault, so that
// a fresh cache may help. A definite answer of the remote (credentials,
// host key, certificate, no such repository or ref) is not; anything else
// is, even what looks like a network error: a corrupt pack reads as an
// unexpected EOF too, and the listing just before the fetch succeeded.
func mayBeLocal(err error) bool {
	var e *Error
	if errors.As(err, &e) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	switch classify(err) {
	case ReasonAuthRefused, ReasonHostKeyMismatch, ReasonTLSVerify, ReasonRepositoryNotFound:
		return false
	}
	return true
}

// resetCache wipes the cache; the fetch that follows starts from scratch.
// Without a cause it is routine compaction, not worth a warning.
func (s *Source) resetCache(why string, cause error) {
	s.stats.CacheResets++
	if cause == nil {
		s.log.Info("git source cache rebuilt from scratch", "url", s.redacted, "why", why)
	} else {
		s.log.Warn("git source cache wiped and fetched afresh", "url", s.redacted, "why", why, "error", cause)
	}
	if err := s.cache.wipe(); err != nil {
		s.log.Error("git source cache wipe failed", "url", s.redacted, "error", err)
	}
}

// fetch brings the objects of t into the cache, shallowly, and returns t
// as fetched: the ref may have moved since it was listed.
func (s *Source) fetch(ctx context.Context, sess *session, repo *git.Repository, t target) (target, error) {
	if n, _ := s.cache.packs(); n >= s.cache.maxPacks {
		s.resetCache(fmt.Sprintf("%d packs, one per fetch", n), nil)
		var err error
		if repo, err = s.cache.open(); err != nil {
			return t, &Error{Reason: ReasonCache, Err: err}
		}
	}
	src := t.ref
	if src == "" {
		// A pinned commit: fetch it through a ref that points at it when
		// there is one, else by hash, else everything.
		return s.fetchPinned(ctx, sess, repo, t)
	}
	if err := s.fetchRefspec(ctx, sess, repo, config.RefSpec("+"+src.String()+":"+fetchedRef.String()), 1); err != nil {
		return t, err
	}
	ref, err := repo.Reference(fetchedRef, false)
	if err != nil {
		return t, fmt.Errorf("read %s after fetch: %w", fetchedRef, err)
	}
	t.refHash = ref.Hash()
	return t, nil
}

func (s *Source) fetchPinned(ctx context.Context, sess *session, repo *git.Repository, t target) (target, error) {
	refs, err := s.list(ctx, sess)
	if err != nil {
		return t, err
	}
	for _, r := range refs {
		if r.Type() == plumbing.HashReference && r.Hash() == t.refHash {
			name := strings.TrimSuffix(r.Name().String(), "^{}")
			err := s.fetchRefspec(ctx, sess, repo, config.RefSpec("+"+name+":"+fetchedRef.String()), 1)
			return t, err
		}
	}
	// Not a tip: ask for the commit itself, which servers allow when
	// configured to (uploadpack.allowReachableSHA1InWant; GitHub, GitLab).
	err = s.fetchRefspec(ctx, sess, repo, config.RefSpec(t.refHash.String()+":"+fetchedRef.String()), 1)
	if !errors.Is(err, git.ErrExactSHA1NotSupported) {
		return t, err
	}
	// The last resort: the whole history of every branch and tag, once; a
	// pinned commit stays in the cache for good.
	s.log.Info("git server does not serve commits by hash: fetching all branches and tags to find the pinned commit",
		"url", s.redacted, "commit", t.refHash.String())
	if err := s.cache.wipe(); err != nil {
		return t, &Error{Reason: ReasonCache, Err: err}
	}
	if repo, err = s.cache.open(); err != nil {
		return t, &Error{Reason: ReasonCache, Err: err}
	}
	if err := s.fetchRefspec(ctx, sess, repo, "+refs/heads/*:refs/atrest/heads/*", 0, "+refs/tags/*:refs/atrest/tags/*"); err != nil {
		return t, err
	}
	if !s.cache.has(t.refHash) {
		return t, &Error{Reason: ReasonRefNotFound, Err: fmt.Errorf("commit %s is on no branch or tag of the remote", t.refHash)}
	}
	return t, nil
}

func (s *Source) fetchRefspec(ctx context.Context, sess *session, repo *git.Repository, spec config.RefSpec, depth int, more ...config.RefSpec) error {
	start := time.Now()
	_, before := s.cache.packs()
	remote := git.NewRemote(repo.Storer, &config.RemoteConfig{Name: "origin", URLs: []string{s.url}})
	err := s.bounded(ctx, "fetch "+spec.Src(), func(ctx context.Context) error {
		return remote.FetchContext(ctx, &git.FetchOptions{
			RefSpecs:        append([]config.RefSpec{spec}, more...),
			Depth:           depth,
			Auth:            sess.auth,
			CABundle:        sess.caBundle,
			InsecureSkipTLS: s.cfg.InsecureSkipTLSVerify,
			Tags:            git.NoTags,
			Force:           true,
		})
	})
	if errors.Is(err, git.ErrExactSHA1NotSupported) {
		// Refused before anything was asked of the server.
		return err
	}
	s.stats.Fetches++
	s.stats.LastFetchDuration = time.Since(start)
	if _, after := s.cache.packs(); after > before {
		s.stats.BytesFetched += after - before
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		var nomatch git.NoMatchingRefSpecError
		if errors.As(err, &nomatch) {
			return &Error{Reason: ReasonRefNotFound, Err: fmt.Errorf("fetch %s: %w", spec.Src(), err)}
		}
		return fmt.Errorf("fetch %s: %w", spec.Src(), err)
	}
	return nil
}

// load reads the revision t names from the cache: peels tags to the
// commit, verifies signatures when configured, and reads the files.
func (s *Source) load(repo *git.Repository, t target) (*Revision, error) {
	rev := &Revision{Ref: t.ref.String()}
	if t.ref.IsTag() {
		rev.Tag = t.ref.Short()
	}
	h := t.refHash
	for depth := 0; ; depth++ {
		raw, typ, err := rawObject(repo, h)
		if err != nil {
			return nil, err
		}
		if typ == plumbing.CommitObject {
			break
		}
		if typ != plumbing.TagObject || depth == maxTagDepth {
			return nil, &Error{Reason: ReasonRefNotFound, Err: fmt.Errorf("%s points to a %s, not a commit", s.cfg.Ref, typ)}
		}
		tag, err := repo.TagObject(h)
		if err != nil {
			return nil, missing(err)
		}
		if s.verifier.enabled() && depth == 0 && t.ref.IsTag() && tag.Name != t.ref.Short() {
			// A signature vouches for the name it signs: a tag signed as
			// one release, put under another ref, is not that release.
			return nil, signatureError(fmt.Errorf("tag %s refused: its tag object is signed as %q, not %q: a signed tag moved under another name", t.ref.Short(), tag.Name, t.ref.Short()))
		}
		if s.verifier.enabled() {
			payload, sig := splitTagSignature(raw)
			who, err := s.verifier.verify("tag "+tag.Name, h.String(), payload, sig, tag.Tagger.When)
			if err != nil {
				return nil, signatureError(err)
			}
			if rev.TagSigner == "" {
				rev.TagSigner = who
			}
		}
		h = tag.Target
	}
	commit, err := repo.CommitObject(h)
	if err != nil {
		return nil, missing(err)
	}
	rev.Commit = commit.Hash.String()
	rev.Time = commit.Committer.When
	rev.Subject, _, _ = strings.Cut(strings.TrimSpace(commit.Message), "\n")
	if s.verifier.enabled() {
		raw, _, err := rawObject(repo, h)
		if err != nil {
			return nil, err
		}
		payload, sig := splitCommitSignature(raw)
		if rev.Signer, err = s.verifier.verify("commit", rev.Commit, payload, sig, commit.Committer.When); err != nil {
			return nil, signatureError(err)
		}
	}
	files, err := s.readFiles(repo, commit)
	if err != nil {
		return nil, err
	}
	rev.Files = files
	return rev, nil
}

func signatureError(err error) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{Reason: ReasonSignature, Err: err}
}

// missing marks a failure to read an object the cache should hold (the
// commit or tag is there, so what they point to should be): "object not
// found", a pack deleted under go-git, a corrupt object. The cache is then
// rebuilt rather than trusted.
func missing(err error) error {
	return fmt.Errorf("%w: %w", errInconsistent, err)
}

// rawObject returns an object's bytes as git hashed them.
func rawObject(repo *git.Repository, h plumbing.Hash) ([]byte, plumbing.ObjectType, error) {
	obj, err := repo.Storer.EncodedObject(plumbing.AnyObject, h)
	if err != nil {
		return nil, 0, missing(err)
	}
	r, err := obj.Reader()
	if err != nil {
		return nil, 0, missing(err)
	}
	defer r.Close()
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, 0, missing(err)
	}
	return raw, obj.Type(), nil
}

// readFiles reads the configured files under Path at the commit.
func (s *Source) readFiles(repo *git.Repository, commit *object.Commit) (map[string][]byte, error) {
	at := commit.Hash.String()
	notFound := func(format string, args ...any) error {
		return &Error{Reason: ReasonFileNotFound, Err: fmt.Errorf(format, args...)}
	}
	tree, err := commit.Tree()
	if err != nil {
		return nil, missing(err)
	}
	if s.cfg.Path != "." {
		tree, err = tree.Tree(s.cfg.Path)
		switch {
		case errors.Is(err, object.ErrDirectoryNotFound), errors.Is(err, object.ErrEntryNotFound):
			return nil, notFound("folder %s is not at commit %s", s.cfg.Path, at)
		case err != nil:
			return nil, missing(err)
		}
	}
	files := map[string][]byte{}
	read := func(name string, required bool) error {
		full := path.Join(s.cfg.Path, name)
		entry, err := tree.FindEntry(name)
		switch {
		case errors.Is(err, object.ErrEntryNotFound), errors.Is(err, object.ErrDirectoryNotFound):
			if required {
				return notFound("%s is not at commit %s", full, at)
			}
			return nil
		case err != nil:
			return missing(err)
		}
		if entry.Mode != filemode.Regular && entry.Mode != filemode.Executable && entry.Mode != filemode.Deprecated {
			kind := map[filemode.FileMode]string{filemode.Dir: "a folder", filemode.Symlink: "a symlink", filemode.Submodule: "a submodule"}[entry.Mode]
			if kind == "" {
				kind = "not a regular file (mode " + entry.Mode.String() + ")"
			}
			return &Error{Reason: ReasonNotAFile, Err: fmt.Errorf("%s at commit %s is %s: it must be a regular file", full, at, kind)}
		}
		blob, err := repo.BlobObject(entry.Hash)
		if err != nil {
			return missing(err)
		}
		if blob.Size > s.cfg.MaxFileSize {
			return &Error{Reason: ReasonFileTooLarge, Err: fmt.Errorf("%s at commit %s is %d bytes, over the limit of %d (MaxFileSize)", full, at, blob.Size, s.cfg.MaxFileSize)}
		}
		r, err := blob.Reader()
		if err != nil {
			return missing(err)
		}
		defer r.Close()
		data, err := io.ReadAll(io.LimitReader(r, s.cfg.MaxFileSize+1))
		if err != nil {
			return missing(err)
		}
		if int64(len(data)) > s.cfg.MaxFileSize {
			return &Error{Reason: ReasonFileTooLarge, Err: fmt.Errorf("%s at commit %s is over the limit of %d bytes (MaxFileSize)", full, at, s.cfg.MaxFileSize)}
		}
		files[name] = data
		return nil
	}
	for _, f := range s.cfg.Files {
		if err := read(f, true); err != nil {
			return nil, err
		}
	}
	for _, f := range s.cfg.OptionalFiles {
		if err := read(f, false); err != nil {
			return nil, err
		}
	}
	return files, nil
}
