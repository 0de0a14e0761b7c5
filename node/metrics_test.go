package node_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/node"
)

// metricValue is the value of the series of family name whose labels
// include want, summed over the matching series (a counter, a gauge, or a
// histogram's sample count); false when no series matches.
func metricValue(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	sum, found := 0.0, false
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if !hasLabels(m, want) {
				continue
			}
			found = true
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum, found
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	have := make(map[string]string, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// waitMetric waits until the series of name with labels want reaches at
// least min.
func waitMetric(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string, min float64) {
	t.Helper()
	require.Eventually(t, func() bool {
		v, ok := metricValue(t, reg, name, want)
		return ok && v >= min
	}, 10*time.Second, 10*time.Millisecond, "%s%v did not reach %v", name, want, min)
}

// TestMetricsMoveWithTheirActions: two nodes share one registry; each
// realmnet family moves, for the right node, under the action it measures,
// go-libp2p's families (swarm, identify, eventbus, rcmgr) are there, and
// the exposition passes the Prometheus linter.
func TestMetricsMoveWithTheirActions(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := multipath.Config{HeartbeatInterval: 200 * time.Millisecond, PathIdleTimeout: 600 * time.Millisecond, DesiredPaths: 1}
	// A grace period of 1 ms: the manual trim below may close the
	// connection at once.
	limits := connmgr.DefaultConfig()
	limits.GracePeriod = time.Millisecond
	// Dials of one attempt bounded by 500 ms: the failed dial below ends
	// (and backs the peer off) quickly.
	a := testnode.New(t, node.Metrics(reg), node.Multipath(cfg), node.ConnLimits(limits),
		node.AddrDialTimeout(500*time.Millisecond), node.Retry(node.RetryConfig{InitialDelay: time.Second, MaxDelay: time.Second, Multiplier: 1}))
	b := testnode.New(t, node.Metrics(reg), node.Multipath(cfg))
	ctx := testkit.Context(t, 20*time.Second)
	require.NoError(t, a.Connect(ctx, b.AddrInfo()))
	nodeA, nodeB := map[string]string{"node": a.ID().String()}, map[string]string{"node": b.ID().String()}
	with := func(base map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range base {
			out[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}

	// Admission, pools, paths: one connection each way of seeing it.
	waitMetric(t, reg, "realmnet_admission_admitted_total", nodeA, 1)
	waitMetric(t, reg, "realmnet_admission_admitted_total", nodeB, 1)
	waitMetric(t, reg, "realmnet_pool_connections", with(nodeA, "pool", "global"), 1)
	v, ok := metricValue(t, reg, "realmnet_pool_high_water", with(nodeA, "pool", "unassigned"))
	require.True(t, ok)
	require.Positive(t, v)
	waitMetric(t, reg, "realmnet_paths", with(nodeA, "state", "active", "tier", "direct"), 1)
	waitMetric(t, reg, "realmnet_path_switches_total", with(nodeA, "reason", "path_added"), 1)
	waitMetric(t, reg, "realmnet_path_probes_sent_total", with(nodeA, "kind", "datagram"), 3)
	waitMetric(t, reg, "realmnet_path_heartbeat_rtt_seconds", nodeA, 3)
	waitMetric(t, reg, "realmnet_peer_quality", nodeA, 1)
	waitMetric(t, reg, "realmnet_peer_breakers", with(nodeA, "state", "closed"), 1)

	// The gater, the hooks (none registered: no series) and the realm
	// service are registered for each node.
	waitMetric(t, reg, "realmnet_gater_decisions_total", with(nodeA, "stage", "admit", "outcome", "allowed"), 1)
	waitMetric(t, reg, "realmnet_realm_handshakes_total", with(nodeA, "outcome", "succeeded"), 0)
	_, ok = metricValue(t, reg, "realmnet_event_queue_dropped_total", with(nodeA, "queue", "multipath"))
	require.True(t, ok, "the event queues' drops are exported")

	// go-libp2p's own families, under go-libp2p's names.
	for _, name := range []string{
		"libp2p_swarm_connections_opened_total", "libp2p_swarm_handshake_latency_seconds",
		"libp2p_identify_identify_pushes_triggered_total", "libp2p_eventbus_events_emitted_total", "libp2p_rcmgr_connections",
	} {
		waitMetric(t, reg, name, nil, 0)
	}

	// A manual trim closes the connection: trims and trimmed connections
	// by reason.
	n, err := a.ConnManager().TrimConnections(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	waitMetric(t, reg, "realmnet_pool_trimmed_connections_total", with(nodeA, "reason", "manual_trim"), 1)
	waitMetric(t, reg, "realmnet_pool_trims_total", with(nodeA, "pool", "global"), 1)
	waitMetric(t, reg, "libp2p_swarm_connections_closed_total", nil, 1)

	// A blocked peer is refused at admission, by reason.
	require.NoError(t, b.Gater().BlockPeer(a.ID()))
	_ = a.Connect(ctx, b.AddrInfo())
	waitMetric(t, reg, "realmnet_admission_refused_total", with(nodeB, "reason", "blocked"), 1)

	// A dial that fails: go-libp2p's dial error family.
	nowhere := testnode.New(t)
	gone := nowhere.AddrInfo()
	require.NoError(t, nowhere.Close())
	require.Error(t, a.Connect(ctx, gone))
	waitMetric(t, reg, "libp2p_swarm_dial_errors_total", nil, 1)
	waitMetric(t, reg, "realmnet_peer_breakers", with(nodeA, "state", "open"), 1)

	// realmnet's families lint clean. go-libp2p's keep go-libp2p's names
	// (its dashboards use them), four of which the linter flags
	// (libp2p_eventbus_subscriber_event_queued, ..._subscribers_total,
	// libp2p_identify_addrs_count, ..._protocols_count).
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	for _, p := range problems {
		require.False(t, strings.HasPrefix(p.Metric, "realmnet_"), "%s does not lint: %s", p.Metric, p.Text)
	}
}

// TestMetricsFailoverAndDeadPaths: a blackholed selected path loses its
// probes, the peer fails over to its other path (the failover histogram
// moves) and the path is closed as dead.
func TestMetricsFailoverAndDeadPaths(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := multipath.Config{HeartbeatInterval: 200 * time.Millisecond, PathIdleTimeout: 600 * time.Millisecond, DesiredPaths: 1}
	server := testnode.New(t, node.Multipath(cfg))
	client := testnode.New(t, node.Metrics(reg), node.Multipath(cfg))
	first, second := testnode.Proxy(t, server), testnode.Proxy(t, server)
	// The second path is 40 ms slower: the first stays selected (the
	// hysteresis is 5 ms) until it is blackholed.
	second.SetDelay(20 * time.Millisecond)
	ctx := testkit.Context(t, 20*time.Second)
	_, err := client.Network().DialPath(ctx, server.ID(), first.Multiaddr())
	require.NoError(t, err)
	_, err = client.Network().DialPath(ctx, server.ID(), second.Multiaddr())
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, ok := client.Multipath().Selected(server.ID())
		return ok && info.HeartbeatRTT > 0 && info.Remote.Equal(first.Multiaddr()) && len(client.Paths(server.ID())) == 2
	}, 10*time.Second, 10*time.Millisecond, "the fast path is not selected")
	first.SetBlackhole(true)
	nodeLabel := map[string]string{"node": client.ID().String()}
	waitMetric(t, reg, "realmnet_path_probes_lost_total", nodeLabel, 1)
	waitMetric(t, reg, "realmnet_path_failover_seconds", nodeLabel, 1)
	waitMetric(t, reg, "realmnet_paths_dead_total", nodeLabel, 1)
}
