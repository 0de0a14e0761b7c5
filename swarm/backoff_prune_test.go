package swarm

import (
	"context"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/benbjohnson/clock"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	coretest "github.com/libp2p/go-libp2p/core/test"
	"github.com/libp2p/go-libp2p/core/transport"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/libp2p/go-libp2p/p2p/host/peerstore/pstoremem"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/internal/testkit"
)

// refusingTransport is a transport at whose every address nobody listens:
// each dial fails at once with ECONNREFUSED, what an ICMP port unreachable
// reports. A real QUIC dial to a dead loopback port ends only at its
// handshake timeout (deadUDPAddr in swarm_test.go), too slow for the
// thousands of peers these tests dial. dials counts the dials.
type refusingTransport struct{ dials atomic.Int64 }

var _ transport.Transport = (*refusingTransport)(nil)

func (t *refusingTransport) Dial(context.Context, ma.Multiaddr, peer.ID) (transport.CapableConn, error) {
	t.dials.Add(1)
	return nil, &net.OpError{Op: "dial", Net: "udp", Err: syscall.ECONNREFUSED}
}
func (t *refusingTransport) CanDial(ma.Multiaddr) bool { return true }
func (t *refusingTransport) Listen(ma.Multiaddr) (transport.Listener, error) {
	return nil, syscall.EADDRNOTAVAIL
}
func (t *refusingTransport) Protocols() []int { return []int{ma.P_QUIC_V1} }
func (t *refusingTransport) Proxy() bool      { return false }

// newRefusingSwarm is a swarm over a refusingTransport whose backoff time
// is clk; it is closed at the end of the test.
func newRefusingSwarm(t *testing.T, clk clock.Clock, retry RetryConfig) (*Swarm, *refusingTransport) {
	t.Helper()
	tpt := &refusingTransport{}
	ps, err := pstoremem.NewPeerstore()
	require.NoError(t, err)
	t.Cleanup(func() { _ = ps.Close() })
	s, err := New(Params{
		LocalPeer: coretest.RandPeerIDFatal(t),
		Peerstore: ps,
		Transport: tpt,
		EventBus:  eventbus.NewBus(),
		Clock:     clk,
		Config:    Config{Retry: retry},
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s, tpt
}

// deadAddr is where refusingTransport refuses every peer.
var deadAddr = ma.StringCast("/ip4/127.0.0.1/udp/9/quic-v1")

// TestDialBackoffsArePrunedAndCapped: every failed DialPeer to a fresh peer
// adds a backoff entry; the table never holds more than maxBackoffEntries
// (making room, stale entries go first, then those whose windows end
// first), and the periodic cleanup empties it once every window and its
// grace are over. Time is a mock clock: nothing sleeps.
func TestDialBackoffsArePrunedAndCapped(t *testing.T) {
	const window = time.Second // InitialDelay = MaxDelay, no jitter: every window is 1 s
	clk := clock.NewMock()
	s, tpt := newRefusingSwarm(t, clk, RetryConfig{
		MaxRetries: 0, InitialDelay: window, MaxDelay: window, Multiplier: 1, Jitter: 0,
	})
	ps := s.Peerstore()

	ctx := testkit.Context(t, 20*time.Second)
	entries := func() int {
		s.mu.RLock()
		defer s.mu.RUnlock()
		return len(s.backoffs)
	}
	has := func(p peer.ID) bool {
		s.mu.RLock()
		defer s.mu.RUnlock()
		_, ok := s.backoffs[p]
		return ok
	}
	// dialFresh dials n peers nobody dialed before; each dial must reach
	// the transport and fail, and the table must stay within the cap.
	dialFresh := func(n int) []peer.ID {
		t.Helper()
		peers := make([]peer.ID, n)
		for i := range peers {
			p := coretest.RandPeerIDFatal(t)
			peers[i] = p
			ps.AddAddr(p, deadAddr, peerstore.PermanentAddrTTL)
			_, err := s.DialPeer(ctx, p)
			require.ErrorIs(t, err, syscall.ECONNREFUSED)
			require.NotErrorIs(t, err, ErrDialBackoff)
			if got := entries(); got > maxBackoffEntries {
				require.FailNowf(t, "backoff table over its cap",
					"%d entries after %d of %d fresh peers (cap %d)", got, i+1, n, maxBackoffEntries)
			}
		}
		return peers
	}
	countIn := func(peers []peer.ID) (n int) {
		for _, p := range peers {
			if has(p) {
				n++
			}
		}
		return n
	}

	// 1,000 unreachable peers: one entry each, refused for one window.
	old := dialFresh(1000)
	require.Equal(t, int64(1000), tpt.dials.Load())
	require.Equal(t, 1000, entries())
	_, err := s.DialPeer(ctx, old[0])
	require.ErrorIs(t, err, ErrDialBackoff)
	require.Equal(t, int64(1000), tpt.dials.Load(), "a backed-off peer is not dialed")

	// Window over but grace running: the entry stays (a new failure would
	// continue the peer's sequence); after the grace it is stale.
	clk.Add(window + window/2)
	s.mu.Lock()
	s.pruneBackoffsLocked(clk.Now())
	s.mu.Unlock()
	require.Equal(t, 1000, entries(), "an entry in its grace period must stay")
	clk.Add(window / 2)

	// A storm of fresh failing peers fills the table: the stale entries go
	// first, and no live one is evicted while they make room enough.
	storm := dialFresh(maxBackoffEntries)
	require.Equal(t, maxBackoffEntries, entries())
	require.Zero(t, countIn(old), "stale entries are evicted before live ones")
	require.Equal(t, maxBackoffEntries, countIn(storm))

	// Beyond the cap with every entry live: the first new peer frees a
	// batch of places, taking the entries whose windows end first (the
	// storm's, 10 ms older), never a newer one.
	clk.Add(10 * time.Millisecond)
	late := dialFresh(100)
	require.Equal(t, maxBackoffEntries-backoffEvictBatch+len(late), entries())
	require.Equal(t, len(late), countIn(late))
	require.Equal(t, maxBackoffEntries-backoffEvictBatch, countIn(storm))
	for _, p := range late {
		_, err := s.DialPeer(ctx, p)
		require.ErrorIs(t, err, ErrDialBackoff, "the newest entries must survive the cap")
	}

	// The storm's windows are over, the late ones' are not: when the table
	// is full again, expired entries make room before live ones.
	clk.Add(window - 5*time.Millisecond)
	fill := dialFresh(backoffEvictBatch - len(late) + 1)
	require.Equal(t, maxBackoffEntries-backoffEvictBatch+1, entries())
	require.Equal(t, maxBackoffEntries-2*backoffEvictBatch, countIn(storm))
	require.Equal(t, len(late), countIn(late), "expired entries are evicted before live ones")
	require.Equal(t, len(fill), countIn(fill))

	// The periodic cleanup drops everything once windows and graces are
	// over; the mock ticker fires on the clock's move, the cleanup runs
	// on the swarm's goroutine: wait for its result.
	clk.Add(backoffCleanupInterval)
	require.Eventually(t, func() bool { return entries() == 0 }, 5*time.Second, time.Millisecond,
		"stale backoff entries must be pruned; %d left", entries())
}

// TestDialBackoffSequenceSurvivesOnlyItsGrace: a peer that fails again
// within one window after its window ended continues its sequence (a
// longer window), as in go-libp2p; one that fails again later starts over,
// whether or not the cleanup has dropped its entry yet.
func TestDialBackoffSequenceSurvivesOnlyItsGrace(t *testing.T) {
	clk := clock.NewMock()
	s, tpt := newRefusingSwarm(t, clk, RetryConfig{
		MaxRetries: 0, InitialDelay: time.Second, MaxDelay: time.Minute, Multiplier: 2, Jitter: 0,
	})
	ctx := testkit.Context(t, 20*time.Second)
	p := coretest.RandPeerIDFatal(t)
	s.Peerstore().AddAddr(p, deadAddr, peerstore.PermanentAddrTTL)
	// refusedFor dials p, which must reach the transport, and returns how long
	// DialPeer then refuses p (to the millisecond).
	refusedFor := func() time.Duration {
		t.Helper()
		dials := tpt.dials.Load()
		_, err := s.DialPeer(ctx, p)
		require.ErrorIs(t, err, syscall.ECONNREFUSED)
		require.Equal(t, dials+1, tpt.dials.Load())
		s.mu.RLock()
		defer s.mu.RUnlock()
		return s.backoffs[p].until.Sub(clk.Now())
	}

	require.Equal(t, time.Second, refusedFor())
	clk.Add(1500 * time.Millisecond) // window over, grace running
	require.Equal(t, 2*time.Second, refusedFor(), "within the grace the sequence continues")
	clk.Add(4 * time.Second) // window (2 s) and grace (2 s) over, no cleanup tick yet
	require.Equal(t, time.Second, refusedFor(), "after the grace the sequence starts over")
}
