package gater

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// The gater's Prometheus family (docs/observability.md). Each decision is
// one atomic increment in a fixed array, allowed or denied alike: no lock,
// no allocation on the dial and accept paths.
var gaterDecisionsDesc = prometheus.NewDesc("realmnet_gater_decisions_total",
	"Gater decisions by stage (peer_dial, addr_dial, accept, admit, upgraded), outcome (allowed, denied) and rule that denied (blocked_peer, blocked_addr, blocked_subnet, peer_policy, hook; none when allowed).",
	[]string{"stage", "outcome", "rule"}, nil)

// point is a decision point of the gater (the stage label).
type point uint8

const (
	pointPeerDial point = iota // CheckPeerDial, InterceptPeerDial
	pointAddrDial              // CheckAddrDial, InterceptAddrDial
	pointAccept                // InterceptAccept
	pointAdmit                 // AdmitConn (realmnet's swarm)
	pointUpgraded              // InterceptUpgraded (go-libp2p's swarm)
	numPoints
)

// pointLabels are the points' stage label values.
var pointLabels = [numPoints]string{
	pointPeerDial: "peer_dial", pointAddrDial: "addr_dial", pointAccept: "accept",
	pointAdmit: "admit", pointUpgraded: "upgraded",
}

// rule is what decided a denial; ruleNone is an allowed decision.
type rule uint8

const (
	ruleNone          rule = iota // allowed
	ruleBlockedPeer               // a block rule for the peer (ErrPeerBlocked)
	ruleBlockedAddr               // a block rule for the IP address (ErrAddrBlocked)
	ruleBlockedSubnet             // a block rule for a subnet containing it (ErrAddrBlocked)
	rulePeerPolicy                // the peer policy, e.g. realm-only (ErrPeerPolicy)
	ruleHook                      // a BeforeConnect or AfterHandshake hook (hooks.ErrRejected)
	numRules
)

// ruleLabels are the rules' label values.
var ruleLabels = [numRules]string{
	ruleNone: "none", ruleBlockedPeer: "blocked_peer", ruleBlockedAddr: "blocked_addr",
	ruleBlockedSubnet: "blocked_subnet", rulePeerPolicy: "peer_policy", ruleHook: "hook",
}

// pointRules are the rules that can deny at each point: the series
// Collect sends, at zero until they move.
var pointRules = [numPoints][]rule{
	pointPeerDial: {ruleBlockedPeer, rulePeerPolicy},
	pointAddrDial: {ruleBlockedAddr, ruleBlockedSubnet, ruleHook},
	pointAccept:   {ruleBlockedAddr, ruleBlockedSubnet},
	pointAdmit:    {ruleBlockedPeer, ruleBlockedAddr, ruleBlockedSubnet, rulePeerPolicy, ruleHook},
	pointUpgraded: {ruleBlockedPeer, ruleBlockedAddr, ruleBlockedSubnet, rulePeerPolicy, ruleHook},
}

// decisionCounts counts decisions by point and rule (ruleNone: allowed).
// Safe for concurrent use; the zero value is ready.
type decisionCounts [numPoints][numRules]atomic.Uint64

func (d *decisionCounts) count(pt point, rl rule) { d[pt][rl].Add(1) }

// gaterCollector is Gater.Collector's prometheus.Collector.
type gaterCollector struct{ g *Gater }

// Collector returns a prometheus.Collector of the gater's decisions,
// realmnet_gater_decisions_total{stage, outcome, rule} (counter): one per
// call of a decision point. stage is the decision point:
//
//   - peer_dial: CheckPeerDial / InterceptPeerDial (peer rules, policy);
//   - addr_dial: CheckAddrDial / InterceptAddrDial (address rules, the
//     outbound BeforeConnect hooks);
//   - accept: InterceptAccept (address rules, in the transport's accept
//     loop);
//   - admit: AdmitConn, realmnet's swarm's admission stage (rules, policy,
//     hooks);
//   - upgraded: InterceptUpgraded, the same decision for go-libp2p's own
//     swarm.
//
// InterceptSecured decides nothing (it allows every connection and leaves
// the decision to AdmitConn), so it has no series. outcome is allowed
// (rule "none") or denied, with rule blocked_peer, blocked_addr (a rule for
// the address itself), blocked_subnet, peer_policy (the predicate of
// SetPeerPolicy: the realm-only policy in a node) or hook (the hooks'
// own family, realmnet_hook_decisions_total, says which and how). Every
// series a stage can produce is sent from the first scrape, at zero until
// it moves. No node label: the node's registerer adds it. Safe for
// concurrent use.
func (g *Gater) Collector() prometheus.Collector { return gaterCollector{g} }

// Describe sends the family's descriptor.
func (c gaterCollector) Describe(ch chan<- *prometheus.Desc) { ch <- gaterDecisionsDesc }

// Collect sends the current counts.
func (c gaterCollector) Collect(ch chan<- prometheus.Metric) {
	d := &c.g.decisions
	for pt := range numPoints {
		ch <- prometheus.MustNewConstMetric(gaterDecisionsDesc, prometheus.CounterValue,
			float64(d[pt][ruleNone].Load()), pointLabels[pt], "allowed", ruleLabels[ruleNone])
		for _, rl := range pointRules[pt] {
			ch <- prometheus.MustNewConstMetric(gaterDecisionsDesc, prometheus.CounterValue,
				float64(d[pt][rl].Load()), pointLabels[pt], "denied", ruleLabels[rl])
		}
	}
}
