package node_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/realm"
)

// TestStalledStreamsDoNotStarveMembers proves issue #11 item 1: peers
// without the realm's key that open streams, send one byte of the
// multistream header and stall cannot fill rcmgr's transient scope for
// everyone (504 inbound streams on a 2-core machine, held until the host's
// 10 s negotiation timeout). Untrusted peers hold at most 32 streams in
// negotiation each and half the scope together (resource.SetTrusted), so a
// realm member's stream is still served. Two floods: three attackers with
// 200 stalled streams each (the observed attack), and twenty fresh
// attackers with 40 each (more than half the scope). During each, the
// member echoes over a realm stream 10 times: 10 of 10 succeed (before: 0
// of 10, reset by the resource manager); p50 and p99 are logged next to the
// quiet figures.
func TestStalledStreamsDoNotStarveMembers(t *testing.T) {
	const echoes = 10
	victim, member := testnode.New(t), testnode.New(t)
	psk := []byte("0123456789abcdef-transient-flood")
	_, err := victim.JoinRealm(context.Background(), "guarded", realm.PSK(psk), realm.StreamHandler("/echo", testnode.Echo))
	require.NoError(t, err)
	rm, err := member.JoinRealm(context.Background(), "guarded", realm.PSK(psk), realm.Peers(victim.AddrInfo()))
	require.NoError(t, err)
	ctx := testkit.Context(t, 2*time.Minute)
	require.NoError(t, rm.WaitMembers(ctx, 1))

	measure := func(phase string) []time.Duration {
		return testnode.EchoTimes(t, phase+": member", echoes, func(ctx context.Context) (network.Stream, error) {
			return rm.NewStream(ctx, victim.ID(), "/echo")
		})
	}
	quiet := measure("quiet")

	flood := func(attackers, streams int) {
		hosts := make([]host.Host, attackers)
		for i := range hosts {
			hosts[i] = testkit.StockHost(t)
			require.NoError(t, hosts[i].Connect(ctx, peer.AddrInfo{ID: victim.ID(), Addrs: victim.Addrs()}))
		}
		var wg sync.WaitGroup
		for _, h := range hosts {
			wg.Go(func() {
				for range streams {
					s, err := h.Network().NewStream(ctx, victim.ID())
					if err != nil {
						return
					}
					// One byte of "/multistream/1.0.0\n"'s length prefix,
					// then nothing: the victim waits for the rest.
					if _, err := s.Write([]byte{0x13}); err != nil {
						_ = s.Reset()
					}
				}
			})
		}
		wg.Wait()
		// The victim has seen the streams once it refused some or holds
		// the untrusted share; wait for either state, not for time.
		require.Eventually(t, func() bool {
			st := victim.ResourceManager().Stat()
			return victim.ResourceManager().NegotiationRefused() > 0 || st.Rcmgr.Transient.NumStreamsInbound >= attackers*min(streams, 32)
		}, 10*time.Second, 10*time.Millisecond, "the flood never reached the victim")
		flooded := measure("flooded")
		t.Logf("%d attackers × %d stalled streams: member's echo p50 %s p99 %s (quiet p50 %s p99 %s); %d untrusted streams refused; transient inbound %d",
			attackers, streams, flooded[echoes/2], flooded[echoes-1], quiet[echoes/2], quiet[echoes-1],
			victim.ResourceManager().NegotiationRefused(), victim.ResourceManager().Stat().Rcmgr.Transient.NumStreamsInbound)
		for _, h := range hosts {
			require.NoError(t, h.Close())
		}
	}
	flood(3, 200)
	flood(20, 40)
}
