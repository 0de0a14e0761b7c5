package swarm

import (
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// PathSelector chooses which connection (path) to a peer carries a new
// stream. The swarm calls SelectPath on every NewStream and DialPeer with the
// peer's open connections, oldest first (never empty, never closed at the
// time of the call). It must return one of them, or nil to say that none is
// usable (the swarm then dials). Implementations must be safe for concurrent
// use and must not call back into the swarm: SelectPath sits on the stream
// open path and must be fast.
type PathSelector interface {
	SelectPath(p peer.ID, conns []network.Conn) network.Conn
}

// PathSelectorFunc adapts a function to PathSelector.
type PathSelectorFunc func(p peer.ID, conns []network.Conn) network.Conn

// SelectPath calls f(p, conns).
func (f PathSelectorFunc) SelectPath(p peer.ID, conns []network.Conn) network.Conn {
	return f(p, conns)
}

// NewestPathSelector selects the most recently opened connection. It is the
// swarm's default until the multipath manager is installed; go-libp2p's
// swarm makes the same choice among equally good connections.
type NewestPathSelector struct{}

// SelectPath returns the last element of conns (they come oldest first).
func (NewestPathSelector) SelectPath(_ peer.ID, conns []network.Conn) network.Conn {
	if len(conns) == 0 {
		return nil
	}
	return conns[len(conns)-1]
}
