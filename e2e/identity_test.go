//go:build sandbox

package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/atrest-io/atrest/sandbox"
)

// TestIdentity: the cluster is the one cluster.name pins, whatever a
// cluster.yml says. A cluster.yml of another cluster (or of RKE's unnamed
// "local") is refused by every command that would open a keyring, before
// it opens anything: exit 2, both names in the output, and nothing changed
// (no keyring under the other name, no document in Vault moved, no node's
// provider file or kube-apiserver container touched). Each refusal costs a
// process start: nothing here reaches a node.
func TestIdentity(t *testing.T) {
	// A shell that sourced the sandbox's env sets it; here the settings
	// file is the one source under test.
	t.Setenv("ATREST_CLUSTER_NAME", "")
	const elsewhere = "atrest-elsewhere"

	// Control: the sandbox's own cluster.yml passes the check (plan
	// exits 0 or 1, not 2), so the refusals below are the check's doing.
	if code, out := run(t, "plan", "--config", sb.ClusterYML); code == exitErr {
		t.Fatalf("plan of the sandbox's own cluster.yml: exit %d:\n%s", code, out)
	}

	// Encryption on in each: had the check let one through, apply would
	// make a keyring under the other name, which the end of the test sees.
	ours := clusterFile(t, "ours.yml", managedBlock)
	other := renamed(t, ours, "other.yml", "cluster_name: "+elsewhere+"\n")
	unnamed := renamed(t, ours, "unnamed.yml", "")

	vaultBefore, nodesBefore, containersBefore := vaultDocs(t), nodeFiles(t), apiserverContainers(t)
	pinned := fmt.Sprintf("but this atrest manages cluster.name %q (from settings file %s)", sandbox.ClusterName, sb.SettingsFile)
	for _, tt := range []struct {
		name   string
		config string
		flags  []string
		says   string
	}{
		{"another cluster_name", other, nil, fmt.Sprintf("cluster_name: is %q, %s", elsewhere, pinned)},
		{"no cluster_name, so RKE's local", unnamed, nil, `cluster_name: is not set, so RKE names the cluster "local", ` + pinned},
		{"another cluster.name by flag", ours, []string{"--cluster-name", elsewhere},
			fmt.Sprintf("cluster_name: is %q, but this atrest manages cluster.name %q (from flag --cluster-name)", sandbox.ClusterName, elsewhere)},
	} {
		for _, cmd := range [][]string{{"plan"}, {"apply"}, {"rotate-key"}, {"status"}, {"adopt"}, {"snapshot", "save"}} {
			t.Run(tt.name+"/"+strings.Join(cmd, " "), func(t *testing.T) {
				args := append(slices.Clone(cmd), "--config", tt.config)
				code, out := run(t, append(args, tt.flags...)...)
				if code != exitErr {
					t.Errorf("exit %d, want %d:\n%s", code, exitErr, out)
				}
				if want := tt.config + ": " + tt.says; !strings.Contains(out, want) {
					t.Errorf("output does not say %q:\n%s", want, out)
				}
				if !strings.Contains(out, "nothing was opened or changed") {
					t.Errorf("output does not say that nothing changed:\n%s", out)
				}
			})
		}
	}

	vaultAfter := vaultDocs(t)
	for doc := range vaultAfter {
		if strings.HasPrefix(doc, elsewhere+"/") || strings.HasPrefix(doc, "local/") {
			t.Errorf("a document appeared in Vault under another cluster's name: %s", doc)
		}
	}
	if !maps.Equal(vaultBefore, vaultAfter) {
		t.Errorf("Vault changed:\nbefore %v\nafter  %v", vaultBefore, vaultAfter)
	}
	if nodeFiles(t) != nodesBefore {
		t.Error("a node's provider file changed")
	}
	if got := apiserverContainers(t); !slices.Equal(got, containersBefore) {
		t.Errorf("a kube-apiserver container was replaced: before %v, after %v", containersBefore, got)
	}
}

// exitErr is atrest's exit code for "could not do it".
const exitErr = 2

// renamed writes the cluster.yml at from with its cluster_name line replaced
// by line ("" removes it).
func renamed(t *testing.T, from, name, line string) string {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	old := "cluster_name: " + sandbox.ClusterName + "\n"
	if !strings.Contains(string(data), old) {
		t.Fatalf("the sandbox's cluster.yml has no %q line to replace:\n%s", old, data)
	}
	file := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(file, []byte(strings.Replace(string(data), old, line, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// vaultDocs is every document atrest keeps in the sandbox's Vault (under
// the sandbox settings' secret/atrest), by path below the prefix, with its
// current version and update time: any write shows.
func vaultDocs(t *testing.T) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := sb.VaultClient()
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]string{}
	var walk func(dir string)
	walk = func(dir string) {
		list, err := c.Logical().ListWithContext(ctx, "secret/metadata/atrest/"+dir)
		if err != nil {
			t.Fatalf("list secret/metadata/atrest/%s: %v", dir, err)
		}
		if list == nil {
			return
		}
		keys, _ := list.Data["keys"].([]any)
		for _, k := range keys {
			name := dir + fmt.Sprint(k)
			if strings.HasSuffix(name, "/") {
				walk(name)
				continue
			}
			meta, err := c.Logical().ReadWithContext(ctx, "secret/metadata/atrest/"+name)
			if err != nil || meta == nil {
				t.Fatalf("read secret/metadata/atrest/%s: %v", name, err)
			}
			docs[name] = fmt.Sprintf("v%v %v", meta.Data["current_version"], meta.Data["updated_time"])
		}
	}
	walk("")
	return docs
}

// apiserverContainers is the id of every node's kube-apiserver container:
// atrest replaces it to change the flag.
func apiserverContainers(t *testing.T) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var ids []string
	for i := range sb.Nodes {
		out, err := sb.Docker(ctx, i, "inspect", "--format", "{{.Id}}", "kube-apiserver")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, strings.TrimSpace(out))
	}
	return ids
}
