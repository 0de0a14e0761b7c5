package health_test

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/health"
)

const p = peer.ID("peer")

var now = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

func path(rtt time.Duration, loss float64, state core.PathState, selected bool) core.PathInfo {
	return core.PathInfo{SmoothedRTT: rtt, Loss: loss, State: state, Selected: selected}
}

// The breaker follows the dial backoff: closed without one, open inside
// its window, half-open after it while the swarm keeps the entry.
func TestBreakerFollowsBackoff(t *testing.T) {
	h := health.Assess(p, health.Input{}, now)
	require.Equal(t, health.BreakerClosed, h.Breaker)
	require.True(t, h.OpenUntil.IsZero())

	in := health.Input{BackedOff: true, Until: now.Add(time.Second), Failures: 2, LastFailure: now.Add(-time.Second)}
	h = health.Assess(p, in, now)
	require.Equal(t, health.BreakerOpen, h.Breaker)
	require.Equal(t, in.Until, h.OpenUntil)
	require.Equal(t, 2, h.Failures)
	require.Equal(t, in.LastFailure, h.LastFailure)
	require.False(t, h.Healthy())

	h = health.Assess(p, in, now.Add(time.Second))
	require.Equal(t, health.BreakerHalfOpen, h.Breaker)
	require.True(t, h.OpenUntil.IsZero())
}

// The score orders a 2 ms peer above a 20 ms one, a lossy one below both,
// and is 0 without a usable path.
func TestQualityOrders(t *testing.T) {
	fast := health.Assess(p, health.Input{Paths: []core.PathInfo{path(2*time.Millisecond, 0, core.PathActive, true)}}, now)
	slow := health.Assess(p, health.Input{Paths: []core.PathInfo{path(20*time.Millisecond, 0, core.PathActive, true)}}, now)
	lossy := health.Assess(p, health.Input{Paths: []core.PathInfo{path(2*time.Millisecond, 0.1, core.PathActive, true)}}, now)
	require.InDelta(t, 50.0/52, fast.Quality, 1e-9)
	require.InDelta(t, 50.0/70, slow.Quality, 1e-9)
	require.Greater(t, fast.Quality, slow.Quality)
	require.Greater(t, slow.Quality, lossy.Quality)
	for _, h := range []health.Health{fast, slow, lossy} {
		require.True(t, h.Healthy())
		require.Greater(t, h.Quality, 0.0)
		require.LessOrEqual(t, h.Quality, 1.0)
	}

	none := health.Assess(p, health.Input{Paths: []core.PathInfo{path(time.Millisecond, 0, core.PathDead, false)}}, now)
	require.Zero(t, none.Quality)
	require.Zero(t, none.Paths)
	require.False(t, none.Healthy())
}

// Noise in one sample moves the score by little: a 10 % change of the
// smoothed RTT changes the RTT factor by less than 10 %, and out-of-range
// inputs stay within [0, 1].
func TestQualityStableAndBounded(t *testing.T) {
	a := health.Assess(p, health.Input{Paths: []core.PathInfo{path(20*time.Millisecond, 0.01, core.PathActive, true)}}, now)
	b := health.Assess(p, health.Input{Paths: []core.PathInfo{path(22*time.Millisecond, 0.01, core.PathActive, true)}}, now)
	require.Less(t, (a.Quality-b.Quality)/a.Quality, 0.03)

	odd := health.Assess(p, health.Input{Paths: []core.PathInfo{path(-time.Second, 3, core.PathActive, true)}}, now)
	require.GreaterOrEqual(t, odd.Quality, 0.0)
	require.LessOrEqual(t, odd.Quality, 1.0)
}

// The score is taken from the selected path, a degraded best path halves
// it and is not healthy, and failed dials lower it.
func TestQualityPathChoiceAndFailures(t *testing.T) {
	in := health.Input{Paths: []core.PathInfo{
		path(2*time.Millisecond, 0, core.PathStandby, false),
		path(20*time.Millisecond, 0, core.PathActive, true),
	}}
	h := health.Assess(p, in, now)
	require.Equal(t, 20*time.Millisecond, h.RTT)
	require.Equal(t, 2, h.Paths)

	degraded := health.Assess(p, health.Input{Paths: []core.PathInfo{path(2*time.Millisecond, 0, core.PathDegraded, false)}}, now)
	require.True(t, degraded.Degraded)
	require.False(t, degraded.Healthy())
	require.InDelta(t, 50.0/52*health.DegradedFactor, degraded.Quality, 1e-9)

	failed := health.Assess(p, health.Input{Paths: in.Paths, BackedOff: true, Until: now.Add(-time.Second), Failures: 1}, now)
	require.InDelta(t, h.Quality/2, failed.Quality, 1e-9)
	require.Equal(t, health.BreakerHalfOpen, failed.Breaker)
}
