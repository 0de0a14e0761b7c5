package node_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pswarm "github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/swarm"
)

// isolate keeps a (on 127.0.0.1) and b (on 127.0.0.2) from connecting
// directly: each gater blocks the other's address (a node listening on
// 127.0.0.2 may dial from 127.0.0.1, so one rule is not enough). The relay
// they share must be on a third address (127.0.0.3).
func isolate(t testing.TB, a, b *node.Node) {
	t.Helper()
	require.NoError(t, a.Gater().BlockAddr(net.ParseIP("127.0.0.2")))
	require.NoError(t, b.Gater().BlockAddr(net.ParseIP("127.0.0.1")))
}

// circuitAddrs are b's addresses through relay r: each of r's addresses
// with /p2p/<r>/p2p-circuit.
func circuitAddrs(t testing.TB, r *node.Node) []ma.Multiaddr {
	t.Helper()
	var out []ma.Multiaddr
	for _, a := range r.Addrs() {
		out = append(out, a.Encapsulate(ma.StringCast("/p2p/"+r.ID().String()+"/p2p-circuit")))
	}
	require.NotEmpty(t, out)
	return out
}

// TestRelayedPath: B is private with a static relay R (node.Relays,
// node.ForceReachability): go-libp2p's autorelay reserves a slot on R, and
// A, which knows B only by its circuit addresses, connects through R. A
// and B are kept apart by isolate, so that no direct path can replace the
// relayed one (on loopback, identify would hand A B's direct address and
// multipath would dial it). The
// connection is a relayed path on both ends: limited, through the
// admission pipeline and into the pools, in multipath's relayed tier. A
// stream on it needs network.WithAllowLimitedConn: without it NewStream
// waits for a direct connection and fails with network.ErrLimitedConn;
// with it the stream works.
func TestRelayedPath(t *testing.T) {
	fastHeartbeats := multipath.DefaultConfig()
	fastHeartbeats.HeartbeatInterval = 100 * time.Millisecond
	fastHeartbeats.PathIdleTimeout = 2 * time.Second
	r := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.3/udp/0/quic-v1"), node.RelayService(node.RelayServiceConfig{}))
	b := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.2/udp/0/quic-v1"),
		node.Relays(r.AddrInfo()), node.ForceReachability(network.ReachabilityPrivate), node.Multipath(fastHeartbeats))
	b.Host().SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
	a := testnode.New(t, node.Multipath(fastHeartbeats))
	isolate(t, a, b)
	require.Equal(t, network.ReachabilityPrivate, b.Reachability())
	require.Equal(t, network.ReachabilityUnknown, a.Reachability())

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// autorelay reserves in the background: until it has, R answers
	// NO_RESERVATION.
	connectNodeThroughRelay(t, ctx, a, b.ID(), circuitAddrs(t, r))

	for _, side := range []struct {
		n    *node.Node
		peer peer.ID
		dir  network.Direction
	}{{a, b.ID(), network.DirOutbound}, {b, a.ID(), network.DirInbound}} {
		conns := side.n.Host().Network().ConnsToPeer(side.peer)
		require.Len(t, conns, 1)
		c := conns[0]
		require.True(t, c.Stat().Limited, "a relayed connection is limited")
		require.Equal(t, side.dir, c.Stat().Direction)
		_, err := c.RemoteMultiaddr().ValueForProtocol(ma.P_CIRCUIT)
		require.NoError(t, err, "remote address %s goes through the relay", c.RemoteMultiaddr())
		require.Len(t, side.n.Connections(side.peer), 1, "the pools hold the relayed connection")
		paths := side.n.Paths(side.peer)
		require.Len(t, paths, 1)
		require.True(t, paths[0].Relayed, "multipath puts it in the relayed tier")
	}

	// Heartbeats run on the relayed path (their stream is allowed on a
	// limited connection): it keeps answering for 5 intervals and more.
	for _, side := range []struct {
		n    *node.Node
		peer peer.ID
	}{{a, b.ID()}, {b, a.ID()}} {
		tick := time.NewTicker(20 * time.Millisecond)
		for {
			paths := side.n.Paths(side.peer)
			require.Len(t, paths, 1, "the relayed path is alive")
			if p := paths[0]; p.HeartbeatRTT > 0 && p.LastHeartbeat.Sub(p.Opened) > 5*fastHeartbeats.HeartbeatInterval {
				break
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				t.Fatalf("no heartbeat answered on the relayed path: %+v", side.n.Paths(side.peer))
			}
		}
		tick.Stop()
	}

	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	_, err := a.Host().NewStream(short, b.ID(), testnode.EchoProtocol)
	require.True(t, errors.Is(err, network.ErrLimitedConn), "without WithAllowLimitedConn: %v", err)

	s, err := a.Host().NewStream(network.WithAllowLimitedConn(ctx, "test"), b.ID(), testnode.EchoProtocol)
	require.NoError(t, err)
	testnode.EchoOver(t, s, 1024)
}

// TestRelayOptionsRefuseBadInput: a relay without an address, a relay
// address given as a relay, a relay address as a listen address, and a
// reachability that is neither public nor private are refused by name.
func TestRelayOptionsRefuseBadInput(t *testing.T) {
	r := testnode.New(t)
	circuit := r.Addrs()[0].Encapsulate(ma.StringCast("/p2p/" + r.ID().String() + "/p2p-circuit"))
	for _, tc := range []struct {
		name string
		opt  node.Option
		want string
	}{
		{"relay without address", node.Relays(peer.AddrInfo{ID: r.ID()}), "has no address"},
		{"relay through a relay", node.Relays(peer.AddrInfo{ID: r.ID(), Addrs: []ma.Multiaddr{circuit}}), "is a relay address itself"},
		{"circuit listen address", node.ListenAddrs(circuit), "is a relay address"},
		{"unknown reachability", node.ForceReachability(network.ReachabilityUnknown), "want public or private"},
		{"no relays", node.Relays(), "at least one relay"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := node.New(context.Background(), tc.opt)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// TestRelayFoundThroughTheDHT: B is private and names no relay; go-libp2p's
// autorelay, fed with the DHT routing table's relays, reserves a slot on R
// (a DHT server running the relay service, B's bootstrap peer), so that A
// reaches B through R; A and B are kept apart by isolate.
func TestRelayFoundThroughTheDHT(t *testing.T) {
	r := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.3/udp/0/quic-v1"), node.RelayService(node.RelayServiceConfig{}), dhtServer)
	b := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.2/udp/0/quic-v1"),
		node.Bootstrap(r.AddrInfo()), node.ForceReachability(network.ReachabilityPrivate))
	a := testnode.New(t)
	isolate(t, a, b)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	connectNodeThroughRelay(t, ctx, a, b.ID(), circuitAddrs(t, r))
	conns := a.Host().Network().ConnsToPeer(b.ID())
	require.NotEmpty(t, conns)
	require.True(t, conns[0].Stat().Limited)
}

// connectNodeThroughRelay connects from to dest through its circuit
// addresses via with node.Connect, retrying while dest's reservation is not
// made yet (each attempt a real dial; the state awaited is "dest has a
// reservation"). node.Connect waits for identify, so both ends have
// admitted the connection when it returns.
func connectNodeThroughRelay(t testing.TB, ctx context.Context, from *node.Node, dest peer.ID, via []ma.Multiaddr) {
	t.Helper()
	for {
		err := from.Connect(ctx, peer.AddrInfo{ID: dest, Addrs: via})
		if err == nil {
			return
		}
		require.NoError(t, ctx.Err(), "no relayed connection to %s: last error %v", dest, err)
		from.Host().Peerstore().ClearAddrs(dest)
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// connectThroughRelay connects host from to the peer dest through its
// circuit addresses via, retrying while dest's reservation is not made yet
// (each attempt a real dial; the dial backoff a failure leaves is
// cleared: realmnet's swarm does not back off DialPath, go-libp2p's is
// cleared by hand).
func connectThroughRelay(t testing.TB, ctx context.Context, from host.Host, dest peer.ID, via []ma.Multiaddr) {
	t.Helper()
	for {
		var err error
		switch network := from.Network().(type) {
		case *swarm.Swarm:
			_, err = network.DialPath(ctx, dest, via[0])
		case *libp2pswarm.Swarm:
			network.Backoff().Clear(dest)
			err = from.Connect(ctx, peer.AddrInfo{ID: dest, Addrs: via})
		default:
			t.Fatalf("unknown network %T", network)
		}
		if err == nil {
			return
		}
		require.NoError(t, ctx.Err(), "no relayed connection to %s: last error %v", dest, err)
		select {
		case <-time.After(10 * time.Millisecond): // fine enough for BenchmarkRelayedPath/time-to-relayed
		case <-ctx.Done():
		}
	}
}

// TestInteropStockRelayServesRealmnet: a stock go-libp2p relay
// (libp2p.EnableRelayService) serves realmnet nodes: B, private with it as
// static relay, reserves there, and A reaches B through it and echoes.
func TestInteropStockRelayServesRealmnet(t *testing.T) {
	stock := testkit.StockHostOn(t, "/ip4/127.0.0.3/udp/0/quic-v1",
		libp2p.EnableRelay(), libp2p.EnableRelayService(), libp2p.ForceReachabilityPublic())
	relayInfo := peer.AddrInfo{ID: stock.ID(), Addrs: stock.Addrs()}
	b := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.2/udp/0/quic-v1"),
		node.Relays(relayInfo), node.ForceReachability(network.ReachabilityPrivate))
	b.Host().SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
	a := testnode.New(t)
	isolate(t, a, b)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	connectThroughRelay(t, ctx, a.Host(), b.ID(), circuitAddrsOf(t, relayInfo))
	conns := a.Host().Network().ConnsToPeer(b.ID())
	require.Len(t, conns, 1)
	require.True(t, conns[0].Stat().Limited)
	s, err := a.Host().NewStream(network.WithAllowLimitedConn(ctx, "test"), b.ID(), testnode.EchoProtocol)
	require.NoError(t, err)
	testnode.EchoOver(t, s, 1024)
}

// TestInteropRealmnetRelayServesStock: a realmnet relay
// (node.RelayService) serves stock go-libp2p clients: B (libp2p.EnableRelay,
// autorelay with the relay as static relay, private) reserves on it, and A,
// stock too, reaches B through it and echoes.
func TestInteropRealmnetRelayServesStock(t *testing.T) {
	r := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.3/udp/0/quic-v1"), node.RelayService(node.RelayServiceConfig{}))
	b := testkit.StockHostOn(t, "/ip4/127.0.0.2/udp/0/quic-v1", libp2p.EnableRelay(),
		libp2p.EnableAutoRelayWithStaticRelays([]peer.AddrInfo{r.AddrInfo()}), libp2p.ForceReachabilityPrivate())
	b.SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
	a := testkit.StockHost(t, libp2p.EnableRelay())

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	connectThroughRelay(t, ctx, a, b.ID(), circuitAddrs(t, r))
	var relayed network.Conn
	for _, c := range a.Network().ConnsToPeer(b.ID()) {
		if c.Stat().Limited {
			relayed = c
		}
	}
	require.NotNil(t, relayed, "a stock client holds a relayed connection through the realmnet relay")
	s, err := a.NewStream(network.WithAllowLimitedConn(ctx, "test"), b.ID(), testnode.EchoProtocol)
	require.NoError(t, err)
	testnode.EchoOver(t, s, 1024)
}

// circuitAddrsOf is circuitAddrs for a relay given by its AddrInfo.
func circuitAddrsOf(t testing.TB, relay peer.AddrInfo) []ma.Multiaddr {
	t.Helper()
	var out []ma.Multiaddr
	for _, a := range relay.Addrs {
		out = append(out, a.Encapsulate(ma.StringCast("/p2p/"+relay.ID.String()+"/p2p-circuit")))
	}
	require.NotEmpty(t, out)
	return out
}

// TestFailoverToRelayedPath: A has a direct path to B (through a UDP proxy)
// and a relayed one through R. While streams that allow limited
// connections flow, the direct path is blackholed: new streams move to the
// relayed path well before PathIdleTimeout (the gap is logged; the
// multipath benchmark measures the bound), and the relayed path is
// selected once the direct one is out.
func TestFailoverToRelayedPath(t *testing.T) {
	cfg := multipath.DefaultConfig()
	cfg.DesiredPaths = 1 // the proxied path and the relayed one only
	// go-libp2p's default circuit carries 128 KiB: the stream load would
	// use it up in a fraction of a second and the relay would reset it.
	resources := relay.DefaultResources()
	resources.Limit = &relay.RelayLimit{Duration: time.Hour, Data: 1 << 30}
	r := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.3/udp/0/quic-v1"), node.RelayService(node.RelayServiceConfig{Resources: &resources}))
	b := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.2/udp/0/quic-v1"), node.Multipath(cfg),
		node.Relays(r.AddrInfo()), node.ForceReachability(network.ReachabilityPrivate))
	b.Host().SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
	a := testnode.New(t, node.Multipath(cfg))
	// A dials B only through the proxy (on 127.0.0.1) or the relay.
	require.NoError(t, a.Gater().BlockAddr(net.ParseIP("127.0.0.2")))
	proxy := testnode.Proxy(t, b)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	connectThroughRelay(t, ctx, a.Host(), b.ID(), circuitAddrs(t, r))
	_, err := a.Network().DialPath(ctx, b.ID(), proxy.Multiaddr())
	require.NoError(t, err)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ps := a.Paths(b.ID())
		if len(ps) == 2 && ps[0].State != core.PathValidating && ps[1].State != core.PathValidating {
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("no direct and relayed paths: %+v", a.Paths(b.ID()))
		}
	}
	require.Equal(t, proxy.Multiaddr().String(), selectedRemote(a, b.ID()).String(), "the direct path is selected over the relayed one")

	var mu sync.Mutex
	var relayedAt []time.Time
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			sctx, scancel := context.WithTimeout(network.WithAllowLimitedConn(ctx, "test"), 300*time.Millisecond)
			s, err := a.Host().NewStream(sctx, b.ID(), testnode.EchoProtocol)
			if err == nil {
				_ = s.SetDeadline(time.Now().Add(300 * time.Millisecond))
				limited := s.Conn().Stat().Limited
				if testnode.EchoErr(s, 1024) == nil && limited {
					mu.Lock()
					relayedAt = append(relayedAt, time.Now())
					mu.Unlock()
				}
			}
			scancel()
		}
	})
	defer func() { close(stop); wg.Wait() }()

	blackholed := time.Now()
	proxy.SetBlackhole(true)
	var gap time.Duration
	for gap == 0 {
		mu.Lock()
		for _, at := range relayedAt {
			if at.After(blackholed) {
				gap = at.Sub(blackholed)
				break
			}
		}
		mu.Unlock()
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("no stream succeeded on the relayed path after the blackhole")
		}
	}
	t.Logf("failover to the relayed path after %s", gap)
	require.Less(t, gap, cfg.PathIdleTimeout)
}

// selectedRemote is the remote address of the path a selects to p.
func selectedRemote(n *node.Node, p peer.ID) ma.Multiaddr {
	for _, pi := range n.Paths(p) {
		if pi.Selected {
			return pi.Remote
		}
	}
	return nil
}
