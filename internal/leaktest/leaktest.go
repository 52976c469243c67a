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
	"regexp"
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
	all := Views(w.logs.String() + "\n" + strings.Join(w.texts, "\n"))
	for _, k := range w.keys {
		if name := Find(all, k.Secret); name != "" {
			w.t.Errorf("key %s: its material (%d bytes) appears in logs, errors or output (%s)", k.Name, len(k.Secret), name)
		}
	}
}

// Find returns the name of the encoding in which secret appears in text,
// "" when it does not. text is best passed through Views first (Scan does
// both).
func Find(text string, secret []byte) string {
	for _, f := range forms(secret) {
		if strings.Contains(text, f.text) {
			return f.name
		}
	}
	return ""
}

// Scan reports the encoding in which secret appears anywhere in text, as
// is, with its line breaks taken out, or inside base64 in it (a config
// logged as JSON bytes is base64 of base64), "" when nowhere.
func Scan(text string, secret []byte) string { return Find(Views(text), secret) }

type form struct{ name, text string }

// forms are the encodings key material is printed in.
func forms(s []byte) []form {
	h := hex.EncodeToString(s)
	return []form{
		{"base64", base64.StdEncoding.EncodeToString(s)},
		{"base64url", base64.URLEncoding.EncodeToString(s)},
		{"base64 unpadded", base64.RawStdEncoding.EncodeToString(s)},
		{"base64url unpadded", base64.RawURLEncoding.EncodeToString(s)},
		{"hex", h},
		{"upper-case hex", strings.ToUpper(h)},
		{"raw bytes", string(s)},
		{"decimal bytes", fmt.Sprint(s)},
		{"a truncated base64 prefix", prefix(base64.StdEncoding.EncodeToString(s))},
		{"a truncated hex prefix", prefix(h)},
	}
}

// prefix is the first 16 characters of an encoding: what code that cuts
// long values short (to 512 bytes, to a log line) would still print of a
// key. 16 characters of random material do not appear by chance.
func prefix(enc string) string { return enc[:min(len(enc), 16)] }

// base64Run is a run of base64 (either alphabet) long enough to hold key
// material encoded once more.
var base64Run = regexp.MustCompile(`[A-Za-z0-9+/_-]{24,}={0,2}`)

// unwrap takes out what wraps long base64 across lines: line breaks,
// escaped ones (in JSON or Go-quoted text), and indentation.
var unwrap = strings.NewReplacer(`\n`, "", `\r`, "", "\n", "", "\r", "", " ", "", "\t", "")

// Views is text, text unwrapped, and what decodes from the base64 runs of
// both, twice over, so that material encoded again (base64 of a config
// that holds base64) or wrapped is found.
func Views(text string) string {
	out := []string{text, unwrap.Replace(text)}
	layer := out
	for range 2 {
		var decoded []string
		for _, t := range layer {
			for _, run := range base64Run.FindAllString(t, -1) {
				decoded = append(decoded, decodeRun(run)...)
			}
		}
		out = append(out, decoded...)
		layer = decoded
	}
	return strings.Join(out, "\n")
}

// decodeRun decodes run in both alphabets, from each of the four offsets a
// base64 encoding may start at within it.
func decodeRun(run string) []string {
	run = strings.TrimRight(run, "=")
	var out []string
	for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
		for off := range 4 {
			t := run[off:]
			t = t[:len(t)-len(t)%4]
			if b, err := enc.DecodeString(t); err == nil {
				out = append(out, string(b))
			}
		}
	}
	return out
}
