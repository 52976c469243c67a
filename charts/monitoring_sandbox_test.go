//go:build sandbox

package charts

import (
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"sigs.k8s.io/yaml"
)

// TestPrometheusRule renders the chart's alerts and checks them as
// `promtool check rules` does (rulefmt: every query and annotation
// template parses, durations are durations), then that each query names
// only metrics atrest exports and selects this release's series.
func TestPrometheusRule(t *testing.T) {
	for _, tt := range []struct {
		name   string
		sets   []string
		alerts []string
		check  map[string]string // alert -> a part of its query
	}{
		{name: "defaults", sets: []string{"metrics.prometheusRule.enabled=true"},
			alerts: []string{"AtrestDaemonSilent", "AtrestDrillFailed", "AtrestNodesDisagree", "AtrestRevisionRefused", "AtrestRotationOverdue", "AtrestSnapshotUnproven", "AtrestStalled"},
			check:  map[string]string{"AtrestDaemonSilent": "> 1800 or", "AtrestRotationOverdue": "< -3600"}},
		{name: "every value", sets: []string{"metrics.prometheusRule.enabled=true", "metrics.prometheusRule.silentFor=1h30m", "metrics.prometheusRule.rotationOverdue=90s",
			"metrics.prometheusRule.snapshotMaxAge=768h", "metrics.prometheusRule.alertLabels.team=platform"},
			alerts: []string{"AtrestDaemonSilent", "AtrestDrillFailed", "AtrestNodesDisagree", "AtrestRevisionRefused", "AtrestRotationOverdue", "AtrestSnapshotTooOld", "AtrestSnapshotUnproven", "AtrestStalled"},
			check:  map[string]string{"AtrestDaemonSilent": "> 5400 or", "AtrestRotationOverdue": "< -90", "AtrestSnapshotTooOld": "> 2764800"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rule := find(t, render(t, "t", "atrest", []string{minimalValues}, tt.sets...), "PrometheusRule", "t-atrest")
			spec, err := yaml.Marshal(rule.Object["spec"])
			if err != nil {
				t.Fatal(err)
			}
			groups, errs := rulefmt.Parse(spec, false, model.UTF8Validation, promql)
			if len(errs) > 0 {
				t.Fatalf("the rules do not pass rulefmt (promtool check rules): %v\n%s", errs, spec)
			}
			var alerts []string
			for _, g := range groups.Groups {
				for _, r := range g.Rules {
					alerts = append(alerts, r.Alert)
					checkQuery(t, r.Alert, r.Expr)
					if strings.Count(r.Expr, `namespace="atrest", job="t-atrest"`) != strings.Count(r.Expr, "atrest_")+strings.Count(r.Expr, "up{") {
						t.Errorf("%s: %q does not select the release's series in every selector", r.Alert, r.Expr)
					}
					if want, ok := tt.check[r.Alert]; ok && !strings.Contains(r.Expr, want) {
						t.Errorf("%s: %q lacks %q", r.Alert, r.Expr, want)
					}
					if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
						t.Errorf("%s: labels %v, annotations %v: want a severity, a summary and a description", r.Alert, r.Labels, r.Annotations)
					}
					if slices.Contains(tt.sets, "metrics.prometheusRule.alertLabels.team=platform") && r.Labels["team"] != "platform" {
						t.Errorf("%s: labels %v lack alertLabels", r.Alert, r.Labels)
					}
				}
			}
			slices.Sort(alerts)
			if !slices.Equal(alerts, tt.alerts) {
				t.Errorf("alerts %v, want %v", alerts, tt.alerts)
			}
		})
	}
	t.Run("off by default", func(t *testing.T) {
		for _, o := range render(t, "t", "atrest", []string{minimalValues}) {
			if o.GetKind() == "PrometheusRule" || o.GetName() == "t-atrest-dashboard" {
				t.Errorf("%s %s rendered by default", o.GetKind(), o.GetName())
			}
		}
	})
}
