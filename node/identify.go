package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/peer"
)

// identifyWaitLimit bounds how long Connect waits for the outcome of the
// identify its dial triggered (already emitted when the host's Connect
// returns; this only covers the tracker's delivery).
const identifyWaitLimit = time.Second

// identifyTracker records identify outcomes, from the host's
// EvtPeerIdentificationCompleted / Failed events, of the peers a Connect
// waits on: Connect uses them to tell a connection the peer accepted from
// one it refused right after the handshake. It keeps nothing for other
// peers (an outcome per connected peer was about 80 bytes per connection).
// Its goroutine is owned by the node (stopped on Close).
type identifyTracker struct {
	sub event.Subscription
	wg  sync.WaitGroup

	mu      sync.Mutex
	watched map[peer.ID]*identifyWatch
	changed chan struct{} // closed and replaced on every record
}

// identifyWatch is a watched peer: how many Connects wait on it, and the
// latest outcome recorded since the first of them began watching.
type identifyWatch struct {
	waiters int
	found   bool
	outcome identifyOutcome
}

type identifyOutcome struct {
	at  time.Time
	err error // nil: identify completed
}

func newIdentifyTracker(bus event.Bus) (*identifyTracker, error) {
	sub, err := bus.Subscribe([]any{new(event.EvtPeerIdentificationCompleted), new(event.EvtPeerIdentificationFailed)})
	if err != nil {
		return nil, fmt.Errorf("node: subscribe to identify events: %w", err)
	}
	t := &identifyTracker{sub: sub, watched: make(map[peer.ID]*identifyWatch), changed: make(chan struct{})}
	t.wg.Add(1)
	go t.run()
	return t, nil
}

func (t *identifyTracker) run() {
	defer t.wg.Done()
	for e := range t.sub.Out() {
		switch e := e.(type) {
		case event.EvtPeerIdentificationCompleted:
			t.record(e.Peer, nil)
		case event.EvtPeerIdentificationFailed:
			t.record(e.Peer, e.Reason)
		}
	}
}

func (t *identifyTracker) record(p peer.ID, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := t.watched[p]
	if w == nil {
		return
	}
	w.found, w.outcome = true, identifyOutcome{at: time.Now(), err: err}
	close(t.changed)
	t.changed = make(chan struct{})
}

// watch makes the tracker record p's identify outcomes until stop is
// called. A Connect watches before it dials, so that the outcome of the
// identify its dial triggers is recorded however soon it comes.
func (t *identifyTracker) watch(p peer.ID) (stop func()) {
	t.mu.Lock()
	w := t.watched[p]
	if w == nil {
		w = new(identifyWatch)
		t.watched[p] = w
	}
	w.waiters++
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		if w.waiters--; w.waiters == 0 {
			delete(t.watched, p)
		}
		t.mu.Unlock()
	}
}

// wait returns the outcome of an identify of p that finished after since;
// ok is false when none arrives within identifyWaitLimit or ctx. p is
// watched (watch) by the caller.
func (t *identifyTracker) wait(ctx context.Context, p peer.ID, since time.Time) (err error, ok bool) {
	timer := time.NewTimer(identifyWaitLimit)
	defer timer.Stop()
	for {
		t.mu.Lock()
		var o identifyOutcome
		found := false
		if w := t.watched[p]; w != nil {
			o, found = w.outcome, w.found
		}
		changed := t.changed
		t.mu.Unlock()
		if found && !o.at.Before(since) {
			return o.err, true
		}
		select {
		case <-changed:
		case <-timer.C:
			return nil, false
		case <-ctx.Done():
			return nil, false
		}
	}
}

func (t *identifyTracker) close() {
	_ = t.sub.Close()
	t.wg.Wait()
}
