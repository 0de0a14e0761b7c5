package swarm_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peerstore"
	libp2pswarm "github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/swarm"
)

// TestHolePunchDial runs the two halves of a QUIC hole punch as go-libp2p's
// DCUtR asks the swarm for them (network.WithSimultaneousConnect): the
// client dials, the other side sends UDP packets to the client's address
// and takes the client's connection from its listener. The punch ignores
// the peer's dial backoff (earlier unsolicited dials say nothing about a
// coordinated punch) and records none when it fails, and the connection is
// inbound on the side that did not dial it.
func TestHolePunchDial(t *testing.T) {
	retry := swarm.RetryConfig{MaxRetries: 0, InitialDelay: time.Minute, MaxDelay: time.Minute, Multiplier: 2}
	client := newSwarm(t, swarm.Config{AddrDialTimeout: 200 * time.Millisecond, Retry: retry})
	server := newSwarm(t, swarm.Config{AddrDialTimeout: 200 * time.Millisecond, Retry: retry})
	ctx := context.Background()

	// Back both off: a plain dial to a dead address fails and backs the
	// peer off for a minute.
	client.Peerstore().AddAddr(server.LocalPeer(), deadUDPAddr(t), peerstore.PermanentAddrTTL)
	server.Peerstore().AddAddr(client.LocalPeer(), deadUDPAddr(t), peerstore.PermanentAddrTTL)
	for _, s := range []*testSwarm{client, server} {
		other := server
		if s == server {
			other = client
		}
		_, err := s.DialPeer(ctx, other.LocalPeer())
		require.Error(t, err)
		_, err = s.DialPeer(ctx, other.LocalPeer())
		require.ErrorIs(t, err, swarm.ErrDialBackoff)
	}

	// A failed punch (nothing answers) records no backoff of its own and
	// does not count as a dial in flight.
	punchCtx, cancel := context.WithTimeout(network.WithSimultaneousConnect(ctx, false, "test"), 300*time.Millisecond)
	_, err := server.DialPeer(punchCtx, client.LocalPeer())
	cancel()
	require.Error(t, err)
	require.NotErrorIs(t, err, swarm.ErrDialBackoff, "a hole punch ignores the peer's backoff")

	learn(client, server)
	learn(server, client)
	type result struct {
		c   network.Conn
		err error
	}
	served := make(chan result, 1)
	go func() {
		c, err := server.DialPeer(network.WithSimultaneousConnect(ctx, false, "test"), client.LocalPeer())
		served <- result{c, err}
	}()
	// Either order ends the same: a client dial that lands before the
	// server punches is accepted by the server's listener, and the punch
	// then finds that connection.
	dialed, err := client.DialPeer(network.WithSimultaneousConnect(ctx, true, "test"), server.LocalPeer())
	require.NoError(t, err)
	r := <-served
	require.NoError(t, r.err)

	require.Equal(t, network.DirOutbound, dialed.Stat().Direction)
	require.Equal(t, network.DirInbound, r.c.Stat().Direction, "the punched connection was dialed by the peer")
	require.True(t, dialed.LocalMultiaddr().Equal(r.c.RemoteMultiaddr()))
	require.True(t, dialed.RemoteMultiaddr().Equal(r.c.LocalMultiaddr()))
	// The client's fresh Initials (holePunchRedials) may complete too on
	// a loaded machine: more connections on the same pair of addresses,
	// which multipath's redundancy rule closes in a node. All go one way.
	for _, c := range client.ConnsToPeer(server.LocalPeer()) {
		require.Equal(t, network.DirOutbound, c.Stat().Direction)
		require.True(t, c.RemoteMultiaddr().Equal(dialed.RemoteMultiaddr()))
	}
	for _, c := range server.ConnsToPeer(client.LocalPeer()) {
		require.Equal(t, network.DirInbound, c.Stat().Direction)
	}

	server.SetStreamHandler(echoHandler)
	s, err := dialed.NewStream(ctx)
	require.NoError(t, err)
	echo(t, s, 1024)
}

// dialCounter is a swarm metrics tracer that counts failed address dials.
type dialCounter struct {
	libp2pswarm.MetricsTracer // nil: only the methods below are called
	failed                    atomic.Int32
}

func (d *dialCounter) FailedDialing(ma.Multiaddr, error, error) { d.failed.Add(1) }
func (d *dialCounter) CompletedHandshake(time.Duration, network.ConnectionState, ma.Multiaddr) {
}
func (d *dialCounter) DialCompleted(bool, int, time.Duration) {}
func (d *dialCounter) ClosedConnection(network.Direction, time.Duration, network.ConnectionState, ma.Multiaddr) {
}

// TestHolePunchClientDialsAgain: the client side of a hole punch sends new
// first packets 5, 15 and 45 ms into the punch (a lost first Initial is
// otherwise resent only after quic-go's probe timeout, ~200 ms); a plain
// dial does not.
func TestHolePunchClientDialsAgain(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ctx   context.Context
		dials int32
	}{
		{"hole punch client", network.WithSimultaneousConnect(context.Background(), true, "test"), 4},
		{"plain dial", context.Background(), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			counter := &dialCounter{}
			client := newSwarmWith(t, func(p *swarm.Params) {
				p.Config.Retry = swarm.RetryConfig{MaxRetries: 0, InitialDelay: time.Minute, MaxDelay: time.Minute, Multiplier: 2}
				p.Config.AddrDialTimeout = 200 * time.Millisecond
				p.Config.MetricsTracer = counter
			})
			dead := deadUDPAddr(t)
			id := newSwarm(t, swarm.Config{}).LocalPeer()
			client.Peerstore().AddAddr(id, dead, peerstore.PermanentAddrTTL)
			ctx, cancel := context.WithTimeout(tc.ctx, 300*time.Millisecond)
			defer cancel()
			_, err := client.DialPeer(ctx, id)
			require.Error(t, err)
			// A plain dial outlives its caller's context (the swarm's
			// dial ends at AddrDialTimeout).
			require.Eventually(t, func() bool { return counter.failed.Load() >= tc.dials }, 5*time.Second, 5*time.Millisecond)
			require.Equal(t, tc.dials, counter.failed.Load(), "QUIC dials of %s", dead)
		})
	}
}
