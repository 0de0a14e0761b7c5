// Package multipath will own the set of connections (paths) to each peer:
// heartbeats, RTT-based selection, strategies and failover (issue
// "Multipath"). It will be the swarm's swarm.PathSelector; until then the
// swarm selects the newest connection.
package multipath
