// Package resource is realmnet's resource manager (go-libp2p's
// network.ResourceManager): go-libp2p's rcmgr with all of its scopes and
// limits — system, transient, service, protocol, peer, connection, stream;
// memory, file descriptors, connections and streams in and out; auto-scaled
// defaults; allowlist; per-IP and per-subnet connection limits and rate
// limits; its Prometheus families, read at scrape time rather than traced
// (metrics.go) — plus realm scopes: per-realm limits on members and on inbound and outbound realm streams
// (core.RealmScopeLimits), with a default for every realm and per-realm
// overrides. The realm package charges a member when it admits it
// (ReserveRealmMember) and an application realm stream when it opens or
// dispatches it (ReserveRealmStream). Memory stays rcmgr's: realm streams
// are charged to rcmgr's stream, protocol and peer scopes like any other.
package resource

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/x/rate"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/realmnet/realmnet/core"
)

// RealmConfig holds the realm limits: Default for every realm (zero fields:
// unlimited), Realm for overrides by realm ID (zero fields: the default's).
type RealmConfig struct {
	Default core.RealmScopeLimits
	Realm   map[core.RealmID]core.RealmScopeLimits `json:",omitempty"`
}

// Config is the resource manager's configuration: rcmgr's
// PartialLimitConfig (same JSON: "System", "Transient", "ServiceDefault",
// "Peer", ...; unset values take rcmgr's auto-scaled defaults) plus a
// "Realms" section.
type Config struct {
	rcmgr.PartialLimitConfig
	Realms RealmConfig `json:",omitempty"`
	// ConnRateLimiter limits the rate of new direct connections per
	// source network; nil means go-libp2p rcmgr's default
	// (DefaultConnRateLimiter). Relayed connections are not rate limited
	// by IP (see Manager.OpenConnection). Not in JSON.
	ConnRateLimiter *rate.Limiter `json:"-"`
}

// DefaultConnRateLimiter returns go-libp2p rcmgr's default connection
// rate limiter (p2p/host/resource-manager/conn_rate_limiter.go, v0.52):
// per IPv4 address and per IPv6 /56, a burst of 16 then 0.2 per second;
// per IPv6 /48, a burst of 80 then 0.5 per second; loopback unlimited.
func DefaultConnRateLimiter() *rate.Limiter {
	const maxConcurrentConns = 8 // rcmgr's defaultMaxConcurrentConns
	return &rate.Limiter{
		NetworkPrefixLimits: []rate.PrefixLimit{
			{Prefix: netip.MustParsePrefix("127.0.0.0/8"), Limit: rate.Limit{}},
			{Prefix: netip.MustParsePrefix("::1/128"), Limit: rate.Limit{}},
		},
		SubnetRateLimiter: rate.SubnetLimiter{
			IPv4SubnetLimits: []rate.SubnetLimit{{PrefixLength: 32, Limit: rate.Limit{RPS: 0.2, Burst: 2 * maxConcurrentConns}}},
			IPv6SubnetLimits: []rate.SubnetLimit{
				{PrefixLength: 56, Limit: rate.Limit{RPS: 0.2, Burst: 2 * maxConcurrentConns}},
				{PrefixLength: 48, Limit: rate.Limit{RPS: 0.5, Burst: 10 * maxConcurrentConns}},
			},
			GracePeriod: time.Minute,
		},
	}
}

// maxConfigSize caps LoadConfig's input.
const maxConfigSize = 1 << 20

// LoadConfig reads a JSON Config, at most 1 MiB; unknown fields are errors
// (a misspelt limit must not be silently ignored). Errors say what is wrong
// and where.
func LoadConfig(r io.Reader) (Config, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxConfigSize+1))
	if err != nil {
		return Config{}, fmt.Errorf("resource: read config: %w", err)
	}
	if len(data) > maxConfigSize {
		return Config{}, fmt.Errorf("resource: config is larger than %d bytes", maxConfigSize)
	}
	var cfg Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return Config{}, fmt.Errorf("resource: parse config: %w", err)
	}
	if err := cfg.Realms.validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate returns an error naming the first negative realm limit.
func (c Config) Validate() error { return c.Realms.validate() }

func (c RealmConfig) validate() error {
	check := func(what string, l core.RealmScopeLimits) error {
		switch {
		case l.Members < 0:
			return fmt.Errorf("resource: %s.Members must be >= 0, got %d", what, l.Members)
		case l.StreamsInbound < 0:
			return fmt.Errorf("resource: %s.StreamsInbound must be >= 0, got %d", what, l.StreamsInbound)
		case l.StreamsOutbound < 0:
			return fmt.Errorf("resource: %s.StreamsOutbound must be >= 0, got %d", what, l.StreamsOutbound)
		}
		return nil
	}
	if err := check("Realms.Default", c.Default); err != nil {
		return err
	}
	for id, l := range c.Realm {
		if err := check(fmt.Sprintf("Realms.Realm[%q]", id), l); err != nil {
			return err
		}
	}
	return nil
}

// The realm resources, in realmUsage order.
const (
	resMembers = iota
	resStreamsIn
	resStreamsOut
	resCount
)

var resourceNames = [resCount]string{"members", "streams_inbound", "streams_outbound"}

// realmUsage is one realm's usage by resource; guarded by Manager.mu.
type realmUsage [resCount]int64

func limitArray(l core.RealmScopeLimits) [resCount]int64 {
	return [resCount]int64{int64(l.Members), int64(l.StreamsInbound), int64(l.StreamsOutbound)}
}

// RealmStat is a snapshot of one realm's usage and its effective limits.
type RealmStat struct {
	Members, StreamsInbound, StreamsOutbound int
	Limits                                   core.RealmScopeLimits
}

// Manager implements network.ResourceManager: every method of rcmgr, plus
// realm scopes. Safe for concurrent use.
type Manager struct {
	network.ResourceManager

	mu     sync.Mutex
	realms RealmConfig
	usage  map[core.RealmID]*realmUsage

	// reg is the registerer the collector is on; nil without one.
	reg       prometheus.Registerer
	collector collector
	// limitSeries are libp2p_rcmgr_limit's values; blocked counts
	// libp2p_rcmgr_blocked_resources.
	limitSeries []limitSeries
	blocked     blockedCounts

	negotiation negotiation

	// connRate limits the rate of new direct connections (rcmgr's own
	// limiter is off: it cannot tell a relayed connection).
	connRate *rate.Limiter
}

// New creates the manager from cfg (unset rcmgr limits take the auto-scaled
// defaults, rcmgr.DefaultLimits.AutoScale()) and rcmgr options opts.
//
// rcmgr's own metrics, on by default in go-libp2p, are off
// (rcmgr.WithMetricsDisabled): they trace every scope event — 26 per
// stream opened and closed, both ends — with a formatted timestamp under a
// process-wide lock, about a fifth of a short stream's CPU time. With reg
// not nil, the Manager registers instead one collector that reads the same
// state at scrape time: go-libp2p's families libp2p_rcmgr_connections,
// _streams, _memory, _fds, _limit, _blocked_resources and the per-peer
// histograms, under go-libp2p's names, labels and buckets (its Grafana
// dashboard works unchanged; differences are listed on the collector), and
// realmnet_realm_usage{realm, resource} (resource: members,
// streams_inbound, streams_outbound). The stream path pays nothing for
// them. Close unregisters it.
//
// Errors: invalid realm limits (named), rcmgr's errors, a registration
// refused by reg (another Manager, or go-libp2p's own rcmgr metrics, on
// the same registry with the same labels).
func New(cfg Config, reg prometheus.Registerer, opts ...rcmgr.Option) (*Manager, error) {
	if err := cfg.Realms.validate(); err != nil {
		return nil, err
	}
	limits := cfg.PartialLimitConfig.Build(rcmgr.DefaultLimits.AutoScale())
	m := &Manager{realms: cfg.Realms, usage: make(map[core.RealmID]*realmUsage)}
	m.connRate = cfg.ConnRateLimiter
	if m.connRate == nil {
		m.connRate = DefaultConnRateLimiter()
	}
	opts = append([]rcmgr.Option{rcmgr.WithMetricsDisabled(), rcmgr.WithConnRateLimiters(&rate.Limiter{})}, opts...)
	if reg != nil {
		opts = append(opts, rcmgr.WithMetrics(&m.blocked))
	}
	limiter := rcmgr.NewFixedLimiter(limits)
	rm, err := rcmgr.NewResourceManager(limiter, opts...)
	if err != nil {
		return nil, fmt.Errorf("resource: create rcmgr: %w", err)
	}
	m.ResourceManager = rm
	m.negotiation.perPeer = make(map[peer.ID]int)
	m.negotiation.share = untrustedShare(limits.ToPartialLimitConfig().Transient)
	if m.realms.Realm == nil {
		m.realms.Realm = make(map[core.RealmID]core.RealmScopeLimits)
	}
	if reg != nil {
		m.limitSeries = systemLimitSeries(limiter)
		m.collector = collector{m: m}
		if err := reg.Register(m.collector); err != nil {
			_ = rm.Close()
			return nil, fmt.Errorf("resource: register metrics: %w", err)
		}
		m.reg = reg
	}
	return m, nil
}

// Close unregisters the collector, so that a closed node leaves no series
// behind in a shared registry, and closes rcmgr.
func (m *Manager) Close() error {
	if m.reg != nil {
		m.reg.Unregister(m.collector)
	}
	return m.ResourceManager.Close()
}

// OpenConnection is rcmgr's OpenConnection; a refusal is counted in
// libp2p_rcmgr_blocked_resources under the scope that refused.
//
// A relayed connection (endpoint a /p2p-circuit address) is charged
// without an IP (rcmgr's OpenConnectionNoIP) and is not rate limited:
// every circuit through a relay carries the relay's IP, so rcmgr's per-IP
// connection count (8 at once) and rate limit (a burst of 16, then one per
// 5 s) would hold a node's relayed connections through one relay — fresh
// peers reaching a private node through its relay, each a hole punch's
// start — to those of one remote host (the NAT lab's hole punching trials
// hit it at the 17th). The relay bounds its circuits (reservations,
// circuits per peer), and every other scope (system, transient, peer)
// still applies. A direct connection is rate limited per source network
// (Config.ConnRateLimiter), as rcmgr does, then charged by rcmgr.
func (m *Manager) OpenConnection(dir network.Direction, usefd bool, endpoint ma.Multiaddr) (network.ConnManagementScope, error) {
	var s network.ConnManagementScope
	var err error
	noIP, ok := m.ResourceManager.(interface {
		OpenConnectionNoIP(network.Direction, bool, ma.Multiaddr) (network.ConnManagementScope, error)
	})
	switch {
	case ok && endpoint != nil && core.IsRelayAddr(endpoint):
		s, err = noIP.OpenConnectionNoIP(dir, usefd, endpoint)
	case !m.connRate.Allow(endpointIP(endpoint)):
		err = errRateLimited
	default:
		s, err = m.ResourceManager.OpenConnection(dir, usefd, endpoint)
	}
	if err != nil {
		m.blocked.openRefused(err, dir, "connection", usefd)
	}
	return s, err
}

// errRateLimited is rcmgr's refusal by its connection rate limiter.
var errRateLimited = errors.New("rate limit exceeded")

// endpointIP is endpoint's IP as rcmgr reads it (the zero Addr when it has
// none).
func endpointIP(endpoint ma.Multiaddr) netip.Addr {
	if endpoint == nil {
		return netip.Addr{}
	}
	ip, err := manet.ToIP(endpoint)
	if err != nil {
		return netip.Addr{}
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr
}

// untrustedShare is UntrustedNegotiatingShare percent of the transient
// scope's inbound stream limit (the lower of StreamsInbound and Streams);
// 0 when the scope is unlimited (no split needed).
func untrustedShare(transient rcmgr.ResourceLimits) int {
	limit := -1
	for _, v := range []rcmgr.LimitVal{transient.StreamsInbound, transient.Streams} {
		if v >= 0 && (limit < 0 || int(v) < limit) {
			limit = int(v)
		}
	}
	if limit < 0 {
		return 0
	}
	return max(1, limit*UntrustedNegotiatingShare/100)
}

// SetRealmLimits overrides the limits of one realm (zero fields take the
// default's). The error names a negative value.
func (m *Manager) SetRealmLimits(realm core.RealmID, l core.RealmScopeLimits) error {
	if err := (RealmConfig{Default: l}).validate(); err != nil {
		return fmt.Errorf("realm %q: %w", realm, err)
	}
	m.mu.Lock()
	m.realms.Realm[realm] = l
	m.mu.Unlock()
	return nil
}

// limitsLocked is realm's effective limits.
func (m *Manager) limitsLocked(realm core.RealmID) core.RealmScopeLimits {
	l := m.realms.Default
	if o, ok := m.realms.Realm[realm]; ok {
		if o.Members != 0 {
			l.Members = o.Members
		}
		if o.StreamsInbound != 0 {
			l.StreamsInbound = o.StreamsInbound
		}
		if o.StreamsOutbound != 0 {
			l.StreamsOutbound = o.StreamsOutbound
		}
	}
	return l
}

// LimitError is the error of a refused realm reservation: it names the
// realm, the resource and the limit, and matches
// network.ErrResourceLimitExceeded.
type LimitError struct {
	Realm    core.RealmID
	Resource string
	Limit    int64
}

// Error names the realm, the resource and the limit.
func (e *LimitError) Error() string {
	return fmt.Sprintf("resource: realm %q: %s limit of %d reached", e.Realm, e.Resource, e.Limit)
}

// Unwrap returns network.ErrResourceLimitExceeded.
func (e *LimitError) Unwrap() error { return network.ErrResourceLimitExceeded }

// reserve adds delta of resource res to realm when the limit allows it.
func (m *Manager) reserve(realm core.RealmID, res int, delta int64) (func(), error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u := m.usage[realm]
	if u == nil {
		u = &realmUsage{}
		m.usage[realm] = u
	}
	if limit := limitArray(m.limitsLocked(realm))[res]; limit > 0 && u[res]+delta > limit {
		return nil, &LimitError{Realm: realm, Resource: resourceNames[res], Limit: limit}
	}
	u[res] += delta
	var once sync.Once
	return func() {
		once.Do(func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			u[res] -= delta
		})
	}, nil
}

// ReserveRealmStream charges one stream in direction dir to realm. It
// returns the function that releases it (idempotent), or a *LimitError
// matching network.ErrResourceLimitExceeded when the realm's stream limit
// for that direction is reached. dir must be inbound or outbound.
func (m *Manager) ReserveRealmStream(realm core.RealmID, dir network.Direction) (release func(), err error) {
	switch dir {
	case network.DirInbound:
		return m.reserve(realm, resStreamsIn, 1)
	case network.DirOutbound:
		return m.reserve(realm, resStreamsOut, 1)
	}
	return nil, fmt.Errorf("resource: ReserveRealmStream: direction %v is neither inbound nor outbound", dir)
}

// ReserveRealmMember charges one member to realm (the realm admitted a
// peer; one charge per member, whatever its number of connections); the
// release function is idempotent. Errors as for ReserveRealmStream: a
// *LimitError when the realm's Members limit is reached.
func (m *Manager) ReserveRealmMember(realm core.RealmID) (release func(), err error) {
	return m.reserve(realm, resMembers, 1)
}

// ViewRealm returns realm's usage and effective limits; false when the realm
// was never charged.
func (m *Manager) ViewRealm(realm core.RealmID) (RealmStat, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u, ok := m.usage[realm]
	if !ok {
		return RealmStat{Limits: m.limitsLocked(realm)}, false
	}
	return RealmStat{Members: int(u[resMembers]), StreamsInbound: int(u[resStreamsIn]), StreamsOutbound: int(u[resStreamsOut]),
		Limits: m.limitsLocked(realm)}, true
}

// Stat is the realm usage next to rcmgr's own scopes.
type Stat struct {
	// Rcmgr is rcmgr's snapshot (system, transient, services, protocols,
	// peers), when the wrapped manager provides one.
	Rcmgr rcmgr.ResourceManagerStat
	// Realms is every realm ever charged.
	Realms map[core.RealmID]RealmStat
}

// Stat returns the usage of every scope and realm.
func (m *Manager) Stat() Stat {
	var st Stat
	if s, ok := m.ResourceManager.(rcmgr.ResourceManagerState); ok {
		st.Rcmgr = s.Stat()
	}
	m.mu.Lock()
	ids := make([]core.RealmID, 0, len(m.usage))
	for id := range m.usage {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	st.Realms = make(map[core.RealmID]RealmStat, len(ids))
	for _, id := range ids {
		st.Realms[id], _ = m.ViewRealm(id)
	}
	return st
}

// GetConnLimit is rcmgr's system connection limit (core/connmgr's
// GetConnLimiter, used by the connection manager's CheckLimit).
func (m *Manager) GetConnLimit() int {
	if l, ok := m.ResourceManager.(connmgr.GetConnLimiter); ok {
		return l.GetConnLimit()
	}
	return math.MaxInt
}
