package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"

	yamlv2 "go.yaml.in/yaml/v2"
	"sigs.k8s.io/yaml"
)

// RKE reads cluster.yml in rancher/rke cluster.ParseConfig:
//
//   - resolveCustomEncryptionConfig decodes the whole file with
//     github.com/ghodss/yaml into map[string]interface{}; when
//     secrets_encryption_config.custom_config is a mapping, it deletes it and
//     encodes the file again. Every scalar has then been through JSON: `1.0`
//     is 1, `yes` is true, `0x10` is 16.
//   - gopkg.in/yaml.v2 (v2.4.0) decodes the result, non-strictly, into RKE's
//     types. A string field takes any scalar as the text it is written with
//     (`v: 4` is "4", `max-pods: 250` is "250", `x: yes` is "yes"), null as
//     "", and a list or mapping is an error ("cannot unmarshal !!seq into
//     string").
//
// RKE's own documented cluster.yml writes extra_args as numbers, so atrest
// reads them the same way, with the same libraries: go.yaml.in/yaml/v2 is
// gopkg.in/yaml.v2 v2.4.0 under its new module path, and sigs.k8s.io/yaml
// is the maintained fork of github.com/ghodss/yaml. Parse decodes the file
// twice: from JSON first, where a value of the wrong type is reported by
// its YAML path (the types below accept any scalar there), then with
// decodeAsRKE for the values.

// decodeAsRKE decodes data into raw as RKE does. The JSON decode has already
// checked every type, so a failure here is a corner where the decoders
// differ; it is reported with yaml.v2's line number.
func decodeAsRKE(data []byte, raw *rawConfig, l *errorList) bool {
	doc, err := rkeDocument(data)
	if err == nil {
		err = yamlv2.Unmarshal(doc, raw)
	}
	if err != nil {
		msg := strings.TrimPrefix(flatten(err.Error()), "yaml: unmarshal errors: ")
		l.add("", "RKE cannot read this file: %s", rkeTypeRE.ReplaceAllStringFunc(redactQuoted(msg), yamlTypeName))
		return false
	}
	return true
}

// yaml.v2 names the Go type it decodes into; name RKE's instead.
var rkeTypeRE = regexp.MustCompile(`\bcluster\.[A-Za-z]+`)

func yamlTypeName(goType string) string {
	switch goType {
	case "cluster.rkeString", "cluster.rkeSecret":
		return "string"
	case "cluster.rkeList":
		return "[]string"
	case "cluster.rkeArgs":
		return "map[string]string"
	case "cluster.rkeArgsArray":
		return "map[string][]string"
	}
	return "a mapping"
}

// rkeDocument is the YAML that RKE's typed decode reads: the file itself,
// or, when custom_config is a mapping, the file re-encoded without it
// (rancher/rke cluster.resolveCustomEncryptionConfig, step for step).
func rkeDocument(data []byte) ([]byte, error) {
	var r map[string]any
	if err := yaml.Unmarshal(data, &r); err != nil {
		return nil, err
	}
	services, _ := r["services"].(map[string]any)
	kubeAPI, _ := services["kube-api"].(map[string]any)
	sec, _ := kubeAPI["secrets_encryption_config"].(map[string]any)
	if cc, ok := sec["custom_config"].(map[string]any); !ok || cc == nil {
		return data, nil
	}
	delete(sec, "custom_config")
	return yaml.Marshal(r)
}

// yaml.v2 quotes the scalar it could not decode between backquotes; it may
// be an inline key.
var quotedRE = regexp.MustCompile("`[^`]*`")

func redactQuoted(msg string) string { return quotedRE.ReplaceAllString(msg, "(value not shown)") }

func flatten(msg string) string { return strings.Join(strings.Fields(msg), " ") }

// The fields RKE types as strings, lists of strings and maps of them. For
// the JSON decode they accept any scalar and refuse a list or mapping in
// its place, naming the key or index; yaml.v2 decodes them by their kind,
// as plain strings, maps and slices.
type (
	rkeString    string
	rkeList      []string
	rkeArgs      map[string]string
	rkeArgsArray map[string][]string
	// rkeSecret is an inline SSH key or certificate: an rkeString that is
	// never shown.
	rkeSecret string
)

// rkeService is RKE's BaseService, the part every service shares.
type rkeService struct {
	Image             rkeString    `json:"image" yaml:"image"`
	ExtraArgs         rkeArgs      `json:"extra_args" yaml:"extra_args"`
	ExtraArgsArray    rkeArgsArray `json:"extra_args_array" yaml:"extra_args_array"`
	ExtraBinds        rkeList      `json:"extra_binds" yaml:"extra_binds"`
	ExtraEnv          rkeList      `json:"extra_env" yaml:"extra_env"`
	WinExtraArgs      rkeArgs      `json:"win_extra_args" yaml:"win_extra_args"`
	WinExtraArgsArray rkeArgsArray `json:"win_extra_args_array" yaml:"win_extra_args_array"`
	WinExtraBinds     rkeList      `json:"win_extra_binds" yaml:"win_extra_binds"`
	WinExtraEnv       rkeList      `json:"win_extra_env" yaml:"win_extra_env"`
}

var (
	textType     = reflect.TypeFor[rkeString]()
	listType     = reflect.TypeFor[rkeList]()
	mappingType  = reflect.TypeFor[rkeArgs]()
	jsonNullText = []byte("null")
)

func (s *rkeString) UnmarshalJSON(b []byte) error {
	v, err := scalarText(b)
	if err != nil {
		return err
	}
	*s = rkeString(v)
	return nil
}

func (s *rkeSecret) UnmarshalJSON(b []byte) error {
	v, err := scalarText(b)
	if err != nil {
		return err
	}
	*s = rkeSecret(v)
	return nil
}

func (rkeSecret) String() string   { return redacted }
func (rkeSecret) GoString() string { return redacted }

func (s *rkeList) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, jsonNullText) {
		*s = nil
		return nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(b, &items); err != nil {
		return &json.UnmarshalTypeError{Value: jsonKindName(b), Type: listType}
	}
	out := make(rkeList, len(items))
	for i, item := range items {
		v, err := scalarText(item)
		if err != nil {
			err.Field = fmt.Sprintf("[%d]", i)
			return err
		}
		out[i] = v
	}
	*s = out
	return nil
}

func (m *rkeArgs) UnmarshalJSON(b []byte) error {
	items, err := mappingItems(b)
	if err != nil || items == nil {
		*m = nil
		return err
	}
	out := make(rkeArgs, len(items))
	for _, k := range sortedKeys(items) {
		v, err := scalarText(items[k])
		if err != nil {
			err.Field = k
			return err
		}
		out[k] = v
	}
	*m = out
	return nil
}

func (m *rkeArgsArray) UnmarshalJSON(b []byte) error {
	items, err := mappingItems(b)
	if err != nil || items == nil {
		*m = nil
		return err
	}
	out := make(rkeArgsArray, len(items))
	for _, k := range sortedKeys(items) {
		var list rkeList
		if err := list.UnmarshalJSON(items[k]); err != nil {
			if te, ok := err.(*json.UnmarshalTypeError); ok {
				te.Field = k + te.Field
			}
			return err
		}
		out[k] = list
	}
	*m = out
	return nil
}

// mappingItems splits a JSON object; nil for null.
func mappingItems(b []byte) (map[string]json.RawMessage, error) {
	if bytes.Equal(b, jsonNullText) {
		return nil, nil
	}
	var items map[string]json.RawMessage
	if err := json.Unmarshal(b, &items); err != nil {
		return nil, &json.UnmarshalTypeError{Value: jsonKindName(b), Type: mappingType}
	}
	return items, nil
}

func sortedKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// scalarText is a JSON scalar's text ("" for null), or a type error for a
// list or mapping.
func scalarText(b []byte) (string, *json.UnmarshalTypeError) {
	b = bytes.TrimSpace(b)
	switch {
	case len(b) == 0 || bytes.Equal(b, jsonNullText):
		return "", nil
	case b[0] == '"':
		var s string
		if json.Unmarshal(b, &s) != nil {
			return "", &json.UnmarshalTypeError{Value: "string", Type: textType}
		}
		return s, nil
	case b[0] == '[' || b[0] == '{':
		return "", &json.UnmarshalTypeError{Value: jsonKindName(b), Type: textType}
	}
	return string(b), nil
}

// jsonKindName names a JSON value's kind the way encoding/json's
// UnmarshalTypeError does.
func jsonKindName(b []byte) string {
	switch b = bytes.TrimSpace(b); {
	case len(b) == 0:
		return "nothing"
	case b[0] == '[':
		return "array"
	case b[0] == '{':
		return "object"
	case b[0] == '"':
		return "string"
	case b[0] == 't' || b[0] == 'f':
		return "bool"
	case b[0] == 'n':
		return "null"
	}
	return "number"
}
