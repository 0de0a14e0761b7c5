package multipath

import (
	"container/heap"
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The datagram heartbeats of all paths are driven by one goroutine, the
// probe scheduler, instead of one goroutine per path: a heartbeat is a
// QUIC DATAGRAM frame sent without waiting (quic-go queues it) and its
// answer is an ACK that quic-go records in the connection's RTT statistics,
// so nothing has to block per path. The scheduler keeps the paths in a heap
// ordered by the time their next step is due (send a probe, look for its
// ACK) and sleeps on one timer until the earliest.
//
// One goroutine also makes heartbeats cheap to run in bulk: a process that
// wakes up for every probe and every ACK check of 1,000 paths spends most
// of its heartbeat CPU time in the Go runtime's thread parking and epoll
// (measured: findRunnable, futex and epoll_wait were 60 % of the profile),
// not in QUIC. The scheduler therefore sends an idle path's probe at the
// last instant of a grid (multiples of probeGrid from the scheduler's
// start) not after it is due, so that all idle probes leave in a few
// wake-ups per interval; their ACKs then come back together and are
// looked for in one wake-up too. Busy paths, validation and ACK checks
// are never moved earlier.
//
// Only one end of an idle path probes it. Each end's probes used to cost
// four packets per path and interval (our datagram and the peer's ACK, the
// peer's datagram and our ACK); now the end that accepted the connection
// listens instead while the path is idle: a packet from the peer (its
// heartbeat, or any traffic) is an answer, read from the connection's
// PacketsReceived counter at a check every HeartbeatInterval/4 — no packet
// and no wake-up of its own. It probes as before when it has heard nothing
// for a HeartbeatInterval (the dialer is not a realmnet node, or uses
// another interval, or the path fails), when the path turns busy, and every
// listenRTTRefresh intervals for a fresh RTT sample. A path that fails one way only
// is still noticed on both ends: the prober closes it as dead after
// PathIdleTimeout and its CONNECTION_CLOSE reaches the listener when only
// the listener's packets are lost; when the prober's are lost, the
// listener hears nothing and probes itself.
//
// Paths whose connection did not negotiate datagrams keep their own
// heartbeat goroutine (ping streams block on reads).

// probeGrid is the grid of an idle path's probes: a probe is sent at the
// last multiple of probeGrid (since the scheduler's start) not after it
// is due, up to probeGrid early — a quarter of the heartbeat interval at
// most. With the default 5 s interval an idle path is probed at one of
// five instants per interval, every path of a node at the same five, and
// once on the grid it keeps its interval exactly: a probe sent on a grid
// instant is due on another one an interval later, however late the
// scheduler woke (BenchmarkHeartbeatCost: 1.00 probes per path and
// interval). The cost of heartbeats is per wake-up more than per probe:
// 1,000 idle paths cost 1.36-1.5 % of a core while each probe could
// leave 250 ms early to join a wake-up, 0.83-1.01 % on the grid (the
// machine's noise is ±0.15 %). A coarser grid costs a little less (2.5 s:
// 0.55 % in one run) but sends and gets back larger bursts: a fifth of a
// node's idle paths at once is a burst of 200 ACKs on one UDP socket
// with 1,000 paths. It never delays noticing a dead path (probes only
// move earlier).
const probeGrid = time.Second

// listenCoalesce is how much earlier than due a listening end's check of
// an idle path may run to join a wake-up.
const listenCoalesce = 250 * time.Millisecond

// listenRTTRefresh is how many heartbeat intervals a listening end lets
// pass before it probes an idle path itself to take a fresh RTT sample (it
// gets none from the peer's probes): every 30 s by default. The path's RTT
// matters to the listening end only when it chooses among its paths for a
// stream, and a stream makes the path busy, which makes it probe at the
// busy rate.
const listenRTTRefresh = 6

// ackCoalesce is how much earlier than due an ACK check may run to join a
// wake-up: within ackMargin, which every ACK wait already includes.
const ackCoalesce = 2 * time.Millisecond

// probeScheduler owns the datagram heartbeats of a Manager: one goroutine
// (run, owned by the manager's wg) and a heap of scheduled paths. Its
// methods are safe for concurrent use.
type probeScheduler struct {
	m *Manager
	// epoch is the manager's clock at the scheduler's start: probes keep
	// their times as instants since then.
	epoch time.Time
	mu    sync.Mutex
	heap  probeHeap
	// kick wakes run when the earliest due time may have moved earlier.
	kick chan struct{}
	// sent counts the heartbeat datagrams sent.
	sent atomic.Uint64
}

// instant is a time of the manager's clock as nanoseconds since the probe
// scheduler's epoch: 8 bytes where a time.Time takes 24. A probe holds six
// times and exists per path; as instants they keep it in a 176-byte size
// class instead of 288 (memory per connection, docs/performance.md).
type instant int64

// at converts a time of the manager's clock to an instant.
func (s *probeScheduler) at(t time.Time) instant { return instant(t.Sub(s.epoch)) }

func (i instant) add(d time.Duration) instant { return i + instant(d) }
func (i instant) sub(j instant) time.Duration { return time.Duration(i - j) }

// probe is one path's datagram heartbeat state. While the probe is in the
// heap its fields are guarded by probeScheduler.mu; while run has popped it
// to take a step (index -1), only run touches them.
type probe struct {
	peer peer.ID
	path *path
	// stopped is set when the heartbeat is stopped or the path removed.
	stopped atomic.Bool

	// due is when the next step is due (the manager's clock); index is
	// the probe's position in the heap, -1 while it is not in it.
	due   instant
	index int
	// early is how much earlier than due the step may run
	// (listenCoalesce for a listening end's check, ackCoalesce for an ACK
	// check, 0 otherwise: an idle probe is due on the grid).
	early time.Duration
	// pokeArmed is set while the path is probed at the idle rate: the
	// first stream sent over the path then asks for a busy-rate probe
	// (poke), later ones cost one atomic load.
	pokeArmed atomic.Bool

	// Scheduler goroutine only:
	next      instant // when the next probe is due
	lastProbe instant
	inFlight  bool          // a probe waits for its ACK
	before    time.Duration // LatestRTT when the probe was sent
	gap       time.Duration // wait before the next look for the ACK
	degradeAt instant       // no ACK by then makes the path degraded
	degraded  bool
	seen      activitySeen

	// inbound: this end accepted the connection, so it listens on the
	// path while the path is idle (see the package comment above).
	inbound bool
	// listening is set while the path is idle and this end listens
	// instead of probing (guarded like due while in the heap: poke
	// clears it).
	listening bool
	heard     uint64  // the connection's PacketsReceived at the last check
	lastHeard instant // the last check that found new packets
	lastRTT   instant // when the last probe of this end was answered
}

func newProbeScheduler(m *Manager) *probeScheduler {
	return &probeScheduler{m: m, epoch: m.clock.Now(), kick: make(chan struct{}, 1)}
}

// add schedules pa's datagram heartbeat, its first probe at once (the path
// is validated), until remove. m.mu is held.
func (s *probeScheduler) add(p peer.ID, pa *path) *probe {
	now := s.at(s.m.clock.Now())
	pr := &probe{peer: p, path: pa, index: -1, next: now,
		inbound: pa.conn.Stat().Direction == network.DirInbound}
	s.mu.Lock()
	pr.due = now
	heap.Push(&s.heap, pr)
	s.mu.Unlock()
	s.wake()
	return pr
}

// remove stops pr's heartbeat and takes it out of the heap at once, so that
// a removed path is not kept until its next due time. A step of pr that
// runs meanwhile is its last.
func (s *probeScheduler) remove(pr *probe) {
	s.mu.Lock()
	pr.stopped.Store(true)
	if pr.index >= 0 {
		heap.Remove(&s.heap, pr.index)
	}
	s.mu.Unlock()
}

// poke is called when a stream is sent over an idle-rate path: its next
// probe is due busyInterval after the last one (at once if that is past).
func (s *probeScheduler) poke(pr *probe) {
	if !pr.pokeArmed.CompareAndSwap(true, false) {
		return
	}
	s.mu.Lock()
	if pr.index < 0 {
		// run is taking a step of pr (or it was removed): that step
		// decides the next probe; let the next stream poke again.
		s.mu.Unlock()
		pr.pokeArmed.Store(true)
		return
	}
	// pr is in the heap: run does not touch it, and its last writes
	// happened before it was pushed, under s.mu.
	moved := false
	pr.listening = false // a stream of ours: probe at the busy rate
	if !pr.inFlight {
		if busyAt := pr.lastProbe.add(s.m.busyInterval(pr.path)); busyAt < pr.due {
			pr.next, pr.due, pr.early = busyAt, busyAt, 0
			s.heap[pr.index].due = busyAt
			heap.Fix(&s.heap, pr.index)
			moved = pr.index == 0
		}
	}
	s.mu.Unlock()
	if moved {
		s.wake()
	}
}

func (s *probeScheduler) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// run is the scheduler goroutine: it sleeps until the earliest due step,
// takes every step due by then (allowing each its early margin), runs them
// without holding the heap's lock (they take m.mu), and schedules the
// next step of each. Owned by the manager (wg); ends with its context.
func (s *probeScheduler) run(ctx context.Context) {
	defer s.m.wg.Done()
	timer := s.m.clock.Timer(time.Hour)
	defer timer.Stop()
	var batch []*probe
	for {
		s.mu.Lock()
		wait := time.Hour
		if len(s.heap) > 0 {
			// Never a negative duration: a mock clock would run its
			// time back to a timer due in the past.
			wait = max(0, s.heap[0].due.sub(s.at(s.m.clock.Now())))
		}
		s.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
			continue
		case <-timer.C:
		}
		now := s.at(s.m.clock.Now())
		s.mu.Lock()
		for len(s.heap) > 0 && s.heap[0].due <= now.add(s.heap[0].probe.early) {
			batch = append(batch, heap.Pop(&s.heap).(*probe))
		}
		s.mu.Unlock()
		for i, pr := range batch {
			if s.step(pr, now) {
				s.mu.Lock()
				if !pr.stopped.Load() { // not removed meanwhile
					heap.Push(&s.heap, pr)
				}
				s.mu.Unlock()
			}
			batch[i] = nil
		}
		batch = batch[:0]
	}
}

// step runs pr's due step at now and sets its next due time; false when
// its heartbeat is over (stopped, path removed, dead or closed).
//
// A probe is one QUIC DATAGRAM frame. A DATAGRAM frame is ack-eliciting
// (RFC 9221 §5.2): the peer's QUIC stack acknowledges the packet whether or
// not its application reads datagrams (go-libp2p does not), and quic-go
// takes an RTT sample from that ACK (RFC 9002 §5: the newly acknowledged
// largest packet, the peer's ack delay removed). quic-go has no callback
// for it, so the scheduler looks at ConnectionStats().LatestRTT: first when
// the ACK is due (RTT + peerMaxAckDelay + ackMargin), then at doubling gaps
// up to maxAckPoll, and once exactly when the probe times out. A new
// sample means an ACK arrived from the peer over this path since the probe
// was sent — of the datagram, of the PING quic-go sends on a PTO when the
// datagram was lost, or of other traffic on a busy path: any of them
// proves the path carries packets both ways, and the sample is the
// answer's round trip. No sample within datagramTimeout makes the path
// degraded; none until the idle deadline (PathIdleTimeout after the last
// answer) makes it dead.
func (s *probeScheduler) step(pr *probe, now instant) bool {
	m, pa := s.m, pr.path
	if pr.stopped.Load() {
		return false
	}
	deadline := s.at(m.idleDeadline(pa))
	if now >= deadline {
		m.pathDead(pr.peer, pa)
		return false
	}
	if pa.conn.IsClosed() { // the swarm's close or quic-go's
		return false
	}
	if pr.inFlight {
		if sample := pa.quic.ConnectionStats().LatestRTT; sample != pr.before {
			// An ACK arrived from the peer over this path since the
			// probe was sent (see probeDatagram): the path carries
			// packets both ways; the sample is its round trip.
			pr.inFlight = false
			m.answered(pr.peer, pa, sample)
			pr.lastRTT = now
			interval := m.probeInterval(pa, &pr.seen)
			if pr.inbound && interval >= m.cfg.HeartbeatInterval {
				pr.listen(m, now, deadline)
				return true
			}
			pr.scheduleProbe(m, pr.lastProbe.add(interval), deadline)
			return true
		}
		if !pr.degraded && now >= pr.degradeAt {
			m.degraded(pr.peer, pa)
			pr.degraded = true
		}
		pr.gap = min(2*pr.gap, maxAckPoll)
		at := min(now.add(pr.gap), deadline)
		if !pr.degraded {
			at = min(at, pr.degradeAt)
		}
		pr.setDue(at, ackCoalesce)
		return true
	}
	if now.add(pr.early) < pr.next {
		// Woke for the idle deadline (checked above) before the probe.
		pr.setDue(min(pr.next, deadline), pr.early)
		return true
	}
	if pr.listening && pr.check(m, now, deadline) {
		return true
	}
	pr.listening = false
	pr.pokeArmed.Store(false)
	pr.before = pa.quic.ConnectionStats().LatestRTT
	if err := pa.quic.SendDatagram(heartbeatPayload); err != nil {
		// Not sent (the connection is closing): try again at the busy
		// rate; the idle deadline ends it if that goes on.
		log.Debugw("datagram heartbeat", "peer", pr.peer, "conn", pa.conn.ID(), "error", err)
		pr.next = now.add(m.busyInterval(pa))
		pr.setDue(min(pr.next, deadline), 0)
		return true
	}
	s.sent.Add(1)
	pr.lastProbe, pr.inFlight, pr.degraded = now, true, false
	pr.degradeAt = now.add(m.datagramTimeout(pa))
	pr.gap = pa.rtt() + peerMaxAckDelay + ackMargin
	pr.setDue(min(now.add(pr.gap), deadline), ackCoalesce)
	return true
}

// scheduleProbe sets the next probe at next (or the idle deadline, if
// earlier); a probe at the idle rate moves back to the grid (probeGrid)
// and is brought forward by the first stream sent over the path (poke).
func (pr *probe) scheduleProbe(m *Manager, next, deadline instant) {
	if next.sub(pr.lastProbe) >= m.cfg.HeartbeatInterval {
		grid := instant(min(probeGrid, m.cfg.HeartbeatInterval/4))
		next -= next % grid // instants are never negative
		pr.pokeArmed.Store(true)
	}
	pr.next = next
	pr.setDue(min(next, deadline), 0)
}

// listen starts listening on pr's idle path after an answer at now: the
// next step is a check for the peer's packets.
func (pr *probe) listen(m *Manager, now, deadline instant) {
	pr.listening = true
	pr.heard = pr.path.quic.ConnectionStats().PacketsReceived
	pr.lastHeard = now
	pr.scheduleCheck(m, now, deadline)
}

// check is a listening end's step: it records new packets from the peer as
// an answer and reports whether the path can go on without a probe of its
// own; if so, the next check is scheduled.
func (pr *probe) check(m *Manager, now, deadline instant) bool {
	pa := pr.path
	if received := pa.quic.ConnectionStats().PacketsReceived; received != pr.heard {
		pr.heard, pr.lastHeard = received, now
		m.heard(pa)
	}
	// The probe that follows silence may leave early by the check's
	// coalescing margin.
	silent := now.add(pr.early) >= pr.lastHeard.add(m.cfg.HeartbeatInterval)
	if pa.busy(&pr.seen) || silent || now.sub(pr.lastRTT) >= listenRTTRefresh*m.cfg.HeartbeatInterval {
		return false
	}
	pr.scheduleCheck(m, now, deadline)
	return true
}

// scheduleCheck sets a listening end's next check: HeartbeatInterval/4
// after now, or when it will have heard nothing for a HeartbeatInterval if
// that is earlier (then it probes). Like an idle probe, a check may run
// early to join a wake-up, and the first stream sent over the path ends
// the listening (poke).
func (pr *probe) scheduleCheck(m *Manager, now, deadline instant) {
	next := min(now.add(m.cfg.HeartbeatInterval/4), pr.lastHeard.add(m.cfg.HeartbeatInterval))
	pr.next = next
	pr.pokeArmed.Store(true)
	pr.setDue(min(next, deadline), min(listenCoalesce, m.cfg.HeartbeatInterval/16))
}

// setDue sets the next step's time; the probe is out of the heap (run
// pushes it back).
func (pr *probe) setDue(at instant, early time.Duration) {
	pr.due, pr.early = at, early
}

// probeHeap is a container/heap of probes ordered by due time. Each entry
// holds its probe's due time, so that sifting compares entries of one
// contiguous array instead of following a pointer per comparison (a cache
// miss each: the heap compares were 8 % of the process's CPU time with
// 1,000 idle paths when they did).
type probeHeap []probeEntry

// probeEntry is a probe in the heap and a copy of its due time.
type probeEntry struct {
	due   instant
	probe *probe
}

func (h probeHeap) Len() int           { return len(h) }
func (h probeHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h probeHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].probe.index, h[j].probe.index = i, j
}
func (h *probeHeap) Push(x any) {
	pr := x.(*probe)
	pr.index = len(*h)
	*h = append(*h, probeEntry{due: pr.due, probe: pr})
}
func (h *probeHeap) Pop() any {
	old := *h
	pr := old[len(old)-1].probe
	old[len(old)-1] = probeEntry{}
	pr.index = -1
	*h = old[:len(old)-1]
	return pr
}
