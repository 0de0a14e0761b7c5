package gater_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	ic "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/gater"
	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/internal/testkit"
)

// Tests of the decisions on authenticated connections: AdmitConn (the
// swarm's admission stage), InterceptSecured (which leaves the decision to
// AdmitConn) and InterceptUpgraded (AdmitConn's checks for go-libp2p's own
// swarm); the peer policy; the hooks.

// keyedConn is a testkit.FakeConn with the remote public key the TLS
// handshake proved (a FakeConn has none).
type keyedConn struct {
	*testkit.FakeConn
	key ic.PubKey
}

func (c keyedConn) RemotePublicKey() ic.PubKey { return c.key }

// handshakes records what an AfterHandshake hook is given.
type handshakes struct {
	mu   sync.Mutex
	seen []hooks.Handshake
}

func (r *handshakes) add(h hooks.Handshake) {
	r.mu.Lock()
	r.seen = append(r.seen, h)
	r.mu.Unlock()
}

func (r *handshakes) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func (r *handshakes) last(t *testing.T) hooks.Handshake {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	require.NotEmpty(t, r.seen, "no hook ran")
	return r.seen[len(r.seen)-1]
}

// sentinels are the gater's and the hooks' errors a refusal may wrap.
var sentinels = []error{gater.ErrPeerBlocked, gater.ErrAddrBlocked, gater.ErrPeerPolicy, hooks.ErrRejected}

// ---------------------------------------------------------------- AdmitConn

// Every refusal of a connection — peer rule, address rule, subnet rule,
// peer policy, AfterHandshake hook — happens in AdmitConn, in both
// directions, as a *core.RefusedError with the right reason, code
// network.ConnGated and exactly the inner error that says why; InterceptSecured
// allows the same connection, InterceptUpgraded refuses it; the rule is
// about that peer or address only.
func TestAdmitConnRefusals(t *testing.T) {
	hookReason := errors.New("not on the allowlist")
	for _, tc := range []struct {
		name   string
		setup  func(t *testing.T, g *gater.Gater, reg *hooks.Registry, p peer.ID)
		addr   string
		reason core.CloseReason
		inner  []error
	}{
		{
			name:   "blocked peer",
			setup:  func(t *testing.T, g *gater.Gater, _ *hooks.Registry, p peer.ID) { require.NoError(t, g.BlockPeer(p)) },
			addr:   "192.0.2.1",
			reason: core.ReasonBlocked,
			inner:  []error{gater.ErrPeerBlocked},
		},
		{
			name: "blocked address",
			setup: func(t *testing.T, g *gater.Gater, _ *hooks.Registry, _ peer.ID) {
				require.NoError(t, g.BlockAddr(ip(t, "192.0.2.1")))
			},
			addr:   "192.0.2.1",
			reason: core.ReasonBlocked,
			inner:  []error{gater.ErrAddrBlocked},
		},
		{
			name: "blocked IPv6 subnet",
			setup: func(t *testing.T, g *gater.Gater, _ *hooks.Registry, _ peer.ID) {
				require.NoError(t, g.BlockSubnet(cidr(t, "2001:db8::/32")))
			},
			addr:   "2001:db8::7",
			reason: core.ReasonBlocked,
			inner:  []error{gater.ErrAddrBlocked},
		},
		{
			name: "peer policy",
			setup: func(t *testing.T, g *gater.Gater, _ *hooks.Registry, p peer.ID) {
				g.SetPeerPolicy(func(q peer.ID) bool { return q != p })
			},
			addr:   "192.0.2.1",
			reason: core.ReasonPeerPolicy,
			inner:  []error{gater.ErrPeerPolicy},
		},
		{
			name: "AfterHandshake hook",
			setup: func(t *testing.T, _ *gater.Gater, reg *hooks.Registry, p peer.ID) {
				reg.OnAfterHandshake(func(_ context.Context, h hooks.Handshake) error {
					if h.Peer == p {
						return hookReason
					}
					return nil
				})
			},
			addr:   "192.0.2.1",
			reason: core.ReasonHookRejected,
			inner:  []error{hooks.ErrRejected, hookReason},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry(t)
			g := newGater(t, nil, reg)
			p, other := testPeer(t, 1), testPeer(t, 2)
			tc.setup(t, g, reg, p)
			a := quic(t, tc.addr)
			for _, dir := range directions {
				// admitVerdict also checks that InterceptSecured allows
				// and that InterceptUpgraded refuses.
				err := admitVerdict(t, g, p, dir, a)
				refused := requireRefused(t, err, p, tc.reason, tc.inner[0])
				for _, inner := range tc.inner[1:] {
					require.ErrorIs(t, err, inner)
				}
				for _, s := range sentinels {
					if !slices.Contains(tc.inner, s) {
						require.NotErrorIs(t, err, s, "%s: the refusal names one reason", dir)
					}
				}
				if tc.reason == core.ReasonHookRejected {
					var rejected *hooks.RejectedError
					require.ErrorAs(t, err, &rejected)
					require.Equal(t, hooks.StageAfterHandshake, rejected.Stage)
					require.Equal(t, hookReason, rejected.Reason)
					require.Same(t, rejected, refused.Err, "the RefusedError wraps the hook's RejectedError")
				}
			}
			for _, dir := range directions {
				require.NoError(t, admitVerdict(t, g, other, dir, quic(t, "198.51.100.1")), "another peer at another address (%s)", dir)
			}
		})
	}
}

// AdmitConn checks, in order, the peer rules, the address rules, the peer
// policy, the hooks: the first that refuses is the reason, and what comes
// after it does not run.
func TestAdmitConnCheckOrder(t *testing.T) {
	reg := newRegistry(t)
	g := newGater(t, nil, reg)
	var policyCalls, hookCalls atomic.Int32
	g.SetPeerPolicy(func(peer.ID) bool { policyCalls.Add(1); return false })
	hookReason := errors.New("hook says no")
	reg.OnAfterHandshake(func(context.Context, hooks.Handshake) error { hookCalls.Add(1); return hookReason })
	p, q := testPeer(t, 1), testPeer(t, 2)
	blockedAddr, freeAddr := quic(t, "192.0.2.1"), quic(t, "192.0.2.2")
	require.NoError(t, g.BlockPeer(p))
	require.NoError(t, g.BlockAddr(ip(t, "192.0.2.1")))
	err := g.AdmitConn(t.Context(), newConn(p, network.DirOutbound, blockedAddr))
	requireRefused(t, err, p, core.ReasonBlocked, gater.ErrPeerBlocked)
	require.NotErrorIs(t, err, gater.ErrAddrBlocked, "peer rules come first")

	err = g.AdmitConn(t.Context(), newConn(q, network.DirInbound, blockedAddr))
	requireRefused(t, err, q, core.ReasonBlocked, gater.ErrAddrBlocked)
	require.Zero(t, policyCalls.Load(), "the rules come before the policy")

	err = g.AdmitConn(t.Context(), newConn(q, network.DirInbound, freeAddr))
	requireRefused(t, err, q, core.ReasonPeerPolicy, gater.ErrPeerPolicy)
	require.Equal(t, int32(1), policyCalls.Load())
	require.Zero(t, hookCalls.Load(), "the policy comes before the hooks")

	g.SetPeerPolicy(nil)
	err = g.AdmitConn(t.Context(), newConn(q, network.DirInbound, freeAddr))
	requireRefused(t, err, q, core.ReasonHookRejected, hookReason)
	require.Equal(t, int32(1), hookCalls.Load())

	// An allow rule wins over p's block rule; the hooks still decide.
	require.NoError(t, g.AllowPeer(p))
	err = g.AdmitConn(t.Context(), newConn(p, network.DirOutbound, freeAddr))
	requireRefused(t, err, p, core.ReasonHookRejected, hookReason)
	require.Equal(t, int32(2), hookCalls.Load())
}

// InterceptSecured — called by go-libp2p's QUIC transport inside its accept
// loop — allows every connection, whatever the rules, the policy and the
// hooks say, and runs no hook: a slow hook no longer holds up every other
// inbound connection. The decision is AdmitConn's (TestAdmitConnRefusals).
func TestInterceptSecuredLeavesTheDecisionToAdmitConn(t *testing.T) {
	reg := newRegistry(t)
	g := newGater(t, nil, reg)
	var hookCalls atomic.Int32
	// A slow hook that rejects everything.
	reg.OnAfterHandshake(func(ctx context.Context, _ hooks.Handshake) error {
		hookCalls.Add(1)
		<-ctx.Done()
		return ctx.Err()
	})
	blocked, stranger, p := testPeer(t, 1), testPeer(t, 2), testPeer(t, 3)
	require.NoError(t, g.BlockPeer(blocked))
	require.NoError(t, g.BlockAddr(ip(t, "192.0.2.9")))
	g.SetPeerPolicy(func(q peer.ID) bool { return q != stranger })
	free, blockedAddr := quic(t, "192.0.2.1"), quic(t, "192.0.2.9")
	for _, dir := range directions {
		for _, tc := range []struct {
			p peer.ID
			a fakeAddrs
		}{
			{blocked, fakeAddrs{localAddr, free}},
			{p, fakeAddrs{localAddr, blockedAddr}},
			{stranger, fakeAddrs{localAddr, free}},
			{p, fakeAddrs{localAddr, free}},
		} {
			require.True(t, g.InterceptSecured(dir, tc.p, tc.a), "%s %s at %s", dir, tc.p, tc.a.remote)
		}
	}
	require.Zero(t, hookCalls.Load(), "a hook ran inside InterceptSecured")
}

// ---------------------------------------------------------------- policy

// The peer policy refuses a peer at the dial (CheckPeerDial) and, in both
// directions, at admission (AdmitConn, ReasonPeerPolicy); block rules come
// first; it is about peers, not addresses; SetPeerPolicy(nil) removes it.
func TestPeerPolicy(t *testing.T) {
	g := newGater(t, nil, nil)
	member, stranger, blocked := testPeer(t, 1), testPeer(t, 2), testPeer(t, 3)
	var calls atomic.Int32
	// The policy refuses the blocked peer too: the block rule must win.
	g.SetPeerPolicy(func(p peer.ID) bool { calls.Add(1); return p == member })
	require.NoError(t, g.BlockPeer(blocked))
	a := quic(t, "192.0.2.1")

	require.NoError(t, g.CheckPeerDial(member))
	for _, dir := range directions {
		require.NoError(t, admitVerdict(t, g, member, dir, a), "member %s", dir)
	}

	err := g.CheckPeerDial(stranger)
	require.ErrorIs(t, err, gater.ErrPeerPolicy)
	require.NotErrorIs(t, err, gater.ErrPeerBlocked)
	require.Contains(t, err.Error(), stranger.String())
	require.False(t, g.InterceptPeerDial(stranger))
	for _, dir := range directions {
		err := admitVerdict(t, g, stranger, dir, a)
		requireRefused(t, err, stranger, core.ReasonPeerPolicy, gater.ErrPeerPolicy)
		require.NotErrorIs(t, err, gater.ErrPeerBlocked)
		require.Contains(t, err.Error(), stranger.String())
	}
	require.True(t, g.InterceptAddrDial(stranger, a), "the policy is about peers, not addresses")
	require.True(t, g.InterceptAccept(inbound(a)))

	require.ErrorIs(t, g.CheckPeerDial(blocked), gater.ErrPeerBlocked, "block rules are checked first")
	for _, dir := range directions {
		err := admitVerdict(t, g, blocked, dir, a)
		requireRefused(t, err, blocked, core.ReasonBlocked, gater.ErrPeerBlocked)
		require.NotErrorIs(t, err, gater.ErrPeerPolicy, "block rules are checked first")
	}
	require.NotZero(t, calls.Load())

	g.SetPeerPolicy(nil)
	require.NoError(t, g.CheckPeerDial(stranger))
	require.True(t, g.InterceptPeerDial(stranger))
	for _, dir := range directions {
		require.NoError(t, admitVerdict(t, g, stranger, dir, a), "stranger %s without a policy", dir)
	}
	require.ErrorIs(t, g.CheckPeerDial(blocked), gater.ErrPeerBlocked)
}

// HasAllowRule reports explicit peer allow rules only, and they persist.
func TestHasAllowRule(t *testing.T) {
	ds := newStore()
	g := newGater(t, ds, nil)
	p := testPeer(t, 1)
	require.False(t, g.HasAllowRule(p))
	require.NoError(t, g.BlockPeer(p))
	require.False(t, g.HasAllowRule(p), "a block rule is not an allow rule")
	require.NoError(t, g.AllowAddr(ip(t, "192.0.2.1")))
	require.NoError(t, g.AllowSubnet(cidr(t, "0.0.0.0/0")))
	require.False(t, g.HasAllowRule(p), "address allow rules are not peer allow rules")
	require.NoError(t, g.AllowPeer(p))
	require.True(t, g.HasAllowRule(p))
	require.False(t, g.HasAllowRule(testPeer(t, 2)))
	require.True(t, newGater(t, ds, nil).HasAllowRule(p), "persisted")
	require.NoError(t, g.RemoveAllowedPeer(p))
	require.False(t, g.HasAllowRule(p))
}

// ---------------------------------------------------------------- hooks

func TestBeforeConnectOutbound(t *testing.T) {
	reg := newRegistry(t)
	g := newGater(t, nil, reg)
	bad, good := testPeer(t, 1), testPeer(t, 2)
	reason := errors.New("peer is on the deny list")
	var mu sync.Mutex
	var seen []hooks.ConnectAttempt
	remove := reg.OnBeforeConnect(func(_ context.Context, a hooks.ConnectAttempt) error {
		mu.Lock()
		seen = append(seen, a)
		mu.Unlock()
		if a.Peer == bad {
			return reason
		}
		return nil
	})
	addr := quic(t, "192.0.2.1")

	err := g.CheckAddrDial(bad, addr)
	require.ErrorIs(t, err, hooks.ErrRejected)
	require.ErrorIs(t, err, reason, "the hook's reason is carried")
	require.NotErrorIs(t, err, gater.ErrAddrBlocked)
	var rejected *hooks.RejectedError
	require.ErrorAs(t, err, &rejected)
	require.Equal(t, hooks.StageBeforeConnect, rejected.Stage)
	require.False(t, g.InterceptAddrDial(bad, addr))
	require.NoError(t, g.CheckAddrDial(good, addr))
	require.True(t, g.InterceptAddrDial(good, addr))
	require.NoError(t, g.CheckPeerDial(bad), "BeforeConnect runs per address, not at the peer check")

	mu.Lock()
	require.NotEmpty(t, seen)
	require.Equal(t, network.DirOutbound, seen[0].Direction)
	require.Equal(t, bad, seen[0].Peer)
	require.True(t, addr.Equal(seen[0].RemoteAddr))
	n := len(seen)
	mu.Unlock()

	// A blocked address is refused before the hooks run.
	require.NoError(t, g.BlockAddr(ip(t, "192.0.2.9")))
	require.ErrorIs(t, g.CheckAddrDial(good, quic(t, "192.0.2.9")), gater.ErrAddrBlocked)
	mu.Lock()
	require.Len(t, seen, n, "the hook did not run for a blocked address")
	mu.Unlock()

	remove()
	require.NoError(t, g.CheckAddrDial(bad, addr))
}

// The inbound BeforeConnect hooks run in AdmitConn (stage 1, off go-libp2p's
// accept loop), for inbound connections only, with the addresses and no
// peer; a rejection is AdmitConn's ReasonHookRejected. InterceptAccept,
// in the accept loop, checks the address rules only and runs no hook.
func TestBeforeConnectInbound(t *testing.T) {
	reg := newRegistry(t)
	g := newGater(t, nil, reg)
	var mu sync.Mutex
	var seen []hooks.ConnectAttempt
	reg.OnBeforeConnect(func(_ context.Context, a hooks.ConnectAttempt) error {
		mu.Lock()
		seen = append(seen, a)
		mu.Unlock()
		if strings.HasPrefix(a.RemoteAddr.String(), "/ip4/198.51.100.") {
			return errors.New("documentation range")
		}
		return nil
	})
	remote, refused := quic(t, "192.0.2.1"), quic(t, "198.51.100.7")
	require.True(t, g.InterceptAccept(inbound(remote)))
	require.True(t, g.InterceptAccept(inbound(refused)), "InterceptAccept runs no hook")
	mu.Lock()
	require.Empty(t, seen, "a hook ran in the accept loop")
	mu.Unlock()

	p := testPeer(t, 3)
	require.NoError(t, g.AdmitConn(t.Context(), newConn(p, network.DirInbound, remote)))
	err := g.AdmitConn(t.Context(), newConn(p, network.DirInbound, refused))
	requireRefused(t, err, p, core.ReasonHookRejected, hooks.ErrRejected)
	require.Contains(t, err.Error(), "documentation range")
	require.NoError(t, g.AdmitConn(t.Context(), newConn(p, network.DirOutbound, refused)), "outbound connections ran their BeforeConnect at the dial")

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, seen, 2)
	require.Equal(t, network.DirInbound, seen[0].Direction)
	require.Empty(t, seen[0].Peer, "an inbound attempt carries the addresses, not the peer")
	require.True(t, remote.Equal(seen[0].RemoteAddr))
	require.True(t, localAddr.Equal(seen[0].LocalAddr))
}

// The AfterHandshake hooks run in AdmitConn, both directions, with the
// connection's addresses, proven key and ID; a rejection is AdmitConn's
// error and carries the hook's reason; InterceptUpgraded runs them too;
// InterceptSecured does not; rules refuse before the hooks run; the
// BeforeConnect hooks run at admission for inbound connections only.
func TestAfterHandshake(t *testing.T) {
	reg := newRegistry(t)
	g := newGater(t, nil, reg)
	badKey := testKey(t, 1)
	bad, good := testPeer(t, 1), testPeer(t, 2)
	reason := errors.New("not in the allow list")
	var seen handshakes
	remove := reg.OnAfterHandshake(func(_ context.Context, h hooks.Handshake) error {
		seen.add(h)
		if h.Peer == bad {
			return reason
		}
		return nil
	})
	var beforeCalls atomic.Int32
	reg.OnBeforeConnect(func(context.Context, hooks.ConnectAttempt) error { beforeCalls.Add(1); return nil })
	remote := quic(t, "192.0.2.1")

	t.Run("a rejection is AdmitConn's error, both directions", func(t *testing.T) {
		for _, dir := range directions {
			c := keyedConn{FakeConn: newConn(bad, dir, remote), key: badKey.GetPublic()}
			err := g.AdmitConn(t.Context(), c)
			refused := requireRefused(t, err, bad, core.ReasonHookRejected, hooks.ErrRejected)
			require.ErrorIs(t, err, reason, "the hook's reason is carried")
			var rejected *hooks.RejectedError
			require.ErrorAs(t, err, &rejected)
			require.Same(t, rejected, refused.Err)
			require.Equal(t, hooks.StageAfterHandshake, rejected.Stage)
			require.Equal(t, 0, rejected.Hook)
			require.False(t, c.IsClosed(), "the swarm closes a refused connection, not the gater")

			h := seen.last(t)
			require.Equal(t, dir, h.Direction)
			require.Equal(t, bad, h.Peer)
			require.True(t, badKey.GetPublic().Equals(h.RemotePublicKey), "the proven key reaches the hook")
			require.Equal(t, c.ID(), h.ConnID)
			require.True(t, remote.Equal(h.RemoteAddr))
			require.True(t, localAddr.Equal(h.LocalAddr))

			n := seen.len()
			ok, _ := g.InterceptUpgraded(c)
			require.False(t, ok, "InterceptUpgraded runs the hooks (%s)", dir)
			require.Equal(t, n+1, seen.len())
			require.Equal(t, c.ID(), seen.last(t).ConnID)
		}
	})
	t.Run("accepted", func(t *testing.T) {
		for _, dir := range directions {
			c := newConn(good, dir, remote)
			require.NoError(t, g.AdmitConn(t.Context(), c))
			h := seen.last(t)
			require.Equal(t, good, h.Peer)
			require.Equal(t, dir, h.Direction)
			require.Nil(t, h.RemotePublicKey, "a FakeConn has no key")
			ok, _ := g.InterceptUpgraded(c)
			require.True(t, ok)
		}
	})
	t.Run("InterceptSecured runs no hook", func(t *testing.T) {
		n := seen.len()
		for _, dir := range directions {
			require.True(t, g.InterceptSecured(dir, bad, inbound(remote)))
		}
		require.Equal(t, n, seen.len())
	})
	t.Run("a blocked peer is refused before the hooks", func(t *testing.T) {
		p := testPeer(t, 9)
		require.NoError(t, g.BlockPeer(p))
		n := seen.len()
		for _, dir := range directions {
			err := g.AdmitConn(t.Context(), newConn(p, dir, remote))
			requireRefused(t, err, p, core.ReasonBlocked, gater.ErrPeerBlocked)
			require.NotErrorIs(t, err, hooks.ErrRejected)
		}
		require.Equal(t, n, seen.len())
	})
	t.Run("a blocked address is refused before the hooks", func(t *testing.T) {
		require.NoError(t, g.BlockAddr(ip(t, "192.0.2.99")))
		n := seen.len()
		for _, dir := range directions {
			err := g.AdmitConn(t.Context(), newConn(good, dir, quic(t, "192.0.2.99")))
			requireRefused(t, err, good, core.ReasonBlocked, gater.ErrAddrBlocked)
			require.NotErrorIs(t, err, hooks.ErrRejected)
		}
		require.Equal(t, n, seen.len())
	})
	t.Run("BeforeConnect hooks run at admission for inbound connections only", func(t *testing.T) {
		n := beforeCalls.Load()
		require.NoError(t, g.AdmitConn(t.Context(), newConn(good, network.DirOutbound, remote)))
		require.Equal(t, n, beforeCalls.Load(), "outbound: BeforeConnect ran at the dial already")
		require.NoError(t, g.AdmitConn(t.Context(), newConn(good, network.DirInbound, remote)))
		require.Equal(t, n+1, beforeCalls.Load())
	})
	t.Run("removed", func(t *testing.T) {
		remove()
		n := seen.len()
		for _, dir := range directions {
			require.NoError(t, g.AdmitConn(t.Context(), newConn(bad, dir, remote)))
		}
		require.Equal(t, n, seen.len())
	})
}

// The hook's Handshake.ConnID is the ID of the connection AdmitConn is given
// (a testkit.FakeConn, as the swarm's own connections: the production path),
// never empty, one per connection even for the same peer and addresses; the
// same through InterceptUpgraded.
func TestAfterHandshakeConnID(t *testing.T) {
	reg := newRegistry(t)
	g := newGater(t, nil, reg)
	var seen handshakes
	reg.OnAfterHandshake(func(_ context.Context, h hooks.Handshake) error { seen.add(h); return nil })
	p, remote := testPeer(t, 1), quic(t, "192.0.2.1")
	ids := make(map[string]bool)
	for _, dir := range directions {
		for range 2 {
			// Same peer, same addresses: only the ID tells them apart.
			c := newConn(p, dir, remote)
			require.NotEmpty(t, c.ID())
			require.NoError(t, g.AdmitConn(t.Context(), c))
			h := seen.last(t)
			require.NotEmpty(t, h.ConnID)
			require.Equal(t, c.ID(), h.ConnID)
			ids[h.ConnID] = true

			ok, _ := g.InterceptUpgraded(c)
			require.True(t, ok)
			require.Equal(t, c.ID(), seen.last(t).ConnID)
		}
	}
	require.Len(t, ids, 4, "each connection is seen with its own ID")
}

// Regression test for the per-peer rejection side channel (TakeRejection,
// gone), which could hand one dial of a peer the reason another dial of the
// same peer was rejected for: an outbound AfterHandshake rejection is the
// rejected connection's own AdmitConn error. Two AdmitConn calls for two
// outbound connections of the same peer are inside the hook at the same
// time; the hook rejects one of them (by ConnID, or by remote address), or
// both for different reasons; the two are then decided at once, or one
// after the other with the second still in flight when the first returns.
// Each call gets its own outcome, never the other's reason.
func TestConcurrentAdmitConnsGetTheirOwnOutcome(t *testing.T) {
	const rounds = 10
	reasonA, reasonB := errors.New("reason A"), errors.New("reason B")
	type verdicts struct{ a, b error }
	for _, tc := range []struct {
		name string
		// decide is the hook's verdict on h; a and b are the connections.
		decide func(h hooks.Handshake, a, b *testkit.FakeConn) error
		// wantB is b's rejection reason; nil: b is admitted.
		wantB error
	}{
		{
			name: "one rejected by ConnID",
			decide: func(h hooks.Handshake, a, _ *testkit.FakeConn) error {
				if h.ConnID == a.ID() {
					return reasonA
				}
				return nil
			},
		},
		{
			name: "one rejected by remote address",
			decide: func(h hooks.Handshake, a, _ *testkit.FakeConn) error {
				if h.RemoteAddr.Equal(a.RemoteMultiaddr()) {
					return reasonA
				}
				return nil
			},
		},
		{
			name: "both rejected, each for its own reason",
			decide: func(h hooks.Handshake, a, b *testkit.FakeConn) error {
				switch h.ConnID {
				case a.ID():
					return reasonA
				case b.ID():
					return reasonB
				}
				return fmt.Errorf("unknown connection %q", h.ConnID)
			},
			wantB: reasonB,
		},
	} {
		for _, order := range []string{"together", "a first", "b first"} {
			t.Run(tc.name+"/"+order, func(t *testing.T) {
				p := testPeer(t, 1)
				for range rounds {
					reg := newRegistry(t)
					g := newGater(t, nil, reg)
					a := newConn(p, network.DirOutbound, quic(t, "192.0.2.1"))
					b := newConn(p, network.DirOutbound, quic(t, "192.0.2.2"))
					// The hook waits until both calls are in it, then
					// until its connection's turn.
					var arrived atomic.Int32
					bothIn := make(chan struct{})
					turn := map[string]chan struct{}{a.ID(): make(chan struct{}), b.ID(): make(chan struct{})}
					reg.OnAfterHandshake(func(ctx context.Context, h hooks.Handshake) error {
						if arrived.Add(1) == 2 {
							close(bothIn)
						}
						for _, ch := range []chan struct{}{bothIn, turn[h.ConnID]} {
							select {
							case <-ch:
							case <-ctx.Done():
								return fmt.Errorf("the two AdmitConn calls did not overlap: %w", ctx.Err())
							}
						}
						return tc.decide(h, a, b)
					})

					doneA, doneB := make(chan error, 1), make(chan error, 1)
					go func() { doneA <- g.AdmitConn(t.Context(), a) }()
					go func() { doneB <- g.AdmitConn(t.Context(), b) }()
					var got verdicts
					switch order {
					case "together":
						close(turn[a.ID()])
						close(turn[b.ID()])
						got = verdicts{<-doneA, <-doneB}
					case "a first":
						close(turn[a.ID()])
						got.a = <-doneA
						close(turn[b.ID()])
						got.b = <-doneB
					case "b first":
						close(turn[b.ID()])
						got.b = <-doneB
						close(turn[a.ID()])
						got.a = <-doneA
					}

					requireRefused(t, got.a, p, core.ReasonHookRejected, hooks.ErrRejected)
					require.ErrorIs(t, got.a, reasonA)
					require.NotErrorIs(t, got.a, reasonB, "a was handed b's reason")
					if tc.wantB == nil {
						require.NoError(t, got.b, "b was refused: a's rejection reached it?")
					} else {
						requireRefused(t, got.b, p, core.ReasonHookRejected, hooks.ErrRejected)
						require.ErrorIs(t, got.b, tc.wantB)
						require.NotErrorIs(t, got.b, reasonA, "b was handed a's reason")
					}
				}
			})
		}
	}
}

// A rejection leaves nothing behind: the next connection and the next dial
// of the same peer are decided on their own.
func TestRejectionLeavesNothingBehind(t *testing.T) {
	reg := newRegistry(t)
	g := newGater(t, nil, reg)
	p := testPeer(t, 1)
	rejectedAddr, otherAddr := quic(t, "192.0.2.1"), quic(t, "192.0.2.2")
	reason := errors.New("not from there")
	reg.OnAfterHandshake(func(_ context.Context, h hooks.Handshake) error {
		if h.RemoteAddr.Equal(rejectedAddr) {
			return reason
		}
		return nil
	})
	err := g.AdmitConn(t.Context(), newConn(p, network.DirOutbound, rejectedAddr))
	requireRefused(t, err, p, core.ReasonHookRejected, reason)
	require.NoError(t, g.CheckPeerDial(p))
	require.NoError(t, g.CheckAddrDial(p, otherAddr))
	require.NoError(t, g.AdmitConn(t.Context(), newConn(p, network.DirOutbound, otherAddr)))
	require.NoError(t, g.AdmitConn(t.Context(), newConn(p, network.DirInbound, otherAddr)))
}

// A panicking hook is recovered and rejects: BeforeConnect at the dial and
// at admission (inbound), AfterHandshake in AdmitConn (both directions) and
// InterceptUpgraded.
func TestHookPanicRejects(t *testing.T) {
	reg := newRegistry(t)
	g := newGater(t, nil, reg)
	p := testPeer(t, 1)
	a := quic(t, "192.0.2.1")
	reg.OnBeforeConnect(func(context.Context, hooks.ConnectAttempt) error { panic("boom before") })
	reg.OnAfterHandshake(func(context.Context, hooks.Handshake) error { panic("boom after") })

	err := g.CheckAddrDial(p, a)
	require.ErrorIs(t, err, hooks.ErrRejected)
	require.Contains(t, err.Error(), "boom before")
	require.True(t, g.InterceptAccept(inbound(a)), "InterceptAccept runs no hook")
	err = g.AdmitConn(t.Context(), newConn(p, network.DirInbound, a))
	requireRefused(t, err, p, core.ReasonHookRejected, hooks.ErrRejected)
	require.Contains(t, err.Error(), "boom before", "the inbound BeforeConnect hook runs first at admission")

	for _, dir := range directions {
		c := newConn(p, dir, a)
		err := g.AdmitConn(t.Context(), c)
		requireRefused(t, err, p, core.ReasonHookRejected, hooks.ErrRejected)
		if dir == network.DirOutbound {
			require.Contains(t, err.Error(), "boom after")
		}
		ok, _ := g.InterceptUpgraded(c)
		require.False(t, ok)
	}
}

// A hook that does not decide within the registry's timeout rejects:
// AdmitConn returns at the timeout, ReasonHookRejected, wrapping
// context.DeadlineExceeded; InterceptUpgraded likewise. (synctest: the
// timeout passes on the bubble's clock.)
func TestHookTimeoutRejects(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := newRegistry(t) // hooks.DefaultTimeout
		g := newGater(t, nil, reg)
		p := testPeer(t, 1)
		reg.OnAfterHandshake(func(ctx context.Context, _ hooks.Handshake) error {
			<-ctx.Done()
			return ctx.Err()
		})
		for _, dir := range directions {
			c := newConn(p, dir, quic(t, "192.0.2.1"))
			start := time.Now()
			err := g.AdmitConn(t.Context(), c)
			require.Equal(t, reg.Timeout(), time.Since(start), "AdmitConn returned at the registry's timeout")
			requireRefused(t, err, p, core.ReasonHookRejected, hooks.ErrRejected)
			require.ErrorIs(t, err, context.DeadlineExceeded)

			start = time.Now()
			ok, _ := g.InterceptUpgraded(c)
			require.False(t, ok)
			require.Equal(t, reg.Timeout(), time.Since(start))
		}
	})
}

// AdmitConn honours its context: a hook waiting on its context returns when
// the caller's context is cancelled or its deadline passes, long before the
// registry's timeout, and the connection is rejected with the context's
// error. (synctest: times are the bubble's, exact.)
func TestAdmitConnHonoursContext(t *testing.T) {
	const after = time.Second
	for _, tc := range []struct {
		name string
		ctx  func(parent context.Context) (context.Context, context.CancelFunc)
		want error
	}{
		{
			name: "cancelled",
			ctx: func(parent context.Context) (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(parent)
				stop := time.AfterFunc(after, cancel)
				return ctx, func() { stop.Stop(); cancel() }
			},
			want: context.Canceled,
		},
		{
			name: "deadline",
			ctx: func(parent context.Context) (context.Context, context.CancelFunc) {
				return context.WithTimeout(parent, after)
			},
			want: context.DeadlineExceeded,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				reg, err := hooks.NewRegistry(time.Hour)
				require.NoError(t, err)
				g := newGater(t, nil, reg)
				p := testPeer(t, 1)
				var started atomic.Int32
				reg.OnAfterHandshake(func(ctx context.Context, _ hooks.Handshake) error {
					started.Add(1)
					<-ctx.Done()
					return ctx.Err()
				})
				for i, dir := range directions {
					ctx, cancel := tc.ctx(t.Context())
					start := time.Now()
					err := g.AdmitConn(ctx, newConn(p, dir, quic(t, "192.0.2.1")))
					elapsed := time.Since(start)
					cancel()
					require.Equal(t, int32(i+1), started.Load(), "the hook ran")
					require.Equal(t, after, elapsed, "AdmitConn returned with its context, not at the registry's timeout (%s)", reg.Timeout())
					requireRefused(t, err, p, core.ReasonHookRejected, hooks.ErrRejected)
					require.ErrorIs(t, err, tc.want)
				}
			})
		})
	}
}
