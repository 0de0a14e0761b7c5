package node_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/resource"
)

// TestResourceAccountingBalancesAfterChurn: 100 connections and 1,000
// streams come and go; the resource manager's system scope ends where it
// started.
func TestResourceAccountingBalancesAfterChurn(t *testing.T) {
	a, b := newNode(t), newNode(t)
	b.SetStreamHandler(echoProtocol, echoHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	system := func(n *node.Node) (conns, streams int) {
		st := n.ResourceManager().Stat().Rcmgr.System
		return st.NumConnsInbound + st.NumConnsOutbound, st.NumStreamsInbound + st.NumStreamsOutbound
	}
	for i := range 100 {
		require.NoError(t, a.Connect(ctx, b.AddrInfo()))
		for range 10 {
			s, err := a.NewStream(ctx, b.ID(), echoProtocol)
			require.NoError(t, err)
			echoOver(t, s, 16)
		}
		require.NoError(t, a.Host().Network().ClosePeer(b.ID()), "round %d", i)
		require.Eventually(t, func() bool { return len(b.Host().Network().ConnsToPeer(a.ID())) == 0 },
			5*time.Second, 5*time.Millisecond)
	}
	for _, n := range []*node.Node{a, b} {
		require.Eventually(t, func() bool { c, s := system(n); return c == 0 && s == 0 }, 5*time.Second, 10*time.Millisecond,
			"system scope not back to zero")
	}
}

// TestAttackerHeldAtLimitsMemberServed: an attacker opens 10,000 inbound
// streams that its victim's handler would hold forever; the resource
// manager keeps the attacker at its per-peer limit, the realm scope keeps
// the realm at its limit, and a realm member is still served.
func TestAttackerHeldAtLimitsMemberServed(t *testing.T) {
	const (
		peerStreamLimit  = 32
		realmStreamLimit = 8
		attackStreams    = 10_000
		holdProtocol     = "/realmnet/test/hold/1.0.0"
	)
	cfg, err := resource.LoadConfig(strings.NewReader(`{
		"PeerDefault": {"StreamsInbound": 32, "Streams": 64},
		"Realms": {"Realm": {"members": {"StreamsInbound": 8}}}
	}`))
	require.NoError(t, err)
	victim := newNode(t, node.ResourceLimits(cfg))
	attacker, member := newNode(t), newNode(t)

	release := make(chan struct{})
	var held, maxHeld atomic.Int64
	var realmRefused atomic.Int64
	victim.SetStreamHandler(holdProtocol, func(s network.Stream) {
		if s.Conn().RemotePeer() == member.ID() {
			// A realm stream: charged to the realm's scope (the API the
			// realm package will call on dispatch).
			done, err := victim.ResourceManager().ReserveRealmStream("members", network.DirInbound)
			if err != nil {
				realmRefused.Add(1)
				_ = s.Reset()
				return
			}
			defer done()
		}
		n := held.Add(1)
		for {
			m := maxHeld.Load()
			if n <= m || maxHeld.CompareAndSwap(m, n) {
				break
			}
		}
		defer held.Add(-1)
		select {
		case <-release:
		case <-time.After(30 * time.Second):
		}
		_ = s.Reset()
	})
	victim.SetStreamHandler(echoProtocol, echoHandler)
	defer close(release)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	require.NoError(t, attacker.Connect(ctx, victim.AddrInfo()))
	require.NoError(t, member.Connect(ctx, victim.AddrInfo()))

	// The attack: 16 workers open streams as fast as they can.
	var opened, refused atomic.Int64
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 16 {
		wg.Go(func() {
			for next.Add(1) <= attackStreams {
				sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
				s, err := attacker.Host().NewStream(sctx, victim.ID(), holdProtocol)
				if err == nil {
					_, err = s.Write([]byte{1})
				}
				if err == nil {
					_ = s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
					var b [1]byte
					_, err = s.Read(b[:])
					if err != nil && !isTimeout(err) {
						refused.Add(1) // reset by the victim
					} else {
						opened.Add(1)
					}
					_ = s.Reset()
				}
				scancel()
			}
		})
	}
	wg.Wait()
	t.Logf("attack: %d streams accepted for a moment, %d refused; victim held at most %d", opened.Load(), refused.Load(), maxHeld.Load())
	require.LessOrEqual(t, maxHeld.Load(), int64(peerStreamLimit), "the attacker got past its per-peer stream limit")
	require.Positive(t, refused.Load(), "nothing was refused")

	// The member is still served, and the realm is held at its limit.
	var memberStreams []network.Stream
	for range realmStreamLimit + 4 {
		s, err := member.Host().NewStream(ctx, victim.ID(), holdProtocol)
		require.NoError(t, err)
		_, err = s.Write([]byte{1})
		require.NoError(t, err)
		memberStreams = append(memberStreams, s)
	}
	require.Eventually(t, func() bool { return realmRefused.Load() == 4 }, 10*time.Second, 10*time.Millisecond,
		"the realm scope must refuse exactly the streams above its limit (refused %d)", realmRefused.Load())
	st, _ := victim.ResourceManager().ViewRealm("members")
	require.Equal(t, realmStreamLimit, st.StreamsInbound)
	s, err := member.NewStream(ctx, victim.ID(), echoProtocol)
	require.NoError(t, err)
	echoOver(t, s, 1024)
	for _, s := range memberStreams {
		_ = s.Reset()
	}
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// TestMetricsExportRealmAndRcmgrUsage: with node.Metrics, realm usage and
// rcmgr's scopes are on the registry; two nodes can share it.
func TestMetricsExportRealmAndRcmgrUsage(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := newNode(t, node.Metrics(reg))
	b := newNode(t, node.Metrics(reg))
	release, err := a.ResourceManager().ReserveRealmStream("chat", network.DirOutbound)
	require.NoError(t, err)
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, a.Connect(ctx, b.AddrInfo()))
	families, err := reg.Gather()
	require.NoError(t, err)
	names := map[string]bool{}
	for _, f := range families {
		names[f.GetName()] = true
		if f.GetName() == "realmnet_realm_usage" {
			require.Len(t, f.GetMetric(), 1)
			m := f.GetMetric()[0]
			require.Equal(t, 1.0, m.GetGauge().GetValue())
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			require.Equal(t, map[string]string{"realm": "chat", "resource": "streams_outbound", "node": a.ID().String()}, labels)
		}
	}
	require.True(t, names["realmnet_realm_usage"])
	require.True(t, names["libp2p_rcmgr_connections"], "rcmgr's metrics are exported: %v", names)
}
