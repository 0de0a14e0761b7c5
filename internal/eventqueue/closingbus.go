package eventqueue

import (
	"errors"
	"reflect"
	"sync"
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/event"
)

// ErrBusClosed is returned by ClosingBus.Subscribe once CloseSubscriptions
// has run.
var ErrBusClosed = errors.New("eventqueue: the event bus's owner has closed")

// ClosingBus is a go-libp2p event.Bus that remembers the subscriptions made
// through it while tracking is on, so that their owner can end them when it
// stops: go-libp2p's bus blocks an emitter while a subscriber's channel is
// full, so one subscription an application never reads would otherwise
// keep the owner's emitting goroutines, and its shutdown, waiting forever.
//
// Subscriptions made while tracking is off (the owner's own components,
// subscribed while it starts) are not remembered.
//
// It also counts the live subscriptions per event type, so that a Queue on
// this bus can tell its producers when nobody subscribes to an event
// (Queue.Wanted) and frequent events need not be built at all. All methods
// are safe for concurrent use.
type ClosingBus struct {
	event.Bus
	interest interest

	mu       sync.Mutex
	tracking bool
	closed   bool
	subs     map[*closingSubscription]struct{}
	// queues are the Queues made on this bus, by name (queueName).
	queues map[string][]*Queue
}

// addQueue remembers q, named name, for DroppedEvents.
func (b *ClosingBus) addQueue(name string, q *Queue) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.queues == nil {
		b.queues = make(map[string][]*Queue)
	}
	b.queues[name] = append(b.queues[name], q)
}

// DroppedEvents returns, per queue name (the package of the queue's event
// types: "swarm", "multipath", ...), the events the Queues made on this bus
// have dropped (Queue.Dropped plus Queue.DroppedUnknown, summed over the
// queues of one name) since they were made. Safe for concurrent use.
func (b *ClosingBus) DroppedEvents() map[string]uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]uint64, len(b.queues))
	for name, qs := range b.queues {
		for _, q := range qs {
			out[name] += q.Dropped() + q.DroppedUnknown()
		}
	}
	return out
}

// interest counts live subscriptions per event type, and wildcard ones.
type interest struct {
	mu       sync.Mutex
	counts   map[reflect.Type]*atomic.Int64
	wildcard atomic.Int64
}

// counter returns the subscription count of events of type t (not a
// pointer type), made on first use.
func (i *interest) counter(t reflect.Type) *atomic.Int64 {
	i.mu.Lock()
	defer i.mu.Unlock()
	c, ok := i.counts[t]
	if !ok {
		c = new(atomic.Int64)
		i.counts[t] = c
	}
	return c
}

// subscribed adds delta to the counts of the types a Subscribe call named:
// event.WildcardSubscription, a pointer to a zero event (new(EvtFoo)), or a
// slice of them — go-libp2p's forms.
func (i *interest) subscribed(eventType any, delta int64) {
	if eventType == event.WildcardSubscription {
		i.wildcard.Add(delta)
		return
	}
	var types []any
	if list, ok := eventType.([]any); ok {
		types = list
	} else {
		types = []any{eventType}
	}
	for _, t := range types {
		if rt := reflect.TypeOf(t); rt != nil && rt.Kind() == reflect.Pointer {
			i.counter(rt.Elem()).Add(delta)
		}
	}
}

// NewClosingBus wraps bus; tracking starts off unless track is true.
func NewClosingBus(bus event.Bus, track bool) *ClosingBus {
	return &ClosingBus{Bus: bus, tracking: track, subs: make(map[*closingSubscription]struct{}),
		interest: interest{counts: make(map[reflect.Type]*atomic.Int64)}}
}

// Track turns tracking on: from now on every subscription is remembered
// until it is closed.
func (b *ClosingBus) Track() {
	b.mu.Lock()
	b.tracking = true
	b.mu.Unlock()
}

// Subscribe is event.Bus.Subscribe; the subscription is remembered while
// tracking is on. After CloseSubscriptions it returns ErrBusClosed.
func (b *ClosingBus) Subscribe(eventType any, opts ...event.SubscriptionOpt) (event.Subscription, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrBusClosed
	}
	sub, err := b.Bus.Subscribe(eventType, opts...)
	if err != nil {
		return nil, err
	}
	b.interest.subscribed(eventType, 1)
	wrapped := &closingSubscription{Subscription: sub, bus: b, eventType: eventType, tracked: b.tracking}
	if b.tracking {
		b.subs[wrapped] = struct{}{}
	}
	return wrapped, nil
}

// CloseSubscriptions closes every remembered subscription (go-libp2p's
// Subscription.Close drains its channel, which releases a blocked emitter,
// and then closes it: readers see the end of the channel) and refuses new
// ones. Idempotent.
func (b *ClosingBus) CloseSubscriptions() {
	b.mu.Lock()
	b.closed = true
	subs := b.subs
	b.subs = make(map[*closingSubscription]struct{})
	b.mu.Unlock()
	for s := range subs {
		_ = s.Close()
	}
}

// closingSubscription takes itself out of the interest counts, and out of
// the tracked subscriptions when it is one, on Close.
type closingSubscription struct {
	event.Subscription
	bus       *ClosingBus
	eventType any
	tracked   bool
	once      sync.Once
}

func (s *closingSubscription) Close() error {
	var err error
	s.once.Do(func() {
		if s.tracked {
			s.bus.mu.Lock()
			delete(s.bus.subs, s)
			s.bus.mu.Unlock()
		}
		s.bus.interest.subscribed(s.eventType, -1)
		err = s.Subscription.Close()
	})
	return err
}
