package resource

import (
	"errors"
	"strings"
	"sync"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/prometheus/client_golang/prometheus"
)

// The families below are go-libp2p's (p2p/host/resource-manager/stats.go,
// v0.52.0): same names, types, labels, help and buckets, so that go-libp2p's
// resource-manager Grafana dashboard (dashboards/resource-manager) reads
// them unchanged. go-libp2p fills them from rcmgr's trace — every scope
// event, formatted and sent under one process-wide lock — into package
// variables shared by every resource manager of the process; here they are
// read from rcmgr's state when the registry is scraped, per Manager, so the
// stream path pays nothing and several nodes can share a registry (their
// registerer labels each node's series).
const rcmgrNamespace = "libp2p_rcmgr"

var (
	// peerCountBuckets is go-libp2p's oneTenThenExpDistributionBuckets.
	peerCountBuckets = []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64, 128, 256}
	// peerMemoryBuckets is go-libp2p's memDistribution, bytes.
	peerMemoryBuckets = []float64{1 << 10, 4 << 10, 32 << 10, 1 << 20, 32 << 20, 256 << 20, 512 << 20, 1 << 30, 2 << 30, 4 << 30}

	descConns = prometheus.NewDesc(rcmgrNamespace+"_connections", "Number of Connections",
		[]string{"dir", "scope"}, nil)
	descStreams = prometheus.NewDesc(rcmgrNamespace+"_streams", "Number of Streams",
		[]string{"dir", "scope", "protocol"}, nil)
	descMemory = prometheus.NewDesc(rcmgrNamespace+"_memory", "Amount of memory reserved as reported to the Resource Manager",
		[]string{"scope", "protocol"}, nil)
	descFDs = prometheus.NewDesc(rcmgrNamespace+"_fds", "Number of file descriptors reserved as reported to the Resource Manager",
		[]string{"scope"}, nil)
	descBlocked = prometheus.NewDesc(rcmgrNamespace+"_blocked_resources", "Number of blocked resources",
		[]string{"dir", "scope", "resource"}, nil)
	descLimit = prometheus.NewDesc(rcmgrNamespace+"_limit", "Resource manager limits",
		[]string{"scope", "resource"}, nil)
	descPeerConns = prometheus.NewDesc(rcmgrNamespace+"_peer_connections", "Number of connections this peer has",
		[]string{"dir"}, nil)
	descPreviousPeerConns = prometheus.NewDesc(rcmgrNamespace+"_previous_peer_connections",
		"Number of connections this peer previously had. This is used to get the current connection number per peer histogram by subtracting this from the peer_connections histogram",
		[]string{"dir"}, nil)
	descPeerStreams = prometheus.NewDesc(rcmgrNamespace+"_peer_streams", "Number of streams this peer has",
		[]string{"dir"}, nil)
	descPreviousPeerStreams = prometheus.NewDesc(rcmgrNamespace+"_previous_peer_streams", "Number of streams this peer has",
		[]string{"dir"}, nil)
	descPeerMemory = prometheus.NewDesc(rcmgrNamespace+"_peer_memory",
		"How many peers have reserved this bucket of memory, as reported to the Resource Manager", nil, nil)
	descPreviousPeerMemory = prometheus.NewDesc(rcmgrNamespace+"_previous_peer_memory",
		"How many peers have previously reserved this bucket of memory, as reported to the Resource Manager", nil, nil)

	descRealmUsage = prometheus.NewDesc("realmnet_realm_usage",
		"Resources in use by a realm: members, streams_inbound, streams_outbound.", []string{"realm", "resource"}, nil)
)

// collector is a Manager's Prometheus collector: realmnet_realm_usage and
// go-libp2p's libp2p_rcmgr_* families, read at scrape time.
//
// Differences from go-libp2p's trace-fed families, all in what rcmgr's
// state and its MetricsReporter say:
//   - peer_* histograms are the distribution now (one observation per peer
//     with a non-zero value) and previous_peer_* are empty, so the
//     dashboard's peer_* - previous_peer_* is the same distribution; they
//     are not cumulative counts of changes.
//   - conn_memory and previous_conn_memory are not exported (rcmgr lists
//     no connection scopes; go-libp2p's dashboard does not use them).
//   - blocked_resources has the refusing scope and the direction for
//     connections and streams refused when they open; for a connection
//     refused by its peer scope, a stream refused by its protocol or
//     service scope, and a memory reservation (bytes, as go-libp2p counts
//     them), rcmgr's MetricsReporter gives no direction ("") and, for
//     memory, no scope ("").
type collector struct{ m *Manager }

// Describe sends every family's descriptor.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConns, descStreams, descMemory, descFDs, descBlocked, descLimit,
		descPeerConns, descPreviousPeerConns, descPeerStreams, descPreviousPeerStreams, descPeerMemory,
		descPreviousPeerMemory, descRealmUsage} {
		ch <- d
	}
}

// Collect reads rcmgr's scopes, the limits, the blocked counts and the
// realm usage.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if s, ok := m.ResourceManager.(rcmgr.ResourceManagerState); ok {
		st := s.Stat()
		for _, sc := range []struct {
			name string
			stat network.ScopeStat
		}{{"system", st.System}, {"transient", st.Transient}} {
			gauge(descConns, float64(sc.stat.NumConnsInbound), "inbound", sc.name)
			gauge(descConns, float64(sc.stat.NumConnsOutbound), "outbound", sc.name)
			gauge(descStreams, float64(sc.stat.NumStreamsInbound), "inbound", sc.name, "")
			gauge(descStreams, float64(sc.stat.NumStreamsOutbound), "outbound", sc.name, "")
			gauge(descMemory, float64(sc.stat.Memory), sc.name, "")
			gauge(descFDs, float64(sc.stat.NumFD), sc.name)
		}
		for proto, stat := range st.Protocols {
			gauge(descStreams, float64(stat.NumStreamsInbound), "inbound", "protocol", string(proto))
			gauge(descStreams, float64(stat.NumStreamsOutbound), "outbound", "protocol", string(proto))
			gauge(descMemory, float64(stat.Memory), "protocol", string(proto))
		}
		collectPeers(ch, st.Peers)
	}
	for _, l := range m.limitSeries {
		gauge(descLimit, float64(l.value), l.scope, l.resource)
	}
	m.blocked.mu.Lock()
	for k, v := range m.blocked.count {
		gauge(descBlocked, v, k.dir, k.scope, k.resource)
	}
	m.blocked.mu.Unlock()
	m.mu.Lock()
	for realm, u := range m.usage {
		for res, v := range u {
			gauge(descRealmUsage, float64(v), string(realm), resourceNames[res])
		}
	}
	m.mu.Unlock()
}

// collectPeers sends the per-peer distributions of connections, streams
// (by direction) and memory, each with its empty previous_* twin.
func collectPeers(ch chan<- prometheus.Metric, peers map[peer.ID]network.ScopeStat) {
	values := func(f func(network.ScopeStat) int64) []int64 {
		vs := make([]int64, 0, len(peers))
		for _, st := range peers {
			if v := f(st); v != 0 {
				vs = append(vs, v)
			}
		}
		return vs
	}
	send := func(d, previous *prometheus.Desc, buckets []float64, vs []int64, labels ...string) {
		ch <- histogram(d, buckets, vs, labels...)
		ch <- histogram(previous, buckets, nil, labels...)
	}
	send(descPeerConns, descPreviousPeerConns, peerCountBuckets,
		values(func(s network.ScopeStat) int64 { return int64(s.NumConnsInbound) }), "inbound")
	send(descPeerConns, descPreviousPeerConns, peerCountBuckets,
		values(func(s network.ScopeStat) int64 { return int64(s.NumConnsOutbound) }), "outbound")
	send(descPeerStreams, descPreviousPeerStreams, peerCountBuckets,
		values(func(s network.ScopeStat) int64 { return int64(s.NumStreamsInbound) }), "inbound")
	send(descPeerStreams, descPreviousPeerStreams, peerCountBuckets,
		values(func(s network.ScopeStat) int64 { return int64(s.NumStreamsOutbound) }), "outbound")
	send(descPeerMemory, descPreviousPeerMemory, peerMemoryBuckets,
		values(func(s network.ScopeStat) int64 { return s.Memory }))
}

// histogram is a constant histogram of vs over the upper bounds buckets.
func histogram(d *prometheus.Desc, buckets []float64, vs []int64, labels ...string) prometheus.Metric {
	counts := make(map[float64]uint64, len(buckets))
	for _, b := range buckets {
		counts[b] = 0
	}
	var sum float64
	for _, v := range vs {
		sum += float64(v)
		for _, b := range buckets {
			if float64(v) <= b {
				counts[b]++
			}
		}
	}
	return prometheus.MustNewConstHistogram(d, uint64(len(vs)), sum, counts, labels...)
}

// limitSeries is one libp2p_rcmgr_limit{scope, resource} value.
type limitSeries struct {
	scope, resource string
	value           int64
}

// systemLimitSeries is go-libp2p's StatsTraceReporter.ReportSystemLimits:
// the system and transient limits.
func systemLimitSeries(limiter rcmgr.Limiter) []limitSeries {
	var out []limitSeries
	for _, sc := range []struct {
		name   string
		limits rcmgr.Limit
	}{{"system", limiter.GetSystemLimits()}, {"transient", limiter.GetTransientLimits()}} {
		l := sc.limits
		out = append(out,
			limitSeries{sc.name, "memory", l.GetMemoryLimit()},
			limitSeries{sc.name, "fd", int64(l.GetFDLimit())},
			limitSeries{sc.name, "conns", int64(l.GetConnTotalLimit())},
			limitSeries{sc.name, "conns_inbound", int64(l.GetConnLimit(network.DirInbound))},
			limitSeries{sc.name, "conns_outbound", int64(l.GetConnLimit(network.DirOutbound))},
			limitSeries{sc.name, "streams", int64(l.GetStreamTotalLimit())},
			limitSeries{sc.name, "streams_inbound", int64(l.GetStreamLimit(network.DirInbound))},
			limitSeries{sc.name, "streams_outbound", int64(l.GetStreamLimit(network.DirOutbound))},
		)
	}
	return out
}

// blockedKey is a libp2p_rcmgr_blocked_resources series.
type blockedKey struct{ dir, scope, resource string }

// blockedCounts counts refusals by series. Refusals are rare, so one mutex
// suffices. It is rcmgr's MetricsReporter for the refusals rcmgr only
// reports there (peer, protocol and service scopes; memory); the Manager's
// OpenConnection and OpenStream count the others from their errors, which
// name the refusing scope. Safe for concurrent use.
type blockedCounts struct {
	mu    sync.Mutex
	count map[blockedKey]float64 // keys: directions × scope classes × 4 resources
}

func (b *blockedCounts) add(k blockedKey, v float64) {
	b.mu.Lock()
	if b.count == nil {
		b.count = make(map[blockedKey]float64)
	}
	b.count[k] += v
	b.mu.Unlock()
}

// openRefused counts a connection (resource "connection") or stream
// ("stream") that rcmgr refused to open with err, under the scope err names
// (the innermost one: rcmgr prefixes its limit error with the refusing
// scope's name, then with each enclosing scope's).
func (b *blockedCounts) openRefused(err error, dir network.Direction, resource string, usefd bool) {
	scope := refusingScope(err)
	if scope == "" {
		return // not a limit (a closed scope, for instance)
	}
	b.add(blockedKey{directionName(dir), scope, resource}, 1)
	if usefd {
		b.add(blockedKey{"", scope, "fd"}, 1)
	}
}

func directionName(dir network.Direction) string {
	if dir == network.DirInbound {
		return "inbound"
	}
	return "outbound"
}

// refusingScope is the class of the scope that refused with err ("system",
// "transient", "peer", "conn", "stream", ... — go-libp2p's name up to its
// first ':' or '-', as its trace reporter labels it), or "" when err is not
// an rcmgr limit error.
func refusingScope(err error) string {
	var limitErr *rcmgr.ErrStreamOrConnLimitExceeded
	if !errors.As(err, &limitErr) {
		return ""
	}
	// Walk to the wrapper right around the limit error: "<scope>: <limit>".
	for e := err; e != nil; e = errors.Unwrap(e) {
		inner := errors.Unwrap(e)
		if inner != limitErr {
			continue
		}
		name, ok := strings.CutSuffix(e.Error(), ": "+inner.Error())
		if !ok {
			return ""
		}
		if i := strings.IndexByte(name, ':'); i >= 0 {
			name = name[:i]
		}
		if i := strings.IndexByte(name, '-'); i >= 0 {
			name = name[:i]
		}
		return name
	}
	return ""
}

// The rcmgr.MetricsReporter methods: the allowed events are not counted
// (go-libp2p's families have no such series); the refusals are, under what
// the callback says.

// AllowConn implements rcmgr.MetricsReporter; not counted.
func (b *blockedCounts) AllowConn(network.Direction, bool) {}

// BlockConn implements rcmgr.MetricsReporter; counted by OpenConnection,
// which knows the refusing scope.
func (b *blockedCounts) BlockConn(network.Direction, bool) {}

// AllowStream implements rcmgr.MetricsReporter; not counted.
func (b *blockedCounts) AllowStream(peer.ID, network.Direction) {}

// BlockStream implements rcmgr.MetricsReporter; counted by OpenStream,
// which knows the refusing scope.
func (b *blockedCounts) BlockStream(peer.ID, network.Direction) {}

// AllowPeer implements rcmgr.MetricsReporter; not counted.
func (b *blockedCounts) AllowPeer(peer.ID) {}

// BlockPeer counts a connection refused by its peer's scope.
func (b *blockedCounts) BlockPeer(peer.ID) { b.add(blockedKey{"", "peer", "connection"}, 1) }

// AllowProtocol implements rcmgr.MetricsReporter; not counted.
func (b *blockedCounts) AllowProtocol(protocol.ID) {}

// BlockProtocol counts a stream refused by its protocol's scope.
func (b *blockedCounts) BlockProtocol(protocol.ID) { b.add(blockedKey{"", "protocol", "stream"}, 1) }

// BlockProtocolPeer counts a stream refused by its protocol's per-peer
// scope.
func (b *blockedCounts) BlockProtocolPeer(protocol.ID, peer.ID) {
	b.add(blockedKey{"", "protocol", "stream"}, 1)
}

// AllowService implements rcmgr.MetricsReporter; not counted.
func (b *blockedCounts) AllowService(string) {}

// BlockService counts a stream refused by its service's scope.
func (b *blockedCounts) BlockService(string) { b.add(blockedKey{"", "service", "stream"}, 1) }

// BlockServicePeer counts a stream refused by its service's per-peer scope.
func (b *blockedCounts) BlockServicePeer(string, peer.ID) {
	b.add(blockedKey{"", "service", "stream"}, 1)
}

// AllowMemory implements rcmgr.MetricsReporter; not counted.
func (b *blockedCounts) AllowMemory(int) {}

// BlockMemory counts the bytes of a refused memory reservation.
func (b *blockedCounts) BlockMemory(size int) { b.add(blockedKey{"", "", "memory"}, float64(size)) }

var _ rcmgr.MetricsReporter = (*blockedCounts)(nil)
