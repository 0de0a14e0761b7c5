package node_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
	"github.com/realmnet/realmnet/resource"
)

// TestResourceAccountingBalancesAfterChurn: 1,000 connections and 10,000
// streams (plain and realm streams, from ten clients at once) come and go;
// then rcmgr's system scope and every peer scope, and the realm's scope, are
// back to exactly zero on every node, and the goroutines to the count they
// had before the churn.
func TestResourceAccountingBalancesAfterChurn(t *testing.T) {
	const (
		clients         = 10
		connsPerClient  = 100
		streamsPerConn  = 10
		realmStreamEach = 2 // of the streams of a connection, realm streams
	)
	psk := []byte("churn-test-pre-shared-key")
	server := testnode.New(t)
	server.SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
	var nodes []*node.Node
	for range clients {
		nodes = append(nodes, testnode.New(t, node.Multipath(multipath.Config{DesiredPaths: 1})))
	}
	all := append([]*node.Node{server}, nodes...)
	// closeAll closes every connection until none is left: realms redial
	// members that lose their last connection, and may race the closes.
	closeAll := func() {
		for _, n := range all {
			require.Eventually(t, func() bool {
				for _, p := range n.Host().Network().Peers() {
					_ = n.Host().Network().ClosePeer(p)
				}
				return len(n.Host().Network().Conns()) == 0
			}, 10*time.Second, 5*time.Millisecond)
		}
	}
	startGoroutines := runtime.NumGoroutine()
	running := goleak.IgnoreCurrent() // the nodes' own goroutines
	admittedBefore := server.Network().AdmissionStats().Admitted

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	serverRealm, err := server.JoinRealm(ctx, "churn", realm.PSK(psk), realm.StreamHandler(testnode.EchoProtocol, testnode.Echo))
	require.NoError(t, err)
	var realms []*realm.Realm
	for _, c := range nodes {
		r, err := c.JoinRealm(ctx, "churn", realm.PSK(psk), realm.Peers(server.AddrInfo()))
		require.NoError(t, err)
		realms = append(realms, r)
	}
	require.NoError(t, serverRealm.WaitMembers(ctx, clients))

	var wg sync.WaitGroup
	var streams atomic.Int64
	for i, c := range nodes {
		wg.Go(func() {
			for round := range connsPerClient {
				if err := c.Connect(ctx, server.AddrInfo()); err != nil {
					t.Errorf("client %d round %d: connect: %v", i, round, err)
					return
				}
				for k := range streamsPerConn {
					var s network.Stream
					var err error
					if k < realmStreamEach {
						s, err = realms[i].NewStream(ctx, server.ID(), testnode.EchoProtocol)
					} else {
						s, err = c.NewStream(ctx, server.ID(), testnode.EchoProtocol)
					}
					if err == nil {
						err = testnode.EchoErr(s, 64)
					}
					if err != nil {
						t.Errorf("client %d round %d stream %d: %v", i, round, k, err)
						return
					}
					streams.Add(1)
				}
				if err := c.Host().Network().ClosePeer(server.ID()); err != nil {
					t.Errorf("client %d round %d: close: %v", i, round, err)
					return
				}
			}
		})
	}
	wg.Wait()
	require.False(t, t.Failed())
	require.EqualValues(t, clients*connsPerClient*streamsPerConn, streams.Load())
	churned := server.Network().AdmissionStats().Admitted - admittedBefore
	require.GreaterOrEqual(t, churned, uint64(clients*connsPerClient), "connections churned")

	// Members are charged to the realm scope until they leave.
	for _, r := range append(realms, serverRealm) {
		require.NoError(t, r.Leave(ctx))
	}
	closeAll()
	for i, n := range all {
		require.Eventually(t, func() bool { return scopesAtZero(n) == "" }, 10*time.Second, 10*time.Millisecond,
			"%s: %s", n.ID(), func() string { return scopesAtZero(n) })
		id := serverRealm.ID()
		if i > 0 {
			id = realms[i-1].ID()
		}
		st, _ := n.ResourceManager().ViewRealm(id)
		require.Equal(t, resource.RealmStat{Limits: st.Limits}, st, "realm scope of %s not back to zero", n.ID())
	}
	// Every goroutine started by the churn has ended.
	require.NoError(t, goleak.Find(append(testkit.LeakOptions(), running)...))
	t.Logf("%d connections and %d streams churned; scopes at zero, no goroutine left (%d before, %d after)",
		churned, streams.Load(), startGoroutines, runtime.NumGoroutine())
}

// scopesAtZero returns "" when n's rcmgr system scope and every peer scope
// hold no connection and no stream, else what is left.
func scopesAtZero(n *node.Node) string {
	st := n.ResourceManager().Stat().Rcmgr
	sys := st.System
	if sys.NumConnsInbound+sys.NumConnsOutbound+sys.NumStreamsInbound+sys.NumStreamsOutbound != 0 {
		return fmt.Sprintf("system scope %+v", sys)
	}
	for p, ps := range st.Peers {
		if ps.NumConnsInbound+ps.NumConnsOutbound+ps.NumStreamsInbound+ps.NumStreamsOutbound != 0 {
			return fmt.Sprintf("peer %s scope %+v", p, ps)
		}
	}
	return ""
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
	victim := testnode.New(t, node.ResourceLimits(cfg))
	attacker, member := testnode.New(t), testnode.New(t)

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
	victim.SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
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
	s, err := member.NewStream(ctx, victim.ID(), testnode.EchoProtocol)
	require.NoError(t, err)
	testnode.EchoOver(t, s, 1024)
	for _, s := range memberStreams {
		_ = s.Reset()
	}
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// TestMetricsExportRealmAndRcmgrUsage: with node.Metrics, realm usage and
// rcmgr's scopes are on the registry, labelled by node; two nodes can share
// it.
func TestMetricsExportRealmAndRcmgrUsage(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := testnode.New(t, node.Metrics(reg))
	b := testnode.New(t, node.Metrics(reg))
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
			require.Len(t, f.GetMetric(), 3, "members, streams_inbound, streams_outbound")
			values := map[string]float64{}
			for _, m := range f.GetMetric() {
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				require.Equal(t, a.ID().String(), labels["node"])
				require.Equal(t, "chat", labels["realm"])
				values[labels["resource"]] = m.GetGauge().GetValue()
			}
			require.Equal(t, map[string]float64{"members": 0, "streams_inbound": 0, "streams_outbound": 1}, values)
		}
		if f.GetName() == "libp2p_rcmgr_connections" {
			nodes := map[string]bool{}
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "node" {
						nodes[l.GetValue()] = true
					}
				}
			}
			require.Equal(t, map[string]bool{a.ID().String(): true, b.ID().String(): true}, nodes, "each node's rcmgr series, labelled")
		}
	}
	require.True(t, names["realmnet_realm_usage"])
	require.True(t, names["libp2p_rcmgr_connections"], "rcmgr's metrics are exported: %v", names)
}
