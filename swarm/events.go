package swarm

import (
	"fmt"
	"sync"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// connectednessEmitter emits event.EvtPeerConnectednessChanged from one
// goroutine, so that the events of one peer are delivered in order. Callers
// only mark a peer as changed; the loop reads the peer's current
// connectedness and emits it when it differs from the last one emitted.
type connectednessEmitter struct {
	emitter       event.Emitter
	connectedness func(peer.ID) network.Connectedness

	mu      sync.Mutex
	pending map[peer.ID]struct{}
	last    map[peer.ID]network.Connectedness // loop goroutine only

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

func newConnectednessEmitter(bus event.Bus, connectedness func(peer.ID) network.Connectedness) (*connectednessEmitter, error) {
	em, err := bus.Emitter(new(event.EvtPeerConnectednessChanged))
	if err != nil {
		return nil, fmt.Errorf("swarm: create connectedness emitter: %w", err)
	}
	e := &connectednessEmitter{
		emitter:       em,
		connectedness: connectedness,
		pending:       make(map[peer.ID]struct{}),
		last:          make(map[peer.ID]network.Connectedness),
		wake:          make(chan struct{}, 1),
		stop:          make(chan struct{}),
		done:          make(chan struct{}),
	}
	go e.run()
	return e, nil
}

// update marks p as possibly changed. It never blocks.
func (e *connectednessEmitter) update(p peer.ID) {
	e.mu.Lock()
	e.pending[p] = struct{}{}
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *connectednessEmitter) run() {
	defer close(e.done)
	for {
		select {
		case <-e.wake:
			e.flush()
		case <-e.stop:
			e.flush()
			return
		}
	}
}

func (e *connectednessEmitter) flush() {
	e.mu.Lock()
	pending := e.pending
	e.pending = make(map[peer.ID]struct{})
	e.mu.Unlock()
	for p := range pending {
		now := e.connectedness(p)
		if e.last[p] == now {
			continue
		}
		if now == network.NotConnected {
			delete(e.last, p)
		} else {
			e.last[p] = now
		}
		_ = e.emitter.Emit(event.EvtPeerConnectednessChanged{Peer: p, Connectedness: now})
	}
}

// close emits what is pending, stops the loop and closes the emitter.
func (e *connectednessEmitter) close() {
	close(e.stop)
	<-e.done
	_ = e.emitter.Close()
}
