package realm_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/realm"
)

// metricValue gathers c and returns the value of family name's series
// whose labels are exactly labels (alternating names and values): a
// counter's or gauge's value, or a histogram's sample count. It fails the
// test when there is no such series.
func metricValue(t testing.TB, c prometheus.Collector, name string, labels ...string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))
	families, err := reg.Gather()
	require.NoError(t, err)
	want := make(map[string]string)
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			got := make(map[string]string)
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			if len(got) != len(want) {
				continue
			}
			match := true
			for k, v := range want {
				match = match && got[k] == v
			}
			switch {
			case !match:
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

// requireMetric waits (10 s at most) until family name's series with
// labels satisfies cond.
func requireMetric(t testing.TB, c prometheus.Collector, cond func(float64) bool, what, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v := metricValue(t, c, name, labels...)
		if cond(v) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s%v is still %v after 10 s", what, name, labels, v)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// atLeast is a requireMetric condition.
func atLeast(n float64) func(float64) bool { return func(v float64) bool { return v >= n } }

// TestMetricsFollowTheRealm drives two members and a node holding the
// wrong key over QUIC on loopback, and checks that each family of
// Service.Collector moves under the action it measures: handshakes (and
// their histogram), members, member exchanges, realm streams in both
// directions, a stream for a protocol without handler, a non-member's
// hello, goodbyes.
func TestMetricsFollowTheRealm(t *testing.T) {
	a, b, stranger := newNode(t), newNode(t), newNode(t)
	ra := join(t, a, "metrics", realm.PSK(testPSK))
	rb := join(t, b, "metrics", realm.PSK(testPSK), realm.Peers(a.AddrInfo()))
	ca, cb := realm.ServiceOf(ra).Collector(), realm.ServiceOf(rb).Collector()
	for _, c := range []prometheus.Collector{ca, cb} {
		problems, err := testutil.CollectAndLint(c)
		require.NoError(t, err)
		require.Empty(t, problems)
		require.Equal(t, 1, testutil.CollectAndCount(c, "realmnet_realm_members"), "one joined realm")
		require.Equal(t, 6, testutil.CollectAndCount(c, "realmnet_realm_handshakes_total"))
		require.Equal(t, 5, testutil.CollectAndCount(c, "realmnet_realm_streams_total"))
	}

	// The handshake: counted, timed and the member counted on both sides.
	waitMembers(t, ra, 1)
	waitMembers(t, rb, 1)
	for who, c := range map[string]prometheus.Collector{"a": ca, "b": cb} {
		requireMetric(t, c, atLeast(1), who+" handshakes", "realmnet_realm_handshakes_total", "outcome", "succeeded")
		requireMetric(t, c, func(v float64) bool {
			return v >= 1 && v == metricValue(t, c, "realmnet_realm_handshakes_total", "outcome", "succeeded")
		}, who+" handshake histogram: one observation per handshake", "realmnet_realm_handshake_seconds")
		require.Equal(t, 1.0, metricValue(t, c, "realmnet_realm_members", "realm", "metrics"), who)
		// The exchange that follows a handshake, each side counting its
		// own role.
		requireMetric(t, c, atLeast(1), who+" exchanges", "realmnet_realm_exchanges_total", "outcome", "ok")
	}

	// A node with the wrong key: its hello matches none of a's realms.
	join(t, stranger, "metrics", realm.PSK(atkOtherPSK), realm.Peers(a.AddrInfo()))
	requireMetric(t, ca, atLeast(1), "a counts the stranger's hello", "realmnet_realm_handshakes_total", "outcome", "unknown_realm")
	require.Equal(t, 1.0, metricValue(t, ca, "realmnet_realm_members", "realm", "metrics"), "the stranger is no member")

	// A realm stream b → a: outbound on b, inbound on a.
	require.NoError(t, ra.SetStreamHandler("/echo", echo))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, memEcho(ctx, rb, a.ID(), "/echo", "counted"))
	require.Equal(t, 1.0, metricValue(t, cb, "realmnet_realm_streams_total", "direction", "outbound", "outcome", "opened"))
	require.Equal(t, 1.0, metricValue(t, ca, "realmnet_realm_streams_total", "direction", "inbound", "outcome", "opened"))
	require.Zero(t, metricValue(t, ca, "realmnet_realm_streams_total", "direction", "outbound", "outcome", "opened"))

	// A stream for a protocol a has no handler for: opened on b (the
	// header went out), reset by a.
	s, err := rb.NewStream(ctx, a.ID(), "/nothing")
	require.NoError(t, err)
	_, err = io.ReadAll(s)
	var se *network.StreamError
	require.True(t, errors.As(err, &se) && se.ErrorCode == realm.ErrorCodeNoHandler, "read: %v", err)
	_ = s.Reset()
	require.Equal(t, 2.0, metricValue(t, cb, "realmnet_realm_streams_total", "direction", "outbound", "outcome", "opened"))
	require.Equal(t, 1.0, metricValue(t, ca, "realmnet_realm_streams_total", "direction", "inbound", "outcome", "no_handler"))
	require.Equal(t, 1.0, metricValue(t, ca, "realmnet_realm_streams_total", "direction", "inbound", "outcome", "opened"))

	// b leaves: its goodbye is acknowledged (sent) and accepted by a
	// (received) before Leave returns; b's realm has no series any more,
	// a's has no member.
	require.NoError(t, rb.Leave(ctx))
	require.Equal(t, 1.0, metricValue(t, cb, "realmnet_realm_goodbyes_total", "direction", "sent"))
	require.Zero(t, metricValue(t, cb, "realmnet_realm_goodbyes_total", "direction", "unacknowledged"))
	require.Equal(t, 1.0, metricValue(t, ca, "realmnet_realm_goodbyes_total", "direction", "received"))
	require.Zero(t, metricValue(t, ca, "realmnet_realm_goodbyes_total", "direction", "rejected"))
	require.Equal(t, 0, testutil.CollectAndCount(cb, "realmnet_realm_members"))
	require.Zero(t, metricValue(t, ca, "realmnet_realm_members", "realm", "metrics"))

	for _, c := range []prometheus.Collector{ca, cb} {
		problems, err := testutil.CollectAndLint(c)
		require.NoError(t, err)
		require.Empty(t, problems)
	}
}
