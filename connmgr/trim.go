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

// candidate is what victim order compares of one connection.
type candidate struct {
	class         int
	score         int
	authenticated bool
	lastActive    int64 // unix nanoseconds
	throughput    float64
	inbound       bool
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
// to compareCandidates. index is the connection's row in the index, or
// newcomerIndex.
type sortKey struct {
	k1, k2 uint64
	index  int32
}

// newcomerIndex is the sortKey index of the connection being admitted.
const newcomerIndex = -1

// keyOf packs class (2 bits), score (31 bits, offset by 2^30 and clamped)
// and authenticated (1 bit) into k1, and lastActive into k2.
func keyOf(c *candidate, index int32) sortKey {
	score := min(max(int64(c.score)+1<<30, 0), 1<<31-1)
	k1 := uint64(c.class)<<62 | uint64(score)<<31
	if c.authenticated {
		k1 |= 1 << 30
	}
	return sortKey{k1: k1, k2: uint64(max(c.lastActive, 0)), index: index}
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
func (m *Manager) trimLocked(sc scope, target *realmPool, need int, ignoreGrace bool, reason core.CloseReason, newcomer core.Conn) trimResult {
	if need <= 0 {
		return trimResult{}
	}
	now := m.clock.Now()
	victims := m.selectVictimsLocked(sc, target, need, ignoreGrace, newcomer, now)

	var res trimResult
	for _, v := range victims {
		if v == nil {
			res.newcomer = true
			m.stats.closed(reason)
			continue
		}
		if v.removed.Load() {
			continue // closed meanwhile
		}
		// Close first, then free the slot: a concurrent admission must not
		// add its connection while the victim is still in the swarm.
		_ = v.conn.CloseWithError(network.ConnGarbageCollected)
		m.forgetInfo(v) // false when Disconnected already did it
		res.closed++
		m.stats.closed(reason)
		if m.events != nil {
			m.trimEvents = append(m.trimEvents, EvtConnTrimmed{Peer: v.peer.id, ConnID: v.conn.ID(), Pool: poolOf(sc, target), Reason: reason})
		}
	}
	clear(victims) // drop the references to connections
	m.victimBuffer = victims[:0]
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

// newcomerPeer is what a selection knows of the peer of the connection
// being admitted, copied under its segment lock.
type newcomerPeer struct {
	pi     *peerInfo // nil: no entry
	base   candidate // class, score, authenticated of the peer
	realms []*realmPool
	// inScope: the peer's entry is in the trim's scope; otherwise the
	// newcomer competes alone with score 0.
	inScope bool
}

// selectVictimsLocked returns, in closing order, up to need connections of
// the scope to close; nil in the result stands for newcomer. m.trimMu is
// held; the result is m.victimBuffer.
//
// It scans the index's rows (no per-peer map is walked): keys are built for
// the rows in scope and out of their grace period, a quickselect finds the
// need+64 smallest and only those are sorted; when skipped candidates
// (protected peers, reservations) leave the walk short, the next smallest
// are selected and sorted the same way. Protection is looked up only for
// the candidates walked.
func (m *Manager) selectVictimsLocked(sc scope, target *realmPool, need int, ignoreGrace bool, newcomer core.Conn, now time.Time) []*connInfo {
	graceStart := now.Add(-m.cfg.GracePeriod).UnixNano()
	activeSince := now.Add(-m.cfg.SilencePeriod).UnixNano()
	var np newcomerPeer
	if newcomer != nil {
		np = m.newcomerPeer(sc, target, newcomer.RemotePeer(), activeSince)
	}
	var sel PathSelector
	if s := m.selector.Load(); s != nil {
		sel = *s
	}
	m.trimEpoch++
	epoch := m.trimEpoch

	m.protectedMu.RLock()
	defer m.protectedMu.RUnlock()
	anyProtected := len(m.protected) > 0
	// Every segment is locked for the selection, in order (nothing else
	// holds two): the connection fields a row points to (opened,
	// lastActive, throughput) are written under their segment's lock
	// alone. Taking 256 uncontended locks costs a few microseconds; the
	// tables are not walked.
	for i := range m.segments {
		m.segments[i].Lock()
	}
	defer func() {
		for i := range m.segments {
			m.segments[i].Unlock()
		}
	}()
	x := &m.index
	x.mu.Lock()
	defer x.mu.Unlock()

	// The newcomer's peer: its paths and the newcomer form one group.
	var newcomerKeep network.Conn
	if np.inScope && len(np.pi.conns) > 0 {
		conns := make([]network.Conn, 0, len(np.pi.conns)+1)
		for _, ci := range np.pi.conns {
			conns = append(conns, ci.conn)
		}
		newcomerKeep = m.selected(np.pi.id, append(conns, newcomer))
	}
	newcomerCand := func() candidate {
		c := np.base
		// Among equals a newcomer yields: it counts as idle the longest,
		// so it displaces only what is cheaper than itself (a redundant
		// path, a lower class or score) and full pools do not churn.
		c.lastActive = 0
		c.inbound = newcomer.Stat().Direction == network.DirInbound
		if newcomerKeep != nil && newcomerKeep != newcomer {
			c.class = classRedundant
		}
		return c
	}
	// cand reconstructs row i's candidate (newcomerIndex: the newcomer's).
	cand := func(i int32) candidate {
		if i == newcomerIndex {
			return newcomerCand()
		}
		ci := x.info[i]
		flags := x.flags[i]
		c := candidate{
			class:         classMember,
			score:         int(x.score[i]),
			authenticated: flags&rowAuthenticated != 0,
			lastActive:    ci.lastActive,
			throughput:    ci.throughput,
			inbound:       ci.inbound,
		}
		if x.active[i] > activeSince {
			c.score += activityBonus
		}
		switch {
		case (flags&rowMulti != 0 || ci.peer == np.pi) && m.redundant(ci, flags, sel, epoch, np.pi, newcomerKeep):
			c.class = classRedundant
		case flags&rowUnassigned != 0 && sc == scopeGlobal:
			c.class = classUnassigned
		}
		return c
	}

	keys := m.keyBuffer[:0]
	for i, ci := range x.info {
		flags := x.flags[i]
		switch sc {
		case scopeUnassigned:
			if flags&rowUnassigned == 0 {
				continue
			}
		case scopeRealm:
			if !slices.Contains(ci.peer.realms, target) {
				continue
			}
		}
		if !ignoreGrace && x.opened[i] > graceStart && ci.opened > graceStart {
			continue
		}
		// keyOf(cand(i)), without building the candidate.
		class := uint64(classMember)
		switch {
		case flags&rowMulti == 0 && (np.pi == nil || ci.peer != np.pi):
			if flags&rowUnassigned != 0 && sc == scopeGlobal {
				class = classUnassigned
			}
		case sel == nil && np.pi == nil:
			if flags&rowRedundant != 0 {
				class = classRedundant
			} else if flags&rowUnassigned != 0 && sc == scopeGlobal {
				class = classUnassigned
			}
		case m.redundant(ci, flags, sel, epoch, np.pi, newcomerKeep):
			class = classRedundant
		case flags&rowUnassigned != 0 && sc == scopeGlobal:
			class = classUnassigned
		}
		score := x.score[i]
		if x.active[i] > activeSince {
			score += activityBonus
		}
		k1 := class<<62 | uint64(min(max(score+1<<30, 0), 1<<31-1))<<31
		if flags&rowAuthenticated != 0 {
			k1 |= 1 << 30
		}
		keys = append(keys, sortKey{k1: k1, index: int32(i)}) // k2: below
	}
	if newcomer != nil && (ignoreGrace || now.UnixNano() <= graceStart) {
		c := newcomerCand()
		keys = append(keys, keyOf(&c, newcomerIndex))
	}
	order := &keyOrder{tie: func(a, b int32) int {
		ca, cb := cand(a), cand(b)
		return compareCandidates(&ca, &cb)
	}}
	// Only the keys walked are ordered: first the need+64 smallest, then,
	// when skipped candidates leave the walk short, twice as many more each
	// time. k2 (lastActive, read through info) is filled only where k1
	// does not decide: a quickselect on k1 alone finds the head's largest
	// k1, bound, and only keys up to bound get their k2 before the exact
	// selection; the others get it if the walk goes past the head.
	fill := func(keys []sortKey) {
		for j := range keys {
			if index := keys[j].index; index != newcomerIndex {
				keys[j].k2 = uint64(max(x.info[index].lastActive, 0))
			}
		}
	}
	head := min(len(keys), need+64)
	selectSmallestK1(keys, head)
	var bound uint64
	for _, k := range keys[:head] {
		bound = max(bound, k.k1)
	}
	filled := head
	for j := head; j < len(keys); j++ {
		if keys[j].k1 <= bound {
			keys[filled], keys[j] = keys[j], keys[filled]
			filled++
		}
	}
	fill(keys[:filled])
	selectSmallest(keys[:filled], head, order)
	sortKeys(keys[:head], order)

	var pending []realmCount
	victims := m.victimBuffer[:0]
	for i := 0; i < len(keys) && len(victims) < need; i++ {
		if i == head {
			fill(keys[filled:])
			filled = len(keys)
			next := min(len(keys), head+2*(head+64))
			selectSmallest(keys[head:], next-head, order)
			sortKeys(keys[head:next], order)
			head = next
		}
		var realms []*realmPool
		if index := keys[i].index; index == newcomerIndex {
			if _, ok := m.protected[newcomer.RemotePeer()]; ok {
				continue
			}
			realms = np.realms
			// The newcomer is not counted in its realms yet: refusing it
			// takes no realm below its reservation.
		} else {
			ci := x.info[index]
			if anyProtected && m.protected[ci.peer.id] != nil {
				continue
			}
			if x.flags[index]&rowUnassigned == 0 {
				realms = ci.peer.realms
			}
			if !m.reservationAllows(realms, target, pending) {
				continue
			}
		}
		for _, rp := range realms {
			pending = addPending(pending, rp)
		}
		if keys[i].index == newcomerIndex {
			victims = append(victims, nil)
		} else {
			victims = append(victims, x.info[keys[i].index])
		}
	}
	m.keyBuffer = keys[:0]
	return victims
}

// newcomerPeer copies what a selection needs of p, the peer of the
// connection being admitted, under p's segment lock.
func (m *Manager) newcomerPeer(sc scope, target *realmPool, p peer.ID, activeSince int64) newcomerPeer {
	class := classMember
	if sc == scopeGlobal {
		class = classUnassigned
	}
	np := newcomerPeer{base: candidate{class: class}}
	s := m.segment(p)
	s.Lock()
	defer s.Unlock()
	pi := s.peers[p]
	if pi == nil {
		return np
	}
	switch sc {
	case scopeUnassigned:
		np.inScope = len(pi.realms) == 0
	case scopeRealm:
		np.inScope = slices.Contains(pi.realms, target)
	default:
		np.inScope = true
	}
	if !np.inScope {
		return np
	}
	np.pi = pi
	np.realms = pi.realms
	np.base.score = pi.value + m.cfg.RealmWeight*len(pi.realms)
	if pi.active > activeSince {
		np.base.score += activityBonus
	}
	np.base.authenticated = pi.authenticated
	if len(pi.realms) > 0 {
		np.base.class = classMember
	}
	return np
}

// redundant reports whether ci, a path of a peer with several, is not the
// peer's selected path; index.mu is held. Without a selector the index
// knows (the newest path is kept); with one, the selector is asked once per
// peer and selection (epoch). The newcomer's peer is decided with the
// newcomer among its paths (newcomerKeep).
func (m *Manager) redundant(ci *connInfo, flags uint8, sel PathSelector, epoch uint64, newcomerPI *peerInfo, newcomerKeep network.Conn) bool {
	pi := ci.peer
	if pi == newcomerPI && newcomerKeep != nil {
		return ci.conn != newcomerKeep
	}
	if sel == nil {
		return flags&rowRedundant != 0
	}
	if pi.keepEpoch != epoch {
		conns := make([]network.Conn, len(pi.conns))
		for i, c := range pi.conns {
			conns[i] = c.conn
		}
		keep := m.selected(pi.id, conns)
		pi.keep, pi.keepEpoch = nil, epoch
		for _, c := range pi.conns {
			if c.conn == keep {
				pi.keep = c
			}
		}
	}
	return ci != pi.keep
}

// selectSmallest reorders keys so that its first k elements are the k
// smallest (in no particular order): Hoare's quickselect with a
// median-of-three pivot, O(len(keys)) on average.
func selectSmallest(keys []sortKey, k int, o *keyOrder) {
	compare := o.compare
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

// selectSmallestK1 is selectSmallest ordering by k1 alone (equal k1 in no
// particular order), with the comparisons inline.
func selectSmallestK1(keys []sortKey, k int) {
	lo, hi := 0, len(keys)-1
	for lo < hi && k > lo && k <= hi {
		mid := lo + (hi-lo)/2
		if keys[mid].k1 < keys[lo].k1 {
			keys[mid], keys[lo] = keys[lo], keys[mid]
		}
		if keys[hi].k1 < keys[lo].k1 {
			keys[hi], keys[lo] = keys[lo], keys[hi]
		}
		if keys[hi].k1 < keys[mid].k1 {
			keys[hi], keys[mid] = keys[mid], keys[hi]
		}
		pivot := keys[mid].k1
		i, j := lo, hi
		for i <= j {
			for keys[i].k1 < pivot {
				i++
			}
			for keys[j].k1 > pivot {
				j--
			}
			if i <= j {
				keys[i], keys[j] = keys[j], keys[i]
				i++
				j--
			}
		}
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

// keyOrder orders sort keys: k1, then k2, then tie (compareCandidates of
// the connections). Its compare is a method, not a closure, so that the
// selection and the sort inline the common case.
type keyOrder struct {
	tie func(a, b int32) int
}

func (o *keyOrder) compare(a, b sortKey) int {
	if a.k1 == b.k1 && a.k2 == b.k2 {
		return o.tie(a.index, b.index)
	}
	if a.k1 < b.k1 || a.k1 == b.k1 && a.k2 < b.k2 {
		return -1
	}
	return 1
}

// sortKeys sorts keys: quicksort (median of three, Hoare partition),
// insertion sort below 12 keys, and slices.SortFunc past a recursion depth
// of 2·log2(n) (adversarial input).
func sortKeys(keys []sortKey, o *keyOrder) {
	depth := 0
	for n := len(keys); n > 0; n >>= 1 {
		depth += 2
	}
	sortKeysDepth(keys, o, depth)
}

func sortKeysDepth(keys []sortKey, o *keyOrder, depth int) {
	for len(keys) > 12 {
		if depth == 0 {
			slices.SortFunc(keys, o.compare)
			return
		}
		depth--
		lo, hi := 0, len(keys)-1
		mid := hi / 2
		if o.compare(keys[mid], keys[lo]) < 0 {
			keys[mid], keys[lo] = keys[lo], keys[mid]
		}
		if o.compare(keys[hi], keys[lo]) < 0 {
			keys[hi], keys[lo] = keys[lo], keys[hi]
		}
		if o.compare(keys[hi], keys[mid]) < 0 {
			keys[hi], keys[mid] = keys[mid], keys[hi]
		}
		pivot := keys[mid]
		i, j := lo, hi
		for i <= j {
			for o.compare(keys[i], pivot) < 0 {
				i++
			}
			for o.compare(keys[j], pivot) > 0 {
				j--
			}
			if i <= j {
				keys[i], keys[j] = keys[j], keys[i]
				i++
				j--
			}
		}
		// [0, j] ≤ pivot ≤ [i, len): recurse into the smaller side.
		if j+1 < len(keys)-i {
			sortKeysDepth(keys[:j+1], o, depth)
			keys = keys[i:]
		} else {
			sortKeysDepth(keys[i:], o, depth)
			keys = keys[:j+1]
		}
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && o.compare(keys[j], keys[j-1]) < 0; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
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
	now := m.clock.Now().UnixNano()
	period := m.cfg.SilencePeriod.Seconds()
	for i := range m.segments {
		s := &m.segments[i]
		s.Lock()
		m.index.mu.Lock()
		for _, pi := range s.peers {
			if len(pi.conns) == 0 {
				continue
			}
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
			m.index.refresh(pi, m.cfg.RealmWeight)
		}
		m.index.mu.Unlock()
		s.Unlock()
	}
}

// expireTemporary drops tag-only entries whose grace period has passed
// without a connection (go-libp2p semantics). Entries that hold realm
// assignments or decaying tags stay.
func (m *Manager) expireTemporary() {
	cutoff := m.clock.Now().Add(-m.cfg.GracePeriod).UnixNano()
	for i := range m.segments {
		s := &m.segments[i]
		s.Lock()
		for p, pi := range s.peers {
			if pi.temp && len(pi.conns) == 0 && len(pi.realms) == 0 && len(pi.decaying) == 0 && pi.firstSeen < cutoff {
				delete(s.peers, p)
			}
		}
		s.Unlock()
	}
}
