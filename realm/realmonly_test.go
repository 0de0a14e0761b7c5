package realm_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/benbjohnson/clock"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

// roStep is how far the realm-only tests move the victim's mock clock at a
// time: the policy's account starts when the victim announces a connection,
// a moment after the dialer's Connect returns, so time is moved in small
// steps and the connection checked in between.
const roStep = 10 * time.Millisecond

// roSession keeps h connected to v while moving mock forward by at most
// limit in roStep steps, and returns the time moved and whether v closed
// the connection meanwhile.
func roSession(t *testing.T, mock *clock.Mock, h host.Host, v *node.Node, limit time.Duration) (moved time.Duration, closed bool) {
	t.Helper()
	for moved < limit {
		mock.Add(roStep)
		moved += roStep
		if h.Network().Connectedness(v.ID()) != network.Connected {
			return moved, true
		}
	}
	return moved, false
}

// roReconnect closes h's connection to v, waits until v has seen it go, and
// connects again; the error is the new connection's.
func roReconnect(t *testing.T, h host.Host, v *node.Node) error {
	t.Helper()
	_ = h.Network().ClosePeer(v.ID())
	require.Eventually(t, func() bool { return v.Host().Network().Connectedness(h.ID()) != network.Connected },
		5*time.Second, 5*time.Millisecond, "v still lists h's closed connection")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return h.Connect(ctx, v.AddrInfo())
}

// TestRealmOnlyReconnectsDoNotResetAuthTimeout proves (issue #11, item 4)
// that a stock host which reconnects just before every AuthTimeout (0.9 ×
// AuthTimeout per connection, on the victim's mock clock) is cut off once
// its connected time reaches AuthTimeout in total, and its next connection
// is refused; while an honest member that authenticates, and reconnects
// just as often, is never closed.
func TestRealmOnlyReconnectsDoNotResetAuthTimeout(t *testing.T) {
	const authTimeout = time.Second
	mock := clock.NewMock()
	v := newNode(t, node.RealmOnly(), node.AuthTimeout(authTimeout), node.Clock(mock))
	rv := join(t, v, "ro", realm.PSK(testPSK))

	// The honest member: authenticates, then reconnects three times, each
	// connection 0.9 × AuthTimeout long on v's clock.
	m := newNode(t)
	rm := join(t, m, "ro", realm.PSK(testPSK), realm.Peers(v.AddrInfo()))
	waitMembers(t, rm, 1)
	waitMembers(t, rv, 1)
	// (The member's realm redials v at once when the connection closes, so
	// its reconnections are counted on v's side.)
	var mConns, hConns atomic.Int64
	h := atkNewHost(t)
	notifee := &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		switch c.RemotePeer() {
		case m.ID():
			mConns.Add(1)
		case h.ID():
			hConns.Add(1)
		}
	}}
	v.Host().Network().Notify(notifee)
	t.Cleanup(func() { v.Host().Network().StopNotify(notifee) })
	for i := range 3 {
		moved, closed := roSession(t, mock, m.Host(), v, authTimeout*9/10)
		require.False(t, closed, "the member was closed after %v of connection %d", moved, i)
		before := mConns.Load()
		_ = m.Host().Network().ClosePeer(v.ID())
		// Both ends must see the new connection before the next session
		// watches it from m's side: v can announce it a moment before m
		// has admitted its end.
		require.Eventually(t, func() bool {
			info, ok := rv.Member(m.ID())
			return mConns.Load() > before && ok && info.Connected &&
				m.Host().Network().Connectedness(v.ID()) == network.Connected
		}, 10*time.Second, 5*time.Millisecond, "the member did not reconnect and authenticate again (reconnection %d)", i)
	}

	// The stranger: same rhythm, never authenticates.
	atkConnect(t, h, v)
	var total time.Duration
	cut := false
	for session := 0; session < 6 && !cut; session++ {
		if session > 0 {
			require.NoError(t, roReconnect(t, h, v), "reconnection %d refused before the stranger was ever cut off (after %v)", session, total)
		}
		moved, closed := roSession(t, mock, h, v, authTimeout*9/10)
		total += moved
		cut = closed
		t.Logf("stranger connection %d: %v on v's clock, %v in total, cut off: %v", session, moved, total, closed)
	}
	require.True(t, cut, "the stranger reconnecting every 0.9 × AuthTimeout was never cut off (%v connected in total)", total)
	require.LessOrEqual(t, total, authTimeout+authTimeout/5, "cut off after %v connected in total, AuthTimeout %v", total, authTimeout)
	// Refused in admission stage 1: the stock host's dial may complete its
	// QUIC handshake, but v never announces the connection and closes it.
	announced := hConns.Load()
	if err := roReconnect(t, h, v); err == nil {
		require.Eventually(t, func() bool { return h.Network().Connectedness(v.ID()) != network.Connected },
			5*time.Second, 5*time.Millisecond, "the stranger's reconnection after the cut-off stays open")
	}
	require.Equal(t, announced, hConns.Load(), "v accepted the stranger again after the cut-off")
	require.Equal(t, uint64(1), v.RealmStats().PeersClosedRealmOnly)
	require.Equal(t, 1.0, metricValue(t, realm.ServiceOf(rv).Collector(), "realmnet_realm_peers_closed_total", "reason", "realm_only"))

	// The member is untouched.
	info, ok := rv.Member(m.ID())
	require.True(t, ok)
	require.True(t, info.Connected)
	require.Equal(t, network.Connected, v.Host().Network().Connectedness(m.ID()))
}
