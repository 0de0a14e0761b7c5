package connmgr

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/benbjohnson/clock"

	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	tu "github.com/libp2p/go-libp2p/core/test"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/realmnet/realmnet/core"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestMain is the package's only TestMain: every test must leave no
// goroutine behind (the manager's loops stop on Close).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ---------------------------------------------------------------------------
// Helpers

// testConfig keeps the background loop quiet (its ticker never fires during a
// test) and every connection inside its grace period unless a test ages it;
// the unassigned pool and the realm defaults are out of the way.
func testConfig() Config {
	return Config{
		LowWater:        50,
		HighWater:       100,
		GracePeriod:     time.Hour,
		SilencePeriod:   time.Hour,
		MaxConnsPerPeer: 12,
		Unassigned:      core.PoolLimits{LowWater: 1000, HighWater: 1000},
		RealmDefaults:   core.PoolLimits{LowWater: 0, HighWater: 1000},
		RealmWeight:     DefaultRealmWeight,
	}
}

func newTestManager(t testing.TB, cfg Config, bus event.Bus, opts ...Option) *Manager {
	t.Helper()
	m, err := New(cfg, bus, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, m.Close()) })
	return m
}

func randPeer(t testing.TB) peer.ID { return tu.RandPeerIDFatal(t) }

// admit admits a new outbound connection to p; it must be accepted.
func admit(t testing.TB, m *Manager, p peer.ID) *fakeConn {
	t.Helper()
	c := newFakeConn(p, network.DirOutbound)
	require.True(t, tryAdmit(m, c), "AdmitConn refused %s", c)
	return c
}

// withConnInfo runs f on what the manager records of c.
func withConnInfo(t testing.TB, m *Manager, c network.Conn, f func(ci *connInfo)) {
	t.Helper()
	p := c.RemotePeer()
	s := m.segment(p)
	s.Lock()
	defer s.Unlock()
	pi := s.peers[p]
	require.NotNil(t, pi, "no entry for %s", p)
	i := pi.find(c)
	require.GreaterOrEqual(t, i, 0, "connection %s not accounted", c.ID())
	f(pi.conns[i])
}

// age moves c's recorded opening time out of the grace period (its last
// activity is left alone).
func age(t testing.TB, m *Manager, conns ...*fakeConn) {
	t.Helper()
	for _, c := range conns {
		withConnInfo(t, m, c, func(ci *connInfo) { ci.opened -= int64(2*m.cfg.GracePeriod + time.Minute) })
	}
}

// oldConn admits a connection to p and ages it out of its grace period.
func oldConn(t testing.TB, m *Manager, p peer.ID) *fakeConn {
	t.Helper()
	c := admit(t, m, p)
	age(t, m, c)
	return c
}

// oldTagged returns an aged connection to a new peer tagged with value.
func oldTagged(t testing.TB, m *Manager, value int) *fakeConn {
	t.Helper()
	p := randPeer(t)
	m.TagPeer(p, "score", value)
	return oldConn(t, m, p)
}

// oldMember returns an aged connection to a new peer tagged with value and
// assigned to realms before it connects.
func oldMember(t testing.TB, m *Manager, value int, realms ...core.RealmID) *fakeConn {
	t.Helper()
	p := randPeer(t)
	m.TagPeer(p, "score", value)
	for _, r := range realms {
		m.AssignRealm(p, r)
	}
	return oldConn(t, m, p)
}

// isTemp reports whether p's entry is a temporary one.
func isTemp(m *Manager, p peer.ID) bool {
	s := m.segment(p)
	s.Lock()
	defer s.Unlock()
	pi := s.peers[p]
	return pi != nil && pi.temp
}

func requireOpen(t testing.TB, conns ...*fakeConn) {
	t.Helper()
	for _, c := range conns {
		require.False(t, c.IsClosed(), "%s was closed", c)
	}
}

func requireClosed(t testing.TB, conns ...*fakeConn) {
	t.Helper()
	for _, c := range conns {
		require.True(t, c.IsClosed(), "%s is still open", c)
		require.Equal(t, network.ConnGarbageCollected, c.CloseCode(), "%s closed with the wrong code", c)
	}
}

// requireCloseOrder checks that want were closed, in this order.
func requireCloseOrder(t testing.TB, want ...*fakeConn) {
	t.Helper()
	requireClosed(t, want...)
	for i := 1; i < len(want); i++ {
		require.Less(t, want[i-1].ClosedAt(), want[i].ClosedAt(), "%s should close before %s", want[i-1], want[i])
	}
}

// syncTrims waits for the trim in progress, if any, to finish.
func syncTrims(m *Manager) {
	m.trimMu.Lock()
	_ = m.trimCount.Load() // nothing to do inside: taking the lock is the wait
	m.trimMu.Unlock()
}

// holdTrimLock takes the trim lock, as a running trim would; release gives
// it back (also done at cleanup if the test fails first).
func holdTrimLock(t testing.TB, m *Manager) (release func()) {
	m.trimMu.Lock()
	var once sync.Once
	release = func() { once.Do(m.trimMu.Unlock) }
	t.Cleanup(release)
	return release
}

// waitBlockedOnTrimLock waits until n goroutines are blocked on a mutex
// inside fn (e.g. "(*Manager).TrimOpenConns"), that is past their first
// statements.
func waitBlockedOnTrimLock(t testing.TB, fn string, n int) {
	t.Helper()
	buf := make([]byte, 1<<20)
	require.Eventually(t, func() bool {
		stacks := string(buf[:runtime.Stack(buf, true)])
		count := 0
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, fn+"(") && strings.Contains(g, "Mutex).Lock") {
				count++
			}
		}
		return count >= n
	}, 10*time.Second, time.Millisecond, "goroutines never blocked in %s", fn)
}

// ---------------------------------------------------------------------------
// go-libp2p ConnManager contract

func TestTagsFollowGoLibp2pSemantics(t *testing.T) {
	m := newTestManager(t, testConfig(), nil)
	var _ connmgr.ConnManager = m
	not := m.Notifee()

	p := randPeer(t)
	require.Nil(t, m.GetTagInfo(p), "unknown peer has tag info")

	start := time.Now()
	c := newFakeConn(p, network.DirInbound)
	require.True(t, tryAdmit(m, c))
	end := time.Now()
	require.Equal(t, 1, m.ConnectionCount())

	info := m.GetTagInfo(p)
	require.NotNil(t, info)
	require.Zero(t, info.Value)
	require.Empty(t, info.Tags)
	require.Len(t, info.Conns, 1)
	opened, ok := info.Conns[c.RemoteMultiaddr().String()]
	require.True(t, ok, "GetTagInfo.Conns is keyed by remote address")
	require.False(t, opened.Before(start) || opened.After(end), "connection time %v outside [%v, %v]", opened, start, end)
	require.False(t, info.FirstSeen.Before(start) || info.FirstSeen.After(end))

	m.TagPeer(p, "a", 5)
	m.TagPeer(p, "b", 7)
	info = m.GetTagInfo(p)
	require.Equal(t, 12, info.Value)
	require.Equal(t, map[string]int{"a": 5, "b": 7}, info.Tags)

	m.TagPeer(p, "a", 1) // overwrites, not adds
	require.Equal(t, 8, m.GetTagInfo(p).Value)

	m.UntagPeer(p, "nope")
	m.UntagPeer(randPeer(t), "a")
	require.Equal(t, 8, m.GetTagInfo(p).Value, "untagging an absent tag changed the value")

	m.UntagPeer(p, "b")
	info = m.GetTagInfo(p)
	require.Equal(t, 1, info.Value)
	require.Equal(t, map[string]int{"a": 1}, info.Tags)

	m.UpsertTag(p, "a", func(v int) int { return v + 10 })
	seen := -1
	m.UpsertTag(p, "fresh", func(v int) int { seen = v; return 3 })
	require.Zero(t, seen, "UpsertTag must pass 0 for an absent tag")
	info = m.GetTagInfo(p)
	require.Equal(t, 14, info.Value)
	require.Equal(t, map[string]int{"a": 11, "fresh": 3}, info.Tags)
	m.UpsertTag(p, "fresh", func(v int) int { return v - 5 })
	require.Equal(t, 9, m.GetTagInfo(p).Value)

	// A duplicate Connected notification changes nothing.
	not.Connected(nil, c)
	require.Equal(t, 1, m.ConnectionCount())
	require.Equal(t, 9, m.GetTagInfo(p).Value)

	// Disconnected for a connection the manager does not know changes
	// nothing.
	not.Disconnected(nil, newFakeConn(p, network.DirInbound))
	not.Disconnected(nil, newFakeConn(randPeer(t), network.DirInbound))
	require.Equal(t, 1, m.ConnectionCount())
	require.Len(t, m.GetTagInfo(p).Conns, 1)

	not.Disconnected(nil, c)
	require.Zero(t, m.ConnectionCount())
	require.Zero(t, m.Stats().Unassigned.Count)
	require.Equal(t, 9, m.GetTagInfo(p).Value, "tags stay (temporarily) after the last disconnect")
	require.Empty(t, m.GetTagInfo(p).Conns)
}

func TestProtectionIsIdempotentAndPerTag(t *testing.T) {
	m := newTestManager(t, testConfig(), nil)
	p := randPeer(t)

	require.False(t, m.IsProtected(p, ""))
	require.False(t, m.Unprotect(p, "never"), "unprotecting an unprotected peer")

	for range 4 {
		m.Protect(p, "global")
	}
	require.True(t, m.IsProtected(p, "global"))
	require.True(t, m.IsProtected(p, ""), `"" means any tag`)
	require.False(t, m.IsProtected(p, "other"))
	require.Len(t, m.protected[p], 1)

	require.True(t, m.Unprotect(p, "unused"), "still protected by global")
	// Not ref-counted: one Unprotect undoes four Protects.
	require.False(t, m.Unprotect(p, "global"))
	require.False(t, m.IsProtected(p, ""))
	require.False(t, m.IsProtected(p, "global"))
	require.Empty(t, m.protected)

	m.Protect(p, "x")
	m.Protect(p, "y")
	require.True(t, m.Unprotect(p, "x"), "y still protects")
	require.False(t, m.IsProtected(p, "x"))
	require.True(t, m.IsProtected(p, "y"))
	require.True(t, m.IsProtected(p, ""))
	require.False(t, m.Unprotect(p, "y"))
	require.False(t, m.IsProtected(p, ""))
}

func TestTemporaryEntriesExpireAfterGrace(t *testing.T) {
	const grace = 20 * time.Second
	cfg := testConfig()
	cfg.GracePeriod = grace
	mock := clock.NewMock()
	mock.Set(time.Now())
	m := newTestManager(t, cfg, nil, WithClock(mock))

	// Tags on an unconnected peer: a temporary entry.
	early := randPeer(t)
	m.TagPeer(early, "t", 20)
	require.Equal(t, 20, m.GetTagInfo(early).Value)
	require.True(t, isTemp(m, early))

	// A temporary entry becomes permanent when the peer connects.
	converted := randPeer(t)
	m.UpsertTag(converted, "t", func(int) int { return 4 })
	cc := admit(t, m, converted)
	require.False(t, isTemp(m, converted))
	require.Equal(t, 4, m.GetTagInfo(converted).Value)

	connected := randPeer(t)
	c := admit(t, m, connected)
	m.TagPeer(connected, "t", 1)

	mock.Add(grace - time.Millisecond)
	m.expireTemporary()
	require.NotNil(t, m.GetTagInfo(early), "expired inside its grace period")

	mock.Add(2 * time.Millisecond)
	m.expireTemporary()
	require.Nil(t, m.GetTagInfo(early), "temporary entry kept past its grace period")
	require.Equal(t, 4, m.GetTagInfo(converted).Value, "entry with a connection expired")
	require.Equal(t, 1, m.GetTagInfo(connected).Value, "entry with a connection expired")

	// After the last disconnect the entry is temporary again: kept for a
	// grace period, then dropped.
	m.Notifee().Disconnected(nil, c)
	m.expireTemporary()
	require.NotNil(t, m.GetTagInfo(connected))
	mock.Add(grace + time.Millisecond)
	m.expireTemporary()
	require.Nil(t, m.GetTagInfo(connected))
	require.NotNil(t, m.GetTagInfo(converted))
	requireOpen(t, cc)
}

func TestBackgroundLoopExpiresTemporaryEntries(t *testing.T) {
	cfg := testConfig()
	cfg.GracePeriod = 20 * time.Second
	cfg.SilencePeriod = 10 * time.Second
	mock := clock.NewMock()
	mock.Set(time.Now())
	m := newTestManager(t, cfg, nil, WithClock(mock))

	p, kept := randPeer(t), randPeer(t)
	m.TagPeer(p, "t", 1)
	m.TagPeer(kept, "t", 2)
	c := admit(t, m, kept)
	// One silence period later the background loop runs, but the entry
	// is inside its grace period; past the grace, the next run drops it.
	mock.Add(cfg.SilencePeriod)
	require.NotNil(t, m.GetTagInfo(p))
	require.Eventually(t, func() bool {
		mock.Add(cfg.SilencePeriod)
		return m.GetTagInfo(p) == nil
	}, 5*time.Second, 5*time.Millisecond)
	require.NotNil(t, m.GetTagInfo(kept))
	requireOpen(t, c)
}

type limiter int

func (l limiter) GetConnLimit() int { return int(l) }

// CheckLimit compares the most connections the manager admits (its ceiling,
// HighWater + 10 %) with the resource manager's system limit.
func TestCheckLimitNamesBothNumbers(t *testing.T) {
	cfg := testConfig()
	cfg.LowWater, cfg.HighWater = 10, 320
	m := newTestManager(t, cfg, nil)
	ceiling := m.cfg.ceiling()
	require.Equal(t, 352, ceiling)
	require.NoError(t, m.CheckLimit(limiter(ceiling+1)))
	require.NoError(t, m.CheckLimit(limiter(ceiling)))
	for _, limit := range []int{ceiling - 1, 319} {
		err := m.CheckLimit(limiter(limit))
		require.Error(t, err, "limit %d", limit)
		require.Contains(t, err.Error(), "320")
		require.Contains(t, err.Error(), fmt.Sprint(limit))
	}
}

// ---------------------------------------------------------------------------
// Victim order

// pathSelector picks, per peer, a given connection (nil: no opinion).
type pathSelector struct {
	mu    sync.Mutex
	pick  map[peer.ID]network.Conn
	asked map[peer.ID]int
}

func (s *pathSelector) SelectedPath(p peer.ID, conns []network.Conn) network.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked[p] = len(conns)
	return s.pick[p]
}

func TestVictimOrderRedundantPathsFirst(t *testing.T) {
	setup := func(t *testing.T, cfg Config) (m *Manager, x []*fakeConn, y, z *fakeConn) {
		m = newTestManager(t, cfg, nil)
		xp := randPeer(t)
		m.TagPeer(xp, "score", 1000) // by far the most valuable peer
		now := time.Now()
		for i := range 3 {
			c := newFakeConn(xp, network.DirOutbound)
			c.SetOpened(now.Add(time.Duration(i-3) * time.Minute)) // x[2] newest
			require.True(t, tryAdmit(m, c))
			x = append(x, c)
		}
		age(t, m, x...)
		y, z = oldTagged(t, m, 0), oldTagged(t, m, 1)
		return m, x, y, z
	}

	t.Run("without selector the newest path is kept", func(t *testing.T) {
		m, x, y, z := setup(t, testConfig())
		require.Same(t, x[2], m.Connection(x[0].RemotePeer()))
		n, err := m.TrimConnections(context.Background(), 2)
		require.NoError(t, err)
		require.Equal(t, 2, n)
		requireClosed(t, x[0], x[1])
		requireOpen(t, x[2], y, z)

		// Only now does a peer lose its last connection: the cheapest.
		n, err = m.TrimConnections(context.Background(), 1)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		requireClosed(t, y)
		requireOpen(t, x[2], z)
	})

	t.Run("selector's path is kept", func(t *testing.T) {
		m, x, y, z := setup(t, testConfig())
		sel := &pathSelector{pick: map[peer.ID]network.Conn{x[0].RemotePeer(): x[0]}, asked: map[peer.ID]int{}}
		m.SetPathSelector(sel)
		require.Same(t, x[0], m.Connection(x[0].RemotePeer()))
		n, err := m.TrimConnections(context.Background(), 2)
		require.NoError(t, err)
		require.Equal(t, 2, n)
		requireClosed(t, x[1], x[2])
		requireOpen(t, x[0], y, z)
		sel.mu.Lock()
		require.Equal(t, 3, sel.asked[x[0].RemotePeer()], "selector asked with all of the peer's paths")
		sel.mu.Unlock()

		// Without a selector again: newest wins.
		m.SetPathSelector(nil)
		require.Same(t, x[0], m.Connection(x[0].RemotePeer()))
	})

	t.Run("redundant paths before unassigned and cheap peers in TrimOpenConns", func(t *testing.T) {
		cfg := testConfig()
		cfg.LowWater, cfg.HighWater = 3, 4
		m, x, y, z := setup(t, cfg)
		m.TrimOpenConns(context.Background())
		requireClosed(t, x[0], x[1])
		requireOpen(t, x[2], y, z)
		require.Equal(t, 3, m.ConnectionCount())
	})
}

func TestVictimOrderUnassignedBeforeRealmMembers(t *testing.T) {
	cfg := testConfig()
	cfg.LowWater, cfg.HighWater = 3, 6
	m := newTestManager(t, cfg, nil)

	var members, unassigned []*fakeConn
	for range 3 {
		members = append(members, oldMember(t, m, -50, "r")) // much cheaper by tags
	}
	for range 3 {
		unassigned = append(unassigned, oldTagged(t, m, 500))
	}
	m.TrimOpenConns(context.Background())
	requireClosed(t, unassigned...)
	requireOpen(t, members...)
	st := m.Stats()
	require.Equal(t, 3, st.Global.Count)
	require.Zero(t, st.Unassigned.Count)
	require.Equal(t, 3, st.Realms["r"].Count)
	require.Equal(t, uint64(3), st.Closed[core.ReasonGlobalHighWater])
}

func TestVictimOrderAscendingScore(t *testing.T) {
	m := newTestManager(t, testConfig(), nil)
	byTag := map[int]*fakeConn{}
	for _, v := range []int{5, 1, 3, -2, 4, 2} {
		byTag[v] = oldTagged(t, m, v)
	}
	n, err := m.TrimConnections(context.Background(), 6)
	require.NoError(t, err)
	require.Equal(t, 6, n)
	requireCloseOrder(t, byTag[-2], byTag[1], byTag[2], byTag[3], byTag[4], byTag[5])
}

func TestVictimOrderScoreCountsRealmWeightAndActivity(t *testing.T) {
	m := newTestManager(t, testConfig(), nil) // RealmWeight 10
	// Created in reverse order, so that idle time alone would give the
	// reverse order.
	p4 := oldTagged(t, m, 3)  // 3 + 10 + activity 10 = 23
	p3 := oldTagged(t, m, 12) // 12 + 10 = 22
	p2 := oldTagged(t, m, 0)  // 0 + 2×10 = 20
	p1 := oldTagged(t, m, 5)  // 5 + 10 = 15
	for _, c := range []*fakeConn{p1, p2, p3, p4} {
		m.AssignRealm(c.RemotePeer(), "a")
	}
	m.AssignRealm(p2.RemotePeer(), "b")
	var idleSince, activeSince int64
	withConnInfo(t, m, p1, func(ci *connInfo) { idleSince = ci.lastActive })
	withConnInfo(t, m, p4, func(ci *connInfo) { activeSince = ci.lastActive })
	p4.OpenStreams(1)
	m.sampleActivity()
	withConnInfo(t, m, p1, func(ci *connInfo) { require.Equal(t, idleSince, ci.lastActive, "idle connection marked active") })
	withConnInfo(t, m, p4, func(ci *connInfo) { require.True(t, ci.lastActive > activeSince, "sampling missed a stream") })

	n, err := m.TrimConnections(context.Background(), 4)
	require.NoError(t, err)
	require.Equal(t, 4, n)
	requireCloseOrder(t, p1, p2, p3, p4)
}

func TestVictimOrderTies(t *testing.T) {
	base := time.Now().Add(-2 * time.Hour)
	type side struct {
		dir        network.Direction
		lastActive time.Time
		throughput float64
		authed     bool // assigned to a realm once, unassigned since
	}
	cases := []struct {
		name         string
		first, later side // first must be closed first
	}{
		{
			name:  "never authenticated first",
			first: side{dir: network.DirOutbound, lastActive: base.Add(time.Hour), throughput: 100},
			later: side{dir: network.DirInbound, lastActive: base, throughput: 0, authed: true},
		},
		{
			name:  "idle longest",
			first: side{dir: network.DirOutbound, lastActive: base, throughput: 100},
			later: side{dir: network.DirInbound, lastActive: base.Add(time.Hour), throughput: 0},
		},
		{
			name:  "lowest throughput",
			first: side{dir: network.DirOutbound, lastActive: base, throughput: 1},
			later: side{dir: network.DirInbound, lastActive: base, throughput: 100},
		},
		{
			name:  "inbound before outbound",
			first: side{dir: network.DirInbound, lastActive: base, throughput: 5},
			later: side{dir: network.DirOutbound, lastActive: base, throughput: 5},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestManager(t, testConfig(), nil)
			mk := func(s side) *fakeConn {
				p := randPeer(t)
				c := newFakeConn(p, s.dir)
				require.True(t, tryAdmit(m, c))
				age(t, m, c)
				if s.authed {
					m.AssignRealm(p, "r")
					m.UnassignRealm(p, "r")
				}
				withConnInfo(t, m, c, func(ci *connInfo) {
					ci.lastActive = s.lastActive.UnixNano()
					ci.throughput = s.throughput
				})
				return c
			}
			// The connection expected later is created first, so that
			// creation order cannot explain the result.
			later := mk(tc.later)
			first := mk(tc.first)
			require.Empty(t, m.Realms(later.RemotePeer()))

			n, err := m.TrimConnections(context.Background(), 1)
			require.NoError(t, err)
			require.Equal(t, 1, n)
			requireClosed(t, first)
			requireOpen(t, later)
		})
	}
}

// ---------------------------------------------------------------------------
// Protection, grace period, ceiling

func TestTrimNeverClosesProtectedOrInGrace(t *testing.T) {
	cfg := testConfig()
	cfg.LowWater = 1 // TrimOpenConns trims down to LowWater
	m := newTestManager(t, cfg, nil)

	protA := randPeer(t)
	m.Protect(protA, "keep")
	m.TagPeer(protA, "score", -100)
	pa1, pa2 := oldConn(t, m, protA), oldConn(t, m, protA) // a redundant path too
	protB := randPeer(t)
	m.Protect(protB, "keep")
	m.TagPeer(protB, "score", -100)
	pb := oldConn(t, m, protB)

	var fresh []*fakeConn
	for range 2 {
		p := randPeer(t)
		m.TagPeer(p, "score", -100)
		fresh = append(fresh, admit(t, m, p)) // inside the grace period
	}
	old1, old2 := oldTagged(t, m, 0), oldTagged(t, m, 0)

	m.TrimOpenConns(context.Background())
	requireClosed(t, old1, old2)
	requireOpen(t, pa1, pa2, pb)
	requireOpen(t, fresh...)
	require.Equal(t, 5, m.ConnectionCount())

	n, err := m.TrimConnections(context.Background(), 10)
	require.NoError(t, err)
	require.Zero(t, n, "TrimConnections closed a protected or new connection")

	// Once unprotected, the peer is fair game.
	require.False(t, m.Unprotect(protB, "keep"))
	m.TrimOpenConns(context.Background())
	requireClosed(t, pb)
	requireOpen(t, pa1, pa2)
	requireOpen(t, fresh...)
}

func TestAdmitConnAtCeiling(t *testing.T) {
	cfg := testConfig()
	cfg.LowWater, cfg.HighWater = 5, 10 // ceiling 11
	cfg.Unassigned = core.PoolLimits{LowWater: 100, HighWater: 100}
	m := newTestManager(t, cfg, nil)
	require.Equal(t, 11, m.cfg.ceiling())

	// 11 connections, all inside their grace period.
	var protected []*fakeConn
	for range 2 {
		p := randPeer(t)
		m.Protect(p, "keep")
		m.TagPeer(p, "score", -100)
		protected = append(protected, admit(t, m, p))
	}
	cheap := randPeer(t)
	m.TagPeer(cheap, "score", 1)
	cheapest := admit(t, m, cheap)
	var others []*fakeConn
	for range 8 {
		p := randPeer(t)
		m.TagPeer(p, "score", 50)
		others = append(others, admit(t, m, p))
	}
	require.Equal(t, 11, m.ConnectionCount())

	// A valuable newcomer: the cheapest unprotected connection goes, grace
	// period or not.
	valuable := randPeer(t)
	m.TagPeer(valuable, "score", 100)
	nc := newFakeConn(valuable, network.DirInbound)
	require.True(t, tryAdmit(m, nc))
	requireClosed(t, cheapest)
	requireOpen(t, protected...)
	requireOpen(t, others...)
	requireOpen(t, nc)
	require.Equal(t, 11, m.ConnectionCount())
	require.Equal(t, uint64(1), m.Stats().Closed[core.ReasonPoolCeiling])

	// Among equals the newcomer yields (no churn).
	equal := randPeer(t)
	m.TagPeer(equal, "score", 50)
	require.False(t, tryAdmit(m, newFakeConn(equal, network.DirInbound)))
	requireOpen(t, others...)
	require.Equal(t, uint64(1), m.Stats().Refused)

	// A newcomer cheaper than everything unprotected is refused, and
	// nothing is closed for it.
	poor := newFakeConn(randPeer(t), network.DirInbound)
	require.False(t, tryAdmit(m, poor))
	require.Equal(t, 11, m.ConnectionCount())
	require.Equal(t, uint64(2), m.Stats().Refused)
	requireOpen(t, protected...)
	requireOpen(t, others...)
	requireOpen(t, nc)

	// The notifiee admits nothing: admission is the pipeline's
	// (AdmitConn, before a connection is announced), not Connected's.
	poor2 := newFakeConn(randPeer(t), network.DirInbound)
	m.Notifee().Connected(nil, poor2)
	requireOpen(t, poor2)
	require.Equal(t, 11, m.ConnectionCount())
	require.Equal(t, uint64(2), m.Stats().Refused)
	require.Nil(t, m.Connection(poor2.RemotePeer()))

	// Below the ceiling nothing is closed at admission.
	m.Notifee().Disconnected(nil, others[0])
	extra := newFakeConn(randPeer(t), network.DirInbound)
	require.True(t, tryAdmit(m, extra))
	require.Equal(t, 11, m.ConnectionCount())
	requireOpen(t, others[1:]...)
}

func TestAdmitConnAtCeilingTrimsOrdinarilyFirst(t *testing.T) {
	cfg := testConfig()
	cfg.LowWater, cfg.HighWater = 5, 10 // ceiling 11
	m := newTestManager(t, cfg, nil)
	var fresh, old []*fakeConn
	for range 6 {
		fresh = append(fresh, admit(t, m, randPeer(t))) // cheapest: score 0
	}
	for range 5 {
		old = append(old, oldTagged(t, m, 10))
	}
	// At the ceiling the ordinary trim goes first: it cannot touch the
	// connections in their grace period, only the old ones, down to
	// LowWater if it can.
	require.True(t, tryAdmit(m, newFakeConn(randPeer(t), network.DirOutbound)))
	requireClosed(t, old...)
	requireOpen(t, fresh...)
	require.Equal(t, 7, m.ConnectionCount())
}

// A connection closed to make room at the ceiling frees a slot before the
// newcomer takes it; an admission in that window (another goroutine, here
// run from the victim's Close) takes the slot too, and the count passes the
// ceiling.
func TestAdmitConnCeilingHoldsWhileVictimCloses(t *testing.T) {
	cfg := testConfig()
	cfg.LowWater, cfg.HighWater = 5, 10 // ceiling 11
	m := newTestManager(t, cfg, nil)

	var peak atomic.Int64
	observe := func() {
		for {
			n := int64(m.ConnectionCount())
			cur := peak.Load()
			if n <= cur || peak.CompareAndSwap(cur, n) {
				return
			}
		}
	}
	victim := admit(t, m, randPeer(t)) // oldest idle, score 0: the cheapest
	for range 10 {
		p := randPeer(t)
		m.TagPeer(p, "score", 10)
		admit(t, m, p)
	}
	require.Equal(t, 11, m.ConnectionCount())

	// While the victim closes, another goroutine admits a connection (in
	// the swarm a close never calls back into the manager: the intruder
	// is concurrent, so it runs on its own goroutine and may have to wait
	// for the trim in progress).
	var intruderAdmitted atomic.Bool
	var intruder sync.WaitGroup
	victim.OnClose(func(*fakeConn) {
		observe()
		intruder.Go(func() {
			p := randPeer(t)
			m.TagPeer(p, "score", 10)
			intruderAdmitted.Store(tryAdmit(m, newFakeConn(p, network.DirInbound)))
			observe()
		})
		time.Sleep(20 * time.Millisecond) // let the intruder race the trim
		observe()
	})
	newcomer := randPeer(t)
	m.TagPeer(newcomer, "score", 10)
	admitted := tryAdmit(m, newFakeConn(newcomer, network.DirInbound))
	observe()
	intruder.Wait()
	observe()
	requireClosed(t, victim)
	t.Logf("newcomer admitted %v, intruder admitted %v, count %d", admitted, intruderAdmitted.Load(), m.ConnectionCount())
	require.LessOrEqual(t, int(peak.Load()), m.cfg.ceiling(), "the global count passed the ceiling")
	require.LessOrEqual(t, m.ConnectionCount(), m.cfg.ceiling(), "the global count passed the ceiling")
}

// Refusing a newcomer takes nothing from any realm: it is not accounted
// yet, so reservations do not shield it. At the ceiling a newcomer to a realm
// at or below its LowWater must still be refused when it is the cheapest, and
// when no existing connection may be closed (all held by reservations) an
// unprotected newcomer must be refused rather than admitted past the ceiling.
// (Failed before dda1b3b: the newcomer went through reservationAllows.)
func TestAdmitConnCeilingNewcomerToReservedRealm(t *testing.T) {
	newManager := func(t *testing.T) *Manager {
		cfg := testConfig()
		cfg.LowWater, cfg.HighWater = 5, 10 // ceiling 11
		m := newTestManager(t, cfg, nil)
		require.NoError(t, m.SetRealmLimits("reserved", core.PoolLimits{LowWater: 20, HighWater: 40}))
		return m
	}

	t.Run("cheapest newcomer refused", func(t *testing.T) {
		m := newManager(t)
		var members []*fakeConn
		for range 11 {
			p := randPeer(t)
			m.TagPeer(p, "score", 50)
			m.AssignRealm(p, "open") // LowWater 0: closable
			members = append(members, admit(t, m, p))
		}
		p := randPeer(t)
		m.TagPeer(p, "score", -100) // by far the cheapest
		m.AssignRealm(p, "reserved")
		ok := tryAdmit(m, newFakeConn(p, network.DirInbound))
		assert.False(t, ok, "the cheapest newcomer was admitted")
		requireOpen(t, members...)
		require.LessOrEqual(t, m.ConnectionCount(), m.cfg.ceiling())
	})

	t.Run("nothing can make room", func(t *testing.T) {
		m := newManager(t)
		var members []*fakeConn
		for range 11 {
			p := randPeer(t)
			m.AssignRealm(p, "reserved")
			members = append(members, admit(t, m, p))
		}
		require.Equal(t, 11, m.Stats().Realms["reserved"].Count)
		p := randPeer(t)
		m.AssignRealm(p, "reserved")
		ok := tryAdmit(m, newFakeConn(p, network.DirInbound))
		requireOpen(t, members...)
		assert.False(t, ok, "admitted although nothing could make room")
		require.LessOrEqual(t, m.ConnectionCount(), m.cfg.ceiling(), "the global count passed the ceiling")
	})
}

func TestAdmitConnCeilingConcurrent(t *testing.T) {
	cfg := testConfig()
	cfg.LowWater, cfg.HighWater = 10, 20 // ceiling 22
	m := newTestManager(t, cfg, nil)
	ceiling := m.cfg.ceiling()
	require.Equal(t, 22, ceiling)

	const workers, perWorker = 32, 40
	var (
		peak     atomic.Int64
		stop     = make(chan struct{})
		monitor  sync.WaitGroup
		wg       sync.WaitGroup
		mu       sync.Mutex
		admitted []*fakeConn
		all      []*fakeConn
	)
	observe := func() {
		n := int64(m.ConnectionCount())
		for cur := peak.Load(); n > cur && !peak.CompareAndSwap(cur, n); cur = peak.Load() {
		}
	}
	monitor.Add(1)
	go func() {
		defer monitor.Done()
		for {
			select {
			case <-stop:
				return
			default:
				observe()
				runtime.Gosched()
			}
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for range perWorker {
				p := randPeer(t)
				if v := rng.IntN(3); v > 0 {
					m.TagPeer(p, "score", v*10)
				}
				dir := network.DirOutbound
				if rng.IntN(2) == 0 {
					dir = network.DirInbound
				}
				c := newFakeConn(p, dir)
				ok := tryAdmit(m, c)
				observe()
				mu.Lock()
				all = append(all, c)
				if ok {
					admitted = append(admitted, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(stop)
	monitor.Wait()

	syncTrims(m)
	require.LessOrEqual(t, int(peak.Load()), ceiling, "the global count passed the ceiling")
	open := 0
	for _, c := range admitted {
		if !c.IsClosed() {
			open++
		}
	}
	require.Equal(t, open, m.ConnectionCount(), "count disagrees with the connections admitted and not closed")
	require.LessOrEqual(t, m.ConnectionCount(), ceiling)

	for _, c := range all {
		m.Notifee().Disconnected(nil, c)
	}
	st := m.Stats()
	require.Zero(t, st.Global.Count)
	require.Zero(t, st.Unassigned.Count)
}

func TestMaxConnsPerPeer(t *testing.T) {
	cfg := testConfig()
	cfg.MaxConnsPerPeer = 3
	m := newTestManager(t, cfg, nil)
	p := randPeer(t)
	var conns []*fakeConn
	for range 3 {
		conns = append(conns, admit(t, m, p))
	}
	fourth := newFakeConn(p, network.DirInbound)
	require.False(t, tryAdmit(m, fourth), "the (MaxConnsPerPeer+1)th connection was admitted")
	require.Equal(t, 3, m.ConnectionCount())
	require.Equal(t, 3, m.Stats().Unassigned.Count)
	require.Equal(t, uint64(1), m.Stats().Refused)
	require.Len(t, m.Connections(p), 3)

	// The refusal names its reason and matches ErrPoolFull.
	fifth := newFakeConn(p, network.DirInbound)
	err := m.AdmitConn(context.Background(), fifth)
	require.ErrorIs(t, err, ErrPoolFull)
	require.ErrorIs(t, err, core.ErrRefused)
	var refused *core.RefusedError
	require.ErrorAs(t, err, &refused)
	require.Equal(t, core.ReasonMaxConnsPerPeer, refused.Reason)
	require.Equal(t, core.StagePools, refused.Stage)
	require.Equal(t, uint64(2), m.Stats().Refused)

	// Other peers are not affected; a freed slot can be used again.
	admit(t, m, randPeer(t))
	m.Notifee().Disconnected(nil, conns[0])
	admit(t, m, p)
	require.Equal(t, 4, m.ConnectionCount())
	requireOpen(t, conns[1:]...)
}

// ---------------------------------------------------------------------------
// Realms and the unassigned pool

func TestRealmCountsMoveWithAssignment(t *testing.T) {
	m := newTestManager(t, testConfig(), nil)
	p := randPeer(t)
	c1, c2 := admit(t, m, p), admit(t, m, p)
	other := admit(t, m, randPeer(t))

	counts := func() (global, unassigned, a, b int) {
		st := m.Stats()
		return st.Global.Count, st.Unassigned.Count, st.Realms["a"].Count, st.Realms["b"].Count
	}
	check := func(global, unassigned, a, b int) {
		t.Helper()
		g, u, ra, rb := counts()
		require.Equal(t, []int{global, unassigned, a, b}, []int{g, u, ra, rb}, "global, unassigned, realm a, realm b")
	}
	check(3, 3, 0, 0)

	m.AssignRealm(p, "a")
	check(3, 1, 2, 0)
	m.AssignRealm(p, "a") // idempotent
	check(3, 1, 2, 0)
	m.AssignRealm(p, "b") // counts in both realms
	check(3, 1, 2, 2)
	require.ElementsMatch(t, []core.RealmID{"a", "b"}, m.Realms(p))
	require.ElementsMatch(t, []network.Conn{c1, c2}, m.RealmConnections("a"))
	require.ElementsMatch(t, []network.Conn{c1, c2}, m.RealmConnections("b"))

	c3 := admit(t, m, p) // a new path counts in both realms
	check(4, 1, 3, 3)

	m.UnassignRealm(p, "a")
	check(4, 1, 0, 3)
	m.UnassignRealm(p, "a") // not a member any more: nothing
	m.UnassignRealm(p, "nosuch")
	check(4, 1, 0, 3)
	m.UnassignRealm(p, "b") // back to the unassigned pool
	check(4, 4, 0, 0)
	require.Empty(t, m.Realms(p))

	m.AssignRealm(p, "b")
	check(4, 1, 0, 3)
	m.Notifee().Disconnected(nil, c3)
	check(3, 1, 0, 2)
	m.Notifee().Disconnected(nil, c1)
	m.Notifee().Disconnected(nil, c2)
	m.Notifee().Disconnected(nil, other)
	check(0, 0, 0, 0)

	// A realm assignment made before the peer connects applies to its
	// connections.
	q := randPeer(t)
	m.AssignRealm(q, "a")
	admit(t, m, q)
	check(1, 0, 1, 0)
}

func TestGlobalTrimKeepsRealmLowWater(t *testing.T) {
	cfg := testConfig()
	cfg.LowWater, cfg.HighWater = 1, 5
	m := newTestManager(t, cfg, nil)
	require.NoError(t, m.SetRealmLimits("r", core.PoolLimits{LowWater: 3, HighWater: 10}))

	var members, unassigned []*fakeConn
	for range 4 {
		members = append(members, oldMember(t, m, -100, "r"))
	}
	for range 2 {
		unassigned = append(unassigned, oldTagged(t, m, 0))
	}
	m.TrimOpenConns(context.Background())
	requireClosed(t, unassigned...)
	st := m.Stats()
	require.Equal(t, 3, st.Realms["r"].Count, "a global trim took the realm below its LowWater")
	require.Equal(t, 3, st.Global.Count)
	closed := 0
	for _, c := range members {
		if c.IsClosed() {
			closed++
		}
	}
	require.Equal(t, 1, closed)

	// TrimConnections respects the reservation as well.
	n, err := m.TrimConnections(context.Background(), 3)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Equal(t, 3, m.Stats().Realms["r"].Count)
}

func TestRealmTrimThroughTrigger(t *testing.T) {
	m := newTestManager(t, testConfig(), nil) // background ticker never fires: only triggers
	require.NoError(t, m.SetRealmLimits("a", core.PoolLimits{LowWater: 2, HighWater: 4}))
	require.NoError(t, m.SetRealmLimits("b", core.PoolLimits{LowWater: 2, HighWater: 10}))

	shared := oldTagged(t, m, -100) // in a and b, by far the cheapest
	b1 := oldTagged(t, m, 0)
	var as []*fakeConn
	for i := range 4 {
		as = append(as, oldTagged(t, m, i+1))
	}
	m.AssignRealm(b1.RemotePeer(), "b")
	m.AssignRealm(shared.RemotePeer(), "b")
	m.AssignRealm(shared.RemotePeer(), "a")
	for _, c := range as[:3] {
		m.AssignRealm(c.RemotePeer(), "a")
	}
	syncTrims(m)
	require.Equal(t, 4, m.Stats().Realms["a"].Count, "at HighWater: not trimmed yet")
	requireOpen(t, as...)

	// Above HighWater: trimmed to LowWater, but not the shared peer, which
	// realm b needs to stay at its LowWater.
	m.AssignRealm(as[3].RemotePeer(), "a")
	require.Eventually(t, func() bool { return m.Stats().Realms["a"].Count == 2 }, 5*time.Second, time.Millisecond)
	syncTrims(m)
	requireClosed(t, as[0], as[1], as[2])
	requireOpen(t, shared, as[3], b1)
	st := m.Stats()
	require.Equal(t, 2, st.Realms["a"].Count)
	require.Equal(t, 2, st.Realms["b"].Count)
	require.Equal(t, uint64(3), st.Closed[core.ReasonRealmHighWater])
	require.GreaterOrEqual(t, st.Realms["a"].Trims, uint64(1))
	require.Equal(t, 3, st.Global.Count)

	// Lower limits trigger a trim too.
	require.NoError(t, m.SetRealmLimits("a", core.PoolLimits{LowWater: 1, HighWater: 1}))
	require.Eventually(t, func() bool { return m.Stats().Realms["a"].Count == 1 }, 5*time.Second, time.Millisecond)
	syncTrims(m)
	requireClosed(t, as[3])
	requireOpen(t, shared, b1)

	// And from the other side: realm a, at its LowWater, keeps the shared
	// peer when realm b is trimmed.
	require.NoError(t, m.SetRealmLimits("b", core.PoolLimits{LowWater: 0, HighWater: 1}))
	require.Eventually(t, func() bool { return m.Stats().Realms["b"].Count == 1 }, 5*time.Second, time.Millisecond)
	syncTrims(m)
	requireClosed(t, b1)
	requireOpen(t, shared)
	require.Equal(t, 1, m.Stats().Realms["a"].Count)
	require.Equal(t, 1, m.ConnectionCount())
}

func TestUnassignedPoolTrimmedToLowWater(t *testing.T) {
	t.Run("trigger on admission", func(t *testing.T) {
		cfg := testConfig()
		cfg.Unassigned = core.PoolLimits{LowWater: 2, HighWater: 4}
		m := newTestManager(t, cfg, nil)
		var members []*fakeConn
		for range 3 {
			members = append(members, oldMember(t, m, -100, "r"))
		}
		var un []*fakeConn
		for i := range 4 {
			un = append(un, oldTagged(t, m, i))
		}
		syncTrims(m)
		requireOpen(t, un...)
		// The fifth unassigned connection (in its grace period) passes
		// HighWater: the three cheapest old ones go.
		fresh := admit(t, m, randPeer(t))
		require.Eventually(t, func() bool { return m.Stats().Unassigned.Count == 2 }, 5*time.Second, time.Millisecond)
		syncTrims(m)
		requireClosed(t, un[0], un[1], un[2])
		requireOpen(t, un[3], fresh)
		requireOpen(t, members...)
		st := m.Stats()
		require.Equal(t, uint64(3), st.Closed[core.ReasonUnassignedHighWater])
		require.Equal(t, uint64(1), st.Unassigned.Trims)
		require.Equal(t, 3, st.Realms["r"].Count)
	})
	t.Run("TrimOpenConns at HighWater", func(t *testing.T) {
		cfg := testConfig()
		cfg.Unassigned = core.PoolLimits{LowWater: 1, HighWater: 3}
		m := newTestManager(t, cfg, nil)
		member := oldMember(t, m, -100, "r")
		var un []*fakeConn
		for i := range 3 {
			un = append(un, oldTagged(t, m, i))
		}
		m.TrimOpenConns(context.Background())
		requireClosed(t, un[0], un[1])
		requireOpen(t, un[2], member)
		require.Equal(t, 1, m.Stats().Unassigned.Count)
	})
}

// ---------------------------------------------------------------------------
// Decaying tags

func TestDecayingTags(t *testing.T) {
	const res = 20 * time.Millisecond
	cfg := testConfig()
	cfg.DecayResolution = res
	m := newTestManager(t, cfg, nil)
	d, ok := connmgr.SupportsDecay(m)
	require.True(t, ok)

	p := randPeer(t)
	admit(t, m, p)
	m.TagPeer(p, "static", 7)

	_, err := d.RegisterDecayingTag("bad", 0, connmgr.DecayNone(), connmgr.BumpOverwrite())
	require.ErrorContains(t, err, "interval")
	_, err = d.RegisterDecayingTag("bad", time.Second, nil, connmgr.BumpOverwrite())
	require.Error(t, err)

	// Bump goes through bumpFn; the interval is raised to the resolution.
	steady, err := d.RegisterDecayingTag("steady", time.Millisecond, connmgr.DecayNone(), connmgr.BumpSumBounded(0, 10))
	require.NoError(t, err)
	require.Equal(t, "steady", steady.Name())
	require.Equal(t, res, steady.Interval())
	_, err = d.RegisterDecayingTag("steady", time.Second, connmgr.DecayNone(), connmgr.BumpOverwrite())
	require.ErrorContains(t, err, `"steady"`)
	require.NoError(t, steady.Bump(p, 4))
	info := m.GetTagInfo(p)
	require.Equal(t, 4, info.Tags["steady"])
	require.Equal(t, 11, info.Value)
	require.NoError(t, steady.Bump(p, 100))
	require.Equal(t, 10, m.GetTagInfo(p).Tags["steady"], "bumpFn's bound not applied")
	require.Equal(t, 17, m.GetTagInfo(p).Value)

	// The decay loop halves the value each interval and removes it below
	// 4 (with its value, 2, still in it).
	var badArg atomic.Bool
	var visits atomic.Int64
	halve := func(v connmgr.DecayingValue) (int, bool) {
		if v.Peer != p || v.Tag == nil || v.Tag.Name() != "halve" {
			badArg.Store(true)
		}
		visits.Add(1)
		after := v.Value / 2
		return after, after < 4
	}
	halving, err := d.RegisterDecayingTag("halve", res, halve, connmgr.BumpSumUnbounded())
	require.NoError(t, err)
	require.NoError(t, halving.Bump(p, 1024))
	require.Eventually(t, func() bool {
		v, ok := m.GetTagInfo(p).Tags["halve"]
		return ok && v > 0 && v < 1024
	}, 5*time.Second, time.Millisecond, "never decayed")
	require.Eventually(t, func() bool {
		_, ok := m.GetTagInfo(p).Tags["halve"]
		return !ok
	}, 10*time.Second, 5*time.Millisecond, "never removed")
	require.Equal(t, 17, m.GetTagInfo(p).Value, "removal must take the tag's value out of the score")
	require.False(t, badArg.Load(), "decayFn got a value of another tag or peer")
	require.GreaterOrEqual(t, visits.Load(), int64(9)) // 1024 → 512 → … → 2
	require.Equal(t, 10, m.GetTagInfo(p).Tags["steady"], "DecayNone changed the value")

	// Remove takes the value out at once; again is fine.
	removable, err := d.RegisterDecayingTag("removable", res, connmgr.DecayNone(), connmgr.BumpOverwrite())
	require.NoError(t, err)
	require.NoError(t, removable.Bump(p, 8))
	require.Equal(t, 25, m.GetTagInfo(p).Value)
	require.NoError(t, removable.Remove(p))
	_, present := m.GetTagInfo(p).Tags["removable"]
	require.False(t, present)
	require.Equal(t, 17, m.GetTagInfo(p).Value)
	require.NoError(t, removable.Remove(p))
	require.NoError(t, removable.Remove(randPeer(t)))
	require.NoError(t, removable.Close())

	// Bump on an unconnected peer creates its entry.
	q := randPeer(t)
	require.NoError(t, steady.Bump(q, 3))
	require.Equal(t, 3, m.GetTagInfo(q).Value)

	// Close removes the tag from every peer; afterwards it errors.
	require.NoError(t, steady.Close())
	_, present = m.GetTagInfo(p).Tags["steady"]
	require.False(t, present)
	require.Equal(t, 7, m.GetTagInfo(p).Value)
	require.Zero(t, m.GetTagInfo(q).Value)
	require.NoError(t, steady.Close(), "Close is idempotent")
	require.ErrorIs(t, steady.Bump(p, 1), ErrTagClosed)
	require.ErrorIs(t, steady.Remove(p), ErrTagClosed)
	require.Equal(t, 7, m.GetTagInfo(p).Value)
	require.NoError(t, halving.Close())

	// The name is free again.
	again, err := d.RegisterDecayingTag("steady", res, connmgr.DecayNone(), connmgr.BumpOverwrite())
	require.NoError(t, err)
	require.NoError(t, again.Bump(p, 2))
	require.Equal(t, 9, m.GetTagInfo(p).Value)
}

// ---------------------------------------------------------------------------
// Trim calls

func TestTrimOpenConnsCoalesces(t *testing.T) {
	cfg := testConfig()
	cfg.LowWater = 2 // TrimOpenConns trims down to LowWater
	m := newTestManager(t, cfg, nil)
	var old, fresh []*fakeConn
	for i := range 4 {
		old = append(old, oldTagged(t, m, i))
	}
	for range 4 {
		fresh = append(fresh, admit(t, m, randPeer(t))) // keep the count above LowWater
	}
	before := m.Stats().Global.Trims

	const callers = 8
	release := holdTrimLock(t, m) // a trim is running
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.TrimOpenConns(context.Background())
		}()
	}
	waitBlockedOnTrimLock(t, "(*Manager).TrimOpenConns", callers)
	release()
	wg.Wait()

	requireClosed(t, old...)
	requireOpen(t, fresh...)
	require.Equal(t, 4, m.ConnectionCount())
	require.Equal(t, before+1, m.Stats().Global.Trims, "callers that waited for the same trim trimmed again")

	// A call after the previous one returned trims again.
	m.TrimOpenConns(context.Background())
	require.Equal(t, before+2, m.Stats().Global.Trims)
}

// TrimOpenConns promises to trim the global pool down to LowWater. A call
// that had to wait for an unrelated trim (here TrimConnections(ctx, 1),
// equally a realm trim of the background loop or a ceiling trim) must not
// take it for its own and return with the pool still above HighWater.
// (Failed before dda1b3b: coalescing compared trimCount, which every trim
// bumps.)
func TestTrimOpenConnsNotSkippedAfterUnrelatedTrim(t *testing.T) {
	cfg := testConfig()
	cfg.LowWater, cfg.HighWater = 2, 7 // ceiling 8
	m := newTestManager(t, cfg, nil)
	for i := range 8 {
		oldTagged(t, m, i)
	}

	release := holdTrimLock(t, m)
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.TrimOpenConns(context.Background())
	}()
	waitBlockedOnTrimLock(t, "(*Manager).TrimOpenConns", 1)
	// TrimConnections(ctx, 1) got the lock first.
	closed := m.trimLocked(scopeGlobal, nil, 1, false, core.ReasonManualTrim, nil).closed
	release()
	<-done
	require.Equal(t, 1, closed)

	require.Equal(t, cfg.LowWater, m.ConnectionCount(), "TrimOpenConns returned without trimming the global pool (HighWater %d)", cfg.HighWater)
}

func TestTrimConnectionsClosesExactlyN(t *testing.T) {
	m := newTestManager(t, testConfig(), nil)
	var byScore []*fakeConn
	for _, v := range []int{9, 3, 7, 1, 5, 8, 2, 6, 4, 0} {
		byScore = append(byScore, oldTagged(t, m, v))
	}
	slices.SortFunc(byScore, func(a, b *fakeConn) int {
		return m.GetTagInfo(a.RemotePeer()).Value - m.GetTagInfo(b.RemotePeer()).Value
	})
	fresh := admit(t, m, randPeer(t))
	prot := randPeer(t)
	m.Protect(prot, "keep")
	m.TagPeer(prot, "score", -10)
	protected := oldConn(t, m, prot)

	n, err := m.TrimConnections(context.Background(), 4)
	require.NoError(t, err)
	require.Equal(t, 4, n)
	requireCloseOrder(t, byScore[:4]...)
	requireOpen(t, byScore[4:]...)
	require.Equal(t, 8, m.ConnectionCount())
	require.Equal(t, uint64(4), m.Stats().Closed[core.ReasonManualTrim])

	n, err = m.TrimConnections(context.Background(), 100)
	require.NoError(t, err)
	require.Equal(t, 6, n, "only the old unprotected connections may go")
	requireCloseOrder(t, byScore[4:]...)
	requireOpen(t, fresh, protected)

	n, err = m.TrimConnections(context.Background(), 0)
	require.NoError(t, err)
	require.Zero(t, n)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n, err = m.TrimConnections(ctx, 1)
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, n)
}

// ---------------------------------------------------------------------------
// Events

func TestEveryTrimmedConnectionEmitsAnEvent(t *testing.T) {
	bus := eventbus.NewBus()
	sub, err := bus.Subscribe(new(EvtConnTrimmed), eventbus.BufSize(64))
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Close() })

	cfg := testConfig()
	cfg.LowWater, cfg.HighWater = 2, 20 // ceiling 22
	cfg.Unassigned = core.PoolLimits{LowWater: 3, HighWater: 5}
	m := newTestManager(t, cfg, bus)
	require.NoError(t, m.SetRealmLimits("r", core.PoolLimits{LowWater: 1, HighWater: 3}))
	require.NoError(t, m.SetRealmLimits("big", core.PoolLimits{LowWater: 0, HighWater: 1000}))

	// Six unassigned connections: the sixth passes the unassigned HighWater
	// and triggers a trim (6 → 3); four members of realm r: the fourth
	// triggers a realm trim (4 → 1). (TrimOpenConns is called after those,
	// not concurrently: see TestTrimOpenConnsNotSkippedAfterUnrelatedTrim.)
	var conns []*fakeConn
	for i := range 6 {
		conns = append(conns, oldTagged(t, m, i))
	}
	for i := range 4 {
		conns = append(conns, oldMember(t, m, i, "r"))
	}
	require.Eventually(t, func() bool {
		st := m.Stats()
		return st.Unassigned.Count == 3 && st.Realms["r"].Count == 1
	}, 5*time.Second, time.Millisecond)
	syncTrims(m)
	m.TrimOpenConns(context.Background())
	// Then global 4 → 2, from the unassigned connections (realm r is at
	// its LowWater).
	want := map[string]int{"unassigned/" + string(core.ReasonUnassignedHighWater): 3, "realm:r/" + string(core.ReasonRealmHighWater): 3, "global/" + string(core.ReasonGlobalHighWater): 2}
	require.Equal(t, 2, m.ConnectionCount())

	more := oldTagged(t, m, 100)
	conns = append(conns, more)
	n, err := m.TrimConnections(context.Background(), 1)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	want["global/"+string(core.ReasonManualTrim)] = 1
	requireOpen(t, more)

	// Fill up to the ceiling with new members of realm big, then admit one
	// more: the admission trims at the ceiling.
	for m.ConnectionCount() < m.cfg.ceiling() {
		p := randPeer(t)
		m.AssignRealm(p, "big")
		conns = append(conns, admit(t, m, p))
	}
	vip := randPeer(t)
	m.TagPeer(vip, "score", 1000)
	m.AssignRealm(vip, "big")
	conns = append(conns, admit(t, m, vip))
	want["global/"+string(core.ReasonPoolCeiling)] = 1
	requireClosed(t, more)
	syncTrims(m)

	closed := map[string]*fakeConn{}
	for _, c := range conns {
		if c.IsClosed() {
			closed[c.ID()] = c
		}
	}
	total := 0
	for _, n := range want {
		total += n
	}
	require.Len(t, closed, total)

	got := map[string]int{}
	for range total {
		select {
		case e := <-sub.Out():
			ev := e.(EvtConnTrimmed)
			c, ok := closed[ev.ConnID]
			require.True(t, ok, "event for a connection that is not closed: %+v", ev)
			require.Equal(t, c.RemotePeer(), ev.Peer)
			delete(closed, ev.ConnID)
			got[string(ev.Pool)+"/"+string(ev.Reason)]++
		case <-time.After(5 * time.Second):
			t.Fatalf("missing events; got %v, want %v", got, want)
		}
	}
	require.Equal(t, want, got)
	require.Empty(t, closed)
	select {
	case e := <-sub.Out():
		t.Fatalf("unexpected extra event %+v", e)
	default:
	}
	st := m.Stats()
	require.Equal(t, uint64(3), st.Closed[core.ReasonUnassignedHighWater])
	require.Equal(t, uint64(3), st.Closed[core.ReasonRealmHighWater])
	require.Equal(t, uint64(2), st.Closed[core.ReasonGlobalHighWater])
	require.Equal(t, uint64(1), st.Closed[core.ReasonManualTrim])
	require.Equal(t, uint64(1), st.Closed[core.ReasonPoolCeiling])
}

// ---------------------------------------------------------------------------
// Configuration

func TestConfigValidation(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		want []string
	}{
		{"low above high", Config{LowWater: 10, HighWater: 5}, []string{"Config.LowWater", "10", "HighWater", "5"}},
		{"negative low", Config{LowWater: -1, HighWater: 5}, []string{"Config.LowWater", "-1"}},
		{"negative high", Config{LowWater: 1, HighWater: -5}, []string{"Config.HighWater", "-5"}},
		{"zero high with low", Config{LowWater: 3}, []string{"Config.HighWater", "0"}},
		{"negative grace", Config{GracePeriod: -time.Second}, []string{"Config.GracePeriod", "-1s"}},
		{"negative silence", Config{SilencePeriod: -2 * time.Second}, []string{"Config.SilencePeriod", "-2s"}},
		{"negative max conns", Config{MaxConnsPerPeer: -1}, []string{"Config.MaxConnsPerPeer", "-1"}},
		{"negative realm weight", Config{RealmWeight: -3}, []string{"Config.RealmWeight", "-3"}},
		{"negative decay resolution", Config{DecayResolution: -5 * time.Millisecond}, []string{"Config.DecayResolution", "-5ms"}},
		{"unassigned low above high", Config{Unassigned: core.PoolLimits{LowWater: 5, HighWater: 3}}, []string{"Config.Unassigned.LowWater", "5", "3"}},
		{"unassigned negative low", Config{Unassigned: core.PoolLimits{LowWater: -1, HighWater: 3}}, []string{"Config.Unassigned.LowWater", "-1"}},
		{"unassigned zero high", Config{Unassigned: core.PoolLimits{LowWater: 2}}, []string{"Config.Unassigned.HighWater", "0"}},
		{"realm low above high", Config{RealmDefaults: core.PoolLimits{LowWater: 4, HighWater: 2}}, []string{"Config.RealmDefaults.LowWater", "4", "2"}},
		{"realm negative high", Config{RealmDefaults: core.PoolLimits{HighWater: -7}}, []string{"Config.RealmDefaults.HighWater", "-7"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.WithDefaults()
			require.Error(t, err)
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
			m, err := New(tc.cfg, nil)
			require.Error(t, err)
			require.Nil(t, m)
		})
	}

	t.Run("zero fields take the defaults", func(t *testing.T) {
		got, err := Config{}.WithDefaults()
		require.NoError(t, err)
		require.Equal(t, DefaultConfig(), got)
		m := newTestManager(t, Config{}, nil)
		require.Equal(t, DefaultConfig(), m.Config())
		st := m.Stats()
		require.Equal(t, DefaultLowWater, st.Global.LowWater)
		require.Equal(t, DefaultHighWater, st.Global.HighWater)
		require.Equal(t, DefaultUnassignedLowWater, st.Unassigned.LowWater)
		require.Equal(t, DefaultUnassignedHighWater, st.Unassigned.HighWater)
		require.Equal(t, core.PoolLimits{LowWater: DefaultRealmLowWater, HighWater: DefaultRealmHighWater}, m.RealmLimitsOf("new"))
	})
	t.Run("pool defaults capped at the global watermarks", func(t *testing.T) {
		got, err := Config{LowWater: 10, HighWater: 20}.WithDefaults()
		require.NoError(t, err)
		require.Equal(t, core.PoolLimits{LowWater: 10, HighWater: 20}, got.Unassigned)
		require.Equal(t, core.PoolLimits{LowWater: 10, HighWater: 20}, got.RealmDefaults)
		require.Equal(t, DefaultGracePeriod, got.GracePeriod)
		require.Equal(t, DefaultSilencePeriod, got.SilencePeriod)
		require.Equal(t, DefaultMaxConnsPerPeer, got.MaxConnsPerPeer)
		require.Equal(t, DefaultRealmWeight, got.RealmWeight)
		require.Equal(t, DefaultDecayResolution, got.DecayResolution)

		got, err = Config{LowWater: 50, HighWater: 60}.WithDefaults()
		require.NoError(t, err)
		require.Equal(t, core.PoolLimits{LowWater: DefaultUnassignedLowWater, HighWater: 60}, got.Unassigned)
		require.Equal(t, core.PoolLimits{LowWater: DefaultRealmLowWater, HighWater: 60}, got.RealmDefaults)
	})
	t.Run("set fields are kept", func(t *testing.T) {
		in := Config{LowWater: 1, HighWater: 2, GracePeriod: time.Second, SilencePeriod: 3 * time.Second,
			MaxConnsPerPeer: 4, Unassigned: core.PoolLimits{LowWater: 5, HighWater: 6}, RealmDefaults: core.PoolLimits{LowWater: 7, HighWater: 8}, RealmWeight: 9,
			DecayResolution: 10 * time.Millisecond}
		got, err := in.WithDefaults()
		require.NoError(t, err)
		require.Equal(t, in, got)
	})
	t.Run("SetRealmLimits names realm and value", func(t *testing.T) {
		m := newTestManager(t, testConfig(), nil)
		err := m.SetRealmLimits("blue", core.PoolLimits{LowWater: 9, HighWater: 3})
		require.Error(t, err)
		for _, w := range []string{"blue", "LowWater", "9", "3"} {
			require.Contains(t, err.Error(), w)
		}
		err = m.SetRealmLimits("blue", core.PoolLimits{LowWater: -2, HighWater: 3})
		require.ErrorContains(t, err, "-2")
		require.Equal(t, m.cfg.RealmDefaults, m.RealmLimitsOf("blue"), "a refused limit was stored")
		require.NoError(t, m.SetRealmLimits("blue", core.PoolLimits{LowWater: 1, HighWater: 3}))
		require.Equal(t, core.PoolLimits{LowWater: 1, HighWater: 3}, m.RealmLimitsOf("blue"))
		require.Equal(t, 3, m.Stats().Realms["blue"].HighWater)
	})
}

// ---------------------------------------------------------------------------
// Concurrency

func TestConcurrentOperationsBalance(t *testing.T) {
	cfg := testConfig()
	cfg.LowWater, cfg.HighWater = 5, 20
	cfg.GracePeriod = time.Millisecond
	cfg.SilencePeriod = 5 * time.Millisecond // the background loop runs too
	cfg.MaxConnsPerPeer = 3
	cfg.Unassigned = core.PoolLimits{LowWater: 4, HighWater: 10}
	cfg.RealmDefaults = core.PoolLimits{LowWater: 2, HighWater: 8}
	cfg.DecayResolution = 5 * time.Millisecond
	m := newTestManager(t, cfg, nil)
	tag, err := m.RegisterDecayingTag("d", 5*time.Millisecond, connmgr.DecayFixed(1), connmgr.BumpSumBounded(0, 50))
	require.NoError(t, err)
	t.Cleanup(func() { _ = tag.Close() })
	m.SetPathSelector(&pathSelector{pick: map[peer.ID]network.Conn{}, asked: map[peer.ID]int{}})

	peers := make([]peer.ID, 24)
	for i := range peers {
		peers[i] = randPeer(t)
	}
	realms := []core.RealmID{"a", "b", "c"}

	const workers, ops = 16, 300
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		all []*fakeConn
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			var mine []*fakeConn
			for range ops {
				p := peers[rng.IntN(len(peers))]
				switch rng.IntN(12) {
				case 0, 1, 2:
					c := newFakeConn(p, network.Direction(1+rng.IntN(2)))
					if rng.IntN(2) == 0 {
						tryAdmit(m, c)
					} else {
						m.Notifee().Connected(nil, c)
					}
					mine = append(mine, c)
				case 3, 4:
					if len(mine) > 0 {
						i := rng.IntN(len(mine))
						m.Notifee().Disconnected(nil, mine[i])
					}
				case 5:
					m.TagPeer(p, fmt.Sprint("t", rng.IntN(3)), rng.IntN(40)-10)
				case 6:
					m.UntagPeer(p, fmt.Sprint("t", rng.IntN(3)))
					m.UpsertTag(p, "u", func(v int) int { return v + 1 })
				case 7:
					m.AssignRealm(p, realms[rng.IntN(len(realms))])
				case 8:
					m.UnassignRealm(p, realms[rng.IntN(len(realms))])
				case 9:
					if rng.IntN(2) == 0 {
						m.TrimOpenConns(context.Background())
					} else {
						_, _ = m.TrimConnections(context.Background(), 1+rng.IntN(3))
					}
				case 10:
					if rng.IntN(2) == 0 {
						m.Protect(p, "x")
					} else {
						m.Unprotect(p, "x")
					}
					_ = tag.Bump(p, rng.IntN(10))
				case 11:
					_ = m.Stats()
					_ = m.GetTagInfo(p)
					_ = m.Connection(p)
					_ = m.RealmConnections(realms[rng.IntN(len(realms))])
					if rng.IntN(4) == 0 {
						_ = m.SetRealmLimits(realms[rng.IntN(len(realms))], core.PoolLimits{LowWater: rng.IntN(3), HighWater: 3 + rng.IntN(8)})
					}
				}
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()

	// Quiescent (no trim running; the background loop waits for the lock):
	// the counts match the connections held. No require under the lock.
	m.trimMu.Lock()
	byPeer := m.ConnectionsMap()
	total, unassigned, closedButAccounted := 0, 0, 0
	for p, conns := range byPeer {
		total += len(conns)
		if len(m.Realms(p)) == 0 {
			unassigned += len(conns)
		}
		for _, c := range conns {
			if c.IsClosed() {
				closedButAccounted++
			}
		}
	}
	realmConns := map[core.RealmID]int{}
	for _, r := range realms {
		realmConns[r] = len(m.RealmConnections(r))
	}
	st := m.Stats()
	m.trimMu.Unlock()
	require.Zero(t, closedButAccounted, "closed connections are still accounted")
	require.Equal(t, total, st.Global.Count)
	require.Equal(t, unassigned, st.Unassigned.Count)
	for _, r := range realms {
		require.Equal(t, realmConns[r], st.Realms[r].Count, "realm %s", r)
	}

	for _, c := range all {
		m.Notifee().Disconnected(nil, c)
	}
	st = m.Stats()
	require.Zero(t, st.Global.Count)
	require.Zero(t, st.Unassigned.Count)
	for _, r := range realms {
		require.Zero(t, st.Realms[r].Count, "realm %s", r)
	}
	require.Empty(t, m.ConnectionsMap())
}
