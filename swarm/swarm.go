// Package swarm is realmnet's implementation of go-libp2p's
// core/network.Network: it owns every listener and every live connection of a
// node — several per peer, one per path — and the streams on them.
//
// It dials and listens with go-libp2p's QUIC transport (called directly, no
// upgrader), deduplicates concurrent dials to a peer, tries a peer's
// addresses happy-eyeballs style (go-libp2p's DefaultDialRanker), retries and
// backs off per peer (RetryConfig, via cenkalti/backoff), consults the
// connection gater and the resource manager, fires Notifiee callbacks and
// emits event.EvtPeerConnectednessChanged and the lifecycle events of package
// hooks (connection and stream opened/closed). Which connection carries a new
// stream is asked of a pluggable PathSelector. The swarm owns no policy of its
// own: limits, trimming, path quality and admission live in the packages it
// asks (resource, connmgr, multipath, gater).
//
// Every goroutine the swarm starts is counted in its refs and finished by
// Close.
package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/transport"
	libp2pswarm "github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/realmnet/realmnet/hooks"
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
	// which itself calls ResourceManager.OpenConnection, InterceptAccept and
	// InterceptSecured.
	Transport transport.Transport
	// ResourceManager accounts streams; nil means network.NullResourceManager.
	ResourceManager network.ResourceManager
	// Gater is asked InterceptPeerDial, InterceptAddrDial and
	// InterceptUpgraded; nil allows everything.
	Gater connmgr.ConnectionGater
	// EventBus receives event.EvtPeerConnectednessChanged.
	EventBus event.Bus
	// Admitter, when not nil, is asked to admit every new connection
	// before it is added (the connection manager's pools).
	Admitter ConnAdmitter
	// Config holds the tunables; zero fields take their defaults.
	Config Config
}

// ConnAdmitter accounts new connections before the swarm adds them; the
// connection manager implements it, so that its pools never exceed their
// ceiling even for a moment. AdmitConn may close other connections to make
// room before it returns; it returns false when c itself must be closed.
// It is not told about a connection the swarm fails to add after admitting
// it (only when the swarm is closing).
type ConnAdmitter interface {
	AdmitConn(c network.Conn) bool
}

// Swarm implements network.Network over go-libp2p's QUIC transport with
// several connections per peer. Create it with New; it is safe for
// concurrent use; Close stops every goroutine it started.
type Swarm struct {
	local     peer.ID
	peers     peerstore.Peerstore
	transport transport.Transport
	rcmgr     network.ResourceManager
	gater     connmgr.ConnectionGater
	admitter  ConnAdmitter
	cfg       Config

	selector atomic.Pointer[PathSelector]
	handler  atomic.Pointer[network.StreamHandler]

	// ctx is cancelled by Close; dials in flight stop with it.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.RWMutex
	closed    bool
	conns     map[peer.ID][]*Conn // oldest first
	listeners map[*listener]struct{}
	dials     map[peer.ID]*activeDial
	backoffs  map[peer.ID]*peerBackoff

	notifyMu  sync.RWMutex
	notifiees map[network.Notifiee]struct{}

	connectedness *connectednessEmitter
	// lifecycle delivers hooks.EvtConnection*/EvtStream* events without
	// blocking the stream path.
	lifecycle *eventqueue.Queue

	nextConnID   atomic.Uint64
	nextStreamID atomic.Uint64

	// refs counts every goroutine the swarm runs and every live connection
	// (whose Disconnected goroutine releases it); not the inbound stream
	// handlers, which end when Close resets their streams. Close waits for
	// it to drain.
	refs      sync.WaitGroup
	closeOnce sync.Once
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
	ctx, cancel := context.WithCancel(context.Background())
	s := &Swarm{
		local:     p.LocalPeer,
		peers:     p.Peerstore,
		transport: p.Transport,
		rcmgr:     rcmgr,
		gater:     p.Gater,
		admitter:  p.Admitter,
		cfg:       cfg,
		ctx:       ctx,
		cancel:    cancel,
		conns:     make(map[peer.ID][]*Conn),
		listeners: make(map[*listener]struct{}),
		dials:     make(map[peer.ID]*activeDial),
		backoffs:  make(map[peer.ID]*peerBackoff),
		notifiees: make(map[network.Notifiee]struct{}),
	}
	s.selector.Store(&cfg.PathSelector)
	s.connectedness, err = newConnectednessEmitter(p.EventBus, s.Connectedness)
	if err != nil {
		cancel()
		return nil, err
	}
	s.lifecycle, err = eventqueue.New(p.EventBus, new(hooks.EvtConnectionOpened), new(hooks.EvtConnectionClosed),
		new(hooks.EvtStreamOpened), new(hooks.EvtStreamClosed))
	if err != nil {
		s.connectedness.close()
		cancel()
		return nil, fmt.Errorf("swarm: %w", err)
	}
	return s, nil
}

// SetPathSelector replaces the path selector used by NewStream and DialPeer.
// A nil selector restores NewestPathSelector.
func (s *Swarm) SetPathSelector(sel PathSelector) {
	if sel == nil {
		sel = NewestPathSelector{}
	}
	s.selector.Store(&sel)
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

// Connectedness returns network.Connected when at least one connection to p
// is open, network.NotConnected otherwise (QUIC connections are never
// limited).
func (s *Swarm) Connectedness(p peer.ID) network.Connectedness {
	s.mu.RLock()
	n := len(s.conns[p])
	s.mu.RUnlock()
	if n > 0 {
		return network.Connected
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

// ClosePeer closes every connection to p.
func (s *Swarm) ClosePeer(p peer.ID) error {
	var errs []error
	for _, c := range s.ConnsToPeer(p) {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// selectConn asks the path selector for the connection to p that should carry
// the next stream, leaving out the connections in exclude; nil when there is
// no open connection.
func (s *Swarm) selectConn(p peer.ID, exclude ...network.Conn) network.Conn {
	s.mu.RLock()
	cs := s.conns[p]
	open := make([]network.Conn, 0, len(cs))
	for _, c := range cs {
		if !c.IsClosed() && !slices.Contains(exclude, network.Conn(c)) {
			open = append(open, c)
		}
	}
	s.mu.RUnlock()
	if len(open) == 0 {
		return nil
	}
	return (*s.selector.Load()).SelectPath(p, open)
}

// maxStreamAttempts bounds how many paths NewStream tries.
const maxStreamAttempts = 3

// NewStream opens a stream to p on the connection the path selector picks,
// dialing first when there is none (unless ctx carries network.WithNoDial, in
// which case it returns network.ErrNoConn). When opening the stream on the
// chosen connection fails for any reason but the context or the resource
// manager, it asks the selector again without that connection and tries the
// next path (up to 3), so a dying path does not fail the stream.
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

// CanDial reports whether the QUIC transport can dial addr and addr is not
// one of our own listen addresses.
func (s *Swarm) CanDial(_ peer.ID, addr ma.Multiaddr) bool {
	return s.transport.CanDial(addr) && !s.isOwnAddr(addr)
}

// ListenAddresses returns the addresses the swarm listens on, with the
// ports the operating system chose.
func (s *Swarm) ListenAddresses() []ma.Multiaddr {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]ma.Multiaddr, 0, len(s.listeners))
	for l := range s.listeners {
		out = append(out, l.Multiaddr())
	}
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

// addConn registers a connection the transport produced (dialed or
// accepted): gater InterceptUpgraded, connection manager admission,
// peerstore key, connectedness event, Connected notifications, then the
// inbound stream loop.
func (s *Swarm) addConn(tc transport.CapableConn, dir network.Direction) (*Conn, error) {
	p := tc.RemotePeer()
	n := s.nextConnID.Add(1)
	c := &Conn{
		id:        n,
		idString:  connID(p, n),
		swarm:     s,
		conn:      tc,
		direction: dir,
		opened:    time.Now(),
		notified:  make(chan struct{}),
	}
	if s.gater != nil {
		if allow, reason := s.gater.InterceptUpgraded(c); !allow {
			_ = tc.CloseWithError(network.ConnGated)
			return nil, fmt.Errorf("swarm: connection to %s at %s gated (reason %d): %w",
				p, tc.RemoteMultiaddr(), reason, ErrGaterDisallowedConnection)
		}
	}
	if s.admitter != nil && !s.admitter.AdmitConn(c) {
		_ = tc.CloseWithError(network.ConnGarbageCollected)
		return nil, fmt.Errorf("swarm: connection to %s at %s refused by the connection manager", p, tc.RemoteMultiaddr())
	}
	if pk := tc.RemotePublicKey(); pk != nil {
		_ = s.peers.AddPubKey(p, pk)
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = c.CloseWithError(network.ConnShutdown)
		return nil, ErrSwarmClosed
	}
	c.mu.Lock()
	closing := c.closing
	if !closing {
		c.streams = make(map[*Stream]struct{})
	}
	c.mu.Unlock()
	if closing {
		// Closed while it was admitted (a trim at the ceiling chose it).
		s.mu.Unlock()
		return nil, fmt.Errorf("swarm: connection to %s at %s closed while being admitted: %w", p, tc.RemoteMultiaddr(), ErrConnClosed)
	}
	s.conns[p] = append(s.conns[p], c)
	delete(s.backoffs, p)
	// One reference for the stream loop, one for the Disconnected
	// goroutine that Close starts.
	s.refs.Add(2)
	s.mu.Unlock()

	s.connectedness.update(p)
	s.notifyAll(func(n network.Notifiee) { n.Connected(s, c) })
	close(c.notified)
	opened := hooks.EvtConnectionOpened{Peer: p, ConnID: c.ID(), Direction: dir,
		Local: tc.LocalMultiaddr(), Remote: tc.RemoteMultiaddr()}
	if pools, ok := s.admitter.(interface{ PoolOf(peer.ID) string }); ok {
		opened.Pool = pools.PoolOf(p)
	}
	s.lifecycle.Push(opened)
	go c.acceptStreams()
	return c, nil
}

// removeConn forgets c and reports whether it was registered; called once,
// from Conn.doClose.
func (s *Swarm) removeConn(c *Conn) bool {
	p := c.RemotePeer()
	s.mu.Lock()
	cs := s.conns[p]
	i := slices.Index(cs, c)
	if i < 0 {
		s.mu.Unlock()
		return false
	}
	cs = slices.Delete(slices.Clone(cs), i, i+1)
	if len(cs) == 0 {
		delete(s.conns, p)
	} else {
		s.conns[p] = cs
	}
	s.mu.Unlock()
	s.connectedness.update(p)
	return true
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
	var conns []*Conn
	for _, cs := range s.conns {
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
	if closer, ok := s.transport.(io.Closer); ok {
		if err := closer.Close(); err != nil {
			errs = append(errs, fmt.Errorf("swarm: close transport: %w", err))
		}
	}
	return errors.Join(errs...)
}
