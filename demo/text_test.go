package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/atrest-io/atrest/cluster"
)

func TestWrap(t *testing.T) {
	for _, tc := range []struct {
		name, in, indent string
		width            int
		want             string
	}{
		{"reflows", "one two\n\t\tthree four", "", 9, "one two\nthree\nfour\n"},
		{"paragraphs", "a b\n\nc", "", 80, "a b\n\nc\n"},
		{"indent", "aa bb cc", "  ", 7, "  aa bb\n  cc\n"},
		{"long word alone", "abcdefghij x", "", 4, "abcdefghij\nx\n"},
		{"empty", "  \n ", "", 10, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := wrap(tc.in, tc.indent, tc.width); got != tc.want {
				t.Errorf("wrap(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestIndent(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a\nb\n", "| a\n| b\n"},
		{"a\n\nb", "| a\n|\n| b\n"},
		{"", ""},
		{"\n\n", ""},
	} {
		if got := indent(tc.in, "| "); got != tc.want {
			t.Errorf("indent(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPrefixWriter(t *testing.T) {
	var b bytes.Buffer
	w := &prefixWriter{w: &b, prefix: "> "}
	for _, chunk := range []string{"one\ntw", "o\n", "three"} {
		if _, err := w.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	// A line is written whole once its newline arrives, not before.
	if got, want := b.String(), "> one\n> two\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestCensus(t *testing.T) {
	for _, tc := range []struct {
		name  string
		c     census
		text  string
		only  string
		total int
	}{
		{"none", census{}, "no secrets stored", "", 0},
		{"plain", census{"identity": 48}, "48 under identity (plain text)", "identity", 48},
		{"moving", census{"identity": 2, "aescbc:v1:k-abcde": 46, "unknown": 2},
			"46 under aescbc:v1:k-abcde (encrypted with key k-abcde), 2 under identity (plain text), 2 under an unknown prefix", "", 50},
		{"kms", census{"kms:v2:vault": 3}, "3 under kms:v2:vault (encrypted by KMS plugin vault)", "kms:v2:vault", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.c.String(); got != tc.text {
				t.Errorf("String() = %q, want %q", got, tc.text)
			}
			p, ok := tc.c.only()
			if p != tc.only || ok != (tc.only != "") {
				t.Errorf("only() = %q, %v, want %q", p, ok, tc.only)
			}
			if got := tc.c.total(); got != tc.total {
				t.Errorf("total() = %d, want %d", got, tc.total)
			}
		})
	}
	for p, want := range map[string]bool{"identity": false, "unknown": false, "": false, "aescbc:v1:k-abcde": true, "kms:v2:x": true} {
		if encrypted(p) != want {
			t.Errorf("encrypted(%q) = %v, want %v", p, !want, want)
		}
	}
}

func TestParseLogfmt(t *testing.T) {
	for _, tc := range []struct {
		name, line string
		want       logLine
	}{
		{"slog text", `time=2026-11-28T16:00:34.607Z level=INFO msg=step transition=enable step=deploy detail="deploy secrets [identity, aescbc:v1:k-5np1y] to every node; canary must be identity"` + "\n",
			logLine{"time": "2026-11-28T16:00:34.607Z", "level": "INFO", "msg": "step", "transition": "enable", "step": "deploy",
				"detail": "deploy secrets [identity, aescbc:v1:k-5np1y] to every node; canary must be identity"}},
		{"escapes", `msg="a \"quoted\" word" err="x\ny"`, logLine{"msg": `a "quoted" word`, "err": "x\ny"}},
		{"empty value", `msg= level=WARN`, logLine{"msg": "", "level": "WARN"}},
		{"not logfmt", `panic: runtime error`, logLine{}},
		{"unterminated quote", `msg=ok detail="never ends`, logLine{"msg": "ok"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := parseLogfmt(tc.line)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("parseLogfmt(%q) = %v, want %v", tc.line, got, tc.want)
			}
		})
	}
}

func TestNarrate(t *testing.T) {
	rev := "ae5a9ec6507a2f2d00712c75953dbd599d3ad0df"
	for _, tc := range []struct {
		name string
		l    logLine
		want string
	}{
		{"step", logLine{"msg": "step", "detail": "rewrite every object of secrets"}, "step: rewrite every object of secrets"},
		{"revision", logLine{"msg": "new revision in force", "revision": rev, "subject": "Enable"}, `new revision in force: ae5a9ec6507a "Enable"`},
		// The reconciler's and the daemon's lines say the same.
		{"complete (reconciler)", logLine{"msg": "transition complete", "transition": "enable", "revision": rev, "snapshot": "etcd-1"}, "enable complete for ae5a9ec6507a"},
		{"complete (daemon)", logLine{"msg": "transition complete", "transition": "enable", "revision": rev, "steps": "6"}, "enable complete for ae5a9ec6507a"},
		{"error", logLine{"level": "ERROR", "msg": "reconcile failed", "err": "etcd: timeout"}, "error: reconcile failed: etcd: timeout"},
		{"warning", logLine{"level": "WARN", "msg": "git poll failed"}, "warn: git poll failed"},
		{"insecure", logLine{"level": "WARN", "msg": "INSECURE: Vault at http://v:8200 is reached over plain http", "setting": "vault.insecureAllowHTTP"},
			"warn: INSECURE: Vault at http://v:8200 is reached over plain http (setting vault.insecureAllowHTTP)"},
		{"shutdown", logLine{"level": "INFO", "msg": "shutting down: finishing the step in flight"}, "shutting down: finishing the step in flight"},
		{"quiet", logLine{"level": "INFO", "msg": "canary written"}, ""},
		{"not a log line", logLine{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := narrate(tc.l); got != tc.want {
				t.Errorf("narrate() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestChildEnv(t *testing.T) {
	got := childEnv([]string{"PATH=/bin", "ATREST_GIT_URL=x", "VAULT_TOKEN=t", "RKE_CONFIG=c", "KUBECONFIG=k", "HOME=/root", "MY_ATREST_THING=1"},
		"ATREST_SETTINGS=/s")
	want := []string{"PATH=/bin", "HOME=/root", "MY_ATREST_THING=1", "ATREST_SETTINGS=/s"}
	if !slices.Equal(got, want) {
		t.Errorf("childEnv = %v, want %v", got, want)
	}
}

func TestRedactConfig(t *testing.T) {
	k1, err := cluster.NewKey(cluster.AESCBC, nil)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := cluster.NewKey(cluster.Secretbox, []string{k1.Name})
	if err != nil {
		t.Fatal(err)
	}
	data, err := cluster.ManagedConfig{Keys: []cluster.Key{k1, k2}}.Render()
	if err != nil {
		t.Fatal(err)
	}
	got, err := redactConfig(data, []cluster.Key{k1, k2})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []cluster.Key{k1, k2} {
		if strings.Contains(got, base64.StdEncoding.EncodeToString(k.Secret)) {
			t.Errorf("key %s shows in %s", k.Name, got)
		}
		if !strings.Contains(got, "name: "+k.Name) {
			t.Errorf("key name %s is hidden too:\n%s", k.Name, got)
		}
	}
	if n := strings.Count(got, "secret: <32 bytes of key material, not shown>"); n != 2 {
		t.Errorf("%d secrets hidden, want 2:\n%s", n, got)
	}

	// A form the line match misses (JSON, here) is refused, not printed.
	json := fmt.Sprintf(`{"keys":[{"name":%q,"secret":%q}]}`, k1.Name, base64.StdEncoding.EncodeToString(k1.Secret))
	if out, err := redactConfig([]byte(json), []cluster.Key{k1}); err == nil || strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(k1.Secret)) {
		t.Errorf("redactConfig(JSON) = %q, %v; want a refusal that shows no key", out, err)
	}
}

func TestAddRotateLine(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"# c\ncluster_name: x\nnodes: []\n", "# c\ncluster_name: x\nrotate_encryption_key: true\nnodes: []\n"},
		{"nodes: []\n", "nodes: []\nrotate_encryption_key: true\n"},
		{"nodes: []", "nodes: []\nrotate_encryption_key: true\n"},
	} {
		if got := addRotateLine(tc.in); got != tc.want {
			t.Errorf("addRotateLine(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPickSnapshot(t *testing.T) {
	list := "etcd-2  2026-11-28T16:00:50Z  before rotate   327712 bytes  keys [k-5np1y]  git bd4c\n" +
		"etcd-1  2026-11-28T16:00:34Z  before enable   290848 bytes  keys []  git ae5a\n"
	for _, tc := range []struct{ list, reason, want string }{
		{list, "before rotate", "etcd-2"},
		{list, "before disable", "etcd-1"}, // none: the last listed
		{"", "before rotate", ""},
	} {
		if got := pickSnapshot(tc.list, tc.reason); got != tc.want {
			t.Errorf("pickSnapshot(%q) = %q, want %q", tc.reason, got, tc.want)
		}
	}
}

func TestDescribeRaw(t *testing.T) {
	pw := []byte("demo-password-00")
	for _, tc := range []struct {
		name string
		raw  []byte
		want string
	}{
		{"encrypted", []byte("k8s:enc:aescbc:v1:k-abcde:\x01\x02\x03"), `"k8s:enc:aescbc:v1:k-abcde:" + 3 bytes of ciphertext; the password is not in it`},
		{"plain", append([]byte("k8s\x00\n\x0cSecret"), pw...), `28 bytes of plain protobuf, the password "demo-password-00" readable in it`},
		{"other", []byte("{}"), "2 bytes stored as identity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := describeRaw(tc.raw, pw); got != tc.want {
				t.Errorf("describeRaw = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLastLines(t *testing.T) {
	if got := lastLines("a\nb\nc\n", 2); got != "b\nc\n" {
		t.Errorf("lastLines = %q", got)
	}
	if got := lastLines("a", 5); got != "a\n" {
		t.Errorf("lastLines = %q", got)
	}
}
