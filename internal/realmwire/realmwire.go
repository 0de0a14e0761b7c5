// Package realmwire holds the seam between package node and package realm:
// what the realm service needs of the node's lower layers (Backend) and
// what it is built with (Deps). It is internal, so that this wiring is not
// part of realmnet's public API: applications reach realms through
// node.Node.
package realmwire

import (
	"time"

	"github.com/benbjohnson/clock"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"

	"github.com/realmnet/realmnet/core"
)

// Backend is what the realm service needs of the node's lower layers — the
// connection pools, the resource scopes, the gater's peer policy and the
// paths — in one interface, so the realm package imports none of them. Package
// node implements it. Implementations are safe for concurrent use.
type Backend interface {
	// RealmPoolDefaults returns the node's default watermarks of a realm's
	// connection sub-pool (connmgr.Config.RealmDefaults).
	RealmPoolDefaults() core.PoolLimits
	// SetRealmLimits sets realm id's sub-pool watermarks and its resource
	// scope limits (zero scope fields: the node's defaults). The error
	// names an invalid value.
	SetRealmLimits(id core.RealmID, pool core.PoolLimits, scope core.RealmScopeLimits) error
	// RealmPoolLimits returns realm id's sub-pool watermarks.
	RealmPoolLimits(id core.RealmID) core.PoolLimits
	// AssignRealm puts p, and its connections, into realm id's sub-pool;
	// UnassignRealm takes them out.
	AssignRealm(p peer.ID, id core.RealmID)
	UnassignRealm(p peer.ID, id core.RealmID)
	// ReserveRealmMember charges one member to realm id's resource scope;
	// ReserveRealmStream one application stream in direction dir. Both
	// return an idempotent release function, or a *resource.LimitError
	// matching network.ErrResourceLimitExceeded.
	ReserveRealmMember(id core.RealmID) (release func(), err error)
	ReserveRealmStream(id core.RealmID, dir network.Direction) (release func(), err error)
	// SetPeerPolicy installs the gater's peer policy: allow(p) false
	// refuses p's dials and connections; nil removes the policy.
	SetPeerPolicy(allow func(peer.ID) bool)
	// Paths returns snapshots of p's paths (nil when not connected).
	Paths(p peer.ID) []core.PathInfo
}

// Deps are what the realm service works through.
type Deps struct {
	// Host is the libp2p host over realmnet's swarm; required.
	Host host.Host
	// InternalBus, when set, is the bus under the host's for the realm
	// service's own long-lived components (the gossipsub router): their
	// subscriptions are not the application's, which the node's Shutdown
	// ends first and refuses afterwards (a router made just before
	// Shutdown would fail to subscribe, and go-libp2p-pubsub then leaks a
	// goroutine). Nil: the host's bus.
	InternalBus event.Bus
	// Backend reaches pools, resource scopes, peer policy and paths;
	// required.
	Backend Backend
	// Routing announces and finds members (the DHT); nil disables DHT
	// discovery.
	Routing routing.ContentRouting
	// Clock is the time of reconnect graces, the realm-only policy and
	// handshake retries (github.com/benbjohnson/clock); nil is the real
	// clock. Tests pass a mock clock to move time without sleeping; network
	// deadlines and signed timestamps stay in real time.
	Clock clock.Clock
	// RealmOnly, when not nil, turns the realm-only policy on.
	RealmOnly *RealmOnly
	// PublicRelay is set when the node runs a public relay service
	// (node.RelayService): realm relays then use it instead of their own.
	PublicRelay bool
}

// RealmOnly configures the realm-only policy: peers must authenticate into
// a shared realm within AuthTimeout (> 0) of connecting, else they are
// disconnected and refused for Backoff (> 0). Exempt (may be nil) names
// peers the policy never touches (bootstrap and allowlisted peers).
type RealmOnly struct {
	AuthTimeout time.Duration
	Backoff     time.Duration
	Exempt      func(peer.ID) bool
}
