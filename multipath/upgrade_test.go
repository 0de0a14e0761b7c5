package multipath

import (
	"context"
	"testing"
	"time"

	"github.com/benbjohnson/clock"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/libp2p/go-libp2p/p2p/host/peerstore/pstoremem"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/testkit"
)

// nextSelected returns the next EvtPathSelected from sub.
func nextSelected(t *testing.T, sub event.Subscription) EvtPathSelected {
	t.Helper()
	select {
	case e := <-sub.Out():
		return e.(EvtPathSelected)
	case <-time.After(5 * time.Second):
		t.Fatal("no EvtPathSelected")
		return EvtPathSelected{}
	}
}

// pathOf returns the manager's path of c.
func pathOf(t *testing.T, m *Manager, p peer.ID, c network.Conn) *path {
	t.Helper()
	m.mu.RLock()
	defer m.mu.RUnlock()
	pa := m.peers[p].find(c)
	require.NotNil(t, pa)
	return pa
}

// TestUpgradeAndFailoverToRelay is the automatic upgrade's policy: a new
// direct path to a peer reached through a relay is selected at once, before
// its first heartbeat answer (EvtPathSelected reason upgrade); a degraded
// direct path hands over to the relayed one (failover_to_relay) and takes
// over again when it answers; the relayed path is kept, or closed once the
// direct path is confirmed, as Config.RelayedPaths says. The manager's
// clock is a mock that never moves, so no heartbeat interferes.
func TestUpgradeAndFailoverToRelay(t *testing.T) {
	for _, policy := range []RelayedPathsPolicy{RelayedPathsKeep, RelayedPathsClose} {
		t.Run(string(policy), func(t *testing.T) {
			bus := eventbus.NewBus()
			ps, err := pstoremem.NewPeerstore()
			require.NoError(t, err)
			t.Cleanup(func() { _ = ps.Close() })
			m, err := New(policyDialer{local: "local", ps: ps}, bus, Config{RelayedPaths: policy}, WithClock(clock.NewMock()))
			require.NoError(t, err)
			t.Cleanup(func() { _ = m.Close() })
			selected := testkit.Subscribe(t, bus, new(EvtPathSelected))
			ctx := context.Background()
			p := randomPeer(t)

			relayed := testkit.NewFakeConn("local", p, network.DirInbound)
			relayed.SetLimited(true)
			relayed.SetAddrs(ma.StringCast("/ip4/10.0.1.10/udp/4001/quic-v1"),
				ma.StringCast("/ip4/203.0.113.10/udp/4001/quic-v1/p2p/"+randomPeer(t).String()+"/p2p-circuit"))
			require.NoError(t, m.AdmitConn(ctx, relayed))
			m.Connected(nil, relayed)
			require.Equal(t, core.SwitchPathAdded, nextSelected(t, selected).Reason)
			m.answered(p, pathOf(t, m, p, relayed), 40*time.Millisecond)

			direct := testkit.NewFakeConn("local", p, network.DirOutbound)
			direct.SetAddrs(ma.StringCast("/ip4/10.0.1.10/udp/4001/quic-v1"), ma.StringCast("/ip4/203.0.113.102/udp/4001/quic-v1"))
			require.NoError(t, m.AdmitConn(ctx, direct))
			m.Connected(nil, direct)
			evt := nextSelected(t, selected)
			require.Equal(t, core.SwitchUpgrade, evt.Reason)
			require.Equal(t, relayed.ID(), evt.Old)
			require.Equal(t, direct.ID(), evt.New)
			require.Equal(t, core.PathValidating, stateOf(t, m, p, direct), "selected before its first heartbeat answer")
			sel, ok := m.Selected(p)
			require.True(t, ok)
			require.Equal(t, direct.ID(), sel.ConnID)
			require.Equal(t, direct, m.SelectPath(p, []network.Conn{relayed, direct}))

			directPath := pathOf(t, m, p, direct)
			m.degraded(p, directPath)
			evt = nextSelected(t, selected)
			require.Equal(t, core.SwitchFailoverToRelay, evt.Reason)
			require.Equal(t, relayed.ID(), evt.New)
			require.Equal(t, relayed, m.SelectPath(p, []network.Conn{relayed, direct}))

			for i := 1; i <= UpgradeConfirmations; i++ {
				m.answered(p, directPath, 2*time.Millisecond)
				if i == 1 {
					evt = nextSelected(t, selected)
					require.Equal(t, core.SwitchUpgrade, evt.Reason)
					require.Equal(t, direct.ID(), evt.New)
				}
				if i < UpgradeConfirmations {
					require.False(t, relayed.IsClosed(), "closed before the direct path was confirmed")
				}
			}
			if policy == RelayedPathsKeep {
				require.False(t, relayed.IsClosed(), "the relayed path is kept as a backup")
				return
			}
			require.True(t, relayed.IsClosed(), "the relayed path is closed once the direct one is confirmed")
			require.Equal(t, ErrorCodeRelayedPathReplaced, relayed.CloseCode())
		})
	}
}

func TestRelayedPathsPolicyConfig(t *testing.T) {
	c, err := Config{}.WithDefaults()
	require.NoError(t, err)
	require.Equal(t, RelayedPathsKeep, c.RelayedPaths)
	_, err = Config{RelayedPaths: "drop"}.WithDefaults()
	require.ErrorContains(t, err, `Config.RelayedPaths must be "keep" or "close", got "drop"`)
	for _, s := range []string{"keep", "close"} {
		got, err := ParseRelayedPathsPolicy(s)
		require.NoError(t, err)
		require.Equal(t, RelayedPathsPolicy(s), got)
	}
	_, err = ParseRelayedPathsPolicy("never")
	require.ErrorContains(t, err, `"never"`)
}
