package realm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Members returns the realm's members, sorted, including members within
// their reconnect grace; never this node.
func (r *Realm) Members() []peer.ID {
	r.mu.Lock()
	out := make([]peer.ID, 0, len(r.membership.members))
	for p := range r.membership.members {
		out = append(out, p)
	}
	r.mu.Unlock()
	slices.Sort(out)
	return out
}

// Member describes member p; false when p is not a member.
func (r *Realm) Member(p peer.ID) (MemberInfo, bool) {
	r.mu.Lock()
	m := r.membership.members[p]
	var info MemberInfo
	if m != nil {
		info = MemberInfo{Peer: p, Since: m.since, Connected: m.authenticated}
	}
	r.mu.Unlock()
	if m == nil {
		return MemberInfo{}, false
	}
	info.Paths = r.svc.deps.Backend.Paths(p)
	return info, true
}

// Subscribe returns a subscription to this realm's EvtMemberJoined and
// EvtMemberLeft events, in the order they happened (go-libp2p's event bus;
// the caller reads it and closes it: events wait for a full subscription).
// Members admitted before the call are not replayed: list them with
// Members, or subscribe to the host's event bus, which carries the same
// events for all realms, before JoinRealm.
func (r *Realm) Subscribe(opts ...event.SubscriptionOpt) (event.Subscription, error) {
	return r.bus.Subscribe([]any{new(EvtMemberJoined), new(EvtMemberLeft)}, opts...)
}

// WaitMembers blocks until the realm has at least n authenticated members
// or ctx ends (its error is returned), or the realm is left (ErrLeft).
func (r *Realm) WaitMembers(ctx context.Context, n int) error {
	for {
		r.mu.Lock()
		count, left, changed := r.authenticatedCountLocked(), r.left, r.membership.changed
		r.mu.Unlock()
		switch {
		case count >= n:
			return nil
		case left:
			return ErrLeft
		}
		select {
		case <-changed:
		case <-r.ctx.Done():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// changedLocked wakes WaitMembers: a member joined, authenticated again,
// lost its connection or left; r.mu is held.
func (r *Realm) changedLocked() {
	close(r.membership.changed)
	r.membership.changed = make(chan struct{})
}

// randomAuthenticatedMember returns an authenticated member chosen at
// random; false when there is none.
func (r *Realm) randomAuthenticatedMember() (peer.ID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var chosen peer.ID
	seen := 0
	for p, m := range r.membership.members {
		if !m.authenticated {
			continue
		}
		// Reservoir sampling of one (Go's map order is not uniform).
		seen++
		if rand.IntN(seen) == 0 {
			chosen = p
		}
	}
	return chosen, seen > 0
}

func (r *Realm) authenticatedCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.authenticatedCountLocked()
}

func (r *Realm) authenticatedCountLocked() int {
	n := 0
	for _, m := range r.membership.members {
		if m.authenticated {
			n++
		}
	}
	return n
}

// isMember reports whether p is a member, authenticated or within its
// reconnect grace.
func (r *Realm) isMember(p peer.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.membership.members[p] != nil
}

// inGrace reports whether p is a member within its reconnect grace.
func (r *Realm) inGrace(p peer.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.membership.members[p]
	return m != nil && !m.authenticated
}

func (r *Realm) authenticated(p peer.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.membership.members[p]
	return m != nil && m.authenticated
}

// errSaidGoodbye refuses a handshake that raced with the peer's goodbye.
var errSaidGoodbye = errors.New("realm: the peer said goodbye during the handshake")

// admit makes p a member after a handshake that began when p had sent
// goodbyes goodbyes: its handle is registered, its connections join the
// realm's sub-pool, it is charged to the realm's resource scope, and
// EvtMemberJoined is emitted if it was not a member. A member is
// authenticated (Connected) while it has a connection; admitted without
// one — the handshake's connection closed meanwhile — it starts in its
// reconnect grace, so that no member is ever listed as connected without a
// connection nor kept without a grace. Errors: ErrLeft, errSaidGoodbye (p
// left meanwhile), or the resource scope's *resource.LimitError.
func (r *Realm) admit(p peer.ID, goodbyes uint64) error {
	// The service's connection count and the realms' graces move together
	// under connsMu (then r.mu): a connection closing now either is seen
	// here or starts the grace after this admission.
	r.svc.connsMu.Lock()
	defer r.svc.connsMu.Unlock()
	connected := r.svc.connectedLocked(p)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.left:
		return ErrLeft
	case r.membership.goodbyes[p] != goodbyes:
		return errSaidGoodbye
	}
	m := r.membership.members[p]
	if m == nil {
		release, err := r.svc.deps.Backend.ReserveRealmMember(r.keys.id)
		if err != nil {
			return fmt.Errorf("realm %q: admit %s: %w", r.name, p, err)
		}
		m = &member{since: r.svc.deps.Clock.Now(), handle: r.keys.handle(r.svc.deps.Host.ID(), p), release: release}
		r.membership.members[p] = m
		r.svc.setHandle(m.handle, handleEntry{realm: r, peer: p})
		r.events.Push(EvtMemberJoined{Realm: r.name, RealmID: r.keys.id, Peer: p})
		r.svc.events.Push(EvtMemberJoined{Realm: r.name, RealmID: r.keys.id, Peer: p})
		log.Debugw("member joined", "realm", r.name, "peer", p)
		select {
		case r.candidates.joined <- struct{}{}:
		default:
		}
	}
	r.svc.deps.Backend.AssignRealm(p, r.keys.id)
	r.admitted(p)
	defer r.changedLocked()
	if !connected {
		if m.grace == nil {
			r.startGraceLocked(p, m)
			r.candidateLocked(peer.AddrInfo{ID: p}, sourceKnown)
		}
		return nil
	}
	if m.grace != nil {
		m.grace.Stop()
		m.grace = nil
	}
	m.authenticated = true
	return nil
}

// removeLocked ends p's membership; r.mu is held.
func (r *Realm) removeLocked(p peer.ID, reason string) {
	m := r.membership.members[p]
	if m == nil {
		return
	}
	delete(r.membership.members, p)
	r.changedLocked()
	if m.grace != nil {
		m.grace.Stop()
	}
	m.release()
	r.svc.dropHandle(m.handle, r)
	r.svc.deps.Backend.UnassignRealm(p, r.keys.id)
	r.events.Push(EvtMemberLeft{Realm: r.name, RealmID: r.keys.id, Peer: p, Reason: reason})
	r.svc.events.Push(EvtMemberLeft{Realm: r.name, RealmID: r.keys.id, Peer: p, Reason: reason})
	log.Debugw("member left", "realm", r.name, "peer", p, "reason", reason)
	// Under the realm-only policy, a peer still connected must now share
	// another realm within AuthTimeout.
	if policy := r.svc.policy.Load(); policy != nil && r.svc.hasConn(p) {
		policy.restart(p)
	}
}

// lostConnection starts p's reconnect grace: its last connection closed.
// The service calls it with connsMu held.
func (r *Realm) lostConnection(p peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.membership.members[p]
	if m == nil || r.left || !m.authenticated {
		return
	}
	r.startGraceLocked(p, m)
	// Try to get the member back while the grace runs.
	r.candidateLocked(peer.AddrInfo{ID: p}, sourceKnown)
}

// startGraceLocked marks m (member p) not authenticated and removes it
// after ReconnectGrace (on the service's clock) unless it authenticates
// again; r.mu is held.
func (r *Realm) startGraceLocked(p peer.ID, m *member) {
	m.authenticated = false
	r.changedLocked()
	if m.grace != nil {
		m.grace.Stop()
	}
	m.grace = r.svc.deps.Clock.AfterFunc(r.cfg.ReconnectGrace, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if cur := r.membership.members[p]; cur == m && !m.authenticated {
			r.removeLocked(p, ReasonGraceExpired)
		}
	})
}
