package multipath

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	msmux "github.com/multiformats/go-multistream"

	"github.com/realmnet/realmnet/core"
)

// heartbeat probes, with pings, one path whose connection did not
// negotiate QUIC datagrams (the others are probed by the probe scheduler,
// probes.go), until it is removed or dead. It is owned by the manager (wg).
// A probe is 32 random bytes on the path's ping stream, echoed by the
// peer's ping handler. The next probe is due HeartbeatInterval after the
// last one, or max(4×SRTT, 200 ms) while the path carries streams. A probe
// unanswered after max(4×SRTT, 200 ms) makes the path degraded; no answer
// for PathIdleTimeout makes it dead.
func (m *Manager) heartbeat(ctx context.Context, p peer.ID, pa *path) {
	defer m.wg.Done()
	var stream *heartbeatStream
	defer func() {
		if stream != nil {
			_ = stream.Reset()
		}
	}()
	probe, answer := make([]byte, ping.PingSize), make([]byte, ping.PingSize)
	next := m.clock.Now() // validate at once
	var lastProbe time.Time
	var seen activitySeen
	timer := m.clock.Timer(0)
	defer timer.Stop()
	for {
		deadline := m.idleDeadline(pa)
		if !m.clock.Now().Before(deadline) {
			m.pathDead(p, pa)
			return
		}
		// Never a negative duration: a mock clock would run its time
		// back to a timer due in the past.
		timer.Reset(max(0, minTime(next, deadline).Sub(m.clock.Now())))
		select {
		case <-ctx.Done():
			return
		case <-pa.wake:
			// A stream is being sent over the path: probe at the busy
			// rate from now on, starting at once if the last probe is
			// that old (before the first probe, one is due at once).
			if !lastProbe.IsZero() {
				next = minTime(next, lastProbe.Add(m.busyInterval(pa)))
			}
			continue
		case <-timer.C:
		}
		if m.clock.Now().Before(next) {
			continue // woke for the idle deadline; checked at the top
		}
		if pa.conn.IsClosed() {
			return
		}
		// go-libp2p's ping handler ends a stream after 30 s: rotate ours
		// before that, so no probe is lost to it.
		if stream != nil && time.Since(stream.opened) > heartbeatStreamLifetime {
			_ = stream.Close()
			stream = nil
		}
		if stream == nil {
			var err error
			if stream, err = m.openHeartbeatStream(ctx, pa); err != nil {
				log.Debugw("open heartbeat stream", "peer", p, "conn", pa.conn.ID(), "error", err)
				next = m.clock.Now().Add(m.busyInterval(pa))
				continue
			}
		}
		lastProbe = m.clock.Now()
		_, _ = rand.Read(probe)
		// Removal or Close interrupts a probe that waits for its answer.
		current := stream
		interrupt := context.AfterFunc(ctx, func() { _ = current.SetDeadline(time.Now()) })
		rtt, err := m.exchange(p, pa, stream, probe, answer, deadline)
		interrupt()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			var unsupported msmux.ErrNotSupported[protocol.ID]
			if errors.As(err, &unsupported) {
				// The peer does not speak ping: without heartbeats the
				// path counts as healthy while QUIC keeps it open.
				m.withoutHeartbeat(p, pa)
				return
			}
			// A stream that worked and ended (reset, or the peer's limit)
			// is replaced at once; one that never answered is retried
			// after the busy interval. Only the missing answers, by time,
			// make a path dead.
			answeredBefore := stream.answered
			_ = stream.Reset()
			stream = nil
			next = m.clock.Now()
			if !answeredBefore {
				next = next.Add(min(m.busyInterval(pa), m.cfg.HeartbeatInterval))
			}
			continue
		}
		stream.answered = true
		m.answered(p, pa, rtt)
		next = lastProbe.Add(m.probeInterval(pa, &seen))
	}
}

// peerMaxAckDelay is how long the peer may hold back the ACK of a lone
// ack-eliciting packet: the max_ack_delay transport parameter's default
// (RFC 9000 §18.2), which quic-go uses and go-libp2p does not change. A
// heartbeat datagram on an idle path is such a packet, so its ACK comes
// about RTT + 25 ms after it was sent (measured on loopback: 25 ms).
// quic-go does not tell us the value the peer announced.
const peerMaxAckDelay = 25 * time.Millisecond

// ackMargin is added to every wait for a heartbeat datagram's ACK: timer
// slack and the peer's scheduling.
const ackMargin = 5 * time.Millisecond

// maxAckPoll bounds the gap between two looks at the connection's RTT
// sample while a heartbeat datagram waits for its ACK (probeScheduler.step); it is how late an ACK
// that arrives after the probe timeout can be noticed (a degraded path comes
// back at most this much after its ACK).
const maxAckPoll = 100 * time.Millisecond

// heartbeatPayload is the content of a heartbeat datagram. Its content does
// not matter: the peer need not read it (go-libp2p does not), its QUIC stack
// acknowledges the packet that carries it.
var heartbeatPayload = []byte{0}

// datagramTimeout is how long a heartbeat datagram may go without an ACK
// before its path is degraded: the ping's bound max(4×SRTT, 200 ms), or the
// time QUIC needs to recover a lost datagram (PTO, RFC 9002 §6.2.1: SRTT +
// max(4×RTTVAR, 1 ms) + max_ack_delay, then the round trip of the PTO
// probe) if that is longer — plus the peer's max_ack_delay, by which a lone
// datagram's ACK is held back, and ackMargin. On loopback: 230 ms.
func (m *Manager) datagramTimeout(pa *path) time.Duration {
	st := pa.quic.ConnectionStats()
	pto := st.SmoothedRTT + max(4*st.MeanDeviation, time.Millisecond) + peerMaxAckDelay
	return max(m.busyInterval(pa), pto+st.SmoothedRTT) + peerMaxAckDelay + ackMargin
}

// heartbeatStream is a ping stream whose protocol negotiation is lazy
// (multistream-select's NewMSSelect, as the basic host does for known
// protocols): the header travels with the first probe and its confirmation
// with the first answer, so a stalled path is noticed by the probe timeout
// even while a new stream is being set up.
type heartbeatStream struct {
	network.Stream
	rw       io.ReadWriteCloser
	opened   time.Time
	answered bool // at least one probe answered on this stream
}

// heartbeatStreamLifetime is how long a heartbeat stream is used before it
// is replaced: under go-libp2p's ping handler limit of 30 s per stream.
const heartbeatStreamLifetime = 25 * time.Second

func (s *heartbeatStream) Read(b []byte) (int, error)  { return s.rw.Read(b) }
func (s *heartbeatStream) Write(b []byte) (int, error) { return s.rw.Write(b) }

// exchange sends one probe and waits for its echo: first for the probe
// timeout, after which the path is degraded, then until the idle deadline
// (a time of the manager's clock). The round trip is measured in real time.
func (m *Manager) exchange(p peer.ID, pa *path, s *heartbeatStream, probe, answer []byte, deadline time.Time) (time.Duration, error) {
	start := time.Now()
	idle := start.Add(deadline.Sub(m.clock.Now())) // the idle deadline in real time
	_ = s.SetWriteDeadline(idle)
	if _, err := s.Write(probe); err != nil {
		return 0, err
	}
	m.metrics.count(&m.metrics.streamSent)
	_ = s.SetReadDeadline(minTime(start.Add(m.busyInterval(pa)), idle))
	n, err := io.ReadFull(s, answer)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(idle) {
		m.degraded(p, pa)
		_ = s.SetReadDeadline(idle)
		var more int
		more, err = io.ReadFull(s, answer[n:])
		n += more
	}
	if err != nil {
		return 0, err
	}
	if !bytes.Equal(probe, answer[:n]) {
		return 0, errors.New("heartbeat answer does not match the probe")
	}
	return time.Since(start), nil
}

// openHeartbeatStream opens a ping stream on the path's own connection for
// /ipfs/ping/1.0.0, negotiated lazily with the first probe. It is charged to
// the resource manager's ping service scope, like go-libp2p's own pings.
// Opening a QUIC stream is local: it does not wait for the peer.
//
// A relayed path's connection is limited: its heartbeat stream is allowed
// on it (network.WithAllowLimitedConn). One stream serves every probe, 32
// bytes each way per probe plus yamux's 12-byte frame headers (about 45
// bytes each way): idle 5 s heartbeats use about 1 KiB each way of a
// relayed connection's data per 2 minutes, and busy probing (at most every
// MinBusyProbeInterval, 200 ms) about 27 KiB, within circuit relay v2's
// default limit of 128 KiB each way per 2-minute circuit.
func (m *Manager) openHeartbeatStream(ctx context.Context, pa *path) (*heartbeatStream, error) {
	ctx = network.WithAllowLimitedConn(ctx, "multipath heartbeat")
	ctx, cancel := context.WithTimeout(ctx, m.busyInterval(pa))
	defer cancel()
	s, err := pa.conn.NewStream(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.SetProtocol(ping.ID); err != nil {
		_ = s.Reset()
		return nil, err
	}
	if err := s.Scope().SetService(ping.ServiceName); err != nil {
		_ = s.Reset()
		return nil, err
	}
	return &heartbeatStream{Stream: s, rw: msmux.NewMSSelect(s, protocol.ID(ping.ID)), opened: time.Now()}, nil
}

// busyInterval is max(4×SRTT, 200 ms): the probe period of a path that
// carries streams and the time after which an unanswered probe makes a path
// degraded.
func (m *Manager) busyInterval(pa *path) time.Duration {
	return max(4*pa.rtt(), MinBusyProbeInterval)
}

// probeInterval is the time from one probe to the next.
func (m *Manager) probeInterval(pa *path, seen *activitySeen) time.Duration {
	if pa.busy(seen) {
		return min(m.busyInterval(pa), m.cfg.HeartbeatInterval)
	}
	return m.cfg.HeartbeatInterval
}

func (m *Manager) idleDeadline(pa *path) time.Time {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return pa.lastAnswer.Add(m.cfg.PathIdleTimeout)
}

// answered records a heartbeat answer and re-ranks the peer's paths. A
// direct path's answer confirms it: under RelayedPathsClose, once it has
// UpgradeConfirmations answers, the peer's idle relayed paths are closed.
func (m *Manager) answered(p peer.ID, pa *path, rtt time.Duration) {
	for _, c := range m.recordAnswer(p, pa, rtt) {
		log.Debugw("closing relayed path: a direct path is confirmed", "peer", p, "conn", c.ID(), "direct", pa.conn.ID())
		_ = c.CloseWithError(ErrorCodeRelayedPathReplaced)
	}
}

// recordAnswer is answered's bookkeeping; it returns the relayed paths'
// connections to close.
func (m *Manager) recordAnswer(p peer.ID, pa *path, rtt time.Duration) (closeRelayed []core.Conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || !pa.usable() {
		return nil
	}
	pa.answers++
	pa.lastAnswer = m.clock.Now()
	pa.heartbeatRTT.Store(int64(rtt))
	m.metrics.heartbeatRTT.Observe(rtt.Seconds())
	if pa.state == core.PathValidating || pa.state == core.PathDegraded {
		pa.state = core.PathStandby // rerank makes it active if selected
	}
	pp := m.peers[p]
	if pp == nil {
		return nil
	}
	m.rerank(p, pp, core.SwitchLowerRTT)
	if m.cfg.RelayedPaths != RelayedPathsClose || pa.relayed || pa.answers < UpgradeConfirmations {
		return nil
	}
	for _, other := range pp.paths {
		if other.relayed && other.usable() && !other.conn.IsClosed() && userStreams(other.conn) == 0 {
			closeRelayed = append(closeRelayed, other.conn)
		}
	}
	return closeRelayed
}

// heard records packets from the peer on a path this end listens on (the
// peer's heartbeats or other traffic): an answer without an RTT sample.
func (m *Manager) heard(pa *path) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || !pa.usable() {
		return
	}
	pa.lastAnswer = m.clock.Now()
}

// withoutHeartbeat marks a path whose peer does not answer pings healthy
// for good: its liveness is left to QUIC (idle timeout, keep-alives).
func (m *Manager) withoutHeartbeat(p peer.ID, pa *path) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || !pa.usable() {
		return
	}
	log.Debugw("peer does not answer heartbeats; path kept on QUIC liveness", "peer", p, "conn", pa.conn.ID())
	pa.state = core.PathStandby
	pa.lastAnswer = m.clock.Now()
	if pp := m.peers[p]; pp != nil {
		m.rerank(p, pp, core.SwitchLowerRTT)
	}
}

// degraded takes a path whose probe is overdue out of selection.
func (m *Manager) degraded(p peer.ID, pa *path) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || !pa.usable() || pa.state == core.PathDegraded {
		return
	}
	pa.state = core.PathDegraded
	m.metrics.count(&m.metrics.lost)
	log.Debugw("path degraded", "peer", p, "conn", pa.conn.ID())
	if pp := m.peers[p]; pp != nil {
		m.rerank(p, pp, core.SwitchPathDegraded)
	}
}

// pathDead takes the path out of selection, emits EvtPathDead and closes its
// connection (Disconnected then removes it).
func (m *Manager) pathDead(p peer.ID, pa *path) {
	m.mu.Lock()
	if m.closed || !pa.usable() {
		m.mu.Unlock()
		return
	}
	validated := pa.state != core.PathValidating
	pa.state = core.PathDead
	m.metrics.count(&m.metrics.dead)
	silent := m.clock.Since(pa.lastAnswer)
	if pp := m.peers[p]; pp != nil {
		if !validated && pa.conn.Stat().Direction == network.DirOutbound {
			// Never answered: do not redial this address at once.
			pp.addrFailed(string(pa.conn.RemoteMultiaddr().Bytes()), m.clock.Now())
		}
		m.rerank(p, pp, core.SwitchPathDead)
	}
	m.events.Push(EvtPathDead{Peer: p, ConnID: pa.conn.ID(), SilentFor: silent})
	m.mu.Unlock()
	log.Debugw("path dead", "peer", p, "conn", pa.conn.ID(), "silent", silent)
	_ = pa.conn.CloseWithError(ErrorCodePathDead)
}

// maybeDiscover starts dialing standby paths to p when it has fewer than
// DesiredPaths live paths and this side dialed one of them (the dialer knows
// the peer's addresses; both sides dialing would double the paths). m.mu is
// held for writing.
func (m *Manager) maybeDiscover(p peer.ID, pp *peerPaths) {
	if pp.discovering {
		// The running discovery may have looked at the peer's paths
		// before this change: it runs again when it ends.
		pp.rediscover = true
		return
	}
	if live := livePaths(pp); m.closed || live == 0 || live >= m.cfg.DesiredPaths {
		return
	}
	outbound := false
	for _, pa := range pp.ranked {
		outbound = outbound || pa.conn.Stat().Direction == network.DirOutbound
	}
	if !outbound {
		return
	}
	pp.discovering = true
	m.wg.Add(1)
	go m.discover(p)
}

// discover dials p's known addresses that no path uses yet, one at a time,
// until p has DesiredPaths live paths or the addresses run out. An address
// whose dial failed, or whose path the peer refused (closed with
// ErrorCodeTooManyPaths: its MaxPaths is lower),
// is left alone for redialAfter, so that such a peer causes no churn; when
// the peer still lacks paths, discovery runs again once such an address is
// eligible. Relay addresses (/p2p-circuit) are not dialed: a relay's slots
// and data are scarce and a relayed path is never preferred to a direct
// one, so relayed paths come only from DialPeer, when no direct address
// answers.
func (m *Manager) discover(p peer.ID) {
	defer m.wg.Done()
	var retryAt time.Time // earliest time a skipped address may be dialed again
	defer func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		pp := m.peers[p]
		if pp == nil {
			return
		}
		pp.discovering = false
		if pp.rediscover {
			pp.rediscover = false
			m.maybeDiscover(p, pp)
			if pp.discovering {
				return // the new run owns the peer's retry timer
			}
		}
		if len(pp.paths) == 0 && pp.strategy == "" {
			if pp.retry != nil {
				pp.retry.Stop()
			}
			delete(m.peers, p)
			return
		}
		if !retryAt.IsZero() && !m.closed && len(pp.ranked) < m.cfg.DesiredPaths {
			if pp.retry != nil {
				pp.retry.Stop()
			}
			pp.retry = m.clock.AfterFunc(max(0, retryAt.Sub(m.clock.Now())), func() {
				m.mu.Lock()
				defer m.mu.Unlock()
				if pp := m.peers[p]; pp != nil {
					m.maybeDiscover(p, pp)
				}
			})
		}
	}()
	for _, addr := range m.dialer.Peerstore().Addrs(p) {
		if m.ctx.Err() != nil {
			return
		}
		if core.IsRelayAddr(addr) || !m.dialer.CanDial(p, addr) {
			continue
		}
		m.mu.Lock()
		pp := m.peers[p]
		if pp == nil || livePaths(pp) == 0 || livePaths(pp) >= m.cfg.DesiredPaths || len(pp.paths) >= m.cfg.MaxPaths {
			m.mu.Unlock()
			return
		}
		// An address is in use while a path on it is open, and also
		// while one is closing but not removed yet: Disconnected then
		// decides whether the address may be dialed again (not at once
		// when the peer refused the path) and runs discovery again.
		inUse := false
		for _, pa := range pp.paths {
			inUse = inUse || pa.conn.RemoteMultiaddr().Equal(addr)
		}
		key := string(addr.Bytes())
		failedAt, failed := pp.failedAddrs[key]
		recent := failed && m.clock.Since(failedAt) < redialAfter
		if recent && !inUse {
			if at := failedAt.Add(redialAfter); retryAt.IsZero() || at.Before(retryAt) {
				retryAt = at
			}
		}
		m.mu.Unlock()
		if inUse || recent {
			continue
		}
		ctx, cancel := context.WithTimeout(m.ctx, pathDialTimeout)
		if _, err := m.dialer.DialPath(ctx, p, addr); err != nil {
			log.Debugw("standby path dial failed", "peer", p, "addr", addr, "error", err)
			m.mu.Lock()
			if pp := m.peers[p]; pp != nil {
				pp.addrFailed(key, m.clock.Now())
			}
			m.mu.Unlock()
		}
		cancel()
	}
}

// watchIdentify dials standby paths once identify has told us a peer's
// listen addresses.
func (m *Manager) watchIdentify() {
	defer m.wg.Done()
	for evt := range m.sub.Out() {
		p := evt.(event.EvtPeerIdentificationCompleted).Peer
		m.mu.Lock()
		if pp := m.peers[p]; pp != nil {
			m.maybeDiscover(p, pp)
		}
		m.mu.Unlock()
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// livePaths counts p's ranked paths whose connection is not closing: a peer
// whose connections are being closed (ClosePeer) gets no new ones.
func livePaths(pp *peerPaths) int {
	n := 0
	for _, pa := range pp.ranked {
		if !pa.conn.IsClosed() {
			n++
		}
	}
	return n
}
