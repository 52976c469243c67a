//go:build sandbox

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/atrest-io/atrest/api"
)

// runOut runs atrest with the sandbox's settings and returns its stdout
// apart from its logs on stderr: what a script reading -o json or -o yaml
// gets.
func runOut(t *testing.T, settings bool, args ...string) (code int, stdout string) {
	t.Helper()
	if settings {
		args = append(args, "--settings", sb.SettingsFile)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, atrest, args...)
	var out, logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &logs
	err := cmd.Run()
	noteOutput(t, out.String()+logs.String())
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String()
	} else if err != nil {
		t.Fatalf("atrest %v: %v", args, err)
	}
	return 0, out.String()
}

// decodeDoc decodes out, strictly (an unknown field is an error), as the
// documented document of kind.
func decodeDoc[T any](t *testing.T, format, kind, out string) T {
	t.Helper()
	var doc T
	var err error
	switch format {
	case "json":
		dec := json.NewDecoder(strings.NewReader(out))
		dec.DisallowUnknownFields()
		err = dec.Decode(&doc)
	case "yaml":
		err = yaml.UnmarshalStrict([]byte(out), &doc)
	}
	if err != nil {
		t.Fatalf("-o %s does not decode into api.%s: %v\n%s", format, kind, err, out)
	}
	var meta api.TypeMeta
	if err := yaml.Unmarshal([]byte(out), &meta); err != nil || meta != api.Meta(kind) {
		t.Fatalf("-o %s: kind and apiVersion %+v, want %+v (%v)", format, meta, api.Meta(kind), err)
	}
	return doc
}

// checkDocuments: `-o json` and `-o yaml` of status, plan, snapshot list
// and version decode into their documented types (package api), say the
// same as each other, and agree with what the text says, on a cluster in
// sync with config.
func checkDocuments(t *testing.T, config string) {
	t.Helper()
	var docs [2]struct {
		plan api.Plan
		list api.SnapshotList
		ver  api.VersionInfo
	}
	for i, format := range []string{"json", "yaml"} {
		code, out := runOut(t, true, "status", "--config", config, "-o", format)
		if code != 0 {
			t.Fatalf("status -o %s: exit %d:\n%s", format, code, out)
		}
		st := decodeDoc[api.Status](t, format, "Status", out)
		if len(st.Nodes) != len(sb.Nodes) || len(st.Keys) == 0 || len(st.Plan) != 0 || len(st.Snapshots) == 0 {
			t.Errorf("status -o %s: %d nodes, %d keys, plan %v, %d snapshots: want every node, the keyring, no plan, the snapshots", format, len(st.Nodes), len(st.Keys), st.Plan, len(st.Snapshots))
		}

		code, out = runOut(t, true, "plan", "--config", config, "-o", format)
		if code != 0 {
			t.Fatalf("plan -o %s: exit %d (in sync exits 0):\n%s", format, code, out)
		}
		docs[i].plan = decodeDoc[api.Plan](t, format, "Plan", out)
		if p := docs[i].plan; p.Transition != "" || len(p.Steps) != 0 || len(p.Nodes) != len(sb.Nodes) || p.Refused != "" {
			t.Errorf("plan -o %s of a cluster in sync: %+v", format, p)
		}

		code, out = runOut(t, true, "snapshot", "list", "-o", format)
		if code != 0 {
			t.Fatalf("snapshot list -o %s: exit %d:\n%s", format, code, out)
		}
		docs[i].list = decodeDoc[api.SnapshotList](t, format, "SnapshotList", out)
		_, text := runOut(t, true, "snapshot", "list")
		if n := len(docs[i].list.Snapshots); n != strings.Count(text, "\n") || n == 0 || !strings.HasPrefix(text, docs[i].list.Snapshots[0].Name+" ") {
			t.Errorf("snapshot list -o %s has %d snapshots, the text:\n%s", format, n, text)
		}

		code, out = runOut(t, false, "version", "-o", format)
		if code != 0 {
			t.Fatalf("version -o %s: exit %d:\n%s", format, code, out)
		}
		docs[i].ver = decodeDoc[api.VersionInfo](t, format, "Version", out)
		if docs[i].ver.Version == "" || !strings.HasPrefix(docs[i].ver.GoVersion, "go") {
			t.Errorf("version -o %s: %+v", format, docs[i].ver)
		}
	}
	if !reflect.DeepEqual(docs[0], docs[1]) {
		t.Errorf("-o json and -o yaml say different things:\n%+v\n%+v", docs[0], docs[1])
	}
	if code, out := runOut(t, false, "version", "-o", "xml"); code == 0 || out != "" {
		t.Errorf("version -o xml: exit %d, %q: want an error and nothing printed", code, out)
	}
}
