package daemon

import (
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/atrest-io/atrest/gitsource"
	"github.com/atrest-io/atrest/reconciler"
)

// metrics is what /metrics exposes. Every label value is a name, a
// revision, a storage prefix or a result: never key material.
type metrics struct {
	reg *prometheus.Registry

	reconciles        *prometheus.CounterVec
	reconcileDuration *prometheus.HistogramVec
	failures          prometheus.Gauge
	suspended         prometheus.Gauge
	stalled           *prometheus.GaugeVec
	revision          *prometheus.GaugeVec
	refused           prometheus.Gauge
	nodeReady         *prometheus.GaugeVec
	nodeDeployed      *prometheus.GaugeVec
	nodesAgree        prometheus.Gauge
	census            *prometheus.GaugeVec
	keys              *prometheus.GaugeVec
	step              *prometheus.GaugeVec
	rewriteListed     *prometheus.GaugeVec
	rewriteUpdated    *prometheus.GaugeVec
	gitPolls          *prometheus.CounterVec
	gitPollDuration   prometheus.Histogram
	gitFetches        prometheus.Counter
	gitFetchDuration  prometheus.Histogram
	gitFetchedBytes   prometheus.Counter
	webhook           *prometheus.CounterVec
	rotations         prometheus.Counter
	outsideKeys       *prometheus.CounterVec
	outsideRuns       *prometheus.GaugeVec
	restorable        *prometheus.GaugeVec
	proven            *prometheus.GaugeVec
	drills            *prometheus.CounterVec
	pluginHealthy     *prometheus.GaugeVec
	etcdRead          *prometheus.CounterVec
	fullCensuses      prometheus.Counter
	censusEvents      prometheus.Counter
	censusMismatches  prometheus.Counter
	transit           *prometheus.GaugeVec
	keyIDs            *prometheus.GaugeVec
	heartbeat         prometheus.Gauge
	drillInterval     prometheus.Gauge

	// all is every collector registered, for MetricNames.
	all []prometheus.Collector

	// times backs the gauges of ages, read at scrape time.
	mu    sync.Mutex
	times times
}

// times are the instants whose distance from now /metrics reports.
type times struct {
	lastSnapshot, lastRotation, nextRotation time.Time
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.reconciles = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "atrest_reconcile_total",
		Help: "Reconcile cycles by result: in-sync (nothing to do), changed, failed, stalled (a person must act), locked (another transition held the lock), suspended (changes pending but suspended)."}, []string{"result"})
	m.reconcileDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "atrest_reconcile_duration_seconds",
		Help: "Duration of reconcile cycles by result.", Buckets: []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}}, []string{"result"})
	m.failures = prometheus.NewGauge(prometheus.GaugeOpts{Name: "atrest_consecutive_failures", Help: "Reconcile cycles failed in a row (0 after a success)."})
	m.suspended = prometheus.NewGauge(prometheus.GaugeOpts{Name: "atrest_suspended", Help: "1 while changes are suspended (daemon.suspend or suspend: true in atrest.yaml)."})
	m.stalled = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_stalled", Help: "1 while the daemon changes nothing because a person must act, by stable reason (a refusal's, RollbackFailed, StepFailedRepeatedly); see atrest status."}, []string{"reason"})
	m.revision = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_revision_info", Help: "The Git revision in force (value 1)."}, []string{"revision", "ref"})
	m.refused = prometheus.NewGauge(prometheus.GaugeOpts{Name: "atrest_revision_refused", Help: "1 while the newest Git revision is refused (invalid cluster.yml or atrest.yaml, bad signature); the previous one stays in force."})
	m.nodeReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_node_ready", Help: "1 when the node's kube-apiserver is ready."}, []string{"node"})
	m.nodeDeployed = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_node_config_deployed", Help: "1 when the node's provider file holds the config atrest last deployed, compared by content (or both are absent); 0 means drift."}, []string{"node"})
	m.nodesAgree = prometheus.NewGauge(prometheus.GaugeOpts{Name: "atrest_nodes_config_agree", Help: "1 when every controlplane node's provider file holds the same config (or none)."})
	m.census = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_census_objects", Help: "Objects in etcd by resource and by how they are stored (identity, or provider:version:key name)."}, []string{"resource", "stored_as"})
	m.keys = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_keys", Help: "Keys in the keyring by role."}, []string{"role"})
	m.step = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_transition_step", Help: "1 for the transition step in flight."}, []string{"transition", "step"})
	m.rewriteListed = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_rewrite_listed_objects", Help: "Objects listed so far by the rewrite in flight (or the last one)."}, []string{"resource"})
	m.rewriteUpdated = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_rewrite_updated_objects", Help: "Objects rewritten so far by the rewrite in flight (or the last one)."}, []string{"resource"})
	m.gitPolls = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "atrest_git_polls_total", Help: "Git source polls by result: unchanged, changed, failed."}, []string{"result"})
	m.gitPollDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "atrest_git_poll_duration_seconds", Help: "Duration of Git source polls.", Buckets: prometheus.ExponentialBuckets(0.005, 3, 9)})
	m.gitFetches = prometheus.NewCounter(prometheus.CounterOpts{Name: "atrest_git_fetches_total", Help: "Fetches from the Git remote (an unchanged ref costs none)."})
	m.gitFetchDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "atrest_git_fetch_duration_seconds", Help: "Duration of Git fetches.", Buckets: prometheus.ExponentialBuckets(0.01, 3, 9)})
	m.gitFetchedBytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "atrest_git_fetched_bytes_total", Help: "Pack bytes fetched from the Git remote."})
	m.webhook = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "atrest_webhook_requests_total", Help: "Webhook requests by result: accepted, bad_signature, no_signature, bad_request."}, []string{"result"})
	m.outsideKeys = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "atrest_outside_keys_total",
		Help: "Keys found in a node's provider file that Vault did not hold, put there by a writer other than atrest (a plain rke up, a hand edit), by node: each was imported into Vault (or, under a name Vault holds with other material, preserved) before anything else."}, []string{"node"})
	m.outsideRuns = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_outside_writer",
		Help: "1 while the node runs keys an outside writer put there (a plain rke up, a hand edit): drift atrest did not cause, being converged back."}, []string{"node"})
	m.restorable = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_snapshot_restorable",
		Help: "1 when the kept snapshot's last decryption drill proved every covered object decrypts with the keys in Vault, 0 when it did not (not restorable, or unproven: see atrest status); absent until drilled."}, []string{"snapshot"})
	m.proven = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_snapshot_proven_timestamp_seconds",
		Help: "Unix time of the kept snapshot's last decryption drill."}, []string{"snapshot"})
	m.drills = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "atrest_snapshot_drills_total",
		Help: "Snapshot decryption drills run, by verdict: Restorable, NotRestorable, Unproven."}, []string{"verdict"})
	m.rotations = prometheus.NewCounter(prometheus.CounterOpts{Name: "atrest_scheduled_rotations_total", Help: "Scheduled rotations requested (each served once)."})

	m.pluginHealthy = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_kms_plugin_healthy",
		Help: "Provider vault-transit: 1 when the node's KMS plugin runs the spec atrest deploys and answers its status through its socket, 0 when not."}, []string{"node"})
	m.transit = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_transit_key_version",
		Help: "Provider vault-transit: the Transit key's latest version (which=latest) and the oldest Vault still decrypts with (which=min_decryption)."}, []string{"which"})
	m.keyIDs = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atrest_census_key_id_objects",
		Help: "Objects a KMS v2 provider stored, by resource, storage prefix and the key_id (Transit version) wrapping their data key."}, []string{"resource", "stored_as", "key_id"})
	m.etcdRead = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "atrest_etcd_read_bytes_total",
		Help: "Bytes atrest read from etcd: census pages, watch events and gets (kind=census), snapshot streams (kind=snapshot)."}, []string{"kind"})
	m.fullCensuses = prometheus.NewCounter(prometheus.CounterOpts{Name: "atrest_census_full_total", Help: "Full censuses of etcd taken (every stored value read): for a step, to start or restart the live census, or to cross-check it."})
	m.censusEvents = prometheus.NewCounter(prometheus.CounterOpts{Name: "atrest_census_events_total", Help: "etcd watch events the live census applied."})
	m.censusMismatches = prometheus.NewCounter(prometheus.CounterOpts{Name: "atrest_census_mismatches_total", Help: "Objects the live census had wrong when cross-checked with a full census (each corrected)."})
	m.heartbeat = prometheus.NewGauge(prometheus.GaugeOpts{Name: "atrest_heartbeat_timestamp_seconds",
		Help: "Unix time the daemon last showed progress: a cycle ended, a step began or ended, a rewrite page was done, a drill ran. Still while the daemon hangs, even if /metrics answers."})
	m.drillInterval = prometheus.NewGauge(prometheus.GaugeOpts{Name: "atrest_snapshot_drill_interval_seconds",
		Help: "The drill policy (settings snapshots.drillInterval): each kept snapshot is proven restorable at least this often."})
	m.all = []prometheus.Collector{m.pluginHealthy, m.transit, m.keyIDs, m.etcdRead, m.fullCensuses, m.censusEvents, m.censusMismatches,
		m.heartbeat, m.drillInterval,
		m.reconciles, m.reconcileDuration, m.failures, m.suspended, m.stalled, m.revision, m.refused,
		m.nodeReady, m.nodeDeployed, m.nodesAgree, m.census, m.keys, m.step, m.rewriteListed, m.rewriteUpdated,
		m.gitPolls, m.gitPollDuration, m.gitFetches, m.gitFetchDuration, m.gitFetchedBytes, m.webhook, m.rotations,
		m.outsideKeys, m.outsideRuns, m.restorable, m.proven, m.drills, &ageCollector{m: m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})}
	m.reg.MustRegister(m.all...)
	for _, r := range []string{"accepted", "bad_signature", "no_signature", "bad_request"} {
		m.webhook.WithLabelValues(r)
	}
	for _, r := range []string{resultInSync, resultChanged, resultFailed, resultStalled, resultLocked, resultSuspended} {
		m.reconciles.WithLabelValues(r)
	}
	return m
}

// descName finds a metric's name in its description: client_golang
// keeps the name unexported, and prints it in Desc.String.
var descName = regexp.MustCompile(`fqName: "([^"]+)"`)

// MetricNames returns the name of every series /metrics may expose
// (sorted), for the checks of the chart's alerts and dashboard: a
// histogram's are its name with _bucket, _sum and _count, a summary's its
// name and the latter two.
func MetricNames() []string {
	m := newMetrics()
	var names []string
	for _, c := range m.all {
		ch := make(chan *prometheus.Desc)
		go func() {
			c.Describe(ch)
			close(ch)
		}()
		for d := range ch {
			n := descName.FindStringSubmatch(d.String())
			if n == nil {
				continue
			}
			switch c.(type) {
			case prometheus.Histogram, *prometheus.HistogramVec:
				names = append(names, n[1]+"_bucket", n[1]+"_sum", n[1]+"_count")
			default:
				names = append(names, n[1])
			}
		}
	}
	// The runtime's collectors mix kinds: their families say which.
	fams, _ := m.reg.Gather()
	for _, f := range fams {
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names = append(names, f.GetName()+"_bucket", f.GetName()+"_sum", f.GetName()+"_count")
			names = slices.DeleteFunc(names, func(n string) bool { return n == f.GetName() })
		case dto.MetricType_SUMMARY:
			names = append(names, f.GetName()+"_sum", f.GetName()+"_count")
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// ageCollector reports the ages and waits of times, computed at scrape
// time; an instant not known yet is left out rather than reported as 0.
type ageCollector struct{ m *metrics }

var (
	snapshotAgeDesc  = prometheus.NewDesc("atrest_snapshot_age_seconds", "Seconds since the last verified etcd snapshot.", nil, nil)
	rotationAgeDesc  = prometheus.NewDesc("atrest_rotation_age_seconds", "Seconds since the last key rotation.", nil, nil)
	rotationNextDesc = prometheus.NewDesc("atrest_rotation_next_seconds", "Seconds until the next scheduled rotation (negative: overdue).", nil, nil)
	rotationTimeDesc = prometheus.NewDesc("atrest_rotation_next_timestamp_seconds", "Unix time of the next scheduled rotation.", nil, nil)
)

func (c *ageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- snapshotAgeDesc
	ch <- rotationAgeDesc
	ch <- rotationNextDesc
	ch <- rotationTimeDesc
}

func (c *ageCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	t := c.m.times
	c.m.mu.Unlock()
	now := time.Now()
	if !t.lastSnapshot.IsZero() {
		ch <- prometheus.MustNewConstMetric(snapshotAgeDesc, prometheus.GaugeValue, now.Sub(t.lastSnapshot).Seconds())
	}
	if !t.lastRotation.IsZero() {
		ch <- prometheus.MustNewConstMetric(rotationAgeDesc, prometheus.GaugeValue, now.Sub(t.lastRotation).Seconds())
	}
	if !t.nextRotation.IsZero() {
		ch <- prometheus.MustNewConstMetric(rotationNextDesc, prometheus.GaugeValue, t.nextRotation.Sub(now).Seconds())
		ch <- prometheus.MustNewConstMetric(rotationTimeDesc, prometheus.GaugeValue, float64(t.nextRotation.UnixMilli())/1000)
	}
}

// observeStatus sets the gauges that describe the cluster from a status.
func (m *metrics) observeStatus(st *reconciler.Status, next time.Time) {
	m.nodeReady.Reset()
	m.nodeDeployed.Reset()
	agree := true
	for i, n := range st.Nodes {
		m.nodeReady.WithLabelValues(n.Name).Set(bool01(n.Ready))
		// By content: RKE deploying the same config in its own layout
		// (`atrest rke up`) is no drift.
		m.nodeDeployed.WithLabelValues(n.Name).Set(bool01(n.ConfigHash == st.DeployedHash && (n.FileSHA256 == "") == (n.ConfigHash == "")))
		if i > 0 && n.ConfigHash != st.Nodes[0].ConfigHash {
			agree = false
		}
	}
	m.nodesAgree.Set(bool01(agree))
	m.outsideRuns.Reset()
	for _, n := range st.Nodes {
		m.outsideRuns.WithLabelValues(n.Name).Set(bool01(slices.ContainsFunc(st.Outside, func(o reconciler.OutsideRun) bool { return o.Node == n.Name })))
	}
	m.census.Reset()
	for res, byPrefix := range st.Census {
		for prefix, n := range byPrefix {
			m.census.WithLabelValues(res, prefix).Set(float64(n))
		}
	}
	m.keys.Reset()
	for _, k := range st.Keys {
		m.keys.WithLabelValues(string(k.Role)).Inc()
	}
	m.pluginHealthy.Reset()
	for _, n := range st.Nodes {
		if n.Plugin != nil {
			m.pluginHealthy.WithLabelValues(n.Name).Set(bool01(n.Plugin.Current))
		}
	}
	m.transit.Reset()
	if t := st.Transit; t != nil && t.Exists {
		m.transit.WithLabelValues("latest").Set(float64(t.Latest))
		m.transit.WithLabelValues("min_decryption").Set(float64(t.MinDecryption))
	}
	m.keyIDs.Reset()
	for res, byPrefix := range st.KeyIDs {
		for prefix, ids := range byPrefix {
			for id, n := range ids {
				m.keyIDs.WithLabelValues(res, prefix, id).Set(float64(n))
			}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.times.lastRotation = st.LastRotation
	m.times.nextRotation = next
	if st.LastSnapshot != nil {
		m.times.lastSnapshot = st.LastSnapshot.Time
	}
}

// observeSnapshots sets each kept snapshot's drill gauges; a snapshot
// pruned or never drilled has none.
func (m *metrics) observeSnapshots(proofs []reconciler.SnapshotProof) {
	m.restorable.Reset()
	m.proven.Reset()
	for _, p := range proofs {
		if p.Verdict == "" {
			continue
		}
		m.restorable.WithLabelValues(p.Name).Set(bool01(p.Restorable()))
		m.proven.WithLabelValues(p.Name).Set(float64(p.Proven.UnixMilli()) / 1000)
	}
}

// observeGit counts a poll and, from the source's counters, the fetches it
// made.
func (m *metrics) observeGit(result string, took time.Duration, before, after gitsource.Stats) {
	m.gitPolls.WithLabelValues(result).Inc()
	m.gitPollDuration.Observe(took.Seconds())
	if n := after.Fetches - before.Fetches; n > 0 {
		m.gitFetches.Add(float64(n))
		m.gitFetchDuration.Observe(after.LastFetchDuration.Seconds())
	}
	if b := after.BytesFetched - before.BytesFetched; b > 0 {
		m.gitFetchedBytes.Add(float64(b))
	}
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
