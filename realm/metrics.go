package realm

import (
	"github.com/prometheus/client_golang/prometheus"
)

// The realm service's Prometheus families (docs/observability.md). The
// counters are Stats, read when the registry is scraped; the members gauge
// is counted then too. The realm stream path adds one atomic increment per
// stream and nothing else; the handshake histogram is observed where a
// handshake completes. No family carries key material: realms are labelled
// by name.
var (
	realmMembersDesc = prometheus.NewDesc("realmnet_realm_members",
		"Authenticated members of each joined realm (members within their reconnect grace are not counted).",
		[]string{"realm"}, nil)
	realmHandshakesDesc = prometheus.NewDesc("realmnet_realm_handshakes_total",
		"Realm handshakes, either role, by outcome (succeeded, unknown_realm, replayed, bad_mac, bad_frame, refused); a failed one is counted under its first reason.",
		[]string{"outcome"}, nil)
	realmStreamsDesc = prometheus.NewDesc("realmnet_realm_streams_total",
		"Application realm streams by direction (outbound, inbound) and outcome: opened (outbound: returned by Realm.NewStream; inbound: handed to the realm's handler), refused (inbound, reset before dispatch), no_handler (inbound, no handler for the protocol), resource_limit (inbound, the realm's stream limit).",
		[]string{"direction", "outcome"}, nil)
	realmExchangesDesc = prometheus.NewDesc("realmnet_realm_exchanges_total",
		"Member exchanges, either role, by outcome: ok (ran to its end), failed (stream, frame, reset or timeout), refused (the member asked too often).",
		[]string{"outcome"}, nil)
	realmRecordsRejectedDesc = prometheus.NewDesc("realmnet_realm_exchange_records_rejected_total",
		"Signed peer records received in member exchanges that did not verify.", nil, nil)
	realmGoodbyesDesc = prometheus.NewDesc("realmnet_realm_goodbyes_total",
		"Signed goodbyes by direction: sent (acknowledged by the receiver), unacknowledged (sent, not acknowledged in time or refused), received (verified; the member left), rejected (received, did not verify).",
		[]string{"direction"}, nil)
	realmPeersClosedDesc = prometheus.NewDesc("realmnet_realm_peers_closed_total",
		"Peers whose connections the realm service closed, by reason (realm_only: no shared realm within the realm-only policy's AuthTimeout).",
		[]string{"reason"}, nil)
)

// newHandshakeHistogram is the Service's realmnet_realm_handshake_seconds.
func newHandshakeHistogram() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "realmnet_realm_handshake_seconds",
		Help: "Duration of completed realm handshakes, either role: from the initiator's start (opening the auth stream) or the responder's reception of the stream, to the admission of the peer.",
		// 0.5 ms to ~4.1 s, ×2: a loopback handshake (1.5 round trips
		// over an open connection) to HandshakeTimeout (5 s, +Inf).
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
}

// serviceCollector is Service.Collector's prometheus.Collector.
type serviceCollector struct{ s *Service }

// Collector returns a prometheus.Collector of the realm service. Counters
// are read from Stats at each scrape and the members gauge is counted then;
// none carries a node label (the node's registerer adds it) or any key
// material. Families:
//
//   - realmnet_realm_members{realm} (gauge): authenticated members of each
//     joined realm, labelled by the realm's name; a left realm's series
//     disappears.
//   - realmnet_realm_handshakes_total{outcome} (counter): handshakes in
//     either role; outcome succeeded, unknown_realm, replayed, bad_mac,
//     bad_frame or refused (Stats.Auth*).
//   - realmnet_realm_handshake_seconds (histogram, seconds): completed
//     handshakes, from their start in either role to the peer's admission.
//   - realmnet_realm_streams_total{direction, outcome} (counter):
//     application realm streams; outbound opened (Realm.NewStream
//     succeeded), inbound opened (handed to a handler), inbound refused
//     (reset before dispatch), inbound no_handler, inbound resource_limit.
//     The realm's own exchange and goodbye streams are not counted here
//     (inbound refusals are: they are refused before their kind is read).
//   - realmnet_realm_exchanges_total{outcome} (counter): member exchanges,
//     each side counting its own; outcome ok, failed or refused.
//   - realmnet_realm_exchange_records_rejected_total (counter): signed peer
//     records in exchanges that did not verify (Stats.RecordsRejected; a
//     count of records, not of exchanges, hence its own family).
//   - realmnet_realm_goodbyes_total{direction} (counter): sent
//     (acknowledged), unacknowledged, received (verified), rejected.
//   - realmnet_realm_peers_closed_total{reason} (counter): reason
//     realm_only (the realm-only policy).
//
// Safe for concurrent use; a scrape takes the service's and each realm's
// lock briefly, as Realms and WaitMembers do.
func (s *Service) Collector() prometheus.Collector { return serviceCollector{s} }

// Describe sends the families' descriptors.
func (c serviceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{realmMembersDesc, realmHandshakesDesc, realmStreamsDesc,
		realmExchangesDesc, realmRecordsRejectedDesc, realmGoodbyesDesc, realmPeersClosedDesc} {
		ch <- d
	}
	c.s.handshakeSeconds.Describe(ch)
}

// Collect sends the current values.
func (c serviceCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range c.s.joined() {
		ch <- prometheus.MustNewConstMetric(realmMembersDesc, prometheus.GaugeValue, float64(r.authenticatedCount()), r.name)
	}
	st := c.s.Stats()
	counter := func(d *prometheus.Desc, n uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), labels...)
	}
	counter(realmHandshakesDesc, st.AuthSucceeded, "succeeded")
	counter(realmHandshakesDesc, st.AuthUnknownRealm, "unknown_realm")
	counter(realmHandshakesDesc, st.AuthReplayed, "replayed")
	counter(realmHandshakesDesc, st.AuthBadMAC, "bad_mac")
	counter(realmHandshakesDesc, st.AuthBadFrame, "bad_frame")
	counter(realmHandshakesDesc, st.AuthRefused, "refused")
	counter(realmStreamsDesc, st.StreamsOpenedOutbound, "outbound", "opened")
	counter(realmStreamsDesc, st.StreamsOpenedInbound, "inbound", "opened")
	counter(realmStreamsDesc, st.StreamsRefused, "inbound", "refused")
	counter(realmStreamsDesc, st.StreamsNoHandler, "inbound", "no_handler")
	counter(realmStreamsDesc, st.StreamsLimited, "inbound", "resource_limit")
	counter(realmExchangesDesc, st.ExchangesCompleted, "ok")
	counter(realmExchangesDesc, st.ExchangesFailed, "failed")
	counter(realmExchangesDesc, st.ExchangesRefused, "refused")
	counter(realmRecordsRejectedDesc, st.RecordsRejected)
	counter(realmGoodbyesDesc, st.GoodbyesSent, "sent")
	counter(realmGoodbyesDesc, st.GoodbyesUnacknowledged, "unacknowledged")
	counter(realmGoodbyesDesc, st.GoodbyesReceived, "received")
	counter(realmGoodbyesDesc, st.GoodbyesRejected, "rejected")
	counter(realmPeersClosedDesc, st.PeersClosedRealmOnly, "realm_only")
	c.s.handshakeSeconds.Collect(ch)
}
