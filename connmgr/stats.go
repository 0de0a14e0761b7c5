package connmgr

import (
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/realmnet/realmnet/core"
)

// EvtConnTrimmed is emitted on the event bus for every connection a trim
// closes.
type EvtConnTrimmed struct {
	Peer   peer.ID
	ConnID string
	// Pool is the pool being trimmed.
	Pool core.Pool
	// Reason says why: core.ReasonGlobalHighWater,
	// ReasonUnassignedHighWater, ReasonRealmHighWater, ReasonPoolCeiling or
	// ReasonManualTrim.
	Reason core.CloseReason
}

// PoolStats describes one pool.
type PoolStats struct {
	// Count is the pool's connections.
	Count int
	// LowWater and HighWater are its watermarks.
	LowWater, HighWater int
	// Trims counts the trims of this pool.
	Trims uint64
}

// Stats is a snapshot of the pools and of what the trims closed.
type Stats struct {
	Global, Unassigned PoolStats
	Realms             map[core.RealmID]PoolStats
	// Closed counts the connections closed by trims, by reason (the
	// trim reasons of EvtConnTrimmed.Reason; each is present, 0 or more).
	Closed map[core.CloseReason]uint64
	// Refused counts connections refused at admission (MaxConnsPerPeer, or
	// the newcomer was the cheapest connection at the ceiling).
	Refused uint64
}

var reasons = [...]core.CloseReason{core.ReasonGlobalHighWater, core.ReasonUnassignedHighWater,
	core.ReasonRealmHighWater, core.ReasonPoolCeiling, core.ReasonManualTrim}

type statsCounters struct {
	closedBy                     [len(reasons)]atomic.Uint64
	globalTrims, unassignedTrims atomic.Uint64
	refused                      atomic.Uint64
}

func (s *statsCounters) closed(reason core.CloseReason) {
	for i, r := range reasons {
		if r == reason {
			s.closedBy[i].Add(1)
			return
		}
	}
}

// Stats returns the current counts, watermarks, trims run and connections
// closed per reason.
func (m *Manager) Stats() Stats {
	st := Stats{
		Global: PoolStats{Count: int(m.global.Load()), LowWater: m.cfg.LowWater, HighWater: m.cfg.HighWater,
			Trims: m.stats.globalTrims.Load()},
		Unassigned: PoolStats{Count: int(m.unassigned.Load()), LowWater: m.cfg.Unassigned.LowWater,
			HighWater: m.cfg.Unassigned.HighWater, Trims: m.stats.unassignedTrims.Load()},
		Realms:  make(map[core.RealmID]PoolStats),
		Closed:  make(map[core.CloseReason]uint64, len(reasons)),
		Refused: m.stats.refused.Load(),
	}
	m.realmsMu.RLock()
	for id, rp := range m.realms {
		l := rp.limits.Load()
		st.Realms[id] = PoolStats{Count: int(rp.count.Load()), LowWater: l.LowWater, HighWater: l.HighWater, Trims: rp.trims.Load()}
	}
	m.realmsMu.RUnlock()
	for i, r := range reasons {
		st.Closed[r] = m.stats.closedBy[i].Load()
	}
	return st
}
