// Package eventqueue delivers events to a go-libp2p event bus from one
// goroutine, in the order they were pushed, without ever blocking the
// pusher: the bus's Emit blocks while a subscriber's channel is full, and
// events are produced on hot paths (stream opens) and under locks.
package eventqueue

import (
	"context"
	"fmt"
	"reflect"
	"sync"

	"github.com/libp2p/go-libp2p/core/event"
)

// Queue owns one emitter per event type and the goroutine that emits.
// Create it with New; Push is safe for concurrent use; Close delivers what
// is queued, stops the goroutine and closes the emitters.
type Queue struct {
	emitters map[reflect.Type]event.Emitter

	mu      sync.Mutex
	pending []any

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
	// closed is closed once the emitters are closed.
	closed chan struct{}
	once   sync.Once
}

// New creates the queue for the given event types, each a pointer to a
// zero value (new(EvtFoo)), as bus.Emitter wants them. The error names the
// type the bus refused.
func New(bus event.Bus, types ...any) (*Queue, error) {
	q := &Queue{
		emitters: make(map[reflect.Type]event.Emitter, len(types)),
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		closed:   make(chan struct{}),
	}
	for _, t := range types {
		em, err := bus.Emitter(t)
		if err != nil {
			q.closeEmitters()
			return nil, fmt.Errorf("eventqueue: create emitter for %T: %w", t, err)
		}
		q.emitters[reflect.TypeOf(t).Elem()] = em
	}
	go q.run()
	return q, nil
}

// Push queues evt (a value of one of the queue's types); it never blocks.
// Events of other types are dropped.
func (q *Queue) Push(evt any) {
	q.mu.Lock()
	q.pending = append(q.pending, evt)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *Queue) run() {
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

func (q *Queue) flush() {
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

// Close emits what is queued, stops the goroutine and closes the emitters.
// Idempotent. It waits for every subscriber to take its events (go-libp2p's
// event bus blocks an emitter on a full subscription); CloseContext does not.
func (q *Queue) Close() { _ = q.CloseContext(context.Background()) }

// CloseContext is Close that stops waiting when ctx ends, and then returns
// ctx's error: the queue's goroutine finishes by itself, emitting what is
// left and closing the emitters, once slow subscribers read or close their
// subscriptions.
func (q *Queue) CloseContext(ctx context.Context) error {
	q.once.Do(func() {
		close(q.stop)
		go func() {
			<-q.done
			q.closeEmitters()
			close(q.closed)
		}()
	})
	select {
	case <-q.closed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (q *Queue) closeEmitters() {
	for _, em := range q.emitters {
		_ = em.Close()
	}
}
