package core

import "strings"

// Pool names one of the connection manager's pools (docs/connection-management.md):
// the global pool of every connection, the unassigned pool of connections to
// peers in no shared realm, or one realm's sub-pool. A Pool is printable and
// comparable; use it as a metrics label or a map key.
type Pool string

// The pools that are not a realm's.
const (
	// PoolGlobal holds every live connection, several per peer.
	PoolGlobal Pool = "global"
	// PoolUnassigned holds the connections to peers in no shared realm
	// (DHT, infrastructure, not yet authenticated).
	PoolUnassigned Pool = "unassigned"
)

// realmPoolPrefix starts the name of a realm's sub-pool.
const realmPoolPrefix = "realm:"

// RealmPool returns the name of realm id's sub-pool: "realm:" and the ID.
func RealmPool(id RealmID) Pool { return Pool(realmPoolPrefix + string(id)) }

// Realm returns the realm whose sub-pool p is; false for PoolGlobal,
// PoolUnassigned and unknown names.
func (p Pool) Realm() (RealmID, bool) {
	id, ok := strings.CutPrefix(string(p), realmPoolPrefix)
	if !ok || id == "" {
		return "", false
	}
	return RealmID(id), true
}

// String returns the pool's name.
func (p Pool) String() string { return string(p) }

// PoolLimits are a pool's watermarks, counted in connections (a peer with
// three paths counts three). At or above HighWater the pool is trimmed down
// to LowWater; for a realm's sub-pool LowWater is also a reservation that
// global trims respect. Valid limits have 0 ≤ LowWater < HighWater.
type PoolLimits struct {
	LowWater, HighWater int
}

// RealmScopeLimits bound what a realm may hold in the resource manager's
// realm scope (package resource). Zero means unlimited in a default; in a
// per-realm override a zero field takes the default's value. Negative values
// are invalid.
type RealmScopeLimits struct {
	// Members counts the realm's authenticated members: one per member,
	// whatever its number of connections (the realm's connection sub-pool,
	// PoolLimits, counts connections).
	Members int `json:",omitempty"`
	// StreamsInbound and StreamsOutbound count the realm's open application
	// streams (realm.Realm.NewStream and the streams its handlers receive).
	StreamsInbound  int `json:",omitempty"`
	StreamsOutbound int `json:",omitempty"`
}
