package multipath

import (
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/benbjohnson/clock"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/libp2p/go-libp2p/p2p/host/peerstore/pstoremem"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/testkit"
)

// policyPath is a path over a fake connection (no quic-go connection, so its
// RTT is its heartbeat RTT), standby, with the given RTT.
func policyPath(t *testing.T, id, addr string, rtt time.Duration) *path {
	c := testkit.NewFakeConn("", peer.ID("p-"+id), network.DirOutbound)
	c.SetAddrs(ma.StringCast(addr), ma.StringCast(addr))
	pa := newPath(c, time.Now())
	pa.state = core.PathStandby
	pa.heartbeatRTT.Store(int64(rtt))
	return pa
}

// policyDialer is a Dialer for pure policy units: it dials nothing.
type policyDialer struct {
	local peer.ID
	ps    peerstore.Peerstore
}

func (policyDialer) DialPath(context.Context, peer.ID, ma.Multiaddr) (network.Conn, error) {
	return nil, context.Canceled
}
func (policyDialer) CanDial(peer.ID, ma.Multiaddr) bool { return false }
func (d policyDialer) Peerstore() peerstore.Peerstore   { return d.ps }
func (d policyDialer) LocalPeer() peer.ID               { return d.local }

func policyManager(t *testing.T, local peer.ID, opts ...Option) (*Manager, event.Bus) {
	t.Helper()
	bus := eventbus.NewBus()
	ps, err := pstoremem.NewPeerstore()
	require.NoError(t, err)
	t.Cleanup(func() { _ = ps.Close() })
	m, err := New(policyDialer{local: local, ps: ps}, bus, Config{}, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Close() })
	return m, bus
}

func randomPeer(t *testing.T) peer.ID {
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	id, err := peer.IDFromPublicKey(pub)
	require.NoError(t, err)
	return id
}

// TestHysteresis: within a tier, best switches only for an advantage of at
// least SwitchHysteresis (5 ms); across health tiers at once; IPv6 paths get
// 3 ms off.
func TestHysteresis(t *testing.T) {
	m, _ := policyManager(t, "local")
	current := policyPath(t, "current", "/ip4/10.0.0.1/udp/1/quic-v1", 10*time.Millisecond)
	candidate := policyPath(t, "candidate", "/ip4/10.0.0.2/udp/1/quic-v1", 10*time.Millisecond)
	pp := &peerPaths{paths: []*path{current, candidate}}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rerank("p", pp, core.SwitchPathAdded)
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
		m.rerank("p", pp, core.SwitchLowerRTT)
		if tc.switches {
			require.Same(t, candidate, pp.selected, "candidate at %s", tc.candidateRTT)
			require.Equal(t, core.PathActive, candidate.state)
			require.Equal(t, core.PathStandby, current.state)
		} else {
			require.Same(t, current, pp.selected, "candidate at %s must not win", tc.candidateRTT)
		}
	}

	// Across health tiers: a degraded selected path loses at once, even to
	// a slower healthy one.
	pp.selected = current
	current.heartbeatRTT.Store(int64(time.Millisecond))
	candidate.heartbeatRTT.Store(int64(50 * time.Millisecond))
	current.state = core.PathDegraded
	m.rerank("p", pp, core.SwitchPathDegraded)
	require.Same(t, candidate, pp.selected)

	// IPv6 bias: an IPv6 path at 12 ms ranks like IPv4 at 9 ms.
	v6 := policyPath(t, "v6", "/ip6/::1/udp/1/quic-v1", 12*time.Millisecond)
	v4 := policyPath(t, "v4", "/ip4/10.0.0.3/udp/1/quic-v1", 10*time.Millisecond)
	pp2 := &peerPaths{paths: []*path{v4, v6}}
	m.rerank("q", pp2, core.SwitchPathAdded)
	require.Same(t, v6, pp2.selected, "12 ms − 3 ms IPv6 bias beats 10 ms")
}

// simultaneous returns the two connections of a simultaneous dial between a
// and b on one pair of addresses, as each end sees them: on a's side, the
// one a dialed (outbound) and the one b dialed (inbound); on b's side the
// mirror images.
func simultaneous(a, b peer.ID) (aDialedAtA, bDialedAtA, aDialedAtB, bDialedAtB *testkit.FakeConn) {
	addrA, addrB := ma.StringCast("/ip4/127.0.0.1/udp/1000/quic-v1"), ma.StringCast("/ip4/127.0.0.2/udp/2000/quic-v1")
	mk := func(local, remote peer.ID, dir network.Direction, la, ra ma.Multiaddr) *testkit.FakeConn {
		c := testkit.NewFakeConn(local, remote, dir)
		c.SetAddrs(la, ra)
		return c
	}
	return mk(a, b, network.DirOutbound, addrA, addrB), mk(a, b, network.DirInbound, addrA, addrB),
		mk(b, a, network.DirInbound, addrB, addrA), mk(b, a, network.DirOutbound, addrB, addrA)
}

// TestRedundantSurvivorIsTheSameOnBothEnds: of two connections on one pair
// of addresses, dialed by each end at the same moment, both ends keep the one
// dialed by the smaller peer ID, whatever the order in which each end admits
// them — the refused one is never a path, the retired one leaves selection at
// once.
func TestRedundantSurvivorIsTheSameOnBothEnds(t *testing.T) {
	for range 20 {
		a, b := randomPeer(t), randomPeer(t)
		ma, _ := policyManager(t, a)
		mb, _ := policyManager(t, b)
		aAtA, bAtA, aAtB, bAtB := simultaneous(a, b)
		// Each end admits its own dial first (the client side of a QUIC
		// handshake completes first), then the other's.
		ctx := context.Background()
		require.NoError(t, ma.AdmitConn(ctx, aAtA))
		errA := ma.AdmitConn(ctx, bAtA)
		require.NoError(t, mb.AdmitConn(ctx, bAtB))
		errB := mb.AdmitConn(ctx, aAtB)

		smaller := a < b
		// The survivor is the smaller peer's dial, on both ends.
		var wantA, wantB network.Conn = bAtA, bAtB
		if smaller {
			wantA, wantB = aAtA, aAtB
		}
		require.Same(t, wantA, ma.SelectPath(b, []network.Conn{aAtA, bAtA}), "survivor at a")
		require.Same(t, wantB, mb.SelectPath(a, []network.Conn{aAtB, bAtB}), "survivor at b")
		// The newcomer that lost was refused with its survivor; the one
		// that lost after being admitted is redundant (not selectable).
		var refused *core.RefusedError
		if smaller {
			require.ErrorAs(t, errA, &refused)
			require.Equal(t, core.ReasonPathRedundant, refused.Reason)
			require.Same(t, core.Conn(aAtA), refused.Survivor)
			require.NoError(t, errB)
			require.Equal(t, core.PathRedundant, stateOf(t, mb, a, bAtB))
		} else {
			require.ErrorAs(t, errB, &refused)
			require.Same(t, core.Conn(bAtB), refused.Survivor)
			require.NoError(t, errA)
			require.Equal(t, core.PathRedundant, stateOf(t, ma, b, aAtA))
		}
	}
}

// TestRedundantAbortAndDisconnectReinstate: a path retired by a newcomer is
// reinstated when a later stage refuses the newcomer (AbortConn) and when
// the newcomer's connection closes (Disconnected).
func TestRedundantAbortAndDisconnectReinstate(t *testing.T) {
	a, b := peer.ID("a"), peer.ID("b") // a < b: a's dials survive
	m, _ := policyManager(t, a)
	aAtA, bAtA, _, _ := simultaneous(a, b)
	ctx := context.Background()
	require.NoError(t, m.AdmitConn(ctx, bAtA)) // b's dial first
	require.NoError(t, m.AdmitConn(ctx, aAtA)) // ours retires it
	require.Equal(t, core.PathRedundant, stateOf(t, m, b, bAtA))
	require.Same(t, network.Conn(aAtA), m.SelectPath(b, []network.Conn{bAtA, aAtA}))

	m.AbortConn(aAtA)
	require.Equal(t, core.PathValidating, stateOf(t, m, b, bAtA))
	require.Same(t, network.Conn(bAtA), m.SelectPath(b, []network.Conn{bAtA}))

	require.NoError(t, m.AdmitConn(ctx, aAtA))
	require.Equal(t, core.PathRedundant, stateOf(t, m, b, bAtA))
	require.Nil(t, m.SelectPath(b, []network.Conn{bAtA}), "a redundant path is never selected")
	m.Disconnected(nil, aAtA)
	require.Equal(t, core.PathValidating, stateOf(t, m, b, bAtA))
	require.Same(t, network.Conn(bAtA), m.SelectPath(b, []network.Conn{bAtA}))
}

// TestMaxPathsRefusedAtAdmission: the (MaxPaths+1)th connection of a peer
// is refused before it is announced, with ErrorCodeTooManyPaths.
func TestMaxPathsRefusedAtAdmission(t *testing.T) {
	bus := eventbus.NewBus()
	ps, err := pstoremem.NewPeerstore()
	require.NoError(t, err)
	defer ps.Close()
	m, err := New(policyDialer{local: "local", ps: ps}, bus, Config{MaxPaths: 2, DesiredPaths: 1})
	require.NoError(t, err)
	defer m.Close()
	p := randomPeer(t)
	ctx := context.Background()
	for range 2 {
		require.NoError(t, m.AdmitConn(ctx, testkit.NewFakeConn("local", p, network.DirInbound)))
	}
	err = m.AdmitConn(ctx, testkit.NewFakeConn("local", p, network.DirInbound))
	var refused *core.RefusedError
	require.ErrorAs(t, err, &refused)
	require.Equal(t, core.ReasonMaxPaths, refused.Reason)
	require.Equal(t, ErrorCodeTooManyPaths, refused.Code)
	require.Len(t, m.Paths(p), 2)
}

// TestIdlePathDiesOnTheManagersClock: a path that never answers a heartbeat
// is dead PathIdleTimeout after it was admitted, on the manager's clock — a
// mock clock here, so the test moves time instead of waiting 6.5 s.
func TestIdlePathDiesOnTheManagersClock(t *testing.T) {
	mock := clock.NewMock()
	m, bus := policyManager(t, "local", WithClock(mock))
	dead := testkit.Subscribe(t, bus, new(EvtPathDead))
	p := randomPeer(t)
	c := testkit.NewFakeConn("local", p, network.DirOutbound)
	require.NoError(t, m.AdmitConn(context.Background(), c))
	m.Connected(nil, c) // starts the heartbeat: its probes fail (no streams)

	mock.Add(m.Config().PathIdleTimeout - time.Millisecond)
	require.False(t, c.IsClosed(), "dead before PathIdleTimeout")
	select {
	case e := <-dead.Out():
		t.Fatalf("path dead early: %+v", e)
	default:
	}
	// Move time in small steps: the heartbeat re-arms its timer after
	// each failed probe.
	evt := func() EvtPathDead {
		for {
			select {
			case e := <-dead.Out():
				return e.(EvtPathDead)
			case <-time.After(time.Millisecond):
				mock.Add(10 * time.Millisecond)
			}
		}
	}()
	require.Equal(t, c.ID(), evt.ConnID)
	require.GreaterOrEqual(t, evt.SilentFor, m.Config().PathIdleTimeout)
	require.Eventually(t, c.IsClosed, 5*time.Second, time.Millisecond)
	require.Equal(t, ErrorCodePathDead, c.CloseCode())
}

func stateOf(t *testing.T, m *Manager, p peer.ID, c network.Conn) core.PathState {
	t.Helper()
	for _, info := range m.Paths(p) {
		if info.ConnID == c.ID() {
			return info.State
		}
	}
	t.Fatalf("%s is not a path of %s", c.ID(), p)
	return 0
}

// recordingDialer is a policy Dialer that can dial every address and
// records which DialPath was asked for (each dial fails).
type recordingDialer struct {
	policyDialer
	mu     sync.Mutex
	dialed []ma.Multiaddr
}

func (d *recordingDialer) DialPath(_ context.Context, _ peer.ID, addr ma.Multiaddr) (network.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dialed = append(d.dialed, addr)
	return nil, errors.New("recordingDialer dials nothing")
}
func (*recordingDialer) CanDial(peer.ID, ma.Multiaddr) bool { return true }

// TestDiscoveryLeavesRelayAddrs: standby discovery dials a peer's direct
// addresses that no path uses, never its relay (/p2p-circuit) addresses:
// relayed paths come only from DialPeer.
func TestDiscoveryLeavesRelayAddrs(t *testing.T) {
	ps, err := pstoremem.NewPeerstore()
	require.NoError(t, err)
	t.Cleanup(func() { _ = ps.Close() })
	d := &recordingDialer{policyDialer: policyDialer{local: "local", ps: ps}}
	m, err := New(d, eventbus.NewBus(), Config{DesiredPaths: 4})
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Close() })

	p := randomPeer(t)
	relay := randomPeer(t)
	direct1 := ma.StringCast("/ip4/10.0.0.1/udp/4001/quic-v1")
	direct2 := ma.StringCast("/ip4/10.0.0.2/udp/4001/quic-v1")
	relayed := ma.StringCast("/ip4/203.0.113.7/udp/4001/quic-v1/p2p/" + relay.String() + "/p2p-circuit")
	ps.AddAddrs(p, []ma.Multiaddr{direct1, relayed, direct2}, time.Hour)

	live := policyPath(t, "live", "/ip4/10.0.0.9/udp/4001/quic-v1", time.Millisecond)
	m.mu.Lock()
	m.peers[p] = &peerPaths{paths: []*path{live}, ranked: []*path{live}, discovering: true}
	m.wg.Add(1)
	m.mu.Unlock()
	m.discover(p)

	d.mu.Lock()
	defer d.mu.Unlock()
	require.ElementsMatch(t, []ma.Multiaddr{direct1, direct2}, d.dialed)
}
