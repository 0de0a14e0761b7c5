package realm

import (
	"fmt"
	"sync"
	"time"

	"github.com/benbjohnson/clock"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// maxRealmOnlyTracked bounds the peers whose unauthenticated time the
// realm-only policy remembers. Peers connected now are always tracked (the
// connection manager bounds them); beyond the cap, the disconnected peer
// whose last connection ended longest ago is forgotten first. 4096 entries
// of about 100 bytes: ≈ 400 KiB at most. A peer that makes the policy forget
// it must bring 4096 other peer IDs, each refused after AuthTimeout of its
// own.
const maxRealmOnlyTracked = 4096

// realmOnly is the isolation policy of node.RealmOnly: a peer that spends
// AuthTimeout connected without being an authenticated member of a shared
// realm — in total, over all its connections since it was last forgotten —
// is disconnected and refused (through the gater's peer policy) for the
// backoff; exempt peers (bootstrap, allowlisted) never are.
//
// The time accumulates across reconnections: timing only each connection
// let a peer that reconnected just before every AuthTimeout use the node's
// other protocols for ever (issue #11: 162 of 162 pings answered with
// AuthTimeout 2 s and a reconnection every 1.8 s). A peer's account is
// forgotten when it authenticates, when it is refused (the refusal then
// stands for the backoff), and after the backoff without a connection.
type realmOnly struct {
	svc         *Service
	authTimeout time.Duration
	backoff     time.Duration
	exempt      func(peer.ID) bool

	mu      sync.Mutex
	peers   map[peer.ID]*unauthTime
	refused map[peer.ID]time.Time // until when
	closed  bool
}

// unauthTime is one peer's account of time spent connected without
// authenticating; guarded by realmOnly.mu.
type unauthTime struct {
	// spent is the time of its ended connections, while unauthenticated.
	spent time.Duration
	// since is when its current connection began (zero while it has none).
	since time.Time
	// last is when its last connection ended.
	last time.Time
	// timer fires when spent plus the current connection reach
	// AuthTimeout; nil while not connected.
	timer *clock.Timer
}

// enableRealmOnly turns the realm-only policy on: peers must authenticate
// into a shared realm within authTimeout of connecting (> 0), else they are
// disconnected and refused for backoff (> 0). exempt (may be nil) names
// peers the policy never touches. The error names a bad duration.
func (s *Service) enableRealmOnly(authTimeout, backoff time.Duration, exempt func(peer.ID) bool) error {
	switch {
	case authTimeout <= 0:
		return fmt.Errorf("realm: realm-only: AuthTimeout %v, want > 0", authTimeout)
	case backoff <= 0:
		return fmt.Errorf("realm: realm-only: backoff %v, want > 0", backoff)
	}
	if exempt == nil {
		exempt = func(peer.ID) bool { return false }
	}
	p := &realmOnly{
		svc: s, authTimeout: authTimeout, backoff: backoff, exempt: exempt,
		peers:   make(map[peer.ID]*unauthTime),
		refused: make(map[peer.ID]time.Time),
	}
	s.policy.Store(p)
	s.deps.Backend.SetPeerPolicy(p.allow)
	for _, peer := range s.deps.Host.Network().Peers() {
		p.connected(peer)
	}
	return nil
}

// allow is the gater's peer policy: false while p is refused.
func (p *realmOnly) allow(id peer.ID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	until, ok := p.refused[id]
	if !ok {
		return true
	}
	if p.svc.deps.Clock.Now().After(until) {
		delete(p.refused, id)
		return true
	}
	return false
}

// connected starts (or resumes) id's account: the service calls it for
// every announced connection; a peer already connected keeps its running
// account.
func (p *realmOnly) connected(id peer.ID) {
	if p.exempt(id) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	now := p.svc.deps.Clock.Now()
	e := p.peers[id]
	if e != nil && e.since.IsZero() && now.Sub(e.last) >= p.backoff {
		delete(p.peers, id) // away for a backoff: forgotten
		e = nil
	}
	if e == nil {
		p.makeRoomLocked(now)
		e = &unauthTime{}
		p.peers[id] = e
	}
	if !e.since.IsZero() {
		return // its account already runs
	}
	e.since = now
	e.timer = p.svc.deps.Clock.AfterFunc(max(p.authTimeout-e.spent, 0), func() { p.check(id) })
}

// restart gives id, still connected, a fresh AuthTimeout: its last shared
// membership ended (it had authenticated, so its earlier time is forgiven).
func (p *realmOnly) restart(id peer.ID) {
	p.mu.Lock()
	if e := p.peers[id]; e != nil {
		if e.timer != nil {
			e.timer.Stop()
		}
		delete(p.peers, id)
	}
	p.mu.Unlock()
	p.connected(id)
}

// disconnected ends id's current connection (its last one closed): the
// time it spent is added to its account, unless it authenticated, which
// forgives it.
func (p *realmOnly) disconnected(id peer.ID) {
	member := p.svc.IsMember(id) // before p.mu: realm locks come first
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.peers[id]
	if e == nil {
		return
	}
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
	if member {
		delete(p.peers, id)
		return
	}
	now := p.svc.deps.Clock.Now()
	if !e.since.IsZero() {
		e.spent += now.Sub(e.since)
	}
	e.since = time.Time{}
	e.last = now
}

// makeRoomLocked keeps the table under maxRealmOnlyTracked before an
// insertion: accounts idle for a backoff go first, then the disconnected
// one idle longest. p.mu is held.
func (p *realmOnly) makeRoomLocked(now time.Time) {
	if len(p.peers) < maxRealmOnlyTracked {
		return
	}
	var oldest peer.ID
	var oldestLast time.Time
	for id, e := range p.peers {
		if !e.since.IsZero() {
			continue
		}
		if now.Sub(e.last) >= p.backoff {
			delete(p.peers, id)
			continue
		}
		if oldest == "" || e.last.Before(oldestLast) {
			oldest, oldestLast = id, e.last
		}
	}
	if len(p.peers) >= maxRealmOnlyTracked && oldest != "" {
		delete(p.peers, oldest)
	}
}

// check closes id unless it is a member of a shared realm by now, or has
// not yet spent AuthTimeout (its timer is then set again).
func (p *realmOnly) check(id peer.ID) {
	member := p.svc.IsMember(id) || p.exempt(id)
	p.mu.Lock()
	e := p.peers[id]
	if p.closed || e == nil || e.since.IsZero() {
		p.mu.Unlock()
		return
	}
	now := p.svc.deps.Clock.Now()
	if member {
		delete(p.peers, id)
		p.mu.Unlock()
		return
	}
	if spent := e.spent + now.Sub(e.since); spent < p.authTimeout {
		e.timer = p.svc.deps.Clock.AfterFunc(p.authTimeout-spent, func() { p.check(id) })
		p.mu.Unlock()
		return
	}
	// The refusal is its memory from now on.
	delete(p.peers, id)
	for other, until := range p.refused { // expired refusals go here, not only when their peer returns
		if now.After(until) {
			delete(p.refused, other)
		}
	}
	p.refused[id] = now.Add(p.backoff)
	p.mu.Unlock()
	p.svc.stats.closedRealmOnly.Add(1)
	log.Debugw("realm-only: closing unauthenticated peer", "peer", id)
	for _, c := range p.svc.deps.Host.Network().ConnsToPeer(id) {
		_ = c.CloseWithError(network.ConnGated)
	}
}

func (p *realmOnly) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for id, e := range p.peers {
		if e.timer != nil {
			e.timer.Stop()
		}
		delete(p.peers, id)
	}
}
