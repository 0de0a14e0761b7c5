// Package udpproxy is a small UDP proxy for fault injection in loopback
// integration tests (for example between two QUIC endpoints).
//
// A Proxy owns one listen socket, one upstream socket per client source
// address, two FIFO delay queues (one per direction) and the goroutines that
// serve them. Tests can add one-way delay, drop a random fraction of
// datagrams, or blackhole all traffic while it runs. Only loopback addresses
// (127.0.0.0/8 and ::1) are accepted, so a Proxy can never send traffic off the
// host.
package udpproxy

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

const (
	// MaxDatagramSize is the largest UDP payload, in bytes, that a Proxy
	// forwards. Larger datagrams are dropped and counted in Stats.Oversized.
	MaxDatagramSize = 64 * 1024

	// MaxMappings is the maximum number of distinct client source addresses a
	// Proxy serves at once. Datagrams from further clients are dropped and
	// counted in Stats.Dropped. Mappings live until Close.
	MaxMappings = 1024

	// MaxQueuedPackets is the maximum number of datagrams, per direction, held
	// in a Proxy's delay queue. Datagrams arriving at a full queue are dropped
	// and counted in Stats.Dropped.
	MaxQueuedPackets = 8192
)

// Proxy forwards UDP datagrams between clients and a single target, applying
// configurable delay, random loss and blackholing in both directions.
//
// All methods are safe for concurrent use. Create one with New and release it
// with Close.
type Proxy struct {
	conn        *net.UDPConn // listen socket, faces the clients
	addr        *net.UDPAddr // bound address of conn
	maddr       ma.Multiaddr
	target      *net.UDPAddr
	upLocal     *net.UDPAddr // loopback address upstream sockets bind to
	maxSize     int
	maxMappings int

	delay     atomic.Int64  // time.Duration, one way
	dropRate  atomic.Uint64 // math.Float64bits of the drop fraction
	blackhole atomic.Bool
	// blackholeToClient drops the target's replies only.
	blackholeToClient atomic.Bool

	toTarget  atomic.Uint64
	toClient  atomic.Uint64
	dropped   atomic.Uint64
	oversized atomic.Uint64

	toTargetQ *delayQueue
	toClientQ *delayQueue

	mu       sync.Mutex
	closed   bool
	mappings map[netip.AddrPort]*mapping

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// mapping is the state for one client source address.
type mapping struct {
	client netip.AddrPort
	up     *net.UDPConn // connected to the target
}

// Stats is a snapshot of a Proxy's counters. Counts are in datagrams.
type Stats struct {
	// ToTarget is the number of datagrams forwarded from clients to the target.
	ToTarget uint64
	// ToClient is the number of datagrams forwarded from the target to clients.
	ToClient uint64
	// Dropped is the number of datagrams discarded in either direction by the
	// drop rate, the blackhole, a full delay queue, the mapping limit or a
	// failed write.
	Dropped uint64
	// Oversized is the number of datagrams discarded because they were larger
	// than MaxDatagramSize bytes.
	Oversized uint64
	// Mappings is the current number of client mappings (upstream sockets).
	Mappings int
}

// New starts a Proxy listening on listen, an IP literal with a port such as
// "127.0.0.1:0" or "[::1]:0", that forwards to target.
//
// For each distinct client source address the Proxy opens its own upstream
// UDP socket, bound to an ephemeral port on loopback, so the target sees one
// source address per client; replies the target sends to that socket are
// returned to the client from the listen socket.
//
// New returns an error naming the offending address if listen or target is
// not a loopback address. The returned Proxy's goroutines run until Close.
func New(listen string, target *net.UDPAddr) (*Proxy, error) {
	return newProxy(listen, target, MaxDatagramSize, MaxMappings)
}

func newProxy(listen string, target *net.UDPAddr, maxSize, maxMappings int) (*Proxy, error) {
	lap, err := netip.ParseAddrPort(listen)
	if err != nil {
		return nil, fmt.Errorf("udpproxy: listen address %q: %w", listen, err)
	}
	lap = netip.AddrPortFrom(lap.Addr().Unmap(), lap.Port())
	if !lap.Addr().IsLoopback() {
		return nil, fmt.Errorf("udpproxy: listen address %q is not a loopback address", listen)
	}
	if target == nil {
		return nil, errors.New("udpproxy: target address is nil")
	}
	tap := target.AddrPort()
	tap = netip.AddrPortFrom(tap.Addr().Unmap(), tap.Port())
	if !tap.Addr().IsLoopback() {
		return nil, fmt.Errorf("udpproxy: target address %q is not a loopback address", target.String())
	}
	if tap.Port() == 0 {
		return nil, fmt.Errorf("udpproxy: target address %q has no port", target.String())
	}
	upLocal := &net.UDPAddr{IP: net.IPv6loopback}
	if tap.Addr().Is4() {
		upLocal = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	}

	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(lap))
	if err != nil {
		return nil, fmt.Errorf("udpproxy: listen on %q: %w", listen, err)
	}
	addr := conn.LocalAddr().(*net.UDPAddr)
	maddr, err := manet.FromNetAddr(addr)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("udpproxy: multiaddr for %s: %w", addr, err)
	}
	maddr = maddr.Encapsulate(ma.StringCast("/quic-v1"))

	p := &Proxy{
		conn:        conn,
		addr:        addr,
		maddr:       maddr,
		target:      net.UDPAddrFromAddrPort(tap),
		upLocal:     upLocal,
		maxSize:     maxSize,
		maxMappings: maxMappings,
		toTargetQ:   newDelayQueue(MaxQueuedPackets),
		toClientQ:   newDelayQueue(MaxQueuedPackets),
		mappings:    make(map[netip.AddrPort]*mapping),
		done:        make(chan struct{}),
	}
	p.wg.Add(3)
	go p.readClients()
	go p.toTargetQ.run(p.done, &p.wg, p.sendToTarget)
	go p.toClientQ.run(p.done, &p.wg, p.sendToClient)
	return p, nil
}

// Addr returns the address the Proxy listens on; clients send to it. The
// result is a fresh copy and may be modified by the caller. Safe for
// concurrent use, also after Close.
func (p *Proxy) Addr() *net.UDPAddr {
	a := *p.addr
	a.IP = append(net.IP(nil), p.addr.IP...)
	return &a
}

// Multiaddr returns the listen address as a QUIC multiaddr, for example
// /ip4/127.0.0.1/udp/4242/quic-v1 or /ip6/::1/udp/4242/quic-v1. Safe for
// concurrent use, also after Close.
func (p *Proxy) Multiaddr() ma.Multiaddr {
	return p.maddr
}

// SetDelay sets the extra one-way delay added to every datagram in both
// directions, so the round-trip time through the Proxy grows by 2*d. Negative
// values are treated as zero. The delay is fixed when a datagram arrives at
// the Proxy; each direction is a FIFO queue, so datagrams are never reordered,
// and after the delay is lowered new datagrams still wait behind older ones.
// Safe for concurrent use.
func (p *Proxy) SetDelay(d time.Duration) {
	p.delay.Store(int64(max(d, 0)))
}

// SetDropRate makes the Proxy drop each datagram, in either direction,
// independently with probability fraction, which must be in [0, 1]; 0 (the
// default) drops nothing and 1 drops everything. It returns an error naming
// the value if it is out of range or NaN, leaving the rate unchanged. Safe for
// concurrent use.
func (p *Proxy) SetDropRate(fraction float64) error {
	if math.IsNaN(fraction) || fraction < 0 || fraction > 1 {
		return fmt.Errorf("udpproxy: drop rate %v out of range [0, 1]", fraction)
	}
	p.dropRate.Store(math.Float64bits(fraction))
	return nil
}

// SetBlackhole drops every datagram in both directions while on is true,
// including datagrams already waiting in the delay queues. Setting it back to
// false restores forwarding for datagrams arriving afterwards. Safe for
// concurrent use.
func (p *Proxy) SetBlackhole(on bool) {
	p.blackhole.Store(on)
}

// SetBlackholeToClient drops every datagram from the target to clients
// (one way) while on is true, including those already waiting in the delay
// queue; datagrams towards the target still pass. Safe for concurrent use.
func (p *Proxy) SetBlackholeToClient(on bool) {
	p.blackholeToClient.Store(on)
}

// Stats returns a snapshot of the Proxy's counters. Each counter is read
// atomically, but the snapshot as a whole is not. Safe for concurrent use,
// also after Close.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	n := len(p.mappings)
	p.mu.Unlock()
	return Stats{
		ToTarget:  p.toTarget.Load(),
		ToClient:  p.toClient.Load(),
		Dropped:   p.dropped.Load(),
		Oversized: p.oversized.Load(),
		Mappings:  n,
	}
}

// Close closes the listen socket and every upstream socket, discards queued
// datagrams, and waits until every goroutine the Proxy started has returned.
// It returns the error from closing the listen socket on the first call and
// nil on later calls. Safe for concurrent use; concurrent callers all return
// only after shutdown completes.
func (p *Proxy) Close() error {
	var err error
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		close(p.done)
		err = p.conn.Close()
		// p.mappings no longer changes once closed is set.
		for _, m := range p.mappings {
			m.up.Close()
		}
		p.wg.Wait()
	})
	return err
}

// readClients reads datagrams from the listen socket and queues them towards
// the target. It returns when the listen socket is closed.
func (p *Proxy) readClients() {
	defer p.wg.Done()
	buf := make([]byte, p.maxSize+1)
	for {
		n, src, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if p.readFailed(err) {
				return
			}
			continue
		}
		if !p.admit(n) {
			continue
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		m := p.mapping(src)
		if m == nil {
			p.dropped.Add(1)
			continue
		}
		p.enqueue(p.toTargetQ, buf[:n], m)
	}
}

// readTarget reads the target's replies on m's upstream socket and queues them
// towards m's client. It returns when the upstream socket is closed.
func (p *Proxy) readTarget(m *mapping) {
	defer p.wg.Done()
	buf := make([]byte, p.maxSize+1)
	for {
		n, err := m.up.Read(buf)
		if err != nil {
			if p.readFailed(err) {
				return
			}
			continue
		}
		if p.blackholeToClient.Load() {
			p.dropped.Add(1)
			continue
		}
		if !p.admit(n) {
			continue
		}
		p.enqueue(p.toClientQ, buf[:n], m)
	}
}

// readFailed reports whether a reader should stop after err. ICMP errors
// surfacing on connected upstream sockets (the target not listening yet, or
// any more) are transient; anything else unexpected is retried after a short
// pause so that a persistent error cannot spin a CPU.
func (p *Proxy) readFailed(err error) bool {
	select {
	case <-p.done:
		return true
	default:
	}
	if errors.Is(err, net.ErrClosed) {
		return true
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		time.Sleep(time.Millisecond)
	}
	return false
}

// admit applies the size limit, blackhole and drop rate to a datagram of n
// bytes that just arrived, counting it if it is discarded.
func (p *Proxy) admit(n int) bool {
	if n > p.maxSize {
		p.oversized.Add(1)
		return false
	}
	if p.blackhole.Load() {
		p.dropped.Add(1)
		return false
	}
	if f := math.Float64frombits(p.dropRate.Load()); f > 0 && rand.Float64() < f {
		p.dropped.Add(1)
		return false
	}
	return true
}

func (p *Proxy) enqueue(q *delayQueue, data []byte, m *mapping) {
	pkt := packet{
		data: append([]byte(nil), data...),
		due:  time.Now().Add(time.Duration(p.delay.Load())),
		m:    m,
	}
	if !q.push(pkt) {
		p.dropped.Add(1)
	}
}

// mapping returns the mapping for client src, creating it and its upstream
// socket and reader goroutine if needed. It returns nil if the Proxy is
// closed, the mapping limit is reached or the upstream socket cannot be
// opened.
func (p *Proxy) mapping(src netip.AddrPort) *mapping {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	if m, ok := p.mappings[src]; ok {
		return m
	}
	if len(p.mappings) >= p.maxMappings {
		return nil
	}
	up, err := net.DialUDP("udp", p.upLocal, p.target)
	if err != nil {
		return nil
	}
	m := &mapping{client: src, up: up}
	p.mappings[src] = m
	p.wg.Add(1) // cannot race with Close's Wait: closed is false under p.mu
	go p.readTarget(m)
	return m
}

func (p *Proxy) sendToTarget(pkt packet) {
	if p.blackhole.Load() {
		p.dropped.Add(1)
		return
	}
	if _, err := pkt.m.up.Write(pkt.data); err != nil {
		p.dropped.Add(1)
		return
	}
	p.toTarget.Add(1)
}

func (p *Proxy) sendToClient(pkt packet) {
	if p.blackhole.Load() || p.blackholeToClient.Load() {
		p.dropped.Add(1)
		return
	}
	if _, err := p.conn.WriteToUDPAddrPort(pkt.data, pkt.m.client); err != nil {
		p.dropped.Add(1)
		return
	}
	p.toClient.Add(1)
}

// packet is a datagram waiting in a delay queue.
type packet struct {
	data []byte
	due  time.Time
	m    *mapping
}

// delayQueue is a bounded FIFO of datagrams, each released at its due time
// by a single goroutine running run.
type delayQueue struct {
	mu    sync.Mutex
	buf   []packet // buf[head:] are queued
	head  int
	limit int
	wake  chan struct{} // signalled (non-blocking) on push
}

func newDelayQueue(limit int) *delayQueue {
	return &delayQueue{limit: limit, wake: make(chan struct{}, 1)}
}

// push appends pkt, reporting false if the queue is full.
func (q *delayQueue) push(pkt packet) bool {
	q.mu.Lock()
	if len(q.buf)-q.head >= q.limit {
		q.mu.Unlock()
		return false
	}
	q.buf = append(q.buf, pkt)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// next pops the head packet if it is due at now. Otherwise it returns how
// long until the head is due, or a negative duration if the queue is empty.
func (q *delayQueue) next(now time.Time) (packet, time.Duration, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
		return packet{}, -1, false
	}
	h := &q.buf[q.head]
	if d := h.due.Sub(now); d > 0 {
		return packet{}, d, false
	}
	pkt := *h
	*h = packet{} // release the payload
	q.head++
	switch {
	case q.head == len(q.buf):
		q.buf, q.head = q.buf[:0], 0
	case q.head >= 1024 && 2*q.head >= len(q.buf):
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf, q.head = q.buf[:n], 0
	}
	return pkt, 0, true
}

// run sends each queued packet with send once it is due, sleeping on one
// reusable timer until the head packet is due. It returns when done is closed,
// discarding whatever is still queued.
func (q *delayQueue) run(done <-chan struct{}, wg *sync.WaitGroup, send func(packet)) {
	defer wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		pkt, wait, ok := q.next(time.Now())
		switch {
		case ok:
			send(pkt)
		case wait < 0:
			select {
			case <-q.wake:
			case <-done:
				return
			}
		default:
			// The head cannot change while we wait (FIFO), so pushes need
			// not wake us; a stale wake token only causes one extra loop.
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-done:
				return
			}
		}
	}
}
