package multipath

import (
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/peer"
)

// EvtPathAdded is emitted on the host's event bus when a connection becomes a
// path of its peer.
type EvtPathAdded struct {
	Peer peer.ID
	Path PathInfo
}

// EvtPathSelected is emitted when StrategyBest's selected path of a peer
// changes. Old or New is "" when there was, or is, no path.
type EvtPathSelected struct {
	Peer     peer.ID
	Old, New string // connection IDs
	// Reason is "path added", "lower rtt", "healthier", "path degraded",
	// "path dead" or "path removed".
	Reason string
}

// EvtPathDead is emitted when a path has not answered a heartbeat for
// PathIdleTimeout; its connection is closed right after.
type EvtPathDead struct {
	Peer      peer.ID
	ConnID    string
	SilentFor time.Duration
}

// EvtPathRemoved is emitted when a path's connection has closed.
type EvtPathRemoved struct {
	Peer   peer.ID
	ConnID string
}

// eventQueue delivers events from one goroutine, in the order they were
// queued, so that subscribers see a peer's path events in order even though
// they are produced under the manager's lock by many goroutines.
type eventQueue struct {
	emitters map[reflect.Type]event.Emitter

	mu      sync.Mutex
	pending []any
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

func newEventQueue(bus event.Bus) (*eventQueue, error) {
	q := &eventQueue{
		emitters: make(map[reflect.Type]event.Emitter),
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	for _, evt := range []any{new(EvtPathAdded), new(EvtPathSelected), new(EvtPathDead), new(EvtPathRemoved)} {
		em, err := bus.Emitter(evt)
		if err != nil {
			q.closeEmitters()
			return nil, fmt.Errorf("multipath: create emitter for %T: %w", evt, err)
		}
		q.emitters[reflect.TypeOf(evt).Elem()] = em
	}
	go q.run()
	return q, nil
}

// push queues an event; it never blocks.
func (q *eventQueue) push(evt any) {
	q.mu.Lock()
	q.pending = append(q.pending, evt)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *eventQueue) run() {
	defer close(q.done)
	for {
		select {
		case <-q.wake:
			q.flush()
		case <-q.stop:
			q.flush()
			return
		}
	}
}

func (q *eventQueue) flush() {
	q.mu.Lock()
	batch := q.pending
	q.pending = nil
	q.mu.Unlock()
	for _, evt := range batch {
		if em := q.emitters[reflect.TypeOf(evt)]; em != nil {
			_ = em.Emit(evt)
		}
	}
}

func (q *eventQueue) close() {
	close(q.stop)
	<-q.done
	q.closeEmitters()
}

func (q *eventQueue) closeEmitters() {
	for _, em := range q.emitters {
		_ = em.Close()
	}
}
