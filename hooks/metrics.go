package hooks

import (
	"maps"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The hooks' Prometheus families (docs/observability.md), updated after
// each hook call: one map increment under a mutex and one histogram
// observation, on the connection path only (hooks never run on the stream
// path).
var hookDecisionsDesc = prometheus.NewDesc("realmnet_hook_decisions_total",
	"Hook calls by stage (before_connect, after_handshake), hook (its position in registration order among its stage's hooks when it ran, as RejectedError.Hook) and outcome (accepted, rejected, timeout, panic).",
	[]string{"stage", "hook", "outcome"}, nil)

// stage indexes the two stages in the metrics.
type stage uint8

const (
	stageBefore stage = iota
	stageAfter
	numStages
)

// stageLabels are the stages' label values.
var stageLabels = [numStages]string{stageBefore: "before_connect", stageAfter: "after_handshake"}

// outcome is how a hook call ended.
type outcome uint8

const (
	outcomeAccepted outcome = iota
	outcomeRejected
	outcomeTimeout
	outcomePanic
	numOutcomes
)

// outcomeLabels are the outcomes' label values.
var outcomeLabels = [numOutcomes]string{
	outcomeAccepted: "accepted", outcomeRejected: "rejected", outcomeTimeout: "timeout", outcomePanic: "panic",
}

// decisionKey is one series of realmnet_hook_decisions_total.
type decisionKey struct {
	stage   stage
	outcome outcome
	hook    int
}

// metrics is a Registry's counters and histograms; safe for concurrent
// use.
type metrics struct {
	duration *prometheus.HistogramVec
	// durations are duration's children, one per stage, taken at
	// construction so that an observation does not look them up.
	durations [numStages]prometheus.Observer

	mu        sync.Mutex
	decisions map[decisionKey]uint64
}

// init creates the histograms and the counters' map.
func (m *metrics) init() {
	vec := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "realmnet_hook_duration_seconds",
		Help: "Duration of hook calls by stage (before_connect, after_handshake), whatever their outcome; a call that timed out lasts the registry's timeout.",
		// 10 µs to ~10.5 s, ×4: an in-memory check to past DefaultTimeout (2 s).
		Buckets: prometheus.ExponentialBuckets(0.00001, 4, 11),
	}, []string{"stage"})
	m.duration, m.decisions = vec, make(map[decisionKey]uint64)
	for st, label := range stageLabels {
		m.durations[st] = vec.WithLabelValues(label)
	}
}

// observe counts one hook call.
func (m *metrics) observe(st stage, hook int, out outcome, d time.Duration) {
	m.mu.Lock()
	m.decisions[decisionKey{stage: st, outcome: out, hook: hook}]++
	m.mu.Unlock()
	m.durations[st].Observe(d.Seconds())
}

// registryCollector is Registry.Collector's prometheus.Collector.
type registryCollector struct{ r *Registry }

// Collector returns a prometheus.Collector of the hook calls:
//
//   - realmnet_hook_decisions_total{stage, hook, outcome} (counter): every
//     hook call; stage before_connect or after_handshake; hook the hook's
//     position in registration order among its stage's hooks when it ran
//     (the number RejectedError.Hook gives), in decimal; outcome accepted
//     (nil), rejected (an error of the hook's own), timeout (the call's
//     context ended first — the registry's timeout or the caller's context
//     — or the hook returned an error once it had), or panic. A series
//     appears with its first call.
//   - realmnet_hook_duration_seconds{stage} (histogram, seconds): the
//     duration of each hook call, whatever its outcome.
//
// No node label: the node's registerer adds it. Safe for concurrent use.
func (r *Registry) Collector() prometheus.Collector { return registryCollector{r} }

// Describe sends the families' descriptors.
func (c registryCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- hookDecisionsDesc
	c.r.metrics.duration.Describe(ch)
}

// Collect sends the current values.
func (c registryCollector) Collect(ch chan<- prometheus.Metric) {
	m := &c.r.metrics
	m.mu.Lock()
	decisions := maps.Clone(m.decisions)
	m.mu.Unlock()
	for k, n := range decisions {
		ch <- prometheus.MustNewConstMetric(hookDecisionsDesc, prometheus.CounterValue, float64(n),
			stageLabels[k.stage], strconv.Itoa(k.hook), outcomeLabels[k.outcome])
	}
	m.duration.Collect(ch)
}
