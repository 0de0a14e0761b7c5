package multipath

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/quic-go/quic-go"
)

// State is where a path stands in its life.
type State int

const (
	// StateValidating: the path is new and has not answered a heartbeat
	// yet. It can carry streams when nothing better exists (a peer's first
	// connection has just completed a handshake over it).
	StateValidating State = iota
	// StateActive: healthy and selected.
	StateActive
	// StateStandby: healthy, not selected; ready for failover.
	StateStandby
	// StateDegraded: a heartbeat is overdue (no answer within
	// max(4×SRTT, 200 ms)). Out of selection while a healthy path exists.
	StateDegraded
	// StateDead: no heartbeat answer for PathIdleTimeout. Out of selection
	// at once; the connection is closed.
	StateDead
)

// String returns "validating", "active", "standby", "degraded" or "dead".
func (s State) String() string {
	switch s {
	case StateValidating:
		return "validating"
	case StateActive:
		return "active"
	case StateStandby:
		return "standby"
	case StateDegraded:
		return "degraded"
	case StateDead:
		return "dead"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// PathInfo is a snapshot of one path. RTT and loss come from quic-go's own
// estimator (RFC 9002), which the heartbeats keep fed; HeartbeatRTT is the
// latest heartbeat round trip measured at stream level.
type PathInfo struct {
	// ConnID is the connection's ID (network.Conn.ID).
	ConnID string
	// Local and Remote are the path's addresses.
	Local, Remote ma.Multiaddr
	// IPv6 is true for an IPv6 path, false for IPv4.
	IPv6 bool
	// Relayed is true for a limited (relayed) connection.
	Relayed bool
	// Direction says who dialed.
	Direction network.Direction
	// Opened is when the connection was established.
	Opened time.Time
	// SmoothedRTT, MinRTT and LatestRTT are quic-go's estimates.
	SmoothedRTT, MinRTT, LatestRTT time.Duration
	// HeartbeatRTT is the latest heartbeat round trip (0 before the first).
	HeartbeatRTT time.Duration
	// Loss is packets lost / packets sent, in [0, 1].
	Loss float64
	// OpenStreams counts the application's streams on the path; heartbeat
	// streams (/ipfs/ping/1.0.0) are not counted.
	OpenStreams int
	// BytesSent and BytesReceived are QUIC payload bytes, retransmissions
	// included.
	BytesSent, BytesReceived uint64
	// LastHeartbeat is when the last heartbeat answer arrived (the
	// connection's opening time before the first).
	LastHeartbeat time.Time
	// State is the path's state.
	State State
	// Selected is true for the path StrategyBest selects.
	Selected bool
}

// path is the manager's record of one connection. state and lastAnswer are
// guarded by Manager.mu.
type path struct {
	conn    network.Conn
	quic    *quic.Conn // nil when the connection is not QUIC
	ipv6    bool
	relayed bool

	// ctx is cancelled when the path is removed or the manager closes; it
	// stops the path's heartbeat goroutine.
	ctx    context.Context
	cancel context.CancelFunc

	heartbeatRTT atomic.Int64 // time.Duration of the latest answer

	// wake is poked (never blocking) when a stream is sent over the path,
	// so that its heartbeat switches to the busy rate at once.
	wake chan struct{}

	// streamsSeen and bytesSeen are the connection's StreamsOpened and
	// QUIC bytes moved at the last probe (heartbeat goroutine only).
	streamsSeen, bytesSeen uint64

	state      State
	lastAnswer time.Time
}

func newPath(parent context.Context, c network.Conn) *path {
	ctx, cancel := context.WithCancel(parent)
	pa := &path{
		conn:       c,
		relayed:    c.Stat().Limited,
		ctx:        ctx,
		cancel:     cancel,
		wake:       make(chan struct{}, 1),
		state:      StateValidating,
		lastAnswer: time.Now(),
	}
	var qc *quic.Conn
	if c.As(&qc) {
		pa.quic = qc
	}
	if _, err := c.RemoteMultiaddr().ValueForProtocol(ma.P_IP6); err == nil {
		pa.ipv6 = true
	}
	return pa
}

// refusedByPeer reports whether the peer closed the path because it has
// enough paths (ErrorCodeTooManyPaths): quic-go records the close as the
// cause of the connection's context.
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
	return network.ConnErrorCode(appErr.ErrorCode) == ErrorCodeTooManyPaths
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
	case StateActive, StateStandby:
		return 0
	case StateValidating:
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

// streamCounter is implemented by the swarm's connections.
type streamCounter interface{ StreamsOpened() uint64 }

// busyBytes is how many QUIC bytes (both directions) must have moved on a
// path since the previous probe for it to count as busy: well above what
// heartbeats alone move (about 100 bytes per probe and direction, ours and
// the peer's).
const busyBytes = 2048

// busy reports whether the path carried application traffic since the
// previous call: a stream other than our heartbeat stream was opened, or
// more than busyBytes moved. An open but silent stream (kad-dht keeps one
// per peer) does not make a path busy. Heartbeat goroutine only.
func (pa *path) busy() bool {
	busy := false
	if sc, ok := pa.conn.(streamCounter); ok {
		n := sc.StreamsOpened()
		busy = n > pa.streamsSeen+1 // more than our own heartbeat stream
		pa.streamsSeen = n
	}
	if pa.quic != nil {
		qs := pa.quic.ConnectionStats()
		moved := qs.BytesSent + qs.BytesReceived
		busy = busy || moved-pa.bytesSeen > busyBytes
		pa.bytesSeen = moved
	}
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

// info builds the snapshot; called with Manager.mu held (read).
func (pa *path) info(selected bool) PathInfo {
	st := pa.conn.Stat()
	in := PathInfo{
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
