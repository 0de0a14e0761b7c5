// Package eventqueue delivers events to a go-libp2p event bus from one
// goroutine, in the order they were pushed, without ever blocking the
// pusher: the bus's Emit blocks while a subscriber's channel is full, and
// events are produced on hot paths (stream opens) and under locks.
//
// A Queue owns its emitters (one per event type, created on the bus by New
// and closed by Close), the goroutine that calls Emit, and a bounded buffer
// of events waiting for that goroutine. When the buffer is full, Push drops
// the new event and counts it (Dropped) instead of blocking or growing.
package eventqueue

import (
	"context"
	"fmt"
	"path"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/core/event"
)

var log = logging.Logger("realmnet/eventqueue")

// DefaultLimit is the number of events a Queue made by New holds at most
// (see NewWithLimit for what counts toward it).
//
// The bound exists so that a subscriber that stalls (stops reading its
// subscription) cannot make the queue grow memory without bound: once it
// is reached, new events are dropped and counted. 4096 is large enough
// that bursts of connection and stream events from hundreds of peers at
// once (a few events per peer) still fit while a healthy subscriber
// catches up, and small enough (a few hundred KiB of events at most) to
// be harmless per queue.
const DefaultLimit = 4096

// warnInterval is the least time between two "dropping events" warnings
// of one queue; the first drop is always logged.
const warnInterval = time.Second

// Queue owns one emitter per event type, the goroutine that emits, and
// the bounded buffer of events waiting for it. Create it with New or
// NewWithLimit. Push, Dropped and DroppedUnknown are safe for concurrent
// use, also with Close and CloseContext and after them; Close delivers
// what was accepted, stops the goroutine and closes the emitters.
type Queue struct {
	// emitters is written only by NewWithLimit, before the Queue is
	// shared; afterwards it is read concurrently without locking.
	emitters map[reflect.Type]event.Emitter
	limit    int
	start    time.Time // monotonic base for the warning limiter
	// wanted holds the subscription count of each type when the bus is
	// a ClosingBus (nil otherwise); like emitters, written only by
	// NewWithLimit.
	wanted   map[reflect.Type]*atomic.Int64
	wildcard *atomic.Int64

	mu sync.Mutex
	// pending holds the accepted events the goroutine has not taken yet.
	pending []any
	// spare is the goroutine's emptied batch, reused as the next pending
	// buffer so that a steady stream of events does not allocate.
	spare []any
	// closing is set (under mu) by the first Close; Push then drops.
	closing bool

	// held is the number of events accepted by Push whose Emit has not
	// returned yet: pending plus the batch the goroutine is emitting. It
	// only grows under mu (in Push, checked against limit there) and
	// shrinks without it (after each Emit), so it never exceeds limit.
	held atomic.Int64

	dropped        atomic.Uint64
	droppedUnknown atomic.Uint64
	warn           warnLimiter

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
	// closed is closed once the emitters are closed.
	closed chan struct{}
	once   sync.Once
}

// New creates the queue for the given event types, each a pointer to a
// zero value (new(EvtFoo)), as bus.Emitter wants them, and starts its
// goroutine. It holds at most DefaultLimit events; see NewWithLimit.
//
// The error names the type the bus refused; then no emitter stays open
// and no goroutine is started.
func New(bus event.Bus, types ...any) (*Queue, error) {
	return NewWithLimit(bus, DefaultLimit, types...)
}

// NewWithLimit is New with a bound of limit events instead of
// DefaultLimit. limit must be at least 1.
//
// An event counts toward limit from the moment Push accepts it until the
// bus's Emit for it returns, so the event the goroutine is blocked emitting
// to a stalled subscriber is one of them. Events already handed to the bus
// (sitting in a subscription's channel buffer) no longer count.
//
// It returns an error naming the value if limit < 1, or naming the type
// the bus refused (as New); in both cases no emitter stays open and no
// goroutine is started.
func NewWithLimit(bus event.Bus, limit int, types ...any) (*Queue, error) {
	return newQueue(bus, "", limit, types)
}

// NewNamed is New for a queue whose drops a ClosingBus reports under name
// (DroppedEvents) instead of the package of its first event type: for a
// component that emits another package's events (the swarm emits
// go-libp2p's event.EvtPeerConnectednessChanged).
func NewNamed(bus event.Bus, name string, types ...any) (*Queue, error) {
	return newQueue(bus, name, DefaultLimit, types)
}

func newQueue(bus event.Bus, name string, limit int, types []any) (*Queue, error) {
	if limit < 1 {
		return nil, fmt.Errorf("eventqueue: limit %d: must be at least 1", limit)
	}
	q := &Queue{
		emitters: make(map[reflect.Type]event.Emitter, len(types)),
		limit:    limit,
		start:    time.Now(),
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
	if cb, ok := bus.(*ClosingBus); ok {
		q.wanted = make(map[reflect.Type]*atomic.Int64, len(types))
		for t := range q.emitters {
			q.wanted[t] = cb.interest.counter(t)
		}
		q.wildcard = &cb.interest.wildcard
		if name == "" {
			name = queueName(types)
		}
		cb.addQueue(name, q)
	}
	go q.run()
	return q, nil
}

// queueName names a queue after the package of its first event type
// ("multipath" for multipath.EvtPathAdded), for the drop counts of its bus.
func queueName(types []any) string {
	if len(types) == 0 {
		return "none"
	}
	t := reflect.TypeOf(types[0])
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return path.Base(t.PkgPath())
}

// Wanted reports whether events of type t (a value type, as pushed) may
// have a subscriber: false only when the queue's bus is a ClosingBus that
// counts no live subscription of t and no wildcard one. A producer of
// frequent events can then skip building them; one that subscribes later
// sees the events from then on. Safe for concurrent use; it costs a map
// lookup and two atomic loads.
func (q *Queue) Wanted(t reflect.Type) bool {
	if q.wanted == nil {
		return true
	}
	c, ok := q.wanted[t]
	return !ok || c.Load() > 0 || q.wildcard.Load() > 0
}

// Push queues evt, a value (not a pointer) of one of the queue's types,
// for emission after every event accepted before it. It never blocks (it
// takes only a short internal lock, never one held across Emit), the
// buffer never grows beyond the limit, and it is safe for concurrent use.
//
// evt is dropped instead of queued:
//   - if its type is not one of the queue's types (including a nil evt):
//     counted in DroppedUnknown, not logged, whether or not the queue is
//     closed;
//   - if the queue already holds its limit of events, or Close or
//     CloseContext has been called: counted in Dropped, and logged as a
//     warning on the first drop and then at most once per second.
func (q *Queue) Push(evt any) {
	if _, ok := q.emitters[reflect.TypeOf(evt)]; !ok {
		q.droppedUnknown.Add(1)
		return
	}
	q.mu.Lock()
	if q.closing {
		q.mu.Unlock()
		q.drop(evt, "closed")
		return
	}
	if q.held.Load() >= int64(q.limit) {
		q.mu.Unlock()
		q.drop(evt, "full")
		return
	}
	q.held.Add(1)
	q.pending = append(q.pending, evt)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Dropped returns how many events Push has dropped because the queue held
// its limit of events or was closed, since New. It is safe for concurrent
// use; the count only grows (it wraps after 2^64 drops).
func (q *Queue) Dropped() uint64 { return q.dropped.Load() }

// DroppedUnknown returns how many events Push has dropped because their
// type was not one of the queue's types (a programming error: a wrong
// type, a pointer instead of a value, or nil), since New. It is safe for
// concurrent use; these drops are not in Dropped.
func (q *Queue) DroppedUnknown() uint64 { return q.droppedUnknown.Load() }

func (q *Queue) drop(evt any, reason string) {
	n := q.dropped.Add(1)
	if q.warn.allow(time.Since(q.start)) {
		log.Warnw("event queue dropped an event",
			"reason", reason,
			"event_type", fmt.Sprintf("%T", evt),
			"limit", q.limit,
			"dropped_total", n)
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
	q.pending, q.spare = q.spare[:0], nil
	q.mu.Unlock()
	for i, evt := range batch {
		// Push admits only types in emitters.
		_ = q.emitters[reflect.TypeOf(evt)].Emit(evt)
		batch[i] = nil
		q.held.Add(-1)
	}
	q.mu.Lock()
	if q.spare == nil && cap(batch) <= spareMaxCap {
		q.spare = batch[:0]
	}
	q.mu.Unlock()
}

// spareMaxCap is the largest batch buffer flush keeps for reuse; the buffer
// of a rare burst is left to the garbage collector.
const spareMaxCap = 256

// Close emits what is queued, stops the goroutine and closes the emitters.
// Idempotent and safe for concurrent use; Push after it drops and counts.
// It waits for every subscriber to take its events (go-libp2p's event bus
// blocks an emitter on a full subscription); CloseContext does not.
func (q *Queue) Close() { _ = q.CloseContext(context.Background()) }

// CloseContext is Close that stops waiting when ctx ends, and then returns
// ctx's error (ctx.Err()); otherwise it returns nil once the emitters are
// closed. Either way the queue is closed to Push from the first call on,
// and the queue's goroutine finishes by itself, emitting what is left and
// closing the emitters, once slow subscribers read or close their
// subscriptions. It may be called again, also with another context, to
// wait again.
func (q *Queue) CloseContext(ctx context.Context) error {
	q.once.Do(func() {
		q.mu.Lock()
		q.closing = true
		q.mu.Unlock()
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

// warnLimiter lets the first call through and then at most one call per
// warnInterval. It is safe for concurrent use; the zero value is ready.
type warnLimiter struct {
	// last is 1 + the time (since the queue's start) of the last allowed
	// call, or 0 before the first.
	last atomic.Int64
}

// allow reports whether a warning may be logged at now, the monotonic
// time since the queue's start, and if so records now.
func (w *warnLimiter) allow(now time.Duration) bool {
	last := w.last.Load()
	if last != 0 && now-time.Duration(last-1) < warnInterval {
		return false
	}
	return w.last.CompareAndSwap(last, int64(now)+1)
}
