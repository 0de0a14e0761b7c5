package node

import (
	"cmp"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/health"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/swarm"
)

// PeerHealth returns p's health (package health): its circuit breaker,
// derived from the swarm's dial backoff (closed; open until a time while
// dials are refused; half-open when the next dial is the trial), and a
// quality score in [0, 1] from its best path's smoothed RTT and loss and
// its failed dials (health.Assess documents the formula). false when the
// node knows nothing of p: no path and no failed dial on record. Safe for
// concurrent use.
func (n *Node) PeerHealth(p peer.ID) (health.Health, bool) {
	b, backedOff := n.swarm.DialBackoffOf(p)
	paths := n.paths.Paths(p)
	if !backedOff && len(paths) == 0 {
		return health.Health{}, false
	}
	return health.Assess(p, healthInput(paths, b, backedOff), time.Now()), true
}

// HealthyPeers returns the health of every connected peer that is healthy
// (health.Health.Healthy: breaker closed, a usable path that is not
// degraded), the best quality first, ties by peer ID. Safe for concurrent
// use.
func (n *Node) HealthyPeers() []health.Health {
	now := time.Now()
	var out []health.Health
	for _, p := range n.swarm.Peers() {
		b, backedOff := n.swarm.DialBackoffOf(p)
		h := health.Assess(p, healthInput(n.paths.Paths(p), b, backedOff), now)
		if h.Healthy() {
			out = append(out, h)
		}
	}
	sortByQuality(out)
	return out
}

// sortByQuality orders peers' health by quality, the best first, ties by
// peer ID.
func sortByQuality(hs []health.Health) {
	slices.SortFunc(hs, func(a, b health.Health) int {
		return cmp.Or(cmp.Compare(b.Quality, a.Quality), cmp.Compare(a.Peer, b.Peer))
	})
}

func healthInput(paths []core.PathInfo, b swarm.DialBackoff, backedOff bool) health.Input {
	in := health.Input{Paths: paths, BackedOff: backedOff}
	if backedOff {
		in.Until, in.Failures, in.LastFailure = b.Until, b.Failures, b.LastFailure
	}
	return in
}

var (
	peerBreakersDesc = prometheus.NewDesc("realmnet_peer_breakers",
		"Peers by circuit-breaker state (closed, open, half-open): connected peers and peers backed off after failed dials.",
		[]string{"state"}, nil)
	peerQualityDesc = prometheus.NewDesc("realmnet_peer_quality",
		"Quality scores in [0, 1] of the connected peers (health.Assess), as a histogram taken at each scrape.", nil, nil)
)

// peerQualityBuckets are the upper bounds of realmnet_peer_quality.
var peerQualityBuckets = []float64{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1}

// healthCollector reports the peers' health, computed at each scrape over
// the connected peers and the backed-off ones (the swarm caps the latter at
// 4096), so it costs nothing between scrapes and its series do not grow
// with the number of peers (no per-peer label: peer IDs are free).
type healthCollector struct {
	swarm *swarm.Swarm
	paths *multipath.Manager
}

// Describe sends the families' descriptors.
func (c healthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- peerBreakersDesc
	ch <- peerQualityDesc
}

// Collect sends the breaker counts and the quality histogram.
func (c healthCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	backoffs := c.swarm.DialBackoffs()
	breakers := map[health.Breaker]int{health.BreakerClosed: 0, health.BreakerOpen: 0, health.BreakerHalfOpen: 0}
	buckets := make(map[float64]uint64, len(peerQualityBuckets))
	for _, ub := range peerQualityBuckets {
		buckets[ub] = 0 // every bucket is exported, empty or not
	}
	var count uint64
	var sum float64
	for _, p := range c.swarm.Peers() {
		b, backedOff := backoffs[p]
		delete(backoffs, p)
		h := health.Assess(p, healthInput(c.paths.Paths(p), b, backedOff), now)
		breakers[h.Breaker]++
		count++
		sum += h.Quality
		for _, ub := range peerQualityBuckets {
			if h.Quality <= ub {
				buckets[ub]++
			}
		}
	}
	for p, b := range backoffs { // backed off, not connected
		breakers[health.Assess(p, healthInput(nil, b, true), now).Breaker]++
	}
	for state, n := range breakers {
		ch <- prometheus.MustNewConstMetric(peerBreakersDesc, prometheus.GaugeValue, float64(n), string(state))
	}
	ch <- prometheus.MustNewConstHistogram(peerQualityDesc, count, sum, buckets)
}
