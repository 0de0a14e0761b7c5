package node_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/health"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/internal/udpproxy"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/swarm"
)

// TestPeerHealthBreaker: a peer whose dials fail shows an open breaker
// (dials refused until OpenUntil), turns half-open when the backoff window
// is over, and closes when a dial succeeds.
func TestPeerHealthBreaker(t *testing.T) {
	a := testnode.New(t,
		node.Retry(node.RetryConfig{MaxRetries: 0, InitialDelay: 400 * time.Millisecond, MaxDelay: 2 * time.Second, Multiplier: 2}),
		node.AddrDialTimeout(300*time.Millisecond))
	key, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	gone := testnode.New(t, node.Identity(key))
	at := gone.AddrInfo()
	require.NoError(t, gone.Close())
	_, known := a.PeerHealth(at.ID)
	require.False(t, known, "a peer never dialed has no health")

	ctx := testkit.Context(t, 20*time.Second)
	require.Error(t, a.Connect(ctx, at))
	h, known := a.PeerHealth(at.ID)
	require.True(t, known)
	require.Equal(t, health.BreakerOpen, h.Breaker)
	require.True(t, h.OpenUntil.After(time.Now()), "open until %s", h.OpenUntil)
	require.Equal(t, 1, h.Failures)
	require.Zero(t, h.Quality)
	require.ErrorIs(t, a.Connect(ctx, at), swarm.ErrDialBackoff, "an open breaker refuses the dial")

	require.Eventually(t, func() bool {
		h, _ := a.PeerHealth(at.ID)
		return h.Breaker == health.BreakerHalfOpen
	}, 5*time.Second, 10*time.Millisecond, "the breaker did not turn half-open")

	back := testnode.New(t, node.Identity(key)) // the same peer, on a new port
	require.NoError(t, a.Connect(ctx, back.AddrInfo()))
	h, _ = a.PeerHealth(at.ID)
	require.Equal(t, health.BreakerClosed, h.Breaker, "a successful dial closes the breaker")
	require.Zero(t, h.Failures)
	require.Positive(t, h.Paths)
}

// TestPeerHealthQualityOrders: through proxies, a peer 2 ms away scores
// above one 20 ms away, and one behind a lossy link below both;
// HealthyPeers lists the 2 ms peer before the 20 ms one.
func TestPeerHealthQualityOrders(t *testing.T) {
	cfg := multipath.Config{HeartbeatInterval: 100 * time.Millisecond, DesiredPaths: 1}
	// The servers listen on 127.0.0.2, the client on 127.0.0.3, and each
	// gater blocks the other's address: the two reach each other only
	// through the server's proxy (on 127.0.0.1), never on a direct path
	// that identify tells either of them about.
	client := testnode.New(t, node.Multipath(cfg), node.ListenAddrStrings("/ip4/127.0.0.3/udp/0/quic-v1"))
	require.NoError(t, client.Gater().BlockAddr(net.ParseIP("127.0.0.2")))
	ctx := testkit.Context(t, 30*time.Second)
	proxies := map[peer.ID]*udpproxy.Proxy{}
	peerBehind := func(setup func(p *udpproxy.Proxy)) peer.ID {
		server := testnode.New(t, node.Multipath(cfg), node.ListenAddrStrings("/ip4/127.0.0.2/udp/0/quic-v1"))
		require.NoError(t, server.Gater().BlockAddr(net.ParseIP("127.0.0.3")))
		server.SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
		proxy := testnode.Proxy(t, server)
		setup(proxy)
		proxies[server.ID()] = proxy
		require.NoError(t, client.Connect(ctx, peer.AddrInfo{ID: server.ID(), Addrs: []ma.Multiaddr{proxy.Multiaddr()}}))
		return server.ID()
	}
	fast := peerBehind(func(p *udpproxy.Proxy) {
		p.SetDelay(time.Millisecond)
	})
	slow := peerBehind(func(p *udpproxy.Proxy) {
		p.SetDelay(10 * time.Millisecond)
	})
	lossy := peerBehind(func(p *udpproxy.Proxy) {
		require.NoError(t, p.SetDropRate(0.2))
	})

	var hf, hs, hl health.Health
	var healthy []health.Health
	inOrder := func() bool {
		order := map[peer.ID]int{}
		for i, h := range healthy {
			order[h.Peer] = i
		}
		f, okf := order[fast]
		s, oks := order[slow]
		return okf && oks && f < s
	}
	ordered := func() bool {
		hf, _ = client.PeerHealth(fast)
		hs, _ = client.PeerHealth(slow)
		hl, _ = client.PeerHealth(lossy)
		healthy = client.HealthyPeers()
		return hl.Loss > 0.05 && hf.Quality > hs.Quality && hs.Quality > hl.Quality && inOrder()
	}
	// Echoes to the lossy peer give its path ack-eliciting packets of this
	// end to lose (quic-go counts the loss of those only), so that its
	// loss ratio shows the link's.
	for deadline := time.Now().Add(20 * time.Second); !ordered() && time.Now().Before(deadline); {
		echoCtx, cancel := context.WithTimeout(ctx, time.Second)
		if s, err := client.NewStream(echoCtx, lossy, testnode.EchoProtocol); err == nil {
			_ = s.SetDeadline(time.Now().Add(time.Second))
			_ = testnode.EchoErr(s, 1024)
		}
		cancel()
	}
	require.True(t, ordered(), "no order 2 ms > 20 ms > lossy:\n%+v\n%+v\n%+v\nhealthy %v\nlossy paths %v via %s stats %+v", hf, hs, hl, healthy, client.Paths(lossy), proxies[lossy].Multiaddr(), proxies[lossy].Stats())
	t.Logf("quality: 2 ms %.3f (RTT %s), 20 ms %.3f (RTT %s), lossy %.3f (loss %.2f)",
		hf.Quality, hf.RTT, hs.Quality, hs.RTT, hl.Quality, hl.Loss)
	for i := 1; i < len(healthy); i++ {
		require.GreaterOrEqual(t, healthy[i-1].Quality, healthy[i].Quality, "HealthyPeers is sorted by quality")
	}
}
