package swarm_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/libp2p/go-libp2p/p2p/host/peerstore/pstoremem"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/quicreuse"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/swarm"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testkit.LeakOptions()...)
}

// testSwarm is a swarm on real QUIC over loopback, with its own event bus.
type testSwarm struct {
	*swarm.Swarm
	bus event.Bus
}

func newSwarm(t *testing.T, cfg swarm.Config, listen ...string) *testSwarm {
	t.Helper()
	return newSwarmWith(t, func(p *swarm.Params) { p.Config = cfg }, listen...)
}

// newSwarmWith is newSwarm with its Params adjusted by set (after the
// required ones are filled in).
func newSwarmWith(t *testing.T, set func(*swarm.Params), listen ...string) *testSwarm {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	id, err := peer.IDFromPrivateKey(key)
	require.NoError(t, err)
	ps, err := pstoremem.NewPeerstore()
	require.NoError(t, err)
	var resetKey quic.StatelessResetKey
	var tokenKey quic.TokenGeneratorKey
	_, _ = rand.Read(resetKey[:])
	_, _ = rand.Read(tokenKey[:])
	reuse, err := quicreuse.NewConnManager(resetKey, tokenKey)
	require.NoError(t, err)
	tpt, err := libp2pquic.NewTransport(key, reuse, nil, nil, nil)
	require.NoError(t, err)
	bus := eventbus.NewBus()
	params := swarm.Params{LocalPeer: id, Peerstore: ps, Transport: tpt, EventBus: bus}
	set(&params)
	s, err := swarm.New(params)
	require.NoError(t, err)
	if len(listen) == 0 {
		listen = []string{testkit.Loopback}
	}
	addrs := make([]ma.Multiaddr, len(listen))
	for i, l := range listen {
		addrs[i] = ma.StringCast(l)
	}
	require.NoError(t, s.Listen(addrs...))
	t.Cleanup(func() {
		require.NoError(t, s.Close())
		_ = reuse.Close()
		_ = ps.Close()
	})
	return &testSwarm{Swarm: s, bus: bus}
}

// learn puts b's listen addresses into a's peerstore.
func learn(a, b *testSwarm) {
	a.Peerstore().AddAddrs(b.LocalPeer(), b.ListenAddresses(), peerstore.PermanentAddrTTL)
}

func echoHandler(s network.Stream) {
	_, _ = io.Copy(s, s)
	_ = s.Close()
}

func echo(t *testing.T, s network.Stream, size int) {
	t.Helper()
	msg := make([]byte, size)
	_, _ = rand.Read(msg)
	go func() {
		_, _ = s.Write(msg)
		_ = s.CloseWrite()
	}()
	got, err := io.ReadAll(s)
	require.NoError(t, err)
	require.True(t, bytes.Equal(msg, got), "echo corrupted: sent %d bytes, got %d", len(msg), len(got))
	require.NoError(t, s.Close())
}

// countingNotifiee counts Connected/Disconnected per connection.
type countingNotifiee struct {
	mu           sync.Mutex
	connected    map[network.Conn]int
	disconnected map[network.Conn]int
	order        []string
}

func newCountingNotifiee() *countingNotifiee {
	return &countingNotifiee{connected: map[network.Conn]int{}, disconnected: map[network.Conn]int{}}
}

func (n *countingNotifiee) Listen(network.Network, ma.Multiaddr)      {}
func (n *countingNotifiee) ListenClose(network.Network, ma.Multiaddr) {}
func (n *countingNotifiee) Connected(_ network.Network, c network.Conn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.connected[c]++
	n.order = append(n.order, "connected "+c.ID())
}
func (n *countingNotifiee) Disconnected(_ network.Network, c network.Conn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.connected[c] == 0 {
		n.order = append(n.order, "DISCONNECTED BEFORE CONNECTED "+c.ID())
	}
	n.disconnected[c]++
}

func (n *countingNotifiee) counts() (conns, connected, disconnected int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, v := range n.connected {
		connected += v
	}
	for _, v := range n.disconnected {
		disconnected += v
	}
	return len(n.connected), connected, disconnected
}

func TestDialPeerAndStreamsBothWays(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	a.SetStreamHandler(echoHandler)
	b.SetStreamHandler(echoHandler)
	learn(a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := a.DialPeer(ctx, b.LocalPeer())
	require.NoError(t, err)
	require.Equal(t, b.LocalPeer(), c.RemotePeer())
	require.Equal(t, network.DirOutbound, c.Stat().Direction)
	var qc *quic.Conn
	require.True(t, c.As(&qc), "As must reach the *quic.Conn")
	require.Greater(t, qc.ConnectionStats().SmoothedRTT, time.Duration(0))

	s, err := a.NewStream(ctx, b.LocalPeer())
	require.NoError(t, err)
	echo(t, s, 64<<10)

	require.Eventually(t, func() bool { return b.Connectedness(a.LocalPeer()) == network.Connected }, 5*time.Second, 10*time.Millisecond)
	s, err = b.NewStream(network.WithNoDial(ctx, "test"), a.LocalPeer())
	require.NoError(t, err)
	require.Equal(t, network.DirInbound, s.Conn().Stat().Direction)
	echo(t, s, 64<<10)
	require.Len(t, a.ConnsToPeer(b.LocalPeer()), 1, "streams both ways share the one connection")
}

func TestStreamBookkeeping(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	hold := make(chan struct{})
	b.SetStreamHandler(func(s network.Stream) {
		<-hold
		_ = s.Close()
	})
	defer close(hold)
	learn(a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := a.DialPeer(ctx, b.LocalPeer())
	require.NoError(t, err)
	s1, err := c.NewStream(ctx)
	require.NoError(t, err)
	s2, err := c.NewStream(ctx)
	require.NoError(t, err)
	require.NotEqual(t, s1.ID(), s2.ID())
	require.Equal(t, 2, c.Stat().NumStreams)
	require.Len(t, c.GetStreams(), 2)
	require.NoError(t, s1.Reset())
	require.NoError(t, s2.Close())
	require.Equal(t, 0, c.Stat().NumStreams)
	require.NoError(t, s2.Close(), "closing twice is harmless")

	require.NoError(t, c.CloseWithError(network.ConnGarbageCollected))
	require.True(t, c.IsClosed())
	_, err = c.NewStream(ctx)
	require.Error(t, err)
	require.Empty(t, a.ConnsToPeer(b.LocalPeer()))
}

// TestMultiplePathsViaDialPath: a node listening on 127.0.0.1 and 127.0.0.2
// gets two connections from one peer; both carry streams; notifications
// balance.
func TestMultiplePathsViaDialPath(t *testing.T) {
	server := newSwarm(t, swarm.Config{}, "/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.2/udp/0/quic-v1")
	client := newSwarm(t, swarm.Config{})
	server.SetStreamHandler(echoHandler)
	serverNotes, clientNotes := newCountingNotifiee(), newCountingNotifiee()
	server.Notify(serverNotes)
	client.Notify(clientNotes)
	sub, err := client.bus.Subscribe(new(event.EvtPeerConnectednessChanged))
	require.NoError(t, err)
	defer sub.Close()

	addrs := server.ListenAddresses()
	require.Len(t, addrs, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var conns []network.Conn
	for _, addr := range addrs {
		c, err := client.DialPath(ctx, server.LocalPeer(), addr)
		require.NoError(t, err, "dial path %s", addr)
		require.True(t, c.RemoteMultiaddr().Equal(addr))
		conns = append(conns, c)
	}
	require.NotEqual(t, conns[0].ID(), conns[1].ID())
	require.Len(t, client.ConnsToPeer(server.LocalPeer()), 2)
	require.Eventually(t, func() bool { return len(server.ConnsToPeer(client.LocalPeer())) == 2 }, 5*time.Second, 10*time.Millisecond)

	for _, c := range conns {
		s, err := c.NewStream(ctx)
		require.NoError(t, err)
		require.Equal(t, c, s.Conn())
		echo(t, s, 4<<10)
	}

	// Connected fired exactly once per connection, on both sides.
	n, connected, disconnected := clientNotes.counts()
	require.Equal(t, []int{2, 2, 0}, []int{n, connected, disconnected})
	require.Eventually(t, func() bool { n, c, _ := serverNotes.counts(); return n == 2 && c == 2 }, 5*time.Second, 10*time.Millisecond)

	// One connectedness event for two paths.
	select {
	case e := <-sub.Out():
		require.Equal(t, network.Connected, e.(event.EvtPeerConnectednessChanged).Connectedness)
	case <-ctx.Done():
		t.Fatal("no EvtPeerConnectednessChanged")
	}

	require.NoError(t, client.ClosePeer(server.LocalPeer()))
	require.Eventually(t, func() bool {
		_, c1, d1 := clientNotes.counts()
		_, c2, d2 := serverNotes.counts()
		return c1 == d1 && c2 == d2
	}, 5*time.Second, 10*time.Millisecond, "Disconnected must balance Connected")
	require.NotContains(t, strings.Join(clientNotes.order, "\n"), "BEFORE")
	select {
	case e := <-sub.Out():
		require.Equal(t, network.NotConnected, e.(event.EvtPeerConnectednessChanged).Connectedness)
	case <-ctx.Done():
		t.Fatal("no NotConnected event")
	}
	require.Equal(t, network.NotConnected, client.Connectedness(server.LocalPeer()))
}

func TestConcurrentDialsAreDeduplicated(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	learn(a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const callers = 16
	conns := make([]network.Conn, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			c, err := a.DialPeer(ctx, b.LocalPeer())
			if err == nil {
				conns[i] = c
			}
		})
	}
	wg.Wait()
	for _, c := range conns {
		require.NotNil(t, c)
		require.Equal(t, conns[0], c, "every caller gets the same connection")
	}
	require.Len(t, a.ConnsToPeer(b.LocalPeer()), 1)
}

// deadUDPAddr returns a loopback UDP address that nothing answers: a bound
// socket that never reads, so QUIC handshakes to it time out.
func deadUDPAddr(t *testing.T) ma.Multiaddr {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = pc.Close() })
	port := pc.LocalAddr().(*net.UDPAddr).Port
	return ma.StringCast("/ip4/127.0.0.1/udp/" + strconv.Itoa(port) + "/quic-v1")
}

func TestDialUnreachableFailsWithinTimeoutAndNamesAddress(t *testing.T) {
	const dialTimeout = time.Second
	a := newSwarm(t, swarm.Config{DialTimeout: dialTimeout})
	b := newSwarm(t, swarm.Config{})
	dead := deadUDPAddr(t)
	a.Peerstore().AddAddr(b.LocalPeer(), dead, peerstore.PermanentAddrTTL)

	start := time.Now()
	_, err := a.DialPeer(context.Background(), b.LocalPeer())
	elapsed := time.Since(start)
	require.Error(t, err)
	require.Contains(t, err.Error(), dead.String(), "the error must name the address")
	var de *swarm.DialError
	require.ErrorAs(t, err, &de)
	require.Equal(t, b.LocalPeer(), de.Peer)
	require.Less(t, elapsed, dialTimeout+time.Second, "dial must end with its timeout")
	require.GreaterOrEqual(t, elapsed, dialTimeout/2)

	// The failure backs the peer off: the next call fails at once.
	start = time.Now()
	_, err = a.DialPeer(context.Background(), b.LocalPeer())
	require.ErrorIs(t, err, swarm.ErrDialBackoff)
	require.Less(t, time.Since(start), 100*time.Millisecond)

	// DialPath ignores the backoff (the multipath manager decides itself).
	learn(a, b)
	c, err := a.DialPath(context.Background(), b.LocalPeer(), b.ListenAddresses()[0])
	require.NoError(t, err)
	require.NotNil(t, c)
	// A new connection clears the backoff.
	_, err = a.DialPeer(context.Background(), b.LocalPeer())
	require.NoError(t, err)
}

func TestDialRetriesWithBackoff(t *testing.T) {
	retry := swarm.RetryConfig{MaxRetries: 2, InitialDelay: 50 * time.Millisecond, MaxDelay: time.Second, Multiplier: 2, Jitter: 0}
	a := newSwarm(t, swarm.Config{AddrDialTimeout: 150 * time.Millisecond, Retry: retry})
	b := newSwarm(t, swarm.Config{})
	dead := deadUDPAddr(t)
	a.Peerstore().AddAddr(b.LocalPeer(), dead, peerstore.PermanentAddrTTL)

	start := time.Now()
	_, err := a.DialPeer(context.Background(), b.LocalPeer())
	elapsed := time.Since(start)
	require.Error(t, err)
	// Three attempts of 150 ms with 50 ms and 100 ms between them.
	require.GreaterOrEqual(t, elapsed, 3*150*time.Millisecond+150*time.Millisecond)
	require.Less(t, elapsed, 3*time.Second)

	// The backoff window after the failed call is the next delay: 200 ms.
	_, err = a.DialPeer(context.Background(), b.LocalPeer())
	require.ErrorIs(t, err, swarm.ErrDialBackoff)
	time.Sleep(250 * time.Millisecond)
	learn(a, b)
	_, err = a.DialPeer(context.Background(), b.LocalPeer())
	require.NoError(t, err, "after the window the peer may be dialed again")
}

// TestCancelledDialDoesNotBackOff: kad-dht cancels dials all the time; a
// cancelled dial says nothing about the peer.
func TestCancelledDialDoesNotBackOff(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	a.Peerstore().AddAddr(b.LocalPeer(), deadUDPAddr(t), peerstore.PermanentAddrTTL)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := a.DialPeer(ctx, b.LocalPeer())
	require.ErrorIs(t, err, context.DeadlineExceeded)
	learn(a, b)
	require.Eventually(t, func() bool {
		_, err := a.DialPeer(context.Background(), b.LocalPeer())
		require.NotErrorIs(t, err, swarm.ErrDialBackoff)
		return err == nil
	}, 5*time.Second, 10*time.Millisecond)
}

// TestHappyEyeballs: a dead address next to a live one does not delay the
// dial by the per-address timeout.
func TestHappyEyeballs(t *testing.T) {
	a := newSwarm(t, swarm.Config{AddrDialTimeout: 5 * time.Second})
	b := newSwarm(t, swarm.Config{})
	a.Peerstore().AddAddr(b.LocalPeer(), deadUDPAddr(t), peerstore.PermanentAddrTTL)
	a.Peerstore().AddAddr(b.LocalPeer(), deadUDPAddr(t), peerstore.PermanentAddrTTL)
	learn(a, b)
	start := time.Now()
	c, err := a.DialPeer(context.Background(), b.LocalPeer())
	require.NoError(t, err)
	require.Less(t, time.Since(start), time.Second)
	require.True(t, c.RemoteMultiaddr().Equal(b.ListenAddresses()[0]))
	require.Len(t, a.ConnsToPeer(b.LocalPeer()), 1, "one DialPeer, one connection")
}

func TestDialErrors(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	ctx := context.Background()

	_, err := a.DialPeer(ctx, a.LocalPeer())
	require.ErrorIs(t, err, swarm.ErrDialToSelf)
	_, err = a.DialPath(ctx, a.LocalPeer(), a.ListenAddresses()[0])
	require.ErrorIs(t, err, swarm.ErrDialToSelf)

	_, err = a.DialPeer(ctx, b.LocalPeer())
	require.ErrorIs(t, err, swarm.ErrNoAddresses)
	// Not knowing an address is no reason to back the peer off.
	learn(a, b)
	_, err = a.DialPeer(ctx, b.LocalPeer())
	require.NoError(t, err)
	require.NoError(t, a.ClosePeer(b.LocalPeer()))

	_, err = a.DialPeer(network.WithNoDial(ctx, "test"), b.LocalPeer())
	require.ErrorIs(t, err, network.ErrNoConn)
	_, err = a.NewStream(network.WithNoDial(ctx, "test"), b.LocalPeer())
	require.ErrorIs(t, err, network.ErrNoConn)

	// An address of another peer: TLS proves the wrong identity.
	c := newSwarm(t, swarm.Config{})
	_, err = a.DialPath(ctx, b.LocalPeer(), c.ListenAddresses()[0])
	require.Error(t, err)
	require.Contains(t, err.Error(), c.ListenAddresses()[0].String())
	require.Empty(t, a.ConnsToPeer(b.LocalPeer()))

	// A /p2p suffix naming someone else, and a non-QUIC address.
	withOther := b.ListenAddresses()[0].Encapsulate(ma.StringCast("/p2p/" + c.LocalPeer().String()))
	_, err = a.DialPath(ctx, b.LocalPeer(), withOther)
	require.ErrorContains(t, err, "names another peer")
	_, err = a.DialPath(ctx, b.LocalPeer(), ma.StringCast("/ip4/127.0.0.1/tcp/1"))
	require.ErrorContains(t, err, "/ip4/127.0.0.1/tcp/1")
}

func TestListenErrors(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	err := a.Listen(ma.StringCast("/ip4/127.0.0.1/tcp/0"))
	require.ErrorContains(t, err, "/ip4/127.0.0.1/tcp/0")
	before := len(a.ListenAddresses())
	// All or nothing: the good address is not left open.
	err = a.Listen(ma.StringCast("/ip4/127.0.0.2/udp/0/quic-v1"), ma.StringCast("/ip4/127.0.0.1/tcp/0"))
	require.Error(t, err)
	require.Len(t, a.ListenAddresses(), before)
	require.Error(t, a.Listen())
	// The same requested address twice (go-libp2p's transport would panic).
	err = a.Listen(ma.StringCast("/ip4/127.0.0.1/udp/0/quic-v1"))
	require.ErrorContains(t, err, "already listening")
	err = a.Listen(ma.StringCast("/ip4/127.0.0.3/udp/0/quic-v1"), ma.StringCast("/ip4/127.0.0.3/udp/0/quic-v1"))
	require.ErrorContains(t, err, "already listening")
	require.Len(t, a.ListenAddresses(), before)
}

func TestNewRejectsBadParams(t *testing.T) {
	_, err := swarm.New(swarm.Params{})
	require.ErrorContains(t, err, "LocalPeer")
	cfg := swarm.Config{Retry: swarm.RetryConfig{MaxRetries: -1, InitialDelay: time.Millisecond, MaxDelay: time.Second, Multiplier: 2}}
	require.ErrorContains(t, cfg.Retry.Validate(), "MaxRetries")
	for _, bad := range []swarm.RetryConfig{
		{InitialDelay: 0, MaxDelay: time.Second, Multiplier: 2},
		{InitialDelay: time.Second, MaxDelay: time.Millisecond, Multiplier: 2},
		{InitialDelay: time.Millisecond, MaxDelay: time.Second, Multiplier: 0.5},
		{InitialDelay: time.Millisecond, MaxDelay: time.Second, Multiplier: 2, Jitter: 1},
	} {
		require.Error(t, bad.Validate(), "%+v", bad)
	}
	require.NoError(t, swarm.DefaultRetryConfig().Validate())
}

func TestPathSelectorIsConsulted(t *testing.T) {
	server := newSwarm(t, swarm.Config{}, "/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.2/udp/0/quic-v1")
	client := newSwarm(t, swarm.Config{})
	server.SetStreamHandler(echoHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs := server.ListenAddresses()
	first, err := client.DialPath(ctx, server.LocalPeer(), addrs[0])
	require.NoError(t, err)
	_, err = client.DialPath(ctx, server.LocalPeer(), addrs[1])
	require.NoError(t, err)

	var calls atomic.Int32
	client.SetPathSelector(swarm.PathSelectorFunc(func(p peer.ID, conns []network.Conn) network.Conn {
		calls.Add(1)
		require.Len(t, conns, 2)
		return conns[0] // the oldest
	}))
	s, err := client.NewStream(ctx, server.LocalPeer())
	require.NoError(t, err)
	require.Equal(t, first, s.Conn())
	echo(t, s, 100)
	require.EqualValues(t, 1, calls.Load())

	// The selected path closes: the next stream goes to the other one.
	client.SetPathSelector(nil)
	require.NoError(t, first.Close())
	s, err = client.NewStream(ctx, server.LocalPeer())
	require.NoError(t, err)
	require.NotEqual(t, first, s.Conn())
	echo(t, s, 100)
}

func TestCloseIsIdempotentAndStopsEverything(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	b.SetStreamHandler(func(s network.Stream) { _, _ = io.Copy(io.Discard, s) })
	learn(a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := a.NewStream(ctx, b.LocalPeer())
	require.NoError(t, err)
	_, err = s.Write([]byte("x"))
	require.NoError(t, err)
	require.NoError(t, a.Close())
	require.NoError(t, a.Close())
	_, err = a.DialPeer(ctx, b.LocalPeer())
	require.True(t, errors.Is(err, swarm.ErrSwarmClosed), "got %v", err)
	require.Empty(t, a.Conns())
	require.Empty(t, a.ListenAddresses())
	require.Error(t, a.Listen(ma.StringCast("/ip4/127.0.0.1/udp/0/quic-v1")))
	require.Eventually(t, func() bool { return len(b.ConnsToPeer(a.LocalPeer())) == 0 }, 5*time.Second, 10*time.Millisecond,
		"the remote notices the close")
}

// TestLifecycleEvents: connection and stream opened/closed reach the event
// bus, in order, with direction and protocol.
func TestLifecycleEvents(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	b.SetStreamHandler(func(s network.Stream) { _, _ = io.Copy(io.Discard, s); _ = s.Close() })
	sub, err := a.bus.Subscribe([]any{new(swarm.EvtConnectionOpened), new(swarm.EvtConnectionClosed),
		new(swarm.EvtStreamOpened), new(swarm.EvtStreamClosed)})
	require.NoError(t, err)
	defer sub.Close()
	learn(a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := a.DialPeer(ctx, b.LocalPeer())
	require.NoError(t, err)
	s, err := c.NewStream(ctx)
	require.NoError(t, err)
	require.NoError(t, s.SetProtocol("/test/1.0.0"))
	require.NoError(t, s.Close())
	unannounced, err := c.NewStream(ctx) // never given a protocol: no events
	require.NoError(t, err)
	require.NoError(t, unannounced.Reset())
	require.NoError(t, c.Close())

	next := func() any {
		select {
		case e := <-sub.Out():
			return e
		case <-ctx.Done():
			t.Fatal("missing event")
			return nil
		}
	}
	opened := next().(swarm.EvtConnectionOpened)
	require.Equal(t, b.LocalPeer(), opened.Peer)
	require.Equal(t, c.ID(), opened.ConnID)
	require.Equal(t, network.DirOutbound, opened.Direction)
	require.True(t, opened.Remote.Equal(c.RemoteMultiaddr()))
	so := next().(swarm.EvtStreamOpened)
	require.Equal(t, "/test/1.0.0", so.Protocol)
	require.Equal(t, s.ID(), so.StreamID)
	sc := next().(swarm.EvtStreamClosed)
	require.Equal(t, s.ID(), sc.StreamID)
	closed := next().(swarm.EvtConnectionClosed)
	require.Equal(t, c.ID(), closed.ConnID)
}
