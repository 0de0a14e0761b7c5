package core

import (
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	ma "github.com/multiformats/go-multiaddr"
)

// PathState is where a path (one connection to a peer) stands in its life;
// multipath moves it (docs/multipath.md).
type PathState int

const (
	// PathValidating: the path is new and has not answered a heartbeat
	// yet. It can carry streams when nothing better exists (a peer's first
	// connection has just completed a handshake over it).
	PathValidating PathState = iota
	// PathActive: healthy and selected.
	PathActive
	// PathStandby: healthy, not selected; ready for failover.
	PathStandby
	// PathDegraded: a heartbeat is overdue (no answer within
	// max(4×SRTT, 200 ms)). Out of selection while a healthy path exists.
	PathDegraded
	// PathDead: no heartbeat answer for PathIdleTimeout. Out of selection
	// at once; the connection is closed.
	PathDead
	// PathRedundant: another path on the same pair of addresses survives
	// this one. Out of selection at once; it finishes its streams and is
	// closed.
	PathRedundant
)

// String returns "validating", "active", "standby", "degraded", "dead" or
// "redundant".
func (s PathState) String() string {
	switch s {
	case PathValidating:
		return "validating"
	case PathActive:
		return "active"
	case PathStandby:
		return "standby"
	case PathDegraded:
		return "degraded"
	case PathDead:
		return "dead"
	case PathRedundant:
		return "redundant"
	}
	return fmt.Sprintf("PathState(%d)", int(s))
}

// PathInfo is a snapshot of one path. RTT and loss come from quic-go's own
// estimator (RFC 9002), which the heartbeats keep fed; HeartbeatRTT is the
// latest heartbeat's round trip: quic-go's RTT sample from the ACK of the
// heartbeat's QUIC DATAGRAM frame (RFC 9221 §5.2), or a ping stream's round
// trip on a connection without datagrams.
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
	// HeartbeatRTT is the latest heartbeat round trip (0 before the first);
	// see PathInfo.
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
	State PathState
	// Selected is true for the path StrategyBest selects.
	Selected bool
}

// IsRelayAddr reports whether a goes through a relay: it has a
// /p2p-circuit component (circuit relay v2).
func IsRelayAddr(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}
