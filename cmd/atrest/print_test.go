package main

import (
	"bytes"
	"encoding/json"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/atrest-io/atrest/api"
	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/keystore"
	"github.com/atrest-io/atrest/reconciler"
)

// strictDecode decodes out as format into v, refusing unknown fields.
func strictDecode(format, out string, v any) error {
	if format == "yaml" {
		return yaml.UnmarshalStrict([]byte(out), v)
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// TestPrinter: each document -o prints decodes, strictly, back into its
// type in package api, with its kind and apiVersion, identically from json
// and yaml; text is the text function's.
func TestPrinter(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	st := &reconciler.Status{
		Census:       map[string]map[string]int64{"secrets": {"aescbc:v1:k-abcde": 12, "identity": 1}},
		LastRotation: now.Add(-time.Hour),
		Keys:         []keystore.KeyInfo{{Name: "k-abcde", Provider: "aescbc", Role: keystore.RolePrimary, Created: now, Fingerprint: "sha256:0011"}},
		Daemons:      []keystore.DaemonState{{Instance: "atrest-0", Heartbeat: now, Interval: time.Minute, Result: "in-sync"}},
	}
	ms := []etcdsnap.Manifest{{Name: "snap-1", Time: now, Cluster: "local", Reason: "before rotate", Size: 1024, SHA256: "ab"}}
	for _, tt := range []struct {
		kind string
		doc  any
		into func() any
	}{
		{"Status", statusDoc(st, now), func() any { return new(api.Status) }},
		{"Plan", planDoc("managed", "cluster.yml", reconciler.Live{}, &reconciler.Plan{}, nil, nil), func() any { return new(api.Plan) }},
		{"SnapshotList", snapshotListDoc(ms), func() any { return new(api.SnapshotList) }},
		{"Version", api.VersionInfo{TypeMeta: api.Meta("Version"), Version: "v1"}, func() any { return new(api.VersionInfo) }},
	} {
		var got [2]any
		for i, format := range []string{"json", "yaml"} {
			var b bytes.Buffer
			if err := printDoc(&b, format, tt.doc, nil); err != nil {
				t.Fatalf("%s -o %s: %v", tt.kind, format, err)
			}
			got[i] = tt.into()
			if err := strictDecode(format, b.String(), got[i]); err != nil {
				t.Fatalf("%s -o %s does not decode into its type: %v\n%s", tt.kind, format, err, b.String())
			}
			var meta api.TypeMeta
			if err := yaml.Unmarshal(b.Bytes(), &meta); err != nil || meta != api.Meta(tt.kind) {
				t.Errorf("%s -o %s: %+v, want %+v", tt.kind, format, meta, api.Meta(tt.kind))
			}
		}
		if !reflect.DeepEqual(got[0], got[1]) {
			t.Errorf("%s: json and yaml differ:\n%+v\n%+v", tt.kind, got[0], got[1])
		}
	}
	var b bytes.Buffer
	if err := printDoc(&b, "text", api.Meta("Version"), func(w io.Writer) error {
		_, err := io.WriteString(w, "the text\n")
		return err
	}); err != nil || b.String() != "the text\n" {
		t.Errorf("-o text: %q, %v: want the text function's output", b.String(), err)
	}
}

// TestVersionOutput: version prints each format, and refuses another.
func TestVersionOutput(t *testing.T) {
	for _, format := range []string{"json", "yaml"} {
		code, out, stderr := runCLI(t, "version", "-o", format)
		var v api.VersionInfo
		if err := strictDecode(format, out, &v); code != 0 || err != nil || v.TypeMeta != api.Meta("Version") || v.Version == "" {
			t.Errorf("version -o %s: exit %d, %v, %+v\n%s%s", format, code, err, v, out, stderr)
		}
	}
	if code, out, _ := runCLI(t, "version"); code != 0 || !strings.HasPrefix(out, "atrest ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
	if code, out, stderr := runCLI(t, "version", "-o", "xml"); code == 0 || out != "" || !strings.Contains(stderr, "--output \"xml\": use text, json or yaml") {
		t.Errorf("version -o xml: exit %d, %q, %q", code, out, stderr)
	}
}
