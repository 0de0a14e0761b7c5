package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/transport"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/realmnet/realmnet/core"
)

// The swarm implements go-libp2p's transport.TransportNetwork, so that
// go-libp2p's circuit relay v2 client (p2p/protocol/circuitv2/client:
// AddTransport, then Listen on /p2p-circuit) plugs in unchanged. Params.
// Transport (QUIC in a node) is the first transport; AddTransport adds
// others, each for the multiaddr protocols it names (Protocols). Dialing
// and listening pick a transport the way go-libp2p's swarm does
// (p2p/net/swarm/swarm_transport.go): a relay address (one with
// /p2p-circuit) goes to the proxy transport registered for P_CIRCUIT;
// another address to the first transport that can dial it; a listen
// address to the transport of its last protocol, or to a proxy transport
// among its protocols.
var _ transport.TransportNetwork = (*Swarm)(nil)

// transportSet is the swarm's transports by multiaddr protocol code, plus
// the order they were added in (for CanDial's first match). Guarded by
// Swarm.mu.
type transportSet struct {
	byProtocol map[int]transport.Transport
	ordered    []transport.Transport
}

// AddTransport adds t for every multiaddr protocol in t.Protocols(). It is
// safe for concurrent use. Errors: t names no protocol; a protocol already
// has a transport (the error names them); the swarm is closed
// (ErrSwarmClosed).
func (s *Swarm) AddTransport(t transport.Transport) error {
	protocols := t.Protocols()
	if len(protocols) == 0 {
		return fmt.Errorf("swarm: transport %T handles no protocols", t)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrSwarmClosed
	}
	var taken []string
	for _, p := range protocols {
		if _, ok := s.transports.byProtocol[p]; ok {
			taken = append(taken, protocolName(p))
		}
	}
	if len(taken) > 0 {
		return fmt.Errorf("swarm: add transport %T: protocol(s) %s already have a transport", t, strings.Join(taken, ", "))
	}
	s.addTransportLocked(t)
	return nil
}

func (s *Swarm) addTransportLocked(t transport.Transport) {
	if s.transports.byProtocol == nil {
		s.transports.byProtocol = make(map[int]transport.Transport)
	}
	for _, p := range t.Protocols() {
		s.transports.byProtocol[p] = t
	}
	s.transports.ordered = append(s.transports.ordered, t)
}

func protocolName(code int) string {
	if p := ma.ProtocolWithCode(code); p.Name != "" {
		return p.Name
	}
	return fmt.Sprintf("unknown (%d)", code)
}

// transportForDialing returns the transport that dials a, or nil. The
// first transport (QUIC) is asked first without a lock: it is set once by
// New and most addresses are its own.
func (s *Swarm) transportForDialing(a ma.Multiaddr) transport.Transport {
	if len(a) == 0 {
		return nil
	}
	relay := core.IsRelayAddr(a)
	if !relay && s.transport.CanDial(a) {
		return s.transport
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if relay {
		if t := s.transports.byProtocol[ma.P_CIRCUIT]; t != nil && t.CanDial(a) {
			return t
		}
		return nil
	}
	for _, t := range s.transports.ordered {
		if t.CanDial(a) {
			return t
		}
	}
	return nil
}

// transportForListening returns the transport that listens on a, or nil:
// the transport of a's last protocol, or a proxy transport among a's
// protocols (go-libp2p's TransportForListening).
func (s *Swarm) transportForListening(a ma.Multiaddr) transport.Transport {
	protocols := a.Protocols()
	if len(protocols) == 0 {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	selected := s.transports.byProtocol[protocols[len(protocols)-1].Code]
	for _, p := range protocols {
		if t, ok := s.transports.byProtocol[p.Code]; ok && t.Proxy() {
			selected = t
		}
	}
	return selected
}

// closeTransports closes every transport that is an io.Closer, once each.
func (s *Swarm) closeTransports() error {
	s.mu.RLock()
	ts := s.transports.ordered
	s.mu.RUnlock()
	var errs []error
	for _, t := range ts {
		if closer, ok := t.(io.Closer); ok {
			if err := closer.Close(); err != nil {
				errs = append(errs, fmt.Errorf("swarm: close transport %T: %w", t, err))
			}
		}
	}
	return errors.Join(errs...)
}

// waitForDirectConn returns an unlimited connection to p: one there is, or
// the first announced within the dial timeout. Errors match
// network.ErrLimitedConn (with the context's error when ctx ended first).
func (s *Swarm) waitForDirectConn(ctx context.Context, p peer.ID) (network.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, s.dialTimeout(ctx))
	defer cancel()
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, ErrSwarmClosed
		}
		ch := make(chan struct{})
		if s.directWaiters == nil {
			s.directWaiters = make(map[peer.ID][]chan struct{})
		}
		s.directWaiters[p] = append(s.directWaiters[p], ch)
		s.mu.Unlock()
		// Registered first, looked second: a connection recorded in
		// between closes ch.
		if c := s.selectUnlimitedConn(p); c != nil {
			s.dropDirectWaiter(p, ch)
			return c, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			s.dropDirectWaiter(p, ch)
			return nil, fmt.Errorf("swarm: open stream to %s: only relayed connections, and none direct came within the dial timeout (allow them with network.WithAllowLimitedConn): %w: %w",
				p, network.ErrLimitedConn, ctx.Err())
		}
	}
}

// wakeDirectWaitersLocked wakes the streams waiting for an unlimited
// connection to c's peer when c is one; s.mu is held.
func (s *Swarm) wakeDirectWaitersLocked(c *Conn) {
	if c.limited {
		return
	}
	p := c.RemotePeer()
	for _, ch := range s.directWaiters[p] {
		close(ch)
	}
	delete(s.directWaiters, p)
}

// dropDirectWaiter removes ch from p's waiters, unless a connection woke
// (and removed) it already.
func (s *Swarm) dropDirectWaiter(p peer.ID, ch chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ws := slices.DeleteFunc(s.directWaiters[p], func(w chan struct{}) bool { return w == ch })
	if len(ws) == 0 {
		delete(s.directWaiters, p)
	} else {
		s.directWaiters[p] = ws
	}
}
