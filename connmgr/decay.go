package connmgr

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrTagClosed is returned by a decaying tag's methods after Close.
var ErrTagClosed = errors.New("connmgr: decaying tag closed")

// decayer implements go-libp2p's connmgr.Decayer on the manager's peer
// table: every DecayResolution it visits the tags whose interval has passed
// and applies their decay function to every peer's value. Bumps and removals
// apply at once.
type decayer struct {
	m *Manager

	mu   sync.Mutex
	tags map[string]*decayingTag
}

type decayingTag struct {
	d        *decayer
	name     string
	interval time.Duration
	decayFn  connmgr.DecayFn
	bumpFn   connmgr.BumpFn

	// closed is set by Close before it clears the peers' values; Bump and
	// Remove check it under the segment lock, so a racing Bump cannot
	// re-insert a value after Close has passed its segment.
	closed atomic.Bool

	nextVisit time.Time // guarded by d.mu
}

var _ connmgr.DecayingTag = (*decayingTag)(nil)

func newDecayer(m *Manager) *decayer {
	return &decayer{m: m, tags: make(map[string]*decayingTag)}
}

// RegisterDecayingTag creates a decaying tag (go-libp2p's connmgr.Decayer).
// An interval below DecayResolution is raised to it. Errors: a tag of that
// name exists; a nil function; a non-positive interval.
func (m *Manager) RegisterDecayingTag(name string, interval time.Duration, decayFn connmgr.DecayFn, bumpFn connmgr.BumpFn) (connmgr.DecayingTag, error) {
	if decayFn == nil {
		return nil, fmt.Errorf("connmgr: decaying tag %q: decay function is nil", name)
	}
	if bumpFn == nil {
		return nil, fmt.Errorf("connmgr: decaying tag %q: bump function is nil", name)
	}
	if interval <= 0 {
		return nil, fmt.Errorf("connmgr: decaying tag %q: interval must be > 0, got %s", name, interval)
	}
	d := m.decayer
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.tags[name]; ok {
		return nil, fmt.Errorf("connmgr: decaying tag %q already exists", name)
	}
	interval = max(interval, m.cfg.DecayResolution)
	t := &decayingTag{d: d, name: name, interval: interval, decayFn: decayFn, bumpFn: bumpFn,
		nextVisit: d.m.clock.Now().Add(interval)}
	d.tags[name] = t
	return t, nil
}

// run visits the due tags every DecayResolution until the manager closes.
func (d *decayer) run(wg *sync.WaitGroup) {
	defer wg.Done()
	ticker := d.m.clock.Ticker(d.m.cfg.DecayResolution)
	defer ticker.Stop()
	for {
		select {
		case <-d.m.ctx.Done():
			return
		case now := <-ticker.C:
			d.decay(now)
		}
	}
}

// decay applies the decay function of every due tag to every peer's value.
func (d *decayer) decay(now time.Time) {
	d.mu.Lock()
	due := make(map[*decayingTag]bool)
	for _, t := range d.tags {
		if !now.Before(t.nextVisit) {
			due[t] = true
			t.nextVisit = now.Add(t.interval)
		}
	}
	d.mu.Unlock()
	if len(due) == 0 {
		return
	}
	m := d.m
	for i := range m.segments {
		s := &m.segments[i]
		s.Lock()
		for _, pi := range s.peers {
			changed := false
			for t, v := range pi.decaying {
				if !due[t] {
					continue
				}
				after, rm := t.decayFn(*v)
				pi.value += after - v.Value
				v.Value, v.LastVisit = after, now
				if rm {
					pi.value -= v.Value
					delete(pi.decaying, t)
				}
				changed = true
			}
			if changed {
				m.peerChangedLocked(pi)
			}
		}
		s.Unlock()
	}
}

// Name returns the tag's name.
func (t *decayingTag) Name() string { return t.name }

// Interval returns the effective decay interval.
func (t *decayingTag) Interval() time.Duration { return t.interval }

// Bump applies the bump function to p's value of this tag, creating it at 0
// first. It returns ErrTagClosed after Close.
func (t *decayingTag) Bump(p peer.ID, delta int) error {
	m := t.d.m
	s := m.segment(p)
	s.Lock()
	defer s.Unlock()
	if t.closed.Load() {
		return ErrTagClosed
	}
	pi := m.entry(s, p)
	v := pi.decaying[t]
	if v == nil {
		now := m.clock.Now()
		v = &connmgr.DecayingValue{Tag: t, Peer: p, Added: now, LastVisit: now}
		if pi.decaying == nil {
			pi.decaying = make(map[*decayingTag]*connmgr.DecayingValue)
		}
		pi.decaying[t] = v
	}
	after := t.bumpFn(*v, delta)
	pi.value += after - v.Value
	v.Value = after
	m.peerChangedLocked(pi)
	return nil
}

// Remove removes the tag from p. It returns ErrTagClosed after Close.
func (t *decayingTag) Remove(p peer.ID) error {
	m := t.d.m
	s := m.segment(p)
	s.Lock()
	defer s.Unlock()
	if t.closed.Load() {
		return ErrTagClosed
	}
	if pi := s.peers[p]; pi != nil {
		if v := pi.decaying[t]; v != nil {
			pi.value -= v.Value
			delete(pi.decaying, t)
			m.peerChangedLocked(pi)
		}
	}
	return nil
}

// Close unregisters the tag and removes it from every peer. Idempotent.
func (t *decayingTag) Close() error {
	if t.closed.Swap(true) {
		return nil
	}
	t.d.mu.Lock()
	delete(t.d.tags, t.name)
	t.d.mu.Unlock()
	m := t.d.m
	for i := range m.segments {
		s := &m.segments[i]
		s.Lock()
		for _, pi := range s.peers {
			if v := pi.decaying[t]; v != nil {
				pi.value -= v.Value
				delete(pi.decaying, t)
				m.peerChangedLocked(pi)
			}
		}
		s.Unlock()
	}
	return nil
}
