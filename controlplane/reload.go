package controlplane

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// What kube-apiserver says about --encryption-provider-config-automatic-reload,
// by version. From v1.30 it counts reloads by status and stamps the last
// success and the last failure; from v1.34 it also exports the hash of the
// config in force, from its start on. Before v1.30 the counters it has say
// neither when nor what, so atrest restarts those nodes instead.
const (
	reloadMetricPrefix = "apiserver_encryption_config_controller_"
	metricReloads      = reloadMetricPrefix + "automatic_reloads_total"
	metricReloadLast   = reloadMetricPrefix + "automatic_reload_last_timestamp_seconds"
	metricConfigInfo   = reloadMetricPrefix + "last_config_info"
)

// Version is a kube-apiserver's Kubernetes version, as /version says.
type Version struct {
	Major, Minor int
	Git          string // gitVersion, e.g. v1.32.13
}

func (v Version) String() string { return v.Git }

// atLeast reports whether v is minor or later of Kubernetes 1.
func (v Version) atLeast(minor int) bool { return v.Major > 1 || v.Major == 1 && v.Minor >= minor }

// ReloadProvable reports whether a kube-apiserver of this version exports
// what proves a reload: when it last succeeded and failed (v1.30).
func (v Version) ReloadProvable() bool { return v.atLeast(30) }

// hashInForce reports whether it exports the hash of the config in force
// (v1.34).
func (v Version) hashInForce() bool { return v.atLeast(34) }

// parseVersion reads /version's answer.
func parseVersion(body []byte) (Version, error) {
	var info struct {
		Major      string `json:"major"`
		Minor      string `json:"minor"`
		GitVersion string `json:"gitVersion"`
	}
	if err := json.Unmarshal(body, &info); err != nil {
		return Version{}, fmt.Errorf("parse /version: %w", err)
	}
	v := Version{Git: info.GitVersion}
	var err1, err2 error
	v.Major, err1 = strconv.Atoi(info.Major)
	// Some builds say "32+".
	v.Minor, err2 = strconv.Atoi(strings.TrimSuffix(info.Minor, "+"))
	if err1 != nil || err2 != nil {
		// gitVersion is vMAJOR.MINOR.PATCH[-...] in every release.
		if _, err := fmt.Sscanf(info.GitVersion, "v%d.%d", &v.Major, &v.Minor); err != nil {
			return Version{}, fmt.Errorf("parse /version: no version in major %q, minor %q, gitVersion %q", info.Major, info.Minor, info.GitVersion)
		}
	}
	return v, nil
}

// ServerVersion asks the node's kube-apiserver for its version.
func (n *Node) ServerVersion(ctx context.Context) (Version, error) {
	body, err := n.apiGet(ctx, "/version", 64<<10)
	if err != nil {
		return Version{}, nodeErr(n.name, "read kube-apiserver /version", nil, err)
	}
	v, err := parseVersion(body)
	if err != nil {
		return Version{}, nodeErr(n.name, "read kube-apiserver /version", nil, err)
	}
	return v, nil
}

// ReloadMetrics is what one kube-apiserver's /metrics says about its
// automatic reloads of the provider file.
type ReloadMetrics struct {
	// ConfigHash is "sha256:HEX" of the provider file in force (v1.34+);
	// "" when not exported.
	ConfigHash string
	// Successes and Failures count reloads since the process started.
	Successes, Failures float64
	// LastSuccess and LastFailure are when the last one of each happened,
	// by the node's clock; zero when none has.
	LastSuccess, LastFailure time.Time
}

// ReloadMetrics reads the node's kube-apiserver's reload metrics. Reading
// /metrics needs get on that non-resource URL.
func (n *Node) ReloadMetrics(ctx context.Context) (ReloadMetrics, error) {
	const op = "read kube-apiserver /metrics"
	ctx, cancel := context.WithTimeout(ctx, n.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.apiURL+"/metrics", nil)
	if err != nil {
		return ReloadMetrics{}, nodeErr(n.name, op, nil, err)
	}
	resp, err := n.api.Do(req)
	if err != nil {
		return ReloadMetrics{}, nodeErr(n.name, op, nil, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return ReloadMetrics{}, nodeErr(n.name, op, nil, fmt.Errorf("%s: %s (atrest's credentials need get on the non-resource URL /metrics)", resp.Status, bytes.TrimSpace(body)))
	}
	m, err := parseReloadMetrics(resp.Body)
	if err != nil {
		return ReloadMetrics{}, nodeErr(n.name, op, nil, err)
	}
	return m, nil
}

// parseReloadMetrics reads the reload families out of a Prometheus text
// exposition. Only their lines are parsed: the rest of kube-apiserver's
// /metrics is megabytes atrest has no use for.
func parseReloadMetrics(r io.Reader) (ReloadMetrics, error) {
	var kept bytes.Buffer
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if bytes.HasPrefix(line, []byte(reloadMetricPrefix)) ||
			bytes.HasPrefix(line, []byte("# ")) && bytes.Contains(line, []byte(" "+reloadMetricPrefix)) {
			kept.Write(line)
			kept.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		return ReloadMetrics{}, fmt.Errorf("read /metrics: %w", err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(&kept)
	if err != nil {
		return ReloadMetrics{}, fmt.Errorf("parse /metrics: %w", err)
	}
	var m ReloadMetrics
	if f := families[metricConfigInfo]; f != nil {
		for _, s := range f.GetMetric() {
			if h := label(s, "hash"); h != "" {
				m.ConfigHash = h
			}
		}
	}
	if f := families[metricReloads]; f != nil {
		for _, s := range f.GetMetric() {
			switch label(s, "status") {
			case "success":
				m.Successes += s.GetCounter().GetValue()
			case "failure":
				m.Failures += s.GetCounter().GetValue()
			}
		}
	}
	if f := families[metricReloadLast]; f != nil {
		for _, s := range f.GetMetric() {
			t := unixFloat(s.GetGauge().GetValue())
			switch label(s, "status") {
			case "success":
				m.LastSuccess = later(m.LastSuccess, t)
			case "failure":
				m.LastFailure = later(m.LastFailure, t)
			}
		}
	}
	return m, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func unixFloat(v float64) time.Time {
	if v <= 0 {
		return time.Time{}
	}
	sec, frac := math.Modf(v)
	return time.Unix(int64(sec), int64(frac*1e9))
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// LoadState is what a node's kube-apiserver is proven to run, against the
// provider file on its disk.
type LoadState int

const (
	// LoadUnknown: nothing proves either way (yet).
	LoadUnknown LoadState = iota
	// LoadInForce: the file on disk is the config in force.
	LoadInForce
	// LoadRefused: kube-apiserver tried the file on disk and refused it;
	// the config it had stays in force.
	LoadRefused
)

func (s LoadState) String() string {
	switch s {
	case LoadInForce:
		return "in force"
	case LoadRefused:
		return "refused"
	}
	return "unproven"
}

// reloadState judges, for a kube-apiserver of version v that runs with
// automatic reload and started at started, whether the provider file f is
// in force. The file's mtime and the metrics' stamps are both the node's
// clock, so atrest's own clock plays no part.
func reloadState(v Version, f ProviderFile, started time.Time, m ReloadMetrics) LoadState {
	if !f.Present {
		return LoadUnknown
	}
	if v.hashInForce() && m.ConfigHash != "" {
		if m.ConfigHash == "sha256:"+f.SHA256 {
			return LoadInForce
		}
		if !m.LastFailure.IsZero() && !m.LastFailure.Before(f.ModTime) {
			return LoadRefused
		}
		return LoadUnknown
	}
	if !v.ReloadProvable() || f.ModTime.IsZero() {
		return LoadUnknown
	}
	// Written before the process started: read at start, which would
	// have failed on a bad file.
	if !started.IsZero() && f.ModTime.Before(started) {
		return LoadInForce
	}
	succeeded := !m.LastSuccess.IsZero() && !m.LastSuccess.Before(f.ModTime)
	failed := !m.LastFailure.IsZero() && !m.LastFailure.Before(f.ModTime)
	switch {
	case succeeded && (!failed || m.LastFailure.Before(m.LastSuccess)):
		return LoadInForce
	case failed:
		return LoadRefused
	}
	return LoadUnknown
}

// apiGet GETs path from the node's kube-apiserver, at most limit bytes.
func (n *Node) apiGet(ctx context.Context, path string, limit int64) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, n.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.apiURL+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := n.api.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body[:min(len(body), 512)]))
	}
	return body, nil
}
