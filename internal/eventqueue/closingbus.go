package eventqueue

import (
	"errors"
	"sync"

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
// subscribed while it starts) are passed through untouched. All methods are
// safe for concurrent use.
type ClosingBus struct {
	event.Bus

	mu       sync.Mutex
	tracking bool
	closed   bool
	subs     map[*closingSubscription]struct{}
}

// NewClosingBus wraps bus; tracking starts off unless track is true.
func NewClosingBus(bus event.Bus, track bool) *ClosingBus {
	return &ClosingBus{Bus: bus, tracking: track, subs: make(map[*closingSubscription]struct{})}
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
	if err != nil || !b.tracking {
		return sub, err
	}
	tracked := &closingSubscription{Subscription: sub, bus: b}
	b.subs[tracked] = struct{}{}
	return tracked, nil
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
		_ = s.Subscription.Close()
	}
}

// closingSubscription forgets itself on Close.
type closingSubscription struct {
	event.Subscription
	bus  *ClosingBus
	once sync.Once
}

func (s *closingSubscription) Close() error {
	var err error
	s.once.Do(func() {
		s.bus.mu.Lock()
		delete(s.bus.subs, s)
		s.bus.mu.Unlock()
		err = s.Subscription.Close()
	})
	return err
}
