package realm

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The handshake (docs/realms.md has the diagram). I is the initiator, R the
// responder, IDs come from the TLS-authenticated connection:
//
//	I → R  hello:  nonce_i ‖ tag     tag   = HMAC(auth, "tag" ‖ I ‖ R ‖ nonce_i)
//	R → I  reply:  nonce_r ‖ MAC_r   MAC_r = HMAC(auth, "resp" ‖ realmID ‖ I ‖ R ‖ nonce_i ‖ nonce_r)
//	I → R  finish: MAC_i             MAC_i = HMAC(auth, "init" ‖ realmID ‖ I ‖ R ‖ nonce_i ‖ nonce_r)
//	I ⇄ R  end of stream both ways: R closes its side once it has admitted
//	       I; I admits R on reading it.
//
// R finds the realm by computing the tag with each of its realms' keys; the
// realm ID is never sent. Any failure resets the stream, with no reason.
// The tag binds both peer IDs (the text has HMAC(auth, "tag" ‖
// nonce_i)): otherwise a hello collected by any node a member talks to could
// be replayed to third nodes, and whether they answer would reveal who
// shares a realm with whom.

// errNoReply: the responder sent no reply (reset, closed, timed out).
var errNoReply = errors.New("no reply")

// errAuthReset is the initiator's view of a reset or malformed handshake.
var errAuthReset = fmt.Errorf("%w: stream reset or malformed", ErrAuthFailed)

// authenticate runs the initiator side with p for realm r and admits p on
// success. Concurrent calls for the same peer share one handshake.
func (r *Realm) authenticate(ctx context.Context, p peer.ID) error {
	r.mu.Lock()
	switch {
	case r.left:
		r.mu.Unlock()
		return ErrLeft
	case r.membership.members[p] != nil && r.membership.members[p].authenticated:
		r.mu.Unlock()
		return nil
	}
	if wait, ok := r.handshakes.pending[p]; ok {
		r.mu.Unlock()
		select {
		case <-wait.done:
			return wait.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	call := &pendingAuth{done: make(chan struct{})}
	r.handshakes.pending[p] = call
	r.mu.Unlock()

	call.err = r.initiate(ctx, p)
	r.mu.Lock()
	delete(r.handshakes.pending, p)
	r.mu.Unlock()
	close(call.done)
	return call.err
}

type pendingAuth struct {
	done chan struct{}
	err  error
}

func (r *Realm) initiate(ctx context.Context, p peer.ID) (err error) {
	start := time.Now()
	s := r.svc
	ctx, cancel := context.WithTimeout(ctx, HandshakeTimeout)
	defer cancel()
	defer s.beginFlight(p)()
	byes, done, err := r.beginHandshake(p)
	if err != nil {
		return err
	}
	defer done()
	str, err := s.deps.Host.NewStream(network.WithAllowLimitedConn(ctx, "realm auth"), p, AuthProtocol)
	if err != nil {
		return fmt.Errorf("realm %q: open handshake with %s: %w", r.name, p, err)
	}
	defer func() {
		if err != nil {
			_ = str.Reset()
		}
	}()
	deadline, _ := ctx.Deadline()
	_ = str.SetDeadline(deadline)
	self := s.deps.Host.ID()
	remote := str.Conn().RemotePeer()

	nonceI := s.newNonce()
	tag := r.keys.helloTag(self, remote, &nonceI)
	if err := writeFrame(str, encodeNonceMAC(&nonceI, &tag)); err != nil {
		return fmt.Errorf("realm %q: handshake with %s: send hello: %w", r.name, p, err)
	}
	frame, err := readFrame(str)
	if err != nil {
		s.stats.authBadFrame.Add(1)
		return fmt.Errorf("%w: %s: %w: %w", ErrAuthFailed, p, errNoReply, err)
	}
	nonceR, macR, err := decodeNonceMAC(frame)
	if err != nil {
		s.stats.authBadFrame.Add(1)
		return errAuthReset
	}
	want := r.keys.transcriptMAC("resp", self, remote, &nonceI, &nonceR)
	if !hmac.Equal(macR[:], want[:]) {
		s.stats.authBadMAC.Add(1)
		return fmt.Errorf("%w: %s did not prove the realm key", ErrAuthFailed, p)
	}
	// Only a reply that proves the key may enter the nonce cache.
	if !s.freshNonce(nonceR) {
		s.stats.authReplayed.Add(1)
		return fmt.Errorf("%w: %s replayed a nonce", ErrAuthFailed, p)
	}
	macI := r.keys.transcriptMAC("init", self, remote, &nonceI, &nonceR)
	if err := writeFrame(str, macI[:]); err != nil {
		return fmt.Errorf("realm %q: handshake with %s: send finish: %w", r.name, p, err)
	}
	// Our end of stream; its error is not the outcome (the responder may
	// already have stopped reading): the responder's end of stream is.
	_ = str.CloseWrite()
	// The responder closes its side once it has admitted us; a reset means
	// it refused (a limit). Nothing else may follow.
	if err := expectEOF(str); err != nil {
		s.stats.authRefused.Add(1)
		return fmt.Errorf("%w: %s refused the handshake: %v", ErrAuthFailed, p, err)
	}
	if err := r.admit(p, byes); err != nil {
		// p admitted us: undo it with a goodbye — sent by Leave when the
		// realm is being left, at once otherwise (e.g. our realm limit) —
		// unless p said goodbye during the handshake: its membership that
		// admitted us has ended with it, and p may have joined again
		// since, in a new membership that our goodbye would end (seen in
		// BenchmarkJoinToFirstMember: p listed no member right after it
		// had one, while we listed p).
		switch {
		case errors.Is(err, ErrLeft):
			r.mu.Lock()
			r.membership.admittedBy[p] = struct{}{}
			r.mu.Unlock()
		case errors.Is(err, errSaidGoodbye):
		default:
			r.goodbyeAsync(p)
		}
		s.stats.authRefused.Add(1)
		return err
	}
	s.stats.authSucceeded.Add(1)
	s.handshakeSeconds.Observe(time.Since(start).Seconds())
	_ = str.Close()
	r.exchangeAsync(p)
	return nil
}

// respond runs the responder side of a handshake.
func (s *Service) respond(str network.Stream) {
	if _, ok := s.respondHandshake(str); ok {
		closeGracefully(str)
		return
	}
	_ = str.Reset()
}

// responderSlot takes one of the node's responder slots and one of the
// peer's, for a hello whose tag matched a realm; false (counted) when
// either is exhausted. Slots are taken only then, so peers without a realm
// key (who cannot make a matching tag for their own peer ID) never hold
// any.
func (s *Service) responderSlot(p peer.ID) (release func(), ok bool) {
	select {
	case s.handshakes <- struct{}{}:
	default:
		s.stats.authRefused.Add(1)
		return nil, false
	}
	end, ok := s.beginInbound(p)
	if !ok {
		<-s.handshakes
		s.stats.authRefused.Add(1)
		return nil, false
	}
	return func() {
		end()
		<-s.handshakes
	}, true
}

// respondHandshake returns the realm the initiator authenticated into, or
// false after counting the failure.
func (s *Service) respondHandshake(str network.Stream) (*Realm, bool) {
	start := time.Now()
	_ = str.SetDeadline(start.Add(HandshakeTimeout))
	frame, err := readFrame(str)
	if err != nil {
		s.stats.authBadFrame.Add(1)
		return nil, false
	}
	nonceI, tag, err := decodeNonceMAC(frame)
	if err != nil {
		s.stats.authBadFrame.Add(1)
		return nil, false
	}
	self := s.deps.Host.ID()
	remote := str.Conn().RemotePeer()
	r := s.realmOfTag(remote, self, &nonceI, &tag)
	if r == nil {
		s.stats.authUnknownRealm.Add(1)
		return nil, false
	}
	release, ok := s.responderSlot(remote)
	if !ok {
		return nil, false
	}
	defer release()
	byes, done, err := r.beginHandshake(remote)
	if err != nil {
		s.stats.authRefused.Add(1)
		return nil, false
	}
	defer done()
	if !s.freshNonce(nonceI) {
		s.stats.authReplayed.Add(1)
		return nil, false
	}
	nonceR := s.newNonce()
	macR := r.keys.transcriptMAC("resp", remote, self, &nonceI, &nonceR)
	if err := writeFrame(str, encodeNonceMAC(&nonceR, &macR)); err != nil {
		s.stats.authBadFrame.Add(1)
		return nil, false
	}
	frame, err = readFrame(str)
	if err != nil {
		s.stats.authBadFrame.Add(1)
		return nil, false
	}
	macI, err := decodeFinish(frame)
	if err != nil {
		s.stats.authBadFrame.Add(1)
		return nil, false
	}
	want := r.keys.transcriptMAC("init", remote, self, &nonceI, &nonceR)
	if !hmac.Equal(macI[:], want[:]) {
		s.stats.authBadMAC.Add(1)
		return nil, false
	}
	if err := r.admit(remote, byes); err != nil {
		s.stats.authRefused.Add(1)
		return nil, false
	}
	s.stats.authSucceeded.Add(1)
	s.handshakeSeconds.Observe(time.Since(start).Seconds())
	return r, true
}

// realmOfTag finds the joined realm whose key produced the tag of a hello
// from initiator to responder. Every realm is tried (constant-time
// comparisons), whichever matches.
func (s *Service) realmOfTag(initiator, responder peer.ID, nonce, tag *[32]byte) *Realm {
	var found *Realm
	for _, r := range s.joined() {
		want := r.keys.helloTag(initiator, responder, nonce)
		if hmac.Equal(want[:], tag[:]) && found == nil {
			found = r
		}
	}
	return found
}

// newNonce returns 32 random bytes and remembers them, so that a hello or
// reply echoing one of our own nonces (reflection) is refused.
func (s *Service) newNonce() (n [32]byte) {
	if _, err := rand.Read(n[:]); err != nil {
		panic(fmt.Sprintf("realm: crypto/rand: %v", err)) // never fails on supported platforms
	}
	s.nonces.Add(n, nil)
	return n
}

// freshNonce records a received nonce and reports whether it was new.
func (s *Service) freshNonce(n [32]byte) bool {
	seen, _ := s.nonces.ContainsOrAdd(n, nil)
	return !seen
}

// flight counts the handshakes running with one peer, in either role.
type flight struct {
	n       int
	inbound int           // of which responder handshakes
	done    chan struct{} // closed when n drops to zero
}

// beginInbound is beginFlight for a responder handshake; false when p
// already has maxInboundHandshakesPerPeer running, so one peer cannot take
// every responder slot.
func (s *Service) beginInbound(p peer.ID) (end func(), ok bool) {
	s.flightsMu.Lock()
	defer s.flightsMu.Unlock()
	if f := s.flights[p]; f != nil && f.inbound >= maxInboundHandshakesPerPeer {
		return nil, false
	}
	f := s.flightLocked(p)
	f.inbound++
	return func() {
		s.flightsMu.Lock()
		f.inbound--
		s.flightsMu.Unlock()
		s.endFlight(p, f)
	}, true
}

// beginFlight marks a handshake with p as running until the returned
// function is called. A realm stream that arrives from p meanwhile waits for
// it (the stream may overtake the handshake's last message).
func (s *Service) beginFlight(p peer.ID) (end func()) {
	s.flightsMu.Lock()
	f := s.flightLocked(p)
	s.flightsMu.Unlock()
	return func() { s.endFlight(p, f) }
}

// flightLocked counts one more handshake with p; flightsMu is held.
func (s *Service) flightLocked(p peer.ID) *flight {
	f := s.flights[p]
	if f == nil {
		f = &flight{done: make(chan struct{})}
		s.flights[p] = f
	}
	f.n++
	return f
}

func (s *Service) endFlight(p peer.ID, f *flight) {
	s.flightsMu.Lock()
	defer s.flightsMu.Unlock()
	if f.n--; f.n == 0 {
		close(f.done)
		delete(s.flights, p)
	}
}

// awaitFlight waits until no handshake with p is running, or until deadline;
// it reports whether one was running.
func (s *Service) awaitFlight(p peer.ID, deadline time.Time) bool {
	s.flightsMu.Lock()
	f := s.flights[p]
	s.flightsMu.Unlock()
	if f == nil {
		return false
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-f.done:
	case <-t.C:
	case <-s.ctx.Done():
	}
	return true
}

// expectEOF reads the peer's end of stream: anything else (data, a reset,
// the deadline) is an error.
func expectEOF(str network.Stream) error {
	var one [1]byte
	n, err := str.Read(one[:])
	switch {
	case n != 0:
		return errors.New("unexpected data after the last frame")
	case errors.Is(err, io.EOF):
		return nil
	case err == nil:
		return errors.New("no end of stream")
	}
	return err
}

// closeGracefully ends a stream whose exchange succeeded: our end of stream
// first, then the peer's, then Close — closing the read side early would
// make the peer's own CloseWrite fail (QUIC STOP_SENDING). It reports
// whether the peer's end of stream came (else the stream is reset).
func closeGracefully(str network.Stream) bool {
	_ = str.CloseWrite()
	if expectEOF(str) != nil {
		_ = str.Reset()
		return false
	}
	_ = str.Close()
	return true
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
	r.handshakes.running[p]++
	return r.membership.goodbyes[p], func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.handshakes.running[p]--; r.handshakes.running[p] <= 0 {
			delete(r.handshakes.running, p)
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
		n := len(r.handshakes.running)
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

// authenticateAsync starts a handshake with a connected peer unless p is
// authenticated or one is running.
func (r *Realm) authenticateAsync(p peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.handshakes.pending[p] != nil || (r.membership.members[p] != nil && r.membership.members[p].authenticated) {
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
			case <-r.svc.deps.Clock.After(handshakeRetries[attempt]):
			case <-r.ctx.Done():
				return
			}
		}
	})
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
	return r.svc.hasConn(p) && !r.authenticated(p)
}
