// Package connmgr is realmnet's connection manager: layered pools of
// connections — a global pool of every connection, one sub-pool per realm,
// and an unassigned pool of connections to peers in no realm — with
// go-libp2p's tags, protection, grace and silence periods, decaying tags,
// and multipath-aware trimming. It implements go-libp2p's
// core/connmgr.ConnManager and connmgr.Decayer, so kad-dht and every libp2p
// protocol use it unchanged.
//
// Counting is per connection: a peer with three paths counts three times,
// in the global pool and in each of its realms. Victim order in every trim:
// redundant paths first (a peer's non-selected paths, asked of the path
// selector), then unassigned connections, then peers by ascending score,
// ties broken torrent-style. Protected peers and connections inside their
// grace period are never trimmed (past the global ceiling, HighWater + 10 %,
// the grace period no longer holds). See docs/connection-management.md.
//
// The Manager is the pools stage of the swarm's admission pipeline
// (core.AdmissionStage): a connection is counted, or refused at the ceiling,
// before it is announced; its notifiee only forgets closed connections.
package connmgr

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/benbjohnson/clock"
	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/eventqueue"
)

var log = logging.Logger("realmnet/connmgr")

// PathSelector says which of a peer's connections is its selected path,
// without side effects (it is asked during trims, under the trim lock and
// the peer table's locks: it must not call the Manager); the multipath
// manager implements it. nil means "no opinion".
type PathSelector interface {
	SelectedPath(p peer.ID, conns []network.Conn) network.Conn
}

// segmentCount is the number of lock shards of the peer table, a power of
// two. go-libp2p's BasicConnMgr uses 256; each shard's map costs a 208-byte
// group as soon as it holds one peer, which at 200 peers spread over 256
// shards was 175 bytes per peer (memory per connection,
// docs/performance.md); 64 shards hold three peers each there, and still
// keep 16 concurrent taggers apart (BenchmarkLockContention).
const segmentCount = 64

type segment struct {
	sync.Mutex
	peers map[peer.ID]*peerInfo
}

// peerInfo is one peer's entry; guarded by its segment's lock.
type peerInfo struct {
	id        peer.ID
	firstSeen int64                                   // unix nanoseconds of the manager's clock
	temp      bool                                    // tags only, no connection yet: expires after the grace period
	tags      map[string]int                          // nil until tagged
	decaying  map[*decayingTag]*connmgr.DecayingValue // nil until bumped
	value     int                                     // sum of tags and decaying tags
	conns     []*connInfo                             // at most MaxConnsPerPeer: a slice beats a map
	realms    []*realmPool
	// authenticated is set once the peer has been assigned to a realm.
	authenticated bool
	// active is when one of the peer's connections last carried traffic,
	// unix nanoseconds of the manager's clock; math.MinInt64 for never.
	// The manager's times are kept as int64 (8 bytes, not a time.Time's
	// 24): there is one peerInfo per peer and one connInfo per connection
	// (memory per connection, docs/performance.md).
	active int64
	// keep and keepEpoch cache, during one trim, the path the selector
	// keeps (trims only: trimMu and index.mu held).
	keep      *connInfo
	keepEpoch uint64
}

// setTag sets tag to value, making the tags map on first use (most peers
// are never tagged); the peer's segment is locked.
func (pi *peerInfo) setTag(tag string, value int) {
	if pi.tags == nil {
		pi.tags = make(map[string]int)
	}
	pi.tags[tag] = value
}

// connInfo is what the manager knows of one connection.
type connInfo struct {
	// opened and lastActive lead and share a cache line: a trim reads
	// them through the index (opened for rows its column puts inside the
	// grace period, lastActive for the candidates it orders). Both are
	// unix nanoseconds of the manager's clock.
	opened int64
	// lastActive is when the connection last carried traffic (activity
	// sampling, below).
	lastActive int64
	conn       core.Conn
	peer       *peerInfo
	inbound    bool
	// statOpened is conn.Stat().Opened at admission, unix nanoseconds: the
	// default path selection keeps the newest.
	statOpened int64
	// seg is the peer's segment. slot is the connection's row in the
	// index (index.mu); removed is set, under the segment lock, when the
	// connection is no longer accounted (a trim reads it without).
	seg     *segment
	slot    int32
	removed atomic.Bool
	// Activity sampling (background loop): streams opened, bytes moved,
	// and bytes per second over the last sample.
	streams, bytes uint64
	throughput     float64
}

// realmPool is one realm's sub-pool.
type realmPool struct {
	id     core.RealmID
	pool   core.Pool // core.RealmPool(id)
	count  atomic.Int64
	limits atomic.Pointer[core.PoolLimits]
	trims  atomic.Uint64
}

// Manager is realmnet's connection manager. Create it with New; it is safe
// for concurrent use; Close stops its background goroutines.
type Manager struct {
	cfg      Config
	clock    clock.Clock
	selector atomic.Pointer[PathSelector]
	events   *eventqueue.Queue // nil without an event bus

	segments [segmentCount]segment

	protectedMu sync.RWMutex
	protected   map[peer.ID]map[string]struct{}

	realmsMu sync.RWMutex
	realms   map[core.RealmID]*realmPool

	global, unassigned atomic.Int64

	index connIndex

	// trimMu serialises trims; victimBuffer and keyBuffer are reused by them,
	// trimEvents collects their events, emitted by unlockTrim.
	trimMu       sync.Mutex
	victimBuffer []*connInfo
	keyBuffer    []sortKey
	trimEvents   []EvtConnTrimmed
	trimEpoch    uint64        // selections so far, for peerInfo.keepEpoch
	fullTrims    atomic.Uint64 // TrimOpenConns runs, for coalescing
	trimCount    atomic.Uint64
	lastTrim     atomic.Int64 // unix nanoseconds

	stats statsCounters

	decayer *decayer

	trigger chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

var (
	_ connmgr.ConnManager = (*Manager)(nil)
	_ connmgr.Decayer     = (*Manager)(nil)
	_ core.AdmissionStage = (*Manager)(nil)
	_ core.PoolReporter   = (*Manager)(nil)
)

// ErrPoolFull is matched (errors.Is) by the refusal of a connection at
// admission: the global pool was at its ceiling and nothing cheaper could
// be closed, or the peer already had MaxConnsPerPeer connections. The
// refusal itself is a *core.RefusedError naming the reason.
var ErrPoolFull = errors.New("connmgr: connection pool full")

// Option configures a Manager beyond its Config.
type Option func(*Manager)

// WithClock makes the manager read time from c (github.com/benbjohnson/clock,
// as go-libp2p's BasicConnMgr WithClock): grace and silence periods, the
// background loop, activity, decaying tags. Tests pass a mock clock to move
// time without sleeping.
func WithClock(c clock.Clock) Option { return func(m *Manager) { m.clock = c } }

// New creates a manager and starts its background loop. bus, when not nil,
// receives EvtConnTrimmed events. It returns an error naming a bad Config
// field.
func New(cfg Config, bus event.Bus, opts ...Option) (*Manager, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:       cfg,
		clock:     clock.New(),
		protected: make(map[peer.ID]map[string]struct{}),
		realms:    make(map[core.RealmID]*realmPool),
		trigger:   make(chan struct{}, 1),
	}
	for _, opt := range opts {
		opt(m)
	}
	for i := range m.segments {
		m.segments[i].peers = make(map[peer.ID]*peerInfo)
	}
	if bus != nil {
		if m.events, err = eventqueue.New(bus, new(EvtConnTrimmed)); err != nil {
			return nil, fmt.Errorf("connmgr: %w", err)
		}
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.decayer = newDecayer(m)
	m.wg.Add(2)
	go m.background()
	go m.decayer.run(&m.wg)
	return m, nil
}

// SetPathSelector sets who says which path of a peer is selected; trims
// close the other paths first. Without one, a peer's newest connection
// counts as selected.
func (m *Manager) SetPathSelector(s PathSelector) {
	if s == nil {
		m.selector.Store(nil)
		return
	}
	m.selector.Store(&s)
}

// Config returns the effective configuration.
func (m *Manager) Config() Config { return m.cfg }

// Close stops the background loop and the decayer and waits for them. It
// closes no connection. Idempotent.
// EventsDropped returns how many trim events were dropped because a
// subscriber did not keep up (the event queue holds at most 4096); 0
// without an event bus. Safe for concurrent use.
func (m *Manager) EventsDropped() uint64 {
	if m.events == nil {
		return 0
	}
	return m.events.Dropped()
}

func (m *Manager) Close() error {
	m.cancel()
	m.wg.Wait()
	if m.events != nil {
		m.events.Close()
	}
	return nil
}

func (m *Manager) segment(p peer.ID) *segment {
	if p == "" {
		return &m.segments[0]
	}
	return &m.segments[p[len(p)-1]%segmentCount]
}

// entry returns p's entry, creating a temporary one; the segment is locked.
func (m *Manager) entry(s *segment, p peer.ID) *peerInfo {
	pi := s.peers[p]
	if pi == nil {
		pi = &peerInfo{
			id:        p,
			firstSeen: m.clock.Now().UnixNano(),
			temp:      true,
			active:    math.MinInt64,
		}
		s.peers[p] = pi
	}
	return pi
}

// TagPeer sets tag on p to value (go-libp2p semantics: the peer's score is
// the sum of its tags). Tags on a peer without connections are kept until
// its grace period has passed without a connection.
func (m *Manager) TagPeer(p peer.ID, tag string, value int) {
	s := m.segment(p)
	s.Lock()
	defer s.Unlock()
	pi := m.entry(s, p)
	pi.value += value - pi.tags[tag]
	pi.setTag(tag, value)
	m.peerChangedLocked(pi)
}

// withPeer calls f with p's entry under its segment lock; f is not called
// for an unknown peer.
func (m *Manager) withPeer(p peer.ID, f func(pi *peerInfo)) {
	s := m.segment(p)
	s.Lock()
	defer s.Unlock()
	if pi := s.peers[p]; pi != nil {
		f(pi)
	}
}

// UntagPeer removes tag from p.
func (m *Manager) UntagPeer(p peer.ID, tag string) {
	m.withPeer(p, func(pi *peerInfo) {
		pi.value -= pi.tags[tag]
		delete(pi.tags, tag)
		m.peerChangedLocked(pi)
	})
}

// UpsertTag sets tag on p to upsert(current value; 0 when absent).
func (m *Manager) UpsertTag(p peer.ID, tag string, upsert func(int) int) {
	s := m.segment(p)
	s.Lock()
	defer s.Unlock()
	pi := m.entry(s, p)
	old := pi.tags[tag]
	v := upsert(old)
	pi.setTag(tag, v)
	pi.value += v - old
	m.peerChangedLocked(pi)
}

// GetTagInfo returns p's tags (decaying tags included), score and
// connections (by remote address), or nil for an unknown peer.
func (m *Manager) GetTagInfo(p peer.ID) *connmgr.TagInfo {
	s := m.segment(p)
	s.Lock()
	defer s.Unlock()
	pi := s.peers[p]
	if pi == nil {
		return nil
	}
	out := &connmgr.TagInfo{
		FirstSeen: time.Unix(0, pi.firstSeen),
		Value:     pi.value,
		Tags:      make(map[string]int, len(pi.tags)+len(pi.decaying)),
		Conns:     make(map[string]time.Time, len(pi.conns)),
	}
	for t, v := range pi.tags {
		out.Tags[t] = v
	}
	for t, v := range pi.decaying {
		out.Tags[t.name] = v.Value
	}
	for _, ci := range pi.conns {
		out.Conns[ci.conn.RemoteMultiaddr().String()] = time.Unix(0, ci.opened)
	}
	return out
}

// Protect protects p from trimming under tag. Tags are idempotent, not
// counted (go-libp2p semantics).
func (m *Manager) Protect(p peer.ID, tag string) {
	m.protectedMu.Lock()
	defer m.protectedMu.Unlock()
	tags := m.protected[p]
	if tags == nil {
		tags = make(map[string]struct{}, 2)
		m.protected[p] = tags
	}
	tags[tag] = struct{}{}
}

// Unprotect removes tag's protection of p and reports whether other tags
// still protect it.
func (m *Manager) Unprotect(p peer.ID, tag string) bool {
	m.protectedMu.Lock()
	defer m.protectedMu.Unlock()
	tags := m.protected[p]
	if tags == nil {
		return false
	}
	delete(tags, tag)
	if len(tags) == 0 {
		delete(m.protected, p)
		return false
	}
	return true
}

// IsProtected reports whether p is protected by tag; tag "" means any tag.
func (m *Manager) IsProtected(p peer.ID, tag string) bool {
	m.protectedMu.RLock()
	defer m.protectedMu.RUnlock()
	tags := m.protected[p]
	if tags == nil {
		return false
	}
	if tag == "" {
		return true
	}
	_, ok := tags[tag]
	return ok
}

// CheckLimit returns an error naming the numbers when the pool's ceiling
// (HighWater + 10 %, the most connections it admits) exceeds the resource
// manager's system connection limit (go-libp2p issue #1640: the resource
// manager would refuse connections the manager still wants, protected peers
// included).
func (m *Manager) CheckLimit(l connmgr.GetConnLimiter) error {
	if limit := l.GetConnLimit(); m.cfg.ceiling() > limit {
		return fmt.Errorf("connmgr: HighWater %d (ceiling %d) exceeds the resource manager's system connection limit %d",
			m.cfg.HighWater, m.cfg.ceiling(), limit)
	}
	return nil
}

// AdmitConn is the pools stage of the swarm's admission pipeline
// (core.AdmissionStage): it accounts a new connection in the global pool and
// in its peer's pools before the connection is announced, so the global
// count never exceeds the ceiling (HighWater + 10 %). At the ceiling it trims
// at once — first ordinarily, then, if the pool is still full, also
// connections inside their grace period (never protected ones), the new
// connection included. Among equals the new connection yields: it gets in
// only by displacing something cheaper (a redundant path, a peer of lower
// class or score), so a full pool refuses newcomers instead of churning.
// The error, when c must be closed instead, is a *core.RefusedError
// matching ErrPoolFull: ReasonMaxConnsPerPeer (the peer has
// MaxConnsPerPeer connections) or ReasonPoolCeiling (c was the cheapest
// connection). Calling it twice for one connection is harmless.
func (m *Manager) AdmitConn(_ context.Context, c core.Conn) error {
	switch m.precheck(c) {
	case alreadyKnown:
		return nil
	case refused:
		return m.refusal(c, core.ReasonMaxConnsPerPeer)
	}
	for {
		cur := m.global.Load()
		if int(cur) < m.cfg.ceiling() {
			if !m.global.CompareAndSwap(cur, cur+1) {
				continue
			}
			added, over := m.account(c)
			if added != admitted {
				m.global.Add(-1)
			}
			if over {
				m.triggerTrim()
			}
			if added == refused {
				return m.refusal(c, core.ReasonMaxConnsPerPeer)
			}
			return nil
		}
		if !m.admitAtCeiling(c) {
			return m.refusal(c, core.ReasonPoolCeiling)
		}
		return nil
	}
}

// refusal builds AdmitConn's error.
func (m *Manager) refusal(c core.Conn, reason core.CloseReason) error {
	err := fmt.Errorf("%w: global pool at %d of ceiling %d", ErrPoolFull, m.global.Load(), m.cfg.ceiling())
	if reason == core.ReasonMaxConnsPerPeer {
		err = fmt.Errorf("%w: peer has MaxConnsPerPeer=%d connections", ErrPoolFull, m.cfg.MaxConnsPerPeer)
	}
	return &core.RefusedError{Stage: core.StagePools, Reason: reason, Code: network.ConnGarbageCollected,
		Peer: c.RemotePeer(), Err: err}
}

// AbortConn forgets a connection AdmitConn counted that a later stage of the
// pipeline refused.
func (m *Manager) AbortConn(c core.Conn) { m.forget(c) }

// precheck tells, before any count moves, whether c is known already or
// its peer is full (MaxConnsPerPeer); admitted means "go on". The checks are
// repeated under the same lock by account.
func (m *Manager) precheck(c core.Conn) accountResult {
	p := c.RemotePeer()
	s := m.segment(p)
	s.Lock()
	defer s.Unlock()
	pi := s.peers[p]
	switch {
	case pi == nil:
		return admitted
	case pi.find(c) >= 0:
		return alreadyKnown
	case len(pi.conns) >= m.cfg.MaxConnsPerPeer:
		m.stats.refused.Add(1)
		return refused
	}
	return admitted
}

// accountResult says what account did.
type accountResult int

const (
	admitted accountResult = iota
	alreadyKnown
	refused
)

// admitAtCeiling makes room for c under the trim lock: an ordinary trim
// first, then trims that ignore the grace period, until a slot is reserved.
// Other admissions take freed slots concurrently (without the lock), so the
// slot is reserved with compare-and-swap like on the fast path. When nothing
// can be closed (every candidate is protected), c is admitted above the
// ceiling: protection wins.
func (m *Manager) admitAtCeiling(c core.Conn) bool {
	m.trimMu.Lock()
	ordinaryDone := false
	for {
		cur := m.global.Load()
		if int(cur) < m.cfg.ceiling() {
			if m.global.CompareAndSwap(cur, cur+1) {
				break
			}
			continue
		}
		if !ordinaryDone {
			ordinaryDone = true
			m.trimLocked(scopeGlobal, nil, m.needGlobal(), false, core.ReasonPoolCeiling, nil)
			continue
		}
		res := m.trimLocked(scopeGlobal, nil, int(cur)-m.cfg.ceiling()+1, true, core.ReasonPoolCeiling, c)
		if res.newcomer {
			m.unlockTrim()
			m.stats.refused.Add(1)
			return false
		}
		if res.closed == 0 {
			m.global.Add(1)
			break
		}
	}
	added, over := m.account(c)
	if added != admitted {
		m.global.Add(-1)
	}
	m.unlockTrim()
	if over {
		m.triggerTrim()
	}
	return added != refused
}

// account adds c to its peer's entry and pools (not to the global count),
// under one segment lock. It also reports whether the unassigned pool or one
// of the peer's realms is now above its HighWater (an immediate trim is due).
func (m *Manager) account(c core.Conn) (accountResult, bool) {
	p := c.RemotePeer()
	s := m.segment(p)
	s.Lock()
	defer s.Unlock()
	pi := m.entry(s, p)
	if pi.find(c) >= 0 {
		return alreadyKnown, false
	}
	if len(pi.conns) >= m.cfg.MaxConnsPerPeer {
		m.stats.refused.Add(1)
		return refused, false
	}
	now := m.clock.Now().UnixNano()
	if pi.temp {
		pi.temp = false
		pi.firstSeen = now
	}
	stat := c.Stat()
	ci := &connInfo{conn: c, peer: pi, seg: s, opened: now, lastActive: now,
		inbound: stat.Direction == network.DirInbound, statOpened: stat.Opened.UnixNano()}
	m.index.mu.Lock()
	pi.conns = append(pi.conns, ci)
	m.index.add(ci)
	m.index.refresh(pi, m.cfg.RealmWeight)
	m.index.mu.Unlock()
	if len(pi.realms) == 0 {
		return admitted, m.unassigned.Add(1) > int64(m.cfg.Unassigned.HighWater)
	}
	over := false
	for _, rp := range pi.realms {
		over = rp.count.Add(1) > int64(rp.limits.Load().HighWater) || over
	}
	return admitted, over
}

// forget removes c from the accounting; it reports whether c was known.
func (m *Manager) forget(c network.Conn) bool {
	p := c.RemotePeer()
	s := m.segment(p)
	s.Lock()
	defer s.Unlock()
	pi := s.peers[p]
	if pi == nil {
		return false
	}
	i := pi.find(c)
	if i < 0 {
		return false
	}
	m.unaccountLocked(pi, i)
	m.forgottenLocked(pi)
	return true
}

// forgetInfo removes ci from the accounting, as forget does by connection;
// it reports whether ci was still accounted.
func (m *Manager) forgetInfo(ci *connInfo) bool {
	s := ci.seg
	s.Lock()
	defer s.Unlock()
	if ci.removed.Load() {
		return false
	}
	m.unaccountLocked(ci.peer, slices.Index(ci.peer.conns, ci))
	m.forgottenLocked(ci.peer)
	return true
}

// forgottenLocked makes pi temporary when its last connection went; the
// segment is locked.
func (m *Manager) forgottenLocked(pi *peerInfo) {
	if len(pi.conns) == 0 {
		// Keep the entry (tags, realms) as a temporary one: it expires
		// after the grace period unless the peer connects again.
		pi.temp = true
		pi.firstSeen = m.clock.Now().UnixNano()
	}
}

// find returns the index of c in pi.conns, or -1.
func (pi *peerInfo) find(c network.Conn) int {
	for i, ci := range pi.conns {
		if ci.conn == c {
			return i
		}
	}
	return -1
}

// unaccountLocked removes connection i from pi and every count; the segment
// is locked.
func (m *Manager) unaccountLocked(pi *peerInfo, i int) {
	last := len(pi.conns) - 1
	ci := pi.conns[i]
	ci.removed.Store(true)
	m.index.mu.Lock()
	pi.conns[i] = pi.conns[last]
	pi.conns[last] = nil
	pi.conns = pi.conns[:last]
	m.index.remove(ci)
	m.index.refresh(pi, m.cfg.RealmWeight)
	m.index.mu.Unlock()
	m.global.Add(-1)
	if len(pi.realms) == 0 {
		m.unassigned.Add(-1)
	}
	for _, rp := range pi.realms {
		rp.count.Add(-1)
	}
}

// Notifee returns the network.Notifiee the swarm notifies: Disconnected
// forgets the connection. Connections are counted by AdmitConn, before they
// are announced; Connected has nothing left to do.
func (m *Manager) Notifee() network.Notifiee { return (*notifee)(m) }

type notifee Manager

func (n *notifee) Listen(network.Network, ma.Multiaddr)      {}
func (n *notifee) ListenClose(network.Network, ma.Multiaddr) {}

func (n *notifee) Connected(network.Network, network.Conn) {}

func (n *notifee) Disconnected(_ network.Network, c network.Conn) {
	(*Manager)(n).forget(c)
}

// realm returns the pool of r, creating it with the default limits.
func (m *Manager) realm(r core.RealmID) *realmPool {
	m.realmsMu.RLock()
	rp := m.realms[r]
	m.realmsMu.RUnlock()
	if rp != nil {
		return rp
	}
	m.realmsMu.Lock()
	defer m.realmsMu.Unlock()
	if rp = m.realms[r]; rp == nil {
		rp = &realmPool{id: r, pool: core.RealmPool(r)}
		limits := m.cfg.RealmDefaults
		rp.limits.Store(&limits)
		m.realms[r] = rp
	}
	return rp
}

// SetRealmLimits sets the watermarks of realm r's sub-pool. The error names
// a bad value.
func (m *Manager) SetRealmLimits(r core.RealmID, l core.PoolLimits) error {
	if err := checkLimits(fmt.Sprintf("RealmLimits of realm %q", r), l); err != nil {
		return err
	}
	m.realm(r).limits.Store(&l)
	m.triggerTrim()
	return nil
}

// RealmLimitsOf returns the watermarks of realm r.
func (m *Manager) RealmLimitsOf(r core.RealmID) core.PoolLimits { return *m.realm(r).limits.Load() }

// AssignRealm puts p, and its connections, into realm r's sub-pool: the
// realm package calls it when p authenticates as a member. A peer may be in
// several realms; it then counts in each. p's score gains RealmWeight.
func (m *Manager) AssignRealm(p peer.ID, r core.RealmID) {
	rp := m.realm(r)
	s := m.segment(p)
	s.Lock()
	pi := m.entry(s, p)
	for _, have := range pi.realms {
		if have == rp {
			s.Unlock()
			return
		}
	}
	n := int64(len(pi.conns))
	if len(pi.realms) == 0 {
		m.unassigned.Add(-n)
	}
	m.index.mu.Lock()
	pi.realms = append(pi.realms, rp)
	pi.authenticated = true
	m.index.refresh(pi, m.cfg.RealmWeight)
	m.index.mu.Unlock()
	rp.count.Add(n)
	over := rp.count.Load() > int64(rp.limits.Load().HighWater)
	s.Unlock()
	if over {
		m.triggerTrim()
	}
}

// UnassignRealm takes p out of realm r's sub-pool (the member left).
func (m *Manager) UnassignRealm(p peer.ID, r core.RealmID) {
	m.realmsMu.RLock()
	rp := m.realms[r]
	m.realmsMu.RUnlock()
	if rp == nil {
		return
	}
	m.withPeer(p, func(pi *peerInfo) {
		i := slices.Index(pi.realms, rp)
		if i < 0 {
			return
		}
		m.index.mu.Lock()
		pi.realms = slices.Delete(slices.Clone(pi.realms), i, i+1)
		m.index.refresh(pi, m.cfg.RealmWeight)
		m.index.mu.Unlock()
		n := int64(len(pi.conns))
		rp.count.Add(-n)
		if len(pi.realms) == 0 && m.unassigned.Add(n) > int64(m.cfg.Unassigned.HighWater) {
			m.triggerTrim()
		}
	})
}

// Realms returns the realms p is assigned to.
func (m *Manager) Realms(p peer.ID) []core.RealmID {
	var out []core.RealmID
	m.withPeer(p, func(pi *peerInfo) {
		for _, rp := range pi.realms {
			out = append(out, rp.id)
		}
	})
	return out
}

// PoolsOf implements core.PoolReporter: p's pools besides core.PoolGlobal
// — core.PoolUnassigned, or the sub-pool of each realm p is assigned to.
// The swarm puts it in swarm.EvtConnectionOpened.
func (m *Manager) PoolsOf(p peer.ID) []core.Pool {
	out := []core.Pool{core.PoolUnassigned}
	m.withPeer(p, func(pi *peerInfo) {
		if len(pi.realms) == 0 {
			return
		}
		out = out[:0]
		for _, rp := range pi.realms {
			out = append(out, rp.pool)
		}
	})
	return out
}

// Connections returns every connection (path) to p the manager accounts.
func (m *Manager) Connections(p peer.ID) []network.Conn {
	var out []network.Conn
	m.withPeer(p, func(pi *peerInfo) {
		for _, ci := range pi.conns {
			out = append(out, ci.conn)
		}
	})
	return out
}

// Connection returns p's selected path (asked of the path selector), or
// nil when p has no connection.
func (m *Manager) Connection(p peer.ID) network.Conn {
	conns := m.Connections(p)
	if len(conns) == 0 {
		return nil
	}
	return m.selected(p, conns)
}

// selected asks the path selector; without one, the newest connection.
func (m *Manager) selected(p peer.ID, conns []network.Conn) network.Conn {
	if sel := m.selector.Load(); sel != nil {
		if c := (*sel).SelectedPath(p, conns); c != nil {
			return c
		}
	}
	newest := conns[0]
	for _, c := range conns[1:] {
		if c.Stat().Opened.After(newest.Stat().Opened) {
			newest = c
		}
	}
	return newest
}

// ConnectionsMap returns every accounted connection, by peer.
func (m *Manager) ConnectionsMap() map[peer.ID][]network.Conn {
	out := make(map[peer.ID][]network.Conn)
	for i := range m.segments {
		s := &m.segments[i]
		s.Lock()
		for p, pi := range s.peers {
			for _, ci := range pi.conns {
				out[p] = append(out[p], ci.conn)
			}
		}
		s.Unlock()
	}
	return out
}

// RealmConnections returns the connections of realm r's sub-pool.
func (m *Manager) RealmConnections(r core.RealmID) []network.Conn {
	m.realmsMu.RLock()
	rp := m.realms[r]
	m.realmsMu.RUnlock()
	if rp == nil {
		return nil
	}
	var out []network.Conn
	for i := range m.segments {
		s := &m.segments[i]
		s.Lock()
		for _, pi := range s.peers {
			for _, have := range pi.realms {
				if have == rp {
					for _, ci := range pi.conns {
						out = append(out, ci.conn)
					}
					break
				}
			}
		}
		s.Unlock()
	}
	return out
}

// ConnectionCount returns the global pool's count (every connection).
func (m *Manager) ConnectionCount() int { return int(m.global.Load()) }

func (m *Manager) triggerTrim() {
	select {
	case m.trigger <- struct{}{}:
	default:
	}
}

// unlockTrim releases trimMu, then queues the events the trims collected
// (internal/eventqueue delivers them from its own goroutine): an event bus
// subscriber that is slow, or that reacts by connecting, must not stall
// admissions — which run under the swarm's per-peer admission lock — nor
// trims.
func (m *Manager) unlockTrim() {
	events := m.trimEvents
	m.trimEvents = nil
	m.trimMu.Unlock()
	if m.events == nil {
		return
	}
	for _, e := range events {
		m.events.Push(e)
	}
}
