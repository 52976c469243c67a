package etcdsnap

import (
	"context"
	"slices"
	"testing"
	"time"
)

func TestPruneCandidates(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mk := func(name string, hours int, transition string) Manifest {
		return Manifest{Name: name, Time: t0.Add(time.Duration(hours) * time.Hour), Transition: transition}
	}
	// Newest first, as List returns them.
	all := []Manifest{mk("e", 5, ""), mk("d", 4, ""), mk("c", 3, "rotate-7"), mk("b", 2, ""), mk("a", 1, "rotate-6")}
	unfinished := KeepTransitions("rotate-7")
	tests := []struct {
		name      string
		retention int
		keep      func(Manifest) bool
		want      []string
	}{
		{"keep 2", 2, nil, []string{"c", "b", "a"}},
		{"keep 2 and the unfinished transition's", 2, unfinished, []string{"b", "a"}},
		{"keep all", 5, nil, nil},
		{"keep more than there are", 9, unfinished, nil},
		{"keep 1", 1, unfinished, []string{"d", "b", "a"}},
		{"keep 1 and two transitions'", 1, KeepTransitions("rotate-6", "rotate-7"), []string{"d", "b"}},
		{"no transition unfinished", 1, KeepTransitions(), []string{"d", "c", "b", "a"}},
	}
	for _, tt := range tests {
		var got []string
		for _, m := range pruneCandidates(all, tt.retention, tt.keep) {
			got = append(got, m.Name)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: prune %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestPruneAfterSnapshots: the snapshot after a change is kept while it is
// the newest, and counts for nothing; a newer one supersedes it.
func TestPruneAfterSnapshots(t *testing.T) {
	mk := func(name, reason string) Manifest { return Manifest{Name: name, Reason: reason} }
	tests := []struct {
		name      string
		all       []Manifest // newest first
		retention int
		want      []string
	}{
		{"the newest after is kept beside the retention", []Manifest{mk("a2", "after rotate"), mk("b2", "before rotate"), mk("a1", "after enable"), mk("b1", "before enable")}, 1, []string{"a1", "b1"}},
		{"retention 2: both befores", []Manifest{mk("a2", "after rotate"), mk("b2", "before rotate"), mk("a1", "after enable"), mk("b1", "before enable")}, 2, []string{"a1"}},
		{"a manual snapshot supersedes an after", []Manifest{mk("m", "manual"), mk("a1", "after enable"), mk("b1", "before enable")}, 2, []string{"a1"}},
		{"only an after", []Manifest{mk("a1", "after enable")}, 1, nil},
	}
	for _, tt := range tests {
		var got []string
		for _, m := range pruneCandidates(tt.all, tt.retention, nil) {
			got = append(got, m.Name)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: prune %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestSortNewestFirst(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := []Manifest{{Name: "b", Time: t0}, {Name: "c", Time: t0.Add(time.Second)}, {Name: "a", Time: t0}}
	sortNewestFirst(ms)
	if got := []string{ms[0].Name, ms[1].Name, ms[2].Name}; !slices.Equal(got, []string{"c", "b", "a"}) {
		t.Errorf("order %v", got)
	}
}

type fakeRefs struct{ snaps map[string][]string }

func (f fakeRefs) AddSnapshotRef(context.Context, string, []string) error { return nil }
func (f fakeRefs) ReleaseSnapshotRef(context.Context, string) error       { return nil }
func (f fakeRefs) SnapshotRefs(context.Context) (map[string][]string, error) {
	return f.snaps, nil
}

// TestOwnedBy: clusters sharing a directory never prune each other; an
// unlabelled (older) manifest is a cluster's only if its keyring says so.
func TestOwnedBy(t *testing.T) {
	all := []Manifest{
		{Name: "p2", Cluster: "prod"}, {Name: "s1", Cluster: "staging"}, {Name: "old-prod"}, {Name: "old-plain"}, {Name: "p1", Cluster: "prod"},
	}
	refs := fakeRefs{map[string][]string{"old-prod": {"k-abcde"}}}
	for _, tt := range []struct {
		cluster string
		refs    KeyRefs
		want    []string
	}{
		{"prod", refs, []string{"p2", "old-prod", "p1"}},
		{"staging", fakeRefs{}, []string{"s1"}},
		{"prod", nil, []string{"p2", "p1"}},
	} {
		got, err := ownedBy(context.Background(), all, tt.refs, tt.cluster)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, m := range got {
			names = append(names, m.Name)
		}
		if !slices.Equal(names, tt.want) {
			t.Errorf("%s's snapshots: %v, want %v", tt.cluster, names, tt.want)
		}
	}
}
