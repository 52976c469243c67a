package cluster

import (
	"strings"
	"testing"
	"time"
)

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		name      string
		yml       string
		provider  Provider
		retention int
		schedule  string
		suspend   bool
	}{
		{"defaults", "{}\n", AESCBC, DefaultRetention, "", false},
		{"monthly", "rotation:\n  schedule: \"@monthly\"\nsnapshots:\n  retention: 5\n", AESCBC, 5, "@monthly", false},
		{"cron with zone", "provider: secretbox\nrotation:\n  schedule: CRON_TZ=Europe/Berlin 0 3 1 * *\n", Secretbox, DefaultRetention, "CRON_TZ=Europe/Berlin 0 3 1 * *", false},
		{"every and suspend", "provider: aesgcm\nrotation:\n  schedule: \"@every 30s\"\nsuspend: true\n", AESGCM, DefaultRetention, "@every 30s", true},
		{"vault-transit", "provider: vault-transit\nrotation:\n  schedule: \"@monthly\"\n", VaultTransit, DefaultRetention, "@monthly", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePolicy("atrest.yaml", []byte(tt.yml))
			if err != nil {
				t.Fatal(err)
			}
			if p.Provider != tt.provider || p.Retention != tt.retention || p.Schedule != tt.schedule || p.Suspend != tt.suspend {
				t.Errorf("got %+v", p)
			}
			_, ok := p.Next(time.Now())
			if ok != (tt.schedule != "") {
				t.Errorf("Next ok = %v", ok)
			}
		})
	}
}

func TestPolicyNextHonoursZone(t *testing.T) {
	p, err := ParsePolicy("atrest.yaml", []byte("rotation:\n  schedule: CRON_TZ=Asia/Tokyo 0 3 * * *\n"))
	if err != nil {
		t.Fatal(err)
	}
	from := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC) // 09:00 in Tokyo
	next, _ := p.Next(from)
	if want := time.Date(2026, 11, 28, 18, 0, 0, 0, time.UTC); !next.Equal(want) {
		t.Errorf("next = %v, want %v (03:00 Tokyo)", next.UTC(), want)
	}
}

func TestParsePolicyInvalid(t *testing.T) {
	tests := []struct {
		name string
		yml  string
		want []string
	}{
		{"bad cron", "rotation:\n  schedule: \"0 3 * *\"\n", []string{"atrest.yaml: rotation.schedule: \"0 3 * *\" is not a schedule"}},
		{"bad descriptor", "rotation:\n  schedule: \"@fortnightly\"\n", []string{"rotation.schedule:"}},
		{"bad zone", "rotation:\n  schedule: CRON_TZ=Mars/Olympus 0 3 * * *\n", []string{"rotation.schedule:"}},
		{"too often", "rotation:\n  schedule: \"@every 1ms\"\n", []string{"rotation.schedule:"}},
		{"kms provider", "provider: kms\n", []string{"provider: \"kms\" is not a provider atrest can manage"}},
		{"retention zero", "snapshots:\n  retention: 0\n", []string{"snapshots.retention: must be between 1 and 1000, not 0"}},
		{"retention text", "snapshots:\n  retention: ten\n", []string{"snapshots.retention: must be a whole number, not a string"}},
		{"unknown field", "rotaton:\n  schedule: \"@daily\"\n", []string{"atrest.yaml: rotaton: not an atrest.yaml field; did you mean \"rotation\"?"}},
		{"unknown nested", "rotation:\n  every: 1h\n", []string{"rotation.every: not an atrest.yaml field"}},
		{"list", "- a\n", []string{"not a list"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePolicy("atrest.yaml", []byte(tt.yml))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestScheduleMinGap(t *testing.T) {
	for _, tt := range []struct {
		schedule string
		want     time.Duration
	}{
		{"0 3 * * *", 24 * time.Hour},
		{"*/5 * * * *", 5 * time.Minute},
		{"* * * * *", time.Minute},
		// February is the shortest month.
		{"CRON_TZ=UTC 0 3 1 * *", 28 * 24 * time.Hour},
		{"@monthly", 28 * 24 * time.Hour},
		{"@every 30s", 30 * time.Second},
		{"@every 720h", 720 * time.Hour},
		// The gap is the shortest, not the usual one: Friday to Monday is
		// three days, Monday to Tuesday one.
		{"0 3 * * 1-5", 24 * time.Hour},
		{"0 3,4 * * *", time.Hour},
		// Both fields restricted fire on either (cron's rule): the 1st and
		// every Monday, a day apart when the 1st is a Sunday or a Tuesday.
		{"0 0 1 * 1", 24 * time.Hour},
		// A zone with daylight saving: 01:30 to 03:30 local is one hour
		// of real time on the night the clocks go forward.
		{"CRON_TZ=Europe/Berlin 30 1,3 * * *", time.Hour},
	} {
		sched, err := ParseSchedule(tt.schedule)
		if err != nil {
			t.Fatalf("%s: %v", tt.schedule, err)
		}
		if got := ScheduleMinGap(sched); got != tt.want {
			t.Errorf("ScheduleMinGap(%q) = %s, want %s", tt.schedule, got, tt.want)
		}
		p, err := ParsePolicy("atrest.yaml", []byte("rotation:\n  schedule: \""+tt.schedule+"\"\n"))
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := p.MinRotationGap(); !ok || got != tt.want {
			t.Errorf("MinRotationGap of %q = %s, %v", tt.schedule, got, ok)
		}
	}
	if _, ok := DefaultPolicy().MinRotationGap(); ok {
		t.Error("a policy without a schedule has a rotation gap")
	}
}
