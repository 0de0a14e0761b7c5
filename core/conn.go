package core

import (
	"context"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Activity is what a connection has carried since it was established:
// counters only grow. The swarm samples them in its connection wrapper; the
// connection manager (idle time, throughput) and multipath (busy paths) read
// the same numbers.
type Activity struct {
	// StreamsOpened counts the streams opened on the connection, in both
	// directions, heartbeat streams included.
	StreamsOpened uint64
	// BytesSent and BytesReceived are QUIC payload bytes, retransmissions
	// included (quic-go's ConnectionStats); 0 on a connection that is not
	// QUIC.
	BytesSent, BytesReceived uint64
}

// Bytes is BytesSent + BytesReceived.
func (a Activity) Bytes() uint64 { return a.BytesSent + a.BytesReceived }

// Conn is a connection as realmnet's packages see it: go-libp2p's
// network.Conn plus its activity counters. The swarm's connections implement
// it; its methods are safe for concurrent use.
type Conn interface {
	network.Conn
	// Activity returns the connection's counters; it does not allocate.
	Activity() Activity
}

// Stage names a stage of the swarm's admission pipeline, in the order they
// run (docs/architecture.md).
type Stage string

const (
	// StageGater: peer and address rules, the peer policy, the
	// AfterHandshake hooks (package gater).
	StageGater Stage = "gater"
	// StagePaths: path admission — redundant connections and MaxPaths
	// (package multipath).
	StagePaths Stage = "paths"
	// StagePools: the connection manager's ceiling and MaxConnsPerPeer
	// (package connmgr).
	StagePools Stage = "pools"
)

// AdmissionStage is one stage of the swarm's admission pipeline. The swarm
// runs the stages in order on every new connection — authenticated by the
// transport, not yet announced to anyone — holding a per-peer lock, so the
// stages see a peer's connections one at a time. A connection refused by a
// stage is closed and never announced: no Notifiee, no event, no pool count.
type AdmissionStage interface {
	// AdmitConn admits c or refuses it with an error, normally a
	// *RefusedError saying why and with which code c is closed. It may
	// reserve state for c (a pool slot, a path), which AbortConn releases;
	// once every stage has admitted c the swarm announces it, and releases
	// the state through the stage's own notifiee (Disconnected) later.
	// ctx bounds the stage (hooks honour it).
	AdmitConn(ctx context.Context, c Conn) error
	// AbortConn releases what AdmitConn reserved for c, because a later
	// stage refused c or the swarm closed meanwhile. It is called at most
	// once per admitted connection, never for a refused one.
	AbortConn(c Conn)
}

// ErrRefused is matched (errors.Is) by every *RefusedError.
var ErrRefused = errors.New("connection refused at admission")

// RefusedError is the error of a refused connection: which stage, why, the
// code the connection is closed with, and the stage's own error (errors.Is
// and errors.As reach it: hooks.ErrRejected, gater.ErrPeerBlocked, ...).
type RefusedError struct {
	Stage  Stage
	Reason CloseReason
	// Code is sent to the peer when the connection is closed.
	Code network.ConnErrorCode
	// Peer is the connection's remote peer.
	Peer peer.ID
	// Survivor, set only with ReasonPathRedundant, is the connection that
	// survives in the refused one's place (the same pair of addresses); the
	// swarm hands it to the dialer instead of an error.
	Survivor Conn
	// Err is the stage's own reason; may be nil.
	Err error
}

// Error names the stage, the reason, the peer and the stage's error.
func (e *RefusedError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("connection to %s refused by %s stage (%s)", e.Peer, e.Stage, e.Reason)
	}
	return fmt.Sprintf("connection to %s refused by %s stage (%s): %v", e.Peer, e.Stage, e.Reason, e.Err)
}

// Is reports whether target is ErrRefused.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// Unwrap returns the stage's own error.
func (e *RefusedError) Unwrap() error { return e.Err }

// PoolReporter says which pools a peer's connections count in; the
// connection manager implements it and the swarm puts the answer in its
// EvtConnectionOpened.
type PoolReporter interface {
	// PoolsOf returns p's pools besides PoolGlobal: PoolUnassigned, or
	// the sub-pool of each realm p is a member of. It allocates a new slice.
	PoolsOf(p peer.ID) []Pool
}

// PathSelector chooses which connection (path) to a peer carries a new
// stream. The swarm calls SelectPath on every NewStream and DialPeer with
// the peer's announced connections, oldest first (never empty, none closed
// at the time of the call). It returns one of them, or nil when none is
// usable (the swarm then dials). Implementations are safe for concurrent use,
// do not call back into the swarm and do not allocate: SelectPath is on the
// stream-open path. multipath.Manager implements it.
type PathSelector interface {
	SelectPath(p peer.ID, conns []network.Conn) network.Conn
}

// DialGater decides on dials before any packet is sent, with a reason: the
// swarm asks CheckPeerDial once per dial of a peer and CheckAddrDial for each
// address it would try. realmnet's gater implements it (block and allow
// rules, the peer policy, the BeforeConnect hooks).
type DialGater interface {
	// CheckPeerDial returns nil when p may be dialed, else why not.
	CheckPeerDial(p peer.ID) error
	// CheckAddrDial returns nil when addr may be dialed for p, else why
	// not.
	CheckAddrDial(p peer.ID, addr ma.Multiaddr) error
}
