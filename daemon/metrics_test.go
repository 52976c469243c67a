package daemon

import (
	"slices"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// TestMetricNames: the names MetricNames reports are the ones /metrics
// exposes, vectors (which expose nothing until a label is set) included.
func TestMetricNames(t *testing.T) {
	names := MetricNames()
	m := newMetrics()
	m.stalled.WithLabelValues("X").Set(1)
	m.restorable.WithLabelValues("s").Set(1)
	m.reconcileDuration.WithLabelValues(resultInSync).Observe(1)
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		name := f.GetName()
		if f.GetType() == dto.MetricType_HISTOGRAM {
			name += "_bucket"
		}
		if !slices.Contains(names, name) {
			t.Errorf("/metrics exposes %s, which MetricNames leaves out", name)
		}
	}
	for _, want := range []string{"atrest_stalled", "atrest_snapshot_restorable", "atrest_heartbeat_timestamp_seconds",
		"atrest_snapshot_drill_interval_seconds", "atrest_rotation_next_seconds", "atrest_reconcile_duration_seconds_bucket",
		"atrest_git_poll_duration_seconds_count", "go_gc_duration_seconds_sum", "process_resident_memory_bytes"} {
		if !slices.Contains(names, want) {
			t.Errorf("MetricNames lacks %s: %v", want, names)
		}
	}
	for _, not := range []string{"atrest_reconcile_duration_seconds", "atrest_stalled_bucket"} {
		if slices.Contains(names, not) {
			t.Errorf("MetricNames has %s, which /metrics never exposes", not)
		}
	}
}
