package main

import (
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/atrest-io/atrest/reconciler"
	"github.com/atrest-io/atrest/settings"
)

// Every policy setting reaches the planner's limits: a setting that did not
// would leave its bound at the zero Limits, or at nothing.
func TestLimitsFromSettings(t *testing.T) {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	l := settings.Bind(fs)
	if err := fs.Parse([]string{"--policy-min-rotation-interval", "10s", "--policy-min-snapshot-retention", "3",
		"--policy-allow-disable", "--policy-allow-custom-config=false", "--policy-allow-kms=false"}); err != nil {
		t.Fatal(err)
	}
	s, err := l.Load()
	if err != nil {
		t.Fatal(err)
	}
	want := reconciler.Limits{MinRotationInterval: 10 * time.Second, MinSnapshotRetention: 3, AllowDisable: true}
	if got := limits(s); got != want {
		t.Errorf("limits = %+v, want %+v", got, want)
	}
}
