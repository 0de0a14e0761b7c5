package node_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/node"
)

// TestSlowHooksDoNotBlockOtherPeers proves issue #11 item 3: an inbound
// BeforeConnect hook and an AfterHandshake hook that take 500 ms each for
// unknown peers (within the 2 s HookTimeout), under a dial flood from fresh
// peer IDs, do not hold up a known peer's connect. Both hooks run in the
// swarm's admission pipeline, one connection at a time per peer but
// concurrently across peers — not inside go-libp2p's QUIC accept loop,
// where each slow call delayed every inbound connection (before: the known
// peer's connect failed 3 of 3). The known
// peer connects 10 times without the flood and 10 times with it; every
// connect succeeds and the p99 of both is logged.
func TestSlowHooksDoNotBlockOtherPeers(t *testing.T) {
	const (
		attempts  = 10
		attackers = 24
		slow      = 500 * time.Millisecond
	)
	// The victim listens on 127.0.0.1 (for everyone) and 127.0.0.3 (for
	// the friend): an inbound BeforeConnect hook sees addresses, not peer
	// IDs, so it trusts connections to the second address.
	// One path per peer: a second path would be dialed to the victim's
	// other address, through the slow hook.
	onePath := node.Multipath(multipath.Config{DesiredPaths: 1})
	friend := testnode.New(t, onePath)
	// slowCalls counts the hook calls in progress. (Not a WaitGroup: the
	// victim may still start a call for a connection in flight while the
	// test waits for the calls to end.)
	var slowCalls atomic.Int64
	victim := testnode.New(t, onePath, node.ListenAddrStrings(testkit.Loopback, "/ip4/127.0.0.3/udp/0/quic-v1"), node.BeforeConnect(func(ctx context.Context, a hooks.ConnectAttempt) error {
		if a.Direction != network.DirInbound || strings.HasPrefix(a.LocalAddr.String(), "/ip4/127.0.0.3/") {
			return nil
		}
		slowCalls.Add(1)
		defer slowCalls.Add(-1)
		select {
		case <-time.After(slow):
			return nil // let the AfterHandshake hook decide
		case <-ctx.Done():
			return ctx.Err()
		}
	}), node.AfterHandshake(func(ctx context.Context, h hooks.Handshake) error {
		if h.Peer == friend.ID() {
			return nil
		}
		slowCalls.Add(1)
		defer slowCalls.Add(-1)
		select {
		case <-time.After(slow):
			return errors.New("unknown peer")
		case <-ctx.Done():
			return ctx.Err()
		}
	}))

	var friendsWay, everyonesWay peer.AddrInfo
	for _, a := range victim.Addrs() {
		if strings.HasPrefix(a.String(), "/ip4/127.0.0.3/") {
			friendsWay.Addrs = append(friendsWay.Addrs, a)
		} else {
			everyonesWay.Addrs = append(everyonesWay.Addrs, a)
		}
	}
	friendsWay.ID, everyonesWay.ID = victim.ID(), victim.ID()
	require.NotEmpty(t, friendsWay.Addrs)
	require.NotEmpty(t, everyonesWay.Addrs)
	connectTimes := func() []time.Duration {
		var out []time.Duration
		for i := range attempts {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			start := time.Now()
			// Only the friend's way: identify taught the friend the
			// victim's other address, which the dial would also try. Not
			// with a temporary TTL: identify's handling of the previous
			// connection's close, which the swarm notifies
			// asynchronously, ends by expiring every temporary address
			// of the peer — Connect's own among them, when it runs late
			// ("no addresses" under CI load).
			friend.Host().Peerstore().ClearAddrs(victim.ID())
			friend.Host().Peerstore().AddAddrs(victim.ID(), friendsWay.Addrs, time.Hour)
			err := friend.Connect(ctx, friendsWay)
			cancel()
			require.NoError(t, err, "friend's connect %d", i)
			out = append(out, time.Since(start))
			require.NoError(t, friend.Host().Network().ClosePeer(victim.ID()))
			require.Eventually(t, func() bool { return len(victim.Connections(friend.ID())) == 0 }, 5*time.Second, 5*time.Millisecond)
		}
		slices.Sort(out)
		return out
	}
	quiet := connectTimes()

	// The flood: fresh stock hosts dial the victim again and again until
	// the measurement ends; each is refused by the slow hook.
	hosts := make([]host.Host, attackers)
	for i := range hosts {
		hosts[i] = testkit.StockHost(t)
	}
	floodCtx, stopFlood := context.WithCancel(context.Background())
	var flood sync.WaitGroup
	for _, h := range hosts {
		flood.Go(func() {
			for floodCtx.Err() == nil {
				ctx, cancel := context.WithTimeout(floodCtx, 3*time.Second)
				_ = h.Connect(ctx, everyonesWay)
				cancel()
				_ = h.Network().ClosePeer(victim.ID())
			}
		})
	}
	// Wait until the hook is busy with attackers before measuring.
	require.Eventually(t, func() bool {
		return victim.Network().AdmissionStats().Refused[core.ReasonHookRejected] > 0
	}, 10*time.Second, 10*time.Millisecond, "the flood never reached the hook: %+v", victim.Network().AdmissionStats())
	flooded := connectTimes()
	stopFlood()
	flood.Wait()
	require.Eventually(t, func() bool { return slowCalls.Load() == 0 }, 10*time.Second, 5*time.Millisecond,
		"hook calls still running after the flood")
	t.Logf("friend's connect, %d attempts: without the flood p50 %s p99 %s; with %d attackers and a %s hook p50 %s p99 %s",
		attempts, quiet[attempts/2], quiet[attempts-1], attackers, slow, flooded[attempts/2], flooded[attempts-1])
	require.Less(t, flooded[attempts-1], slow*4, "the friend waited for the attackers' hooks")
}
