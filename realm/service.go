package realm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/benbjohnson/clock"
	lru "github.com/hashicorp/golang-lru/v2"
	logging "github.com/ipfs/go-log/v2"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/eventqueue"
	"github.com/realmnet/realmnet/internal/realmwire"
)

var log = logging.Logger("realmnet/realm")

// Protocol IDs. They are the same for every realm, so identify (which lists a
// node's protocols) reveals that a node runs realms, never which.
const (
	// AuthProtocol carries the mutual PSK handshake.
	AuthProtocol protocol.ID = "/realmnet/realm/auth/1.0.0"
	// StreamProtocol carries every realm stream (application protocols,
	// member exchange, goodbyes) behind a header naming the realm handle.
	StreamProtocol protocol.ID = "/realmnet/realm/stream/1.0.0"
)

// HandshakeTimeout bounds one handshake, and the header of a realm stream,
// from the stream's opening (DESIGN.md "realm auth deadline").
const HandshakeTimeout = 5 * time.Second

// Stream reset codes (network.StreamErrorCode) of realm streams. One code for
// every membership failure, so a non-member learns nothing about which
// handles exist.
const (
	// ErrorCodeRefused: not dispatched — bad header, unknown handle or the
	// sender is not a member.
	ErrorCodeRefused network.StreamErrorCode = 0x5245_0001
	// ErrorCodeNoHandler: the member's realm has no handler for the protocol.
	ErrorCodeNoHandler network.StreamErrorCode = 0x5245_0002
	// ErrorCodeResourceLimit: the realm's stream limit is reached.
	ErrorCodeResourceLimit network.StreamErrorCode = 0x5245_0003
)

const (
	// maxInboundHandshakes bounds concurrent responder handshakes past a
	// hello whose tag matched one of our realms (only key holders get
	// there); more are reset at once (counted as AuthRefused). A hello that
	// is slow, malformed or matches no realm takes no slot: it costs a
	// stream (bounded by go-libp2p's resource manager) for at most
	// HandshakeTimeout.
	maxInboundHandshakes = 64
	// maxInboundHandshakesPerPeer bounds one peer's concurrent responder
	// handshakes (a peer in several shared realms runs one per realm).
	maxInboundHandshakesPerPeer = 8
	// nonceCacheSize is how many recent nonces (sent and received) are kept
	// to refuse replays and reflections: 2^16 × 32 bytes ≈ 2 MiB at most.
	nonceCacheSize = 1 << 16
	// DefaultAuthTimeout is the realm-only policy's time for a connected
	// peer to authenticate into a shared realm (ours).
	DefaultAuthTimeout = 10 * time.Second
	// DefaultRealmOnlyBackoff is how long the realm-only policy then refuses
	// that peer (ours).
	DefaultRealmOnlyBackoff = time.Minute
	// closeGoodbyeBudget bounds the goodbyes Close sends.
	closeGoodbyeBudget = 500 * time.Millisecond
)

// Service runs a node's realms: it owns the realm protocols' handlers, the
// realms joined, their members and handles, and the realm-only policy.
// Its methods are safe for concurrent use. node.Node owns one.
type Service struct {
	deps   realmwire.Deps
	events *eventqueue.Queue

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.RWMutex
	realms  map[string]*Realm
	handles map[handle]handleEntry
	closed  bool

	// nonces holds recently sent and received handshake nonces (the keys;
	// the values are nil). The cache is safe for concurrent use.
	nonces     *lru.Cache[[32]byte, any]
	handshakes chan struct{}

	flightsMu sync.Mutex
	flights   map[peer.ID]*flight

	streams streamTracker
	// pubsubMu guards pubsub, the node's gossipsub router (made by the
	// first Join), and topicRealms, the realm of each joined wire topic.
	pubsubMu    sync.Mutex
	pubsub      *pubsub.PubSub
	topicRealms map[string]*Realm
	policy      atomic.Pointer[realmOnly]
	stats       counters
	sub         event.Subscription
	notify      *network.NotifyBundle
	// handshakeSeconds observes completed handshakes (Collector).
	handshakeSeconds prometheus.Histogram

	// connsMu guards conns, the number of announced connections to each
	// peer, kept from the swarm's notifications. It is taken before any
	// realm's mu (never the other way round), so that admitting a member
	// and losing its last connection are ordered.
	connsMu sync.Mutex
	conns   map[peer.ID]int

	// relayState is the realm relay service and this member's
	// reservations on realm relays (relay.go).
	relayState
}

type handleEntry struct {
	realm *Realm
	peer  peer.ID
}

// NewService starts the realm service on deps.Host: it registers the two
// realm protocols, watches identify and the connections, and turns the
// realm-only policy on when deps.RealmOnly is set. It is wiring, called by
// package node: its parameter's type is internal to the module, so
// applications cannot call it (they reach realms through node.Node). The
// error names a missing dependency, a bad realm-only duration or an event
// bus failure.
func NewService(deps realmwire.Deps) (*Service, error) {
	switch {
	case deps.Host == nil:
		return nil, errors.New("realm: NewService: nil Host")
	case deps.Backend == nil:
		return nil, errors.New("realm: NewService: nil Backend")
	case deps.RealmOnly != nil && deps.RealmOnly.AuthTimeout <= 0:
		return nil, fmt.Errorf("realm: realm-only: AuthTimeout %v, want > 0", deps.RealmOnly.AuthTimeout)
	case deps.RealmOnly != nil && deps.RealmOnly.Backoff <= 0:
		return nil, fmt.Errorf("realm: realm-only: backoff %v, want > 0", deps.RealmOnly.Backoff)
	}
	if deps.Clock == nil {
		deps.Clock = clock.New()
	}
	nonces, err := lru.New[[32]byte, any](nonceCacheSize)
	if err != nil {
		return nil, fmt.Errorf("realm: nonce cache: %w", err)
	}
	events, err := eventqueue.New(deps.Host.EventBus(), new(EvtMemberJoined), new(EvtMemberLeft))
	if err != nil {
		return nil, fmt.Errorf("realm: %w", err)
	}
	sub, err := deps.Host.EventBus().Subscribe(new(event.EvtPeerIdentificationCompleted), eventbus.Name("realmnet/realm"))
	if err != nil {
		events.Close()
		return nil, fmt.Errorf("realm: subscribe to identify: %w", err)
	}
	s := &Service{
		deps:        deps,
		events:      events,
		realms:      make(map[string]*Realm),
		handles:     make(map[handle]handleEntry),
		topicRealms: make(map[string]*Realm),
		nonces:      nonces,
		handshakes:  make(chan struct{}, maxInboundHandshakes),
		flights:     make(map[peer.ID]*flight),
		sub:         sub,
		conns:       make(map[peer.ID]int),

		handshakeSeconds: newHandshakeHistogram(),
	}
	s.streams.init()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.notify = &network.NotifyBundle{ConnectedF: s.connected, DisconnectedF: s.disconnected}
	deps.Host.Network().Notify(s.notify)
	for _, c := range deps.Host.Network().Conns() {
		s.conns[c.RemotePeer()]++
	}
	deps.Host.SetStreamHandler(AuthProtocol, s.respond)
	deps.Host.SetStreamHandler(StreamProtocol, s.handleStream)
	s.wg.Add(1)
	go s.watchIdentify()
	s.relayClient.reservations = make(map[peer.ID]reservation)
	s.relayClient.backoff = make(map[peer.ID]relayBackoff)
	relaySub, err := deps.Host.EventBus().Subscribe([]any{new(event.EvtLocalReachabilityChanged), new(EvtMemberJoined),
		new(EvtMemberLeft), new(event.EvtPeerProtocolsUpdated), new(event.EvtPeerIdentificationCompleted)},
		eventbus.Name("realmnet/realm relays"))
	if err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("realm: subscribe for realm relays: %w", err)
	}
	s.wg.Add(1)
	go s.keepRelayReservations(relaySub)
	if ro := deps.RealmOnly; ro != nil {
		if err := s.enableRealmOnly(ro.AuthTimeout, ro.Backoff, ro.Exempt); err != nil {
			_ = s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Join joins (or creates) the realm called name. It returns at once: members
// are authenticated in the background as they are found (connected peers,
// Peers, the DHT, member exchange, mDNS) and announced as
// EvtMemberJoined. Errors: ErrBadName, ErrWeakPSK (from PSK), ErrNoKey
// (neither PSK nor Open), PSK and Open together,
// ErrAlreadyJoined, ErrLeft after Close, an invalid limit (naming it), or
// ctx's error.
func (s *Service) Join(ctx context.Context, name string, opts ...Option) (*Realm, error) {
	if err := validateName(name); err != nil {
		return nil, err
	}
	cfg := defaultConfig()
	for _, opt := range opts {
		if opt == nil {
			return nil, errors.New("realm: nil Option")
		}
		if err := opt(&cfg); err != nil {
			return nil, err
		}
	}
	switch {
	case cfg.PSK == nil && !cfg.Open:
		return nil, fmt.Errorf("realm %q: %w", name, ErrNoKey)
	case cfg.PSK != nil && cfg.Open:
		return nil, fmt.Errorf("realm %q: PSK and Open are exclusive: a realm is closed (PSK) or open", name)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k := deriveKeys(name, cfg.PSK)
	cfg.PSK = nil // the keys are derived; do not keep the secret around
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return nil, ErrLeft
	case s.realms[name] != nil && s.realms[name].leaving.Load():
		return nil, fmt.Errorf("%w: %q is still being left (Leave has not returned)", ErrAlreadyJoined, name)
	case s.realms[name] != nil:
		return nil, fmt.Errorf("%w: %q", ErrAlreadyJoined, name)
	}
	// Limits are set at every join — the node's defaults when the option
	// is absent — so a previous join's options do not linger.
	limits := s.deps.Backend.RealmPoolDefaults()
	if cfg.PoolLimits != nil {
		limits = *cfg.PoolLimits
	}
	var scopeLimits core.RealmScopeLimits // zero fields: the node's defaults
	if cfg.ScopeLimits != nil {
		scopeLimits = *cfg.ScopeLimits
	}
	if err := s.deps.Backend.SetRealmLimits(k.id, limits, scopeLimits); err != nil {
		return nil, fmt.Errorf("realm %q: %w", name, err)
	}
	r, err := newRealm(s, name, k, cfg)
	if err != nil {
		return nil, err
	}
	s.realms[name] = r
	r.start()
	if cfg.Relay {
		s.relayJoined()
	}
	log.Infow("joined realm", "realm", name, "id", k.id)
	return r, nil
}

// Realm returns the joined realm called name, or nil.
func (s *Service) Realm(name string) *Realm {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.realms[name]
}

// Realms returns the joined realms, sorted by name.
func (s *Service) Realms() []*Realm {
	out := s.joined()
	slices.SortFunc(out, func(a, b *Realm) int {
		switch {
		case a.name < b.name:
			return -1
		case a.name > b.name:
			return 1
		}
		return 0
	})
	return out
}

// joined returns the joined realms in no particular order (the internal
// paths: every hello, identify and disconnection).
func (s *Service) joined() []*Realm {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*Realm, 0, len(s.realms))
	for _, r := range s.realms {
		out = append(out, r)
	}
	return out
}

// Stats returns the service's counters.
func (s *Service) Stats() Stats { return s.stats.snapshot() }

// IsMember reports whether p is an authenticated member of at least one
// joined realm.
func (s *Service) IsMember(p peer.ID) bool {
	for _, r := range s.joined() {
		if r.authenticated(p) {
			return true
		}
	}
	return false
}

// Close leaves every realm (sending goodbyes for at most 500 ms) and stops
// the service's goroutines; its protocol handlers, left on the host, refuse
// every stream from then on. The node closes the service just before the
// host. Idempotent.
func (s *Service) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), closeGoodbyeBudget)
	defer cancel()
	var wg sync.WaitGroup
	for _, r := range s.Realms() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = r.Leave(ctx)
		}()
	}
	wg.Wait()
	// The protocol handlers stay registered: they now refuse everything
	// (no realm, no handle), and removing them would make identify push a
	// protocol change to every connected peer while the node shuts down
	// (slow over a dead path: go-libp2p's Close waits for the pushes).
	s.deps.Host.Network().StopNotify(s.notify)
	s.cancel()
	_ = s.sub.Close()
	if p := s.policy.Load(); p != nil {
		p.close()
	}
	s.wg.Wait()
	_ = s.events.CloseContext(ctx)
	return nil
}

// forget removes a left realm (called by Leave).
func (s *Service) forget(r *Realm) {
	s.mu.Lock()
	forgot := s.realms[r.name] == r
	if forgot {
		delete(s.realms, r.name)
	}
	s.mu.Unlock()
	if forgot && r.cfg.Relay {
		s.relayLeft()
	}
}

func (s *Service) setHandle(h handle, e handleEntry) {
	s.mu.Lock()
	s.handles[h] = e
	s.mu.Unlock()
}

func (s *Service) dropHandle(h handle, r *Realm) {
	s.mu.Lock()
	if s.handles[h].realm == r {
		delete(s.handles, h)
	}
	s.mu.Unlock()
}

func (s *Service) lookupHandle(h handle) (handleEntry, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.handles[h]
	return e, ok
}

// watchIdentify starts a handshake, for every joined realm, with every newly
// identified peer that speaks AuthProtocol and is not yet authenticated.
func (s *Service) watchIdentify() {
	defer s.wg.Done()
	for e := range s.sub.Out() {
		evt := e.(event.EvtPeerIdentificationCompleted)
		if !slices.Contains(evt.Protocols, AuthProtocol) {
			continue
		}
		for _, r := range s.joined() {
			r.authenticateAsync(evt.Peer)
		}
	}
}

// connected counts the peer's connection, starts the realm-only timer for
// its first, and re-authenticates the peer where it is a member in grace.
func (s *Service) connected(_ network.Network, c network.Conn) {
	p := c.RemotePeer()
	s.connsMu.Lock()
	s.conns[p]++
	s.connsMu.Unlock()
	if policy := s.policy.Load(); policy != nil {
		policy.connected(p)
	}
	// A member in its reconnect grace has a connection again: authenticate
	// it over that connection now (its reconnection may have been the
	// peer's doing, and our own redial may have failed).
	for _, r := range s.joined() {
		if r.inGrace(p) {
			r.authenticateAsync(p)
		}
	}
}

// disconnected releases the realm streams of a closed connection and, when
// it was the peer's last, starts its members' reconnect grace (under
// connsMu, so that a concurrent admission sees either the connection or the
// grace).
func (s *Service) disconnected(_ network.Network, c network.Conn) {
	s.streams.releaseConn(c)
	p := c.RemotePeer()
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	if s.conns[p]--; s.conns[p] > 0 {
		return
	}
	delete(s.conns, p)
	if s.connectedLocked(p) {
		// A newer connection is recorded, its Connected on its way: no
		// grace (its own Disconnected will start one when it closes).
		return
	}
	if policy := s.policy.Load(); policy != nil {
		policy.disconnected(p)
	}
	for _, r := range s.joined() {
		r.lostConnection(p)
	}
}

// connectedLocked reports whether p has an announced connection; connsMu is
// held. The count lags the swarm by the Connected notification of a
// connection the swarm has just recorded (a handshake may already run over
// it): the swarm's own view covers that window. The other lag, a closed
// connection whose Disconnected is on its way, needs no cover: the swarm
// forgets a closed connection at once, and the notification then starts the
// grace.
func (s *Service) connectedLocked(p peer.ID) bool {
	return s.conns[p] > 0 || s.hasConn(p)
}

// hasConn reports whether the swarm has a connection to p: a direct one
// (network.Connected) or only relayed ones (network.Limited, which realm
// streams may use).
func (s *Service) hasConn(p peer.ID) bool {
	return s.deps.Host.Network().Connectedness(p) != network.NotConnected
}
