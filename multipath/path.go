package multipath

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/quic-go/quic-go"

	"github.com/realmnet/realmnet/core"
)

// path is the manager's record of one connection. state and lastAnswer are
// guarded by Manager.mu.
//
// Its fields are ordered so that the flags share one word: a path exists
// per connection (memory per connection, docs/performance.md).
type path struct {
	conn core.Conn
	quic *quic.Conn // nil when the connection is not QUIC
	ipv6 bool
	// relayed is set for a connection through a relay (Stat().Limited).
	relayed bool
	// datagrams is set when quic negotiated QUIC datagrams (RFC 9221) at
	// both ends: the path is heartbeated with datagrams, not pings.
	datagrams bool
	removed   bool // set when the path leaves its peer (ctx is cancelled then)
	draining  bool // set while drainAndClose runs for the path (see survivor)
	// heartbeatStarted is set once the path's first heartbeat started.
	heartbeatStarted bool
	// hasOrder is set when order holds the connection's tie-break value.
	hasOrder bool

	// ctx, made on first use (lifetime), is cancelled when the path is
	// removed or the manager closes; it stops the path's ping heartbeat
	// and drain goroutines. Most paths never need one (a context costs
	// about 0.5 KiB per path).
	ctx    context.Context
	cancel context.CancelFunc

	heartbeatRTT atomic.Int64 // time.Duration of the latest answer

	// wake is poked (never blocking) when a stream is sent over a path
	// heartbeated with pings, so that its heartbeat switches to the busy
	// rate at once (datagram heartbeats: probeScheduler.poke). Made when
	// the first ping heartbeat starts (Manager.mu held); nil before.
	wake chan struct{}

	state      core.PathState
	lastAnswer time.Time
	// answers counts the path's heartbeat answers (for
	// UpgradeConfirmations).
	answers int
	// rankRTT is the biased RTT the last rerank sorted by.
	rankRTT time.Duration
	// survivor is the connection that made this path redundant
	// (state core.PathRedundant); draining is set while drainAndClose
	// runs for it.
	survivor core.Conn
	// stateBefore is the state a path had before it became redundant
	// (restored when its survivor's admission is aborted).
	stateBefore core.PathState
	// selectedBefore is the peer's selected path before this one was
	// admitted, and pending the events of its admission, emitted when it
	// is announced.
	selectedBefore *path
	pending        []any
	// order is the connection's tie-break value for redundancy (unset
	// without TLS state: hasOrder); see Manager.loser.
	order [pathOrderSize]byte
	// probe is the path's entry in the probe scheduler while it is
	// heartbeated with datagrams (nil otherwise); stopPings stops its
	// ping-stream heartbeat goroutine otherwise.
	probe     *probe
	stopPings context.CancelFunc
}

// usable reports whether the path can be selected: neither dead nor
// redundant. Manager.mu is held.
func (pa *path) usable() bool {
	return pa.state != core.PathDead && pa.state != core.PathRedundant
}

func newPath(c core.Conn, now time.Time) *path {
	pa := &path{
		conn:       c,
		relayed:    c.Stat().Limited,
		state:      core.PathValidating,
		lastAnswer: now,
	}
	var qc *quic.Conn
	if c.As(&qc) {
		pa.quic = qc
		dg := qc.ConnectionState().SupportsDatagrams
		pa.datagrams = dg.Local && dg.Remote
	}
	pa.order, pa.hasOrder = pathOrder(c)
	if _, err := c.RemoteMultiaddr().ValueForProtocol(ma.P_IP6); err == nil {
		pa.ipv6 = true
	}
	return pa
}

// lifetime returns the path's context, made from parent on first use
// (already cancelled when the path was removed). Manager.mu is held.
func (pa *path) lifetime(parent context.Context) context.Context {
	if pa.ctx == nil {
		pa.ctx, pa.cancel = context.WithCancel(parent)
		if pa.removed {
			pa.cancel()
		}
	}
	return pa.ctx
}

// remove ends the path's heartbeat and goroutines: it is no longer the
// manager's. Manager.mu is held.
func (pa *path) remove(s *probeScheduler) {
	pa.removed = true
	if pa.cancel != nil {
		pa.cancel()
	}
	pa.stopHeartbeat(s)
}

// stopHeartbeat stops the path's heartbeat, if one runs; the path stays.
// Manager.mu is held.
func (pa *path) stopHeartbeat(s *probeScheduler) {
	if pa.probe != nil {
		s.remove(pa.probe)
		pa.probe = nil
	}
	if pa.stopPings != nil {
		pa.stopPings()
		pa.stopPings = nil
	}
}

// pathOrderLabel is the TLS exporter label of pathOrder.
const pathOrderLabel = "EXPORTER-realmnet-path-order"

// pathOrder is c's tie-break value between two connections on the same pair
// of addresses dialed by the same side: 16 bytes of the connection's TLS
// exporter (RFC 8446 §7.5), equal on both ends and random across
// connections; ok is false when c has no TLS state (not QUIC).
func pathOrder(c network.Conn) (order [pathOrderSize]byte, ok bool) {
	var qc *quic.Conn
	if !c.As(&qc) {
		return order, false
	}
	state := qc.ConnectionState().TLS
	out, err := state.ExportKeyingMaterial(pathOrderLabel, nil, pathOrderSize)
	if err != nil {
		return order, false
	}
	return [pathOrderSize]byte(out), true
}

// pathOrderSize is the length of a path's tie-break value, in bytes.
const pathOrderSize = 16

// refusedByPeer reports whether the peer closed the path because it does
// not want it: it has enough paths (ErrorCodeTooManyPaths), its connection
// manager trimmed or refused it (network.ConnGarbageCollected, go-libp2p's
// code for connection manager closes), or its gater refused it
// (network.ConnGated). Discovery then leaves the address alone for
// redialAfter instead of dialing it again at once, which would fight the
// peer's trims (a new path is in its grace period, so it survives the next
// trim, and the peer's pool stays above its high water). quic-go records
// the close as the cause of the connection's context.
func (pa *path) refusedByPeer() bool {
	if pa.quic == nil {
		return false
	}
	var appErr *quic.ApplicationError
	if !errors.As(context.Cause(pa.quic.Context()), &appErr) || !appErr.Remote {
		return false
	}
	// A redundant path is not a refusal of the address: the other
	// connection on the same pair serves it.
	switch network.ConnErrorCode(appErr.ErrorCode) {
	case ErrorCodeTooManyPaths, network.ConnGarbageCollected, network.ConnGated:
		return true
	}
	return false
}

// rtt is the path's round-trip estimate used for selection.
func (pa *path) rtt() time.Duration {
	if pa.quic != nil {
		if srtt := pa.quic.ConnectionStats().SmoothedRTT; srtt > 0 {
			return srtt
		}
	}
	return time.Duration(pa.heartbeatRTT.Load())
}

// healthClass orders states for selection: healthy, then validating, then
// degraded.
func (pa *path) healthClass() int {
	switch pa.state {
	case core.PathActive, core.PathStandby:
		return 0
	case core.PathValidating:
		return 1
	}
	return 2
}

// biasedRTT is the RTT StrategyBest compares: IPv6 paths get IPv6Bias off.
func (pa *path) biasedRTT() time.Duration {
	if pa.ipv6 {
		return pa.rtt() - IPv6Bias
	}
	return pa.rtt()
}

// busyBytes is how many QUIC bytes (both directions) must have moved on a
// path since the previous probe for it to count as busy: well above what
// heartbeats alone move (about 100 bytes per probe and direction, ours and
// the peer's).
const busyBytes = 2048

// activitySeen is a heartbeat's record of its path's activity at the last
// probe: the connection's StreamsOpened and QUIC bytes moved. Each
// heartbeat has its own (a stopped heartbeat may finish a probe while its
// successor starts).
type activitySeen struct{ streams, bytes uint64 }

// busy reports whether the path carried application traffic since the
// previous call with seen: a stream other than a heartbeat stream was
// opened, or more than busyBytes moved. An open but silent stream (kad-dht
// keeps one per peer) does not make a path busy.
func (pa *path) busy(seen *activitySeen) bool {
	a := pa.conn.Activity()
	busy := a.StreamsOpened > seen.streams+1 || // more than our own heartbeat stream
		a.Bytes()-seen.bytes > busyBytes
	seen.streams, seen.bytes = a.StreamsOpened, a.Bytes()
	return busy
}

// userStreams counts the connection's streams that are not heartbeats.
func userStreams(c network.Conn) int {
	n := 0
	for _, s := range c.GetStreams() {
		if s.Protocol() != ping.ID {
			n++
		}
	}
	return n
}

// userStreamsByDirection counts the connection's streams that are not
// heartbeats, by who opened them.
func userStreamsByDirection(c network.Conn) (inbound, outbound int) {
	for _, s := range c.GetStreams() {
		if s.Protocol() == ping.ID {
			continue
		}
		if s.Stat().Direction == network.DirInbound {
			inbound++
		} else {
			outbound++
		}
	}
	return inbound, outbound
}

// info builds the snapshot; called with Manager.mu held (read).
func (pa *path) info(selected bool) core.PathInfo {
	st := pa.conn.Stat()
	in := core.PathInfo{
		ConnID:        pa.conn.ID(),
		Local:         pa.conn.LocalMultiaddr(),
		Remote:        pa.conn.RemoteMultiaddr(),
		IPv6:          pa.ipv6,
		Relayed:       pa.relayed,
		Direction:     st.Direction,
		Opened:        st.Opened,
		HeartbeatRTT:  time.Duration(pa.heartbeatRTT.Load()),
		OpenStreams:   userStreams(pa.conn),
		LastHeartbeat: pa.lastAnswer,
		State:         pa.state,
		Selected:      selected,
	}
	if pa.quic != nil {
		qs := pa.quic.ConnectionStats()
		in.SmoothedRTT, in.MinRTT, in.LatestRTT = qs.SmoothedRTT, qs.MinRTT, qs.LatestRTT
		in.BytesSent, in.BytesReceived = qs.BytesSent, qs.BytesReceived
		if qs.PacketsSent > 0 {
			in.Loss = float64(qs.PacketsLost) / float64(qs.PacketsSent)
		}
	} else {
		in.SmoothedRTT, in.LatestRTT = in.HeartbeatRTT, in.HeartbeatRTT
	}
	return in
}
