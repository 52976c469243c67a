package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/atrest-io/atrest/keystore"
)

func TestHolderGone(t *testing.T) {
	host, _ := os.Hostname()
	now := time.Now()
	live := keystore.LockInfo{Held: true, Holder: "atrest apply", Expires: now.Add(time.Minute), Grace: time.Minute, Host: host}
	dead := live
	dead.PID = 1 << 22 // above the kernel's pid_max: no such process
	self := live
	self.PID = os.Getpid()
	elsewhere := self
	elsewhere.Host = "another-host"
	expired := elsewhere
	expired.Expires = now.Add(-2 * time.Minute)
	inGrace := elsewhere
	inGrace.Expires = now.Add(-30 * time.Second)
	tests := []struct {
		name string
		info keystore.LockInfo
		gone bool
		why  string
	}{
		{"its process is gone from this host", dead, true, "no longer runs on this host"},
		{"its process runs here", self, false, "still runs on this host"},
		{"it runs elsewhere", elsewhere, false, `host "another-host"`},
		{"expired past its grace", expired, true, "expired"},
		{"expired, in its grace", inGrace, false, `host "another-host"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gone, why := holderGone(tt.info, now)
			if gone != tt.gone || !strings.Contains(why, tt.why) {
				t.Errorf("gone %v (%s), want %v (%s)", gone, why, tt.gone, tt.why)
			}
		})
	}
	if d := describeLock(inGrace, now); !strings.Contains(d, "expired at") || !strings.Contains(d, `"atrest apply"`) {
		t.Errorf("describe: %s", d)
	}
}
