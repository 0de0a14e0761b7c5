package realm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/internal/eventqueue"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/resource"
)

// maxCandidateDials bounds a realm's concurrent connect-and-authenticate
// attempts to candidates (DHT providers, member exchange, mDNS).
const maxCandidateDials = 8

// maxCandidates bounds the candidates a realm holds at once (dialing or
// waiting for one of the maxCandidateDials slots); more are dropped, so a
// member exchange or a DHT answer full of made-up peers cannot grow the
// node's goroutines.
const maxCandidates = 64

// candidateTimeout bounds one candidate's connection and handshake.
const candidateTimeout = 15 * time.Second

// Realm is a joined realm: its members, its stream handlers, its discovery.
// Its methods are safe for concurrent use. After Leave (or the node's
// Close) it is inert: NewStream returns ErrLeft, Members is empty.
type Realm struct {
	svc  *Service
	name string
	keys keys
	cfg  Config
	cid  cid.Cid

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	bus    event.Bus
	events *eventqueue.Queue
	dials  chan struct{}
	// joined is signalled (without blocking) when a member joins, so the
	// discovery loop re-checks whether it wants more.
	joined chan struct{}

	mu       sync.Mutex
	members  map[peer.ID]*member
	pending  map[peer.ID]*pendingAuth
	trying   map[peer.ID]struct{} // candidates being connected to
	handlers map[protocol.ID]network.StreamHandler
	// handshaking counts the handshakes running with each peer for this
	// realm (either role); Leave waits for them.
	handshaking map[peer.ID]int
	// admittedBy holds peers that admitted this node in a handshake this
	// node could no longer complete (the realm was being left): they are
	// owed a goodbye.
	admittedBy map[peer.ID]struct{}
	// goodbyes counts the goodbyes received from each peer; a handshake
	// that began before the latest one does not admit the peer.
	goodbyes  map[peer.ID]uint64
	left      bool
	leaveErr  error
	leaveDone chan struct{} // closed when Leave has finished
	// leaving mirrors left for readers that must not take mu (the service,
	// under its own lock).
	leaving  atomic.Bool
	stopMDNS func() error
}

// member is one authenticated (or, within its reconnect grace, formerly
// authenticated) member.
type member struct {
	since         time.Time
	authenticated bool
	handle        handle
	release       func()      // the member's connection in the realm's resource scope
	grace         *time.Timer // running while not authenticated
}

// MemberInfo describes a member.
type MemberInfo struct {
	Peer peer.ID
	// Since is when the member (last) joined.
	Since time.Time
	// Connected is false while the member is within its reconnect grace.
	Connected bool
	// Paths are the member's paths (connections), as multipath sees them.
	Paths []multipath.PathInfo
}

func newRealm(s *Service, name string, k keys, cfg Config) (*Realm, error) {
	bus := eventbus.NewBus()
	events, err := eventqueue.New(bus, new(EvtMemberJoined), new(EvtMemberLeft))
	if err != nil {
		return nil, fmt.Errorf("realm %q: %w", name, err)
	}
	r := &Realm{
		svc:      s,
		name:     name,
		keys:     k,
		cfg:      cfg,
		cid:      k.rendezvousCID(),
		bus:      bus,
		events:   events,
		dials:    make(chan struct{}, maxCandidateDials),
		joined:   make(chan struct{}, 1),
		members:  make(map[peer.ID]*member),
		pending:  make(map[peer.ID]*pendingAuth),
		trying:   make(map[peer.ID]struct{}),
		handlers: make(map[protocol.ID]network.StreamHandler),

		leaveDone:   make(chan struct{}),
		handshaking: make(map[peer.ID]int),
		admittedBy:  make(map[peer.ID]struct{}),
		goodbyes:    make(map[peer.ID]uint64),
	}
	for proto, h := range cfg.Handlers {
		r.handlers[proto] = h
	}
	r.cfg.Handlers = nil
	r.ctx, r.cancel = context.WithCancel(s.ctx)
	return r, nil
}

// start launches discovery and the first handshakes. It only starts
// goroutines (the service's lock is held).
func (r *Realm) start() {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		h := r.svc.deps.Host
		for _, p := range h.Network().Peers() {
			if ok, _ := h.Peerstore().SupportsProtocols(p, AuthProtocol); len(ok) > 0 {
				r.authenticateAsync(p)
			}
		}
		for _, ai := range r.cfg.Peers {
			r.candidate(ai)
		}
	}()
	r.wg.Add(1)
	go r.discover()
	if r.cfg.MDNS {
		r.startMDNS()
	}
}

// Name returns the realm's name.
func (r *Realm) Name() string { return r.name }

// ID returns the realm's ID (the name of its sub-pool and resource scope).
func (r *Realm) ID() ID { return r.keys.id }

// Members returns the realm's members, sorted, including members within
// their reconnect grace; never this node.
func (r *Realm) Members() []peer.ID {
	r.mu.Lock()
	out := make([]peer.ID, 0, len(r.members))
	for p := range r.members {
		out = append(out, p)
	}
	r.mu.Unlock()
	slices.Sort(out)
	return out
}

// Member describes member p; false when p is not a member.
func (r *Realm) Member(p peer.ID) (MemberInfo, bool) {
	r.mu.Lock()
	m := r.members[p]
	var info MemberInfo
	if m != nil {
		info = MemberInfo{Peer: p, Since: m.since, Connected: m.authenticated}
	}
	r.mu.Unlock()
	if m == nil {
		return MemberInfo{}, false
	}
	if r.svc.deps.Paths != nil {
		info.Paths = r.svc.deps.Paths(p)
	}
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
	sub, err := r.Subscribe()
	if err != nil {
		return err
	}
	defer sub.Close()
	for {
		if r.authenticatedCount() >= n {
			return nil
		}
		if r.isLeft() {
			return ErrLeft
		}
		select {
		case <-sub.Out():
		case <-r.ctx.Done():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (r *Realm) authenticatedCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.members {
		if m.authenticated {
			n++
		}
	}
	return n
}

func (r *Realm) isLeft() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.left
}

func (r *Realm) authenticated(p peer.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.members[p]
	return m != nil && m.authenticated
}

// wantsMore reports whether the realm looks for more members: fewer
// authenticated members than its sub-pool's HighWater.
func (r *Realm) wantsMore() bool {
	high := r.svc.deps.Pools.RealmLimitsOf(connmgr.RealmID(r.keys.id)).HighWater
	return r.authenticatedCount() < high
}

// beginHandshake records a handshake with p for this realm until done is
// called, and returns how many goodbyes p had sent when it began. It fails
// with ErrLeft once the realm is left, so every handshake Leave does not see
// is one that cannot start.
func (r *Realm) beginHandshake(p peer.ID) (goodbyes uint64, done func(), err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.left {
		return 0, nil, ErrLeft
	}
	r.handshaking[p]++
	return r.goodbyes[p], func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.handshaking[p]--; r.handshaking[p] <= 0 {
			delete(r.handshaking, p)
		}
	}, nil
}

// awaitHandshakes waits until no handshake of this realm runs, or ctx ends.
// Handshakes end by themselves within HandshakeTimeout; Leave, their only
// caller, waits for them to finish rather than aborting them, so it polls.
func (r *Realm) awaitHandshakes(ctx context.Context) {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		r.mu.Lock()
		n := len(r.handshaking)
		r.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

// errSaidGoodbye refuses a handshake that raced with the peer's goodbye.
var errSaidGoodbye = errors.New("realm: the peer said goodbye during the handshake")

// admit makes p an authenticated member after a handshake that began when p
// had sent goodbyes goodbyes: its handle is registered, its connections
// join the realm's sub-pool, it is charged to the realm's resource scope,
// and EvtMemberJoined is emitted if it was not a member. Errors: ErrLeft,
// errSaidGoodbye (p left meanwhile), or the resource scope's
// *resource.LimitError.
func (r *Realm) admit(p peer.ID, goodbyes uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.left:
		return ErrLeft
	case r.goodbyes[p] != goodbyes:
		return errSaidGoodbye
	}
	m := r.members[p]
	if m == nil {
		release, err := r.svc.deps.Resources.ReserveRealmConn(resource.RealmID(r.keys.id))
		if err != nil {
			return fmt.Errorf("realm %q: admit %s: %w", r.name, p, err)
		}
		m = &member{since: time.Now(), handle: r.keys.handle(r.svc.deps.Host.ID(), p), release: release}
		r.members[p] = m
		r.svc.setHandle(m.handle, handleEntry{realm: r, peer: p})
		r.events.Push(EvtMemberJoined{Realm: r.name, RealmID: r.keys.id, Peer: p})
		r.svc.events.Push(EvtMemberJoined{Realm: r.name, RealmID: r.keys.id, Peer: p})
		log.Debugw("member joined", "realm", r.name, "peer", p)
		select {
		case r.joined <- struct{}{}:
		default:
		}
	}
	if m.grace != nil {
		m.grace.Stop()
		m.grace = nil
	}
	m.authenticated = true
	r.svc.deps.Pools.AssignRealm(p, connmgr.RealmID(r.keys.id))
	return nil
}

// removeLocked ends p's membership; r.mu is held.
func (r *Realm) removeLocked(p peer.ID, reason string) {
	m := r.members[p]
	if m == nil {
		return
	}
	delete(r.members, p)
	if m.grace != nil {
		m.grace.Stop()
	}
	m.release()
	r.svc.dropHandle(m.handle, r)
	r.svc.deps.Pools.UnassignRealm(p, connmgr.RealmID(r.keys.id))
	r.events.Push(EvtMemberLeft{Realm: r.name, RealmID: r.keys.id, Peer: p, Reason: reason})
	r.svc.events.Push(EvtMemberLeft{Realm: r.name, RealmID: r.keys.id, Peer: p, Reason: reason})
	log.Debugw("member left", "realm", r.name, "peer", p, "reason", reason)
	// Under the realm-only policy, a peer still connected must now share
	// another realm within AuthTimeout.
	if policy := r.svc.policy.Load(); policy != nil && r.svc.deps.Host.Network().Connectedness(p) == network.Connected {
		policy.connected(p)
	}
}

// lostConnection starts p's reconnect grace: p has no connection left.
func (r *Realm) lostConnection(p peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.members[p]
	if m == nil || r.left || !m.authenticated {
		return
	}
	r.startGraceLocked(p, m)
	// Try to get the member back while the grace runs.
	r.candidateLocked(peer.AddrInfo{ID: p})
}

// startGraceLocked marks m (member p) not authenticated and removes it
// after ReconnectGrace unless it authenticates again; r.mu is held.
func (r *Realm) startGraceLocked(p peer.ID, m *member) {
	m.authenticated = false
	if m.grace != nil {
		m.grace.Stop()
	}
	m.grace = time.AfterFunc(r.cfg.ReconnectGrace, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if cur := r.members[p]; cur == m && !m.authenticated {
			r.removeLocked(p, ReasonGraceExpired)
		}
	})
}

// authenticateAsync starts a handshake with a connected peer unless p is
// authenticated or one is running.
func (r *Realm) authenticateAsync(p peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending[p] != nil || (r.members[p] != nil && r.members[p].authenticated) {
		return
	}
	r.spawnLocked(func() {
		for attempt := 0; ; attempt++ {
			err := r.authenticate(r.ctx, p)
			if err == nil {
				return
			}
			log.Debugw("handshake failed", "realm", r.name, "peer", p, "attempt", attempt+1, "err", err)
			if attempt == len(handshakeRetries) || !r.retryable(p, err) {
				return
			}
			select {
			case <-time.After(handshakeRetries[attempt]):
			case <-r.ctx.Done():
				return
			}
		}
	})
}

// spawn runs f on a goroutine owned by the realm (Leave waits for it),
// unless the realm is left.
func (r *Realm) spawn(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spawnLocked(f)
}

// spawnLocked is spawn with r.mu held.
func (r *Realm) spawnLocked(f func()) {
	if r.left {
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		f()
	}()
}

// handshakeRetries are the waits before the retries of a handshake with a
// connected peer that failed for a reason other than the peer's refusal
// (its length + 1 is the number of attempts; ours).
var handshakeRetries = []time.Duration{250 * time.Millisecond, time.Second}

// retryable reports whether a failed handshake with p is worth another try:
// the realm is joined, p is still connected and not a member, and p did not
// refuse (a peer that resets the stream is not in the realm, or is at its
// limit: discovery rounds try again later).
func (r *Realm) retryable(p peer.ID, err error) bool {
	var reset *network.StreamError
	switch {
	case errors.Is(err, ErrLeft), errors.Is(err, errSaidGoodbye), errors.Is(err, network.ErrResourceLimitExceeded), r.ctx.Err() != nil:
		return false
	case errors.As(err, &reset) && reset.Remote:
		return false
	case errors.Is(err, ErrAuthFailed) && !errors.Is(err, errNoReply):
		return false
	}
	return r.svc.deps.Host.Network().Connectedness(p) == network.Connected && !r.authenticated(p)
}

// candidate connects to a possible member and authenticates, in the
// background (at most maxCandidateDials at once per realm).
func (r *Realm) candidate(ai peer.AddrInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.candidateLocked(ai)
}

func (r *Realm) candidateLocked(ai peer.AddrInfo) {
	p := ai.ID
	if r.left || p == r.svc.deps.Host.ID() || p == "" {
		return
	}
	if _, busy := r.trying[p]; busy || r.pending[p] != nil || (r.members[p] != nil && r.members[p].authenticated) {
		return
	}
	if len(r.trying) >= maxCandidates {
		return // discovery offers it again later
	}
	r.trying[p] = struct{}{}
	r.spawnLocked(func() {
		defer func() {
			r.mu.Lock()
			delete(r.trying, p)
			r.mu.Unlock()
		}()
		select {
		case r.dials <- struct{}{}:
			defer func() { <-r.dials }()
		case <-r.ctx.Done():
			return
		}
		ctx, cancel := context.WithTimeout(r.ctx, candidateTimeout)
		defer cancel()
		if err := r.connectAndAuthenticate(ctx, ai); err != nil {
			log.Debugw("candidate not authenticated", "realm", r.name, "peer", p, "err", err)
		}
	})
}

func (r *Realm) connectAndAuthenticate(ctx context.Context, ai peer.AddrInfo) error {
	if err := r.svc.deps.Host.Connect(ctx, ai); err != nil {
		return fmt.Errorf("realm %q: connect to %s: %w", r.name, ai.ID, err)
	}
	return r.authenticate(ctx, ai.ID)
}

// Leave leaves the realm: it stops discovery, sends a signed goodbye to
// every connected member (waiting for them at most until ctx ends), ends
// every membership (EvtMemberLeft with ReasonLocalLeave), unassigns the
// sub-pool and removes the handlers. The realm is left whatever happens;
// the error joins the goodbyes that failed (not acknowledged before ctx
// ended, or refused) and, when a Subscribe subscriber did not take the last
// events before ctx ended, ctx's error. A second call returns the first
// call's error once it has finished.
func (r *Realm) Leave(ctx context.Context) error {
	r.mu.Lock()
	if r.left {
		r.mu.Unlock()
		select {
		case <-r.leaveDone:
		case <-ctx.Done():
			return ctx.Err()
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.leaveErr
	}
	r.left = true
	r.leaving.Store(true)
	r.mu.Unlock()
	// No new handshake can start from here on (admissions fail with
	// ErrLeft); the ones running end (at most HandshakeTimeout) before the
	// goodbyes go out, so a peer that admits this node in a handshake's last
	// message still gets one. The name stays taken until Leave returns.
	r.awaitHandshakes(ctx)
	r.mu.Lock()
	var goodbyeTo []peer.ID
	for p, m := range r.members {
		if m.authenticated {
			goodbyeTo = append(goodbyeTo, p)
		}
	}
	for p := range r.admittedBy {
		if m := r.members[p]; m == nil || !m.authenticated {
			goodbyeTo = append(goodbyeTo, p)
		}
	}
	r.mu.Unlock()
	err := r.sayGoodbye(ctx, goodbyeTo)
	r.cancel()
	if r.stopMDNS != nil {
		_ = r.stopMDNS()
	}
	r.wg.Wait()
	r.mu.Lock()
	for p := range r.members {
		r.removeLocked(p, ReasonLocalLeave)
	}
	clear(r.handlers)
	r.mu.Unlock()
	// A subscriber that does not read its subscription must not block
	// Leave past ctx (go-libp2p's bus blocks the emitter).
	if qerr := r.events.CloseContext(ctx); err == nil && qerr != nil {
		err = fmt.Errorf("realm %q: events not delivered: %w", r.name, qerr)
	}
	r.mu.Lock()
	r.leaveErr = err
	r.mu.Unlock()
	r.svc.forget(r)
	close(r.leaveDone)
	log.Infow("left realm", "realm", r.name)
	return err
}
