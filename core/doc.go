// Package core is realmnet's vocabulary: the types and the named interfaces
// that realmnet's packages use to talk to each other, in the manner of
// go-libp2p's core/ packages. It owns no state and runs no code of its own;
// it imports nothing of realmnet and only go-libp2p's core/ packages and
// multiaddr, so every other package may import it.
//
// What lives here:
//   - RealmID, the one identifier of a realm below the realm package (pool
//     names, resource scopes, metrics labels).
//   - Pool, PoolLimits and RealmScopeLimits: the connection pools and the
//     limits realms are given.
//   - CloseReason and SwitchReason: why a connection was refused or closed,
//     and why the selected path of a peer changed.
//   - Conn and Activity: a connection as realmnet's packages see it, with
//     the activity counters the swarm samples once for everyone.
//   - AdmissionStage and RefusedError: the stages of the swarm's admission
//     pipeline (docs/architecture.md) and how they refuse a connection.
//   - PathInfo and PathState: what multipath reports of one path.
package core
