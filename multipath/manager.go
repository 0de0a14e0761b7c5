// Package multipath owns the set of connections (paths) to each peer: it
// heartbeats every path on its own, measures RTT and loss, marks paths
// validating, active, standby, degraded or dead, opens standby paths, and
// picks the path for every new stream (best, round_robin, least_loaded or a
// user function). The Manager is the swarm's swarm.PathSelector and a
// network.Notifiee; it never imports the swarm, it talks to it through the
// Dialer interface.
//
// Heartbeats are go-libp2p's ping protocol (/ipfs/ping/1.0.0) on one
// long-lived stream per path, opened on that exact connection, so any libp2p
// peer answers them. Defaults and their sources: docs/multipath.md.
package multipath

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/realmnet/realmnet/internal/eventqueue"
)

var log = logging.Logger("realmnet/multipath")

// Connection error codes the manager closes paths with. They lie in the
// application range, outside go-libp2p's 0x1000–0x10ff codes.
const (
	// ErrorCodePathDead: no heartbeat answer for PathIdleTimeout.
	ErrorCodePathDead network.ConnErrorCode = 0x52_4d_00_01
	// ErrorCodePathRedundant: another connection uses the same pair of
	// addresses.
	ErrorCodePathRedundant network.ConnErrorCode = 0x52_4d_00_02
	// ErrorCodeTooManyPaths: the peer already has MaxPaths paths.
	ErrorCodeTooManyPaths network.ConnErrorCode = 0x52_4d_00_03
)

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
	failedAddrs map[string]time.Time // by address bytes
	// retry runs discovery again when addresses dialed recently become
	// eligible and the peer still lacks paths.
	retry *time.Timer
}

// Manager owns the paths of every peer. Create it with New, register it with
// the swarm (Notify and SetPathSelector), and Close it before the swarm.
// Safe for concurrent use.
type Manager struct {
	cfg    Config
	dialer Dialer
	events *eventqueue.Queue
	sub    event.Subscription

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu         sync.RWMutex
	closed     bool
	peers      map[peer.ID]*peerPaths
	strategy   Strategy
	selectFunc SelectFunc
}

var _ network.Notifiee = (*Manager)(nil)

// New creates a manager. bus receives the path events and supplies
// event.EvtPeerIdentificationCompleted (after identify, the peer's listen
// addresses are known and standby paths are dialed). It returns an error
// naming a bad Config field.
func New(d Dialer, bus event.Bus, cfg Config) (*Manager, error) {
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
		dialer:     d,
		events:     q,
		sub:        sub,
		ctx:        ctx,
		cancel:     cancel,
		peers:      make(map[peer.ID]*peerPaths),
		strategy:   cfg.Strategy,
		selectFunc: cfg.Select,
	}
	m.wg.Add(1)
	go m.watchIdentify()
	return m, nil
}

// Config returns the effective configuration.
func (m *Manager) Config() Config { return m.cfg }

// Close stops every heartbeat and discovery goroutine and waits for them.
// It closes no connection. Idempotent.
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

// peer returns p's state, creating it; m.mu must be held for writing.
func (m *Manager) peer(p peer.ID) *peerPaths {
	pp := m.peers[p]
	if pp == nil {
		pp = &peerPaths{failedAddrs: make(map[string]time.Time)}
		m.peers[p] = pp
	}
	return pp
}

// Paths returns snapshots of p's paths, in order of arrival, dead ones
// included until their connection is gone.
func (m *Manager) Paths(p peer.ID) []PathInfo {
	m.mu.RLock()
	defer m.mu.RUnlock()
	pp := m.peers[p]
	if pp == nil {
		return nil
	}
	out := make([]PathInfo, len(pp.paths))
	for i, pa := range pp.paths {
		out[i] = pa.info(pa == pp.selected)
	}
	return out
}

// Selected returns the path StrategyBest has selected for p; false when p
// has no usable path.
func (m *Manager) Selected(p peer.ID) (PathInfo, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	pp := m.peers[p]
	if pp == nil || pp.selected == nil {
		return PathInfo{}, false
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
	if pp := m.peers[p]; pp != nil && pp.selected != nil && slices.Contains(conns, pp.selected.conn) {
		return pp.selected.conn
	}
	return nil
}

// SelectPath implements swarm.PathSelector: it returns, among conns, the
// connection of the path the peer's strategy picks. A connection the manager
// does not know yet (its Connected notification is still running) is used
// only when no known path is among conns.
func (m *Manager) SelectPath(p peer.ID, conns []network.Conn) network.Conn {
	m.mu.RLock()
	defer m.mu.RUnlock()
	pp := m.peers[p]
	if pp != nil && len(pp.ranked) > 0 {
		if c := m.choose(p, pp, conns); c != nil {
			return c
		}
	}
	if len(conns) == 0 {
		return nil
	}
	return conns[len(conns)-1]
}

// choose applies the peer's strategy to its ranked paths that are among
// conns, and wakes the chosen path's heartbeat, which then probes at the
// busy rate at once; m.mu is held for reading.
func (m *Manager) choose(p peer.ID, pp *peerPaths, conns []network.Conn) network.Conn {
	pa := m.pick(p, pp, conns)
	if pa == nil {
		return nil
	}
	select {
	case pa.wake <- struct{}{}:
	default:
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
			if !slices.Contains(conns, pa.conn) {
				continue
			}
			if pa.state != StateDegraded {
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
		if slices.Contains(conns, pa.conn) {
			usable = append(usable, pa)
		}
	}
	if len(usable) == 0 {
		return nil
	}
	// Degraded paths take streams only when nothing else is left.
	if firstDegraded := slices.IndexFunc(usable, func(pa *path) bool { return pa.state == StateDegraded }); firstDegraded > 0 {
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
		infos := make([]PathInfo, len(usable))
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

// Connected registers the connection as a path of its peer, unless the peer
// already has a path on the same address pair (redundant) or MaxPaths paths;
// then the connection is closed.
func (m *Manager) Connected(_ network.Network, c network.Conn) {
	p := c.RemotePeer()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	pp := m.peer(p)
	victim, code, reason := m.refuse(pp, c)
	if victim != c {
		pa := newPath(m.ctx, c)
		pp.paths = append(pp.paths, pa)
		m.events.Push(EvtPathAdded{Peer: p, Path: pa.info(false)})
		m.rerank(p, pp, "path added")
		m.wg.Add(1)
		go m.heartbeat(p, pa)
		m.maybeDiscover(p, pp)
	}
	if victim != nil && code == ErrorCodePathRedundant && !m.closed {
		// A redundant connection may already carry streams (both ends
		// dialed at once and started talking): let them finish, up to
		// redundantDrain, instead of resetting them. It takes no new
		// streams meanwhile: the old one is out of selection as soon as
		// it is closing, and the new one never became a path.
		if pa := pp.find(victim); pa != nil {
			pa.state = StateDead
			m.rerank(p, pp, "path removed")
		}
		m.wg.Add(1)
		go m.drainAndClose(victim, reason)
		victim = nil
	}
	m.mu.Unlock()
	if victim != nil {
		log.Debugw("closing connection", "peer", p, "conn", victim.ID(), "reason", reason)
		_ = victim.CloseWithError(code)
	}
}

// redundantDrain bounds how long a redundant connection may finish its
// streams before it is closed.
const redundantDrain = 5 * time.Second

// drainAndClose closes a redundant connection once it carries no
// application stream, or after redundantDrain; owned by the manager (wg).
func (m *Manager) drainAndClose(c network.Conn, reason string) {
	defer m.wg.Done()
	deadline := time.NewTimer(redundantDrain)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
wait:
	for userStreams(c) > 0 {
		select {
		case <-tick.C:
		case <-deadline.C:
			break wait
		case <-m.ctx.Done():
			break wait
		}
	}
	log.Debugw("closing connection", "peer", c.RemotePeer(), "conn", c.ID(), "reason", reason)
	_ = c.CloseWithError(ErrorCodePathRedundant)
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

// refuse says which connection, if any, must be closed when c arrives (c
// itself or an older redundant one), with which code and why; m.mu is held.
func (m *Manager) refuse(pp *peerPaths, c network.Conn) (network.Conn, network.ConnErrorCode, string) {
	for _, pa := range pp.paths {
		// A path whose connection is closing (a swarm dial race lost)
		// is no reason to close anything.
		if pa.state == StateDead || pa.conn.IsClosed() || !sameAddrs(pa.conn, c) {
			continue
		}
		// Both ends must close the same one of two redundant connections:
		// keep the one dialed by the smaller peer ID; of two dialed by the
		// same side, that side closes the newer.
		local := m.dialer.LocalPeer()
		newDialer, oldDialer := dialerOf(c, local), dialerOf(pa.conn, local)
		switch {
		case newDialer == oldDialer && newDialer != local:
			return nil, 0, "" // the dialer decides
		case newDialer == oldDialer, newDialer > oldDialer:
			return c, ErrorCodePathRedundant, "redundant with " + pa.conn.ID()
		default:
			return pa.conn, ErrorCodePathRedundant, "redundant with " + c.ID()
		}
	}
	if len(pp.paths) >= m.cfg.MaxPaths {
		return c, ErrorCodeTooManyPaths, fmt.Sprintf("peer already has MaxPaths=%d paths", m.cfg.MaxPaths)
	}
	return nil, 0, ""
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
// selected one, and dials a replacement when the peer has fewer than
// DesiredPaths.
func (m *Manager) Disconnected(_ network.Network, c network.Conn) {
	p := c.RemotePeer()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	pp := m.peers[p]
	if pp == nil {
		return
	}
	i := slices.IndexFunc(pp.paths, func(pa *path) bool { return pa.conn == c })
	if i < 0 {
		return
	}
	pa := pp.paths[i]
	pp.paths = slices.Delete(pp.paths, i, i+1)
	pa.cancel()
	if c.Stat().Direction == network.DirOutbound && pa.refusedByPeer() {
		pp.failedAddrs[string(c.RemoteMultiaddr().Bytes())] = time.Now()
	}
	m.rerank(p, pp, "path removed")
	m.events.Push(EvtPathRemoved{Peer: p, ConnID: c.ID()})
	if len(pp.paths) == 0 && !pp.discovering && pp.strategy == "" {
		delete(m.peers, p)
		return
	}
	m.maybeDiscover(p, pp)
}

// rerank recomputes the ranking and StrategyBest's selection of p's paths
// and updates the active/standby states; m.mu is held for writing.
func (m *Manager) rerank(p peer.ID, pp *peerPaths, reason string) {
	ranked := pp.ranked[:0]
	for _, pa := range pp.paths {
		if pa.state != StateDead {
			ranked = append(ranked, pa)
		}
	}
	rtts := make(map[*path]time.Duration, len(ranked))
	for _, pa := range ranked {
		rtts[pa] = pa.biasedRTT()
	}
	key := func(a, b *path) int {
		return cmp.Or(
			cmp.Compare(a.healthClass(), b.healthClass()),
			cmp.Compare(boolInt(a.relayed), boolInt(b.relayed)),
			cmp.Compare(rtts[a], rtts[b]),
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
			rtts[next]+m.cfg.SwitchHysteresis > rtts[old] {
			next = old
			copy(ranked[1:i+1], ranked[:i])
			ranked[0] = old
		}
	}
	pp.ranked = ranked
	pp.selected = next
	for _, pa := range ranked {
		switch {
		case pa.state == StateValidating || pa.state == StateDegraded:
		case pa == next:
			pa.state = StateActive
		default:
			pa.state = StateStandby
		}
	}
	if old != next {
		evt := EvtPathSelected{Peer: p, Reason: reason}
		if old != nil {
			evt.Old = old.conn.ID()
		}
		if next != nil {
			evt.New = next.conn.ID()
			if reason == "heartbeat" {
				evt.Reason = "lower rtt"
				if old != nil && next.healthClass() < old.healthClass() {
					evt.Reason = "healthier"
				}
			}
		}
		m.events.Push(evt)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
