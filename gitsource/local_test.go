package gitsource

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const clusterV1 = "nodes: []\n# v1\n"

// TestLocalFollowsBranch follows main of a local repository through new
// commits, an unchanged poll, a force push, and a cache deleted under it.
func TestLocalFollowsBranch(t *testing.T) {
	w := newLocalRepo(t, map[string]string{"cluster.yml": clusterV1})
	first := w.git("rev-parse", "HEAD")
	var logs logBuffer
	cacheDir := t.TempDir()
	s, err := New(Config{URL: w.bare, Ref: "main", CacheDir: cacheDir, Logger: newLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}

	rev, changed := mustPoll(t, s)
	if !changed || rev.Commit != first || rev.Ref != "refs/heads/main" || rev.Tag != "" || rev.Subject != "initial" {
		t.Fatalf("first poll: changed %v, %+v", changed, rev)
	}
	if got := string(rev.Files["cluster.yml"]); got != clusterV1 {
		t.Errorf("cluster.yml = %q", got)
	}
	if _, ok := rev.Files["atrest.yaml"]; ok {
		t.Error("absent optional atrest.yaml has an entry")
	}
	if st := s.Stats(); st.Fetches != 1 || st.Polls != 1 || st.Changes != 1 || st.BytesFetched <= 0 {
		t.Errorf("stats after first poll: %+v", st)
	}

	// Unchanged: the same revision, no fetch.
	again, changed := mustPoll(t, s)
	if changed || again != rev {
		t.Fatalf("unchanged poll: changed %v, %v", changed, again)
	}
	if st := s.Stats(); st.Fetches != 1 {
		t.Errorf("an unchanged poll fetched: %+v", st)
	}

	// A new commit with both files.
	second := w.commit("add policy", map[string]string{"cluster.yml": "nodes: []\n# v2\n", "atrest.yaml": "rotate: monthly\n"})
	w.push("main")
	rev, changed = mustPoll(t, s)
	if !changed || rev.Commit != second || string(rev.Files["atrest.yaml"]) != "rotate: monthly\n" {
		t.Fatalf("after a new commit: changed %v, %+v", changed, rev)
	}

	// A force push to a commit that does not descend from the one seen.
	w.git("reset", "--quiet", "--hard", first)
	rewritten := w.commit("rewritten", map[string]string{"cluster.yml": "nodes: []\n# rewritten\n"})
	w.push("--force", "main")
	rev, changed = mustPoll(t, s)
	if !changed || rev.Commit != rewritten || string(rev.Files["cluster.yml"]) != "nodes: []\n# rewritten\n" {
		t.Fatalf("after a force push: changed %v, %+v", changed, rev)
	}

	// Back to a commit the cache holds already: no fetch.
	fetches := s.Stats().Fetches
	w.git("push", "--quiet", "--force", "origin", second+":main")
	rev, changed = mustPoll(t, s)
	if !changed || rev.Commit != second {
		t.Fatalf("back to %s: changed %v, %+v", second, changed, rev)
	}
	if got := s.Stats().Fetches; got != fetches {
		t.Errorf("going back to a cached commit fetched (%d -> %d)", fetches, got)
	}

	// A commit that shares cluster.yml with the one before.
	w.git("reset", "--quiet", "--hard", second)
	third := w.commit("third", map[string]string{"atrest.yaml": "rotate: weekly\n"})
	w.push("main")
	rev, changed = mustPoll(t, s)
	if !changed || rev.Commit != third {
		t.Fatalf("third: changed %v, %+v", changed, rev)
	}

	// A new Source on the same cache (a restart) reads what the cache has
	// without fetching it again.
	restart := func() *Source {
		s, err := New(Config{URL: w.bare, Ref: "main", CacheDir: cacheDir, Logger: newLogger(&logs)})
		if err != nil {
			t.Fatal(err)
		}
		rev, changed := mustPoll(t, s)
		if !changed || rev.Commit != third || string(rev.Files["cluster.yml"]) != "nodes: []\n# v2\n" || string(rev.Files["atrest.yaml"]) != "rotate: weekly\n" {
			t.Fatalf("after a restart: changed %v, %+v", changed, rev)
		}
		return s
	}
	if st := restart().Stats(); st.Fetches != 0 || st.CacheResets != 0 {
		t.Errorf("restart on a warm cache: %+v", st)
	}

	// The cache is damaged while the source is down: every pack is
	// overwritten with zeros. The restarted source finds the damage when it
	// reads cluster.yml, rebuilds the cache and reads the right revision.
	packs, _ := filepath.Glob(filepath.Join(cacheDir, "repo.git", "objects", "pack", "*.pack"))
	if len(packs) == 0 {
		t.Fatal("no packs in the cache")
	}
	for _, p := range packs {
		info, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, info.Size()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if st := restart().Stats(); st.Fetches != 1 || st.CacheResets != 1 || !strings.Contains(logs.String(), "cache wiped and fetched afresh") {
		t.Errorf("the damaged cache was not rebuilt once: %+v\n%s", st, logs.String())
	}
}

// TestLocalRefs covers tag refs, pinned commits, HEAD, a folder inside the
// repository, and refs that are not there.
func TestLocalRefs(t *testing.T) {
	w := newLocalRepo(t, map[string]string{"clusters/prod/cluster.yml": "prod v1\n", "cluster.yml": "top\n"})
	first := w.git("rev-parse", "HEAD")
	w.git("tag", "-a", "-m", "release one", "v1")
	second := w.commit("second", map[string]string{"clusters/prod/cluster.yml": "prod v2\n"})
	w.git("tag", "light")
	third := w.commit("third", map[string]string{"clusters/prod/cluster.yml": "prod v3\n"})
	w.commit("fourth", map[string]string{"clusters/prod/cluster.yml": "prod v4\n"})
	w.git("branch", "v1-branch", first)
	w.push("main", "--tags")
	w.push("v1-branch")

	for _, tc := range []struct {
		name, ref, path string
		wantCommit      string
		wantTag         string
		wantContent     string
	}{
		{"annotated tag by short name", "v1", "clusters/prod", first, "v1", "prod v1\n"},
		{"annotated tag by full name", "refs/tags/v1", "clusters/prod", first, "v1", "prod v1\n"},
		{"lightweight tag", "light", "clusters/prod", second, "light", "prod v2\n"},
		{"pinned commit, tip of a tag", second, "clusters/prod", second, "", "prod v2\n"},
		{"pinned commit, tip of a branch", first, "./clusters/prod/", first, "", "prod v1\n"},
		{"pinned commit, not a tip", third, "clusters/prod", third, "", "prod v3\n"},
		{"branch by full name", "refs/heads/v1-branch", "", first, "", "top\n"},
		{"HEAD", "", "clusters/prod", w.git("rev-parse", "HEAD"), "", "prod v4\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(Config{URL: w.bare, Ref: tc.ref, Path: tc.path, CacheDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			rev, changed := mustPoll(t, s)
			if !changed || rev.Commit != tc.wantCommit || rev.Tag != tc.wantTag || string(rev.Files["cluster.yml"]) != tc.wantContent {
				t.Fatalf("changed %v, %+v", changed, rev)
			}
			if _, changed = mustPoll(t, s); changed {
				t.Error("second poll changed")
			}
			if isFullHash(tc.ref) && s.Stats().Fetches != 1 {
				t.Errorf("pinned commit: %d fetches, want 1 (the second poll needs none)", s.Stats().Fetches)
			}
		})
	}

	// A tag named like a branch is ambiguous, unless named in full.
	w.git("tag", "v1-branch", second)
	w.push("--tags")
	s, _ := New(Config{URL: w.bare, Ref: "v1-branch", CacheDir: t.TempDir()})
	wantReason(t, s, ReasonRefNotFound, "ambiguous", "refs/heads/v1-branch", "refs/tags/v1-branch")

	for _, tc := range []struct {
		name string
		cfg  Config
		want Reason
		says []string
	}{
		{"missing branch", Config{Ref: "mian"}, ReasonRefNotFound, []string{"mian is not on the remote", "the remote has light, main, v1"}},
		{"missing pinned commit", Config{Ref: strings.Repeat("ab", 20)}, ReasonRefNotFound, []string{"abababab", "on no branch or tag"}},
		{"missing file", Config{Ref: "main", Files: []string{"cluster.yml", "nodes.yml"}}, ReasonFileNotFound, []string{"nodes.yml is not at commit"}},
		{"missing folder", Config{Ref: "main", Path: "clusters/staging"}, ReasonFileNotFound, []string{"folder clusters/staging is not at commit"}},
		{"a folder, not a file", Config{Ref: "main", Files: []string{"clusters"}}, ReasonNotAFile, []string{"clusters at commit", "is a folder"}},
		{"file too large", Config{Ref: "main", MaxFileSize: 3}, ReasonFileTooLarge, []string{"cluster.yml at commit", "is 4 bytes, over the limit of 3", "MaxFileSize"}},
		{"no repository", Config{URL: filepath.Join(t.TempDir(), "nothing.git"), Ref: "main"}, ReasonRepositoryNotFound, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			if cfg.URL == "" {
				cfg.URL = w.bare
			}
			cfg.CacheDir = t.TempDir()
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			wantReason(t, s, tc.want, tc.says...)
			if s.Current() != nil {
				t.Error("a failed first poll left a current revision")
			}
		})
	}
}

// TestLocalSymlinkRefused: a symlink could point anywhere in the
// repository; atrest reads regular files only.
func TestLocalSymlinkRefused(t *testing.T) {
	w := newLocalRepo(t, map[string]string{"real.yml": "x\n"})
	if err := os.Symlink("real.yml", filepath.Join(w.dir, "cluster.yml")); err != nil {
		t.Fatal(err)
	}
	w.git("add", "cluster.yml")
	w.commit("link", nil)
	w.push("main")
	s, err := New(Config{URL: w.bare, Ref: "main", CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	wantReason(t, s, ReasonNotAFile, "cluster.yml at commit", "is a symlink")
}

// TestLocalCacheCompaction: one pack per fetch piles up; past the bound,
// the cache is rebuilt from scratch before the next fetch.
func TestLocalCacheCompaction(t *testing.T) {
	w := newLocalRepo(t, map[string]string{"cluster.yml": "v0\n"})
	var logs logBuffer
	s, err := New(Config{URL: w.bare, Ref: "main", CacheDir: t.TempDir(), Logger: newLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	s.cache.maxPacks = 3
	for i := 1; i <= 4; i++ {
		content := fmt.Sprintf("v%d\n", i)
		hash := w.commit(content, map[string]string{"cluster.yml": content})
		w.push("main")
		rev, changed := mustPoll(t, s)
		if !changed || rev.Commit != hash || string(rev.Files["cluster.yml"]) != content {
			t.Fatalf("poll %d: changed %v, %+v", i, changed, rev)
		}
		if n, _ := s.cache.packs(); n > 3 {
			t.Fatalf("poll %d: %d packs in the cache", i, n)
		}
	}
	if st := s.Stats(); st.CacheResets != 1 || !strings.Contains(logs.String(), "cache rebuilt from scratch") {
		t.Errorf("no compaction: %+v\n%s", st, logs.String())
	}
}
