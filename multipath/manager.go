// Package multipath owns the set of connections (paths) to each peer: it
// heartbeats every path on its own, measures RTT and loss, marks paths
// validating, active, standby, degraded or dead, opens standby paths, and
// picks the path for every new stream (best, round_robin, least_loaded or a
// user function). The Manager is the swarm's path admission stage
// (core.AdmissionStage: redundant connections and MaxPaths are decided
// before a connection is announced), its core.PathSelector and a
// network.Notifiee; it never imports the swarm, it talks to it through the
// Dialer interface.
//
// Heartbeats are QUIC DATAGRAM frames sent on that exact connection: the
// frame is ack-eliciting (RFC 9221 §5.2), so the peer's QUIC stack — any
// go-libp2p peer's, which negotiates datagrams and never reads them —
// acknowledges it, and the ACK is the answer and quic-go's RTT sample
// (RFC 9002 §5). A connection that did not negotiate datagrams is
// heartbeated with go-libp2p's ping protocol (/ipfs/ping/1.0.0) on one
// long-lived stream. Defaults and their sources: docs/multipath.md.
package multipath

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/benbjohnson/clock"
	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/eventqueue"
)

var log = logging.Logger("realmnet/multipath")

// Connection error codes the manager closes paths with. They lie in the
// application range, outside go-libp2p's 0x1000–0x10ff codes.
const (
	// ErrorCodePathDead: no heartbeat answer for PathIdleTimeout.
	ErrorCodePathDead network.ConnErrorCode = 0x52_4d_00_01
	// ErrorCodePathRedundant: another connection uses the same pair of
	// addresses and survives this one (see Manager.AdmitConn).
	ErrorCodePathRedundant network.ConnErrorCode = 0x52_4d_00_02
	// ErrorCodeTooManyPaths: the peer already has MaxPaths paths.
	ErrorCodeTooManyPaths network.ConnErrorCode = 0x52_4d_00_03
	// ErrorCodeRelayedPathReplaced: a direct path to the peer is
	// confirmed and Config.RelayedPaths is RelayedPathsClose.
	ErrorCodeRelayedPathReplaced network.ConnErrorCode = 0x52_4d_00_04
)

// redundantDrain bounds how long a redundant connection that this node
// dialed may finish its streams before this node closes it: in-flight
// requests on it (identify, a DHT query) usually end within milliseconds,
// and long-lived streams are moved to the survivor by their owners'
// retries.
const redundantDrain = 5 * time.Second

// pathDialTimeout bounds the dial of one standby path.
const pathDialTimeout = 5 * time.Second

// redialAfter is how long discovery leaves alone an address whose dial
// failed or whose path was refused.
const redialAfter = 30 * time.Second

// Dialer is what the manager needs of the swarm.
type Dialer interface {
	// DialPath opens an additional connection to p at addr.
	DialPath(ctx context.Context, p peer.ID, addr ma.Multiaddr) (network.Conn, error)
	// CanDial reports whether addr is dialable.
	CanDial(p peer.ID, addr ma.Multiaddr) bool
	// Peerstore holds the peers' known addresses.
	Peerstore() peerstore.Peerstore
	// LocalPeer is this node's peer ID.
	LocalPeer() peer.ID
}

// peerPaths is the manager's state for one peer; guarded by Manager.mu.
type peerPaths struct {
	paths []*path // in order of arrival
	// ranked holds the non-dead paths, StrategyBest's choice first.
	ranked   []*path
	selected *path

	strategy    Strategy // "" means the node default
	selectFunc  SelectFunc
	roundRobin  atomic.Uint64
	discovering bool
	// rediscover is set when discovery was asked for while it ran; it
	// runs again when it ends.
	rediscover  bool
	failedAddrs map[string]time.Time // by address bytes; nil until one fails
	// retry runs discovery again when addresses dialed recently become
	// eligible and the peer still lacks paths.
	retry *clock.Timer
}

// addrFailed records that a dial to, or a path at, the address with bytes
// key failed at now. Manager.mu is held.
func (pp *peerPaths) addrFailed(key string, now time.Time) {
	if pp.failedAddrs == nil {
		pp.failedAddrs = make(map[string]time.Time)
	}
	pp.failedAddrs[key] = now
}

// Manager owns the paths of every peer. Create it with New, register it with
// the swarm (Notify and SetPathSelector), and Close it before the swarm.
// Safe for concurrent use.
type Manager struct {
	cfg    Config
	clock  clock.Clock
	local  peer.ID
	dialer Dialer
	events *eventqueue.Queue
	sub    event.Subscription

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.RWMutex
	closed bool
	// collecting, while AdmitConn runs, receives the events the admission
	// produces instead of the queue: they are emitted when the connection
	// is announced (Connected) and dropped if it is not (AbortConn).
	collecting *[]any
	peers      map[peer.ID]*peerPaths
	strategy   Strategy
	selectFunc SelectFunc
	// streamHeartbeats makes every path use the ping stream, datagrams
	// or not (tests and benchmarks only: export_test.go); read when a
	// heartbeat starts.
	streamHeartbeats atomic.Bool
	// probes runs the datagram heartbeats of all paths (probes.go).
	probes *probeScheduler
	// metrics holds the Prometheus counters and histograms (metrics.go).
	metrics *metrics
}

var (
	_ network.Notifiee    = (*Manager)(nil)
	_ core.AdmissionStage = (*Manager)(nil)
	_ core.PathSelector   = (*Manager)(nil)
)

// Option configures a Manager beyond its Config.
type Option func(*Manager)

// WithClock makes the manager read time from c (github.com/benbjohnson/clock,
// as go-libp2p's connection manager's WithClock): heartbeat schedules, idle
// deadlines, redial delays and drains. Tests pass a mock clock to move time
// without sleeping; network I/O deadlines stay in real time.
func WithClock(c clock.Clock) Option { return func(m *Manager) { m.clock = c } }

// New creates a manager. bus receives the path events and supplies
// event.EvtPeerIdentificationCompleted (after identify, the peer's listen
// addresses are known and standby paths are dialed). It returns an error
// naming a bad Config field.
func New(d Dialer, bus event.Bus, cfg Config, opts ...Option) (*Manager, error) {
	if d == nil {
		return nil, errors.New("multipath: New: Dialer is nil")
	}
	if bus == nil {
		return nil, errors.New("multipath: New: event bus is nil")
	}
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	q, err := eventqueue.New(bus, new(EvtPathAdded), new(EvtPathSelected), new(EvtPathDead), new(EvtPathRemoved))
	if err != nil {
		return nil, fmt.Errorf("multipath: %w", err)
	}
	sub, err := bus.Subscribe(new(event.EvtPeerIdentificationCompleted))
	if err != nil {
		q.Close()
		return nil, fmt.Errorf("multipath: subscribe to identify events: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		cfg:        cfg,
		clock:      clock.New(),
		local:      d.LocalPeer(),
		dialer:     d,
		events:     q,
		sub:        sub,
		ctx:        ctx,
		cancel:     cancel,
		peers:      make(map[peer.ID]*peerPaths),
		strategy:   cfg.Strategy,
		selectFunc: cfg.Select,
		metrics:    newMetrics(),
	}
	for _, opt := range opts {
		opt(m)
	}
	m.probes = newProbeScheduler(m)
	m.wg.Add(2)
	go m.watchIdentify()
	go m.probes.run(ctx)
	return m, nil
}

// Config returns the effective configuration.
func (m *Manager) Config() Config { return m.cfg }

// Close stops every heartbeat and discovery goroutine and waits for them.
// It closes no connection. Idempotent.
// EventsDropped returns how many path events were dropped because a
// subscriber did not keep up (the event queue holds at most 4096). Safe for
// concurrent use.
func (m *Manager) EventsDropped() uint64 { return m.events.Dropped() }

func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	for _, pp := range m.peers {
		if pp.retry != nil {
			pp.retry.Stop()
		}
	}
	m.peers = nil
	m.mu.Unlock()
	m.cancel() // stops every path's heartbeat (their contexts derive from it)
	_ = m.sub.Close()
	m.wg.Wait()
	m.events.Close()
	return nil
}

// SetStrategy sets the node-wide strategy; f is required with
// StrategyCustom. The error names an unknown strategy.
func (m *Manager) SetStrategy(s Strategy, f SelectFunc) error {
	if err := checkStrategy(s, f); err != nil {
		return err
	}
	m.mu.Lock()
	m.strategy, m.selectFunc = s, f
	m.mu.Unlock()
	return nil
}

// SetPeerStrategy overrides the strategy for p; s == "" removes the
// override. The override is kept while p has paths.
func (m *Manager) SetPeerStrategy(p peer.ID, s Strategy, f SelectFunc) error {
	if s != "" {
		if err := checkStrategy(s, f); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("multipath: manager closed")
	}
	pp := m.peer(p)
	pp.strategy, pp.selectFunc = s, f
	return nil
}

// knownPeer returns p's state, or nil when p has none or the manager is
// closed; m.mu is held.
func (m *Manager) knownPeer(p peer.ID) *peerPaths {
	if m.closed {
		return nil
	}
	return m.peers[p]
}

// peer returns p's state, creating it; m.mu must be held for writing.
func (m *Manager) peer(p peer.ID) *peerPaths {
	pp := m.peers[p]
	if pp == nil {
		pp = &peerPaths{}
		m.peers[p] = pp
	}
	return pp
}

// Paths returns snapshots of p's paths, in order of arrival, dead ones
// included until their connection is gone.
func (m *Manager) Paths(p peer.ID) []core.PathInfo {
	m.mu.RLock()
	defer m.mu.RUnlock()
	pp := m.peers[p]
	if pp == nil {
		return nil
	}
	out := make([]core.PathInfo, len(pp.paths))
	for i, pa := range pp.paths {
		out[i] = pa.info(pa == pp.selected)
	}
	return out
}

// Selected returns the path StrategyBest has selected for p; false when p
// has no usable path.
func (m *Manager) Selected(p peer.ID) (core.PathInfo, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	pp := m.peers[p]
	if pp == nil || pp.selected == nil {
		return core.PathInfo{}, false
	}
	return pp.selected.info(true), true
}

// SelectedPath returns, among conns, the connection of p's selected path
// (StrategyBest's choice), or nil. Unlike SelectPath it has no side effects:
// it does not advance round-robin or wake heartbeats. The connection manager
// asks it which paths are redundant.
func (m *Manager) SelectedPath(p peer.ID, conns []network.Conn) network.Conn {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if pp := m.peers[p]; pp != nil && pp.selected != nil && slices.Contains(conns, network.Conn(pp.selected.conn)) {
		return pp.selected.conn
	}
	return nil
}

// SelectPath implements core.PathSelector: it returns, among conns, the
// connection of the path the peer's strategy picks, or nil when none of
// them is a usable path (every one redundant or dead: the swarm then
// dials). Every connection the swarm announces passed AdmitConn, so the
// manager knows them all; after Close it returns the newest connection.
func (m *Manager) SelectPath(p peer.ID, conns []network.Conn) network.Conn {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		if len(conns) == 0 {
			return nil
		}
		return conns[len(conns)-1]
	}
	pp := m.peers[p]
	if pp == nil {
		return nil
	}
	if c := m.choose(p, pp, conns); c != nil {
		return c
	}
	// A redundant path whose survivor has just closed (its Disconnected,
	// which reinstates the path, is on its way) is usable already.
	for _, pa := range pp.paths {
		if pa.state == core.PathRedundant && pa.survivor.IsClosed() && !pa.conn.IsClosed() &&
			slices.Contains(conns, network.Conn(pa.conn)) {
			return pa.conn
		}
	}
	return nil
}

// choose applies the peer's strategy to its ranked paths that are among
// conns, and wakes the chosen path's heartbeat, which then probes at the
// busy rate at once; m.mu is held for reading.
func (m *Manager) choose(p peer.ID, pp *peerPaths, conns []network.Conn) network.Conn {
	pa := m.pick(p, pp, conns)
	if pa == nil {
		return nil
	}
	if pa.probe != nil {
		m.probes.poke(pa.probe)
	} else {
		select {
		case pa.wake <- struct{}{}:
		default:
		}
	}
	return pa.conn
}

func (m *Manager) pick(p peer.ID, pp *peerPaths, conns []network.Conn) *path {
	strategy, selectFunc := pp.strategy, pp.selectFunc
	if strategy == "" {
		strategy, selectFunc = m.strategy, m.selectFunc
	}
	if strategy == StrategyBest {
		// The stream-open hot path: the first ranked path among conns,
		// preferring any that is not degraded; no allocation.
		var degraded *path
		for _, pa := range pp.ranked {
			if !slices.Contains(conns, network.Conn(pa.conn)) {
				continue
			}
			if pa.state != core.PathDegraded {
				return pa
			}
			if degraded == nil {
				degraded = pa
			}
		}
		return degraded
	}
	usable := make([]*path, 0, len(pp.ranked))
	for _, pa := range pp.ranked {
		if slices.Contains(conns, network.Conn(pa.conn)) {
			usable = append(usable, pa)
		}
	}
	if len(usable) == 0 {
		return nil
	}
	// Degraded paths take streams only when nothing else is left.
	if firstDegraded := slices.IndexFunc(usable, func(pa *path) bool { return pa.state == core.PathDegraded }); firstDegraded > 0 {
		usable = usable[:firstDegraded]
	}
	switch strategy {
	case StrategyRoundRobin:
		return usable[(pp.roundRobin.Add(1)-1)%uint64(len(usable))]
	case StrategyLeastLoaded:
		best, load := usable[0], userStreams(usable[0].conn)
		for _, pa := range usable[1:] {
			if n := userStreams(pa.conn); n < load {
				best, load = pa, n
			}
		}
		return best
	case StrategyCustom:
		infos := make([]core.PathInfo, len(usable))
		for i, pa := range usable {
			infos[i] = pa.info(pa == pp.selected)
		}
		i := selectFunc(p, infos)
		if i < 0 || i >= len(usable) {
			i = 0
		}
		return usable[i]
	}
	return usable[0]
}

// Listen implements network.Notifiee; nothing to do.
func (m *Manager) Listen(network.Network, ma.Multiaddr) {}

// ListenClose implements network.Notifiee; nothing to do.
func (m *Manager) ListenClose(network.Network, ma.Multiaddr) {}

// AdmitConn is the path admission stage of the swarm's pipeline
// (core.AdmissionStage), run before the connection is announced, one
// connection of a peer at a time:
//
//   - Redundancy. Two connections to a peer on the same pair of addresses
//     (both ends dialed at the same moment) are one path too many. The one
//     dialed by the smaller peer ID survives; of two dialed by the same
//     side, the one with the smaller TLS exporter value (see loser). Both
//     ends compute the same rule from facts both see, so they keep the same
//     connection. When c loses, AdmitConn returns a *core.RefusedError with
//     ReasonPathRedundant and the Survivor (the swarm keeps c unannounced).
//     When an announced path loses to c, that path leaves selection at once
//     (core.PathRedundant) and, once c is announced, finishes its streams:
//     the side that dialed it closes it after 1 s without the peer's
//     streams (its own get up to 5 s), the other side after 10 s without
//     any. It is reinstated if c closes first.
//   - MaxPaths. A peer with MaxPaths live paths gets no more:
//     *core.RefusedError with ReasonMaxPaths and ErrorCodeTooManyPaths.
//
// Otherwise c becomes a path (validating until its first heartbeat answer).
func (m *Manager) AdmitConn(_ context.Context, c core.Conn) error {
	p := c.RemotePeer()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil // shutting down: nothing to keep track of
	}
	pp := m.peer(p)
	var losers []*path
	live := 0
	for _, pa := range pp.paths {
		// A closing connection (its Disconnected is on its way) is no
		// path any more.
		if !pa.usable() || pa.conn.IsClosed() {
			continue
		}
		live++
		if !sameAddrs(pa.conn, c) {
			continue
		}
		switch m.loser(pa, c) {
		case c:
			return &core.RefusedError{Stage: core.StagePaths, Reason: core.ReasonPathRedundant, Code: ErrorCodePathRedundant,
				Peer: p, Survivor: pa.conn, Err: fmt.Errorf("multipath: redundant with %s (same addresses)", pa.conn.ID())}
		case pa.conn:
			losers = append(losers, pa)
		}
	}
	if live-len(losers) >= m.cfg.MaxPaths {
		return &core.RefusedError{Stage: core.StagePaths, Reason: core.ReasonMaxPaths, Code: ErrorCodeTooManyPaths,
			Peer: p, Err: fmt.Errorf("multipath: peer already has MaxPaths=%d paths", m.cfg.MaxPaths)}
	}
	pa := newPath(c, m.clock.Now())
	pa.selectedBefore = pp.selected
	pp.paths = append(pp.paths, pa)
	reason := core.SwitchPathAdded
	for _, loser := range losers {
		if loser == pp.selected {
			reason = core.SwitchPathRedundant
		}
		loser.stateBefore = loser.state
		loser.state = core.PathRedundant
		loser.survivor = c
		loser.stopHeartbeat(m.probes)
	}
	events := []any{EvtPathAdded{Peer: p, Path: pa.info(false)}}
	m.collecting = &events
	m.rerank(p, pp, reason)
	m.collecting = nil
	pa.pending = events
	return nil
}

// loser returns which of two connections on the same pair of addresses is
// redundant — the one not dialed by the smaller peer ID; of two dialed by
// the same side, the one whose TLS exporter value (RFC 5705/8446, label
// "EXPORTER-realmnet-path-order", which both ends of a connection derive
// alike) is greater. Both ends compute the same answer from facts both see.
// For connections without TLS state (not QUIC), the dialer keeps the older
// and the other side admits both (nil). existing was admitted before
// newcomer.
func (m *Manager) loser(existing *path, newcomer core.Conn) core.Conn {
	newDialer, oldDialer := dialerOf(newcomer, m.local), dialerOf(existing.conn, m.local)
	switch {
	case newDialer < oldDialer:
		return existing.conn
	case newDialer > oldDialer:
		return newcomer
	}
	newOrder, ok := pathOrder(newcomer)
	if existing.hasOrder && ok {
		if bytes.Compare(newOrder[:], existing.order[:]) < 0 {
			return existing.conn
		}
		return newcomer
	}
	if newDialer != m.local {
		return nil
	}
	return newcomer
}

// AbortConn undoes AdmitConn for a connection a later stage refused: its
// path is removed and the paths it made redundant are reinstated.
func (m *Manager) AbortConn(c core.Conn) {
	p := c.RemotePeer()
	m.mu.Lock()
	defer m.mu.Unlock()
	pp := m.knownPeer(p)
	if pp == nil {
		return
	}
	var selectedBefore *path
	if i := slices.IndexFunc(pp.paths, func(pa *path) bool { return pa.conn == c }); i >= 0 {
		pa := pp.paths[i]
		pp.paths = slices.Delete(pp.paths, i, i+1)
		pa.remove(m.probes)
		selectedBefore = pa.selectedBefore
	}
	// Undo without a trace: c was never announced, so neither were the
	// events of its admission; the paths it retired get their state back.
	for _, loser := range pp.paths {
		if loser.state == core.PathRedundant && loser.survivor == c && !loser.conn.IsClosed() {
			loser.state = loser.stateBefore
			loser.survivor = nil
			if loser.heartbeatStarted {
				m.startHeartbeat(p, loser)
			}
		}
	}
	if pp.selected == nil || pp.selected.conn == c {
		pp.selected = selectedBefore
	}
	var discard []any
	m.collecting = &discard
	m.rerank(p, pp, core.SwitchPathRemoved)
	m.collecting = nil
	if len(pp.paths) == 0 && !pp.discovering && pp.strategy == "" {
		delete(m.peers, p)
	}
}

// emit queues an event, or collects it during an admission; m.mu is held.
func (m *Manager) emit(evt any) {
	if m.collecting != nil {
		*m.collecting = append(*m.collecting, evt)
		return
	}
	m.events.Push(evt)
}

// Connected starts the heartbeat of an admitted path, retires the paths it
// made redundant, and dials standby paths when the peer has too few.
func (m *Manager) Connected(_ network.Network, nc network.Conn) {
	p := nc.RemotePeer()
	m.mu.Lock()
	defer m.mu.Unlock()
	pp := m.knownPeer(p)
	if pp == nil {
		return
	}
	pa := pp.find(nc)
	if pa == nil || pa.conn.IsClosed() {
		return
	}
	for _, evt := range pa.pending {
		m.events.Push(evt)
	}
	pa.pending = nil
	m.startHeartbeat(p, pa)
	for _, loser := range pp.paths {
		if loser.state == core.PathRedundant && loser.survivor == pa.conn && !loser.draining {
			loser.draining = true
			m.wg.Add(1)
			go m.drainAndClose(p, loser)
		}
	}
	m.maybeDiscover(p, pp)
}

// startHeartbeat starts pa's heartbeat: scheduled datagram probes when
// its connection negotiated QUIC datagrams, else a ping-stream heartbeat
// goroutine; m.mu is held.
func (m *Manager) startHeartbeat(p peer.ID, pa *path) {
	pa.stopHeartbeat(m.probes)
	pa.heartbeatStarted = true
	if pa.datagrams && !m.streamHeartbeats.Load() {
		pa.probe = m.probes.add(p, pa)
		return
	}
	if pa.wake == nil {
		pa.wake = make(chan struct{}, 1)
	}
	ctx, stop := context.WithCancel(pa.lifetime(m.ctx))
	pa.stopPings = stop
	m.wg.Add(1)
	go m.heartbeat(ctx, p, pa)
}

// setStreamHeartbeats switches every running heartbeat to ping streams
// (on) or back to datagrams where the connection has them (off), starting
// each again; see ForceStreamHeartbeats.
func (m *Manager) setStreamHeartbeats(on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.streamHeartbeats.Store(on)
	for p, pp := range m.peers {
		for _, pa := range pp.paths {
			if !pa.heartbeatStarted || !pa.usable() || !pa.datagrams {
				continue
			}
			m.startHeartbeat(p, pa)
		}
	}
}

// drainAndClose closes a redundant path once it is done with. A path this
// node dialed is closed once no stream of the peer's has been on it for
// redundantQuiet and our own streams have ended or had redundantDrain to
// end (the peer, which dialed the survivor, normally never used it; if it
// had already closed the survivor, its streams keep the path until the
// survivor's close arrives and the path is reinstated). A path the peer
// dialed is left for the peer to close, and closed here after
// redundantIdleTimeout without a stream (peers that never close it).
// Reinstatement or removal stops it. Owned by the manager (wg).
func (m *Manager) drainAndClose(p peer.ID, pa *path) {
	defer m.wg.Done()
	m.mu.Lock()
	done := pa.lifetime(m.ctx).Done()
	m.mu.Unlock()
	ours := pa.conn.Stat().Direction == network.DirOutbound
	deadline := m.clock.Now().Add(redundantDrain)
	idleSince := m.clock.Now()
	tick := m.clock.Ticker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-done:
			return
		}
		m.mu.Lock()
		stillRedundant := pa.state == core.PathRedundant
		if !stillRedundant {
			pa.draining = false
		}
		m.mu.Unlock()
		if !stillRedundant || pa.conn.IsClosed() {
			return
		}
		now := m.clock.Now()
		inbound, outbound := userStreamsByDirection(pa.conn)
		if inbound > 0 || (!ours && outbound > 0) {
			idleSince = now
		}
		quiet := now.Sub(idleSince)
		if ours && quiet >= redundantQuiet && (outbound == 0 || !now.Before(deadline)) {
			break
		}
		if !ours && quiet >= redundantIdleTimeout {
			break
		}
	}
	log.Debugw("closing redundant path", "peer", p, "conn", pa.conn.ID(), "survivor", pa.survivor.ID())
	_ = pa.conn.CloseWithError(ErrorCodePathRedundant)
}

// redundantQuiet is how long a redundant path this node dialed must carry
// no stream of the peer's before it is closed (the swarm's RedundantQuiet).
const redundantQuiet = time.Second

// redundantIdleTimeout is how long a redundant path the peer dialed may stay
// without a stream before this node closes it (the swarm's
// RedundantIdleTimeout, for peers that do not close it themselves).
const redundantIdleTimeout = 10 * time.Second

// reinstateLocked returns the paths that survivor made redundant to
// selection (survivor is gone, or was never announced); m.mu is held.
func (m *Manager) reinstateLocked(p peer.ID, pp *peerPaths, survivor core.Conn) {
	for _, pa := range pp.paths {
		if pa.state != core.PathRedundant || pa.survivor != survivor || pa.conn.IsClosed() {
			continue
		}
		log.Debugw("redundant path reinstated", "peer", p, "conn", pa.conn.ID())
		pa.state = core.PathValidating
		pa.survivor = nil
		pa.draining = false
		pa.lastAnswer = m.clock.Now()
		m.startHeartbeat(p, pa)
	}
}

// find returns the path of c, or nil.
func (pp *peerPaths) find(c network.Conn) *path {
	for _, pa := range pp.paths {
		if pa.conn == c {
			return pa
		}
	}
	return nil
}

func dialerOf(c network.Conn, local peer.ID) peer.ID {
	if c.Stat().Direction == network.DirOutbound {
		return local
	}
	return c.RemotePeer()
}

func sameAddrs(a, b network.Conn) bool {
	return a.LocalMultiaddr().Equal(b.LocalMultiaddr()) && a.RemoteMultiaddr().Equal(b.RemoteMultiaddr())
}

// Disconnected removes the connection's path, fails over when it was the
// selected one, reinstates the paths it had made redundant, and dials a
// replacement when the peer has fewer than DesiredPaths.
func (m *Manager) Disconnected(_ network.Network, c network.Conn) {
	p := c.RemotePeer()
	m.mu.Lock()
	defer m.mu.Unlock()
	pp := m.knownPeer(p)
	if pp == nil {
		return
	}
	i := slices.IndexFunc(pp.paths, func(pa *path) bool { return pa.conn == c })
	if i < 0 {
		return
	}
	pa := pp.paths[i]
	pp.paths = slices.Delete(pp.paths, i, i+1)
	pa.remove(m.probes)
	if c.Stat().Direction == network.DirOutbound && pa.refusedByPeer() {
		pp.addrFailed(string(c.RemoteMultiaddr().Bytes()), m.clock.Now())
	}
	m.reinstateLocked(p, pp, pa.conn)
	m.rerank(p, pp, core.SwitchPathRemoved)
	m.events.Push(EvtPathRemoved{Peer: p, ConnID: c.ID()})
	if len(pp.paths) == 0 && !pp.discovering && pp.strategy == "" {
		delete(m.peers, p)
		return
	}
	m.maybeDiscover(p, pp)
}

// rerank recomputes the ranking and StrategyBest's selection of p's paths
// and updates the active/standby states; m.mu is held for writing. reason
// is the switch's reason if the selection changes; core.SwitchLowerRTT
// (after a heartbeat) becomes core.SwitchHealthier when the new path is in
// a healthier class.
func (m *Manager) rerank(p peer.ID, pp *peerPaths, reason core.SwitchReason) {
	ranked := pp.ranked[:0]
	for _, pa := range pp.paths {
		if pa.usable() {
			ranked = append(ranked, pa)
		}
	}
	// Each path's RTT is read once (quic-go's SmoothedRTT moves while we
	// sort), into a field rather than a map: rerank runs on every
	// heartbeat answer.
	for _, pa := range ranked {
		pa.rankRTT = pa.biasedRTT()
	}
	// Degraded paths last; then direct before relayed, whatever their
	// health otherwise — a new direct path (a hole punch's) takes over
	// from a relayed one at once, before its first heartbeat answer: its
	// handshake has just proved it, and it leaves selection again if its
	// first probe goes unanswered (degraded). Then healthy before
	// validating, then RTT.
	key := func(a, b *path) int {
		return cmp.Or(
			cmp.Compare(boolInt(a.state == core.PathDegraded), boolInt(b.state == core.PathDegraded)),
			cmp.Compare(boolInt(a.relayed), boolInt(b.relayed)),
			cmp.Compare(a.healthClass(), b.healthClass()),
			cmp.Compare(a.rankRTT, b.rankRTT),
		)
	}
	slices.SortStableFunc(ranked, key)

	old := pp.selected
	var next *path
	if len(ranked) > 0 {
		next = ranked[0]
		// Hysteresis: within the same tier, keep the current path unless
		// the best one is clearly better.
		if i := slices.Index(ranked, old); i > 0 &&
			old.healthClass() == next.healthClass() && old.relayed == next.relayed &&
			next.rankRTT+m.cfg.SwitchHysteresis > old.rankRTT {
			next = old
			copy(ranked[1:i+1], ranked[:i])
			ranked[0] = old
		}
	}
	pp.ranked = ranked
	pp.selected = next
	for _, pa := range ranked {
		switch {
		case pa.state == core.PathValidating || pa.state == core.PathDegraded:
		case pa == next:
			pa.state = core.PathActive
		default:
			pa.state = core.PathStandby
		}
	}
	if old != next {
		evt := EvtPathSelected{Peer: p, Reason: reason}
		if old != nil {
			evt.Old = old.conn.ID()
		}
		if next != nil {
			evt.New = next.conn.ID()
			switch {
			case old == nil:
			case old.relayed && !next.relayed:
				evt.Reason = core.SwitchUpgrade
			case !old.relayed && next.relayed:
				evt.Reason = core.SwitchFailoverToRelay
			case reason == core.SwitchLowerRTT && next.healthClass() < old.healthClass():
				evt.Reason = core.SwitchHealthier
			}
		}
		m.observeSwitch(old, reason, evt.Reason, m.clock.Now())
		m.emit(evt)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
