package main

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/atrest-io/atrest/cluster"
)

// wrap fills paragraphs (separated by blank lines) to width columns, each
// line starting with indent. Text inside a paragraph is reflowed, so the
// tour's prose can be written naturally in the source.
func wrap(text, indent string, width int) string {
	var b strings.Builder
	for i, para := range strings.Split(strings.TrimSpace(text), "\n\n") {
		if i > 0 {
			b.WriteString("\n")
		}
		line := indent
		for _, word := range strings.Fields(para) {
			if line != indent && len(line)+1+len(word) > width {
				b.WriteString(line + "\n")
				line = indent
			}
			if line != indent {
				line += " "
			}
			line += word
		}
		if line != indent {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// indent prefixes every line of text with prefix; a trailing newline is
// kept, and empty text stays empty.
func indent(text, prefix string) string {
	text = strings.TrimRight(text, "\n")
	if text == "" {
		return ""
	}
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(prefix+l, " ")
	}
	return strings.Join(lines, "\n") + "\n"
}

// prefixWriter writes every line it is given with a prefix: the sandbox's
// progress lines, set off from the tour's own words.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		if _, err := fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf[:i]); err != nil {
			return len(b), err
		}
		p.buf = p.buf[i+1:]
	}
}

// census is how many stored objects sit under each storage prefix
// (cluster.StoragePrefix: "identity", "aescbc:v1:k-abcde", ...).
type census map[string]int

// total is the number of objects counted.
func (c census) total() int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

// only reports the one prefix every object is stored under, if there is one.
func (c census) only() (string, bool) {
	if len(c) != 1 {
		return "", false
	}
	for p := range c {
		return p, true
	}
	return "", false
}

// String is the census for people: largest count first, each prefix
// explained ("48 under aescbc:v1:k-abcde (encrypted with key k-abcde)").
func (c census) String() string {
	if len(c) == 0 {
		return "no secrets stored"
	}
	prefixes := make([]string, 0, len(c))
	for p := range c {
		prefixes = append(prefixes, p)
	}
	slices.SortFunc(prefixes, func(a, b string) int {
		return cmp.Or(cmp.Compare(c[b], c[a]), cmp.Compare(a, b))
	})
	parts := make([]string, len(prefixes))
	for i, p := range prefixes {
		parts[i] = fmt.Sprintf("%d under %s", c[p], explainPrefix(p))
	}
	return strings.Join(parts, ", ")
}

// explainPrefix says in plain words what a storage prefix means.
func explainPrefix(p string) string {
	switch p {
	case "identity":
		return "identity (plain text)"
	case "unknown":
		return "an unknown prefix"
	}
	parts := strings.Split(p, ":")
	if len(parts) == 3 && cluster.IsKeyed(cluster.Provider(parts[0])) {
		return fmt.Sprintf("%s (encrypted with key %s)", p, parts[2])
	}
	if len(parts) == 3 && parts[0] == "kms" {
		return fmt.Sprintf("%s (encrypted by KMS plugin %s)", p, parts[2])
	}
	return p
}

// encrypted reports whether a storage prefix names an encrypting provider.
func encrypted(p string) bool { return p != "identity" && p != "unknown" && p != "" }

// logLine is one line of the daemon's log (slog's text format).
type logLine map[string]string

// parseLogfmt parses one line of slog's TextHandler output: key=value pairs
// separated by spaces, where a value with spaces or quotes is a Go quoted
// string. A malformed tail is dropped rather than guessed at.
func parseLogfmt(line string) logLine {
	out := logLine{}
	s := strings.TrimSpace(line)
	for s != "" {
		eq := strings.IndexByte(s, '=')
		if eq <= 0 || strings.ContainsAny(s[:eq], " \"") {
			return out
		}
		key := s[:eq]
		s = s[eq+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			q, err := strconv.QuotedPrefix(s)
			if err != nil {
				return out
			}
			val, _ = strconv.Unquote(q)
			s = s[len(q):]
		} else if sp := strings.IndexByte(s, ' '); sp >= 0 {
			val, s = s[:sp], s[sp:]
		} else {
			val, s = s, ""
		}
		out[key] = val
		s = strings.TrimLeft(s, " ")
	}
	return out
}

// narrate turns a daemon log line into a line for the tour, or "" for the
// lines a newcomer does not need (each poll, the metrics, ...). The whole
// log stays in its file.
func narrate(l logLine) string {
	msg := l["msg"]
	switch msg {
	case "":
		return ""
	case "step":
		return "step: " + l["detail"]
	case "new revision in force":
		return fmt.Sprintf("new revision in force: %s %q", short(l["revision"]), l["subject"])
	case "transition complete":
		// The reconciler and the daemon both say it; the tour shows it once.
		return fmt.Sprintf("%s complete for %s", l["transition"], short(l["revision"]))
	case "webhook accepted: polling the Git source now", "atrest run started", "atrest run stopped",
		"resuming the transition in the journal", "stopped between steps for shutdown; the next start resumes":
		return msg
	}
	switch l["level"] {
	case "WARN", "ERROR":
		line := strings.ToLower(l["level"]) + ": " + msg
		if e := l["err"]; e != "" {
			line += ": " + e
		}
		if k := l["setting"]; k != "" {
			line += " (setting " + k + ")"
		}
		return line
	}
	if strings.HasPrefix(msg, "shutting down") || strings.HasPrefix(msg, "interrupting") {
		return msg
	}
	return ""
}

// short is a commit hash as people read it.
func short(rev string) string { return rev[:min(len(rev), 12)] }

// lastLines returns the last n lines of text.
func lastLines(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n"
}

// childEnv is the environment of the atrest commands the tour runs: the
// demo's own, less anything that would point atrest elsewhere (a user's
// ATREST_*, VAULT_*, RKE_CONFIG or KUBECONFIG), plus set.
func childEnv(environ []string, set ...string) []string {
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "ATREST_") || strings.HasPrefix(name, "VAULT_") || name == "RKE_CONFIG" || name == "KUBECONFIG" {
			continue
		}
		out = append(out, kv)
	}
	return append(out, set...)
}

// secretLine matches the key lines of an EncryptionConfiguration in YAML.
var secretLine = regexp.MustCompile(`(?m)^(\s*(?:-\s+)?secret:\s*)(\S+)\s*$`)

// redactConfig shows an EncryptionConfiguration with every key's secret
// replaced by its length. keys are the keys the config holds (from
// cluster.ParseEncryptionConfig): if any of them still shows in any common
// encoding, redactConfig refuses rather than print key material.
func redactConfig(data []byte, keys []cluster.Key) (string, error) {
	out := secretLine.ReplaceAllStringFunc(string(data), func(line string) string {
		m := secretLine.FindStringSubmatch(line)
		n := len(m[2])
		if raw, err := base64.StdEncoding.DecodeString(strings.Trim(m[2], `"'`)); err == nil {
			n = len(raw)
		}
		return fmt.Sprintf("%s<%d bytes of key material, not shown>", m[1], n)
	})
	for _, k := range keys {
		if len(k.Secret) == 0 {
			continue
		}
		for _, form := range []string{base64.StdEncoding.EncodeToString(k.Secret), base64.RawStdEncoding.EncodeToString(k.Secret), string(k.Secret)} {
			if strings.Contains(out, form) {
				return "", fmt.Errorf("the restore config's key %s is not in a form the demo can hide: not showing the file", k.Name)
			}
		}
	}
	return out, nil
}
