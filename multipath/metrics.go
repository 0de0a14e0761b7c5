package multipath

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realmnet/realmnet/core"
)

// The paths' Prometheus families (docs/observability.md). Counters and
// histograms are updated where heartbeats are answered or lost and where
// the selected path changes — never on the stream path; the path gauges
// are counted when the registry is scraped.
var (
	pathsDesc = prometheus.NewDesc("realmnet_paths",
		"Paths (connections) by state (validating, active, standby, degraded, redundant, dead) and tier (direct, relayed).",
		[]string{"state", "tier"}, nil)
	switchesDesc = prometheus.NewDesc("realmnet_path_switches_total",
		"Changes of a peer's selected path, by reason (core.SwitchReason: path_added, path_removed, path_redundant, lower_rtt, healthier, path_degraded, path_dead, upgrade, failover_to_relay).",
		[]string{"reason"}, nil)
	probesSentDesc = prometheus.NewDesc("realmnet_path_probes_sent_total",
		"Heartbeat probes sent, by kind (datagram: a QUIC DATAGRAM frame; stream: a ping on the path's ping stream).",
		[]string{"kind"}, nil)
	probesLostDesc = prometheus.NewDesc("realmnet_path_probes_lost_total",
		"Heartbeat probes not answered within the probe timeout (each made its path degraded).", nil, nil)
	pathsDeadDesc = prometheus.NewDesc("realmnet_paths_dead_total",
		"Paths closed as dead: no heartbeat answer for PathIdleTimeout.", nil, nil)
)

// metrics is a Manager's counters and histograms. Its methods are safe for
// concurrent use.
type metrics struct {
	heartbeatRTT prometheus.Histogram
	failover     prometheus.Histogram

	mu         sync.Mutex
	switches   map[core.SwitchReason]uint64
	streamSent uint64
	lost       uint64
	dead       uint64
}

func newMetrics() *metrics {
	return &metrics{
		heartbeatRTT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "realmnet_path_heartbeat_rtt_seconds",
			Help: "Round-trip times of answered heartbeats (the ACK of a datagram probe, quic-go's RTT sample with the peer's ACK delay removed; or a ping's echo).",
			// 100 µs to ~3.3 s, ×2: loopback to intercontinental.
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		failover: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "realmnet_path_failover_seconds",
			Help: "Time from the last heartbeat answer of a selected path to the selection of another one because it was degraded or dead.",
			// 50 ms to ~13 s, ×2: busy-rate failover to PathIdleTimeout.
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 9),
		}),
		switches: make(map[core.SwitchReason]uint64),
	}
}

func (mt *metrics) switched(reason core.SwitchReason) {
	mt.mu.Lock()
	mt.switches[reason]++
	mt.mu.Unlock()
}

func (mt *metrics) count(n *uint64) {
	mt.mu.Lock()
	*n++
	mt.mu.Unlock()
}

// pathCollector is Manager.Collector's prometheus.Collector.
type pathCollector struct{ m *Manager }

// Collector returns a prometheus.Collector of the paths:
// realmnet_paths{state, tier} (gauge, counted at each scrape),
// realmnet_path_switches_total{reason}, realmnet_path_probes_sent_total{kind},
// realmnet_path_probes_lost_total, realmnet_paths_dead_total (counters),
// realmnet_path_heartbeat_rtt_seconds and realmnet_path_failover_seconds
// (histograms, seconds). Safe for concurrent use.
func (m *Manager) Collector() prometheus.Collector { return pathCollector{m} }

// Describe sends the families' descriptors.
func (c pathCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{pathsDesc, switchesDesc, probesSentDesc, probesLostDesc, pathsDeadDesc} {
		ch <- d
	}
	c.m.metrics.heartbeatRTT.Describe(ch)
	c.m.metrics.failover.Describe(ch)
}

// Collect sends the current values.
func (c pathCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct {
		state core.PathState
		tier  string
	}
	counts := make(map[key]int)
	c.m.mu.RLock()
	for _, pp := range c.m.peers {
		for _, pa := range pp.paths {
			counts[key{pa.state, tierOf(pa)}]++
		}
	}
	c.m.mu.RUnlock()
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(pathsDesc, prometheus.GaugeValue, float64(n), k.state.String(), k.tier)
	}
	mt := c.m.metrics
	mt.mu.Lock()
	for reason, n := range mt.switches {
		ch <- prometheus.MustNewConstMetric(switchesDesc, prometheus.CounterValue, float64(n), string(reason))
	}
	streamSent, lost, dead := mt.streamSent, mt.lost, mt.dead
	mt.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(probesSentDesc, prometheus.CounterValue, float64(c.m.probes.sent.Load()), "datagram")
	ch <- prometheus.MustNewConstMetric(probesSentDesc, prometheus.CounterValue, float64(streamSent), "stream")
	ch <- prometheus.MustNewConstMetric(probesLostDesc, prometheus.CounterValue, float64(lost))
	ch <- prometheus.MustNewConstMetric(pathsDeadDesc, prometheus.CounterValue, float64(dead))
	mt.heartbeatRTT.Collect(ch)
	mt.failover.Collect(ch)
}

// tierOf is a path's tier label.
func tierOf(pa *path) string {
	if pa.relayed {
		return "relayed"
	}
	return "direct"
}

// observeSwitch counts a change of the selected path under its reported
// reason and, for a failover (cause: the old path degraded or died),
// observes the time since the old path's last answer. Manager.mu is held.
func (m *Manager) observeSwitch(old *path, cause, reported core.SwitchReason, now time.Time) {
	m.metrics.switched(reported)
	if old != nil && (cause == core.SwitchPathDegraded || cause == core.SwitchPathDead) {
		m.metrics.failover.Observe(now.Sub(old.lastAnswer).Seconds())
	}
}
