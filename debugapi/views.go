package debugapi

import (
	"context"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/realmnet/realmnet/core"
)

// Source supplies the JSON API's data; the node implements it. Every method
// is called on each request, from the server's goroutines, so all must be
// safe for concurrent use and quick (they read the node's state; only
// Doctor may do more). Each method returns a snapshot that the caller owns:
// the server may sort or change the slices it gets.
type Source interface {
	// Node describes the node itself. The server sets UptimeSeconds from
	// Started; the Source need not.
	Node() NodeView
	// Peers lists the peers the node has at least one connection to, or
	// otherwise tracks, in any order.
	Peers() []PeerView
	// Paths lists every path (connection) of every peer, in any order.
	Paths() []PathView
	// Pools lists the connection manager's pools: global, unassigned and
	// one per realm.
	Pools() []PoolView
	// Realms lists the realms the node has joined.
	Realms() []RealmView
	// Events returns the node's recent events, oldest first; the Source
	// decides how many it keeps.
	Events() []EventView
	// Health lists the health of the peers the node tracks, in any order
	// (the server sorts it).
	Health() []PeerHealthView
	// Doctor diagnoses why the node can or cannot reach p. It may take
	// time (it may look p up or dial it) and must return when ctx ends;
	// ctx ends when the HTTP client goes away. An error means the
	// diagnosis itself failed, not that p is unreachable.
	Doctor(ctx context.Context, p peer.ID) (DoctorReport, error)
}

// NodeView is the node itself (GET /v1/node).
type NodeView struct {
	// ID is the node's peer ID, in its string form.
	ID string `json:"id"`
	// Version is realmnet's version, as the node reports it in identify.
	Version string `json:"version"`
	// ListenAddrs are the multiaddrs the node listens on, as configured
	// and bound (port 0 resolved).
	ListenAddrs []string `json:"listen_addrs"`
	// Addrs are the multiaddrs the node announces to others (observed and
	// relay addresses included).
	Addrs []string `json:"addrs"`
	// Started is when the node started.
	Started time.Time `json:"started"`
	// UptimeSeconds is the time since Started, in seconds, at the time of
	// the request; the server computes it (0 when Started is zero).
	UptimeSeconds float64 `json:"uptime_seconds"`
	// Peers counts the peers with at least one connection.
	Peers int `json:"peers"`
	// Conns counts the open connections (paths), all peers together.
	Conns int `json:"conns"`
	// Streams counts the open streams, all connections together.
	Streams int `json:"streams"`
	// Reachability is what the node knows of its reachability from
	// outside: "unknown" until AutoNAT runs (it comes with NAT
	// traversal), then "public" or "private".
	Reachability string `json:"reachability"`
}

// PeerView is one peer (GET /v1/peers).
type PeerView struct {
	// ID is the peer's ID, in its string form.
	ID string `json:"id"`
	// Connectedness is go-libp2p's network.Connectedness String
	// ("Connected", "NotConnected", "CanConnect", "CannotConnect",
	// "Limited").
	Connectedness string `json:"connectedness"`
	// Paths counts the peer's open paths (connections).
	Paths int `json:"paths"`
	// SelectedRTTMs is the smoothed round-trip time of the peer's
	// selected path, in milliseconds; 0 when it has none or none measured.
	SelectedRTTMs float64 `json:"selected_rtt_ms"`
	// Realms are the names of the realms the peer is a member of, shared
	// with this node.
	Realms []string `json:"realms"`
	// Pools are the pools the peer's connections count in besides global
	// (core.PoolReporter).
	Pools []core.Pool `json:"pools"`
	// Protected is true when the connection manager never trims the peer.
	Protected bool `json:"protected"`
	// Health is the peer's health.
	Health PeerHealthView `json:"health"`
}

// Direction says which end opened a path.
type Direction string

// The directions of a path.
const (
	// DirectionInbound: the peer dialed this node.
	DirectionInbound Direction = "inbound"
	// DirectionOutbound: this node dialed the peer.
	DirectionOutbound Direction = "outbound"
)

// Tier says how a path reaches its peer.
type Tier string

// The tiers of a path.
const (
	// TierDirect: a direct connection.
	TierDirect Tier = "direct"
	// TierRelayed: a connection through a circuit relay.
	TierRelayed Tier = "relayed"
)

// PathView is one path: one connection to a peer (GET /v1/paths).
type PathView struct {
	// Peer is the remote peer's ID, in its string form.
	Peer string `json:"peer"`
	// ConnID is the connection's ID (network.Conn.ID).
	ConnID string `json:"conn_id"`
	// Local and Remote are the path's multiaddrs.
	Local  string `json:"local"`
	Remote string `json:"remote"`
	// Direction says which end dialed.
	Direction Direction `json:"direction"`
	// Tier is direct or relayed.
	Tier Tier `json:"tier"`
	// State is core.PathState's String ("validating", "active",
	// "standby", "degraded", "dead", "redundant").
	State string `json:"state"`
	// Selected is true for the path that carries the peer's new streams.
	Selected bool `json:"selected"`
	// SmoothedRTTMs and MinRTTMs are quic-go's smoothed and minimum
	// round-trip times, in milliseconds; HeartbeatRTTMs is the latest
	// heartbeat's round trip, in milliseconds. 0 when not measured.
	SmoothedRTTMs  float64 `json:"smoothed_rtt_ms"`
	MinRTTMs       float64 `json:"min_rtt_ms"`
	HeartbeatRTTMs float64 `json:"heartbeat_rtt_ms"`
	// Loss is the fraction of packets lost, in [0, 1].
	Loss float64 `json:"loss"`
	// OpenStreams counts the streams open on the path.
	OpenStreams int `json:"open_streams"`
	// BytesSent and BytesReceived count the path's payload bytes since it
	// opened (core.Activity).
	BytesSent     uint64 `json:"bytes_sent"`
	BytesReceived uint64 `json:"bytes_received"`
	// LastHeartbeat is when the path last answered a heartbeat; zero when
	// it has not yet.
	LastHeartbeat time.Time `json:"last_heartbeat"`
	// Opened is when the connection was established.
	Opened time.Time `json:"opened"`
}

// PoolView is one of the connection manager's pools (GET /v1/pools).
// Counts are connections: a peer with three paths counts three.
type PoolView struct {
	// Name is the pool's name: "global", "unassigned" or
	// "realm:<realm>".
	Name core.Pool `json:"name"`
	// Size counts the pool's connections now.
	Size int `json:"size"`
	// LowWater and HighWater are the pool's watermarks, in connections:
	// at or above HighWater the pool is trimmed down to LowWater.
	LowWater  int `json:"low_water"`
	HighWater int `json:"high_water"`
	// Trimmed counts, for the global and unassigned pools, the
	// connections closed by their trims since the node started; for a
	// realm's pool, the trims run on it (the connections trimmed from
	// realm pools are counted for all realms together, in
	// realmnet_pool_trimmed_connections_total{reason="realm_high_water"}).
	Trimmed uint64 `json:"trimmed"`
	// Refused counts the connections refused at admission on the pool's
	// account since the node started: at the global pool's ceiling or
	// over the per-peer cap. Only the global pool refuses (0 for others).
	Refused uint64 `json:"refused"`
}

// RealmView is one realm the node has joined (GET /v1/realms).
type RealmView struct {
	// Name is the realm's name, as the application joined it.
	Name string `json:"name"`
	// Members are the realm's authenticated members other than this node.
	Members []MemberView `json:"members"`
	// Joined is when the node joined the realm.
	Joined time.Time `json:"joined"`
}

// MemberView is one member of a realm.
type MemberView struct {
	// Peer is the member's peer ID, in its string form.
	Peer string `json:"peer"`
	// Since is when the member was authenticated in the realm.
	Since time.Time `json:"since"`
	// Paths counts the member's open paths (connections).
	Paths int `json:"paths"`
}

// EventView is one of the node's recent events (GET /v1/events).
type EventView struct {
	// At is when the event happened.
	At time.Time `json:"at"`
	// Type names the kind of event, e.g. "peer_connected",
	// "path_switched"; the node chooses the names.
	Type string `json:"type"`
	// Peer is the peer the event concerns, in its string form; empty when
	// none.
	Peer string `json:"peer"`
	// Text describes the event in one line.
	Text string `json:"text"`
}

// Breaker is the state of a peer's dial circuit breaker.
type Breaker string

// The states of a circuit breaker.
const (
	// BreakerClosed: dials to the peer go ahead.
	BreakerClosed Breaker = "closed"
	// BreakerOpen: dials to the peer fail at once until OpenUntil.
	BreakerOpen Breaker = "open"
	// BreakerHalfOpen: one trial dial decides whether the breaker closes.
	BreakerHalfOpen Breaker = "half-open"
)

// PeerHealthView is a peer's health (GET /v1/health, and within PeerView
// and DoctorReport).
type PeerHealthView struct {
	// Peer is the peer's ID, in its string form.
	Peer string `json:"peer"`
	// Breaker is the state of the peer's dial circuit breaker.
	Breaker Breaker `json:"breaker"`
	// OpenUntil is when an open breaker half-opens; null unless Breaker
	// is BreakerOpen.
	OpenUntil *time.Time `json:"open_until"`
	// Quality scores the peer in [0, 1]: 1 is the best.
	Quality float64 `json:"quality"`
	// RecentFailures counts the failed dials of the peer since its last
	// successful one (the swarm's dial backoff; 0 once that has gone
	// stale).
	RecentFailures int `json:"recent_failures"`
}

// DoctorReport is a diagnosis of one peer (GET /v1/doctor/{peer}): what the
// node knows of it and what happened when it tried to reach it.
type DoctorReport struct {
	// Peer is the peer's ID, in its string form.
	Peer string `json:"peer"`
	// Known is true when the node has any record of the peer (addresses,
	// connections, dials, realm membership).
	Known bool `json:"known"`
	// Connectedness is go-libp2p's network.Connectedness String.
	Connectedness string `json:"connectedness"`
	// Addresses are the peer's known multiaddrs and where each came from.
	Addresses []AddressView `json:"addresses"`
	// Dials are the node's recent dials to the peer, oldest first.
	Dials []DialView `json:"dials"`
	// Decisions are the recent admission decisions about the peer (gater,
	// hooks, paths, pools), oldest first.
	Decisions []DecisionView `json:"decisions"`
	// PoolRefusals are the peer's recent connections refused by the
	// connection manager, oldest first.
	PoolRefusals []RefusalView `json:"pool_refusals"`
	// Realms says, for each realm the node has joined, whether the peer is
	// a member.
	Realms []RealmMembershipView `json:"realms"`
	// Paths are the peer's open paths.
	Paths []PathView `json:"paths"`
	// Health is the peer's health; null when the node tracks none.
	Health *PeerHealthView `json:"health"`
	// Verdict sums the diagnosis up in one line.
	Verdict string `json:"verdict"`
}

// AddressView is one known address of a peer.
type AddressView struct {
	// Addr is the multiaddr.
	Addr string `json:"addr"`
	// Sources say where the node has it from: "peerstore" (what
	// identify, the DHT, realm discovery or the application stored),
	// "connection" (a live connection's remote address) or "dht" (the
	// doctor's own lookup).
	Sources []string `json:"sources"`
}

// DialView is one dial attempt to a peer's address.
type DialView struct {
	// At is when the dial started.
	At time.Time `json:"at"`
	// Addr is the multiaddr dialed.
	Addr string `json:"addr"`
	// Error is the dial's error; empty when it succeeded.
	Error string `json:"error"`
	// DurationMs is how long the dial took, in milliseconds.
	DurationMs float64 `json:"duration_ms"`
}

// DecisionView is one admission decision about a peer's connection.
type DecisionView struct {
	// At is when the decision was taken.
	At time.Time `json:"at"`
	// Stage is where: the gater's rules for the peer ("peer_dial") or an
	// address ("addr_dial"), the admission pipeline ("admit"), or a hook
	// point ("before_connect", "after_handshake").
	Stage string `json:"stage"`
	// Hook names the hook that decided; empty when it was not a hook.
	Hook string `json:"hook"`
	// Outcome is what was decided: "allowed", "denied" (a gater rule or
	// an admission stage) or "rejected" (a hook).
	Outcome string `json:"outcome"`
	// Reason says why; empty when allowed without one.
	Reason string `json:"reason"`
}

// RefusalView is one connection refused by the connection manager.
type RefusalView struct {
	// At is when the connection was refused.
	At time.Time `json:"at"`
	// Pool is the pool on whose account it was refused.
	Pool core.Pool `json:"pool"`
	// Reason says why (core.ReasonPoolCeiling,
	// core.ReasonMaxConnsPerPeer, ...).
	Reason core.CloseReason `json:"reason"`
}

// RealmMembershipView is whether a peer is a member of one realm.
type RealmMembershipView struct {
	// Realm is the realm's name.
	Realm string `json:"realm"`
	// Member is true when the peer is an authenticated member.
	Member bool `json:"member"`
	// State says where the peer stands in the realm: "member" or "not a
	// member".
	State string `json:"state"`
}
