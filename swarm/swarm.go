// Package swarm is realmnet's implementation of go-libp2p's
// core/network.Network: it owns every listener and every live connection of a
// node — several per peer, one per path — and the streams on them.
//
// It dials and listens with go-libp2p's QUIC transport (called directly, no
// upgrader), deduplicates concurrent dials to a peer and to an address,
// tries a peer's addresses happy-eyeballs style (go-libp2p's
// DefaultDialRanker), retries and backs off per peer (RetryConfig, via
// cenkalti/backoff), asks the dial gater before dialing, and runs every new
// connection through the admission pipeline (core.AdmissionStage: gater,
// paths, pools in a node) before it announces it: Notifiee callbacks,
// event.EvtPeerConnectednessChanged and its lifecycle events
// (EvtConnectionOpened/Closed, EvtStreamOpened/Closed). Which connection
// carries a new stream is asked of a pluggable core.PathSelector. The swarm
// owns no policy of its own: who is allowed, which of two redundant
// connections survives, path quality and limits live in the stages and the
// selector (docs/architecture.md).
//
// Every goroutine the swarm starts is counted in its refs and finished by
// Close.
package swarm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/benbjohnson/clock"
	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/transport"
	libp2pswarm "github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/eventqueue"
)

var log = logging.Logger("realmnet/swarm")

// The swarm's errors are go-libp2p's swarm errors, so that errors.Is works for
// code written against go-libp2p (kad-dht, the basic host, applications).
var (
	// ErrSwarmClosed is returned by operations on a closed swarm.
	ErrSwarmClosed = libp2pswarm.ErrSwarmClosed
	// ErrDialToSelf is returned when asked to dial the local peer.
	ErrDialToSelf = libp2pswarm.ErrDialToSelf
	// ErrDialBackoff is returned while a peer is backed off after a failed
	// dial (see RetryConfig).
	ErrDialBackoff = libp2pswarm.ErrDialBackoff
	// ErrNoAddresses is returned when the peerstore knows no address of the
	// peer.
	ErrNoAddresses = libp2pswarm.ErrNoAddresses
	// ErrNoGoodAddresses is returned when every known address was filtered
	// out (not dialable by QUIC, our own address, or refused by the gater).
	ErrNoGoodAddresses = libp2pswarm.ErrNoGoodAddresses
	// ErrGaterDisallowedConnection is returned when the gater refuses a peer
	// or an upgraded connection.
	ErrGaterDisallowedConnection = libp2pswarm.ErrGaterDisallowedConnection
)

// Params are the swarm's collaborators. LocalPeer, Peerstore, Transport and
// EventBus are required.
type Params struct {
	// LocalPeer is this node's peer ID.
	LocalPeer peer.ID
	// Peerstore holds the addresses and keys of known peers.
	Peerstore peerstore.Peerstore
	// Transport dials and listens; realmnet uses go-libp2p's QUIC transport,
	// which itself calls ResourceManager.OpenConnection and the gater's
	// InterceptAccept.
	Transport transport.Transport
	// ResourceManager accounts streams; nil means network.NullResourceManager.
	ResourceManager network.ResourceManager
	// Dials is asked before every dial (peer rules, then each address);
	// nil allows every dial.
	Dials core.DialGater
	// Admission is the admission pipeline: the stages every new connection
	// passes, in order, before it is announced (docs/architecture.md:
	// gater, paths, pools). A connection one of them refuses is closed and
	// never announced.
	Admission []core.AdmissionStage
	// Pools, when not nil, names a peer's pools in EvtConnectionOpened.
	Pools core.PoolReporter
	// EventBus receives event.EvtPeerConnectednessChanged and the
	// lifecycle events (EvtConnectionOpened, ...).
	EventBus event.Bus
	// Config holds the tunables; zero fields take their defaults.
	Config Config
	// Clock is the time of the per-peer dial backoff windows and of their
	// periodic cleanup (github.com/benbjohnson/clock, as go-libp2p's
	// connmgr.WithClock); nil is the real clock. Tests pass a mock clock to
	// move time without sleeping. The delays between the attempts of one
	// DialPeer call, dial timeouts and the redundant-connection timers stay
	// in real time.
	Clock clock.Clock
}

// Swarm implements network.Network over go-libp2p's QUIC transport with
// several connections per peer. Create it with New; it is safe for
// concurrent use; Close stops every goroutine it started.
//
// A connection the transport produces goes through the admission pipeline
// (Params.Admission) under a per-peer lock before anyone sees it; only an
// admitted connection is recorded, announced (Notifiee Connected, events)
// and given streams. A connection that a stage finds redundant with another
// on the same pair of addresses is not announced either; the peer may have
// used it, so the swarm keeps serving the peer's streams on it, unannounced,
// until the peer closes it or it stays without streams for RedundantQuiet
// (we dialed it) or RedundantIdleTimeout (the peer did), and announces it
// after all if its survivor closes first.
type Swarm struct {
	local     peer.ID
	peers     peerstore.Peerstore
	transport transport.Transport
	rcmgr     network.ResourceManager
	dials     core.DialGater
	stages    atomic.Pointer[[]core.AdmissionStage]
	pools     core.PoolReporter
	cfg       Config
	clock     clock.Clock

	selector atomic.Pointer[core.PathSelector]
	handler  atomic.Pointer[network.StreamHandler]

	// ctx is cancelled by Close; dials in flight stop with it.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.RWMutex
	closed    bool
	conns     map[peer.ID][]*Conn // announced, oldest first
	redundant map[peer.ID][]*Conn // unannounced, still serving the peer's streams
	listeners map[*listener]struct{}
	// transports are the transports by protocol (transports.go).
	transports transportSet
	// directWaiters are closed when a peer's first unlimited connection is
	// announced (NewStream waits on them: waitForDirectConn).
	directWaiters map[peer.ID][]chan struct{}
	peerDials     map[peer.ID]*activeDial
	addrDials     map[string]*addrDial // by peer ID ‖ address bytes
	// dialing counts, per peer, the dials (DialPeer attempts and DialPath)
	// whose connection has not finished admission; dialDone is closed when
	// the count drops to zero.
	dialing map[peer.ID]*dialCount
	// backoffs holds the peers backed off after a failed DialPeer, and
	// those whose window ended less than one window ago (peerBackoff.stale).
	// A success deletes the peer's entry, pruneBackoffs the stale ones, and
	// it never holds more than maxBackoffEntries.
	backoffs map[peer.ID]*peerBackoff
	// admitting serialises the admission of each peer's connections.
	admitting map[peer.ID]*peerLock

	notifyMu  sync.RWMutex
	notifiees map[network.Notifiee]struct{}

	connectedness *connectednessEmitter
	// lifecycle delivers EvtConnection*/EvtStream* events without
	// blocking the stream path.
	lifecycle *eventqueue.Queue

	nextConnID   atomic.Uint64
	nextStreamID atomic.Uint64

	admitted atomic.Uint64
	refused  sync.Map // core.CloseReason → *atomic.Uint64

	// refs counts every goroutine the swarm runs and every live connection
	// (whose Disconnected goroutine releases it); not the inbound stream
	// handlers, which end when Close resets their streams. Close waits for
	// it to drain.
	refs      sync.WaitGroup
	closeOnce sync.Once
}

// peerLock serialises one peer's admissions; refs counts its holders and
// waiters, so the entry is dropped when nobody uses it.
type peerLock struct {
	mu   sync.Mutex
	refs int
}

// dialCount is the number of a peer's dials in flight and a channel closed
// when it drops to zero.
type dialCount struct {
	n    int
	done chan struct{}
}

var _ network.Network = (*Swarm)(nil)

// New creates a swarm. It does not listen; call Listen. It returns an error
// naming the missing parameter or the invalid Config field.
func New(p Params) (*Swarm, error) {
	switch {
	case p.LocalPeer == "":
		return nil, errors.New("swarm: Params.LocalPeer is empty")
	case p.Peerstore == nil:
		return nil, errors.New("swarm: Params.Peerstore is nil")
	case p.Transport == nil:
		return nil, errors.New("swarm: Params.Transport is nil")
	case p.EventBus == nil:
		return nil, errors.New("swarm: Params.EventBus is nil")
	}
	cfg, err := p.Config.withDefaults()
	if err != nil {
		return nil, err
	}
	rcmgr := p.ResourceManager
	if rcmgr == nil {
		rcmgr = &network.NullResourceManager{}
	}
	clk := p.Clock
	if clk == nil {
		clk = clock.New()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Swarm{
		local:     p.LocalPeer,
		peers:     p.Peerstore,
		transport: p.Transport,
		rcmgr:     rcmgr,
		dials:     p.Dials,
		pools:     p.Pools,
		cfg:       cfg,
		clock:     clk,
		ctx:       ctx,
		cancel:    cancel,
		conns:     make(map[peer.ID][]*Conn),
		redundant: make(map[peer.ID][]*Conn),
		listeners: make(map[*listener]struct{}),
		peerDials: make(map[peer.ID]*activeDial),
		addrDials: make(map[string]*addrDial),
		dialing:   make(map[peer.ID]*dialCount),
		backoffs:  make(map[peer.ID]*peerBackoff),
		admitting: make(map[peer.ID]*peerLock),
		notifiees: make(map[network.Notifiee]struct{}),
	}
	s.addTransportLocked(p.Transport)
	s.selector.Store(&cfg.PathSelector)
	s.SetAdmission(p.Admission...)
	s.connectedness, err = newConnectednessEmitter(p.EventBus, s.Connectedness)
	if err != nil {
		cancel()
		return nil, err
	}
	s.lifecycle, err = eventqueue.New(p.EventBus, new(EvtConnectionOpened), new(EvtConnectionClosed),
		new(EvtStreamOpened), new(EvtStreamClosed))
	if err != nil {
		s.connectedness.close()
		cancel()
		return nil, fmt.Errorf("swarm: %w", err)
	}
	// The ticker exists before New returns, so that a mock clock moved
	// right after New fires it.
	tick := s.clock.Ticker(backoffCleanupInterval)
	s.refs.Add(1)
	go s.pruneBackoffs(tick)
	return s, nil
}

// SetPathSelector replaces the path selector used by NewStream and DialPeer.
// A nil selector restores NewestPathSelector.
func (s *Swarm) SetPathSelector(sel core.PathSelector) {
	if sel == nil {
		sel = NewestPathSelector{}
	}
	s.selector.Store(&sel)
}

// SetAdmission replaces the admission pipeline (Params.Admission): the
// stages every new connection passes, in order. Call it before the swarm
// listens or dials; a connection already in the pipeline finishes with the
// stages it started with.
func (s *Swarm) SetAdmission(stages ...core.AdmissionStage) {
	list := slices.Clone(stages)
	s.stages.Store(&list)
}

// Config returns the swarm's effective configuration (defaults applied).
func (s *Swarm) Config() Config { return s.cfg }

// LocalPeer returns this node's peer ID.
func (s *Swarm) LocalPeer() peer.ID { return s.local }

// Peerstore returns the peerstore the swarm dials from.
func (s *Swarm) Peerstore() peerstore.Peerstore { return s.peers }

// ResourceManager returns the resource manager streams are charged to.
func (s *Swarm) ResourceManager() network.ResourceManager { return s.rcmgr }

// SetStreamHandler sets the handler of inbound streams (the basic host's
// protocol muxer). Each inbound stream runs the handler on its own
// goroutine, owned by the swarm.
func (s *Swarm) SetStreamHandler(h network.StreamHandler) { s.handler.Store(&h) }

// StreamHandler returns the current inbound stream handler, or nil.
func (s *Swarm) StreamHandler() network.StreamHandler {
	if h := s.handler.Load(); h != nil {
		return *h
	}
	return nil
}

// Notify registers n for connection and listener notifications. Connected
// runs synchronously when a connection is added, before its inbound streams
// are accepted; Disconnected runs on another goroutine, always after the
// Connected of the same connection. Notifiees must not block for long.
func (s *Swarm) Notify(n network.Notifiee) {
	s.notifyMu.Lock()
	s.notifiees[n] = struct{}{}
	s.notifyMu.Unlock()
}

// StopNotify unregisters n.
func (s *Swarm) StopNotify(n network.Notifiee) {
	s.notifyMu.Lock()
	delete(s.notifiees, n)
	s.notifyMu.Unlock()
}

func (s *Swarm) notifyAll(f func(network.Notifiee)) {
	s.notifyMu.RLock()
	ns := make([]network.Notifiee, 0, len(s.notifiees))
	for n := range s.notifiees {
		ns = append(ns, n)
	}
	s.notifyMu.RUnlock()
	for _, n := range ns {
		f(n)
	}
}

// Connectedness returns network.Connected when an unlimited connection to
// p is open, network.Limited when only limited (relayed) ones are,
// network.NotConnected otherwise, as go-libp2p's swarm does; the
// connectedness events follow the same rule.
func (s *Swarm) Connectedness(p peer.ID) network.Connectedness {
	s.mu.RLock()
	defer s.mu.RUnlock()
	cs := s.conns[p]
	for _, c := range cs {
		if !c.limited {
			return network.Connected
		}
	}
	if len(cs) > 0 {
		return network.Limited
	}
	return network.NotConnected
}

// Peers returns the peers with at least one open connection.
func (s *Swarm) Peers() []peer.ID {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]peer.ID, 0, len(s.conns))
	for p := range s.conns {
		out = append(out, p)
	}
	return out
}

// Conns returns every open connection, several per peer where there are.
func (s *Swarm) Conns() []network.Conn {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []network.Conn
	for _, cs := range s.conns {
		for _, c := range cs {
			out = append(out, c)
		}
	}
	return out
}

// ConnsToPeer returns the open connections (paths) to p, oldest first.
func (s *Swarm) ConnsToPeer(p peer.ID) []network.Conn {
	s.mu.RLock()
	defer s.mu.RUnlock()
	cs := s.conns[p]
	out := make([]network.Conn, len(cs))
	for i, c := range cs {
		out[i] = c
	}
	return out
}

// ClosePeer closes every connection to p, the unannounced redundant ones
// included.
func (s *Swarm) ClosePeer(p peer.ID) error {
	var errs []error
	s.mu.RLock()
	conns := make([]network.Conn, 0, len(s.conns[p])+len(s.redundant[p]))
	for _, c := range s.conns[p] {
		conns = append(conns, c)
	}
	for _, c := range s.redundant[p] {
		conns = append(conns, c)
	}
	s.mu.RUnlock()
	for _, c := range conns {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// selectConn asks the path selector for the connection to p that should carry
// the next stream, leaving out the connections in exclude; nil when there is
// no open connection the selector accepts, after waiting for an admission of
// p in progress.
func (s *Swarm) selectConn(p peer.ID, exclude ...network.Conn) network.Conn {
	return s.selectConnOnce(p, false, exclude...)
}

// selectConnOnce is selectConn; waited says it already waited for an
// admission in progress.
func (s *Swarm) selectConnOnce(p peer.ID, waited bool, exclude ...network.Conn) network.Conn {
	s.mu.RLock()
	cs := s.conns[p]
	open := make([]network.Conn, 0, len(cs))
	for _, c := range cs {
		if !c.IsClosed() && !slices.Contains(exclude, network.Conn(c)) {
			open = append(open, c)
		}
	}
	_, admitting := s.admitting[p]
	s.mu.RUnlock()
	var c network.Conn
	if len(open) > 0 {
		c = (*s.selector.Load()).SelectPath(p, open)
	}
	if c == nil && admitting && !waited {
		// A connection of p is in the admission pipeline: it may be
		// retiring the path the selector would have picked in favour of
		// itself. Wait for it, then ask again.
		unlock := s.lockPeer(p)
		unlock()
		return s.selectConnOnce(p, true, exclude...)
	}
	return c
}

// maxStreamAttempts bounds how many paths NewStream tries.
const maxStreamAttempts = 3

// NewStream opens a stream to p on the connection the path selector picks,
// dialing first when there is none (unless ctx carries network.WithNoDial, in
// which case it returns network.ErrNoConn). When opening the stream on the
// chosen connection fails for any reason but the context or the resource
// manager, it asks the selector again without that connection and tries the
// next path (up to 3), so a dying path does not fail the stream.
//
// A limited (relayed) connection carries the stream only when ctx allows it
// (network.WithAllowLimitedConn). Otherwise, as in go-libp2p's swarm,
// NewStream uses an unlimited connection to p if there is one, or waits up
// to the dial timeout (network.WithDialPeerTimeout, else
// Config.DialTimeout) for one to be announced (a hole punch, a direct dial
// by either side) and returns an error matching network.ErrLimitedConn
// when none comes.
func (s *Swarm) NewStream(ctx context.Context, p peer.ID) (network.Stream, error) {
	var failed []network.Conn
	var lastErr error
	for range maxStreamAttempts {
		c := s.selectConn(p, failed...)
		if c == nil {
			if lastErr != nil {
				return nil, lastErr
			}
			if noDial, _ := network.GetNoDial(ctx); noDial {
				return nil, network.ErrNoConn
			}
			var err error
			if c, err = s.DialPeer(ctx, p); err != nil {
				return nil, err
			}
		}
		if c.Stat().Limited {
			if allowed, _ := network.GetAllowLimitedConn(ctx); !allowed {
				var err error
				if c, err = s.waitForDirectConn(ctx, p); err != nil {
					return nil, err
				}
			}
		}
		st, err := c.NewStream(ctx)
		if err == nil {
			return st, nil
		}
		if ctx.Err() != nil || errors.Is(err, network.ErrResourceLimitExceeded) {
			return nil, err
		}
		log.Debugw("opening stream failed, trying the next path", "peer", p, "conn", c.ID(), "error", err)
		failed = append(failed, c)
		lastErr = err
	}
	return nil, lastErr
}

// CanDial reports whether one of the swarm's transports can dial addr (QUIC,
// or a relay address when a relay transport was added) and addr is not one
// of our own listen addresses.
func (s *Swarm) CanDial(_ peer.ID, addr ma.Multiaddr) bool {
	return s.transportForDialing(addr) != nil && !s.isOwnAddr(addr)
}

// ListenAddresses returns the addresses the swarm listens on, with the
// ports the operating system chose, sorted by their string form (a stable
// order from call to call).
func (s *Swarm) ListenAddresses() []ma.Multiaddr {
	s.mu.RLock()
	out := make([]ma.Multiaddr, 0, len(s.listeners))
	for l := range s.listeners {
		out = append(out, l.Multiaddr())
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b ma.Multiaddr) int { return strings.Compare(a.String(), b.String()) })
	return out
}

// InterfaceListenAddresses returns the listen addresses with unspecified IPs
// (0.0.0.0, ::) expanded to the addresses of the machine's interfaces.
func (s *Swarm) InterfaceListenAddresses() ([]ma.Multiaddr, error) {
	listen := s.ListenAddresses()
	ifaces, err := manet.InterfaceMultiaddrs()
	if err != nil {
		return nil, fmt.Errorf("swarm: list interface addresses: %w", err)
	}
	return manet.ResolveUnspecifiedAddresses(listen, ifaces)
}

// addConn runs a connection the transport produced (dialed or accepted)
// through the admission pipeline and, when every stage admits it, records
// and announces it: peerstore key, connectedness event, Connected
// notifications, EvtConnectionOpened, then the inbound stream loop. It
// returns the connection to use: the new one, or, when a stage found it
// redundant, the connection that survives in its place. A refused
// connection is closed and the error is the stage's (a *core.RefusedError;
// wrapped in ErrGaterDisallowedConnection when the gater refused).
func (s *Swarm) addConn(ctx context.Context, tc transport.CapableConn, dir network.Direction) (*Conn, error) {
	p := tc.RemotePeer()
	c := s.newConn(tc, dir)
	if dir == network.DirInbound && s.local < p {
		// Of two connections on the same pair of addresses, the one
		// dialed by the smaller peer ID survives (multipath's rule, which
		// both ends compute). We are the smaller: a dial of ours to p in
		// flight may yet produce the survivor, so this connection waits
		// for it rather than being announced and then retired — the
		// peer must never find a stream of ours on a connection it
		// closes.
		s.awaitDials(ctx, p)
	}
	unlock := s.lockPeer(p)
	defer unlock()
	for {
		err := s.admit(ctx, c)
		if err == nil {
			break
		}
		var refused *core.RefusedError
		if !errors.As(err, &refused) {
			// A stage that refuses with a plain error: a refusal all the
			// same, under a generic reason.
			refused = &core.RefusedError{Reason: reasonOther, Code: network.ConnGarbageCollected, Peer: p, Err: err}
			err = refused
		}
		if _, ours := refused.Survivor.(*Conn); ours {
			survivor, again := s.redundantConn(c, refused)
			if again {
				continue // the survivor closed meanwhile: judge c again
			}
			s.countRefusal(refused.Reason)
			return survivor, nil
		}
		s.countRefusal(refused.Reason)
		_ = c.CloseWithError(refused.Code)
		if refused.Stage == core.StageGater {
			err = fmt.Errorf("%w: %w", ErrGaterDisallowedConnection, err)
		}
		return nil, fmt.Errorf("swarm: connection to %s at %s: %w", p, tc.RemoteMultiaddr(), err)
	}
	if err := s.record(c); err != nil {
		return nil, err
	}
	s.admitted.Add(1)
	s.announce(c)
	return c, nil
}

// AdmissionStats counts the admission pipeline's outcomes since the swarm
// started.
type AdmissionStats struct {
	// Admitted counts the connections announced.
	Admitted uint64
	// Refused counts the connections a stage refused, by reason
	// (core.ReasonPathRedundant for redundant connections, whose survivor
	// took their place).
	Refused map[core.CloseReason]uint64
}

// AdmissionStats returns the pipeline's counters. Safe for concurrent use.
func (s *Swarm) AdmissionStats() AdmissionStats {
	st := AdmissionStats{Admitted: s.admitted.Load(), Refused: make(map[core.CloseReason]uint64)}
	s.refused.Range(func(k, v any) bool {
		st.Refused[k.(core.CloseReason)] = v.(*atomic.Uint64).Load()
		return true
	})
	return st
}

func (s *Swarm) countRefusal(reason core.CloseReason) {
	v, _ := s.refused.LoadOrStore(reason, new(atomic.Uint64))
	v.(*atomic.Uint64).Add(1)
}

// newConn wraps a transport connection.
func (s *Swarm) newConn(tc transport.CapableConn, dir network.Direction) *Conn {
	p := tc.RemotePeer()
	n := s.nextConnID.Add(1)
	c := &Conn{
		id:        n,
		idString:  connID(p, n),
		swarm:     s,
		conn:      tc,
		direction: dir,
		opened:    time.Now(),
		streams:   make(map[*Stream]struct{}),
	}
	tc.As(&c.quic)
	if st, ok := tc.(interface{ Stat() network.ConnStats }); ok {
		c.limited = st.Stat().Limited
	}
	return c
}

// admit runs the admission stages in order; on a refusal it aborts the
// stages that had admitted c, latest first. The caller holds p's lock.
func (s *Swarm) admit(ctx context.Context, c *Conn) error {
	stages := *s.stages.Load()
	c.stages = stages
	for i, stage := range stages {
		if err := stage.AdmitConn(ctx, c); err != nil {
			for j := i - 1; j >= 0; j-- {
				stages[j].AbortConn(c)
			}
			return err
		}
	}
	return nil
}

// abort releases what every stage reserved for an admitted connection that
// is not recorded after all.
func (s *Swarm) abort(c *Conn) {
	for j := len(c.stages) - 1; j >= 0; j-- {
		c.stages[j].AbortConn(c)
	}
}

// record adds an admitted connection to the peer's connections; the
// caller holds p's lock. It fails when the swarm closed or c closed
// meanwhile (a trim chose it), after undoing the admission.
func (s *Swarm) record(c *Conn) error {
	p := c.RemotePeer()
	if pk := c.conn.RemotePublicKey(); pk != nil {
		_ = s.peers.AddPubKey(p, pk)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.abort(c)
		_ = c.CloseWithError(network.ConnShutdown)
		return ErrSwarmClosed
	}
	c.mu.Lock()
	closing := c.closing.Load()
	if !closing {
		c.state = connAnnounced
	}
	c.mu.Unlock()
	if closing {
		s.mu.Unlock()
		s.abort(c)
		return fmt.Errorf("swarm: connection to %s at %s closed while being admitted: %w", p, c.RemoteMultiaddr(), ErrConnClosed)
	}
	s.conns[p] = append(s.conns[p], c)
	s.wakeDirectWaitersLocked(c)
	delete(s.backoffs, p)
	// One reference for the stream loop, one for the Disconnected
	// goroutine that Close starts.
	s.refs.Add(2)
	s.mu.Unlock()
	return nil
}

// announce tells everyone about a recorded connection and starts its
// stream loop.
func (s *Swarm) announce(c *Conn) {
	s.notifyConnected(c)
	go c.acceptStreams()
}

// notifyConnected emits p's connectedness, the Connected notifications and
// EvtConnectionOpened for c.
func (s *Swarm) notifyConnected(c *Conn) {
	p := c.RemotePeer()
	s.connectedness.update(p)
	s.notifyAll(func(n network.Notifiee) { n.Connected(s, c) })
	if mt := s.cfg.MetricsTracer; mt != nil {
		mt.OpenedConnection(c.direction, c.RemotePublicKey(), c.ConnState(), c.LocalMultiaddr())
	}
	c.mu.Lock()
	c.connectedDone = true
	pending := c.disconnectPending
	c.mu.Unlock()
	if pending {
		go c.notifyDisconnected()
	}
	opened := EvtConnectionOpened{Peer: p, ConnID: c.ID(), Direction: c.direction,
		Local: c.LocalMultiaddr(), Remote: c.RemoteMultiaddr()}
	if s.pools != nil {
		opened.Pools = s.pools.PoolsOf(p)
	}
	s.lifecycle.Push(opened)
}

// reasonOther is the refusal reason of a stage that refused with an error
// other than a *core.RefusedError.
const reasonOther core.CloseReason = "other"

// How long an unannounced redundant connection may stay without a stream
// before the swarm closes it. A connection this node dialed is closed after
// RedundantQuiet: the peer, which dialed the survivor, normally never
// announced it either — but when the peer had already closed the survivor
// (its close still in flight to us) it did, and then its first streams
// (identify at once) keep this one open until the survivor's close arrives
// and the connection is reinstated. One the peer dialed is left for the
// peer to close and closed here only after RedundantIdleTimeout, for peers
// that never do (a stock go-libp2p host keeps both connections).
const (
	RedundantQuiet       = time.Second
	RedundantIdleTimeout = 10 * time.Second
)

// redundantConn handles a connection a stage found redundant: the survivor
// takes its place for the dialer. The connection stays unannounced and
// serves the peer's streams until the peer closes it or it has carried no
// stream for RedundantQuiet (we dialed it) or RedundantIdleTimeout (the
// peer did); it is reinstated if the survivor closes first. The caller
// holds p's lock.
func (s *Swarm) redundantConn(c *Conn, refused *core.RefusedError) (survivor *Conn, again bool) {
	survivor = refused.Survivor.(*Conn) // the caller checked
	p := c.RemotePeer()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = c.CloseWithError(network.ConnShutdown)
		return survivor, false
	}
	// The survivor's close sets closing before it looks for redundant
	// connections to reinstate (under s.mu): either it sees c filed here,
	// or c sees it closing and is judged again.
	if survivor.closing.Load() {
		s.mu.Unlock()
		return nil, true
	}
	log.Debugw("redundant connection", "peer", p, "conn", c.ID(), "survivor", survivor.ID(), "direction", c.direction)
	c.mu.Lock()
	closing := c.closing.Load()
	if !closing {
		c.state = connRedundant
		c.redundantCode = refused.Code
		c.survivor = survivor
		if c.done == nil {
			c.done = make(chan struct{})
		}
	}
	done := c.done
	c.mu.Unlock()
	if closing {
		s.mu.Unlock()
		return survivor, false
	}
	s.redundant[p] = append(s.redundant[p], c)
	s.refs.Add(2) // the stream loop and the idle watcher
	s.mu.Unlock()
	quiet := RedundantIdleTimeout
	if c.direction == network.DirOutbound {
		quiet = RedundantQuiet
	}
	go c.acceptStreams()
	go c.closeWhenIdle(quiet, done)
	return survivor, false
}

// lockPeer takes p's admission lock and returns the function that releases
// it.
func (s *Swarm) lockPeer(p peer.ID) (unlock func()) {
	s.mu.Lock()
	l := s.admitting[p]
	if l == nil {
		l = &peerLock{}
		s.admitting[p] = l
	}
	l.refs++
	s.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		s.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(s.admitting, p)
		}
		s.mu.Unlock()
	}
}

// beginDial counts a dial to p in flight until the returned function is
// called (after its connection's admission, or its failure).
func (s *Swarm) beginDial(p peer.ID) (end func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.beginDialLocked(p)
}

// beginDialLocked is beginDial with s.mu held.
func (s *Swarm) beginDialLocked(p peer.ID) (end func()) {
	d := s.dialing[p]
	if d == nil {
		d = &dialCount{done: make(chan struct{})}
		s.dialing[p] = d
	}
	d.n++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if d.n--; d.n == 0 {
				delete(s.dialing, p)
				close(d.done)
			}
			s.mu.Unlock()
		})
	}
}

// awaitDials waits until no dial of ours to p is in flight, ctx ends, or the
// swarm closes. Dials are bounded (AddrDialTimeout, DialTimeout).
func (s *Swarm) awaitDials(ctx context.Context, p peer.ID) {
	for {
		s.mu.RLock()
		d := s.dialing[p]
		s.mu.RUnlock()
		if d == nil {
			return
		}
		select {
		case <-d.done:
		case <-ctx.Done():
			return
		case <-s.ctx.Done():
			return
		}
	}
}

// removeConn forgets c and reports whether it was announced; called once,
// from Conn.doClose.
func (s *Swarm) removeConn(c *Conn) (announced bool) {
	p := c.RemotePeer()
	s.mu.Lock()
	c.mu.Lock()
	state := c.state
	c.mu.Unlock()
	switch state {
	case connAnnounced:
		s.conns[p] = without(s.conns[p], c)
		if len(s.conns[p]) == 0 {
			delete(s.conns, p)
		}
	case connRedundant:
		s.redundant[p] = without(s.redundant[p], c)
		if len(s.redundant[p]) == 0 {
			delete(s.redundant, p)
		}
	}
	s.mu.Unlock()
	if state == connAnnounced {
		s.connectedness.update(p)
	}
	return state == connAnnounced
}

func without(cs []*Conn, c *Conn) []*Conn {
	i := slices.Index(cs, c)
	if i < 0 {
		return cs
	}
	return slices.Delete(slices.Clone(cs), i, i+1)
}

// reinstateLater schedules reinstate(p) when p has redundant connections.
func (s *Swarm) reinstateLater(p peer.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || len(s.redundant[p]) == 0 {
		return
	}
	s.refs.Add(1)
	go s.reinstate(p)
}

// reinstate runs the redundant connections of p through admission again: an
// announced connection of p closed, and one of them may have lost to it.
// Owned by the swarm (refs).
func (s *Swarm) reinstate(p peer.ID) {
	defer s.refs.Done()
	unlock := s.lockPeer(p)
	defer unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	candidates := slices.Clone(s.redundant[p])
	s.mu.Unlock()
	for _, c := range candidates {
		if c.IsClosed() {
			continue
		}
		if err := s.admit(s.ctx, c); err != nil {
			continue // still redundant, or refused: it keeps draining
		}
		s.mu.Lock()
		c.mu.Lock()
		ok := !s.closed && !c.closing.Load() && c.state == connRedundant
		if ok {
			c.state = connAnnounced
		}
		c.mu.Unlock()
		if !ok {
			s.mu.Unlock()
			s.abort(c)
			continue
		}
		s.redundant[p] = without(s.redundant[p], c)
		if len(s.redundant[p]) == 0 {
			delete(s.redundant, p)
		}
		s.conns[p] = append(s.conns[p], c)
		s.wakeDirectWaitersLocked(c)
		s.refs.Add(1) // the Disconnected goroutine; the idle watcher ends by itself
		s.mu.Unlock()
		s.admitted.Add(1)
		log.Debugw("redundant connection reinstated", "peer", p, "conn", c.ID())
		s.notifyConnected(c) // its stream loop runs already
	}
}

// EventsDropped returns how many of the swarm's events — connectedness
// changes, connection and stream lifecycle events — were dropped because a
// subscriber did not keep up: each of its event queues holds at most
// eventqueue.DefaultLimit (4096) events, so a subscriber that stops reading
// costs bounded memory, not memory per stream. The count only grows. Safe
// for concurrent use.
func (s *Swarm) EventsDropped() uint64 {
	return s.lifecycle.Dropped() + s.connectedness.queue.Dropped()
}

// Close closes the listeners and every connection (code
// network.ConnShutdown), cancels dials in flight, waits for every goroutine
// the swarm started, and closes the transport. Safe to call more than once;
// later calls return nil.
func (s *Swarm) Close() error {
	var err error
	s.closeOnce.Do(func() { err = s.close() })
	return err
}

func (s *Swarm) close() error {
	s.mu.Lock()
	s.closed = true
	listeners := s.listeners
	s.listeners = nil
	for p, ws := range s.directWaiters {
		for _, ch := range ws {
			close(ch)
		}
		delete(s.directWaiters, p)
	}
	var conns []*Conn
	for _, cs := range s.conns {
		conns = append(conns, cs...)
	}
	for _, cs := range s.redundant {
		conns = append(conns, cs...)
	}
	s.mu.Unlock()

	s.cancel()
	var errs []error
	for l := range listeners {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("swarm: close listener %s: %w", l.Multiaddr(), err))
		}
		s.notifyAll(func(n network.Notifiee) { n.ListenClose(s, l.Multiaddr()) })
	}
	for _, c := range conns {
		_ = c.CloseWithError(network.ConnShutdown)
	}
	s.refs.Wait()
	s.connectedness.close()
	s.lifecycle.Close()
	if err := s.closeTransports(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
