package connmgr

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/realmnet/realmnet/core"
)

// Victim classes, closed in this order.
const (
	classRedundant  = iota // a non-selected path of a peer with several
	classUnassigned        // the last connection of a peer in no realm
	classMember            // the last connection of a realm member
)

// activityBonus is added to the score of a peer whose connections carried
// traffic (a stream opened or bytes moved) within the last SilencePeriod.
const activityBonus = 10

type scope int

const (
	scopeGlobal scope = iota
	scopeUnassigned
	scopeRealm
)

// candidate is a snapshot of one connection that a trim may close.
type candidate struct {
	conn          core.Conn
	realms        []*realmPool
	class         int
	score         int
	authenticated bool
	lastActive    int64 // unix nanoseconds
	throughput    float64
	inbound       bool
	opened        int64 // unix nanoseconds
	group         int32 // index of the peer's first candidate
}

// compareCandidates orders victims: class, then ascending score, then
// torrent-style (anacrolix/torrent worse-conns.go): never authenticated
// first, idle longest, lowest throughput, inbound before outbound.
func compareCandidates(a, b *candidate) int {
	if c := cmp.Compare(a.class, b.class); c != 0 {
		return c
	}
	if c := cmp.Compare(a.score, b.score); c != 0 {
		return c
	}
	if a.authenticated != b.authenticated {
		if !a.authenticated {
			return -1
		}
		return 1
	}
	if c := cmp.Compare(a.lastActive, b.lastActive); c != 0 {
		return c
	}
	if c := cmp.Compare(a.throughput, b.throughput); c != 0 {
		return c
	}
	if a.inbound != b.inbound {
		if a.inbound {
			return -1
		}
		return 1
	}
	return 0
}

// sortKey packs the leading fields of compareCandidates into two integers,
// so that sorting moves 24-byte keys and compares integers; ties fall back
// to compareCandidates.
type sortKey struct {
	k1, k2 uint64
	index  int32
}

// keyOf packs class (2 bits), score (31 bits, offset by 2^30 and clamped)
// and authenticated (1 bit) into k1, and lastActive into k2.
func keyOf(c *candidate, index int) sortKey {
	score := min(max(int64(c.score)+1<<30, 0), 1<<31-1)
	k1 := uint64(c.class)<<62 | uint64(score)<<31
	if c.authenticated {
		k1 |= 1 << 30
	}
	return sortKey{k1: k1, k2: uint64(max(c.lastActive, 0)), index: int32(index)}
}

func (m *Manager) compareKeys(cands []candidate) func(a, b sortKey) int {
	return func(a, b sortKey) int {
		if a.k1 != b.k1 {
			return cmp.Compare(a.k1, b.k1)
		}
		if a.k2 != b.k2 {
			return cmp.Compare(a.k2, b.k2)
		}
		return compareCandidates(&cands[a.index], &cands[b.index])
	}
}

// trimResult says what a trim did.
type trimResult struct {
	closed   int
	newcomer bool // the connection being admitted was chosen
}

// trimLocked closes up to need connections of the scope (all, unassigned,
// or realm target) in victim order; m.trimMu is held. Protected peers are
// skipped, and so are connections inside their grace period unless
// ignoreGrace. No realm is taken below its LowWater, except target by a
// realm trim (need stops it there). newcomer, when not nil, is a connection
// being admitted and not yet accounted: it competes as a candidate.
//
// Only the cheapest candidates are ordered: a quickselect finds the 2×need
// (+64) smallest keys, only those are sorted, and the rest is sorted only if
// skipped candidates (reservations) leave the walk short.
func (m *Manager) trimLocked(sc scope, target *realmPool, need int, ignoreGrace bool, reason core.CloseReason, newcomer core.Conn) trimResult {
	if need <= 0 {
		return trimResult{}
	}
	now := m.clock.Now()
	cands := m.snapshot(sc, target, now, newcomer)

	graceStart := now.Add(-m.cfg.GracePeriod).UnixNano()
	keys := m.keyBuffer[:0]
	for i := range cands {
		if ignoreGrace || cands[i].opened <= graceStart {
			keys = append(keys, keyOf(&cands[i], i))
		}
	}
	compare := m.compareKeys(cands)
	head := min(len(keys), 2*need+64)
	selectSmallest(keys, head, compare)
	slices.SortFunc(keys[:head], compare)

	var pending []realmCount
	var victims []int32
	for i := 0; i < len(keys) && len(victims) < need; i++ {
		if i == head {
			slices.SortFunc(keys[head:], compare) // rarely: reservations skipped many
		}
		c := &cands[keys[i].index]
		// The newcomer is not counted in its realms yet: refusing it
		// takes no realm below its reservation.
		if c.conn != newcomer && !m.reservationAllows(c.realms, target, pending) {
			continue
		}
		for _, rp := range c.realms {
			pending = addPending(pending, rp)
		}
		victims = append(victims, keys[i].index)
	}

	var res trimResult
	for _, vi := range victims {
		v := &cands[vi]
		if v.conn == newcomer && newcomer != nil {
			res.newcomer = true
			m.stats.closed(reason)
			continue
		}
		if !m.known(v.conn) {
			continue // closed meanwhile
		}
		// Close first, then free the slot: a concurrent admission must not
		// add its connection while the victim is still in the swarm.
		_ = v.conn.CloseWithError(network.ConnGarbageCollected)
		m.forget(v.conn) // false when Disconnected already did it
		res.closed++
		m.stats.closed(reason)
		if m.events != nil {
			m.trimEvents = append(m.trimEvents, EvtConnTrimmed{Peer: v.conn.RemotePeer(), ConnID: v.conn.ID(), Pool: poolOf(sc, target), Reason: reason})
		}
	}
	clear(cands) // drop the references to connections
	m.trimBuffer, m.keyBuffer = cands[:0], keys[:0]
	m.trimCount.Add(1)
	m.lastTrim.Store(now.UnixNano())
	switch sc {
	case scopeGlobal:
		m.stats.globalTrims.Add(1)
	case scopeUnassigned:
		m.stats.unassignedTrims.Add(1)
	case scopeRealm:
		target.trims.Add(1)
	}
	log.Debugw("trimmed", "pool", poolOf(sc, target), "reason", reason, "closed", res.closed, "need", need)
	return res
}

// selectSmallest reorders keys so that its first k elements are the k
// smallest (in no particular order): Hoare's quickselect with a
// median-of-three pivot, O(len(keys)) on average.
func selectSmallest(keys []sortKey, k int, compare func(a, b sortKey) int) {
	lo, hi := 0, len(keys)-1
	for lo < hi && k > lo && k <= hi {
		mid := lo + (hi-lo)/2
		if compare(keys[mid], keys[lo]) < 0 {
			keys[mid], keys[lo] = keys[lo], keys[mid]
		}
		if compare(keys[hi], keys[lo]) < 0 {
			keys[hi], keys[lo] = keys[lo], keys[hi]
		}
		if compare(keys[hi], keys[mid]) < 0 {
			keys[hi], keys[mid] = keys[mid], keys[hi]
		}
		pivot := keys[mid]
		i, j := lo, hi
		for i <= j {
			for compare(keys[i], pivot) < 0 {
				i++
			}
			for compare(keys[j], pivot) > 0 {
				j--
			}
			if i <= j {
				keys[i], keys[j] = keys[j], keys[i]
				i++
				j--
			}
		}
		// [lo, j] ≤ pivot ≤ [i, hi]
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return
		}
	}
}

func poolOf(sc scope, target *realmPool) core.Pool {
	switch sc {
	case scopeUnassigned:
		return core.PoolUnassigned
	case scopeRealm:
		return target.pool
	}
	return core.PoolGlobal
}

// realmCount is a pending decrement of one realm's count during a trim.
type realmCount struct {
	realm *realmPool
	n     int64
}

func addPending(pending []realmCount, rp *realmPool) []realmCount {
	for i := range pending {
		if pending[i].realm == rp {
			pending[i].n++
			return pending
		}
	}
	return append(pending, realmCount{rp, 1})
}

// reservationAllows reports whether closing one more connection of a peer in
// realms keeps every realm but target at or above its LowWater.
func (m *Manager) reservationAllows(realms []*realmPool, target *realmPool, pending []realmCount) bool {
	for _, rp := range realms {
		if rp == target {
			continue
		}
		left := rp.count.Load()
		for _, p := range pending {
			if p.realm == rp {
				left -= p.n
			}
		}
		if left <= int64(rp.limits.Load().LowWater) {
			return false
		}
	}
	return true
}

// snapshot copies the candidates of a trim out of the peer table, then
// marks the non-selected paths of multi-path peers as redundant.
func (m *Manager) snapshot(sc scope, target *realmPool, now time.Time, newcomer core.Conn) []candidate {
	cands := m.trimBuffer[:0]
	if need := int(m.global.Load()) + 1; cap(cands) < need {
		cands = make([]candidate, 0, need+need/8)
	}
	activeSince := now.Add(-m.cfg.SilencePeriod)
	var newcomerPeer peer.ID
	newcomerSeen := false
	if newcomer != nil {
		newcomerPeer = newcomer.RemotePeer()
	}
	newcomerCandidate := func(base candidate) candidate {
		base.conn = newcomer
		// Among equals a newcomer yields: it counts as idle the longest,
		// so it displaces only what is cheaper than itself (a redundant
		// path, a lower class or score) and full pools do not churn.
		base.lastActive, base.opened = 0, now.UnixNano()
		base.inbound = newcomer.Stat().Direction == network.DirInbound
		return base
	}
	m.protectedMu.RLock()
	for i := range m.segments {
		s := &m.segments[i]
		s.Lock()
		for p, pi := range s.peers {
			isNewcomerPeer := newcomer != nil && p == newcomerPeer
			if len(pi.conns) == 0 && !isNewcomerPeer {
				continue
			}
			if !inScope(sc, target, pi.realms) {
				continue
			}
			if _, ok := m.protected[p]; ok {
				if isNewcomerPeer {
					newcomerSeen = true
				}
				continue
			}
			score := pi.value + m.cfg.RealmWeight*len(pi.realms)
			if pi.active.After(activeSince) {
				score += activityBonus
			}
			class := classMember
			if len(pi.realms) == 0 && sc == scopeGlobal {
				class = classUnassigned
			}
			base := candidate{realms: pi.realms, class: class, score: score,
				authenticated: pi.authenticated, group: int32(len(cands))}
			for _, ci := range pi.conns {
				cand := base
				cand.conn = ci.conn
				cand.lastActive = ci.lastActive.UnixNano()
				cand.throughput = ci.throughput
				cand.inbound = ci.inbound
				cand.opened = ci.opened.UnixNano()
				cands = append(cands, cand)
			}
			if isNewcomerPeer {
				newcomerSeen = true
				cands = append(cands, newcomerCandidate(base))
			}
		}
		s.Unlock()
	}
	m.protectedMu.RUnlock()
	if newcomer != nil && !newcomerSeen && !m.IsProtected(newcomerPeer, "") {
		class := classMember
		if sc == scopeGlobal {
			class = classUnassigned
		}
		cands = append(cands, newcomerCandidate(candidate{class: class, group: int32(len(cands))}))
	}
	m.markRedundant(cands)
	return cands
}

func inScope(sc scope, target *realmPool, realms []*realmPool) bool {
	switch sc {
	case scopeUnassigned:
		return len(realms) == 0
	case scopeRealm:
		return slices.Contains(realms, target)
	}
	return true
}

// markRedundant gives every non-selected path of a peer with several
// connections the class classRedundant. Candidates of one peer are
// contiguous and share group.
func (m *Manager) markRedundant(cands []candidate) {
	var conns []network.Conn
	for start := 0; start < len(cands); {
		end := start + 1
		for end < len(cands) && cands[end].group == cands[start].group {
			end++
		}
		if end-start > 1 {
			conns = conns[:0]
			for i := start; i < end; i++ {
				conns = append(conns, cands[i].conn)
			}
			keep := m.selected(cands[start].conn.RemotePeer(), conns)
			for i := start; i < end; i++ {
				if cands[i].conn != keep {
					cands[i].class = classRedundant
				}
			}
		}
		start = end
	}
}

func (m *Manager) needGlobal() int { return int(m.global.Load()) - m.cfg.LowWater }

// TrimOpenConns trims every pool that is at or above its HighWater, then the
// global pool down to LowWater, at once. Concurrent calls coalesce: a call
// that waited for a running trim does not trim again.
func (m *Manager) TrimOpenConns(_ context.Context) {
	before := m.fullTrims.Load()
	m.trimMu.Lock()
	defer m.unlockTrim()
	if m.fullTrims.Load() != before {
		return // a full trim ran while this call waited
	}
	m.trimPoolsLocked(true)
	m.trimLocked(scopeGlobal, nil, m.needGlobal(), false, core.ReasonGlobalHighWater, nil)
	m.fullTrims.Add(1)
}

// TrimConnections closes up to n connections in victim order (protected
// peers and connections in their grace period excluded) and returns how many
// it closed. The error is the context's.
func (m *Manager) TrimConnections(ctx context.Context, n int) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.trimMu.Lock()
	defer m.unlockTrim()
	return m.trimLocked(scopeGlobal, nil, n, false, core.ReasonManualTrim, nil).closed, nil
}

// trimPoolsLocked trims the unassigned pool and every realm pool that is
// above (atOrAbove: at or above) its HighWater down to its LowWater.
func (m *Manager) trimPoolsLocked(atOrAbove bool) {
	over := func(count int64, high int) bool {
		if atOrAbove {
			return count >= int64(high)
		}
		return count > int64(high)
	}
	if n := m.unassigned.Load(); over(n, m.cfg.Unassigned.HighWater) {
		m.trimLocked(scopeUnassigned, nil, int(n)-m.cfg.Unassigned.LowWater, false, core.ReasonUnassignedHighWater, nil)
	}
	m.realmsMu.RLock()
	realms := make([]*realmPool, 0, len(m.realms))
	for _, rp := range m.realms {
		realms = append(realms, rp)
	}
	m.realmsMu.RUnlock()
	for _, rp := range realms {
		limits := rp.limits.Load()
		if n := rp.count.Load(); over(n, limits.HighWater) {
			m.trimLocked(scopeRealm, rp, int(n)-limits.LowWater, false, core.ReasonRealmHighWater, nil)
		}
	}
}

// background runs the periodic check every SilencePeriod (sample activity,
// expire temporary entries, trim pools at or above HighWater) and the
// immediate trims that triggers ask for.
func (m *Manager) background() {
	defer m.wg.Done()
	ticker := m.clock.Ticker(m.cfg.SilencePeriod)
	defer ticker.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-ticker.C:
			m.sampleActivity()
			m.expireTemporary()
			m.trimMu.Lock()
			m.trimPoolsLocked(true)
			if int(m.global.Load()) >= m.cfg.HighWater {
				m.trimLocked(scopeGlobal, nil, m.needGlobal(), false, core.ReasonGlobalHighWater, nil)
			}
			m.unlockTrim()
		case <-m.trigger:
			m.trimMu.Lock()
			m.trimPoolsLocked(false)
			m.unlockTrim()
		}
	}
}

// sampleActivity records, per connection, whether it carried traffic since
// the last sample (streams opened, QUIC bytes moved) and its throughput.
func (m *Manager) sampleActivity() {
	now := m.clock.Now()
	period := m.cfg.SilencePeriod.Seconds()
	for i := range m.segments {
		s := &m.segments[i]
		s.Lock()
		for _, pi := range s.peers {
			for _, ci := range pi.conns {
				a := ci.conn.Activity()
				streams, bytes := a.StreamsOpened, a.Bytes()
				if streams != ci.streams || bytes != ci.bytes {
					ci.lastActive = now
					pi.active = now
				}
				ci.throughput = float64(bytes-ci.bytes) / period
				ci.streams, ci.bytes = streams, bytes
			}
		}
		s.Unlock()
	}
}

// expireTemporary drops tag-only entries whose grace period has passed
// without a connection (go-libp2p semantics). Entries that hold realm
// assignments or decaying tags stay.
func (m *Manager) expireTemporary() {
	cutoff := m.clock.Now().Add(-m.cfg.GracePeriod)
	for i := range m.segments {
		s := &m.segments[i]
		s.Lock()
		for p, pi := range s.peers {
			if pi.temp && len(pi.conns) == 0 && len(pi.realms) == 0 && len(pi.decaying) == 0 && pi.firstSeen.Before(cutoff) {
				delete(s.peers, p)
			}
		}
		s.Unlock()
	}
}
