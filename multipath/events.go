package multipath

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/realmnet/realmnet/core"
)

// EvtPathAdded is emitted on the host's event bus when a connection becomes a
// path of its peer.
type EvtPathAdded struct {
	Peer peer.ID
	Path core.PathInfo
}

// EvtPathSelected is emitted when StrategyBest's selected path of a peer
// changes. Old or New is "" when there was, or is, no path.
type EvtPathSelected struct {
	Peer     peer.ID
	Old, New string // connection IDs
	// Reason says why the selection changed.
	Reason core.SwitchReason
}

// EvtPathDead is emitted when a path has not answered a heartbeat for
// PathIdleTimeout; its connection is closed right after.
type EvtPathDead struct {
	Peer      peer.ID
	ConnID    string
	SilentFor time.Duration
}

// EvtPathRemoved is emitted when a path's connection has closed.
type EvtPathRemoved struct {
	Peer   peer.ID
	ConnID string
}
