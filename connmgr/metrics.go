package connmgr

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/realmnet/realmnet/core"
)

// The pools' Prometheus families (docs/observability.md). They are read
// from Stats when the registry is scraped, so they cost nothing on the
// connection and stream paths.
var (
	poolConnectionsDesc = prometheus.NewDesc("realmnet_pool_connections",
		"Connections counted in the pool.", []string{"pool"}, nil)
	poolLowWaterDesc = prometheus.NewDesc("realmnet_pool_low_water",
		"The pool's LowWater: a trim closes connections down to it.", []string{"pool"}, nil)
	poolHighWaterDesc = prometheus.NewDesc("realmnet_pool_high_water",
		"The pool's HighWater: reaching it starts a trim.", []string{"pool"}, nil)
	poolTrimsDesc = prometheus.NewDesc("realmnet_pool_trims_total",
		"Trims run on the pool.", []string{"pool"}, nil)
	poolTrimmedDesc = prometheus.NewDesc("realmnet_pool_trimmed_connections_total",
		"Connections closed by trims, by reason (global_high_water, unassigned_high_water, realm_high_water, pool_ceiling, manual_trim).",
		[]string{"reason"}, nil)
)

// poolCollector is Manager.Collector's prometheus.Collector.
type poolCollector struct {
	m         *Manager
	realmName func(core.RealmID) string
}

// Collector returns a prometheus.Collector of the pools, read from Stats at
// each scrape: realmnet_pool_connections, realmnet_pool_low_water and
// realmnet_pool_high_water (gauges), realmnet_pool_trims_total (counter),
// each labelled pool ("global", "unassigned" or "realm:<name>"), and
// realmnet_pool_trimmed_connections_total{reason}. realmName gives a
// realm's name for its pool label; nil, or an empty name, labels the pool
// with the realm's ID (core.RealmPool). Refusals at admission are the
// swarm's (realmnet_admission_refused_total{reason}). Safe for concurrent
// use.
func (m *Manager) Collector(realmName func(core.RealmID) string) prometheus.Collector {
	return &poolCollector{m: m, realmName: realmName}
}

// Describe sends the descriptors of the pools' families.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolConnectionsDesc, poolLowWaterDesc, poolHighWaterDesc, poolTrimsDesc, poolTrimmedDesc} {
		ch <- d
	}
}

// Collect sends the pools' current values.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.m.Stats()
	pool := func(name string, ps PoolStats) {
		ch <- prometheus.MustNewConstMetric(poolConnectionsDesc, prometheus.GaugeValue, float64(ps.Count), name)
		ch <- prometheus.MustNewConstMetric(poolLowWaterDesc, prometheus.GaugeValue, float64(ps.LowWater), name)
		ch <- prometheus.MustNewConstMetric(poolHighWaterDesc, prometheus.GaugeValue, float64(ps.HighWater), name)
		ch <- prometheus.MustNewConstMetric(poolTrimsDesc, prometheus.CounterValue, float64(ps.Trims), name)
	}
	pool(string(core.PoolGlobal), st.Global)
	pool(string(core.PoolUnassigned), st.Unassigned)
	for id, ps := range st.Realms {
		pool(c.poolName(id), ps)
	}
	for reason, n := range st.Closed {
		ch <- prometheus.MustNewConstMetric(poolTrimmedDesc, prometheus.CounterValue, float64(n), string(reason))
	}
}

// poolName is the pool label of realm id's sub-pool.
func (c *poolCollector) poolName(id core.RealmID) string {
	if c.realmName != nil {
		if name := c.realmName(id); name != "" {
			return "realm:" + name
		}
	}
	return string(core.RealmPool(id))
}
