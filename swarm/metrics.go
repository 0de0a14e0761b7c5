package swarm

import (
	"github.com/prometheus/client_golang/prometheus"
)

// The admission pipeline's Prometheus families (docs/observability.md),
// read from AdmissionStats when the registry is scraped: nothing is done on
// the connection path. go-libp2p's own swarm families (libp2p_swarm_*) come
// from Config.MetricsTracer.
var (
	admittedDesc = prometheus.NewDesc("realmnet_admission_admitted_total",
		"Connections admitted by the swarm's admission pipeline and announced.", nil, nil)
	refusedDesc = prometheus.NewDesc("realmnet_admission_refused_total",
		"Connections refused by a stage of the admission pipeline, by reason (core.CloseReason: blocked, peer_policy, hook_rejected, path_redundant, max_paths, max_conns_per_peer, pool_ceiling, other, ...).",
		[]string{"reason"}, nil)
)

// admissionCollector is Swarm.Collector's prometheus.Collector.
type admissionCollector struct{ s *Swarm }

// Collector returns a prometheus.Collector of the admission pipeline's
// counters, read from AdmissionStats at each scrape:
// realmnet_admission_admitted_total and
// realmnet_admission_refused_total{reason}. Safe for concurrent use.
func (s *Swarm) Collector() prometheus.Collector { return admissionCollector{s} }

// Describe sends the families' descriptors.
func (c admissionCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- admittedDesc
	ch <- refusedDesc
}

// Collect sends the current counts.
func (c admissionCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.AdmissionStats()
	ch <- prometheus.MustNewConstMetric(admittedDesc, prometheus.CounterValue, float64(st.Admitted))
	for reason, n := range st.Refused {
		ch <- prometheus.MustNewConstMetric(refusedDesc, prometheus.CounterValue, float64(n), string(reason))
	}
}
