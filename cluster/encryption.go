package cluster

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/apis/apiserver"
	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
	"k8s.io/apiserver/pkg/apis/apiserver/validation"
	"sigs.k8s.io/yaml"
)

// Mode is the kind of desired state of encryption at rest.
type Mode string

// The desired states cluster.yml can ask for.
const (
	// Disabled: no provider config, secrets stored as plain protobuf.
	Disabled Mode = "disabled"
	// Managed: atrest generates and rotates the keys (RKE's managed mode).
	Managed Mode = "managed"
	// Custom: the EncryptionConfiguration in custom_config, as given.
	Custom Mode = "custom"
)

// Desired is the state of encryption at rest that cluster.yml asks for.
type Desired struct {
	Mode Mode
	// Custom is the validated custom_config, for Mode Custom.
	Custom *EncryptionConfig
}

// EncryptionConfig is a strictly decoded and validated EncryptionConfiguration:
// a custom_config from cluster.yml or a provider file read from a node.
type EncryptionConfig struct {
	internal *apiserver.EncryptionConfiguration
	rendered []byte
}

// Render returns the config in canonical form: deterministic bytes for the
// same config, so their sha256 identifies it. The bytes hold key material.
func (c *EncryptionConfig) Render() []byte { return bytes.Clone(c.rendered) }

// Resources returns every resource the config names, in file order.
func (c *EncryptionConfig) Resources() []string {
	var out []string
	for _, r := range c.internal.Resources {
		out = append(out, r.Resources...)
	}
	return out
}

// Keys returns the keys written inline in the config (aescbc, aesgcm,
// secretbox), in order and without duplicates.
func (c *EncryptionConfig) Keys() []Key {
	var out []Key
	for _, r := range c.internal.Resources {
		for _, p := range r.Providers {
			prov, keys := providerKeys(p)
			for _, k := range keys {
				secret, _ := base64.StdEncoding.DecodeString(k.Secret)
				key := Key{Name: k.Name, Provider: prov, Secret: secret}
				if !slices.ContainsFunc(out, func(o Key) bool { return o.Name == key.Name && o.Provider == key.Provider }) {
					out = append(out, key)
				}
			}
		}
	}
	return out
}

// Providers describes each resource list's providers in order, as storage
// prefixes without key material: "secrets: aescbc:v1:k-abcde, identity".
func (c *EncryptionConfig) Providers() []string {
	var out []string
	for _, r := range c.internal.Resources {
		var ps []string
		for _, p := range r.Providers {
			ps = append(ps, describeProvider(p)...)
		}
		out = append(out, strings.Join(r.Resources, ",")+": "+strings.Join(ps, ", "))
	}
	return out
}

func describeProvider(p apiserver.ProviderConfiguration) []string {
	switch {
	case p.Identity != nil:
		return []string{"identity"}
	case p.KMS != nil:
		return []string{"kms:" + p.KMS.APIVersion + ":" + p.KMS.Name}
	}
	prov, keys := providerKeys(p)
	var out []string
	for _, k := range keys {
		out = append(out, string(prov)+":v1:"+k.Name)
	}
	return out
}

// configCodecs decodes EncryptionConfiguration exactly as kube-apiserver
// v1.31+ does: strict (unknown and duplicate fields are errors), with the
// v1 defaults applied. It is immutable once built.
var configCodecs = func() serializer.CodecFactory {
	s := runtime.NewScheme()
	if err := apiserver.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := apiserverv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict)
}()

// ParseEncryptionConfig strictly decodes and validates an
// EncryptionConfiguration (YAML or JSON) the way kube-apiserver does, without
// dialling KMS plugins, plus the checks kube-apiserver only makes when it
// starts (a KMS v1 provider without the KMSv1 feature gate) or not at all
// (the same key name twice in one provider list), and refuses what atrest
// cannot carry out: a wildcard resource, or a resource in two resource
// lists. file and base locate the config in errors; featureGates is
// kube-apiserver's --feature-gates value. Errors never contain key material.
func ParseEncryptionConfig(file, base string, data []byte, featureGates string) (*EncryptionConfig, error) {
	c, errs := parseEncryption(data, file, base, featureGates)
	if len(errs) > 0 {
		return nil, errs
	}
	return c, nil
}

func parseCustom(raw json.RawMessage, file, base string, extraArgs map[string]string) (*EncryptionConfig, Errors) {
	return parseEncryption(withTypeMeta(raw), file, base, extraArgs["feature-gates"])
}

// withTypeMeta gives a custom_config without apiVersion and kind the
// ones RKE's template puts before it in the provider file
// (templates.CustomEncryptionProviderFile), so it reads as RKE deploys it.
func withTypeMeta(raw json.RawMessage) json.RawMessage {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil || m == nil {
		return raw
	}
	_, hasVersion := m["apiVersion"]
	_, hasKind := m["kind"]
	if hasVersion || hasKind {
		return raw
	}
	m["apiVersion"] = json.RawMessage(`"` + apiserverv1.SchemeGroupVersion.String() + `"`)
	m["kind"] = json.RawMessage(`"EncryptionConfiguration"`)
	out, err := json.Marshal(m)
	if err != nil {
		return raw
	}
	return out
}

func parseEncryption(data []byte, file, base, featureGates string) (*EncryptionConfig, Errors) {
	l := &errorList{file: file}
	secrets := collectSecrets(data)
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		l.add(base, "not valid YAML: %s", redactIn(err.Error(), secrets))
		return nil, l.errs
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(j, &tm); err != nil {
		l.add(base, "must be an EncryptionConfiguration mapping, not %s", jsonKind(bytes.TrimSpace(j)))
		return nil, l.errs
	}
	want := apiserverv1.SchemeGroupVersion.String()
	if tm.APIVersion != want {
		l.add(joinPath(base, "apiVersion"), "must be %s, not %q", want, tm.APIVersion)
	}
	if tm.Kind != "EncryptionConfiguration" {
		l.add(joinPath(base, "kind"), "must be EncryptionConfiguration, not %q", tm.Kind)
	}
	if len(l.errs) > 0 {
		return nil, l.errs
	}

	obj, _, err := configCodecs.UniversalDecoder().Decode(j, nil, nil)
	if strict, ok := runtime.AsStrictDecodingError(err); ok {
		for _, e := range strict.Errors() {
			l.errs = append(l.errs, strictError(file, base, e.Error(), secrets))
		}
		return nil, l.errs
	}
	if err != nil {
		l.add(base, "%s", redactIn(err.Error(), secrets))
		return nil, l.errs
	}
	cfg, ok := obj.(*apiserver.EncryptionConfiguration)
	if !ok {
		l.add(base, "decodes to %T, not an EncryptionConfiguration", obj)
		return nil, l.errs
	}
	for _, fe := range validation.ValidateEncryptionConfiguration(cfg, false) {
		l.errs = append(l.errs, fieldError(file, base, fe))
	}
	checkResources(cfg, base, l)
	checkKeyNames(cfg, base, l)
	checkKMSv1(cfg, base, featureGates, l)
	if len(l.errs) > 0 {
		return nil, l.errs
	}
	rendered, err := renderInternal(cfg)
	if err != nil {
		l.add(base, "cannot be rendered: %v", err)
		return nil, l.errs
	}
	return &EncryptionConfig{internal: cfg, rendered: rendered}, nil
}

var strictFieldRE = regexp.MustCompile(`^(unknown|duplicate) field "(.*)"$`)

func strictError(file, base, msg string, secrets []string) *FieldError {
	if m := strictFieldRE.FindStringSubmatch(msg); m != nil {
		detail := "unknown field: EncryptionConfiguration apiserver.config.k8s.io/v1 has no such field; fix the spelling or remove it"
		if m[1] == "duplicate" {
			detail = "duplicate field: given twice; keep one"
		}
		segs := strings.Split(m[2], ".")
		for i := range segs {
			segs[i] = unknownName(segs[i])
		}
		return &FieldError{File: file, Field: joinPath(base, strings.Join(segs, ".")), Detail: detail}
	}
	return &FieldError{File: file, Field: base, Detail: redactIn(msg, secrets)}
}

var keyLenRE = regexp.MustCompile(`^secret is not of the expected length, got (\d+), expected one of \[(.*)\]$`)

// fieldError turns a validation error into a FieldError. It never includes
// the invalid value, which may be a key.
func fieldError(file, base string, fe *field.Error) *FieldError {
	detail := fe.Detail
	switch {
	case keyLenRE.MatchString(detail):
		m := keyLenRE.FindStringSubmatch(detail)
		detail = fmt.Sprintf("must decode to %s bytes (it decodes to %s)", orList(strings.Fields(m[2])), m[1])
	case detail == "secrets must be base64 encoded":
		detail = "must be standard base64 (for example the output of `head -c 32 /dev/urandom | base64`)"
	case fe.Type == field.ErrorTypeRequired:
		detail = "required: " + detail
	}
	return &FieldError{File: file, Field: joinPath(base, fe.Field), Detail: detail}
}

func orList(items []string) string {
	if len(items) <= 1 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " or " + items[len(items)-1]
}

// checkResources refuses the resources kube-apiserver accepts but atrest
// cannot carry out. kube-apiserver finds a resource's providers by its exact
// name, then its group's wildcard ("*.apps", "*." for the core group), then
// "*.*"; atrest counts and rewrites resources by name, under each one's
// storage prefix, and a wildcard names no prefix it could count (or, for
// "*.*", all of etcd). A resource in several lists gets the providers of
// every list, in order, where atrest's model (Chains) has one chain per
// resource. Repeats within one list are kube-apiserver's own error.
func checkResources(cfg *apiserver.EncryptionConfiguration, base string, l *errorList) {
	type seen struct {
		list int
		at   string
	}
	first := map[schema.GroupResource]seen{}
	for i, r := range cfg.Resources {
		for j, res := range r.Resources {
			here := fmt.Sprintf("resources[%d].resources[%d]", i, j)
			// Compared as kube-apiserver does: "secrets." is "secrets".
			gr := schema.ParseGroupResource(res)
			if gr.Resource == "*" || gr.Group == "*" {
				l.add(joinPath(base, here), "%q is a wildcard, and atrest cannot census or rewrite a wildcard: list the resources (for example secrets, configmaps) instead", res)
				continue
			}
			s, dup := first[gr]
			switch {
			case !dup:
				first[gr] = seen{list: i, at: here}
			case s.list != i:
				l.add(joinPath(base, here), "resource %q is also listed at %s; kube-apiserver gives it the providers of every list, in order; atrest models one list per resource: merge them into one list", res, s.at)
			}
		}
	}
}

// checkKeyNames rejects a key name used twice by the same provider type in
// one resource list (the storage prefix would name two keys, and which one
// kube-apiserver tries first is an accident of order), and a key name given
// other material, or another provider, anywhere else in the config: a key
// is its material, and values written under a name can be read only with
// the material they were written with. The same key (name and secret) in
// several resource lists is fine.
func checkKeyNames(cfg *apiserver.EncryptionConfiguration, base string, l *errorList) {
	type use struct {
		at       string
		provider Provider
		secret   string
	}
	byName := map[string]use{}
	for i, r := range cfg.Resources {
		seen := map[string]string{}
		for j, p := range r.Providers {
			prov, keys := providerKeys(p)
			for k, key := range keys {
				if key.Name == "" {
					continue
				}
				id := string(prov) + ":" + key.Name
				here := fmt.Sprintf("resources[%d].providers[%d].%s.keys[%d].name", i, j, prov, k)
				if first, dup := seen[id]; dup {
					l.add(joinPath(base, here), "key name %q is also used at %s; every %s key needs its own name", key.Name, first, prov)
					continue
				}
				seen[id] = here
				u, known := byName[key.Name]
				switch {
				case !known:
					byName[key.Name] = use{at: here, provider: prov, secret: key.Secret}
				case u.provider != prov:
					l.add(joinPath(base, here), "key name %q is used by %s here and by %s at %s; atrest keeps one key per name: give one of them another name", key.Name, prov, u.provider, u.at)
				case u.secret != key.Secret:
					l.add(joinPath(base, here), "key %q has other material here than at %s; a key is its material: give the new key a new name, and keep the old one as a reader until every object is rewritten", key.Name, u.at)
				}
			}
		}
	}
}

// checkKMSv1 rejects KMS v1 providers unless kube-apiserver runs with
// KMSv1=true: since v1.29 kube-apiserver refuses to start with them.
func checkKMSv1(cfg *apiserver.EncryptionConfiguration, base, featureGates string, l *errorList) {
	if featureGateOn(featureGates, "KMSv1") {
		return
	}
	for i, r := range cfg.Resources {
		for j, p := range r.Providers {
			if p.KMS != nil && p.KMS.APIVersion == "v1" {
				l.add(joinPath(base, fmt.Sprintf("resources[%d].providers[%d].kms.apiVersion", i, j)),
					"KMS v1 (the default when apiVersion is left out) is disabled in kube-apiserver since v1.29: set apiVersion: v2 with a KMS v2 plugin, or add KMSv1=true to services.kube-api.extra_args.feature-gates")
			}
		}
	}
}

func featureGateOn(gates, name string) bool {
	for g := range strings.SplitSeq(gates, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(g), "=")
		if k == name && strings.EqualFold(v, "true") {
			return true
		}
	}
	return false
}

// collectSecrets finds every "secret" value in a config so that decoder
// messages quoting the input can be scrubbed.
func collectSecrets(data []byte) []string {
	var out []string
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		// Fall back to a textual scan: the input is not YAML, but may still
		// hold something that looks like a key.
		for line := range strings.SplitSeq(string(data), "\n") {
			if _, v, ok := strings.Cut(line, "secret:"); ok {
				if v = strings.Trim(strings.TrimSpace(v), `"'`); v != "" {
					out = append(out, v)
				}
			}
		}
		return out
	}
	var v any
	if json.Unmarshal(j, &v) != nil {
		return nil
	}
	var walk func(any)
	walk = func(v any) {
		switch t := v.(type) {
		case map[string]any:
			for k, x := range t {
				if s, ok := x.(string); ok && k == "secret" && s != "" {
					out = append(out, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range t {
				walk(x)
			}
		}
	}
	walk(v)
	return out
}

func redactIn(msg string, secrets []string) string {
	for _, s := range secrets {
		msg = strings.ReplaceAll(msg, s, redacted)
	}
	return scrub(msg)
}

// renderInternal renders a decoded config in canonical v1 form.
func renderInternal(cfg *apiserver.EncryptionConfiguration) ([]byte, error) {
	var v1 apiserverv1.EncryptionConfiguration
	if err := apiserverv1.Convert_apiserver_EncryptionConfiguration_To_v1_EncryptionConfiguration(cfg, &v1, nil); err != nil {
		return nil, err
	}
	return marshalV1(&v1)
}

func marshalV1(c *apiserverv1.EncryptionConfiguration) ([]byte, error) {
	c.APIVersion = apiserverv1.SchemeGroupVersion.String()
	c.Kind = "EncryptionConfiguration"
	return yaml.Marshal(c)
}
