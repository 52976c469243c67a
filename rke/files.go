package rke

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"

	"github.com/atrest-io/atrest/cluster"
)

// ClusterYML returns the cluster.yml data with its
// services.kube-api.secrets_encryption_config replaced: enabled, with
// cfg as custom_config, when atrest runs cfg; disabled when cfg is nil.
// With reload, services.kube-api.extra_args gets
// encryption-provider-config-automatic-reload: "true" unless it sets the
// flag already, so that RKE's kube-apiserver is the one atrest runs and
// is not replaced. Everything else, comments included, is kept. The
// result holds key material: write it 0600, never to Git.
func ClusterYML(data []byte, cfg *cluster.EncryptionConfig, reload bool) ([]byte, error) {
	var doc yamlv3.Node
	if err := yamlv3.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("cluster.yml is not YAML: %w", err)
	}
	if doc.Kind != yamlv3.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yamlv3.MappingNode {
		return nil, errors.New("cluster.yml is not a mapping")
	}
	services, err := child(doc.Content[0], "services")
	if err != nil {
		return nil, err
	}
	kubeAPI, err := child(services, "kube-api")
	if err != nil {
		return nil, err
	}
	enc := &yamlv3.Node{Kind: yamlv3.MappingNode, Tag: "!!map"}
	enabled := cfg != nil
	enc.Content = append(enc.Content, scalar("enabled"), &yamlv3.Node{Kind: yamlv3.ScalarNode, Tag: "!!bool", Value: fmt.Sprint(enabled)})
	if cfg != nil {
		body, err := customBody(cfg)
		if err != nil {
			return nil, err
		}
		var custom yamlv3.Node
		if err := yamlv3.Unmarshal(body, &custom); err != nil {
			return nil, fmt.Errorf("encode custom_config: %w", err)
		}
		plainStyle(&custom)
		enc.Content = append(enc.Content, scalar("custom_config"), custom.Content[0])
	}
	set(kubeAPI, "secrets_encryption_config", enc)
	if reload {
		args, err := child(kubeAPI, "extra_args")
		if err != nil {
			return nil, err
		}
		if get(args, cluster.FlagAutomaticReload) == nil {
			set(args, cluster.FlagAutomaticReload, &yamlv3.Node{Kind: yamlv3.ScalarNode, Tag: "!!str", Value: "true", Style: yamlv3.DoubleQuotedStyle})
		}
	}
	var b bytes.Buffer
	e := yamlv3.NewEncoder(&b)
	e.SetIndent(2)
	if err := e.Encode(&doc); err != nil {
		return nil, err
	}
	if err := e.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func scalar(s string) *yamlv3.Node {
	return &yamlv3.Node{Kind: yamlv3.ScalarNode, Tag: "!!str", Value: s}
}

// plainStyle drops the flow style JSON decoding leaves, so custom_config
// reads like the rest of the file.
func plainStyle(n *yamlv3.Node) {
	n.Style &^= yamlv3.FlowStyle
	if n.Kind == yamlv3.ScalarNode && n.Tag == "!!str" {
		n.Style = 0
	}
	for _, c := range n.Content {
		plainStyle(c)
	}
}

// get returns the value of key in mapping m, nil when absent.
func get(m *yamlv3.Node, key string) *yamlv3.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// set sets key in mapping m to v, appending it when absent.
func set(m *yamlv3.Node, key string, v *yamlv3.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = v
			return
		}
	}
	m.Content = append(m.Content, scalar(key), v)
}

// child returns the mapping under key in m, created when absent or null.
func child(m *yamlv3.Node, key string) (*yamlv3.Node, error) {
	v := get(m, key)
	if v == nil || v.Kind == yamlv3.ScalarNode && v.Tag == "!!null" {
		v = &yamlv3.Node{Kind: yamlv3.MappingNode, Tag: "!!map"}
		set(m, key, v)
	}
	if v.Kind != yamlv3.MappingNode {
		return nil, fmt.Errorf("cluster.yml: %s must be a mapping", key)
	}
	return v, nil
}

// The fields of RKE's state (cluster.FullState) that hold encryption
// keys: the provider file of each state, and the custom_config of each
// state's copy of cluster.yml.
var stateKeyFields = [][]string{
	{"currentState", "encryptionConfig"},
	{"desiredState", "encryptionConfig"},
	{"currentState", "rkeConfig", "services", "kubeApi", "secretsEncryptionConfig", "customConfig"},
	{"desiredState", "rkeConfig", "services", "kubeApi", "secretsEncryptionConfig", "customConfig"},
}

// PrepareState returns RKE's state (the cluster.rkestate data) as it would
// be had RKE itself last deployed providerFile ("" for none): that file
// in currentState and desiredState, and encryption enabled (or not) in
// currentState's cluster.yml. Handed a cluster.yml from ClusterYML, `rke
// up` then finds the encryption config unchanged: it deploys the same
// config again, and neither restarts kube-apiserver nor rewrites secrets
// for encryption's sake (rancher/rke ReconcileEncryptionProviderConfig).
func PrepareState(state []byte, providerFile string) ([]byte, error) {
	doc, err := decodeState(state)
	if err != nil {
		return nil, err
	}
	cur, ok := doc["currentState"].(map[string]any)
	if !ok || cur["rkeConfig"] == nil {
		return nil, errors.New("the state has no currentState.rkeConfig: `rke up` has not brought this cluster up yet, so atrest cannot run it")
	}
	for _, f := range stateKeyFields[:2] {
		st, _ := doc[f[0]].(map[string]any)
		if st == nil {
			st = map[string]any{}
			doc[f[0]] = st
		}
		if providerFile == "" {
			delete(st, f[1])
		} else {
			st[f[1]] = providerFile
		}
	}
	sec, err := path(cur, "rkeConfig", "services", "kubeApi", "secretsEncryptionConfig")
	if err != nil {
		return nil, err
	}
	sec["enabled"] = providerFile != ""
	return encodeState(doc)
}

// StripState returns RKE's state without any of the fields that hold
// keys, and the fields it removed ("currentState.encryptionConfig", ...).
func StripState(state []byte) ([]byte, []string, error) {
	doc, err := decodeState(state)
	if err != nil {
		return nil, nil, err
	}
	var removed []string
	for _, f := range stateKeyFields {
		m := doc
		for _, k := range f[:len(f)-1] {
			m, _ = m[k].(map[string]any)
			if m == nil {
				break
			}
		}
		last := f[len(f)-1]
		if m == nil {
			continue
		}
		if _, ok := m[last]; ok {
			delete(m, last)
			removed = append(removed, strings.Join(f, "."))
		}
	}
	out, err := encodeState(doc)
	return out, removed, err
}

// HoldsKeys reports whether RKE's state has a field that holds keys.
func HoldsKeys(state []byte) (bool, error) {
	_, removed, err := StripState(state)
	return len(removed) > 0, err
}

// path returns the mapping at keys under m, creating what is missing.
func path(m map[string]any, keys ...string) (map[string]any, error) {
	for i, k := range keys {
		v, ok := m[k]
		if !ok || v == nil {
			n := map[string]any{}
			m[k] = n
			m = n
			continue
		}
		n, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("the state's %s is not an object", strings.Join(keys[:i+1], "."))
		}
		m = n
	}
	return m, nil
}

// decodeState decodes the state keeping numbers as written.
func decodeState(state []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(state))
	d.UseNumber()
	var doc map[string]any
	if err := d.Decode(&doc); err != nil {
		return nil, fmt.Errorf("not an RKE state file (JSON): %w", err)
	}
	if doc == nil || !slices.ContainsFunc([]string{"currentState", "desiredState"}, func(k string) bool { _, ok := doc[k]; return ok }) {
		return nil, errors.New("not an RKE state file: no currentState or desiredState")
	}
	return doc, nil
}

// encodeState encodes the state as RKE writes it (FullState.WriteStateFile:
// json.MarshalIndent with two spaces).
func encodeState(doc map[string]any) ([]byte, error) {
	return json.MarshalIndent(doc, "", "  ")
}
