package realm_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/realm"
)

// TestRealmStreamsFromStrangersHoldNoScope proves issue #11 item 2: peers
// without the key that open realm streams and never send their header
// cannot hold the realm stream protocol's scope, which every realm's
// application streams, member exchanges and goodbyes share. Such streams
// are reset at once — the victim does not wait 5 s for their header — so
// eighteen fresh peers × 75 stalled streams (rcmgr's per-peer limit for
// one protocol) leave a member's echo 10 of 10 (before: 0 of 10 while the
// streams stalled). p50 and p99 are logged next to the quiet figures.
func TestRealmStreamsFromStrangersHoldNoScope(t *testing.T) {
	const (
		attackers = 18
		streams   = 75
		echoes    = 10
	)
	v, b := newNode(t), newNode(t)
	rv := join(t, v, "scoped", realm.PSK(testPSK), realm.StreamHandler("/echo", testnode.Echo))
	rb := join(t, b, "scoped", realm.PSK(testPSK), realm.Peers(v.AddrInfo()))
	waitMembers(t, rv, 1)
	waitMembers(t, rb, 1)
	measure := func(phase string) []time.Duration {
		return testnode.EchoTimes(t, phase+": member", echoes, func(ctx context.Context) (network.Stream, error) {
			return rb.NewStream(ctx, v.ID(), "/echo")
		})
	}
	quiet := measure("quiet")
	before := v.RealmStats().StreamsRefused

	hosts := make([]host.Host, attackers)
	for i := range hosts {
		hosts[i] = atkNewHost(t)
		atkConnect(t, hosts[i], v)
	}
	resets := make(chan time.Duration, attackers*streams)
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Go(func() {
			for range streams {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				s, err := h.NewStream(ctx, v.ID(), realm.StreamProtocol) // negotiated, then silent
				cancel()
				if err != nil {
					resets <- 0 // refused at once
					continue
				}
				start := time.Now()
				_ = s.SetReadDeadline(time.Now().Add(3 * time.Second))
				go func() {
					_, err := s.Read(make([]byte, 1))
					var ne net.Error
					if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
						resets <- time.Since(start)
					}
					_ = s.Reset()
				}()
			}
		})
	}
	wg.Wait()
	flooded := measure("flooded")
	// Every stranger's stream ends in a reset — by the realm handler
	// before its header, or by the resource manager's share for untrusted
	// peers — well before the 3 s read deadline, and none waited for its
	// header (5 s).
	var slowest time.Duration
	for range attackers * streams {
		select {
		case d := <-resets:
			slowest = max(slowest, d)
		case <-time.After(5 * time.Second):
			t.Fatalf("a stranger's realm stream was not reset (its read timed out)")
		}
	}
	t.Logf("%d strangers × %d silent realm streams: member's echo p50 %s p99 %s (quiet p50 %s p99 %s); all reset, the slowest after %s; %d refused by the realm handler",
		attackers, streams, flooded[echoes/2], flooded[echoes-1], quiet[echoes/2], quiet[echoes-1], slowest, v.RealmStats().StreamsRefused-before)
	require.Less(t, slowest, 2*time.Second, "a stranger's realm stream waited for its header")
	require.Positive(t, v.RealmStats().StreamsRefused-before, "no stranger's stream reached the realm handler")
}
