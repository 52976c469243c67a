package leaktest

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
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

// TestScanFindsEncodedAgain plants key material the way code leaks it by
// accident: a config logged as JSON bytes (base64 of a YAML that holds
// base64), at every alignment, upper-case hex, base64 wrapped across
// lines, and Go-quoted or JSON-escaped text.
func TestScanFindsEncodedAgain(t *testing.T) {
	k, err := cluster.NewKey(cluster.AESCBC, nil)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(k.Secret)
	config := func(prefix string) []byte {
		return []byte(prefix + "resources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: k-abcde\n        secret: " + b64 + "\n")
	}
	asJSON := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	wrap := func(s string, width int) string {
		var b strings.Builder
		for len(s) > width {
			b.WriteString(s[:width] + "\n")
			s = s[width:]
		}
		return b.String() + s
	}
	for _, tt := range []struct {
		name, text string
		found      bool
	}{
		{"nothing of it", asJSON(map[string]any{"key": k.Name, "fingerprint": k.Fingerprint(), "config": []byte("secret: REDACTED")}), false},
		{"a config as JSON bytes", asJSON(map[string]any{"msg": "rendered", "file": config("")}), true},
		{"a config as JSON bytes, one byte later", asJSON(map[string]any{"file": config("#")}), true},
		{"a config as JSON bytes, two bytes later", asJSON(map[string]any{"file": config("# ")}), true},
		{"a config as base64url", base64.URLEncoding.EncodeToString(config("##")), true},
		{"upper-case hex", "dump: " + strings.ToUpper(hex.EncodeToString(k.Secret)), true},
		{"base64 wrapped at 16", "pem-ish:\n" + wrap(b64, 16), true},
		{"a config in MIME base64, 76 to a line", wrap(base64.StdEncoding.EncodeToString(config("")), 76), true},
		{"a config Go-quoted", fmt.Sprintf("%q", string(config(""))), true},
		{"a config in base64, in base64", base64.StdEncoding.EncodeToString([]byte(base64.StdEncoding.EncodeToString(config("")))), true},
		{"bytes printed with %v", fmt.Sprintf("key bytes %v", []byte(k.Secret)), true},
		{"a config cut short", string(config(""))[:strings.Index(string(config("")), b64)+20], true},
		{"hex cut short", "hex " + hex.EncodeToString(k.Secret)[:20] + "...", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := Scan(tt.text, k.Secret)
			if (got != "") != tt.found {
				t.Errorf("Scan = %q, want found %v in:\n%s", got, tt.found, tt.text)
			}
			// The Watch fails a test the same way.
			r := &recorder{TB: t}
			w := New(r)
			w.Key(k)
			w.Note(tt.text)
			for _, f := range r.cleanups {
				f()
			}
			if r.failed != tt.found {
				t.Errorf("the Watch failed = %v, want %v", r.failed, tt.found)
			}
		})
	}
}
