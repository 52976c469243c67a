package gitsource

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	gitcache "github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// defaultMaxPacks bounds the packs the cache accumulates (one per fetch) before it
// is rebuilt from scratch: object lookups slow down with many packs, and
// objects of rewritten history are never pruned otherwise.
const defaultMaxPacks = 32

// objectCacheSize bounds the memory go-git keeps decoded objects in: the
// files read are small, and the daemon runs for months.
const objectCacheSize = 8 * gitcache.MiByte

// cache is the bare repository fetched objects are kept in.
type cache struct {
	dir      string
	maxPacks int
	storage  *filesystem.Storage
	repo     *git.Repository
}

// open opens the cache repository, creating it when missing and rebuilding
// it when it cannot be opened.
func (c *cache) open() (*git.Repository, error) {
	if c.repo != nil {
		return c.repo, nil
	}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create cache %s: %w", c.dir, err)
	}
	st := filesystem.NewStorage(osfs.New(c.dir), gitcache.NewObjectLRU(objectCacheSize))
	repo, err := git.Open(st, nil)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		repo, err = git.Init(st, nil)
	}
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("open cache %s: %w", c.dir, err)
	}
	c.storage, c.repo = st, repo
	return repo, nil
}

// wipe removes the cache repository; the next open starts empty.
func (c *cache) wipe() error {
	if c.storage != nil {
		c.storage.Close()
	}
	c.storage, c.repo = nil, nil
	if err := os.RemoveAll(c.dir); err != nil {
		return fmt.Errorf("wipe cache %s: %w", c.dir, err)
	}
	return nil
}

// packs returns the number and total size of the pack files in the cache.
func (c *cache) packs() (n int, size int64) {
	entries, _ := os.ReadDir(filepath.Join(c.dir, "objects", "pack"))
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".pack") {
			continue
		}
		if info, err := e.Info(); err == nil {
			n++
			size += info.Size()
		}
	}
	return n, size
}

// has says whether the cache holds the object h.
func (c *cache) has(h plumbing.Hash) bool {
	if c.repo == nil || h.IsZero() {
		return false
	}
	return c.repo.Storer.HasEncodedObject(h) == nil
}
