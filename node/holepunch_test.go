package node_test

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/node"
)

// TestUpgradeEventsOnLoopback: B reaches private A through a relay, then
// gets a direct connection (on loopback no hole punch is needed, nor does
// DCUtR run: no public address); both ends emit EvtUpgraded with the time
// from the relayed connection, A counts the upgrade, B's multipath selects
// the direct path at once (EvtPathSelected reason upgrade) and, when it
// closes, hands over to the relayed path (failover_to_relay).
func TestUpgradeEventsOnLoopback(t *testing.T) {
	r := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.3/udp/0/quic-v1"), node.RelayService(node.RelayServiceConfig{}))
	a := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.2/udp/0/quic-v1"),
		node.Relays(r.AddrInfo()), node.ForceReachability(network.ReachabilityPrivate))
	cfg := multipath.DefaultConfig()
	cfg.DesiredPaths = 1 // no standby discovery: the test dials the direct path
	b := testnode.New(t, node.Multipath(cfg))
	upgradedA := testkit.Subscribe(t, a.Host().EventBus(), new(node.EvtUpgraded))
	upgradedB := testkit.Subscribe(t, b.Host().EventBus(), new(node.EvtUpgraded))
	selected := testkit.Subscribe(t, b.Host().EventBus(), new(multipath.EvtPathSelected))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	connectNodeThroughRelay(t, ctx, b, a.ID(), circuitAddrs(t, r))
	relayedAt := time.Now()
	var direct ma.Multiaddr
	for _, addr := range a.Addrs() {
		if !core.IsRelayAddr(addr) {
			direct = addr
		}
	}
	require.NotNil(t, direct)
	c, err := b.Network().DialPath(ctx, a.ID(), direct)
	require.NoError(t, err)
	require.False(t, c.Stat().Limited)

	for _, sub := range []struct {
		name string
		ch   <-chan any
	}{{"A", upgradedA.Out()}, {"B", upgradedB.Out()}} {
		select {
		case e := <-sub.ch:
			evt := e.(node.EvtUpgraded)
			require.Positive(t, evt.TimeToDirect, sub.name)
			require.Less(t, evt.TimeToDirect, time.Since(relayedAt)+time.Second, sub.name)
		case <-ctx.Done():
			t.Fatalf("%s: no EvtUpgraded", sub.name)
		}
	}
	st, ok := a.HolePunchStats(b.ID())
	require.True(t, ok)
	require.Equal(t, 1, st.Upgrades)
	require.Positive(t, st.TimeToDirect)

	waitReason := func(want core.SwitchReason) multipath.EvtPathSelected {
		t.Helper()
		for {
			select {
			case e := <-selected.Out():
				if evt := e.(multipath.EvtPathSelected); evt.Peer == a.ID() && evt.Reason == want {
					return evt
				}
			case <-ctx.Done():
				t.Fatalf("no EvtPathSelected with reason %s", want)
			}
		}
	}
	require.Equal(t, c.ID(), waitReason(core.SwitchUpgrade).New)
	require.NoError(t, c.Close())
	require.Equal(t, c.ID(), waitReason(core.SwitchFailoverToRelay).Old)
}

func TestHolePunchingOptionRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		cfg  node.HolePunchConfig
		want string
	}{
		{node.HolePunchConfig{RetryMin: -time.Second}, "RetryMin and RetryMax must be >= 0, got -1s and 0s"},
		{node.HolePunchConfig{RetryMin: time.Minute, RetryMax: time.Second}, "RetryMin 1m0s is above RetryMax 1s"},
	} {
		_, err := node.New(context.Background(), node.HolePunching(tc.cfg))
		require.ErrorContains(t, err, tc.want)
	}
}
