package node_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
)

// TestSlowHooksDoNotBlockOtherPeers proves issue #11 item 3: an
// AfterHandshake hook that takes 500 ms for unknown peers (within the 2 s
// HookTimeout), under a dial flood from fresh peer IDs, does not hold up a
// known peer's connect. Hooks run in the swarm's admission pipeline, one
// connection at a time per peer but concurrently across peers — not inside
// go-libp2p's QUIC accept loop, where each slow call delayed every inbound
// connection (before: the known peer's connect failed 3 of 3). The known
// peer connects 10 times without the flood and 10 times with it; every
// connect succeeds and the p99 of both is logged.
func TestSlowHooksDoNotBlockOtherPeers(t *testing.T) {
	const (
		attempts  = 10
		attackers = 24
		slow      = 500 * time.Millisecond
	)
	friend := testnode.New(t)
	var slowCalls sync.WaitGroup
	victim := testnode.New(t, node.AfterHandshake(func(ctx context.Context, h hooks.Handshake) error {
		if h.Peer == friend.ID() {
			return nil
		}
		slowCalls.Add(1)
		defer slowCalls.Done()
		select {
		case <-time.After(slow):
			return errors.New("unknown peer")
		case <-ctx.Done():
			return ctx.Err()
		}
	}))

	connectTimes := func() []time.Duration {
		var out []time.Duration
		for i := range attempts {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			start := time.Now()
			err := friend.Connect(ctx, victim.AddrInfo())
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
				_ = h.Connect(ctx, peer.AddrInfo{ID: victim.ID(), Addrs: victim.Addrs()})
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
	slowCalls.Wait()
	t.Logf("friend's connect, %d attempts: without the flood p50 %s p99 %s; with %d attackers and a %s hook p50 %s p99 %s",
		attempts, quiet[attempts/2], quiet[attempts-1], attackers, slow, flooded[attempts/2], flooded[attempts-1])
	require.Less(t, flooded[attempts-1], slow*4, "the friend waited for the attackers' hooks")
}
