package realm

import (
	"fmt"
	"sync"
	"time"

	"github.com/benbjohnson/clock"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// realmOnly is the isolation policy of node.RealmOnly: a connected peer that
// is not an authenticated member of a shared realm AuthTimeout after its
// first connection is disconnected and refused (through the gater's peer
// policy) for the backoff; exempt peers (bootstrap, allowlisted) never are.
type realmOnly struct {
	svc         *Service
	authTimeout time.Duration
	backoff     time.Duration
	exempt      func(peer.ID) bool

	mu      sync.Mutex
	timers  map[peer.ID]*clock.Timer
	refused map[peer.ID]time.Time // until when
	closed  bool
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
		timers:  make(map[peer.ID]*clock.Timer),
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

func (p *realmOnly) connected(id peer.ID) {
	if p.exempt(id) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.timers[id] != nil {
		return
	}
	p.timers[id] = p.svc.deps.Clock.AfterFunc(p.authTimeout, func() { p.check(id) })
}

func (p *realmOnly) disconnected(id peer.ID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t := p.timers[id]; t != nil {
		t.Stop()
		delete(p.timers, id)
	}
}

// check closes id unless it is a member of a shared realm by now.
func (p *realmOnly) check(id peer.ID) {
	p.mu.Lock()
	delete(p.timers, id)
	closed := p.closed
	p.mu.Unlock()
	if closed || p.svc.IsMember(id) || p.exempt(id) {
		return
	}
	p.mu.Lock()
	now := p.svc.deps.Clock.Now()
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
	for id, t := range p.timers {
		t.Stop()
		delete(p.timers, id)
	}
}
