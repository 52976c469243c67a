package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/gitsource"
	"github.com/atrest-io/atrest/keystore"
	"github.com/atrest-io/atrest/reconciler"
)

func policy(t *testing.T, schedule string) *cluster.Policy {
	t.Helper()
	p, err := cluster.ParsePolicy("atrest.yaml", []byte("rotation:\n  schedule: \""+schedule+"\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestRotationAt(t *testing.T) {
	primary := func(created string) []keystore.KeyInfo {
		return []keystore.KeyInfo{{Name: "k-1", Role: keystore.RolePrimary, Created: at(created)}, {Name: "k-0", Role: keystore.RoleRetired, Created: at("2020-01-01T00:00:00Z")}}
	}
	tests := []struct {
		name     string
		schedule string
		mode     cluster.Mode
		keys     []keystore.KeyInfo
		last     string
		now      string
		due      string // "" when none is due
		next     string // "" when none
	}{
		{name: "not due yet", schedule: "0 3 1 * *", mode: cluster.Managed, keys: primary("2026-11-02T00:00:00Z"), last: "2026-11-02T00:00:00Z",
			now: "2026-11-28T00:00:00Z", next: "2026-12-01T03:00:00Z"},
		{name: "due", schedule: "0 3 1 * *", mode: cluster.Managed, keys: primary("2026-10-02T00:00:00Z"), last: "2026-10-02T00:00:00Z",
			now: "2026-11-28T00:00:00Z", due: "2026-11-01T03:00:00Z", next: "2026-12-01T03:00:00Z"},
		{name: "several missed while down: one rotation, at once", schedule: "0 3 1 * *", mode: cluster.Managed, keys: primary("2026-01-15T00:00:00Z"), last: "2026-01-15T00:00:00Z",
			now: "2026-11-28T00:00:00Z", due: "2026-02-01T03:00:00Z", next: "2026-12-01T03:00:00Z"},
		{name: "never rotated: counts from the primary's creation", schedule: "@every 30s", mode: cluster.Managed, keys: primary("2026-11-28T00:00:00Z"),
			now: "2026-11-28T00:00:10Z", next: "2026-11-28T00:00:30Z"},
		{name: "primary newer than the last rotation (enabled again)", schedule: "@every 1h", mode: cluster.Managed, keys: primary("2026-11-28T00:00:00Z"), last: "2026-11-01T00:00:00Z",
			now: "2026-11-28T00:30:00Z", next: "2026-11-28T01:00:00Z"},
		{name: "CRON_TZ is honoured", schedule: "CRON_TZ=Asia/Tokyo 0 3 * * *", mode: cluster.Managed, keys: primary("2026-11-27T00:00:00Z"), last: "2026-11-27T00:00:00Z",
			now: "2026-11-27T17:00:00Z", due: "2026-11-27T18:00:00Z", next: "2026-11-27T18:00:00Z"},
		{name: "custom configs do not rotate", schedule: "@every 30s", mode: cluster.Custom, keys: primary("2020-01-01T00:00:00Z"), now: "2026-11-28T00:00:00Z"},
		{name: "disabled does not rotate", schedule: "@every 30s", mode: cluster.Disabled, now: "2026-11-28T00:00:00Z"},
		{name: "no key yet", schedule: "@every 30s", mode: cluster.Managed, now: "2026-11-28T00:00:00Z"},
		{name: "no schedule", mode: cluster.Managed, keys: primary("2020-01-01T00:00:00Z"), now: "2026-11-28T00:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := cluster.DefaultPolicy()
			if tt.schedule != "" {
				p = policy(t, tt.schedule)
			}
			var last time.Time
			if tt.last != "" {
				last = at(tt.last)
			}
			now := at(tt.now)
			if tt.name == "CRON_TZ is honoured" {
				// 03:00 in Tokyo is 18:00 UTC the day before: due at 18:00:30.
				now = at("2026-11-27T18:00:30Z")
			}
			got := RotationAt(p, tt.mode, tt.keys, last, now)
			wantDue, wantNext := time.Time{}, time.Time{}
			if tt.due != "" {
				wantDue = at(tt.due)
			}
			if tt.next != "" {
				wantNext = at(tt.next)
				if tt.name == "CRON_TZ is honoured" {
					wantNext = at("2026-11-28T18:00:00Z")
				}
			}
			if !got.Due.Equal(wantDue) || !got.Next.Equal(wantNext) {
				t.Fatalf("RotationAt = due %v next %v, want due %v next %v", got.Due, got.Next, wantDue, wantNext)
			}
			if (got.Request() != "") != (tt.due != "") {
				t.Fatalf("Request() = %q with due %v", got.Request(), got.Due)
			}
		})
	}
}

func TestRotationRequestIsStable(t *testing.T) {
	// The same due rotation asked for twice (a crash in between) is one
	// request, so the keyring serves it once.
	p := policy(t, "0 3 1 * *")
	keys := []keystore.KeyInfo{{Name: "k", Role: keystore.RolePrimary, Created: at("2026-10-02T00:00:00Z")}}
	a := RotationAt(p, cluster.Managed, keys, time.Time{}, at("2026-11-28T00:00:00Z"))
	b := RotationAt(p, cluster.Managed, keys, time.Time{}, at("2026-11-28T09:00:00Z"))
	if a.Request() == "" || a.Request() != b.Request() {
		t.Fatalf("requests %q and %q differ", a.Request(), b.Request())
	}
	// Once served, the rotation time moves the schedule on: nothing is due.
	kr := &keystore.Keyring{}
	kr.RecordRotation(at("2026-11-28T00:00:05Z"), a.Request())
	if c := RotationAt(p, cluster.Managed, keys, kr.LastRotation, at("2026-11-28T10:00:00Z")); c.Request() != "" {
		t.Fatalf("after serving, %q is due", c.Request())
	}
}

func TestBackoff(t *testing.T) {
	iv, max := time.Minute, 10*time.Minute
	want := []time.Duration{time.Minute, 15 * time.Second, 30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 10 * time.Minute, 10 * time.Minute}
	for failures, w := range want {
		if got := Backoff(iv, max, failures); got != w {
			t.Errorf("Backoff(%d failures) = %s, want %s", failures, got, w)
		}
	}
	if got := Backoff(iv, max, 1000); got != max {
		t.Errorf("Backoff(1000 failures) = %s, want the cap %s", got, max)
	}
}

func TestJitter(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	seen := map[bool]bool{}
	for range 1000 {
		got := jitter(time.Minute, r)
		if got < 54*time.Second || got > 66*time.Second {
			t.Fatalf("jitter(1m) = %s, outside 1m ± 10%%", got)
		}
		seen[got < time.Minute] = true
	}
	if !seen[true] || !seen[false] {
		t.Fatal("jitter never spread both ways")
	}
}

func newTestDaemon(t testing.TB) *Daemon {
	t.Helper()
	d, err := New(Config{
		Source:        nopSource{},
		Parse:         func(context.Context, *gitsource.Revision) (*Desired, error) { return nil, io.EOF },
		Open:          func(context.Context, *Desired, Hooks) (Cluster, error) { return nil, io.EOF },
		Interval:      time.Minute,
		WebhookSecret: []byte("0123456789abcdef-shared"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

type nopSource struct{}

func (nopSource) Poll(context.Context) (*gitsource.Revision, bool, error) { return nil, false, io.EOF }
func (nopSource) Stats() gitsource.Stats                                  { return gitsource.Stats{} }

func TestWebhook(t *testing.T) {
	body := []byte(`{"ref":"refs/heads/main","after":"0123"}`)
	secret := []byte("0123456789abcdef-shared")
	tests := []struct {
		name   string
		method string
		header map[string]string
		body   []byte
		code   int
		result string
		polls  bool
	}{
		{name: "GitHub signature", method: "POST", header: map[string]string{HeaderGitHubSignature: Sign(secret, body)}, body: body, code: 202, result: "accepted", polls: true},
		{name: "generic signature", method: "POST", header: map[string]string{HeaderGenericSignature: Sign(secret, body)}, body: body, code: 202, result: "accepted", polls: true},
		{name: "wrong secret", method: "POST", header: map[string]string{HeaderGitHubSignature: Sign([]byte("another secret!!"), body)}, body: body, code: 401, result: "bad_signature"},
		{name: "body changed", method: "POST", header: map[string]string{HeaderGitHubSignature: Sign(secret, body)}, body: append(bytes.Clone(body), ' '), code: 401, result: "bad_signature"},
		{name: "sha1 signature", method: "POST", header: map[string]string{HeaderGitHubSignature: "sha1=" + strings.TrimPrefix(Sign(secret, body), "sha256=")}, body: body, code: 401, result: "bad_signature"},
		{name: "not hex", method: "POST", header: map[string]string{HeaderGitHubSignature: "sha256=zz"}, body: body, code: 401, result: "bad_signature"},
		{name: "unsigned", method: "POST", body: body, code: 401, result: "no_signature"},
		{name: "GET", method: "GET", code: 405, result: "bad_request"},
		{name: "too large", method: "POST", header: map[string]string{HeaderGitHubSignature: "sha256=" + strings.Repeat("00", 32)}, body: bytes.Repeat([]byte("x"), maxWebhookBody+1), code: 413, result: "bad_request"},
		// A signature that cannot be one is refused before the body is read.
		{name: "short signature", method: "POST", header: map[string]string{HeaderGitHubSignature: "sha256=00"}, body: bytes.Repeat([]byte("x"), maxWebhookBody+1), code: 401, result: "bad_signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newTestDaemon(t)
			req := httptest.NewRequest(tt.method, "/hook", bytes.NewReader(tt.body))
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			d.WebhookHandler().ServeHTTP(rec, req)
			if rec.Code != tt.code {
				t.Fatalf("code %d, want %d (%s)", rec.Code, tt.code, rec.Body)
			}
			polled := len(d.pollNow) == 1
			if polled != tt.polls {
				t.Fatalf("poll triggered: %v, want %v", polled, tt.polls)
			}
			metrics := scrape(t, d)
			if want := `atrest_webhook_requests_total{result="` + tt.result + `"} 1`; !strings.Contains(metrics, want) {
				t.Fatalf("metrics lack %s", want)
			}
			if strings.Contains(rec.Body.String(), string(secret)) || strings.Contains(metrics, string(secret)) {
				t.Fatal("the shared secret leaked into a response")
			}
		})
	}
}

func scrape(t *testing.T, d *Daemon) string {
	t.Helper()
	rec := httptest.NewRecorder()
	d.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	return rec.Body.String()
}

func TestMetricsFromStatus(t *testing.T) {
	d := newTestDaemon(t)
	st := &reconciler.Status{
		Nodes: []reconciler.NodeStatus{
			{Name: "n1", Ready: true, FileSHA256: "aa", ConfigHash: "sha256:c1", Plugin: &reconciler.PluginLive{Current: true, Present: true, Healthy: true}},
			{Name: "n2", Ready: false, FileSHA256: "bb", ConfigHash: "sha256:c2", Plugin: &reconciler.PluginLive{Present: true}},
		},
		Transit:      &reconciler.TransitStatus{Exists: true, Latest: 3, MinDecryption: 2},
		KeyIDs:       map[string]map[string]map[string]int64{"secrets": {"kms:v2:atrest-vault-transit": {"transit/k:v3": 7}}},
		DeployedHash: "sha256:c1",
		Census:       map[string]map[string]int64{"secrets": {"aescbc:v1:k-abcde": 500, "identity": 3}},
		Keys:         []keystore.KeyInfo{{Name: "k-abcde", Role: keystore.RolePrimary}, {Name: "k-old", Role: keystore.RoleRetired}},
		LastRotation: time.Now().Add(-time.Hour),
		LastSnapshot: &reconciler.SnapshotStatus{Name: "s", Time: time.Now().Add(-2 * time.Minute)},
	}
	d.metrics.observeStatus(st, time.Now().Add(30*time.Second))
	out := scrape(t, d)
	for _, want := range []string{
		`atrest_node_ready{node="n1"} 1`, `atrest_node_ready{node="n2"} 0`,
		`atrest_node_config_deployed{node="n1"} 1`, `atrest_node_config_deployed{node="n2"} 0`,
		`atrest_nodes_config_agree 0`,
		`atrest_census_objects{resource="secrets",stored_as="aescbc:v1:k-abcde"} 500`,
		`atrest_census_objects{resource="secrets",stored_as="identity"} 3`,
		`atrest_keys{role="primary"} 1`, `atrest_keys{role="retired"} 1`,
		"atrest_snapshot_age_seconds 1", "atrest_rotation_age_seconds 36", "atrest_rotation_next_seconds ",
		"atrest_rotation_next_timestamp_seconds ", `atrest_reconcile_total{result="in-sync"} 0`,
		`atrest_kms_plugin_healthy{node="n1"} 1`, `atrest_kms_plugin_healthy{node="n2"} 0`,
		`atrest_transit_key_version{which="latest"} 3`, `atrest_transit_key_version{which="min_decryption"} 2`,
		`atrest_census_key_id_objects{key_id="transit/k:v3",resource="secrets",stored_as="kms:v2:atrest-vault-transit"} 7`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Readiness waits for the first cycle.
	rec := httptest.NewRecorder()
	d.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before the first cycle: %d", rec.Code)
	}
}

// TestWaiting: a revision the ledger or the remote could not check is
// checked again at the next poll; a rollback and a bad cluster.yml are
// refusals.
func TestWaiting(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"accepted", nil, false},
		{"a cluster.yml that does not parse", errors.New("cluster.yml: nodes: required"), false},
		{"a rollback", &gitsource.Error{Reason: gitsource.ReasonNotDescendant, Err: errors.New("does not descend")}, false},
		{"Vault down", &gitsource.Error{Reason: gitsource.ReasonLedger, Err: errors.New("connection refused")}, true},
		{"the remote down while deepening", fmt.Errorf("admit: %w", &gitsource.Error{Reason: gitsource.ReasonUnreachable, Err: errors.New("timeout")}), true},
	}
	for _, tt := range tests {
		if got := waiting(tt.err); got != tt.want {
			t.Errorf("%s: waiting = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// A schedule beyond settings policy.minRotationInterval is never armed:
// the cron does not wake the loop for it, and the state names none. One
// within it is armed, and a later one beyond it disarms it.
func TestScheduleBeyondTheFloorNotArmed(t *testing.T) {
	d := newTestDaemon(t)
	d.cfg.MinRotationInterval = time.Hour
	d.cron = cron.New()
	log := slog.New(slog.DiscardHandler)
	for _, tt := range []struct {
		schedule string
		armed    bool
	}{
		{"@every 30s", false},
		{"0 3 * * *", true},
		{"*/5 * * * *", false},
		{"@every 1h", true},
	} {
		d.schedule(policy(t, tt.schedule), log)
		entries := d.cron.Entries()
		if armed := len(entries) == 1 && d.cronEntry != 0; armed != tt.armed || len(entries) > 1 {
			t.Errorf("%q: %d cron entries (entry %d), want armed %v", tt.schedule, len(entries), d.cronEntry, tt.armed)
		}
		if want := map[bool]string{true: tt.schedule}[tt.armed]; d.State().Schedule != want {
			t.Errorf("%q: state schedule %q, want %q", tt.schedule, d.State().Schedule, want)
		}
	}
}
