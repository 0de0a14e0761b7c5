package multipath_test

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/internal/udpproxy"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/node"
)

// stockBehindProxy is a stock go-libp2p host (testkit.StockHost with opts)
// and a fault-injection proxy in front of its listen address.
func stockBehindProxy(t *testing.T, opts ...libp2p.Option) (host.Host, *udpproxy.Proxy) {
	t.Helper()
	h := testkit.StockHost(t, opts...)
	target, err := manet.ToNetAddr(h.Addrs()[0].Decapsulate(ma.StringCast("/quic-v1")))
	require.NoError(t, err)
	proxy, err := udpproxy.New("127.0.0.1:0", target.(*net.UDPAddr))
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })
	return h, proxy
}

// onlyPath returns the single path n has to p, or false.
func onlyPath(n *node.Node, p peer.ID) (core.PathInfo, bool) {
	ps := n.Paths(p)
	if len(ps) != 1 {
		return core.PathInfo{}, false
	}
	return ps[0], true
}

// answersAdvance waits until the path n has to p has recorded rounds more
// heartbeat answers (LastHeartbeat moved rounds times), each with a round
// trip, while staying active.
func answersAdvance(t *testing.T, n *node.Node, p peer.ID, rounds int, within time.Duration) {
	t.Helper()
	var last time.Time
	seen := -1
	require.Eventually(t, func() bool {
		pi, ok := onlyPath(n, p)
		if !ok || pi.State != core.PathActive || pi.HeartbeatRTT <= 0 {
			return false
		}
		if pi.LastHeartbeat.After(last) {
			last = pi.LastHeartbeat
			seen++
		}
		return seen >= rounds
	}, within, 5*time.Millisecond, "the path did not record %d heartbeat answers: %+v", rounds, n.Paths(p))
}

// TestDatagramHeartbeatsNeedNoPing: a stock go-libp2p peer without the ping
// protocol answers datagram heartbeats with QUIC ACKs — the path gets RTT
// samples and stays alive past several PathIdleTimeouts — and once the path
// is blackholed it dies within PathIdleTimeout + HeartbeatInterval. (With
// ping-stream heartbeats such a path had no heartbeat at all: no RTT
// samples, and it never died.)
func TestDatagramHeartbeatsNeedNoPing(t *testing.T) {
	cfg := multipath.Config{HeartbeatInterval: 200 * time.Millisecond, PathIdleTimeout: 600 * time.Millisecond, DesiredPaths: 1}
	server, proxy := stockBehindProxy(t, libp2p.Ping(false))
	client := newNode(t, cfg)
	ctx := testkit.Context(t, 20*time.Second)
	_, err := client.Network().DialPath(ctx, server.ID(), proxy.Multiaddr())
	require.NoError(t, err)

	// Three idle timeouts' worth of answers: 9 probes, every one ACKed.
	answersAdvance(t, client, server.ID(), 9, 5*time.Second)
	pi, _ := onlyPath(client, server.ID())
	require.Positive(t, pi.HeartbeatRTT)
	// The peer delays its ACK of a lone datagram by its max_ack_delay
	// (25 ms); quic-go removes that delay from the sample, so a sample
	// with it left in would be 25 ms or more. A loaded machine (a CI run
	// with every package's tests at once under -race) delays samples too:
	// one sample under 25 ms within 10 s of probes is the check.
	require.Eventually(t, func() bool {
		pi, _ := onlyPath(client, server.ID())
		return pi.HeartbeatRTT > 0 && pi.HeartbeatRTT < 25*time.Millisecond
	}, 10*time.Second, time.Millisecond, "the RTT sample has the peer's ack delay removed")

	blackholed := time.Now()
	proxy.SetBlackhole(true)
	require.Eventually(t, func() bool { return len(client.Paths(server.ID())) == 0 },
		cfg.PathIdleTimeout+cfg.HeartbeatInterval+500*time.Millisecond, 10*time.Millisecond)
	t.Logf("path gone %s after the blackhole", time.Since(blackholed))
}

// countingPing registers go-libp2p's ping handler on h and counts the
// streams it gets.
func countingPing(h host.Host) *atomic.Int64 {
	var n atomic.Int64
	ps := &ping.PingService{Host: h}
	h.SetStreamHandler(ping.ID, func(s network.Stream) {
		n.Add(1)
		ps.PingHandler(s)
	})
	return &n
}

// TestHeartbeatStreamFallback: with datagrams no heartbeat opens a stream;
// with the ping stream forced (the path of a connection that did not
// negotiate datagrams) the heartbeats go over a ping stream, keep the path
// active with fresh round trips, and a blackholed path is degraded at once
// and dead after PathIdleTimeout.
func TestHeartbeatStreamFallback(t *testing.T) {
	cfg := multipath.Config{HeartbeatInterval: 200 * time.Millisecond, PathIdleTimeout: 600 * time.Millisecond, DesiredPaths: 1}
	server, proxy := stockBehindProxy(t)
	pings := countingPing(server)
	var m *multipath.Manager // the component itself, for ForceStreamHeartbeats
	client := testnode.New(t, node.Multipath(cfg), node.Fx(fx.Populate(&m)))
	ctx := testkit.Context(t, 10*time.Second)
	_, err := client.Network().DialPath(ctx, server.ID(), proxy.Multiaddr())
	require.NoError(t, err)

	answersAdvance(t, client, server.ID(), 5, 5*time.Second)
	require.Zero(t, pings.Load(), "datagram heartbeats opened ping streams")

	multipath.ForceStreamHeartbeats(m, true)
	require.Eventually(t, func() bool { return pings.Load() > 0 }, 2*time.Second, 5*time.Millisecond,
		"forced stream heartbeats opened no ping stream")
	answersAdvance(t, client, server.ID(), 5, 5*time.Second)
	require.Equal(t, int64(1), pings.Load(), "one long-lived ping stream")

	dead := testkit.Subscribe(t, client.Host().EventBus(), new(multipath.EvtPathDead))
	proxy.SetBlackhole(true)
	require.Eventually(t, func() bool {
		pi, ok := onlyPath(client, server.ID())
		return !ok || pi.State == core.PathDegraded || pi.State == core.PathDead
	}, cfg.HeartbeatInterval+time.Second, 5*time.Millisecond, "not degraded")
	testkit.WaitEvent(t, dead, cfg.PathIdleTimeout+cfg.HeartbeatInterval+500*time.Millisecond,
		func(multipath.EvtPathDead) bool { return true })
}

// listeningPair is a realmnet client dialed, through a proxy, to a realmnet
// server with multipath configuration cfg, both paths validated; it returns
// the nodes, their managers and the proxy.
func listeningPair(t *testing.T, cfg multipath.Config) (client, server *node.Node, clientPaths, serverPaths *multipath.Manager, proxy *udpproxy.Proxy) {
	t.Helper()
	server = testnode.New(t, node.Multipath(cfg), node.Fx(fx.Populate(&serverPaths)))
	client = testnode.New(t, node.Multipath(cfg), node.Fx(fx.Populate(&clientPaths)))
	proxy = testnode.Proxy(t, server)
	dialPath(t, client, server, proxy.Multiaddr())
	answersAdvance(t, client, server.ID(), 2, 5*time.Second)
	answersAdvance(t, server, client.ID(), 2, 5*time.Second)
	return client, server, clientPaths, serverPaths, proxy
}

// TestListeningEndHearsThePeersProbes: on an idle path only the dialer
// probes; the end that accepted the connection counts the dialer's probes
// as answers (its path stays active, its last heartbeat moves) and sends at
// most a probe per listenRTTRefresh (6) intervals for an RTT sample, plus
// one now and then when a check just misses a late probe — far fewer than
// the dialer. Before, both ends sent one probe per interval.
func TestListeningEndHearsThePeersProbes(t *testing.T) {
	cfg := multipath.Config{HeartbeatInterval: 200 * time.Millisecond, PathIdleTimeout: 600 * time.Millisecond, DesiredPaths: 1}
	client, server, clientPaths, serverPaths, _ := listeningPair(t, cfg)
	client0, server0 := multipath.DatagramProbesSent(clientPaths), multipath.DatagramProbesSent(serverPaths)

	// 12 rounds: several idle timeouts, two RTT refreshes.
	answersAdvance(t, client, server.ID(), 12, 10*time.Second)
	answersAdvance(t, server, client.ID(), 3, 5*time.Second)
	clientSent := multipath.DatagramProbesSent(clientPaths) - client0
	serverSent := multipath.DatagramProbesSent(serverPaths) - server0
	t.Logf("probes sent: dialer %d, listener %d", clientSent, serverSent)
	require.GreaterOrEqual(t, clientSent, uint64(12))
	require.LessOrEqual(t, 2*serverSent, clientSent, "the listening end probed about as often as the dialer")
	pi, ok := onlyPath(server, client.ID())
	require.True(t, ok)
	require.Equal(t, core.PathActive, pi.State)
	require.Positive(t, pi.HeartbeatRTT)
}

// TestListeningEndNoticesSilence: a path that fails is noticed by the
// listening end within PathIdleTimeout + HeartbeatInterval, whichever way
// it fails: when nothing passes, it hears nothing, probes and finds the
// path dead itself; when only its own packets are lost, the dialer finds
// the path dead and its CONNECTION_CLOSE reaches the listener.
func TestListeningEndNoticesSilence(t *testing.T) {
	cfg := multipath.Config{HeartbeatInterval: 200 * time.Millisecond, PathIdleTimeout: 600 * time.Millisecond, DesiredPaths: 1}
	bound := cfg.PathIdleTimeout + cfg.HeartbeatInterval + 500*time.Millisecond
	t.Run("both ways", func(t *testing.T) {
		client, server, _, _, proxy := listeningPair(t, cfg)
		dead := testkit.Subscribe(t, server.Host().EventBus(), new(multipath.EvtPathDead))
		blackholed := time.Now()
		proxy.SetBlackhole(true)
		testkit.WaitEvent(t, dead, bound, func(e multipath.EvtPathDead) bool { return e.Peer == client.ID() })
		t.Logf("the listening end found the path dead %s after the blackhole", time.Since(blackholed))
	})
	t.Run("listener to dialer", func(t *testing.T) {
		client, server, _, _, proxy := listeningPair(t, cfg)
		blackholed := time.Now()
		proxy.SetBlackholeToClient(true)
		require.Eventually(t, func() bool { return len(server.Paths(client.ID())) == 0 }, bound, 5*time.Millisecond,
			"the listening end kept a path whose packets to the dialer are lost")
		t.Logf("the listening end's path closed %s after the one-way blackhole", time.Since(blackholed))
	})
}

// TestListeningEndProbesAStockDialer: a stock go-libp2p host sends no
// heartbeats, so the realmnet end it dialed hears nothing on the idle path
// and probes it itself: the path stays active with RTT samples over three
// idle timeouts.
func TestListeningEndProbesAStockDialer(t *testing.T) {
	cfg := multipath.Config{HeartbeatInterval: 200 * time.Millisecond, PathIdleTimeout: 600 * time.Millisecond, DesiredPaths: 1}
	server := newNode(t, cfg)
	stock := testkit.StockHost(t)
	ctx := testkit.Context(t, 10*time.Second)
	require.NoError(t, stock.Connect(ctx, peer.AddrInfo{ID: server.ID(), Addrs: server.Addrs()}))
	answersAdvance(t, server, stock.ID(), 9, 5*time.Second)
	pi, ok := onlyPath(server, stock.ID())
	require.True(t, ok)
	require.Positive(t, pi.HeartbeatRTT)
}
