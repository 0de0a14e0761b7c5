package node_test

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/internal/eventqueue"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/swarm"
)

// TestUnreadStreamEventsAreBoundedAndCounted proves issue #11 item 11: a
// subscriber to the swarm's stream events that does not read costs bounded
// memory however many streams a peer opens — the swarm's event queue holds
// at most eventqueue.DefaultLimit events and drops, and counts, the rest
// (before: ~326 bytes per stream, without bound, 40,000 streams in 5 s from
// one non-member) — and the count is exposed (Node.EventsDropped, and the
// metric realmnet_event_queue_dropped_total).
func TestUnreadStreamEventsAreBoundedAndCounted(t *testing.T) {
	const streams = 6000
	reg := prometheus.NewRegistry()
	victim := testnode.New(t, node.Metrics(reg))
	victim.SetStreamHandler("/flood/1.0.0", func(s network.Stream) { _ = s.Close() })
	// Never read. (The stream events are built only while subscribed.)
	sub, err := victim.Host().EventBus().Subscribe([]any{new(swarm.EvtStreamOpened), new(swarm.EvtStreamClosed)})
	require.NoError(t, err)
	defer sub.Close()

	attacker := testkit.StockHost(t) // any peer, no realm needed
	ctx := testkit.Context(t, 60*time.Second)
	require.NoError(t, attacker.Connect(ctx, peer.AddrInfo{ID: victim.ID(), Addrs: victim.Addrs()}))
	for i := range streams {
		s, err := attacker.NewStream(ctx, victim.ID(), "/flood/1.0.0")
		require.NoError(t, err, "stream %d", i)
		_, _ = s.Read(make([]byte, 1)) // the victim's handler closes it
		_ = s.Reset()
	}
	// Each stream is an EvtStreamOpened and an EvtStreamClosed; all but
	// the subscription's buffer (16), the one being emitted and the
	// queue's limit must have been dropped.
	atLeast := uint64(2*streams - eventqueue.DefaultLimit - 64)
	require.Eventually(t, func() bool { return victim.EventsDropped().Swarm >= atLeast }, 30*time.Second, 20*time.Millisecond,
		"dropped %d swarm events, want at least %d", victim.EventsDropped().Swarm, atLeast)
	// The same count is exported.
	waitMetric(t, reg, "realmnet_event_queue_dropped_total", map[string]string{"node": victim.ID().String(), "queue": "swarm"}, float64(atLeast))
	t.Logf("%d streams: %d swarm events dropped, the queue holds at most %d", streams, victim.EventsDropped().Swarm, eventqueue.DefaultLimit)
}
