package cluster

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// DefaultRetention is how many snapshots atrest keeps when atrest.yaml does
// not say.
const DefaultRetention = 10

// maxRetention bounds retention: every retained snapshot pins its keys in
// Vault, so a typo such as 10000 should be caught, not obeyed.
const maxRetention = 1000

// Policy is atrest.yaml, the policy kept in Git beside cluster.yml.
type Policy struct {
	// Provider is the provider of managed keys.
	Provider Provider
	// Schedule is the rotation schedule as written ("" for none).
	Schedule string
	// Retention is how many snapshots to keep.
	Retention int
	// Suspend stops changes while atrest keeps observing and reporting.
	Suspend bool

	schedule cron.Schedule
}

// DefaultPolicy is the policy when there is no atrest.yaml.
func DefaultPolicy() *Policy {
	return &Policy{Provider: DefaultProvider, Retention: DefaultRetention}
}

// Next returns the next scheduled rotation after t, and false when the
// policy has no schedule.
func (p *Policy) Next(t time.Time) (time.Time, bool) {
	if p.schedule == nil {
		return time.Time{}, false
	}
	return p.schedule.Next(t), true
}

// MinRotationGap returns the shortest gap between two firings of the
// policy's schedule (ScheduleMinGap), and false when it has none.
func (p *Policy) MinRotationGap() (time.Duration, bool) {
	if p.schedule == nil {
		return 0, false
	}
	return ScheduleMinGap(p.schedule), true
}

// gapFirings bounds ScheduleMinGap's walk: 500 firings cover more than a
// year of a daily schedule (every weekday pattern and a DST change) and 41
// years of a monthly one, at a cost of microseconds.
const gapFirings = 500

// gapFrom is where ScheduleMinGap starts: a fixed time, so the same
// schedule always gets the same answer, whenever it is asked.
var gapFrom = time.Date(2025, time.January, 1, 0, 0, 0, 0, time.UTC)

// ScheduleMinGap is the shortest gap between two consecutive firings of
// sched: exact for @every (a constant delay); for cron fields, the
// shortest over the first gapFirings firings after a fixed reference
// time; 0 for a schedule that does not fire twice.
func ScheduleMinGap(sched cron.Schedule) time.Duration {
	if c, ok := sched.(cron.ConstantDelaySchedule); ok {
		return c.Delay
	}
	var gap time.Duration
	prev := sched.Next(gapFrom)
	for range gapFirings {
		if prev.IsZero() {
			break
		}
		next := sched.Next(prev)
		if next.IsZero() {
			break
		}
		if d := next.Sub(prev); gap == 0 || d < gap {
			gap = d
		}
		prev = next
	}
	return gap
}

var policyKeys = []string{"provider", "rotation", "snapshots", "suspend"}

type rawPolicy struct {
	Provider string `json:"provider"`
	Rotation struct {
		Schedule string `json:"schedule"`
	} `json:"rotation"`
	Snapshots struct {
		Retention *int `json:"retention"`
	} `json:"snapshots"`
	Suspend bool `json:"suspend"`
}

// LoadPolicy reads and parses atrest.yaml at file. See ParsePolicy.
func LoadPolicy(file string) (*Policy, error) {
	data, err := readCapped(file)
	if err != nil {
		return nil, err
	}
	return ParsePolicy(file, data)
}

// ParsePolicy parses atrest.yaml. Unknown fields are errors; every problem
// is returned at once, as Errors.
func ParsePolicy(file string, data []byte) (*Policy, error) {
	l := &errorList{file: file}
	j := yamlToJSON(data, l)
	if j == nil {
		return nil, l.errs
	}
	top := checkPolicyKeys(j, "", policyKeys, l)
	checkPolicyKeys(top["rotation"], "rotation", []string{"schedule"}, l)
	checkPolicyKeys(top["snapshots"], "snapshots", []string{"retention"}, l)
	var raw rawPolicy
	if !decodeJSON(j, &raw, "", l) {
		return nil, l.errs
	}
	p := DefaultPolicy()
	p.Suspend = raw.Suspend
	if raw.Provider != "" {
		p.Provider = Provider(raw.Provider)
		if !IsManagedProvider(p.Provider) {
			l.add("provider", "%q is not a provider atrest can manage: use aescbc (the default), aesgcm, secretbox, or vault-transit (KMS v2 with a Vault Transit key that never leaves Vault); another KMS needs a custom_config in cluster.yml", raw.Provider)
		}
	}
	if raw.Snapshots.Retention != nil {
		p.Retention = *raw.Snapshots.Retention
		if p.Retention < 1 || p.Retention > maxRetention {
			l.add("snapshots.retention", "must be between 1 and %d, not %d", maxRetention, p.Retention)
		}
	}
	if s := strings.TrimSpace(raw.Rotation.Schedule); s != "" {
		sched, err := ParseSchedule(s)
		if err != nil {
			l.add("rotation.schedule", "%v", err)
		}
		p.Schedule, p.schedule = s, sched
	}
	if len(l.errs) > 0 {
		return nil, l.errs
	}
	return p, nil
}

// checkPolicyKeys is checkKeys with a hint that fits atrest.yaml.
func checkPolicyKeys(raw json.RawMessage, path string, known []string, l *errorList) map[string]json.RawMessage {
	sub := &errorList{file: l.file}
	m := checkKeys(raw, path, known, sub)
	for _, e := range sub.errs {
		e.Detail = strings.Replace(e.Detail, "not a field RKE knows", "not an atrest.yaml field", 1)
	}
	l.addAll(sub.errs)
	return m
}

// ParseSchedule parses a rotation schedule: a five-field cron expression or
// a descriptor (@monthly, @every 720h), optionally led by CRON_TZ=Zone.
func ParseSchedule(s string) (cron.Schedule, error) {
	sched, err := cron.ParseStandard(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not a schedule (%v): use five cron fields such as \"0 3 1 * *\", or a descriptor such as @monthly or \"@every 720h\", optionally led by CRON_TZ=Europe/Berlin", s, err)
	}
	// robfig/cron silently rounds "@every 1ms" up to a second; say so instead.
	if d, ok := strings.CutPrefix(s, "@every "); ok {
		if every, err := time.ParseDuration(strings.TrimSpace(d)); err == nil && every < time.Second {
			return nil, fmt.Errorf("%q is more often than once a second: rotation needs a rewrite of every secret each time", s)
		}
	}
	return sched, nil
}

// Summary describes the policy in one line.
func (p *Policy) Summary(now time.Time) string {
	rot := "no scheduled rotation"
	if next, ok := p.Next(now); ok {
		rot = fmt.Sprintf("rotation %q (next %s)", p.Schedule, next.UTC().Format(time.RFC3339))
	}
	s := fmt.Sprintf("managed provider %s, %s, snapshot retention %d", p.Provider, rot, p.Retention)
	if p.Suspend {
		s += ", suspended"
	}
	return s
}
