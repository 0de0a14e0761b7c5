package realm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// SetStreamHandler sets the handler for application protocol proto inside
// this realm: only authenticated members of the realm reach it, over the
// generic StreamProtocol. The handler owns the stream and must close or
// reset it. The error names a bad protocol ID (ErrBadProtocol) or is
// ErrLeft.
func (r *Realm) SetStreamHandler(proto protocol.ID, handler network.StreamHandler) error {
	if err := checkProtocol(string(proto)); err != nil {
		return err
	}
	if handler == nil {
		return fmt.Errorf("realm %q: SetStreamHandler %q: nil handler", r.name, proto)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.left {
		return ErrLeft
	}
	r.handlers[proto] = handler
	return nil
}

// RemoveStreamHandler removes the handler of proto; later streams for it are
// reset with ErrorCodeNoHandler.
func (r *Realm) RemoveStreamHandler(proto protocol.ID) {
	r.mu.Lock()
	delete(r.handlers, proto)
	r.mu.Unlock()
}

// NewStream opens a realm stream to member p for application protocol proto.
// A member within its reconnect grace (or a connected peer not yet
// authenticated) is first connected to and authenticated, within ctx.
//
// Like a go-libp2p host stream with lazy protocol negotiation, the stream
// reaches p only with its first Write (the realm header and protocol
// travel with the data), Read, CloseWrite or Close: p's handler runs then.
// An error sending the header is returned by that call.
// Errors: ErrNotMember (wrapping the reason when a handshake was tried),
// ErrBadProtocol, ErrLeft, a *resource.LimitError when the realm's outbound
// stream limit is reached, or the host's error opening the stream.
// The stream is charged to the realm until it is closed or reset (or its
// connection closes).
func (r *Realm) NewStream(ctx context.Context, p peer.ID, proto protocol.ID) (network.Stream, error) {
	if err := checkProtocol(string(proto)); err != nil {
		return nil, err
	}
	str, err := r.openStream(ctx, p, streamHeader{kind: kindApp, protocol: proto})
	if err != nil {
		return nil, err
	}
	r.svc.stats.streamsOutbound.Add(1)
	return str, nil
}

func (r *Realm) openStream(ctx context.Context, p peer.ID, hdr streamHeader) (network.Stream, error) {
	h, err := r.memberHandle(ctx, p)
	if err != nil {
		return nil, err
	}
	hdr.handle = h
	// Application streams are charged to the realm's scope (inbound ones in
	// dispatch); the realm's own short exchanges are not, on either side.
	release := func() {}
	if hdr.kind == kindApp {
		release, err = r.svc.deps.Backend.ReserveRealmStream(r.keys.id, network.DirOutbound)
		if err != nil {
			return nil, fmt.Errorf("realm %q: stream to %s: %w", r.name, p, err)
		}
	}
	// Members that reach each other only through a relay (a realm relay,
	// or a public one) still talk: realm streams may use a limited
	// connection. Multipath prefers a direct path whenever there is one.
	ctx = network.WithAllowLimitedConn(ctx, "realm stream")
	str, err := r.svc.deps.Host.NewStream(ctx, p, StreamProtocol)
	if err != nil {
		release()
		return nil, fmt.Errorf("realm %q: stream to %s: %w", r.name, p, err)
	}
	header, err := appendFrame(nil, encodeStreamHeader(hdr))
	if err != nil {
		release()
		_ = str.Reset()
		return nil, fmt.Errorf("realm %q: stream to %s: %w", r.name, p, err)
	}
	s := r.svc.streams.track(str, release)
	s.header = header // before anyone else sees s
	s.headerSent.Store(false)
	return s, nil
}

// memberHandle returns the handle of member p, authenticating it first when
// it is known but not authenticated right now.
func (r *Realm) memberHandle(ctx context.Context, p peer.ID) (handle, error) {
	r.mu.Lock()
	if r.left {
		r.mu.Unlock()
		return handle{}, ErrLeft
	}
	m := r.membership.members[p]
	known := m != nil
	if known && m.authenticated {
		h := m.handle
		r.mu.Unlock()
		return h, nil
	}
	r.mu.Unlock()
	// A member in its grace period, or a connected peer that may be one.
	if !known && !r.svc.hasConn(p) {
		return handle{}, fmt.Errorf("%w: %s in realm %q", ErrNotMember, p, r.name)
	}
	if err := r.connectAndAuthenticate(ctx, peer.AddrInfo{ID: p}); err != nil {
		return handle{}, fmt.Errorf("%w: %s in realm %q: %w", ErrNotMember, p, r.name, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if m := r.membership.members[p]; m != nil && m.authenticated {
		return m.handle, nil
	}
	return handle{}, fmt.Errorf("%w: %s in realm %q", ErrNotMember, p, r.name)
}

// handleStream dispatches an inbound realm stream: header (within
// HandshakeTimeout), handle lookup, membership of the connection's
// authenticated peer, then the realm's handler. Any failure resets the
// stream with ErrorCodeRefused and is counted.
func (s *Service) handleStream(str network.Stream) {
	// A peer that is no member of ours and has no handshake with us in
	// flight cannot have a realm stream for us: reset it before waiting
	// for its header, so that peers without a key hold none of the realm
	// stream protocol's scope (they did, 5 s per stream, and starved every
	// realm's streams, exchanges and goodbyes).
	if !s.mayOpenRealmStreams(str.Conn().RemotePeer()) {
		s.refuse(str)
		return
	}
	deadline := time.Now().Add(HandshakeTimeout)
	_ = str.SetReadDeadline(deadline)
	frame, err := readFrame(str)
	if err != nil {
		s.refuse(str)
		return
	}
	hdr, err := decodeStreamHeader(frame)
	if err != nil {
		s.refuse(str)
		return
	}
	remote := str.Conn().RemotePeer()
	if hdr.kind == kindGoodbye {
		// A goodbye proves the realm by itself (a MAC with the realm's
		// key, signed by the leaving member): a member in its grace —
		// whose connection dropped, and who is leaving rather than coming
		// back — may send one without authenticating again.
		if e, ok := s.lookupHandle(hdr.handle); ok && e.peer == remote && e.realm.isMember(remote) {
			_ = str.SetReadDeadline(time.Time{})
			e.realm.receiveGoodbye(str)
			return
		}
	}
	r := s.memberRealm(hdr.handle, remote)
	if r == nil && s.awaitFlight(remote, deadline) {
		// The stream may have overtaken the handshake that admits its sender.
		r = s.memberRealm(hdr.handle, remote)
	}
	if r == nil {
		// A member in its reconnect grace whose new connection's handshake
		// has not run yet: the sender still counts us as its member (its
		// own connection count never dropped to zero). Authenticate it now,
		// within the stream's deadline, rather than refuse its stream.
		if e, ok := s.lookupHandle(hdr.handle); ok && e.peer == remote && e.realm.inGrace(remote) {
			ctx, cancel := context.WithDeadline(s.ctx, deadline)
			if e.realm.authenticate(ctx, remote) == nil {
				r = s.memberRealm(hdr.handle, remote)
			}
			cancel()
		}
	}
	if r == nil {
		s.refuse(str)
		return
	}
	_ = str.SetReadDeadline(time.Time{})
	switch hdr.kind {
	case kindMembers:
		r.answerExchange(str)
	case kindGoodbye:
		r.receiveGoodbye(str)
	default:
		r.dispatch(str, hdr.protocol)
	}
}

// memberRealm returns the realm of handle h if remote is its authenticated
// member on the other side of that handle, else nil.
func (s *Service) memberRealm(h handle, remote peer.ID) *Realm {
	e, ok := s.lookupHandle(h)
	if !ok || e.peer != remote || !e.realm.authenticated(remote) {
		return nil
	}
	return e.realm
}

// mayOpenRealmStreams reports whether p may have realm streams for us: it
// is a member of a joined realm (authenticated or within its reconnect
// grace), or a handshake with it is in flight, in either direction (a
// member's first stream may overtake the end of its handshake).
func (s *Service) mayOpenRealmStreams(p peer.ID) bool {
	s.flightsMu.Lock()
	inFlight := s.flights[p] != nil
	s.flightsMu.Unlock()
	if inFlight {
		return true
	}
	for _, r := range s.joined() {
		r.mu.Lock()
		known := r.membership.members[p] != nil || r.handshakes.pending[p] != nil
		r.mu.Unlock()
		if known {
			return true
		}
	}
	return false
}

func (s *Service) refuse(str network.Stream) {
	s.stats.streamsRefused.Add(1)
	_ = str.ResetWithError(ErrorCodeRefused)
}

func (r *Realm) dispatch(str network.Stream, proto protocol.ID) {
	r.mu.Lock()
	handler := r.handlers[proto]
	r.mu.Unlock()
	if handler == nil {
		r.svc.stats.streamsNoHandler.Add(1)
		_ = str.ResetWithError(ErrorCodeNoHandler)
		return
	}
	release, err := r.svc.deps.Backend.ReserveRealmStream(r.keys.id, network.DirInbound)
	if err != nil {
		r.svc.stats.streamsLimited.Add(1)
		_ = str.ResetWithError(ErrorCodeResourceLimit)
		return
	}
	r.svc.stats.streamsInbound.Add(1)
	handler(r.svc.streams.track(str, release))
}

// stream is a realm stream as handed to applications: the host stream
// (whose Protocol is StreamProtocol), released from the realm's resource
// scope when it is closed or reset, or when its connection closes.
//
// An outbound stream's header (its kind, the member's handle and the
// application protocol) is sent with the stream's first Write, in the
// same stream write and so usually the same QUIC packet as the
// application's first bytes, as go-libp2p's lazy protocol negotiation
// sends its header; or alone before the first Read, CloseWrite or Close.
// Sent at open, it cost a packet of its own and a wake-up of the peer's
// reader before the data (BenchmarkRealmRequest, docs/performance.md).
// An error sending it is returned by the call that sends it.
type stream struct {
	network.Stream
	tracker *streamTracker
	release func()
	once    sync.Once

	// headerMu orders the header before any data: held while the header
	// is written. header is the pending header frame (nil once sent, or
	// for an inbound stream); headerSent is set once it is gone, so that
	// later calls take no lock.
	headerMu   sync.Mutex
	header     []byte
	headerSent atomic.Bool
}

// Write writes b, after the stream's header when it is still pending.
func (s *stream) Write(b []byte) (int, error) {
	if s.headerSent.Load() {
		return s.Stream.Write(b)
	}
	return s.writeWithHeader(b)
}

// Read reads from the stream; a pending header is sent first, so that the
// peer's realm dispatches the stream (the protocol may wait for its
// handler to speak first).
func (s *stream) Read(b []byte) (int, error) {
	if !s.headerSent.Load() {
		if _, err := s.writeWithHeader(); err != nil {
			return 0, err
		}
	}
	return s.Stream.Read(b)
}

// CloseWrite sends a pending header, then closes the stream for writing.
func (s *stream) CloseWrite() error {
	if !s.headerSent.Load() {
		if _, err := s.writeWithHeader(); err != nil {
			return err
		}
	}
	return s.Stream.CloseWrite()
}

// writeWithHeader writes the pending header (if another call has not sent
// it meanwhile) followed by parts, joined into one stream write when they
// fit in coalesceLimit bytes. It returns how many bytes of parts were
// written.
func (s *stream) writeWithHeader(parts ...[]byte) (int, error) {
	s.headerMu.Lock()
	defer s.headerMu.Unlock()
	header := s.header
	if header == nil {
		return writeJoined(s.Stream, parts...)
	}
	s.header = nil
	defer s.headerSent.Store(true)
	n, err := writeJoined(s.Stream, append([][]byte{header}, parts...)...)
	if n < len(header) && err != nil {
		err = fmt.Errorf("send realm stream header: %w", err)
	}
	return max(0, n-len(header)), err
}

func (s *stream) done() {
	s.once.Do(func() {
		s.release()
		s.tracker.forget(s)
	})
}

// Close sends a pending header, closes the stream and releases its
// realm-scope charge.
func (s *stream) Close() error {
	var err error
	if !s.headerSent.Load() {
		_, err = s.writeWithHeader()
	}
	err = errors.Join(err, s.Stream.Close())
	s.done()
	return err
}

// Reset resets the stream and releases its realm-scope charge.
func (s *stream) Reset() error {
	err := s.Stream.Reset()
	s.done()
	return err
}

// ResetWithError resets the stream with code and releases its realm-scope
// charge.
func (s *stream) ResetWithError(code network.StreamErrorCode) error {
	err := s.Stream.ResetWithError(code)
	s.done()
	return err
}

// streamTracker keeps the open realm streams per connection, so the ones
// whose connection closes are released even if the application never
// closes them.
type streamTracker struct {
	mu     sync.Mutex
	byConn map[network.Conn]map[*stream]struct{}
}

func (t *streamTracker) init() { t.byConn = make(map[network.Conn]map[*stream]struct{}) }

func (t *streamTracker) track(str network.Stream, release func()) *stream {
	s := &stream{Stream: str, tracker: t, release: release}
	s.headerSent.Store(true) // no header to send (an outbound stream's: openStream)
	c := str.Conn()
	t.mu.Lock()
	set := t.byConn[c]
	if set == nil {
		set = make(map[*stream]struct{})
		t.byConn[c] = set
	}
	set[s] = struct{}{}
	t.mu.Unlock()
	if c.IsClosed() {
		t.releaseConn(c)
	}
	return s
}

func (t *streamTracker) forget(s *stream) {
	c := s.Stream.Conn()
	t.mu.Lock()
	// An emptied set stays until the connection closes (releaseConn):
	// a connection that carries one realm stream usually carries more,
	// and a set made per stream was a third of the realm layer's
	// allocations per request.
	if set := t.byConn[c]; set != nil {
		delete(set, s)
	}
	t.mu.Unlock()
}

func (t *streamTracker) releaseConn(c network.Conn) {
	t.mu.Lock()
	set := t.byConn[c]
	delete(t.byConn, c)
	t.mu.Unlock()
	for s := range set {
		s.once.Do(s.release)
	}
}
