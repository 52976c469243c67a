package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// MaxFileSize caps the size of cluster.yml and atrest.yaml. Real cluster.yml
// files are a few KiB; the cap keeps a hostile or corrupt file from costing
// memory before anything is validated.
const MaxFileSize = 4 << 20

// yamlToJSON converts one YAML document holding a mapping to JSON. Duplicate
// keys are errors anywhere in the file: YAML parsers disagree on which one
// wins, and a silently dropped `enabled: true` would disable encryption.
func yamlToJSON(data []byte, l *errorList) []byte {
	if len(data) > MaxFileSize {
		l.add("", "file is %d bytes, larger than the %d bytes allowed", len(data), MaxFileSize)
		return nil
	}
	if len(bytes.TrimSpace(data)) == 0 {
		l.add("", "file is empty")
		return nil
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		msg := err.Error()
		msg = strings.TrimPrefix(msg, "error converting YAML to JSON: ")
		msg = strings.TrimPrefix(msg, "yaml: ")
		msg = strings.TrimPrefix(msg, "unmarshal errors:")
		msg = strings.Join(strings.Fields(strings.ReplaceAll(msg, "\n", "; ")), " ")
		msg = strings.TrimPrefix(msg, "; ")
		if strings.Contains(msg, "found character that cannot start any token") && bytes.ContainsRune(data, '\t') {
			msg += " (YAML does not allow tabs for indentation: use spaces)"
		}
		l.add("", "not valid YAML: %s", scrub(redactIn(msg, collectSecrets(data))))
		return nil
	}
	j = bytes.TrimSpace(j)
	if len(j) == 0 || j[0] != '{' {
		l.add("", "must be a YAML mapping of keys to values, not %s", jsonKind(j))
		return nil
	}
	return j
}

func jsonKind(j []byte) string {
	if len(j) == 0 {
		return "nothing"
	}
	switch j[0] {
	case '[':
		return "a list"
	case '"':
		return "a string"
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	case '{':
		return "a mapping"
	}
	return "a number"
}

// decodeJSON decodes j into v, reporting a type mismatch as a field error
// that names the YAML path.
func decodeJSON(j []byte, v any, base string, l *errorList) bool {
	err := json.Unmarshal(j, v)
	if err == nil {
		return true
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		// encoding/json names the field by its JSON (here: YAML) keys, but
		// drops list indexes (the rke types give their own key or index),
		// and names an embedded struct's fields through its Go name.
		field := strings.ReplaceAll(te.Field, ".[", "[")
		field = strings.ReplaceAll(field, "rkeService.", "")
		field = joinPath(base, field)
		l.add(field, "must be %s, not %s", typeName(te.Type), valueName(te.Value))
		return false
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		l.add(base, "not valid: %v", err)
		return false
	}
	l.add(base, "%v", err)
	return false
}

// valueName names the kind encoding/json reports (also "string \"x\"" for
// a port) as YAML users know it.
func valueName(v string) string {
	switch v {
	case "array":
		return "a list"
	case "object":
		return "a mapping"
	case "string":
		return "a string"
	case "number":
		return "a number"
	case "bool":
		return "true or false"
	}
	return v
}

func typeName(t reflect.Type) string {
	if t == textType {
		return "a string, number or true/false"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int32, reflect.Int64, reflect.Uint16, reflect.Uint32:
		return "a whole number"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "a mapping"
		}
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping"
	case reflect.Pointer:
		return typeName(t.Elem())
	}
	return t.String()
}

// checkKeys reports every key of the mapping at path that is not in known.
// It returns the mapping (nil when the value is absent or not a mapping).
func checkKeys(raw json.RawMessage, path string, known []string, l *errorList) map[string]json.RawMessage {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		l.add(path, "must be a mapping, not %s", jsonKind(bytes.TrimSpace(raw)))
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if slices.Contains(known, k) {
			continue
		}
		hint := "not a field RKE knows; fix the spelling or remove it"
		if s := closest(k, known); s != "" {
			hint = fmt.Sprintf("not a field RKE knows; did you mean %q?", s)
		}
		l.add(joinPath(path, unknownName(k)), "%s", hint)
	}
	return m
}

// closest returns the known name nearest to s, when it is near enough to be
// a likely typo.
func closest(s string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(s, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
