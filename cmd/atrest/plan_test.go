package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/atrest-io/atrest/reconciler"
)

func TestPrintPreflight(t *testing.T) {
	sudo := reconciler.PreflightCheck{Subject: "node cp1", What: "sudo"}
	denied := reconciler.PreflightCheck{Subject: "resource configmaps", What: "list, get, update across all namespaces",
		Problem: "system:serviceaccount:atrest:atrest may not list, get, update configmaps across all namespaces: add configmaps to the chart's rbac.extraResources"}
	socket := reconciler.PreflightCheck{Subject: "node cp2", What: "KMS socket unix:///k.sock", Problem: "no socket at /k.sock on the node"}
	for _, tc := range []struct {
		name   string
		checks []reconciler.PreflightCheck
		code   int
		out    []string
		err    string
	}{
		{"passed", []reconciler.PreflightCheck{sudo, sudo}, exitChanges, []string{"preflight: 2 checks passed\n"}, ""},
		{"one line per failed check", []reconciler.PreflightCheck{sudo, denied, socket}, exitError,
			[]string{"preflight failed: " + denied.String() + "\n", "preflight failed: " + socket.String() + "\n"},
			"error: plan refused (PreflightFailed): 2 of 3 preflight checks failed; apply would change nothing until they pass"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := printPreflight(&out, reconciler.PreflightResult{Checks: tc.checks})
			var ec *exitCodeError
			if !errors.As(err, &ec) || ec.code != tc.code {
				t.Fatalf("exit %v, want code %d", err, tc.code)
			}
			if tc.err != "" && (ec.err == nil || ec.err.Error() != tc.err) {
				t.Errorf("error %v, want %q", ec.err, tc.err)
			}
			for _, want := range tc.out {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output does not say %q:\n%s", want, out.String())
				}
			}
			if strings.Contains(out.String(), "sudo") {
				t.Errorf("a passed check printed:\n%s", out.String())
			}
		})
	}
}
