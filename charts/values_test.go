package charts

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// secretWord marks a value's path as being about a credential.
var secretWord = regexp.MustCompile(`(?i)password|passwd|token|secret|credential|private|identity|jwt|bearer|apikey`)

// referenceName is what a Secret's name or one of its keys can look like:
// no PEM block, no password with punctuation, no line breaks.
var referenceName = regexp.MustCompile(`^[-._a-zA-Z0-9]*$`)

// credentialLike is a long run of base64 characters mixing upper and lower
// case letters and digits, or a long run of hex digits: what a token or an
// encoded key looks like (and what a name, a path or a URL does not).
var (
	base64Like = regexp.MustCompile(`^[A-Za-z0-9+/=_.-]{20,}$`)
	hexLike    = regexp.MustCompile(`^[a-fA-F0-9]{32,}$`)
)

func credentialLike(s string) bool {
	if hexLike.MatchString(s) {
		return true
	}
	return base64Like.MatchString(s) && strings.ContainsAny(s, "0123456789") &&
		strings.ContainsAny(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") && strings.ContainsAny(s, "abcdefghijklmnopqrstuvwxyz")
}

// TestValuesHoldNoSecrets walks values.yaml and the full CI values: every
// value about a credential is the name of a Secret (existingSecret) or of
// a key in it (...Key), and no value anywhere looks like key material.
func TestValuesHoldNoSecrets(t *testing.T) {
	for _, tt := range []struct {
		file    string
		minRefs int // values.yaml names every reference; the CI values only some
	}{{"atrest/values.yaml", 15}, {"atrest/ci/full-values.yaml", 5}} {
		t.Run(tt.file, func(t *testing.T) {
			problems, refs := secretProblems(readYAML(t, tt.file))
			for _, p := range problems {
				t.Error(p)
			}
			if refs < tt.minRefs {
				t.Errorf("found %d references to Secrets, want at least %d: has %s changed shape?", refs, tt.minRefs, tt.file)
			}
		})
	}
}

// TestSecretProblems makes sure the check above finds what it looks for.
func TestSecretProblems(t *testing.T) {
	tests := []struct {
		name   string
		values string
		want   string // "" for no problem
	}{
		{"a reference", "git: {ssh: {existingSecret: atrest-git, privateKeyKey: identity}}", ""},
		{"a password", "git: {https: {password: hunter2}}", "git.https.password: a value about a credential"},
		{"a token under a reference-looking name", "vault: {token: {existingSecret: \"s.Xy7 with spaces\"}}", "is not a Secret name or key"},
		{"a PEM block anywhere", "extra: {caBundle: \"-----BEGIN CERTIFICATE-----\\nMIIB\"}", "looks like a PEM block"},
		{"a base64 key anywhere", "extra: {anything: RTczRjFDODMwQzAyMDVBREU4NDJBMUZFNDhCNzM5N0I=}", "looks like a token or an encoded key"},
		{"a hex token anywhere", "extra: {anything: 0123456789abcdef0123456789abcdef}", "looks like a token or an encoded key"},
		{"names and paths", "image: {repository: ghcr.io/atrest-io/atrest}\ngit: {path: clusters/prod-eu-1, url: \"ssh://git@git.example.com/a/b.git\"}", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var values map[string]any
			if err := yaml.Unmarshal([]byte(tt.values), &values); err != nil {
				t.Fatal(err)
			}
			problems, _ := secretProblems(values)
			got := strings.Join(problems, "\n")
			if tt.want == "" && got != "" || tt.want != "" && !strings.Contains(got, tt.want) {
				t.Errorf("problems:\n%s\nwant %q", got, tt.want)
			}
		})
	}
}

// secretProblems returns what in values could be a secret, and how many
// references to Secrets it holds.
func secretProblems(values map[string]any) (problems []string, refs int) {
	walk("", values, func(path string, v any) {
		s, ok := v.(string)
		if !ok {
			return // numbers and booleans hold no credential
		}
		if strings.Contains(s, "-----BEGIN") || strings.ContainsAny(s, "\n\r") {
			problems = append(problems, fmt.Sprintf("%s: %q looks like a PEM block or a file's contents", path, s))
		}
		if credentialLike(s) {
			problems = append(problems, fmt.Sprintf("%s: %q looks like a token or an encoded key", path, s))
		}
		if !secretWord.MatchString(path) {
			return
		}
		leaf := path[strings.LastIndex(path, ".")+1:]
		if leaf != "existingSecret" && leaf != "key" && !strings.HasSuffix(leaf, "Key") {
			problems = append(problems, fmt.Sprintf("%s: a value about a credential must be a Secret's name (existingSecret) or a key in it (...Key), not %q", path, s))
		}
		if !referenceName.MatchString(s) {
			problems = append(problems, fmt.Sprintf("%s: %q is not a Secret name or key", path, s))
		}
		refs++
	})
	return problems, refs
}

// TestSchemaRefusesSecretValues checks values.schema.json, which helm
// applies to every install: objects refuse fields they do not list (a
// misplaced `password:` is an error, not a stored value), and every field
// that names a Secret or a key in it takes only names.
func TestSchemaRefusesSecretValues(t *testing.T) {
	data, err := os.ReadFile("atrest/values.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(data, &schema); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	defs, _ := schema["definitions"].(map[string]any)
	for _, def := range []string{"secretName", "secretKey"} {
		d, _ := defs[def].(map[string]any)
		pattern, _ := d["pattern"].(string)
		re, err := regexp.Compile(pattern)
		if err != nil {
			t.Fatalf("definitions.%s.pattern %q: %v", def, pattern, err)
		}
		for _, bad := range []string{"-----BEGIN OPENSSH PRIVATE KEY-----", "hunter2!", "a b", "line\nbreak"} {
			if re.MatchString(bad) {
				t.Errorf("definitions.%s accepts %q", def, bad)
			}
		}
	}
	checked := 0
	var visit func(path string, node map[string]any)
	visit = func(path string, node map[string]any) {
		props, _ := node["properties"].(map[string]any)
		if props != nil && node["additionalProperties"] != false {
			t.Errorf("%s: an object with listed fields must refuse others (additionalProperties: false)", path)
		}
		for name, p := range props {
			sub, _ := p.(map[string]any)
			child := strings.TrimPrefix(path+"."+name, ".")
			if name == "existingSecret" || name == "key" || strings.HasSuffix(name, "Key") {
				checked++
				ref, _ := sub["$ref"].(string)
				alt, _ := sub["anyOf"].([]any)
				if ref != "#/definitions/secretName" && ref != "#/definitions/secretKey" && !slices.ContainsFunc(alt, func(a any) bool {
					m, _ := a.(map[string]any)
					return m["$ref"] == "#/definitions/secretKey"
				}) {
					t.Errorf("%s: must be a Secret name or key ($ref secretName or secretKey), is %v", child, sub)
				}
			}
			visit(child, sub)
			if items, ok := sub["items"].(map[string]any); ok {
				visit(child+"[]", items)
			}
		}
	}
	visit("", schema)
	if checked < 10 {
		t.Errorf("checked %d Secret references in the schema, want at least 10", checked)
	}
}

// walk calls leaf for every scalar of a decoded YAML tree, with its dotted
// path (list items as [i]).
func walk(path string, v any, leaf func(path string, v any)) {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			walk(strings.TrimPrefix(path+"."+k, "."), x, leaf)
		}
	case []any:
		for i, x := range t {
			walk(fmt.Sprintf("%s[%d]", path, i), x, leaf)
		}
	default:
		leaf(path, v)
	}
}

func readYAML(t *testing.T, file string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := yaml.Unmarshal(data, &out); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return out
}
