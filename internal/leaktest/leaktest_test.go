package leaktest

import (
	"encoding/hex"
	"errors"
	"testing"

	"github.com/atrest-io/atrest/cluster"
)

// recorder is a testing.TB that notes failures instead of failing.
type recorder struct {
	testing.TB
	failed   bool
	cleanups []func()
}

func (r *recorder) Errorf(string, ...any) { r.failed = true }
func (r *recorder) Failed() bool          { return r.failed }
func (r *recorder) Cleanup(f func())      { r.cleanups = append(r.cleanups, f) }

func TestWatchFindsEveryForm(t *testing.T) {
	k, err := cluster.NewKey(cluster.AESCBC, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, say := range map[string]func(w *Watch){
		"nothing":     func(w *Watch) { w.Logger().Info("key", "key", k) },
		"hex in text": func(w *Watch) { w.Note("dump " + hex.EncodeToString(k.Secret)) },
		"raw in err":  func(w *Watch) { _ = w.Err(errors.New("bad " + string(k.Secret))) },
	} {
		r := &recorder{TB: t}
		w := New(r)
		w.Key(k)
		say(w)
		for _, f := range r.cleanups {
			f()
		}
		if want := name != "nothing"; r.failed != want {
			t.Errorf("%s: failed = %v, want %v", name, r.failed, want)
		}
	}
}
