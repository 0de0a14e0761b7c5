package swarm

import (
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/realmnet/realmnet/core"
)

// PathSelectorFunc adapts a function to core.PathSelector.
type PathSelectorFunc func(p peer.ID, conns []network.Conn) network.Conn

// SelectPath calls f(p, conns).
func (f PathSelectorFunc) SelectPath(p peer.ID, conns []network.Conn) network.Conn {
	return f(p, conns)
}

var (
	_ core.PathSelector = PathSelectorFunc(nil)
	_ core.PathSelector = NewestPathSelector{}
)

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
