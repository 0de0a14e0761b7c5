package multipath

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"
)

// policyConn is a fake connection for selection-policy units: As reaches no
// quic-go connection, so a path's RTT is its heartbeat RTT.
type policyConn struct {
	network.Conn
	id     string
	remote ma.Multiaddr
}

func (c *policyConn) ID() string                                 { return c.id }
func (c *policyConn) As(any) bool                                { return false }
func (c *policyConn) IsClosed() bool                             { return false }
func (c *policyConn) Stat() network.ConnStats                    { return network.ConnStats{} }
func (c *policyConn) RemoteMultiaddr() ma.Multiaddr              { return c.remote }
func (c *policyConn) LocalMultiaddr() ma.Multiaddr               { return c.remote }
func (c *policyConn) GetStreams() []network.Stream               { return nil }
func (c *policyConn) RemotePeer() peer.ID                        { return "" }
func (c *policyConn) CloseWithError(network.ConnErrorCode) error { return nil }

func policyPath(t *testing.T, id, addr string, rtt time.Duration) *path {
	pa := newPath(context.Background(), &policyConn{id: id, remote: ma.StringCast(addr)})
	t.Cleanup(pa.cancel)
	pa.state = StateStandby
	pa.heartbeatRTT.Store(int64(rtt))
	return pa
}

func policyManager(t *testing.T) *Manager {
	bus := eventbus.NewBus()
	m, err := New(policyDialer{}, bus, Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Close() })
	return m
}

type policyDialer struct{ Dialer }

func (policyDialer) LocalPeer() peer.ID { return "" }

// TestHysteresis: within a tier, best switches only for an advantage of at
// least SwitchHysteresis (5 ms); across health tiers at once; IPv6 paths get
// 3 ms off.
func TestHysteresis(t *testing.T) {
	m := policyManager(t)
	current := policyPath(t, "current", "/ip4/10.0.0.1/udp/1/quic-v1", 10*time.Millisecond)
	candidate := policyPath(t, "candidate", "/ip4/10.0.0.2/udp/1/quic-v1", 10*time.Millisecond)
	pp := &peerPaths{paths: []*path{current, candidate}}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rerank("p", pp, "test")
	require.Same(t, current, pp.selected)

	for _, tc := range []struct {
		candidateRTT time.Duration
		switches     bool
	}{
		{7 * time.Millisecond, false},                  // 3 ms better
		{5*time.Millisecond + time.Microsecond, false}, // just under 5 ms better
		{5 * time.Millisecond, true},                   // 5 ms better
	} {
		candidate.heartbeatRTT.Store(int64(tc.candidateRTT))
		pp.selected = current
		m.rerank("p", pp, "heartbeat")
		if tc.switches {
			require.Same(t, candidate, pp.selected, "candidate at %s", tc.candidateRTT)
			require.Equal(t, StateActive, candidate.state)
			require.Equal(t, StateStandby, current.state)
		} else {
			require.Same(t, current, pp.selected, "candidate at %s must not win", tc.candidateRTT)
		}
	}

	// Across health tiers: a degraded selected path loses at once, even to
	// a slower healthy one.
	pp.selected = current
	current.heartbeatRTT.Store(int64(time.Millisecond))
	candidate.heartbeatRTT.Store(int64(50 * time.Millisecond))
	current.state = StateDegraded
	m.rerank("p", pp, "path degraded")
	require.Same(t, candidate, pp.selected)

	// IPv6 bias: an IPv6 path at 12 ms ranks like IPv4 at 9 ms.
	v6 := policyPath(t, "v6", "/ip6/::1/udp/1/quic-v1", 12*time.Millisecond)
	v4 := policyPath(t, "v4", "/ip4/10.0.0.3/udp/1/quic-v1", 10*time.Millisecond)
	pp2 := &peerPaths{paths: []*path{v4, v6}}
	m.rerank("q", pp2, "test")
	require.Same(t, v6, pp2.selected, "12 ms − 3 ms IPv6 bias beats 10 ms")
}
