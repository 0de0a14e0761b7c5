package node_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/gater"
	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/internal/udpproxy"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/swarm"
)

// The nodes of these tests are testnode.New's DHT clients: a DHT server
// with a small routing table redials peers that just disconnected, which
// would blur what the gater and hooks did.

// admissionCtx bounds every Connect of these tests.
func admissionCtx(t *testing.T) context.Context { return testkit.Context(t, 10*time.Second) }

// admissionConnected counts the Connected notifications n's swarm delivers
// for connections to p (any p when p is empty).
func admissionConnected(t *testing.T, n *node.Node, p peer.ID) *atomic.Int64 {
	t.Helper()
	var count atomic.Int64
	nb := &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		if p == "" || c.RemotePeer() == p {
			count.Add(1)
		}
	}}
	n.Host().Network().Notify(nb)
	t.Cleanup(func() { n.Host().Network().StopNotify(nb) })
	return &count
}

// admissionUDPAddr is n's (single) listen address as a UDP address.
func admissionUDPAddr(t *testing.T, n *node.Node) *net.UDPAddr {
	t.Helper()
	addrs := n.Addrs()
	require.Len(t, addrs, 1, "the node listens on one address")
	udp, err := admissionToUDP(addrs[0])
	require.NoError(t, err)
	return udp
}

// admissionToUDP converts /ip4|ip6/<ip>/udp/<port>/quic-v1 to a UDP address.
func admissionToUDP(a ma.Multiaddr) (*net.UDPAddr, error) {
	na, err := manet.ToNetAddr(a.Decapsulate(ma.StringCast("/quic-v1")))
	if err != nil {
		return nil, err
	}
	udp, ok := na.(*net.UDPAddr)
	if !ok {
		return nil, fmt.Errorf("%s is not a UDP address", a)
	}
	return udp, nil
}

// admissionEcho checks that a stream from a to b carries data.
func admissionEcho(t *testing.T, ctx context.Context, a, b *node.Node) {
	t.Helper()
	b.SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
	s, err := a.NewStream(ctx, b.ID(), testnode.EchoProtocol)
	require.NoError(t, err)
	testnode.EchoOver(t, s, 4<<10)
}

func admissionNotConnected(t *testing.T, n *node.Node, p peer.ID, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool {
		return n.Host().Network().Connectedness(p) != network.Connected && len(n.Host().Network().ConnsToPeer(p)) == 0
	}, within, 5*time.Millisecond, "%s still has a connection to %s", n.ID(), p)
}

func admissionKey(t *testing.T) crypto.PrivKey {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	return key
}

// TestAdmissionBeforeConnectRejectsPeerBeforeAnyPacket: a BeforeConnect hook
// that rejects b by peer ID makes a.Connect fail at once with an error
// matching hooks.ErrRejected and carrying the hook's reason; no datagram
// leaves a (b sits behind a UDP proxy that counts them) and b sees nothing.
// A second attempt fails the same way, not with a dial backoff. Once the hook
// lets b through, the same proxy address works (the proxy is a valid path).
func TestAdmissionBeforeConnectRejectsPeerBeforeAnyPacket(t *testing.T) {
	const reason = "peer is on the deny list"
	b := testnode.New(t)
	var rejecting atomic.Bool
	rejecting.Store(true)
	var calls atomic.Int64
	a := testnode.New(t, node.BeforeConnect(func(_ context.Context, at hooks.ConnectAttempt) error {
		if at.Direction == network.DirOutbound && at.Peer == b.ID() {
			calls.Add(1)
			if rejecting.Load() {
				return errors.New(reason)
			}
		}
		return nil
	}))
	bConns := admissionConnected(t, b, "")

	proxy, err := udpproxy.New("127.0.0.1:0", admissionUDPAddr(t, b))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, proxy.Close()) })
	viaProxy := peer.AddrInfo{ID: b.ID(), Addrs: []ma.Multiaddr{proxy.Multiaddr()}}

	ctx := admissionCtx(t)
	for attempt := 1; attempt <= 2; attempt++ {
		start := time.Now()
		err := a.Connect(ctx, viaProxy)
		elapsed := time.Since(start)
		require.Error(t, err, "attempt %d", attempt)
		require.ErrorIs(t, err, hooks.ErrRejected, "attempt %d", attempt)
		require.ErrorContains(t, err, reason, "attempt %d", attempt)
		require.NotErrorIs(t, err, swarm.ErrDialBackoff, "attempt %d: a hook refusal must not back the peer off", attempt)
		var rej *hooks.RejectedError
		require.ErrorAs(t, err, &rej)
		require.Equal(t, hooks.StageBeforeConnect, rej.Stage)
		require.Less(t, elapsed, 500*time.Millisecond, "attempt %d took %s", attempt, elapsed)
		require.EqualValues(t, attempt, calls.Load(), "one hook call per dial attempt")
	}
	// Give a stray datagram time to show up.
	time.Sleep(200 * time.Millisecond)
	require.Zero(t, proxy.Stats().ToTarget, "a rejected dial must send no packet")
	require.Zero(t, proxy.Stats().Mappings)
	require.Zero(t, bConns.Load(), "b saw a connection")
	require.Empty(t, b.Host().Network().Conns())
	require.Empty(t, a.Host().Network().Conns())

	// Control: the same address works once the hook allows b.
	rejecting.Store(false)
	require.NoError(t, a.Connect(ctx, viaProxy))
	require.NotZero(t, proxy.Stats().ToTarget)
	admissionEcho(t, ctx, a, b)
}

// TestAdmissionBeforeConnectRefusesInboundByAddress: b's BeforeConnect hook
// rejects inbound attempts from a's address (inbound attempts carry no peer
// ID, only the remote address). a's dial does not give a connection: b never
// adds one, and a is left without one too.
func TestAdmissionBeforeConnectRefusesInboundByAddress(t *testing.T) {
	a := testnode.New(t)
	aAddr := admissionUDPAddr(t, a)
	var inboundSeen, rejected atomic.Int64
	b := testnode.New(t, node.BeforeConnect(func(_ context.Context, at hooks.ConnectAttempt) error {
		if at.Direction != network.DirInbound {
			return nil
		}
		inboundSeen.Add(1)
		if at.Peer != "" {
			return fmt.Errorf("inbound attempt carries a peer ID %s before the handshake", at.Peer)
		}
		udp, err := admissionToUDP(at.RemoteAddr)
		if err == nil && udp.IP.Equal(aAddr.IP) && udp.Port == aAddr.Port {
			rejected.Add(1)
			return errors.New("address is banned")
		}
		return nil
	}))
	bConns := admissionConnected(t, b, a.ID())

	ctx := admissionCtx(t)
	err := a.Connect(ctx, b.AddrInfo())
	// Whatever Connect returned, a must not keep a connection to b.
	admissionNotConnected(t, a, b.ID(), 2*time.Second)
	require.NotZero(t, rejected.Load(), "b's hook never matched a's address (inbound attempts seen: %d)", inboundSeen.Load())
	require.Zero(t, bConns.Load(), "b added a connection from a refused address")
	require.Empty(t, b.Host().Network().ConnsToPeer(a.ID()))
	t.Logf("a.Connect returned %v (see TestAdmissionBugConnectNilWhenRemoteRefuses)", err)

	// Another peer, from another address, gets in.
	c := testnode.New(t)
	require.NoError(t, c.Connect(ctx, b.AddrInfo()))
	admissionEcho(t, ctx, c, b)
}

// TestAdmissionAfterHandshakeAllowlist: g admits only peers whose public key
// is on its allowlist. The allowed peer connects both ways; g dialing a
// stranger fails with hooks.ErrRejected and the hook's reason; the stranger
// dialing g is closed, and g never holds a connection to it.
func TestAdmissionAfterHandshakeAllowlist(t *testing.T) {
	allowedKey := admissionKey(t)
	allowedPub := allowedKey.GetPublic()
	var checked atomic.Int64
	g := testnode.New(t, node.AfterHandshake(func(_ context.Context, h hooks.Handshake) error {
		checked.Add(1)
		if h.RemotePublicKey == nil {
			return errors.New("handshake without a public key")
		}
		if id, err := peer.IDFromPublicKey(h.RemotePublicKey); err != nil || id != h.Peer {
			return fmt.Errorf("public key does not match peer %s", h.Peer)
		}
		if h.RemotePublicKey.Equals(allowedPub) {
			return nil
		}
		return fmt.Errorf("peer %s is not on the allowlist", h.Peer)
	}))
	allowed := testnode.New(t, node.Identity(allowedKey))
	stranger := testnode.New(t)
	strangerConns := admissionConnected(t, g, stranger.ID())
	ctx := admissionCtx(t)

	t.Run("allowed dials gated", func(t *testing.T) {
		require.NoError(t, allowed.Connect(ctx, g.AddrInfo()))
		admissionEcho(t, ctx, allowed, g)
		require.NotEmpty(t, g.Host().Network().ConnsToPeer(allowed.ID()))
		require.NoError(t, allowed.Host().Network().ClosePeer(g.ID()))
		admissionNotConnected(t, g, allowed.ID(), 2*time.Second)
	})
	t.Run("gated dials allowed", func(t *testing.T) {
		require.NoError(t, g.Connect(ctx, allowed.AddrInfo()))
		admissionEcho(t, ctx, g, allowed)
	})
	t.Run("gated dials stranger", func(t *testing.T) {
		start := time.Now()
		err := g.Connect(ctx, stranger.AddrInfo())
		require.Error(t, err)
		require.ErrorIs(t, err, hooks.ErrRejected)
		require.ErrorContains(t, err, "is not on the allowlist")
		var rej *hooks.RejectedError
		require.ErrorAs(t, err, &rej)
		require.Equal(t, hooks.StageAfterHandshake, rej.Stage)
		require.Less(t, time.Since(start), 2*time.Second)
		require.Empty(t, g.Host().Network().ConnsToPeer(stranger.ID()))
		admissionNotConnected(t, stranger, g.ID(), 2*time.Second)
	})
	t.Run("stranger dials gated", func(t *testing.T) {
		before := checked.Load()
		// The stranger has no hook: its error, if any, is not ErrRejected
		// (that it is nil is TestAdmissionBugConnectNilWhenRemoteRefuses).
		_ = stranger.Connect(ctx, g.AddrInfo())
		admissionNotConnected(t, stranger, g.ID(), 2*time.Second)
		require.Greater(t, checked.Load(), before, "g's hook did not see the inbound handshake")
		require.Empty(t, g.Host().Network().ConnsToPeer(stranger.ID()))
		require.Zero(t, strangerConns.Load(), "g added a connection from a peer off its allowlist")
	})
	// The allowed peer's connection was never disturbed.
	require.Equal(t, network.Connected, g.Host().Network().Connectedness(allowed.ID()))
}

// TestAdmissionHookRemovedAtRunTime: a hook added through Node.Hooks rejects
// until its remove function is called; then the dial succeeds.
func TestAdmissionHookRemovedAtRunTime(t *testing.T) {
	a, b := testnode.New(t), testnode.New(t)
	var calls atomic.Int64
	remove := a.Hooks().OnBeforeConnect(func(_ context.Context, at hooks.ConnectAttempt) error {
		if at.Peer == b.ID() {
			calls.Add(1)
			return errors.New("not now")
		}
		return nil
	})
	ctx := admissionCtx(t)
	err := a.Connect(ctx, b.AddrInfo())
	require.ErrorIs(t, err, hooks.ErrRejected)
	require.ErrorContains(t, err, "not now")
	require.EqualValues(t, 1, calls.Load())

	remove()
	remove() // idempotent
	require.NoError(t, a.Connect(ctx, b.AddrInfo()))
	require.EqualValues(t, 1, calls.Load(), "a removed hook was called")
	admissionEcho(t, ctx, a, b)
}

// TestAdmissionHookOrderFirstRejectWins: hooks given as options run in
// order, before hooks added at run time; the first that rejects wins and the
// later ones are not called. Without the rejecting hook, every hook runs, in
// registration order.
func TestAdmissionHookOrderFirstRejectWins(t *testing.T) {
	b := testnode.New(t)
	var mu sync.Mutex
	var order []string
	record := func(name string, at hooks.ConnectAttempt) {
		if at.Direction == network.DirOutbound && at.Peer == b.ID() {
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
		}
	}
	takeOrder := func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := order
		order = nil
		return out
	}
	var rejecting atomic.Bool
	rejecting.Store(true)
	a := testnode.New(t,
		node.BeforeConnect(func(_ context.Context, at hooks.ConnectAttempt) error {
			record("first", at)
			if rejecting.Load() && at.Peer == b.ID() {
				return errors.New("first says no")
			}
			return nil
		}),
		node.BeforeConnect(func(_ context.Context, at hooks.ConnectAttempt) error {
			record("second", at)
			return nil
		}),
	)
	remove := a.Hooks().OnBeforeConnect(func(_ context.Context, at hooks.ConnectAttempt) error {
		record("runtime", at)
		return nil
	})
	defer remove()

	ctx := admissionCtx(t)
	err := a.Connect(ctx, b.AddrInfo())
	require.ErrorIs(t, err, hooks.ErrRejected)
	require.ErrorContains(t, err, "first says no")
	var rej *hooks.RejectedError
	require.ErrorAs(t, err, &rej)
	require.Equal(t, 0, rej.Hook, "the first hook rejected")
	require.Equal(t, hooks.StageBeforeConnect, rej.Stage)
	require.Equal(t, []string{"first"}, takeOrder(), "hooks after the rejecting one must not run")

	rejecting.Store(false)
	require.NoError(t, a.Connect(ctx, b.AddrInfo()))
	require.Equal(t, []string{"first", "second", "runtime"}, takeOrder())
}

// TestAdmissionGaterBlockPeerClosesAndRefuses: blocking a connected peer
// closes its connections at once; dialing it fails with ErrPeerBlocked; its
// inbound connections are refused; unblocking allows the dial again.
func TestAdmissionGaterBlockPeerClosesAndRefuses(t *testing.T) {
	a, b := testnode.New(t), testnode.New(t)
	ctx := admissionCtx(t)
	require.NoError(t, a.Connect(ctx, b.AddrInfo()))
	require.Equal(t, network.Connected, a.Host().Network().Connectedness(b.ID()))

	require.NoError(t, a.Gater().BlockPeer(b.ID()))
	require.Contains(t, a.Gater().BlockedPeers(), b.ID())
	admissionNotConnected(t, a, b.ID(), time.Second)
	admissionNotConnected(t, b, a.ID(), 2*time.Second) // b learns of the close

	err := a.Connect(ctx, b.AddrInfo())
	require.ErrorIs(t, err, gater.ErrPeerBlocked)
	require.ErrorContains(t, err, b.ID().String())

	// b dialing a is refused by a's gater.
	aConns := admissionConnected(t, a, b.ID())
	_ = b.Connect(ctx, a.AddrInfo())
	admissionNotConnected(t, b, a.ID(), 2*time.Second)
	require.Zero(t, aConns.Load(), "a accepted a connection from a blocked peer")

	require.NoError(t, a.Gater().UnblockPeer(b.ID()))
	require.NotContains(t, a.Gater().BlockedPeers(), b.ID())
	require.NoError(t, a.Connect(ctx, b.AddrInfo()))
	admissionEcho(t, ctx, a, b)
}

// TestAdmissionGaterBlockSubnet: blocking 127.0.0.2/32 closes the
// connection to the peer listening there and refuses dialing it, while the
// peer on 127.0.0.1 keeps working.
func TestAdmissionGaterBlockSubnet(t *testing.T) {
	a := testnode.New(t)
	near := testnode.New(t)                                                        // 127.0.0.1
	far := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.2/udp/0/quic-v1")) // 127.0.0.2
	require.True(t, admissionUDPAddr(t, far).IP.Equal(net.IPv4(127, 0, 0, 2)))
	ctx := admissionCtx(t)
	require.NoError(t, a.Connect(ctx, near.AddrInfo()))
	require.NoError(t, a.Connect(ctx, far.AddrInfo()))

	_, subnet, err := net.ParseCIDR("127.0.0.2/32")
	require.NoError(t, err)
	require.NoError(t, a.Gater().BlockSubnet(subnet))
	admissionNotConnected(t, a, far.ID(), time.Second)
	require.Equal(t, network.Connected, a.Host().Network().Connectedness(near.ID()), "the 127.0.0.1 peer was disconnected")
	admissionEcho(t, ctx, a, near)

	err = a.Connect(ctx, far.AddrInfo())
	require.ErrorIs(t, err, gater.ErrAddrBlocked)
	require.ErrorContains(t, err, "127.0.0.2")
	require.Empty(t, a.Host().Network().ConnsToPeer(far.ID()))

	// A fresh dial to 127.0.0.1 still works.
	require.NoError(t, a.Host().Network().ClosePeer(near.ID()))
	require.NoError(t, a.Connect(ctx, near.AddrInfo()))
	admissionEcho(t, ctx, a, near)

	require.NoError(t, a.Gater().UnblockSubnet(subnet))
	require.NoError(t, a.Connect(ctx, far.AddrInfo()))
}

// TestAdmissionPersistBlockRuleAcrossRestart: a block rule made with a
// DataDir survives a restart of the node (same directory, same identity)
// and still refuses the peer; after unblocking and restarting, it is gone.
func TestAdmissionPersistBlockRuleAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	key := admissionKey(t)
	b := testnode.New(t)
	ctx := admissionCtx(t)
	start := func() *node.Node { return testnode.New(t, node.DataDir(dir), node.Identity(key)) }

	a1 := start()
	require.NoError(t, a1.Connect(ctx, b.AddrInfo()))
	require.NoError(t, a1.Gater().BlockPeer(b.ID()))
	admissionNotConnected(t, a1, b.ID(), time.Second)
	_, v4, err := net.ParseCIDR("10.1.0.0/16")
	require.NoError(t, err)
	_, v6, err := net.ParseCIDR("2001:db8::/32")
	require.NoError(t, err)
	require.NoError(t, a1.Gater().BlockSubnet(v4))
	require.NoError(t, a1.Gater().BlockSubnet(v6))
	require.NoError(t, a1.Gater().BlockAddr(net.ParseIP("192.0.2.7")))
	require.NoError(t, a1.Close())

	a2 := start()
	require.Equal(t, a1.ID(), a2.ID())
	require.Equal(t, []peer.ID{b.ID()}, a2.Gater().BlockedPeers(), "the block rule was not restored")
	require.ElementsMatch(t, []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("2001:db8::/32")},
		a2.Gater().BlockedSubnets())
	require.Equal(t, []netip.Addr{netip.MustParseAddr("192.0.2.7")}, a2.Gater().BlockedAddrs())
	err = a2.Connect(ctx, b.AddrInfo())
	require.ErrorIs(t, err, gater.ErrPeerBlocked)
	require.Empty(t, a2.Host().Network().ConnsToPeer(b.ID()))
	require.NoError(t, a2.Gater().UnblockPeer(b.ID()))
	require.NoError(t, a2.Gater().UnblockSubnet(v4))
	require.NoError(t, a2.Gater().UnblockSubnet(v6))
	require.NoError(t, a2.Gater().UnblockAddr(net.ParseIP("192.0.2.7")))
	require.NoError(t, a2.Close())

	a3 := start()
	require.Empty(t, a3.Gater().BlockedPeers(), "the removed rule came back")
	require.Empty(t, a3.Gater().BlockedSubnets())
	require.Empty(t, a3.Gater().BlockedAddrs())
	require.NoError(t, a3.Connect(ctx, b.AddrInfo()))
	admissionEcho(t, ctx, a3, b)
}

// TestAdmissionHookChurn100Connections: 100 connections opened and closed in
// sequence through a BeforeConnect hook that allows everything: the hook runs
// once per outbound dial on the dialer and once per inbound connection on
// the listener (twice for one judged again after a redundant verdict);
// nothing is left open (goleak checks the goroutines in
// TestMain).
func TestAdmissionHookChurn100Connections(t *testing.T) {
	const rounds = 100
	// DHT clients (testnode.New's default): no DHT query may dial behind
	// the test's back.
	var outbound, inbound, other atomic.Int64
	b := testnode.New(t, node.BeforeConnect(func(_ context.Context, at hooks.ConnectAttempt) error {
		if at.Direction == network.DirInbound {
			inbound.Add(1)
		} else {
			other.Add(1)
		}
		return nil
	}))
	// One path per peer: with the default two, the multipath manager's
	// standby discovery sometimes redials b right after ClosePeer (see
	// the report), which would add dials the test does not make.
	a := testnode.New(t, node.Multipath(multipath.Config{DesiredPaths: 1}), node.BeforeConnect(func(_ context.Context, at hooks.ConnectAttempt) error {
		if at.Direction == network.DirOutbound && at.Peer == b.ID() {
			outbound.Add(1)
		} else {
			other.Add(1)
		}
		return nil
	}))
	ctx := admissionCtx(t)
	aConns := admissionConnected(t, a, b.ID())
	bConns := admissionConnected(t, b, a.ID())
	for i := range rounds {
		require.NoError(t, a.Connect(ctx, b.AddrInfo()), "round %d", i)
		require.NoError(t, a.Host().Network().ClosePeer(b.ID()), "round %d", i)
		require.Empty(t, a.Host().Network().ConnsToPeer(b.ID()), "round %d", i)
	}
	admissionNotConnected(t, b, a.ID(), 2*time.Second)
	require.EqualValues(t, rounds, outbound.Load(), "outbound hook calls")
	require.EqualValues(t, rounds, aConns.Load(), "a's connections")
	// On b, a connection that arrives while the close of the previous one
	// (same pair of addresses, same dialer) is still in flight may lose the
	// redundancy tie-break and stay unannounced (reinstated when the old
	// one's close arrives, unless a closes it first): every connection is
	// announced or refused as redundant, none twice over. A reinstated
	// connection is judged again, stage 1 included, so its inbound
	// BeforeConnect hook runs twice.
	redundant := b.Network().AdmissionStats().Refused[core.ReasonPathRedundant]
	require.GreaterOrEqual(t, inbound.Load(), int64(rounds), "inbound hook calls")
	require.LessOrEqual(t, inbound.Load(), int64(rounds)+int64(redundant), "inbound hook calls (%d redundant)", redundant)
	require.LessOrEqual(t, bConns.Load(), int64(rounds), "b's connections")
	require.GreaterOrEqual(t, bConns.Load()+int64(redundant), int64(rounds), "b's connections (%d redundant)", redundant)
	require.Zero(t, other.Load())
	require.Eventually(t, func() bool { return a.ConnectionCount() == 0 }, 2*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return b.ConnectionCount() == 0 }, 2*time.Second, 5*time.Millisecond)
	require.False(t, slices.Contains(a.Host().Network().Peers(), b.ID()))
}

// The tests below pin down bugs found while writing the ones above; they
// fail until the bugs are fixed.

// TestAdmissionBugConnectNilWhenRemoteRefuses: when the remote node refuses
// an inbound connection (its BeforeConnect hook on the dialer's address, or
// its AfterHandshake hook), Node.Connect on the dialer returns nil although
// no connection is left. go-libp2p's QUIC listener runs InterceptAccept and
// InterceptSecured only after the handshake has completed (contrary to
// "before its handshake" in node.BeforeConnect's doc), so the dialer's
// DialPeer succeeds; the refused connection closes during identify, and the
// basic host's Connect ignores the identify failure. Node.Connect promises
// to connect and wait for identify: it should return an error.
func TestAdmissionBugConnectNilWhenRemoteRefuses(t *testing.T) {
	t.Run("BeforeConnect inbound", func(t *testing.T) {
		a := testnode.New(t)
		aAddr := admissionUDPAddr(t, a)
		b := testnode.New(t, node.BeforeConnect(func(_ context.Context, at hooks.ConnectAttempt) error {
			if udp, err := admissionToUDP(at.RemoteAddr); at.Direction == network.DirInbound && err == nil &&
				udp.IP.Equal(aAddr.IP) && udp.Port == aAddr.Port {
				return errors.New("address is banned")
			}
			return nil
		}))
		err := a.Connect(admissionCtx(t), b.AddrInfo())
		admissionNotConnected(t, a, b.ID(), 2*time.Second)
		require.Error(t, err, "a.Connect returned nil, yet b refused the connection and a has none")
	})
	t.Run("AfterHandshake inbound", func(t *testing.T) {
		a := testnode.New(t)
		b := testnode.New(t, node.AfterHandshake(func(_ context.Context, h hooks.Handshake) error {
			return errors.New("nobody is allowed")
		}))
		err := a.Connect(admissionCtx(t), b.AddrInfo())
		admissionNotConnected(t, a, b.ID(), 2*time.Second)
		require.Error(t, err, "a.Connect returned nil, yet b refused the connection and a has none")
	})
}

// TestAdmissionBugAfterHandshakeRejectionBacksOff: an outbound connection
// refused by the dialer's own AfterHandshake hook puts the peer in the
// swarm's dial backoff (100 ms, doubling up to 30 s on every further
// rejection): swarm.attempted counts it as a network failure because the
// transport's "secured connection gated" error is not wrapped in
// ErrGaterDisallowedConnection. The next Connect then fails with
// ErrDialBackoff instead of hooks.ErrRejected and the hook's reason, and a
// peer the application has just allowed (hook removed) cannot be dialed until
// the backoff runs out.
func TestAdmissionBugAfterHandshakeRejectionBacksOff(t *testing.T) {
	a, b := testnode.New(t), testnode.New(t)
	remove := a.Hooks().OnAfterHandshake(func(_ context.Context, h hooks.Handshake) error {
		return fmt.Errorf("%s is not allowed yet", h.Peer)
	})
	ctx := admissionCtx(t)
	for i := range 2 {
		err := a.Connect(ctx, b.AddrInfo())
		assert.ErrorIs(t, err, hooks.ErrRejected, "attempt %d", i+1)
		assert.NotErrorIs(t, err, swarm.ErrDialBackoff, "attempt %d", i+1)
	}
	remove()
	assert.NoError(t, a.Connect(ctx, b.AddrInfo()), "the hook is gone, yet the peer cannot be dialed")
}

// TestAdmissionBugBlockAddrClosesAllowedConnection: an allow rule wins over
// a block rule (package gater's doc), and BlockPeer and BlockSubnet leave
// the connections an allow rule covers open; BlockAddr does not check the
// allow rules and closes them, although dialing the address is still
// allowed.
func TestAdmissionBugBlockAddrClosesAllowedConnection(t *testing.T) {
	a := testnode.New(t)
	far := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.2/udp/0/quic-v1"))
	ctx := admissionCtx(t)
	_, loopbackNet, err := net.ParseCIDR("127.0.0.0/8")
	require.NoError(t, err)
	require.NoError(t, a.Gater().AllowSubnet(loopbackNet))
	require.NoError(t, a.Connect(ctx, far.AddrInfo()))

	// BlockSubnet respects the allow rule.
	_, farNet, err := net.ParseCIDR("127.0.0.2/32")
	require.NoError(t, err)
	require.NoError(t, a.Gater().BlockSubnet(farNet))
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, network.Connected, a.Host().Network().Connectedness(far.ID()), "BlockSubnet closed an allowed connection")

	// BlockAddr does not.
	require.NoError(t, a.Gater().BlockAddr(net.IPv4(127, 0, 0, 2)))
	time.Sleep(100 * time.Millisecond)
	assert.Equal(t, network.Connected, a.Host().Network().Connectedness(far.ID()),
		"BlockAddr closed a connection that an allow rule covers")
	// Dialing the address is still allowed: the close was inconsistent.
	require.NoError(t, a.Connect(ctx, far.AddrInfo()))
}
