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

// identifyTracker records the latest identify outcome per peer, from the
// host's EvtPeerIdentificationCompleted / Failed events: Connect uses it to
// tell a connection the peer accepted from one it refused right after the
// handshake. Its goroutine is owned by the node (stopped on Close).
type identifyTracker struct {
	sub event.Subscription
	wg  sync.WaitGroup

	mu       sync.Mutex
	outcomes map[peer.ID]identifyOutcome
	changed  chan struct{} // closed and replaced on every record
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
	t := &identifyTracker{sub: sub, outcomes: make(map[peer.ID]identifyOutcome), changed: make(chan struct{})}
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
	t.outcomes[p] = identifyOutcome{at: time.Now(), err: err}
	close(t.changed)
	t.changed = make(chan struct{})
}

// forget drops p's outcome (the peer disconnected) so the map stays small.
func (t *identifyTracker) forget(p peer.ID) {
	t.mu.Lock()
	delete(t.outcomes, p)
	t.mu.Unlock()
}

// wait returns the outcome of an identify of p that finished after since;
// ok is false when none arrives within identifyWaitLimit or ctx.
func (t *identifyTracker) wait(ctx context.Context, p peer.ID, since time.Time) (err error, ok bool) {
	timer := time.NewTimer(identifyWaitLimit)
	defer timer.Stop()
	for {
		t.mu.Lock()
		o, found := t.outcomes[p]
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
