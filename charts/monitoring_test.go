package charts

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"

	"github.com/atrest-io/atrest/daemon"
)

// promql parses the alerts' and the dashboard's queries as Prometheus does.
var promql = parser.NewParser(parser.Options{})

// unknownMetrics parses expr and returns the metrics it names that atrest
// does not export (up, Prometheus' own, is known).
func unknownMetrics(expr string) ([]string, error) {
	e, err := promql.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	known := daemon.MetricNames()
	var unknown []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		if vs.Name != "up" && !slices.Contains(known, vs.Name) {
			unknown = append(unknown, vs.Name)
		}
		return nil
	})
	return unknown, nil
}

// checkQuery fails t unless expr parses and names only metrics atrest
// exports.
func checkQuery(t *testing.T, where, expr string) {
	t.Helper()
	unknown, err := unknownMetrics(expr)
	if err != nil {
		t.Errorf("%s: %q does not parse: %v", where, expr, err)
	}
	if len(unknown) > 0 {
		t.Errorf("%s: %q names metrics atrest does not export: %v", where, expr, unknown)
	}
}

// TestUnknownMetrics: the check sees a name that is not exported, inside
// any expression, and a query that does not parse.
func TestUnknownMetrics(t *testing.T) {
	for expr, want := range map[string][]string{
		`atrest_stalled == 1`: nil,
		`histogram_quantile(0.9, sum by (le) (rate(atrest_reconcile_duration_seconds_bucket[5m])))`: nil,
		`absent(up{job="x"} == 1)`:                               nil,
		`rate(atrest_reconcile_duration_seconds[5m])`:            {"atrest_reconcile_duration_seconds"},
		`time() - atrest_snapshot_proven_timestamp_second > 1`:   {"atrest_snapshot_proven_timestamp_second"},
		`sum(rate(atrest_stalled_bucket[5m])) or vector(0)`:      {"atrest_stalled_bucket"},
		`max(atrest_rotation_next_seconds) / on() atrest_nope_x`: {"atrest_nope_x"},
	} {
		got, err := unknownMetrics(expr)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%q: %v, %v; want %v", expr, got, err, want)
		}
	}
	if _, err := unknownMetrics(`sum(atrest_stalled`); err == nil {
		t.Error("an unbalanced query parses")
	}
}

// grafanaVars are what Grafana puts in place of its variables before a
// query reaches Prometheus.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1d")

// dashboard is the part of Grafana's dashboard JSON the test checks.
type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource json.RawMessage `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID         int                       `json:"id"`
		Type       string                    `json:"type"`
		Title      string                    `json:"title"`
		Datasource json.RawMessage           `json:"datasource"`
		GridPos    *struct{ H, W, X, Y int } `json:"gridPos"`
		Targets    []struct {
			RefID      string          `json:"refId"`
			Expr       string          `json:"expr"`
			Datasource json.RawMessage `json:"datasource"`
		} `json:"targets"`
	} `json:"panels"`
}

// labelValues is Grafana's label_values(selector, label).
var labelValues = regexp.MustCompile(`^label_values\((.+), *[a-z_]+\)$`)

// TestDashboard: the dashboard the chart ships is Grafana JSON whose every
// query parses as PromQL and names only metrics atrest exports, each panel
// reading the data source the user picks, filtered to one release.
func TestDashboard(t *testing.T) {
	data, err := os.ReadFile("atrest/dashboards/atrest.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("atrest/dashboards/atrest.json: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: want both", d.UID, d.Title)
	}
	const ds = `{"type":"prometheus","uid":"${datasource}"}`
	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
		if v.Type != "query" {
			continue
		}
		var q struct{ Query string }
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Errorf("variable %s: %v", v.Name, err)
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: %q is not label_values(selector, label)", v.Name, q.Query)
			continue
		}
		checkQuery(t, "variable "+v.Name, m[1])
		if compactJSON(t, v.Datasource) != ds {
			t.Errorf("variable %s reads %s, want %s", v.Name, v.Datasource, ds)
		}
	}
	if !slices.Equal(vars, []string{"datasource", "namespace", "job"}) {
		t.Errorf("variables %v", vars)
	}
	ids := map[int]bool{}
	queries := 0
	for _, p := range d.Panels {
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q: id %d not unique", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		if compactJSON(t, p.Datasource) != ds {
			t.Errorf("panel %q reads %s, want %s", p.Title, p.Datasource, ds)
		}
		for _, q := range p.Targets {
			queries++
			checkQuery(t, "panel "+p.Title, grafanaVars.Replace(q.Expr))
			if !strings.Contains(q.Expr, `namespace="$namespace", job="$job"`) {
				t.Errorf("panel %q: %q is not filtered to the chosen release", p.Title, q.Expr)
			}
		}
	}
	t.Logf("%d panels, %d queries", len(d.Panels), queries)
}

func compactJSON(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return string(raw)
	}
	out, _ := json.Marshal(v)
	return string(out)
}
