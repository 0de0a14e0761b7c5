package swarm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/benbjohnson/clock"
	"github.com/cenkalti/backoff/v5"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pswarm "github.com/libp2p/go-libp2p/p2p/net/swarm"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/realmnet/realmnet/core"
)

// DialError is go-libp2p's swarm.DialError: the peer, the cause, and one
// entry per address tried, each naming the address and its error.
type DialError = libp2pswarm.DialError

// TransportError is one address's failure inside a DialError.
type TransportError = libp2pswarm.TransportError

// activeDial is one DialPeer in flight; concurrent callers for the same peer
// wait for it instead of dialing again.
type activeDial struct {
	done    chan struct{}
	conn    *Conn
	err     error
	waiters int
	cancel  context.CancelFunc
}

// peerBackoff is a peer's retry sequence and the backoff window that its
// last failed DialPeer opened. It is in Swarm.backoffs only while it still
// matters (see stale); every field is guarded by Swarm.mu.
type peerBackoff struct {
	seq *backoff.ExponentialBackOff
	// until is the end of the window: DialPeer refuses the peer before it.
	until time.Time
	// window is the window's length (until minus the failure's time).
	window time.Duration
	// failures counts the failed DialPeer calls of the sequence;
	// lastError is the last one's error.
	failures  int
	lastError error
}

// DialBackoff is a peer's dial backoff state, as DialBackoffOf reports it.
type DialBackoff struct {
	// Until is the end of the backoff window: DialPeer refuses the peer
	// (ErrDialBackoff) before it.
	Until time.Time
	// LastFailure is when the last failed DialPeer ended, and LastError its
	// error.
	LastFailure time.Time
	LastError   error
	// Failures counts the failed DialPeer calls since the peer's last
	// success (or since its backoff went stale: RetryConfig).
	Failures int
}

// DialBackoffOf returns p's dial backoff state; false when p has none (it
// was never dialed without success, its last dial succeeded, or its backoff
// has gone stale). The table it reads is capped (maxBackoffEntries). Safe
// for concurrent use.
func (s *Swarm) DialBackoffOf(p peer.ID) (DialBackoff, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.backoffs[p]
	if !ok || b.stale(s.clock.Now()) {
		return DialBackoff{}, false
	}
	return b.view(), true
}

// DialBackoffs returns the dial backoff state of every peer that has one
// (at most maxBackoffEntries, 4096). Safe for concurrent use.
func (s *Swarm) DialBackoffs() map[peer.ID]DialBackoff {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	out := make(map[peer.ID]DialBackoff, len(s.backoffs))
	for p, b := range s.backoffs {
		if !b.stale(now) {
			out[p] = b.view()
		}
	}
	return out
}

func (b *peerBackoff) view() DialBackoff {
	return DialBackoff{Until: b.until, LastFailure: b.until.Add(-b.window), LastError: b.lastError, Failures: b.failures}
}

// stale reports whether b may be dropped at now: its window is over, and
// so is a grace period as long again. go-libp2p's DialBackoff.cleanup
// (p2p/net/swarm/swarm_dial.go) keeps an entry for the same extra window, so
// that a peer that fails again soon after its window continues its
// sequence (a longer window) instead of starting over at InitialDelay;
// after the grace the peer starts over, as after a success.
func (b *peerBackoff) stale(now time.Time) bool {
	return !now.Before(b.until.Add(b.window))
}

// maxBackoffEntries caps the per-peer backoff table (Swarm.backoffs). The
// periodic cleanup drops stale entries only every backoffCleanupInterval;
// between two cleanups, a node that dials thousands of fresh unreachable
// peers (a DHT crawl, a scan, a hostile peer exchange) would otherwise add
// one entry per peer. An entry is about 200 bytes (the peer ID, the window,
// the backoff sequence, the map slot) plus its last dial error (a few
// hundred bytes: one line per address tried, and the swarm tries a
// bounded number), so the table stays within a few MB. 4096
// is far more than a node tries to reach in one backoff window: with
// DefaultRetryConfig a fresh failing peer's entry lives about 1.6 s (an
// 800 ms window and as much grace), so the cap is reached only above some
// 2,500 failed DialPeer calls a second (go-libp2p's swarm runs at most 160
// dials at once, ConcurrentFdDials). A new entry that finds the table full
// first makes room for backoffEvictBatch entries (evictBackoffsLocked).
const maxBackoffEntries = 4096

// backoffEvictBatch is how many places a full backoff table frees at once:
// 1/16 of the cap, so that the scan and sort of the whole table (about
// 0.5 ms under Swarm.mu on a busy 2-core machine) run once per 256 new
// entries, not once per entry, while a storm of failing peers lasts.
const backoffEvictBatch = maxBackoffEntries / 16

// backoffCleanupInterval is how often the swarm drops stale backoff
// entries. go-libp2p cleans its DialBackoff every BackoffMax (5 min), the
// longest window it gives; ours is DefaultRetryConfig's MaxDelay, 30 s, so
// that a stale entry lingers at most that long. A scan of a full table
// (maxBackoffEntries) under Swarm.mu takes about 0.1 ms.
const backoffCleanupInterval = 30 * time.Second

// recordBackoffLocked backs p off for window from now with b, p's sequence,
// and keeps b in the table, making room first when the table is full (see
// maxBackoffEntries); s.mu is held.
func (s *Swarm) recordBackoffLocked(p peer.ID, b *peerBackoff, now time.Time, window time.Duration, err error) {
	b.until, b.window = now.Add(window), window
	b.failures++
	b.lastError = err
	if _, ok := s.backoffs[p]; !ok && len(s.backoffs) >= maxBackoffEntries {
		s.evictBackoffsLocked(now)
	}
	s.backoffs[p] = b
}

// evictBackoffsLocked frees backoffEvictBatch places in a full backoff
// table: it drops every stale entry and, when that is not enough, the
// entries whose windows end first — expired ones (a window that is over
// refuses nothing) before live ones. Evicting a live entry costs at most
// one early redial of its peer. s.mu is held.
func (s *Swarm) evictBackoffsLocked(now time.Time) {
	type entry struct {
		p    peer.ID
		left time.Duration // until the window ends; ≤ 0 when it has
	}
	kept := make([]entry, 0, len(s.backoffs))
	for p, b := range s.backoffs {
		if b.stale(now) {
			delete(s.backoffs, p)
		} else {
			kept = append(kept, entry{p, b.until.Sub(now)})
		}
	}
	excess := len(kept) - (maxBackoffEntries - backoffEvictBatch)
	if excess <= 0 {
		return
	}
	slices.SortFunc(kept, func(a, b entry) int { return cmp.Compare(a.left, b.left) })
	for _, e := range kept[:excess] {
		delete(s.backoffs, e.p)
	}
}

// pruneBackoffsLocked drops every stale backoff entry; s.mu is held.
func (s *Swarm) pruneBackoffsLocked(now time.Time) {
	for p, b := range s.backoffs {
		if b.stale(now) {
			delete(s.backoffs, p)
		}
	}
}

// pruneBackoffs runs pruneBackoffsLocked at every tick until Close; New
// starts it, counted in s.refs.
func (s *Swarm) pruneBackoffs(tick *clock.Ticker) {
	defer s.refs.Done()
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
			s.mu.Lock()
			s.pruneBackoffsLocked(s.clock.Now())
			s.mu.Unlock()
		}
	}
}

// DialPeer returns an open connection to p — the one the path selector
// picks — or dials one. Concurrent calls for the same peer share one dial. It
// honours network.WithNoDial (returns network.ErrNoConn), the dial timeout
// (network.WithDialPeerTimeout, else Config.DialTimeout),
// network.WithSimultaneousConnect and network.WithForceDirectDial (a
// limited, relayed connection does not do: DialPeer returns an unlimited
// one or dials the peer's direct addresses only). Errors: ErrDialToSelf; ErrGaterDisallowedConnection when the
// gater refuses the peer; a *DialError wrapping ErrDialBackoff while the peer
// is backed off, ErrNoAddresses / ErrNoGoodAddresses, or naming each address
// tried and its error; ErrSwarmClosed; the context's error.
func (s *Swarm) DialPeer(ctx context.Context, p peer.ID) (network.Conn, error) {
	if p == s.local {
		return nil, fmt.Errorf("swarm: dial %s: %w", p, ErrDialToSelf)
	}
	forceDirect, _ := network.GetForceDirectDial(ctx)
	if c := s.selectDialedConn(p, forceDirect); c != nil {
		return c, nil
	}
	if noDial, reason := network.GetNoDial(ctx); noDial {
		return nil, fmt.Errorf("swarm: not connected to %s and dialing is disabled (%s): %w", p, reason, network.ErrNoConn)
	}
	if err := s.checkPeerDial(p); err != nil {
		return nil, fmt.Errorf("swarm: dial %s: %w", p, err)
	}
	if simConnect, _, _ := network.GetSimultaneousConnect(ctx); simConnect {
		return s.dialSimultaneous(ctx, p)
	}

	ad, err := s.joinDial(ctx, p, forceDirect)
	if errors.Is(err, errConnectedMeanwhile) {
		if c := s.selectDialedConn(p, forceDirect); c != nil {
			return c, nil
		}
		// Every connection is unusable (closing, retired): dial anyway.
		ad, err = s.joinDial(ctx, p, true)
	}
	if err != nil {
		return nil, err
	}
	select {
	case <-ad.done:
		if ad.err != nil {
			return nil, ad.err
		}
		if forceDirect && ad.conn.limited {
			// Joined a dial of another caller's that took a relay.
			return nil, fmt.Errorf("swarm: dial %s: the dial in flight made a relayed connection and a direct one was asked for: %w", p, network.ErrLimitedConn)
		}
		return ad.conn, nil
	case <-ctx.Done():
		s.leaveDial(p, ad)
		return nil, fmt.Errorf("swarm: dial %s: %w", p, ctx.Err())
	}
}

// holePunchRedials are the delays, from the start of a hole punch's
// client-side dial, at which it dials each address again with a new QUIC
// connection. The first packet of a punch often arrives before the peer's
// own punch packets have opened its NAT (the direct path is shorter than
// the relayed one that timed the punch) and is dropped; quic-go resends a
// lost first Initial only after its probe timeout, about 200 ms without an
// RTT sample, which makes time to direct bimodal (about 20 ms or 220 ms in
// the NAT lab, stock go-libp2p's too). A few fresh Initials soon after
// find the peer's NAT open; the first connection to complete wins, the
// others are cancelled. 25 and 75 ms, tried first, halved the p99 but
// moved the p50 to the first redial (BenchmarkNATLabHolePunch). The cost:
// on a direct path slower than 5 ms the fresh Initials are sent before
// the first one can be answered, and when it was not dropped, some of
// their connections may complete too — at most three more handshakes per
// punch, redundant connections on the same pair of addresses that
// multipath's redundancy rule closes on both ends.
var holePunchRedials = []time.Duration{5 * time.Millisecond, 15 * time.Millisecond, 45 * time.Millisecond}

// dialSimultaneous is DialPeer for a hole punch (the context carries
// network.WithSimultaneousConnect, as go-libp2p's DCUtR sets it): one
// attempt at every address of the peer at once (go-libp2p's
// NoDelayDialRanker; the client side dials each again at holePunchRedials),
// its own and not shared with another caller's dial,
// and outside the peer's dial backoff both ways — the punch is timed with
// the peer over the relayed connection, so earlier unsolicited dials that
// a NAT dropped say nothing about it, and its failure says nothing about
// the next one. The QUIC transport does the rest: the client side dials,
// the other sends UDP packets to open its NAT and takes the peer's
// connection from its listener. The connection passes admission like any
// other (a punch where both sides dialed leaves two, and the redundancy
// rule keeps the same one on both ends).
func (s *Swarm) dialSimultaneous(ctx context.Context, p peer.ID) (network.Conn, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrSwarmClosed
	}
	s.refs.Add(1)
	s.mu.Unlock()
	defer s.refs.Done()
	ctx, cancel := context.WithTimeout(ctx, s.dialTimeout(ctx))
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()
	c, err := s.dialAttempt(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("swarm: hole punch %s: %w", p, err)
	}
	return c, nil
}

// selectDialedConn is selectConn, but for a forced direct dial only an
// unlimited connection does.
func (s *Swarm) selectDialedConn(p peer.ID, forceDirect bool) network.Conn {
	c := s.selectConn(p)
	if c == nil || !forceDirect || !c.Stat().Limited {
		return c
	}
	return s.selectUnlimitedConn(p)
}

// selectUnlimitedConn asks the path selector for an unlimited connection
// to p; nil when p has none.
func (s *Swarm) selectUnlimitedConn(p peer.ID) network.Conn {
	s.mu.RLock()
	var limited []network.Conn
	for _, c := range s.conns[p] {
		if c.limited {
			limited = append(limited, c)
		}
	}
	s.mu.RUnlock()
	return s.selectConn(p, limited...)
}

// dialTimeout is the timeout of a whole DialPeer for ctx.
func (s *Swarm) dialTimeout(ctx context.Context) time.Duration {
	// GetDialPeerTimeout returns network.DialPeerTimeout when ctx sets no
	// timeout of its own; that package default (60 s) yields to ours.
	if t := network.GetDialPeerTimeout(ctx); t != network.DialPeerTimeout {
		return t
	}
	return s.cfg.DialTimeout
}

// errConnectedMeanwhile: joinDial found a connection to the peer that
// arrived after DialPeer asked the path selector.
var errConnectedMeanwhile = errors.New("swarm: connected meanwhile")

// joinDial returns the dial in flight to p, or starts one. It refuses a peer
// that is backed off, and returns errConnectedMeanwhile when p has an open
// connection (unless evenIfConnected): the check and
// the dial's registration happen under the same lock as an inbound
// connection's wait for our dials (addConn), so a dial never starts after an
// inbound connection that would be its redundant twin was announced.
func (s *Swarm) joinDial(ctx context.Context, p peer.ID, evenIfConnected bool) (*activeDial, error) {
	forceDirect, _ := network.GetForceDirectDial(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrSwarmClosed
	}
	if ad, ok := s.peerDials[p]; ok {
		ad.waiters++
		return ad, nil
	}
	if !evenIfConnected && s.connectedLocked(p, forceDirect) {
		return nil, errConnectedMeanwhile
	}
	if b, ok := s.backoffs[p]; ok {
		if now := s.clock.Now(); now.Before(b.until) {
			return nil, &DialError{Peer: p, Cause: fmt.Errorf("%w for another %s after failed dials",
				ErrDialBackoff, b.until.Sub(now).Round(time.Millisecond))}
		}
	}
	// The dial belongs to the swarm, not to the first caller: it keeps the
	// caller's values (dial options) but not its cancellation, and stops
	// when every waiter has left, on timeout, or on Close.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.dialTimeout(ctx))
	stop := context.AfterFunc(s.ctx, cancel)
	ad := &activeDial{done: make(chan struct{}), waiters: 1, cancel: cancel}
	s.peerDials[p] = ad
	endDial := s.beginDialLocked(p)
	s.refs.Add(1)
	go func() {
		defer s.refs.Done()
		defer stop()
		defer cancel()
		conn, err := s.dialWithRetry(dctx, p)
		s.mu.Lock()
		if s.peerDials[p] == ad {
			delete(s.peerDials, p)
		}
		s.mu.Unlock()
		endDial()
		ad.conn, ad.err = conn, err
		close(ad.done)
	}()
	return ad, nil
}

// connectedLocked reports whether p has an open announced connection
// (an unlimited one when unlimited is true); s.mu is held.
func (s *Swarm) connectedLocked(p peer.ID, unlimited bool) bool {
	for _, c := range s.conns[p] {
		if !c.IsClosed() && !(unlimited && c.limited) {
			return true
		}
	}
	return false
}

// leaveDial drops one waiter; the last one to leave cancels the dial and
// takes it out of the table, so that a later caller starts a new dial rather
// than joining a cancelled one.
func (s *Swarm) leaveDial(p peer.ID, ad *activeDial) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ad.waiters--
	if ad.waiters == 0 {
		ad.cancel()
		if s.peerDials[p] == ad {
			delete(s.peerDials, p)
		}
	}
}

// dialWithRetry makes up to 1+MaxRetries attempts with the peer's backoff
// delays between them, and backs the peer off when all fail (unless a
// connection to it arrived meanwhile). The peer's sequence continues from
// its entry in s.backoffs unless that is stale (whether or not the cleanup
// has dropped it yet); a fresh one enters the table only when it opens a
// window, so the table holds no entry for a dial in flight.
func (s *Swarm) dialWithRetry(ctx context.Context, p peer.ID) (*Conn, error) {
	s.mu.Lock()
	b, ok := s.backoffs[p]
	if !ok || b.stale(s.clock.Now()) {
		b = &peerBackoff{seq: s.cfg.Retry.newBackOff()}
	}
	s.mu.Unlock()

	for attempt := 0; ; attempt++ {
		c, err := s.dialAttempt(ctx, p)
		if err == nil {
			return c, nil
		}
		// A dial that was cancelled (every caller left, or Close) or that
		// found no address to try says nothing about the peer: no backoff.
		if errors.Is(ctx.Err(), context.Canceled) || !attempted(err) {
			return nil, err
		}
		s.mu.Lock()
		delay := b.seq.NextBackOff()
		s.mu.Unlock()
		if attempt >= s.cfg.Retry.MaxRetries || !retryable(err) || ctx.Err() != nil {
			s.mu.Lock()
			if !s.connectedLocked(p, false) {
				s.recordBackoffLocked(p, b, s.clock.Now(), delay, err)
			}
			s.mu.Unlock()
			return nil, err
		}
		log.Debugw("dial failed, retrying", "peer", p, "attempt", attempt+1, "delay", delay, "error", err)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			// The dial's time ran out before the next attempt: every
			// attempt failed, as above (a cancellation is not the peer's).
			if !errors.Is(ctx.Err(), context.Canceled) {
				s.mu.Lock()
				if !s.connectedLocked(p, false) {
					s.recordBackoffLocked(p, b, s.clock.Now(), delay, err)
				}
				s.mu.Unlock()
			}
			return nil, err
		}
	}
}

// attempted reports whether err comes from at least one address dial that
// reached the network (a gater refusal does not: it says nothing about the
// peer's reachability, and its reason must reach the next caller too).
func attempted(err error) bool {
	var de *DialError
	if !errors.As(err, &de) {
		return false
	}
	for _, te := range de.DialErrors {
		if !errors.Is(te.Cause, ErrGaterDisallowedConnection) {
			return true
		}
	}
	return false
}

// retryable reports whether a failed attempt may succeed if repeated: every
// address failed with a timeout or an unreachable network.
func retryable(err error) bool {
	var de *DialError
	if !errors.As(err, &de) || len(de.DialErrors) == 0 {
		return false
	}
	for _, te := range de.DialErrors {
		if !transient(te.Cause) {
			return false
		}
	}
	return true
}

func transient(err error) bool {
	var ne net.Error
	return os.IsTimeout(err) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout()) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.EHOSTUNREACH)
}

// checkPeerDial asks the dial gater whether p may be dialed; the error says
// why not and matches ErrGaterDisallowedConnection.
func (s *Swarm) checkPeerDial(p peer.ID) error {
	if s.dials == nil {
		return nil
	}
	if err := s.dials.CheckPeerDial(p); err != nil {
		return fmt.Errorf("%w: %w", ErrGaterDisallowedConnection, err)
	}
	return nil
}

// checkAddrDial asks the dial gater whether addr may be dialed for p; the
// error says why not and matches ErrGaterDisallowedConnection.
func (s *Swarm) checkAddrDial(p peer.ID, addr ma.Multiaddr) error {
	if s.dials == nil {
		return nil
	}
	if err := s.dials.CheckAddrDial(p, addr); err != nil {
		return fmt.Errorf("%w: %w", ErrGaterDisallowedConnection, err)
	}
	return nil
}

// dialableAddrs returns p's addresses that QUIC can dial, that are not ours,
// and that the gater allows. When the gater refused every one, the returned
// DialError lists each address with the gater's reason.
func (s *Swarm) dialableAddrs(p peer.ID) ([]ma.Multiaddr, error) {
	known := s.peers.Addrs(p)
	if len(known) == 0 {
		return nil, &DialError{Peer: p, Cause: ErrNoAddresses}
	}
	out := make([]ma.Multiaddr, 0, len(known))
	refused := &DialError{Peer: p, Cause: ErrNoGoodAddresses}
	for _, a := range known {
		if !s.CanDial(p, a) {
			continue
		}
		if err := s.checkAddrDial(p, a); err != nil {
			refused.DialErrors = append(refused.DialErrors, TransportError{Address: a, Cause: err})
			continue
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, refused
	}
	return out, nil
}

type dialResult struct {
	addr ma.Multiaddr
	conn *Conn
	err  error
}

// dialAttempt dials p's addresses happy-eyeballs style: in the ranker's
// order, each starting after its delay or as soon as the previous one has
// failed; the first connection wins and the others are cancelled. A
// connection that completes after the winner is kept: it passed admission
// and is a path to another of the peer's addresses.
func (s *Swarm) dialAttempt(ctx context.Context, p peer.ID) (*Conn, error) {
	addrs, err := s.dialableAddrs(p)
	if err != nil {
		return nil, err
	}
	if forceDirect, _ := network.GetForceDirectDial(ctx); forceDirect {
		addrs = slices.DeleteFunc(addrs, core.IsRelayAddr)
		if len(addrs) == 0 {
			return nil, &DialError{Peer: p, Cause: fmt.Errorf("%w: a direct connection was asked for and every address goes through a relay", ErrNoGoodAddresses)}
		}
	}
	ranker := s.cfg.DialRanker
	simConnect, isClient, _ := network.GetSimultaneousConnect(ctx)
	if simConnect {
		ranker = libp2pswarm.NoDelayDialRanker
	}
	plan := ranker(addrs)
	// Entries from fresh on dial again an address dialed before: a hole
	// punch's client side sends new first packets (holePunchRedials).
	fresh := len(plan)
	if simConnect && isClient {
		for _, d := range holePunchRedials {
			for _, a := range addrs {
				plan = append(plan, network.AddrDelay{Addr: a, Delay: d})
			}
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan dialResult, len(plan))
	start := time.Now()
	next, inFlight, launched := 0, 0, 0
	launch := func() {
		ad, again := plan[next], next >= fresh
		next++
		inFlight++
		launched++
		s.refs.Add(1)
		go func() {
			defer s.refs.Done()
			var c *Conn
			var err error
			if again {
				c, err = s.dialAddrOnce(ctx, p, ad.Addr) // a new connection, not the one in flight
			} else {
				c, err = s.dialAddr(ctx, p, ad.Addr)
			}
			results <- dialResult{addr: ad.Addr, conn: c, err: err}
		}()
	}

	dialErr := &DialError{Peer: p}
	var winner *Conn
	timer := time.NewTimer(0)
	defer timer.Stop()
	for winner == nil && (next < len(plan) || inFlight > 0) {
		// Start every dial that is due; arm the timer for the next one.
		for next < len(plan) && (inFlight == 0 || time.Since(start) >= plan[next].Delay) {
			launch()
		}
		if next < len(plan) {
			timer.Reset(time.Until(start.Add(plan[next].Delay)))
		}
		select {
		case r := <-results:
			inFlight--
			if r.err != nil {
				dialErr.DialErrors = append(dialErr.DialErrors, TransportError{Address: r.addr, Cause: r.err})
				continue
			}
			winner = r.conn
		case <-timer.C:
		case <-ctx.Done():
			dialErr.Cause = ctx.Err()
			winner = nil
			next = len(plan)
			// Collect the cancelled dials. One that connected anyway went
			// through admission and was announced: others may be using
			// it already (a DialPeer that found it, identify), so it is
			// kept, as after a winner. (Closing it made a peer's only
			// connection vanish under a concurrent Connect.)
			for ; inFlight > 0; inFlight-- {
				if r := <-results; r.conn == nil {
					dialErr.DialErrors = append(dialErr.DialErrors, TransportError{Address: r.addr, Cause: r.err})
				}
			}
		}
	}
	if mt := s.cfg.MetricsTracer; mt != nil {
		mt.DialCompleted(winner != nil, launched, time.Since(start))
	}
	if winner == nil {
		if dialErr.Cause == nil {
			dialErr.Cause = errors.New("all dials failed")
		}
		return nil, dialErr
	}
	cancel()
	// Dials that connected anyway after the winner went through admission
	// and were announced: they are paths to other addresses of the peer,
	// which multipath keeps as standby (within MaxPaths) — closing them
	// would only churn.
	for ; inFlight > 0; inFlight-- {
		<-results
	}
	return winner, nil
}

// connToAddrLocked returns an open announced connection to p at addr, or
// the survivor of an open redundant one, or nil; s.mu is held.
func (s *Swarm) connToAddrLocked(p peer.ID, addr ma.Multiaddr) *Conn {
	for _, c := range s.conns[p] {
		if !c.IsClosed() && c.RemoteMultiaddr().Equal(addr) {
			return c
		}
	}
	for _, c := range s.redundant[p] {
		if !c.IsClosed() && c.RemoteMultiaddr().Equal(addr) && !c.survivor.IsClosed() {
			return c.survivor
		}
	}
	return nil
}

// addrDial is one dial of one address in flight; concurrent dials of the
// same peer and address (DialPath, DialPeer's attempts) share it, so this
// node never makes two connections on the same pair of addresses itself.
type addrDial struct {
	done chan struct{}
	conn *Conn
	err  error
}

// dialAddr dials one address with the per-address timeout and runs the
// connection through admission, or joins the dial of the same address in
// flight. It returns the connection to use: the new one, or the one that
// survives it when it was redundant. The dial counts as in flight
// (awaitDials) until its admission is over.
func (s *Swarm) dialAddr(ctx context.Context, p peer.ID, addr ma.Multiaddr) (*Conn, error) {
	key := string(p) + string(addr.Bytes())
	for {
		s.mu.Lock()
		// A connection to addr (or a redundant one, through its
		// survivor) is in use: no second one on the same pair.
		if existing := s.connToAddrLocked(p, addr); existing != nil {
			s.mu.Unlock()
			return existing, nil
		}
		d, joined := s.addrDials[key]
		if !joined {
			d = &addrDial{done: make(chan struct{})}
			s.addrDials[key] = d
		}
		s.mu.Unlock()
		if !joined {
			d.conn, d.err = s.dialAddrOnce(ctx, p, addr)
			s.mu.Lock()
			delete(s.addrDials, key)
			s.mu.Unlock()
			close(d.done)
			return d.conn, d.err
		}
		select {
		case <-d.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		// The dial we joined was cancelled by its own caller (a happy
		// eyeballs race lost, say): dial ourselves.
		if d.err != nil && errors.Is(d.err, context.Canceled) && ctx.Err() == nil {
			continue
		}
		return d.conn, d.err
	}
}

// dialAddrOnce is dialAddr's own dial.
func (s *Swarm) dialAddrOnce(ctx context.Context, p peer.ID, addr ma.Multiaddr) (*Conn, error) {
	// The listening side of a hole punch dials nothing: it sends UDP
	// packets and takes the peer's connection from its listener, for as
	// long as the punch lasts (go-libp2p's QUIC transport bounds it,
	// HolePunchTimeout, 5 s), not a dial's AddrDialTimeout. Counted as a
	// dial in flight it would hold back the admission of that peer's
	// other inbound connections (awaitDials) for the whole punch.
	dir := network.DirOutbound
	timeout := s.cfg.AddrDialTimeout
	if simConnect, isClient, _ := network.GetSimultaneousConnect(ctx); simConnect && !isClient {
		// The peer dialed this connection: it is inbound here, on both
		// ends' books alike, which multipath's redundancy rule (the
		// dialer decides) needs. (go-libp2p's swarm records it as
		// outbound on both ends.)
		dir = network.DirInbound
		timeout = max(timeout, libp2pquic.HolePunchTimeout)
	} else {
		defer s.beginDial(p)()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tctx, release := detachAfterDial(ctx)
	start := time.Now()
	t := s.transportForDialing(addr)
	if t == nil {
		release()
		return nil, fmt.Errorf("swarm: no transport dials %s", addr)
	}
	tc, err := t.Dial(tctx, addr, p)
	release()
	mt := s.cfg.MetricsTracer
	if err != nil {
		if mt != nil {
			mt.FailedDialing(addr, err, context.Cause(ctx))
		}
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w: %w", ctx.Err(), err)
		}
		return nil, err
	}
	if mt != nil {
		// The QUIC dial is the handshake (TLS 1.3 inside QUIC), as
		// go-libp2p's swarm times it.
		mt.CompletedHandshake(time.Since(start), tc.ConnState(), tc.LocalMultiaddr())
	}
	if tc.RemotePeer() != p {
		_ = tc.CloseWithError(network.ConnProtocolViolation)
		return nil, fmt.Errorf("swarm: dialed %s at %s but reached %s", p, addr, tc.RemotePeer())
	}
	return s.addConn(ctx, tc, dir)
}

// DialPath opens an additional connection (path) to p at addr, even when p is
// already connected; the multipath manager uses it to open standby paths. A
// trailing /p2p/<id> in addr must name p. When a connection to p already
// goes to addr, DialPath returns it (or, for a redundant one, its
// survivor); when the new connection turns
// out redundant with one the peer dialed to us at the same moment, it
// returns the survivor. It consults the dial gater (peer, then address),
// ignores the peer's backoff, and bounds the dial by AddrDialTimeout. Errors
// name p and addr; a refusal at admission matches core.ErrRefused.
func (s *Swarm) DialPath(ctx context.Context, p peer.ID, addr ma.Multiaddr) (network.Conn, error) {
	if p == s.local {
		return nil, fmt.Errorf("swarm: dial path %s: %w", addr, ErrDialToSelf)
	}
	if addr == nil {
		return nil, fmt.Errorf("swarm: dial path to %s: nil multiaddr", p)
	}
	transportAddr, id := peer.SplitAddr(addr)
	if transportAddr == nil {
		return nil, fmt.Errorf("swarm: dial path to %s: %s has no transport part", p, addr)
	}
	if id != "" && id != p {
		return nil, fmt.Errorf("swarm: dial path to %s: address %s names another peer %s", p, addr, id)
	}
	if !s.CanDial(p, transportAddr) {
		return nil, fmt.Errorf("swarm: dial path to %s: cannot dial %s (not QUIC, or our own address)", p, transportAddr)
	}
	if err := s.checkPeerDial(p); err != nil {
		return nil, fmt.Errorf("swarm: dial path to %s at %s: %w", p, transportAddr, err)
	}
	if err := s.checkAddrDial(p, transportAddr); err != nil {
		return nil, fmt.Errorf("swarm: dial path to %s at %s: %w", p, transportAddr, err)
	}
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return nil, ErrSwarmClosed
	}
	c, err := s.dialAddr(ctx, p, transportAddr)
	if err != nil {
		return nil, fmt.Errorf("swarm: dial path to %s at %s: %w", p, transportAddr, err)
	}
	return c, nil
}

// detachedContext is the context a transport dials with: it is cancelled
// with the dial's context, reports its deadline and carries its values
// while the dial runs, and lets go of it afterwards (see detachAfterDial).
type detachedContext struct {
	context.Context // cancellation only, from context.Background
	deadline        time.Time
	hasDeadline     bool
	values          atomic.Pointer[context.Context]
}

// Deadline is the dial context's deadline. It has no timer of its own: the
// dial context's expiry cancels this context, so the transport never fails
// a moment before the dial context has ended (the swarm's backoff
// bookkeeping looks at the dial context's error after a failure).
func (c *detachedContext) Deadline() (time.Time, bool) { return c.deadline, c.hasDeadline }

// Value returns the dial context's value for key until the dial is over,
// nil afterwards.
func (c *detachedContext) Value(key any) any {
	if v := c.values.Load(); v != nil {
		return (*v).Value(key)
	}
	return nil
}

// detachAfterDial returns a context for a transport's Dial that ends with
// ctx and carries ctx's deadline and values (dial options such as
// network.WithSimultaneousConnect), and release, to call once Dial
// returned: it stops the cancellation link and drops the reference to ctx.
// quic-go makes a dialed connection's context a child of
// context.WithoutCancel(dial context) for the connection's whole life, so
// without this every connection kept the whole chain of the dial's
// contexts (DialPeer's, the attempt's, the address timeout's: about 1 KiB
// of contexts, timers and channels per connection, measured with
// BenchmarkMemory's heap profile).
func detachAfterDial(ctx context.Context) (context.Context, func()) {
	base, cancel := context.WithCancelCause(context.Background())
	d := &detachedContext{Context: base}
	d.deadline, d.hasDeadline = ctx.Deadline()
	d.values.Store(&ctx)
	stop := context.AfterFunc(ctx, func() { cancel(context.Cause(ctx)) })
	return d, func() {
		stop()
		cancel(context.Canceled)
		d.values.Store(nil)
	}
}
