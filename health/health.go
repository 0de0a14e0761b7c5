// Package health computes a peer's health as a node reports it
// (node.Node.PeerHealth, HealthyPeers, the debug endpoint and the
// realmnet_peer_* metrics): a circuit breaker derived from the swarm's
// dial backoff, and a quality score in [0, 1] from the peer's paths and
// its failed dials. It owns the formula and nothing else: Assess is a pure
// function of its inputs and a time, with no I/O and no state, so callers
// may run it as often as they like (it allocates nothing).
//
// The shape follows the qudag-network connection manager among the
// project's inputs (get_circuit_breaker_state, get_quality_score, healthy
// connections sorted by quality); the breaker's states are the classic
// circuit breaker's (closed, open, half-open), mapped onto the swarm's
// dial backoff (swarm.RetryConfig) rather than kept as a second,
// diverging record of failures.
package health

import (
	"math"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/realmnet/realmnet/core"
)

// Breaker is the state of a peer's circuit breaker.
type Breaker string

const (
	// BreakerClosed: dials to the peer are allowed; no failed dial is on
	// record since its last success.
	BreakerClosed Breaker = "closed"
	// BreakerOpen: the peer is backed off after failed dials; the swarm
	// refuses to dial it (swarm.ErrDialBackoff) until Health.OpenUntil.
	BreakerOpen Breaker = "open"
	// BreakerHalfOpen: the backoff window is over but no dial has
	// succeeded since the failures: the next dial is the trial. It closes
	// the breaker when it succeeds and opens it again, for a longer
	// window, when it fails.
	BreakerHalfOpen Breaker = "half-open"
)

// The constants of the quality score (see Assess).
const (
	// RTTReference is the round trip at which the RTT factor is 1/2:
	// 50 ms, a continental round trip. Loopback and LAN paths score
	// close to 1 (2 ms: 0.96), a 20 ms path 0.71, a 200 ms one 0.2.
	RTTReference = 50 * time.Millisecond
	// LossExponent makes loss weigh heavily: the loss factor is
	// (1 − loss)^10, so 1 % loss gives 0.90, 5 % 0.60, 10 % 0.35 and
	// 20 % 0.11 — a path that loses a tenth of its packets is worse than
	// one ten times as far away (TCP-friendly throughput falls as
	// 1/√loss, and the application's streams stall on each loss).
	LossExponent = 10
	// DegradedFactor multiplies the score of a peer whose best path is
	// degraded (its last heartbeat probe went unanswered) or not yet
	// validated (no heartbeat answered yet).
	DegradedFactor = 0.5
)

// Input is what Assess needs to know about a peer.
type Input struct {
	// Paths are the peer's paths (multipath's snapshots).
	Paths []core.PathInfo
	// BackedOff is set when the swarm holds a backoff entry for the peer
	// (swarm.Swarm.DialBackoffOf); Until, Failures and LastFailure are
	// that entry's.
	BackedOff   bool
	Until       time.Time
	Failures    int
	LastFailure time.Time
}

// Health is a peer's health at one instant.
type Health struct {
	Peer peer.ID
	// Breaker is the circuit breaker's state; OpenUntil is when an open
	// breaker turns half-open (zero otherwise).
	Breaker   Breaker
	OpenUntil time.Time
	// Quality is the score in [0, 1] (see Assess); 0 without a usable
	// path.
	Quality float64
	// RTT and Loss are those of the path the score is taken from: its
	// smoothed RTT and its lost/sent packet ratio, in [0, 1].
	RTT  time.Duration
	Loss float64
	// Paths counts the usable paths (neither dead nor redundant).
	Paths int
	// Degraded is set when the best usable path is degraded or not yet
	// validated.
	Degraded bool
	// Failures counts the failed dials since the last success
	// (swarm.DialBackoff.Failures; 0 once the backoff has gone stale).
	Failures int
	// LastFailure is when the last failed dial ended (zero without one).
	LastFailure time.Time
}

// Healthy reports whether h is a peer to prefer: its breaker is closed and
// it has a usable path that is not degraded.
func (h Health) Healthy() bool { return h.Breaker == BreakerClosed && h.Paths > 0 && !h.Degraded }

// Assess returns p's health at now.
//
// The breaker is open while now is before the backoff's Until, half-open
// after it while the swarm still holds the entry, closed without one (a
// success removes it, and so does the end of its grace period).
//
// The quality score is the product of three factors, each in (0, 1]:
//
//	RTT:      RTTReference / (RTTReference + rtt)
//	loss:     (1 − loss)^LossExponent
//	failures: 1 / (1 + failures)
//
// taken from the peer's best usable path — the selected one, else the
// lowest smoothed RTT — times DegradedFactor when that path is degraded;
// 0 without a usable path. It is stable under noise because its inputs
// are: the RTT is quic-go's smoothed RTT (an exponentially weighted
// average, RFC 9002 §5.3, weight 1/8 per sample) and the loss is the
// connection's cumulative ratio, so one slow or lost packet moves the
// score by little; a peer is never ranked by a single sample.
func Assess(p peer.ID, in Input, now time.Time) Health {
	h := Health{Peer: p, Breaker: BreakerClosed}
	if in.BackedOff {
		h.Failures, h.LastFailure = in.Failures, in.LastFailure
		if now.Before(in.Until) {
			h.Breaker, h.OpenUntil = BreakerOpen, in.Until
		} else {
			h.Breaker = BreakerHalfOpen
		}
	}
	best := -1
	for i, pi := range in.Paths {
		if !usable(pi.State) {
			continue
		}
		h.Paths++
		if best < 0 || better(pi, in.Paths[best]) {
			best = i
		}
	}
	if best < 0 {
		return h
	}
	pi := in.Paths[best]
	h.RTT, h.Loss = pi.SmoothedRTT, min(max(pi.Loss, 0), 1)
	q := float64(RTTReference) / float64(RTTReference+max(h.RTT, 0))
	q *= math.Pow(1-h.Loss, LossExponent)
	q /= float64(1 + h.Failures)
	if pi.State == core.PathDegraded || pi.State == core.PathValidating {
		h.Degraded = true
		q *= DegradedFactor
	}
	h.Quality = q
	return h
}

// usable reports whether a path in state s can carry streams.
func usable(s core.PathState) bool {
	return s != core.PathDead && s != core.PathRedundant
}

// better reports whether path a is preferred to b as the one the score is
// taken from: the selected path, then healthy before degraded, then the
// lower smoothed RTT.
func better(a, b core.PathInfo) bool {
	if a.Selected != b.Selected {
		return a.Selected
	}
	if da, db := a.State == core.PathDegraded, b.State == core.PathDegraded; da != db {
		return !da
	}
	return a.SmoothedRTT < b.SmoothedRTT
}
