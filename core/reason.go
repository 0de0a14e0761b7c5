package core

// CloseReason says why a connection was refused at admission or closed by
// realmnet. The values are short snake_case words, usable as metrics labels.
type CloseReason string

// Reasons of the connection manager (trims and admission).
const (
	// ReasonGlobalHighWater: the global pool was at or above its HighWater.
	ReasonGlobalHighWater CloseReason = "global_high_water"
	// ReasonUnassignedHighWater: the unassigned pool was above its HighWater.
	ReasonUnassignedHighWater CloseReason = "unassigned_high_water"
	// ReasonRealmHighWater: a realm's sub-pool was above its HighWater.
	ReasonRealmHighWater CloseReason = "realm_high_water"
	// ReasonPoolCeiling: the global pool was at its ceiling (HighWater +
	// 10 %) when a connection arrived.
	ReasonPoolCeiling CloseReason = "pool_ceiling"
	// ReasonManualTrim: the application asked (TrimConnections).
	ReasonManualTrim CloseReason = "manual_trim"
	// ReasonMaxConnsPerPeer: the peer already had MaxConnsPerPeer
	// connections.
	ReasonMaxConnsPerPeer CloseReason = "max_conns_per_peer"
)

// Reasons of multipath.
const (
	// ReasonPathRedundant: another connection to the peer uses the same
	// pair of addresses and survives it (both ends pick the same survivor).
	ReasonPathRedundant CloseReason = "path_redundant"
	// ReasonMaxPaths: the peer already had MaxPaths paths.
	ReasonMaxPaths CloseReason = "max_paths"
	// ReasonPathDead: no heartbeat answer for PathIdleTimeout.
	ReasonPathDead CloseReason = "path_dead"
	// ReasonRelayedPathReplaced: a direct path to the peer is confirmed
	// and multipath's RelayedPaths policy is RelayedPathsClose.
	ReasonRelayedPathReplaced CloseReason = "relayed_path_replaced"
)

// Reasons of the gater.
const (
	// ReasonBlocked: a block rule covers the peer or the address.
	ReasonBlocked CloseReason = "blocked"
	// ReasonPeerPolicy: the peer policy (realm-only) refused the peer.
	ReasonPeerPolicy CloseReason = "peer_policy"
	// ReasonHookRejected: an AfterHandshake hook rejected the connection.
	ReasonHookRejected CloseReason = "hook_rejected"
)

// ReasonShutdown: the node is closing.
const ReasonShutdown CloseReason = "shutdown"

// String returns the reason's word.
func (r CloseReason) String() string { return string(r) }

// SwitchReason says why the selected path of a peer changed (multipath's
// EvtPathSelected). snake_case words, usable as metrics labels.
type SwitchReason string

const (
	// SwitchPathAdded: a new path is better than the selected one, or the
	// peer had none.
	SwitchPathAdded SwitchReason = "path_added"
	// SwitchPathRemoved: the selected path's connection closed.
	SwitchPathRemoved SwitchReason = "path_removed"
	// SwitchPathRedundant: the selected path lost to a redundant new one.
	SwitchPathRedundant SwitchReason = "path_redundant"
	// SwitchLowerRTT: another path of the same tier is faster by more than
	// the hysteresis.
	SwitchLowerRTT SwitchReason = "lower_rtt"
	// SwitchHealthier: another path answers heartbeats and the selected
	// one does not (yet, or any more).
	SwitchHealthier SwitchReason = "healthier"
	// SwitchPathDegraded: the selected path's heartbeat is overdue.
	SwitchPathDegraded SwitchReason = "path_degraded"
	// SwitchPathDead: the selected path died (no heartbeat answer for
	// PathIdleTimeout).
	SwitchPathDead SwitchReason = "path_dead"
	// SwitchUpgrade: a direct path replaced a relayed one (a hole punch,
	// or any new direct connection to a peer reached through a relay).
	// It takes over at once, before its first heartbeat answer.
	SwitchUpgrade SwitchReason = "upgrade"
	// SwitchFailoverToRelay: the peer's direct paths are degraded or gone
	// and a relayed path took over.
	SwitchFailoverToRelay SwitchReason = "failover_to_relay"
)

// String returns the reason's word.
func (r SwitchReason) String() string { return string(r) }
