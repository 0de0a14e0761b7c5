package swarm

import (
	"errors"
	"fmt"
	"slices"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/transport"
	ma "github.com/multiformats/go-multiaddr"
)

// listener is one transport listener and its accept loop.
type listener struct {
	transport.Listener
	// requested is the address Listen was asked for (port 0 included).
	requested ma.Multiaddr
}

// Listen starts listening on every address (e.g. /ip4/127.0.0.1/udp/0/quic-v1;
// port 0 lets the system choose; /p2p-circuit accepts relayed connections
// once a relay transport was added). It is all or nothing: when one address
// fails, the listeners opened by this call are closed again and the error
// names the failing address. Listen notifications fire for each address.
func (s *Swarm) Listen(addrs ...ma.Multiaddr) error {
	if len(addrs) == 0 {
		return errors.New("swarm: Listen needs at least one address")
	}
	opened := make([]*listener, 0, len(addrs))
	closeOpened := func() {
		for _, l := range opened {
			_ = l.Close()
		}
	}
	for _, a := range addrs {
		if a == nil {
			closeOpened()
			return errors.New("swarm: listen on a nil multiaddr")
		}
		t := s.transportForListening(a)
		if t == nil {
			closeOpened()
			return fmt.Errorf("swarm: listen on %s: no transport for it (want /ip4|ip6/<ip>/udp/<port>/quic-v1, or /p2p-circuit with a relay transport)", a)
		}
		// go-libp2p's QUIC transport keys its listeners by the requested
		// address and panics on a second listener for the same one.
		if s.listensOn(a) || slices.ContainsFunc(opened, func(l *listener) bool { return l.requested.Equal(a) }) {
			closeOpened()
			return fmt.Errorf("swarm: listen on %s: already listening on that address", a)
		}
		tl, err := t.Listen(a)
		if err != nil {
			closeOpened()
			return fmt.Errorf("swarm: listen on %s: %w", a, err)
		}
		opened = append(opened, &listener{Listener: tl, requested: a})
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		closeOpened()
		return ErrSwarmClosed
	}
	for _, l := range opened {
		s.listeners[l] = struct{}{}
	}
	s.refs.Add(len(opened))
	s.mu.Unlock()

	for _, l := range opened {
		go s.acceptConns(l)
		log.Debugw("listening", "addr", l.Multiaddr())
		s.notifyAll(func(n network.Notifiee) { n.Listen(s, l.Multiaddr()) })
	}
	return nil
}

// acceptConns runs until the listener is closed, owned by the swarm (refs).
// Each accepted connection is added on its own goroutine so that slow
// Connected notifiees do not hold up the next handshake.
func (s *Swarm) acceptConns(l *listener) {
	defer s.refs.Done()
	for {
		tc, err := l.Accept()
		if err != nil {
			return
		}
		s.refs.Add(1)
		go func() {
			defer s.refs.Done()
			if _, err := s.addConn(s.ctx, tc, network.DirInbound); err != nil {
				log.Debugw("inbound connection refused", "peer", tc.RemotePeer(), "addr", tc.RemoteMultiaddr(), "error", err)
			}
		}()
	}
}

// listensOn reports whether Listen was already asked for addr.
func (s *Swarm) listensOn(addr ma.Multiaddr) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for l := range s.listeners {
		if l.requested.Equal(addr) {
			return true
		}
	}
	return false
}

// isOwnAddr reports whether addr is one of our listen addresses.
func (s *Swarm) isOwnAddr(addr ma.Multiaddr) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for l := range s.listeners {
		if l.Multiaddr().Equal(addr) {
			return true
		}
	}
	return false
}
