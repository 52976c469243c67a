package main

import (
	"fmt"
	"os"
	"syscall"
)

// failpointEnv names a fault-injection point (controlplane.Failpoints) at
// which atrest kills itself with SIGKILL, as the OOM killer, an eviction
// or kill -9 would: the sandbox tests crash atrest for real there. Unset,
// nothing happens.
const failpointEnv = "ATREST_FAILPOINT"

// failpoint returns the hook for controlplane.Options.Failpoint, nil
// when no point is named.
func failpoint() func(name string) {
	want := os.Getenv(failpointEnv)
	if want == "" {
		return nil
	}
	return func(name string) {
		if name != want {
			return
		}
		fmt.Fprintf(os.Stderr, "failpoint %s: killing atrest with SIGKILL (%s)\n", name, failpointEnv)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
