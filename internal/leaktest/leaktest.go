// Package leaktest checks that key material never appears in what code
// under test says: its logs, its errors, its output. A test registers the
// keys it generates or reads and records what the code said; when the test
// ends, any key found in any common encoding fails it.
package leaktest

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/atrest-io/atrest/cluster"
)

// Watch collects what a test's code said and the keys it must not say.
type Watch struct {
	t     testing.TB
	mu    sync.Mutex
	logs  bytes.Buffer
	texts []string
	keys  []cluster.Key
}

// New returns a Watch that checks at t's cleanup.
func New(t testing.TB) *Watch {
	w := &Watch{t: t}
	t.Cleanup(w.check)
	return w
}

// Write makes the Watch a log sink; the code under test logs from several
// goroutines.
func (w *Watch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.logs.Write(p)
}

// Logger logs at debug level into the Watch.
func (w *Watch) Logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Key registers k's material as forbidden, and returns k.
func (w *Watch) Key(k cluster.Key) cluster.Key {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.keys = append(w.keys, cluster.Key{Name: k.Name, Provider: k.Provider, Secret: bytes.Clone(k.Secret)})
	return k
}

// Err records err in every form it prints in, and returns it.
func (w *Watch) Err(err error) error {
	if err != nil {
		w.Note(err.Error() + fmt.Sprintf(" %+v %#v", err, err))
	}
	return err
}

// Note records something the code produced: a string, an error, or any
// value (as JSON and as %+v).
func (w *Watch) Note(v any) {
	var texts []string
	switch x := v.(type) {
	case nil:
		return
	case error:
		texts = append(texts, x.Error())
	case string:
		texts = append(texts, x)
	default:
		b, _ := json.Marshal(x)
		texts = append(texts, string(b), fmt.Sprintf("%+v", x))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.texts = append(w.texts, texts...)
}

// Logs returns what was logged so far.
func (w *Watch) Logs() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.logs.String()
}

func (w *Watch) check() {
	if w.t.Failed() && os.Getenv("ATREST_TEST_LOGS") != "" {
		w.t.Log(w.Logs())
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	all := w.logs.String() + "\n" + strings.Join(w.texts, "\n")
	for _, k := range w.keys {
		s := []byte(k.Secret)
		for _, form := range []string{base64.StdEncoding.EncodeToString(s), base64.URLEncoding.EncodeToString(s),
			base64.RawStdEncoding.EncodeToString(s), hex.EncodeToString(s), string(s)} {
			if strings.Contains(all, form) {
				w.t.Errorf("key %s: its material (%d bytes) appears in logs, errors or output", k.Name, len(s))
				break
			}
		}
	}
}
