package node

import (
	"context"

	libp2pconnmgr "github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/swarm"
)

// The node hands its components to applications through the narrow views
// below: what an application may use, without the wiring (admission stages,
// path selectors, notifiees, realm assignment) that only the node may call.
// An application that needs a component itself (a test, a custom
// component) can have it from the node's uber/fx graph with
// Fx(fx.Populate(&x)).

// Network is the node's swarm as applications see it: go-libp2p's
// network.Network (connections, streams, notifications, several
// connections — paths — per peer) plus realmnet's path dial and admission
// counters. Safe for concurrent use.
type Network interface {
	network.Network
	// DialPath dials p at addr as a new path even when already connected,
	// and returns the connection that survived admission (see
	// swarm.Swarm.DialPath for its errors).
	DialPath(ctx context.Context, p peer.ID, addr ma.Multiaddr) (network.Conn, error)
	// AdmissionStats counts the connections admitted and refused, by
	// reason.
	AdmissionStats() swarm.AdmissionStats
}

// PathManager is the multipath manager as applications see it: path
// snapshots and the selection strategy. Safe for concurrent use.
type PathManager interface {
	// Paths returns snapshots of the paths to p (nil when not connected).
	Paths(p peer.ID) []core.PathInfo
	// Selected returns the path selected for p; false when none.
	Selected(p peer.ID) (core.PathInfo, bool)
	// SetStrategy sets the default path selection strategy (f only with
	// multipath.StrategyCustom); the error names a bad strategy.
	SetStrategy(s multipath.Strategy, f multipath.SelectFunc) error
	// SetPeerStrategy sets p's strategy, overriding the default.
	SetPeerStrategy(p peer.ID, s multipath.Strategy, f multipath.SelectFunc) error
	// Config returns the configuration in force.
	Config() multipath.Config
}

// ConnManager is the connection manager as applications see it:
// go-libp2p's connmgr.ConnManager (tags, protection, trims, decaying tags)
// plus realmnet's pools. Safe for concurrent use.
type ConnManager interface {
	libp2pconnmgr.ConnManager
	// Config returns the configuration in force.
	Config() connmgr.Config
	// Connections returns every connection (path) to p; Connection p's
	// selected one (nil when not connected).
	Connections(p peer.ID) []network.Conn
	Connection(p peer.ID) network.Conn
	// ConnectionsMap returns every connection, by peer; ConnectionCount
	// their number.
	ConnectionsMap() map[peer.ID][]network.Conn
	ConnectionCount() int
	// PoolsOf returns the pools p's connections count in.
	PoolsOf(p peer.ID) []core.Pool
	// Realms returns the realms whose sub-pools p is in.
	Realms(p peer.ID) []core.RealmID
	// RealmConnections returns realm r's sub-pool connections.
	RealmConnections(r core.RealmID) []network.Conn
	// RealmLimitsOf returns realm r's sub-pool watermarks; SetRealmLimits
	// sets them (the error names a bad value).
	RealmLimitsOf(r core.RealmID) core.PoolLimits
	SetRealmLimits(r core.RealmID, l core.PoolLimits) error
	// Stats returns the pools' counts, watermarks, trims and closes.
	Stats() connmgr.Stats
	// TrimConnections closes up to n connections in victim order and
	// returns how many it closed.
	TrimConnections(ctx context.Context, n int) (int, error)
}

var (
	_ Network     = (*swarm.Swarm)(nil)
	_ PathManager = (*multipath.Manager)(nil)
	_ ConnManager = (*connmgr.Manager)(nil)
)
