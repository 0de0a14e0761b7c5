package connmgr

import (
	"context"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/benbjohnson/clock"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/core"
)

// ---------------------------------------------------------------------------
// Reference victim selection: the per-peer-map walk the index replaced,
// with a full sort, kept here to check the index against.

type refCandidate struct {
	candidate
	conn   network.Conn // nil: the newcomer
	realms []*realmPool
	opened int64
	peer   peer.ID
}

// referenceVictims returns what selectVictimsLocked must: up to need
// connections of the scope in victim order (nil stands for newcomer).
func referenceVictims(m *Manager, sc scope, target *realmPool, need int, ignoreGrace bool, newcomer core.Conn, now time.Time) []network.Conn {
	activeSince := now.Add(-m.cfg.SilencePeriod)
	graceStart := now.Add(-m.cfg.GracePeriod).UnixNano()
	inScope := func(realms []*realmPool) bool {
		switch sc {
		case scopeUnassigned:
			return len(realms) == 0
		case scopeRealm:
			return slices.Contains(realms, target)
		}
		return true
	}
	var groups [][]refCandidate
	newcomerSeen := false
	for i := range m.segments {
		s := &m.segments[i]
		s.Lock()
		for p, pi := range s.peers {
			isNewcomerPeer := newcomer != nil && p == newcomer.RemotePeer()
			if (len(pi.conns) == 0 && !isNewcomerPeer) || !inScope(pi.realms) {
				continue
			}
			if m.IsProtected(p, "") {
				newcomerSeen = newcomerSeen || isNewcomerPeer
				continue
			}
			base := refCandidate{realms: pi.realms, peer: p}
			base.score = pi.value + m.cfg.RealmWeight*len(pi.realms)
			if pi.active > activeSince.UnixNano() {
				base.score += activityBonus
			}
			base.class = classMember
			if len(pi.realms) == 0 && sc == scopeGlobal {
				base.class = classUnassigned
			}
			base.authenticated = pi.authenticated
			var g []refCandidate
			for _, ci := range pi.conns {
				c := base
				c.conn = ci.conn
				c.lastActive = ci.lastActive
				c.throughput = ci.throughput
				c.inbound = ci.inbound
				c.opened = ci.opened
				g = append(g, c)
			}
			if isNewcomerPeer {
				newcomerSeen = true
				c := base
				c.lastActive, c.opened = 0, now.UnixNano()
				c.inbound = newcomer.Stat().Direction == network.DirInbound
				g = append(g, c)
			}
			groups = append(groups, g)
		}
		s.Unlock()
	}
	if newcomer != nil && !newcomerSeen && !m.IsProtected(newcomer.RemotePeer(), "") {
		c := refCandidate{peer: newcomer.RemotePeer(), opened: now.UnixNano()}
		c.class = classMember
		if sc == scopeGlobal {
			c.class = classUnassigned
		}
		c.inbound = newcomer.Stat().Direction == network.DirInbound
		groups = append(groups, []refCandidate{c})
	}
	var cands []refCandidate
	for _, g := range groups {
		if len(g) > 1 {
			conns := make([]network.Conn, len(g))
			for i, c := range g {
				conns[i] = c.conn
				if c.conn == nil {
					conns[i] = newcomer
				}
			}
			keep := m.selected(g[0].peer, conns)
			for i := range g {
				if conns[i] != keep {
					g[i].class = classRedundant
				}
			}
		}
		for _, c := range g {
			if ignoreGrace || c.opened <= graceStart {
				cands = append(cands, c)
			}
		}
	}
	slices.SortStableFunc(cands, func(a, b refCandidate) int {
		// The packed keys' order: class, clamped score, authenticated,
		// lastActive (clamped at 0), then compareCandidates.
		ka, kb := keyOf(&a.candidate, 0), keyOf(&b.candidate, 0)
		if ka.k1 != kb.k1 || ka.k2 != kb.k2 {
			if ka.k1 < kb.k1 || ka.k1 == kb.k1 && ka.k2 < kb.k2 {
				return -1
			}
			return 1
		}
		return compareCandidates(&a.candidate, &b.candidate)
	})
	var pending []realmCount
	var out []network.Conn
	for _, c := range cands {
		if len(out) == need {
			break
		}
		if c.conn != nil && !m.reservationAllows(c.realms, target, pending) {
			continue
		}
		for _, rp := range c.realms {
			pending = addPending(pending, rp)
		}
		out = append(out, c.conn)
	}
	return out
}

// hashSelector keeps, of each peer's paths, the one whose ID hashes
// lowest; it has no opinion on a third of the peers (by hash).
type hashSelector struct{}

func (hashSelector) SelectedPath(p peer.ID, conns []network.Conn) network.Conn {
	h := func(s string) uint64 {
		f := fnv.New64a()
		f.Write([]byte(s))
		return f.Sum64()
	}
	if h(string(p))%3 == 0 {
		return nil
	}
	best := conns[0]
	for _, c := range conns[1:] {
		if h(c.ID()) < h(best.ID()) {
			best = c
		}
	}
	return best
}

// TestIndexSelectsLikeReference builds many random tables — peers with up
// to four paths, tags, realm memberships with reservations, protection,
// connections in and out of their grace period, activity, throughput,
// direction, with and without a path selector and a newcomer — and checks
// that the index's victim selection returns the reference's victims in the
// reference's order, for every scope.
func TestIndexSelectsLikeReference(t *testing.T) {
	const tables = 500
	for seed := range uint64(tables) {
		rng := rand.New(rand.NewPCG(seed, 7))
		mock := clock.NewMock()
		mock.Set(time.Unix(1_700_000_000, 0))
		cfg := testConfig()
		cfg.GracePeriod = time.Minute
		cfg.SilencePeriod = 10 * time.Second
		cfg.LowWater, cfg.HighWater = 1000, 1000 // no trim while the table is built
		m := newTestManager(t, cfg, nil, WithClock(mock))
		if rng.IntN(2) == 0 {
			m.SetPathSelector(hashSelector{})
		}
		realmIDs := []core.RealmID{"a", "b", "c"}
		for _, r := range realmIDs {
			require.NoError(t, m.SetRealmLimits(r, core.PoolLimits{LowWater: rng.IntN(6), HighWater: 1000}))
		}
		now := mock.Now()
		// Some tables protect most peers, so that the walk goes past the
		// ordered head (need+64 keys).
		protectTenths := []int{0, 2, 5, 9, 10}[rng.IntN(5)]
		var peers []peer.ID
		for range 1 + rng.IntN(200) {
			p := randPeer(t)
			peers = append(peers, p)
			m.TagPeer(p, "v", rng.IntN(4)*5) // few values: ties
			for _, r := range realmIDs {
				if rng.IntN(4) == 0 {
					m.AssignRealm(p, r)
				}
			}
			if rng.IntN(8) == 0 {
				m.UnassignRealm(p, realmIDs[rng.IntN(len(realmIDs))])
			}
			if rng.IntN(10) < protectTenths {
				m.Protect(p, "x")
			}
			for range rng.IntN(5) {
				dir := network.DirOutbound
				if rng.IntN(2) == 0 {
					dir = network.DirInbound
				}
				c := newFakeConn(p, dir)
				c.SetOpened(now.Add(-time.Duration(rng.IntN(4)) * time.Second)) // equal opening times too
				require.True(t, tryAdmit(m, c))
				withConnInfo(t, m, c, func(ci *connInfo) {
					if rng.IntN(3) > 0 {
						ci.opened = now.Add(-time.Duration(1+rng.IntN(3)) * time.Hour).UnixNano()
					}
					ci.lastActive = now.Add(-time.Duration(rng.IntN(3)) * time.Minute).UnixNano()
					ci.throughput = float64(rng.IntN(1000)) + rng.Float64() // distinct: no full ties
				})
			}
			if rng.IntN(3) == 0 {
				s := m.segment(p)
				s.Lock()
				pi := s.peers[p]
				pi.active = now.Add(-time.Duration(rng.IntN(20)) * time.Second).UnixNano()
				m.peerChangedLocked(pi)
				s.Unlock()
			}
		}
		checkIndex(t, m)

		var newcomer core.Conn
		switch rng.IntN(3) {
		case 0:
			newcomer = newFakeConn(peers[rng.IntN(len(peers))], network.DirInbound)
		case 1:
			newcomer = newFakeConn(randPeer(t), network.DirOutbound)
		}
		for _, sc := range []scope{scopeGlobal, scopeUnassigned, scopeRealm} {
			var target *realmPool
			if sc == scopeRealm {
				target = m.realm(realmIDs[rng.IntN(len(realmIDs))])
			}
			need := 1 + rng.IntN(int(m.global.Load())+2)
			switch rng.IntN(3) {
			case 0:
				need = 1 + rng.IntN(4) // most keys outside the head
			case 1:
				need = 5 + rng.IntN(30) // with protection: past the head
			}
			ignoreGrace := rng.IntN(2) == 0
			nc := newcomer
			if sc != scopeGlobal {
				nc = nil // the newcomer competes in global trims only
			}
			name := fmt.Sprintf("seed %d scope %d need %d ignoreGrace %v newcomer %v", seed, sc, need, ignoreGrace, nc != nil)

			want := referenceVictims(m, sc, target, need, ignoreGrace, nc, now)
			m.trimMu.Lock()
			victims := m.selectVictimsLocked(sc, target, need, ignoreGrace, nc, now)
			got := make([]network.Conn, len(victims))
			for i, v := range victims {
				if v != nil {
					got[i] = v.conn
				}
			}
			m.trimMu.Unlock()
			require.Equal(t, connIDs(want), connIDs(got), name)
		}
	}
}

func connIDs(conns []network.Conn) []string {
	out := make([]string, len(conns))
	for i, c := range conns {
		out[i] = "newcomer"
		if c != nil {
			out[i] = c.ID()
		}
	}
	return out
}

// checkIndex checks the index against the peer table: one row per
// accounted connection, each row's slot, and each row's columns as
// recomputed from its peer.
func checkIndex(t testing.TB, m *Manager) {
	t.Helper()
	rows := 0
	for i := range m.segments {
		s := &m.segments[i]
		s.Lock()
		m.index.mu.Lock()
		for p, pi := range s.peers {
			require.Equal(t, p, pi.id)
			shadow := connIndex{}
			slots := make([]int32, len(pi.conns))
			for j, ci := range pi.conns {
				slots[j] = ci.slot
				require.False(t, ci.removed.Load(), "accounted connection marked removed")
				require.Same(t, pi, ci.peer)
				require.Same(t, s, ci.seg)
				require.Less(t, int(ci.slot), len(m.index.info))
				require.Same(t, ci, m.index.info[ci.slot], "row %d does not point back", ci.slot)
				require.GreaterOrEqual(t, m.index.opened[ci.slot], ci.opened, "opened column below the connection's")
				shadow.add(ci)
			}
			// Recompute the rows in a shadow index (add renumbers the
			// slots: they are restored after) and compare.
			shadow.refresh(pi, m.cfg.RealmWeight)
			for j, ci := range pi.conns {
				ci.slot = slots[j]
				require.Equal(t, shadow.score[j], m.index.score[ci.slot], "score of %s", ci.conn.ID())
				require.Equal(t, shadow.flags[j], m.index.flags[ci.slot], "flags of %s", ci.conn.ID())
				require.Equal(t, shadow.active[j], m.index.active[ci.slot], "activity of %s", ci.conn.ID())
			}
			rows += len(pi.conns)
		}
		m.index.mu.Unlock()
		s.Unlock()
	}
	m.index.mu.Lock()
	defer m.index.mu.Unlock()
	require.Equal(t, rows, len(m.index.info), "rows without a connection")
	require.Equal(t, len(m.index.info), len(m.index.score))
	require.Equal(t, len(m.index.info), len(m.index.flags))
	require.Equal(t, len(m.index.info), len(m.index.active))
	require.Equal(t, len(m.index.info), len(m.index.opened))
	require.Equal(t, int64(rows), m.global.Load(), "global count")
}

// TestIndexConsistentUnderConcurrency runs tagging, decaying tags,
// protection, realm assignment, admission, disconnection, activity
// sampling and trims concurrently (run it with -race), then checks that
// the index matches the peer table and the counts.
func TestIndexConsistentUnderConcurrency(t *testing.T) {
	cfg := testConfig()
	cfg.LowWater, cfg.HighWater = 20, 40
	cfg.GracePeriod = time.Nanosecond
	m := newTestManager(t, cfg, nil)
	dt, err := m.RegisterDecayingTag("d", time.Hour, connmgr.DecayNone(), connmgr.BumpSumUnbounded())
	require.NoError(t, err)
	peers := make([]peer.ID, 32)
	for i := range peers {
		peers[i] = randPeer(t)
	}
	realms := []core.RealmID{"a", "b"}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()

	var wg sync.WaitGroup
	worker := func(seed uint64, f func(rng *rand.Rand)) {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, 1))
			for ctx.Err() == nil {
				f(rng)
			}
		})
	}
	pick := func(rng *rand.Rand) peer.ID { return peers[rng.IntN(len(peers))] }
	var connsMu sync.Mutex
	var conns []*fakeConn
	worker(1, func(rng *rand.Rand) {
		c := newFakeConn(pick(rng), network.DirInbound)
		if tryAdmit(m, c) {
			connsMu.Lock()
			conns = append(conns, c)
			connsMu.Unlock()
		}
	})
	worker(2, func(rng *rand.Rand) {
		connsMu.Lock()
		if len(conns) == 0 {
			connsMu.Unlock()
			return
		}
		i := rng.IntN(len(conns))
		c := conns[i]
		conns = slices.Delete(conns, i, i+1)
		connsMu.Unlock()
		_ = c.Close()
		m.Notifee().Disconnected(nil, c)
	})
	worker(3, func(rng *rand.Rand) {
		switch rng.IntN(3) {
		case 0:
			m.TagPeer(pick(rng), "t", rng.IntN(100))
		case 1:
			m.UpsertTag(pick(rng), "u", func(v int) int { return v + 1 })
		default:
			m.UntagPeer(pick(rng), "t")
		}
	})
	worker(4, func(rng *rand.Rand) {
		if rng.IntN(2) == 0 {
			_ = dt.Bump(pick(rng), rng.IntN(10))
		} else {
			_ = dt.Remove(pick(rng))
		}
	})
	worker(5, func(rng *rand.Rand) {
		if rng.IntN(2) == 0 {
			m.Protect(pick(rng), "p")
		} else {
			m.Unprotect(pick(rng), "p")
		}
	})
	worker(6, func(rng *rand.Rand) {
		if rng.IntN(2) == 0 {
			m.AssignRealm(pick(rng), realms[rng.IntN(len(realms))])
		} else {
			m.UnassignRealm(pick(rng), realms[rng.IntN(len(realms))])
		}
	})
	worker(7, func(rng *rand.Rand) {
		switch rng.IntN(3) {
		case 0:
			m.sampleActivity()
		case 1:
			_, _ = m.TrimConnections(context.Background(), 1+rng.IntN(4))
		default:
			m.TrimOpenConns(context.Background())
		}
	})
	wg.Wait()
	syncTrims(m)
	checkIndex(t, m)
	require.NoError(t, dt.Close())
	checkIndex(t, m)
}
