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
