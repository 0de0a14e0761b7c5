package eventqueue_test

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/internal/eventqueue"
)

func TestMain(m *testing.M) {
	// Every test closes its queues and subscriptions, so no goroutine of
	// a queue (or of the bus) may outlive the tests.
	goleak.VerifyTestMain(m)
}

type EvtA struct{ Seq int }

type EvtB struct{ Seq int }

// EvtC is never registered with any queue.
type EvtC struct{}

type EvtP struct{ Pusher, Seq int }

// waitTimeout bounds every wait for something that must happen; it is only
// reached when the code under test is broken (a blocked Push, a lost
// event), so it is generous for slow -race runs.
const waitTimeout = 10 * time.Second

// receive reads exactly n events from ch, failing the test if they do not
// arrive within waitTimeout.
func receive(t *testing.T, ch <-chan any, n int) []any {
	t.Helper()
	got := make([]any, 0, n)
	timeout := time.NewTimer(waitTimeout)
	defer timeout.Stop()
	for len(got) < n {
		select {
		case evt, ok := <-ch:
			require.True(t, ok, "subscription closed after %d of %d events", len(got), n)
			got = append(got, evt)
		case <-timeout.C:
			require.FailNow(t, "events missing", "received %d of %d events", len(got), n)
		}
	}
	return got
}

// pushBounded runs push in its own goroutine and fails the test if it
// does not return within waitTimeout: Push must never block, and with a
// stalled subscriber a blocking Push would block forever.
func pushBounded(t *testing.T, push func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		push()
	}()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		require.FailNow(t, "Push blocked")
	}
}

func subscribe(t *testing.T, bus event.Bus, types any, opts ...event.SubscriptionOpt) event.Subscription {
	t.Helper()
	sub, err := bus.Subscribe(types, opts...)
	require.NoError(t, err)
	return sub
}

func closeWithin(t *testing.T, q *eventqueue.Queue) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	require.NoError(t, q.CloseContext(ctx))
}

// One pusher, many events of two types on one subscription: they arrive
// in push order, across types, none dropped.
func TestPushPreservesOrder(t *testing.T) {
	const n = 20_000
	bus := eventbus.NewBus()
	sub := subscribe(t, bus, []any{new(EvtA), new(EvtB)})
	q, err := eventqueue.NewWithLimit(bus, n, new(EvtA), new(EvtB))
	require.NoError(t, err)

	for i := range n {
		if i%3 == 0 {
			q.Push(EvtB{Seq: i})
		} else {
			q.Push(EvtA{Seq: i})
		}
	}
	got := receive(t, sub.Out(), n)
	for i, evt := range got {
		if i%3 == 0 {
			require.Equal(t, EvtB{Seq: i}, evt)
		} else {
			require.Equal(t, EvtA{Seq: i}, evt)
		}
	}

	closeWithin(t, q)
	require.Zero(t, len(sub.Out()), "events after the pushed ones")
	require.Zero(t, q.Dropped())
	require.Zero(t, q.DroppedUnknown())
	require.NoError(t, sub.Close())
}

// Many goroutines push at once, in total no more than the limit: every
// event is delivered exactly once, and each pusher's events in its order.
func TestConcurrentPushersDeliverEachOnce(t *testing.T) {
	const pushers, each = 16, 1_000
	bus := eventbus.NewBus()
	sub := subscribe(t, bus, new(EvtP))
	q, err := eventqueue.NewWithLimit(bus, pushers*each, new(EvtP))
	require.NoError(t, err)

	start := make(chan struct{})
	var wg sync.WaitGroup
	for p := range pushers {
		wg.Go(func() {
			<-start
			for s := range each {
				q.Push(EvtP{Pusher: p, Seq: s})
			}
		})
	}
	close(start)

	got := receive(t, sub.Out(), pushers*each)
	wg.Wait()
	next := make([]int, pushers) // next Seq expected from each pusher
	for _, evt := range got {
		e := evt.(EvtP)
		require.Equal(t, next[e.Pusher], e.Seq, "pusher %d: duplicate, lost or reordered event", e.Pusher)
		next[e.Pusher]++
	}
	for p, n := range next {
		require.Equal(t, each, n, "pusher %d", p)
	}

	closeWithin(t, q)
	require.Zero(t, len(sub.Out()), "events delivered twice")
	require.Zero(t, q.Dropped())
	require.NoError(t, sub.Close())
}

// A subscriber with an unbuffered subscription that never reads: the
// goroutine blocks in Emit on the first event, which therefore stays
// counted, and no Emit returns while the test pushes. So exactly limit
// events are accepted (the first one inside Emit, limit-1 waiting) and
// exactly n-limit dropped, independent of scheduling.
func TestStalledUnbufferedSubscriberBoundsQueue(t *testing.T) {
	const limit, n = 64, 100_000
	bus := eventbus.NewBus()
	sub := subscribe(t, bus, new(EvtA), eventbus.BufSize(0))
	q, err := eventqueue.NewWithLimit(bus, limit, new(EvtA))
	require.NoError(t, err)

	pushBounded(t, func() {
		for i := range n {
			q.Push(EvtA{Seq: i})
		}
	})
	require.Equal(t, uint64(n-limit), q.Dropped())
	require.Zero(t, q.DroppedUnknown())
	require.Equal(t, limit, eventqueue.Held(q))

	// The subscriber reads again: exactly the first limit events arrive,
	// in order; the newer ones were the dropped ones.
	got := receive(t, sub.Out(), limit)
	for i, evt := range got {
		require.Equal(t, EvtA{Seq: i}, evt)
	}
	closeWithin(t, q)
	require.Zero(t, len(sub.Out()), "more than limit events were kept")
	require.Zero(t, eventqueue.Held(q))
	require.NoError(t, sub.Close())
}

// The same with a buffered subscription (go-libp2p's default buffer is
// 16; it is made explicit here). Events in the subscription's buffer were
// handed to the bus and no longer count toward the limit, so the test
// first fills the buffer and waits until the queue holds nothing. From then
// on the buffer is full, the next Emit blocks and none returns, so of n
// pushes exactly limit are accepted and n-limit dropped; in all
// bufSize+limit events are delivered once the subscriber reads.
func TestStalledBufferedSubscriberBoundsQueue(t *testing.T) {
	const limit, n, bufSize = 100, 100_000, 16
	bus := eventbus.NewBus()
	sub := subscribe(t, bus, new(EvtA), eventbus.BufSize(bufSize))
	q, err := eventqueue.NewWithLimit(bus, limit, new(EvtA))
	require.NoError(t, err)

	for i := range bufSize {
		q.Push(EvtA{Seq: i})
	}
	// Held drops to 0 only after the last Emit returned; the counter
	// changes on the queue's goroutine, so it is polled.
	require.Eventually(t, func() bool { return eventqueue.Held(q) == 0 }, waitTimeout, time.Millisecond)
	require.Equal(t, bufSize, len(sub.Out()))

	pushBounded(t, func() {
		for i := range n {
			q.Push(EvtA{Seq: bufSize + i})
		}
	})
	require.Equal(t, uint64(n-limit), q.Dropped())
	require.Equal(t, limit, eventqueue.Held(q))
	require.Equal(t, bufSize, len(sub.Out()))

	got := receive(t, sub.Out(), bufSize+limit)
	for i, evt := range got {
		require.Equal(t, EvtA{Seq: i}, evt)
	}
	closeWithin(t, q)
	require.Zero(t, len(sub.Out()), "more than limit events were kept")
	require.Equal(t, uint64(n-limit), q.Dropped())
	require.NoError(t, sub.Close())
}

// New bounds the queue at DefaultLimit (exact count as in the unbuffered
// test above).
func TestNewUsesDefaultLimit(t *testing.T) {
	const excess = 10
	bus := eventbus.NewBus()
	sub := subscribe(t, bus, new(EvtA), eventbus.BufSize(0))
	q, err := eventqueue.New(bus, new(EvtA))
	require.NoError(t, err)

	pushBounded(t, func() {
		for i := range eventqueue.DefaultLimit + excess {
			q.Push(EvtA{Seq: i})
		}
	})
	require.Equal(t, uint64(excess), q.Dropped())
	require.Equal(t, eventqueue.DefaultLimit, eventqueue.Held(q))

	// Closing the subscription unblocks the goroutine (the bus drains a
	// closed subscription), which then emits the rest to no subscriber.
	require.NoError(t, sub.Close())
	closeWithin(t, q)
	require.Zero(t, eventqueue.Held(q))
}

// CloseContext on a queue whose subscriber does not read returns the
// context's error; the goroutine stays blocked in Emit until the
// subscription is closed and then finishes by itself: a later
// CloseContext returns nil, and goleak finds no goroutine left.
func TestCloseContextStalledSubscriber(t *testing.T) {
	bus := eventbus.NewBus()
	sub := subscribe(t, bus, new(EvtA), eventbus.BufSize(0))
	q, err := eventqueue.New(bus, new(EvtA))
	require.NoError(t, err)
	for i := range 3 {
		q.Push(EvtA{Seq: i})
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, q.CloseContext(ctx), context.DeadlineExceeded)

	canceled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	require.ErrorIs(t, q.CloseContext(canceled), context.Canceled)

	// Closed to Push from the first CloseContext on.
	q.Push(EvtA{Seq: 3})
	require.Equal(t, uint64(1), q.Dropped())

	require.NoError(t, sub.Close())
	closeWithin(t, q)
	require.Zero(t, eventqueue.Held(q))
	goleak.VerifyNone(t)
}

// After CloseContext gave up, a subscriber that reads again still gets
// every event accepted before the close, in order, and nothing pushed
// after it.
func TestCloseContextDeliversQueuedEventsWhenSubscriberResumes(t *testing.T) {
	bus := eventbus.NewBus()
	sub := subscribe(t, bus, new(EvtA), eventbus.BufSize(0))
	q, err := eventqueue.New(bus, new(EvtA))
	require.NoError(t, err)
	for i := range 3 {
		q.Push(EvtA{Seq: i})
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, q.CloseContext(ctx), context.DeadlineExceeded)
	q.Push(EvtA{Seq: 3})

	got := receive(t, sub.Out(), 3)
	require.Equal(t, []any{EvtA{Seq: 0}, EvtA{Seq: 1}, EvtA{Seq: 2}}, got)
	closeWithin(t, q)
	require.Zero(t, len(sub.Out()))
	require.Equal(t, uint64(1), q.Dropped())
	require.NoError(t, sub.Close())
}

// Events of a type the queue has no emitter for (another type, a pointer
// instead of a value, nil) are not delivered and are counted in
// DroppedUnknown only, also after Close.
func TestUnknownTypesCountedSeparately(t *testing.T) {
	bus := eventbus.NewBus()
	sub := subscribe(t, bus, []any{new(EvtA), new(EvtB)})
	q, err := eventqueue.New(bus, new(EvtA))
	require.NoError(t, err)

	q.Push(EvtA{Seq: 0})
	q.Push(EvtC{})
	q.Push(&EvtA{Seq: 1})
	q.Push(nil)
	q.Push(EvtB{Seq: 2}) // the bus knows EvtB, this queue does not
	q.Push(EvtA{Seq: 3})
	require.Equal(t, uint64(4), q.DroppedUnknown())
	require.Zero(t, q.Dropped())

	got := receive(t, sub.Out(), 2)
	require.Equal(t, []any{EvtA{Seq: 0}, EvtA{Seq: 3}}, got)
	closeWithin(t, q)
	require.Zero(t, len(sub.Out()), "an unknown event was delivered")

	q.Push(EvtC{})
	require.Equal(t, uint64(5), q.DroppedUnknown())
	require.Zero(t, q.Dropped())
	require.NoError(t, sub.Close())
}

// A limit below 1 is refused with an error naming it, before any emitter
// is created on the bus; 1 is accepted.
func TestNewWithLimitRejectsNonPositive(t *testing.T) {
	for _, limit := range []int{0, -1, -eventqueue.DefaultLimit, math.MinInt} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			bus := eventbus.NewBus()
			q, err := eventqueue.NewWithLimit(bus, limit, new(EvtA))
			require.Nil(t, q)
			require.ErrorContains(t, err, fmt.Sprintf("limit %d", limit))
			require.Empty(t, bus.GetAllEventTypes(), "emitter left open")
		})
	}

	bus := eventbus.NewBus()
	q, err := eventqueue.NewWithLimit(bus, 1, new(EvtA))
	require.NoError(t, err)
	closeWithin(t, q)
}

// A type the bus refuses (not a pointer) fails New with an error naming
// it, and the emitters already created are closed again.
func TestNewRejectsNonPointerType(t *testing.T) {
	bus := eventbus.NewBus()
	q, err := eventqueue.New(bus, new(EvtA), EvtB{})
	require.Nil(t, q)
	require.ErrorContains(t, err, "eventqueue_test.EvtB")
	require.Empty(t, bus.GetAllEventTypes(), "emitter left open")
}

// Push after Close returns at once, delivers nothing and counts every
// event in Dropped; Close and CloseContext stay idempotent.
func TestPushAfterClose(t *testing.T) {
	const n = 10_000
	bus := eventbus.NewBus()
	sub := subscribe(t, bus, new(EvtA))
	q, err := eventqueue.New(bus, new(EvtA))
	require.NoError(t, err)

	q.Close()
	q.Close()
	require.NoError(t, q.CloseContext(context.Background()))

	pushBounded(t, func() {
		for i := range n {
			q.Push(EvtA{Seq: i})
		}
	})
	require.Equal(t, uint64(n), q.Dropped())
	require.Zero(t, q.DroppedUnknown())
	require.Zero(t, eventqueue.Held(q))
	require.Zero(t, len(sub.Out()), "event delivered after Close")
	require.NoError(t, sub.Close())
}

// Pushers racing with Close: each event is either delivered (accepted
// before the close) or counted in Dropped, never both, never lost.
func TestPushConcurrentWithClose(t *testing.T) {
	const pushers, each = 8, 2_000
	bus := eventbus.NewBus()
	sub := subscribe(t, bus, new(EvtP))
	q, err := eventqueue.NewWithLimit(bus, pushers*each, new(EvtP))
	require.NoError(t, err)

	received := make(chan int)
	stop := make(chan struct{})
	go func() {
		n := 0
		for {
			select {
			case <-sub.Out():
				n++
			case <-stop:
				// Close has returned: nothing more is sent, only what is
				// buffered is left.
				for len(sub.Out()) > 0 {
					<-sub.Out()
					n++
				}
				received <- n
				return
			}
		}
	}()

	start := make(chan struct{})
	var wg sync.WaitGroup
	for p := range pushers {
		wg.Go(func() {
			<-start
			for s := range each {
				q.Push(EvtP{Pusher: p, Seq: s})
			}
		})
	}
	close(start)
	closeWithin(t, q)
	wg.Wait()
	close(stop)
	n := <-received

	require.Equal(t, uint64(pushers*each), uint64(n)+q.Dropped())
	require.Zero(t, eventqueue.Held(q))
	require.NoError(t, sub.Close())
}

// The limiter behind the drop warning, on a fake clock: the first call
// passes whenever it comes, then at most one per WarnInterval.
func TestWarnLimiter(t *testing.T) {
	const iv = eventqueue.WarnInterval
	var l eventqueue.WarnLimiter
	require.True(t, l.Allow(0), "first drop")
	require.False(t, l.Allow(0))
	require.False(t, l.Allow(iv-1))
	require.True(t, l.Allow(iv))
	require.False(t, l.Allow(iv+iv/2))
	require.True(t, l.Allow(5*iv))
	require.False(t, l.Allow(6*iv-1))

	var late eventqueue.WarnLimiter
	require.True(t, late.Allow(42*iv), "first drop of an old queue")
	require.False(t, late.Allow(42*iv+1))

	// Concurrent drops at the same instant: exactly one warns.
	var shared eventqueue.WarnLimiter
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for range 64 {
		wg.Go(func() {
			if shared.Allow(7 * iv) {
				mu.Lock()
				allowed++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	require.Equal(t, 1, allowed)
}

// End to end through go-log: 100k drops log the first one and then at
// most one more per second that the pushing took, no storm.
func TestDropWarningsAreRateLimited(t *testing.T) {
	const subsystem, msg = "realmnet/eventqueue", "event queue dropped an event"
	old, err := logging.SubsystemLevelName(subsystem)
	require.NoError(t, err)
	require.NoError(t, logging.SetLogLevel(subsystem, "warn"))
	t.Cleanup(func() { _ = logging.SetLogLevel(subsystem, old) })

	pipe := logging.NewPipeReader(logging.PipeFormat(logging.JSONOutput), logging.PipeLevel(logging.LevelWarn))
	warnings := make(chan int)
	go func() {
		n := 0
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			if line := sc.Text(); strings.Contains(line, subsystem) && strings.Contains(line, msg) {
				n++
			}
		}
		warnings <- n
	}()

	bus := eventbus.NewBus()
	sub := subscribe(t, bus, new(EvtA), eventbus.BufSize(0))
	q, err := eventqueue.NewWithLimit(bus, 1, new(EvtA))
	require.NoError(t, err)

	const n = 100_000
	begin := time.Now()
	pushBounded(t, func() {
		for i := range n {
			q.Push(EvtA{Seq: i})
		}
	})
	elapsed := time.Since(begin)
	require.NoError(t, pipe.Close()) // logging is synchronous: all lines are written
	got := <-warnings

	require.Equal(t, uint64(n-1), q.Dropped())
	require.GreaterOrEqual(t, got, 1, "first drop not logged")
	require.LessOrEqual(t, got, 1+int(elapsed/eventqueue.WarnInterval), "log storm")

	require.NoError(t, sub.Close())
	closeWithin(t, q)
}

// TestWantedFollowsSubscriptions: on a ClosingBus, a queue reports a type
// as wanted exactly while a subscription of it — single, in a list, or a
// wildcard one — is open, tracked or not; on any other bus always.
func TestWantedFollowsSubscriptions(t *testing.T) {
	bus := eventqueue.NewClosingBus(eventbus.NewBus(), false)
	q, err := eventqueue.New(bus, new(EvtA), new(EvtB))
	require.NoError(t, err)
	defer q.Close()
	typeA, typeB := reflect.TypeFor[EvtA](), reflect.TypeFor[EvtB]()
	require.False(t, q.Wanted(typeA))
	require.False(t, q.Wanted(typeB))

	subA, err := bus.Subscribe(new(EvtA))
	require.NoError(t, err)
	require.True(t, q.Wanted(typeA))
	require.False(t, q.Wanted(typeB))

	bus.Track() // tracked subscriptions count alike
	both, err := bus.Subscribe([]any{new(EvtA), new(EvtB)})
	require.NoError(t, err)
	require.True(t, q.Wanted(typeB))
	require.NoError(t, subA.Close())
	require.NoError(t, subA.Close()) // a second Close counts nothing
	require.True(t, q.Wanted(typeA), "the list subscription still takes EvtA")
	require.NoError(t, both.Close())
	require.False(t, q.Wanted(typeA))
	require.False(t, q.Wanted(typeB))

	all, err := bus.Subscribe(event.WildcardSubscription)
	require.NoError(t, err)
	require.True(t, q.Wanted(typeA))
	require.True(t, q.Wanted(typeB))
	bus.CloseSubscriptions() // ends the tracked wildcard subscription
	require.False(t, q.Wanted(typeA))
	require.NoError(t, all.Close())
	require.False(t, q.Wanted(typeB), "closing twice does not go below zero")

	plain := eventbus.NewBus()
	pq, err := eventqueue.New(plain, new(EvtA))
	require.NoError(t, err)
	defer pq.Close()
	require.True(t, pq.Wanted(typeA), "without a ClosingBus, every type is wanted")
}

// A ClosingBus sums the drops of the queues made on it, by the package of
// their event types.
func TestClosingBusCountsDrops(t *testing.T) {
	bus := eventqueue.NewClosingBus(eventbus.NewBus(), false)
	sub := subscribe(t, bus, new(EvtA), eventbus.BufSize(0))
	q, err := eventqueue.NewWithLimit(bus, 1, new(EvtA))
	require.NoError(t, err)
	require.Equal(t, map[string]uint64{"eventqueue_test": 0}, bus.DroppedEvents())

	pushBounded(t, func() {
		for i := range 10 {
			q.Push(EvtA{Seq: i})
		}
		q.Push(EvtC{}) // unknown: counted too
	})
	require.Equal(t, q.Dropped()+1, bus.DroppedEvents()["eventqueue_test"])
	require.GreaterOrEqual(t, q.Dropped(), uint64(8))
	receive(t, sub.Out(), 1)
	closeWithin(t, q)
	require.NoError(t, sub.Close())
}
