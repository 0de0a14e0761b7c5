package node

import (
	"context"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
	libp2pswarm "github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/gater"
	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/internal/eventqueue"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/realm"
	"github.com/realmnet/realmnet/swarm"
)

// The node's metrics (docs/observability.md) go to the registerer of the
// Metrics option in two kinds:
//
//   - go-libp2p's own families (libp2p_swarm_*, libp2p_identify_*,
//     libp2p_eventbus_*) from go-libp2p's metrics tracers, so that
//     go-libp2p's Grafana dashboards work unchanged. go-libp2p keeps their
//     collectors in package variables: they are per process, registered
//     once per registry whatever the number of nodes, and carry no node
//     label. go-libp2p's libp2p_rcmgr_* families are the exception: the
//     resource manager exports them itself at scrape time (package
//     resource; rcmgr's tracer costs a short stream a fifth of its time),
//     per node, with the node label.
//   - realmnet's own (realmnet_*), one collector per component, registered
//     through a registerer that labels every series with node="<peer ID>",
//     so several nodes can share a registry. They are read from the
//     components' counters when the registry is scraped, or are histograms
//     observed where the event happens: nothing is added to the stream
//     path. They are unregistered when the node closes.

// nodeLabel is the label that tells realmnet's series of several nodes in
// one registry apart: the node's peer ID.
const nodeLabel = "node"

// nodeRegisterer is reg with every series labelled node=<id>; nil when reg
// is nil.
func nodeRegisterer(reg prometheus.Registerer, id peer.ID) prometheus.Registerer {
	if reg == nil {
		return nil
	}
	return prometheus.WrapRegistererWith(prometheus.Labels{nodeLabel: id.String()}, reg)
}

// swarmMetricsTracer is go-libp2p's swarm metrics tracer on reg (nil
// without metrics).
func swarmMetricsTracer(reg prometheus.Registerer) libp2pswarm.MetricsTracer {
	if reg == nil {
		return nil
	}
	return libp2pswarm.NewMetricsTracer(libp2pswarm.WithRegisterer(reg))
}

// metricsParams are the components whose collectors registerMetrics
// registers.
type metricsParams struct {
	fx.In
	Lifecycle fx.Lifecycle
	Config    *Config
	ID        peer.ID
	Bus       *eventqueue.ClosingBus
	Swarm     *swarm.Swarm
	Paths     *multipath.Manager
	Pools     *connmgr.Manager
	Realms    *realm.Service
	Gater     *gater.Gater
	Hooks     *hooks.Registry
}

// registerMetrics registers realmnet's collectors of the node's components
// when the node starts (with the Metrics option) and unregisters them when
// it stops. A collector the registry refuses (a second node with the same
// peer ID in one registry, say) fails the start, naming it.
func registerMetrics(p metricsParams) error {
	reg := nodeRegisterer(p.Config.Metrics, p.ID)
	if reg == nil {
		return nil
	}
	realmName := func(id core.RealmID) string { return joinedRealmName(p.Realms, id) }
	collectors := []struct {
		name string
		c    prometheus.Collector
	}{
		{"admission", p.Swarm.Collector()},
		{"pools", p.Pools.Collector(realmName)},
		{"paths", p.Paths.Collector()},
		{"realms", p.Realms.Collector()},
		{"gater", p.Gater.Collector()},
		{"hooks", p.Hooks.Collector()},
		{"event queues", eventDropCollector{p.Bus}},
		{"peer health", healthCollector{swarm: p.Swarm, paths: p.Paths}},
	}
	var registered []prometheus.Collector
	unregister := func() {
		for _, c := range registered {
			reg.Unregister(c)
		}
		registered = nil
	}
	// Registered when the node starts, not while it is built: a refusal
	// then stops what has started (fx rolls back), where a failed build
	// would leave the components built so far running.
	p.Lifecycle.Append(fx.Hook{
		OnStart: func(context.Context) error {
			for _, c := range collectors {
				if err := reg.Register(c.c); err != nil {
					unregister()
					return fmt.Errorf("node: register the %s metrics: %w", c.name, err)
				}
				registered = append(registered, c.c)
			}
			return nil
		},
		OnStop: func(context.Context) error {
			unregister()
			return nil
		},
	})
	return nil
}

// joinedRealmName is the name of the joined realm whose ID is id; "" when
// the node has not joined it (any more). Metrics and the debug endpoint
// show realms, and their sub-pools, by name.
func joinedRealmName(s *realm.Service, id core.RealmID) string {
	for _, r := range s.Realms() {
		if r.ID() == id {
			return r.Name()
		}
	}
	return ""
}

var eventsDroppedDesc = prometheus.NewDesc("realmnet_event_queue_dropped_total",
	"Events dropped by the node's event queues (a subscriber that does not read, or events of an unknown type), by queue: the package that emits them (swarm, connmgr, multipath, realm).",
	[]string{"queue"}, nil)

// eventDropCollector reports the drops of the event queues on the node's
// bus.
type eventDropCollector struct{ bus *eventqueue.ClosingBus }

// Describe sends the family's descriptor.
func (c eventDropCollector) Describe(ch chan<- *prometheus.Desc) { ch <- eventsDroppedDesc }

// Collect sends the drop counts.
func (c eventDropCollector) Collect(ch chan<- prometheus.Metric) {
	for name, n := range c.bus.DroppedEvents() {
		ch <- prometheus.MustNewConstMetric(eventsDroppedDesc, prometheus.CounterValue, float64(n), name)
	}
}
