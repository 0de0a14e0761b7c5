package swarm_test

import (
	"context"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/transport"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/swarm"
)

// namedTransport is a transport that only names its protocols: enough for
// the swarm's choice of transport, which is what these tests check (the
// relayed connections themselves run over real QUIC in node's
// TestRelayedPath).
type namedTransport struct {
	transport.Transport
	protocols []int
	proxy     bool
}

func (t namedTransport) Protocols() []int { return t.protocols }
func (t namedTransport) Proxy() bool      { return t.proxy }
func (t namedTransport) CanDial(a ma.Multiaddr) bool {
	for _, p := range a.Protocols() {
		for _, mine := range t.protocols {
			if p.Code == mine {
				return true
			}
		}
	}
	return false
}
func (t namedTransport) Dial(context.Context, ma.Multiaddr, peer.ID) (transport.CapableConn, error) {
	return nil, transport.ErrListenerClosed
}

// TestAddTransport: the swarm is a transport.TransportNetwork. A transport
// that names no protocol, and one whose protocol already has a transport
// (QUIC's), are refused by name; a relay transport makes /p2p-circuit
// addresses dialable, which they are not without it; Listen names an
// address no transport takes.
func TestAddTransport(t *testing.T) {
	s := newSwarm(t, swarm.Config{})
	var _ transport.TransportNetwork = s.Swarm

	require.ErrorContains(t, s.AddTransport(namedTransport{}), "handles no protocols")
	err := s.AddTransport(namedTransport{protocols: []int{ma.P_QUIC_V1}})
	require.ErrorContains(t, err, "quic-v1")
	require.ErrorContains(t, err, "already have a transport")

	relayed := ma.StringCast("/ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooWKiBNp7uGqTrQsvYJkHtRY1WAJkpxV6sTWkHrGVYV4SHy/p2p-circuit")
	p := peer.ID("some-peer")
	require.False(t, s.CanDial(p, relayed), "no relay transport yet")
	require.ErrorContains(t, s.Listen(ma.StringCast("/p2p-circuit")), "no transport for it")

	require.NoError(t, s.AddTransport(namedTransport{protocols: []int{ma.P_CIRCUIT}, proxy: true}))
	require.True(t, s.CanDial(p, relayed), "the relay transport dials circuit addresses")
	require.True(t, s.CanDial(p, ma.StringCast("/ip4/127.0.0.1/udp/4001/quic-v1")), "QUIC still dials direct ones")
	require.False(t, s.CanDial(p, ma.StringCast("/ip4/127.0.0.1/tcp/4001")), "nothing dials TCP")
}
