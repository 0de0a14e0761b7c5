package swarm

import (
	"fmt"
	"sync"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/eventqueue"
)

// Lifecycle events, emitted on the host's event bus for applications that
// only observe (the seed design's Notifiee extension). Subscribe with
// host.EventBus().Subscribe(new(swarm.EvtConnectionOpened)), etc. They are
// delivered in order from one goroutine and never block the swarm.

// EvtConnectionOpened: a connection (path) passed the admission pipeline and
// was announced. Refused and redundant connections never produce one.
type EvtConnectionOpened struct {
	Peer      peer.ID
	ConnID    string
	Direction network.Direction
	// Local and Remote are the path's addresses.
	Local, Remote ma.Multiaddr
	// Pools are the peer's pools besides core.PoolGlobal when the
	// connection was admitted: core.PoolUnassigned or its realms'
	// sub-pools (nil without a connection manager).
	Pools []core.Pool
}

// EvtConnectionClosed: an announced connection (path) was removed.
type EvtConnectionClosed struct {
	Peer      peer.ID
	ConnID    string
	Direction network.Direction
	Local     ma.Multiaddr
	Remote    ma.Multiaddr
}

// EvtStreamOpened: a stream's protocol was set (outbound: chosen; inbound:
// negotiated), so it now carries that protocol.
type EvtStreamOpened struct {
	Peer      peer.ID
	ConnID    string
	StreamID  string
	Direction network.Direction
	Protocol  string
}

// EvtStreamClosed: a stream that was opened (EvtStreamOpened) was closed or
// reset.
type EvtStreamClosed struct {
	Peer      peer.ID
	ConnID    string
	StreamID  string
	Direction network.Direction
	Protocol  string
}

// connectednessEmitter emits event.EvtPeerConnectednessChanged, once per
// change of a peer's connectedness (two paths to a peer: one Connected),
// in order per peer: update reads the peer's current connectedness under a
// lock and queues an event when it differs from the last one queued, and
// the queue delivers in order from one goroutine.
type connectednessEmitter struct {
	connectedness func(peer.ID) network.Connectedness
	queue         *eventqueue.Queue

	mu   sync.Mutex
	last map[peer.ID]network.Connectedness // absent: NotConnected
}

func newConnectednessEmitter(bus event.Bus, connectedness func(peer.ID) network.Connectedness) (*connectednessEmitter, error) {
	q, err := eventqueue.NewNamed(bus, "swarm", new(event.EvtPeerConnectednessChanged))
	if err != nil {
		return nil, fmt.Errorf("swarm: %w", err)
	}
	return &connectednessEmitter{connectedness: connectedness, queue: q,
		last: make(map[peer.ID]network.Connectedness)}, nil
}

// update queues an event when p's connectedness changed. It never blocks on
// subscribers.
func (e *connectednessEmitter) update(p peer.ID) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.connectedness(p)
	if e.last[p] == now {
		return
	}
	if now == network.NotConnected {
		delete(e.last, p)
	} else {
		e.last[p] = now
	}
	e.queue.Push(event.EvtPeerConnectednessChanged{Peer: p, Connectedness: now})
}

// close delivers what is queued and stops.
func (e *connectednessEmitter) close() { e.queue.Close() }
