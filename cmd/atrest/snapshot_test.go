package main

import (
	"strings"
	"testing"
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
