package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSnapshotCommandsRefuseBadInput: a typo is an error, before any
// settings or Vault are needed.
func TestSnapshotCommandsRefuseBadInput(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"snapshot", "verify", "--decrypt", "-o", "table", "etcd-1"}, `--output "table": use text, json or yaml`},
		{[]string{"snapshot", "verify", "--decrypt"}, "accepts 1 arg(s), received 0"},
		{[]string{"snapshot", "remove"}, "accepts 1 arg(s), received 0"},
		{[]string{"snapshot", "remove", "a", "b"}, "accepts 1 arg(s), received 2"},
	} {
		code, _, stderr := runCLI(t, tt.args...)
		if code != exitError || !strings.Contains(stderr, tt.want) {
			t.Errorf("%v: exit %d, %s; want %d and %q", tt.args, code, stderr, exitError, tt.want)
		}
	}
}

// TestUnknownSubcommand: a typo in a command group is an error a script
// can see, not the group's help and exit 0.
func TestUnknownSubcommand(t *testing.T) {
	for _, args := range [][]string{
		{"snapshot", "drill", "x"},
		{"snapshot", "lst"},
		{"keys", "destroy"},
		{"rke", "cert", "bogus"},
		{"rke", "upp"},
		{"completion", "tcsh"},
		{"bogus"},
	} {
		code, stdout, stderr := runCLI(t, args...)
		if code != exitError || !strings.Contains(stderr, "unknown command") || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d and unknown command", args, code, stdout, stderr, exitError)
		}
	}
	if code, _, stderr := runCLI(t, "snapshot", "lst"); !strings.Contains(stderr, `"list"`) {
		t.Errorf("snapshot lst: exit %d, %s; want list suggested", code, stderr)
	}
	// The group alone is its help.
	if code, stdout, _ := runCLI(t, "snapshot"); code != exitOK || !strings.Contains(stdout, "Available Commands") {
		t.Errorf("snapshot: exit %d, %s", code, stdout)
	}
}

// TestCompletion: the shells' scripts, and snapshot names completed from
// snapshots.dir, the cluster's own only.
func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if code, stdout, stderr := runCLI(t, "completion", shell); code != exitOK || !strings.Contains(stdout, "atrest") {
			t.Errorf("completion %s: exit %d, %d bytes, %s", shell, code, len(stdout), stderr)
		}
	}
	dir := t.TempDir()
	for _, m := range []struct{ name, cluster string }{{"etcd-20261201T000000.000Z", "demo"}, {"etcd-20261202T000000.000Z", "demo"}, {"etcd-other", "other"}, {"manual-1", "demo"}} {
		data, _ := json.Marshal(map[string]any{"format": 1, "name": m.name, "cluster": m.cluster, "time": time.Now().UTC(), "reason": "manual",
			"size": 10, "sha256": strings.Repeat("0", 64)})
		if err := os.WriteFile(filepath.Join(dir, m.name+".json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, cmd := range []string{"verify", "remove", "restore-config"} {
		code, stdout, stderr := runCLI(t, "__complete", "snapshot", cmd, "--cluster-name", "demo", "--snapshots-dir", dir, "etcd-")
		var got []string
		for _, line := range strings.Split(stdout, "\n") {
			if name, _, ok := strings.Cut(line, "\t"); ok {
				got = append(got, name)
			}
		}
		if code != exitOK || !slices.Equal(got, []string{"etcd-20261202T000000.000Z", "etcd-20261201T000000.000Z"}) || !strings.Contains(stdout, ":4") {
			t.Errorf("complete snapshot %s etcd-: exit %d, %q (%s); want the two demo snapshots, newest first, no file completion", cmd, code, stdout, stderr)
		}
	}
}

// TestHelpShowsOwnFlags: a command's help lists its own flags; the
// settings' flags, which it still takes, are listed once by options.
func TestHelpShowsOwnFlags(t *testing.T) {
	code, stdout, _ := runCLI(t, "plan", "--help")
	if code != exitOK || !strings.Contains(stdout, "--config") || strings.Contains(stdout, "--vault-address") || !strings.Contains(stdout, `Use "atrest options"`) {
		t.Errorf("plan --help: exit %d:\n%s", code, stdout)
	}
	code, stdout, _ = runCLI(t, "options")
	if code != exitOK || !strings.Contains(stdout, "--vault-address") || !strings.Contains(stdout, "ATREST_VAULT_ADDRESS") || !strings.Contains(stdout, "--snapshots-drill-interval") {
		t.Errorf("options: exit %d:\n%s", code, stdout)
	}
	// Hidden, not gone: a settings flag still counts, and names itself.
	code, _, stderr := runCLI(t, "snapshot", "list", "--snapshots-dir", "")
	if code != exitError || !strings.Contains(stderr, "snapshots.dir") {
		t.Errorf("snapshot list without snapshots.dir: exit %d, %s", code, stderr)
	}
}
