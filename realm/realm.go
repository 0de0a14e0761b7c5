package realm

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/benbjohnson/clock"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/eventqueue"
)

// maxCandidateDials bounds a realm's concurrent connect-and-authenticate
// attempts to candidates other than those learnt from member exchange
// (members in their reconnect grace, Peers, DHT providers, mDNS); those
// have their own maxExchangeDials (candidates.go).
const maxCandidateDials = 8

// maxCandidates bounds the candidates other than those learnt from member
// exchange that a realm holds at once (dialing or waiting for one of the
// maxCandidateDials slots); more are dropped, so a DHT answer full of
// made-up peers cannot grow the node's goroutines. Exchange candidates have
// their own maxExchangeCandidates: a member's made-up peers never take
// these slots (issue #11, item 6).
const maxCandidates = 64

// candidateTimeout bounds one candidate's connection and handshake.
const candidateTimeout = 15 * time.Second

// Realm is a joined realm: its members, its stream handlers, its discovery.
// Its methods are safe for concurrent use. After Leave (or the node's
// Close) it is inert: NewStream returns ErrLeft, Members is empty.
//
// Its state is split by concern — membership (membership.go), handshakes
// (auth.go), candidates (discovery.go), goodbyes (goodbye.go) — under one
// lock, mu, because admissions must see membership, handshakes, goodbyes and
// the realm's end at once.
type Realm struct {
	svc  *Service
	name string
	keys keys
	cfg  Config
	cid  cid.Cid
	// joined is when the realm was joined (Service.Join).
	joined time.Time

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	bus    event.Bus
	events *eventqueue.Queue

	mu         sync.Mutex
	membership membership
	handshakes handshakes
	candidates candidates
	handlers   map[protocol.ID]network.StreamHandler
	// requestSlots bound the requests in flight to each member (Request);
	// an entry lives while a request to its member is in flight or
	// waiting.
	requestSlots map[peer.ID]*requestSlots
	// topics are the joined topics by name (Join); publishRate bounds
	// what this node publishes in the realm.
	topics      map[string]*Topic
	publishRate *rate.Limiter
	left        bool
	leaveErr    error
	leaveDone   chan struct{} // closed when Leave has finished
	// leaving mirrors left for readers that must not take mu (the service,
	// under its own lock).
	leaving  atomic.Bool
	stopMDNS func() error
}

// membership is who is in the realm and what is known of who left;
// guarded by Realm.mu.
type membership struct {
	members map[peer.ID]*member
	// goodbyes counts the goodbyes received from each peer; a handshake
	// that began before the latest one does not admit the peer.
	goodbyes map[peer.ID]uint64
	// admittedBy holds peers that admitted this node in a handshake this
	// node could no longer complete (the realm was being left): they are
	// owed a goodbye.
	admittedBy map[peer.ID]struct{}
	// changed is closed, and replaced, whenever a member joins,
	// authenticates again, loses its connection or leaves (WaitMembers).
	changed chan struct{}
}

// handshakes are the realm's handshakes in progress; guarded by Realm.mu.
type handshakes struct {
	// pending holds the initiator handshake running with each peer, which
	// concurrent authenticate calls share.
	pending map[peer.ID]*pendingAuth
	// running counts the handshakes running with each peer for this realm
	// (either role); Leave waits for them.
	running map[peer.ID]int
}

// candidates are the peers being connected to as possible members; trying
// and exchangeTrying are guarded by Realm.mu.
type candidates struct {
	trying map[peer.ID]candidateSource
	// exchangeTrying counts the entries of trying learnt from member
	// exchange (at most maxExchangeCandidates).
	exchangeTrying int
	// dials holds one token per connect-and-authenticate in progress to a
	// candidate not learnt from exchange (at most maxCandidateDials);
	// exchangeDials the same for the others (at most maxExchangeDials).
	dials, exchangeDials chan struct{}
	// learnt holds records learnt from exchanges for peers not
	// authenticated yet, outside the peerstore (safe for concurrent use).
	learnt *lru.Cache[peer.ID, learntRecord]
	// failed holds the retry backoff of exchange candidates that failed
	// (safe for concurrent use).
	failed *lru.Cache[peer.ID, candidateFailure]
	// joined is signalled (without blocking) when a member joins, so the
	// discovery loop re-checks whether it wants more.
	joined chan struct{}
}

// member is one authenticated (or, within its reconnect grace, formerly
// authenticated) member.
type member struct {
	since         time.Time
	authenticated bool
	lastExchange  time.Time // when it last opened an exchange this node answered
	handle        handle
	release       func()       // the member's charge in the realm's resource scope
	grace         *clock.Timer // running while not authenticated
}

// MemberInfo describes a member.
type MemberInfo struct {
	Peer peer.ID
	// Since is when the member (last) joined.
	Since time.Time
	// Connected is false while the member is within its reconnect grace.
	Connected bool
	// Paths are the member's paths (connections), as multipath sees them.
	Paths []core.PathInfo
}

func newRealm(s *Service, name string, k keys, cfg Config) (*Realm, error) {
	bus := eventbus.NewBus()
	events, err := eventqueue.New(bus, new(EvtMemberJoined), new(EvtMemberLeft))
	if err != nil {
		return nil, fmt.Errorf("realm %q: %w", name, err)
	}
	r := &Realm{
		svc:    s,
		name:   name,
		keys:   k,
		cfg:    cfg,
		cid:    k.rendezvousCID(),
		joined: time.Now(),
		bus:    bus,
		events: events,
		membership: membership{
			members:    make(map[peer.ID]*member),
			goodbyes:   make(map[peer.ID]uint64),
			admittedBy: make(map[peer.ID]struct{}),
			changed:    make(chan struct{}),
		},
		handshakes: handshakes{
			pending: make(map[peer.ID]*pendingAuth),
			running: make(map[peer.ID]int),
		},
		candidates: candidates{
			trying:        make(map[peer.ID]candidateSource),
			dials:         make(chan struct{}, maxCandidateDials),
			exchangeDials: make(chan struct{}, maxExchangeDials),
			joined:        make(chan struct{}, 1),
			learnt:        newLearntCache(),
			failed:        newFailureCache(),
		},
		handlers:     make(map[protocol.ID]network.StreamHandler),
		requestSlots: make(map[peer.ID]*requestSlots),
		topics:       make(map[string]*Topic),
		publishRate:  newPublishRate(cfg.PubSub),
		leaveDone:    make(chan struct{}),
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
			r.candidate(ai, sourceKnown)
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

// Joined returns when the realm was joined.
func (r *Realm) Joined() time.Time { return r.joined }

// ID returns the realm's ID (the name of its sub-pool and resource scope).
func (r *Realm) ID() core.RealmID { return r.keys.id }

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
	// Out of the topics' meshes at once: this node stops receiving the
	// realm's messages before it says goodbye.
	r.closeTopics()
	// No new handshake can start from here on (admissions fail with
	// ErrLeft); the ones running end (at most HandshakeTimeout) before the
	// goodbyes go out, so a peer that admits this node in a handshake's last
	// message still gets one. The name stays taken until Leave returns.
	r.awaitHandshakes(ctx)
	r.mu.Lock()
	var goodbyeTo []peer.ID
	for p, m := range r.membership.members {
		if m.authenticated {
			goodbyeTo = append(goodbyeTo, p)
		}
	}
	for p := range r.membership.admittedBy {
		if m := r.membership.members[p]; m == nil || !m.authenticated {
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
	for p := range r.membership.members {
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
