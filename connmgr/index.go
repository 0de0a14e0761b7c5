package connmgr

import (
	"math"
	"sync"
)

// Row flags of the connection index.
const (
	rowAuthenticated uint8 = 1 << iota // the peer was once assigned to a realm
	rowUnassigned                      // the peer is in no realm
	rowMulti                           // the peer has several connections
	rowRedundant                       // not the peer's newest path (the default selection)
)

// connIndex is the dense per-connection table trims select victims from:
// one row per accounted connection, its peer-level inputs (score without the
// activity bonus, flags, the peer's last activity) kept in parallel slices
// and updated where they change — tags, decaying tags, realm assignment,
// activity sampling, admission and removal — so that a trim scans arrays
// instead of walking the per-peer maps. The connection-level inputs that
// tests and the sampler write in place (lastActive, throughput) stay in
// connInfo, reached through info only for the few rows a trim orders.
//
// Locking: mu is taken after segment locks, never before one. The columns
// and ci.slot are written under mu (and the segment lock of the row's
// peer, except the slot of a row that moves). A selection holds every
// segment lock and mu: the connection fields it reads through info are
// written under their segment's lock (tests age connections that way).
type connIndex struct {
	mu     sync.Mutex
	info   []*connInfo
	score  []int64 // tag values + RealmWeight × realms
	flags  []uint8
	active []int64 // the peer's last activity, unix nanoseconds
	// opened is ci.opened at admission, unix nanoseconds. ci.opened never
	// moves forward (tests move it back to age a connection), so a row
	// this column puts past its grace period is past it; only the others
	// are read through info.
	opened []int64
}

// add appends a row for ci; mu is held.
func (x *connIndex) add(ci *connInfo) {
	ci.slot = int32(len(x.info))
	x.info = append(x.info, ci)
	x.score = append(x.score, 0)
	x.flags = append(x.flags, 0)
	x.active = append(x.active, math.MinInt64)
	x.opened = append(x.opened, ci.opened)
}

// remove drops ci's row, moving the last row into its place; mu is held.
func (x *connIndex) remove(ci *connInfo) {
	i, last := ci.slot, int32(len(x.info)-1)
	if i != last {
		moved := x.info[last]
		x.info[i], x.score[i], x.flags[i], x.active[i] = moved, x.score[last], x.flags[last], x.active[last]
		x.opened[i] = x.opened[last]
		moved.slot = i
	}
	x.info[last] = nil
	x.info, x.score, x.flags, x.active = x.info[:last], x.score[:last], x.flags[:last], x.active[:last]
	x.opened = x.opened[:last]
	ci.slot = -1
}

// refresh rewrites the rows of pi's connections; mu and pi's segment lock
// are held.
func (x *connIndex) refresh(pi *peerInfo, realmWeight int) {
	if len(pi.conns) == 0 {
		return
	}
	score := int64(pi.value) + int64(realmWeight)*int64(len(pi.realms))
	var flags uint8
	if pi.authenticated {
		flags |= rowAuthenticated
	}
	if len(pi.realms) == 0 {
		flags |= rowUnassigned
	}
	var keep *connInfo
	if len(pi.conns) > 1 {
		flags |= rowMulti
		// As Manager.selected without a selector: the newest by
		// Stat().Opened, the first of equals.
		keep = pi.conns[0]
		for _, ci := range pi.conns[1:] {
			if ci.statOpened > keep.statOpened {
				keep = ci
			}
		}
	}
	active := pi.active
	for _, ci := range pi.conns {
		f := flags
		if keep != nil && ci != keep {
			f |= rowRedundant
		}
		x.score[ci.slot], x.flags[ci.slot], x.active[ci.slot] = score, f, active
	}
}

// peerChangedLocked brings the index up to date after a change of pi's
// value, realms or activity; pi's segment lock is held.
func (m *Manager) peerChangedLocked(pi *peerInfo) {
	if len(pi.conns) == 0 {
		return
	}
	m.index.mu.Lock()
	m.index.refresh(pi, m.cfg.RealmWeight)
	m.index.mu.Unlock()
}
