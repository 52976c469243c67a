package etcdsnap

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestLocalDirUpload(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "snapshots")
	d, err := NewLocalDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("new snapshot directory has mode %v, want 0700", st.Mode().Perm())
	}
	up, err := d.Create(ctx, "a.db")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := up.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	// Not visible before Commit; the part file is private already.
	if names, _ := d.List(ctx); len(names) != 0 {
		t.Errorf("before commit List = %v", names)
	}
	if _, err := d.Open(ctx, "a.db"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("before commit Open: %v", err)
	}
	if st, err := os.Stat(filepath.Join(dir, "a.db.part")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("part file: %v %v", st, err)
	}
	if err := up.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := up.Abort(); err != nil {
		t.Errorf("Abort after Commit: %v", err)
	}
	st, err := os.Stat(filepath.Join(dir, "a.db"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("committed file: %v %v", st, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "a.db.part")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("part file left behind: %v", err)
	}
	r, err := d.Open(ctx, "a.db")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(r)
	r.Close()
	if string(data) != "hello" {
		t.Errorf("read back %q", data)
	}

	// A committed object is never replaced.
	if _, err := d.Create(ctx, "a.db"); !errors.Is(err, fs.ErrExist) {
		t.Errorf("Create over an existing object: %v", err)
	}
	up2, _ := d.Create(ctx, "b.db")
	up3, _ := d.Create(ctx, "c.db")
	up2.Write([]byte("b"))
	if err := up2.Commit(); err != nil {
		t.Fatal(err)
	}
	// An upload that loses the race for its name fails and leaves the
	// winner as it was.
	os.WriteFile(filepath.Join(dir, "c.db"), []byte("winner"), 0o600)
	up3.Write([]byte("loser"))
	if err := up3.Commit(); !errors.Is(err, fs.ErrExist) {
		t.Errorf("Commit over a file that appeared meanwhile: %v", err)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "c.db")); string(data) != "winner" {
		t.Errorf("c.db = %q", data)
	}

	up4, _ := d.Create(ctx, "d.db")
	up4.Write([]byte("discard me"))
	if err := up4.Abort(); err != nil {
		t.Fatal(err)
	}
	names, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a.db", "b.db", "c.db"}; !slices.Equal(names, want) {
		t.Errorf("List = %v, want %v", names, want)
	}
	if err := d.Remove(ctx, "b.db"); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove(ctx, "b.db"); err != nil {
		t.Errorf("removing a missing object: %v", err)
	}
	if names, _ := d.List(ctx); !slices.Equal(names, []string{"a.db", "c.db"}) {
		t.Errorf("after Remove: %v", names)
	}
}

func TestLocalDirRefusesPathsOutsideIt(t *testing.T) {
	d, err := NewLocalDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", "../x.db", "a/b.db", ".hidden", "x.db.part", "/etc/passwd"} {
		if _, err := d.Create(context.Background(), name); err == nil {
			t.Errorf("Create(%q) succeeded", name)
		}
		if _, err := d.Open(context.Background(), name); err == nil {
			t.Errorf("Open(%q) succeeded", name)
		}
		if err := d.Remove(context.Background(), name); err == nil {
			t.Errorf("Remove(%q) succeeded", name)
		}
	}
	if _, err := NewLocalDir(""); err == nil {
		t.Error("NewLocalDir(\"\") succeeded")
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := NewLocalDir(file); err == nil {
		t.Error("NewLocalDir of a file succeeded")
	}
}
