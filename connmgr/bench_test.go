package connmgr_test

import (
	"context"
	"fmt"
	"math/rand"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	p2ptest "github.com/libp2p/go-libp2p/core/test"
	basic "github.com/libp2p/go-libp2p/p2p/net/connmgr"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/benchkit"
	"github.com/realmnet/realmnet/internal/testkit"
)

// Benchmarks comparing realmnet's connection manager with go-libp2p's
// BasicConnMgr on identical sets of fake connections, the two sides
// interleaved in one loop (internal/benchkit: blocks alternate, the first
// side alternating per round). Metrics: realmnet-ns/op,
// libp2p-BasicConnMgr-ns/op (median block), their allocs/op, and ratio-*,
// realmnet/libp2p per round with its spread.

// benchNewConn returns a testkit.FakeConn to p in direction dir, opened at
// opened.
func benchNewConn(p peer.ID, dir network.Direction, opened time.Time) *testkit.FakeConn {
	c := testkit.NewFakeConn("", p, dir)
	c.SetOpened(opened)
	return c
}

// benchAdmit admits c the way each manager's owner does: realmnet's swarm
// runs the pools stage (AdmitConn) before it announces a connection;
// go-libp2p's swarm notifies the connection manager's notifee.
func benchAdmit(m benchManager, c *testkit.FakeConn) {
	if rm, ok := m.(*connmgr.Manager); ok {
		_ = rm.AdmitConn(context.Background(), c)
		return
	}
	m.Notifee().Connected(nil, c)
}

func benchRandConn(tb testing.TB) *testkit.FakeConn {
	return testkit.NewFakeConn("", p2ptest.RandPeerIDFatal(tb), network.DirInbound)
}

// benchManager is what both managers offer the benchmarks.
type benchManager interface {
	TagPeer(peer.ID, string, int)
	UntagPeer(peer.ID, string)
	Notifee() network.Notifiee
	TrimOpenConns(context.Context)
	Close() error
}

const (
	benchSideRealmnet = "realmnet"
	benchSideLibp2p   = "libp2p-BasicConnMgr"
)

// benchTrimSet is the connection set of one TrimOpenConns case: n
// connections over n/perPeer peers, each peer with a random tag value.
type benchTrimSet struct {
	conns  []*testkit.FakeConn
	peers  []peer.ID
	values []int
}

func benchNewTrimSet(tb testing.TB, n, perPeer int) *benchTrimSet {
	rng := rand.New(rand.NewSource(int64(n*10 + perPeer)))
	s := &benchTrimSet{conns: make([]*testkit.FakeConn, 0, n)}
	base := time.Now().Add(-time.Hour)
	for len(s.conns) < n {
		p := p2ptest.RandPeerIDFatal(tb)
		s.peers = append(s.peers, p)
		s.values = append(s.values, rng.Intn(1001))
		for j := 0; j < perPeer && len(s.conns) < n; j++ {
			dir := network.DirOutbound
			if rng.Intn(2) == 0 {
				dir = network.DirInbound
			}
			// Distinct opening times: realmnet's default path choice is
			// the newest connection.
			s.conns = append(s.conns, benchNewConn(p, dir, base.Add(time.Duration(len(s.conns))*time.Microsecond)))
		}
	}
	return s
}

// clone returns a set with the same peers, tag values, directions and
// opening times, and connections of its own (each manager closes its own).
func (s *benchTrimSet) clone() *benchTrimSet {
	c := &benchTrimSet{peers: s.peers, values: s.values, conns: make([]*testkit.FakeConn, 0, len(s.conns))}
	for _, x := range s.conns {
		st := x.Stat()
		c.conns = append(c.conns, benchNewConn(x.RemotePeer(), st.Direction, st.Opened))
	}
	return c
}

// load tags every peer and admits every connection (reset to open).
func (s *benchTrimSet) load(m benchManager) {
	for i, p := range s.peers {
		m.TagPeer(p, "bench-value", s.values[i])
	}
	for _, c := range s.conns {
		c.Reopen()
		benchAdmit(m, c)
	}
}

func (s *benchTrimSet) closed() int {
	n := 0
	for _, c := range s.conns {
		if c.IsClosed() {
			n++
		}
	}
	return n
}

// BenchmarkTrimOpenConns measures one TrimOpenConns of a full, long-lived
// manager: N connections, none in its grace period, HighWater N (below
// realmnet's admission ceiling of 1.1 N, so admission trims nothing),
// LowWater 0.9 N. Reference: go-libp2p's BasicConnMgr on an identical
// connection set (it needs 15–150 ms on the 2-core machine). Each side keeps
// one manager for the whole run, as in a node; before each trim the
// connections the previous trim closed are re-admitted and the heap is
// collected (untimed), after it the result is checked (realmnet: LowWater
// left; BasicConnMgr: whole peers closed, N−LowWater connections rounded up
// to whole peers) and the closed connections disconnected (untimed). The
// sides alternate one trim each (benchkit.Compare, at least 10 rounds);
// allocs/op are the process's allocations during the trim.
//
// Target: ratio-median ≤ 0.1.
func BenchmarkTrimOpenConns(b *testing.B) {
	for _, tc := range []struct {
		name       string
		n, perPeer int
	}{
		{"10k-conns-1-per-peer", 10_000, 1},
		{"10k-conns-2-per-peer", 10_000, 2},
		{"50k-conns-1-per-peer", 50_000, 1},
		{"50k-conns-2-per-peer", 50_000, 2},
	} {
		b.Run(tc.name, func(b *testing.B) {
			low, high := tc.n*9/10, tc.n
			rset := benchNewTrimSet(b, tc.n, tc.perPeer)
			lset := rset.clone()
			rm, err := connmgr.New(connmgr.Config{
				LowWater:    low,
				HighWater:   high,
				GracePeriod: time.Nanosecond,
				// Above N: the unassigned pool never reaches its
				// HighWater, so the global trim does the work.
				Unassigned: core.PoolLimits{LowWater: tc.n, HighWater: 2 * tc.n},
			}, nil)
			if err != nil {
				b.Fatal(err)
			}
			lm, err := basic.NewConnManager(low, high, basic.WithGracePeriod(time.Nanosecond))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = rm.Close(); _ = lm.Close() })
			realmnet := benchTrimSide(benchSideRealmnet, rset, rm, func() error {
				if got := rm.ConnectionCount(); got != low {
					return fmt.Errorf("%d connections after trim, want LowWater %d", got, low)
				}
				if got := rset.closed(); got != tc.n-low {
					return fmt.Errorf("closed %d connections, want %d", got, tc.n-low)
				}
				return nil
			})
			libp2p := benchTrimSide(benchSideLibp2p, lset, lm, func() error {
				// BasicConnMgr closes whole peers, lowest value first,
				// until it has closed ncandidates-lowWater connections.
				target := tc.n - low
				want := (target + tc.perPeer - 1) / tc.perPeer * tc.perPeer
				if got := lset.closed(); got != want {
					return fmt.Errorf("closed %d connections, want %d", got, want)
				}
				return nil
			})
			benchkit.Compare(b, realmnet, libp2p, benchkit.Config{Block: 1, MinRounds: 10, Allocs: true})
		})
	}
}

// benchTrimSide is the benchkit side of one manager: it loads set into m,
// and each op is one TrimOpenConns, with the re-admission before it and
// verify and the disconnections after it untimed.
func benchTrimSide(name string, set *benchTrimSet, m benchManager, verify func() error) benchkit.Side {
	set.load(m)
	ctx := context.Background()
	return benchkit.Side{
		Name: name,
		Before: func() error {
			set.reopenClosed(m)
			time.Sleep(time.Millisecond) // out of the 1 ns grace period
			runtime.GC()
			return nil
		},
		Op: func() error { m.TrimOpenConns(ctx); return nil },
		After: func() error {
			if err := verify(); err != nil {
				return err
			}
			set.disconnectClosed(m)
			return nil
		},
	}
}

// reopenClosed reopens and re-admits the connections the last trim closed.
func (s *benchTrimSet) reopenClosed(m benchManager) {
	for _, c := range s.conns {
		if c.IsClosed() {
			c.Reopen()
			benchAdmit(m, c)
		}
	}
}

// disconnectClosed delivers Disconnected for every closed connection, as the
// swarm would.
func (s *benchTrimSet) disconnectClosed(m benchManager) {
	not := m.Notifee()
	for _, c := range s.conns {
		if c.IsClosed() {
			not.Disconnected(nil, c)
		}
	}
}

// BenchmarkLockContention is go-libp2p's BasicConnMgr lock-contention
// workload: 16 goroutines tag random peers while the timed loop connects,
// tags, untags and disconnects random connections. The sides are
// interleaved (benchkit.Compare, blocks of at least 50 ms per side: several
// of the scheduler's 10 ms time slices, so that a block does not depend on
// which goroutines one slice happened to run); each side's 16 taggers run
// only during its own blocks (started before, stopped after, untimed), so
// each manager is timed under its own contention only.
// allocs/op include the taggers' allocations.
func BenchmarkLockContention(b *testing.B) {
	newRealmnet := func() benchManager {
		m, err := connmgr.New(connmgr.Config{LowWater: 1000, HighWater: 1000, GracePeriod: time.Nanosecond}, nil)
		if err != nil {
			b.Fatal(err)
		}
		return m
	}
	newLibp2p := func() benchManager {
		m, err := basic.NewConnManager(1000, 1000, basic.WithGracePeriod(0))
		if err != nil {
			b.Fatal(err)
		}
		return m
	}
	benchkit.Compare(b, benchLockContentionSide(b, benchSideRealmnet, newRealmnet()),
		benchLockContentionSide(b, benchSideLibp2p, newLibp2p()),
		benchkit.Config{MinBlock: 50 * time.Millisecond, MinRounds: 20, Allocs: true})
}

func benchLockContentionSide(b *testing.B, name string, cm benchManager) benchkit.Side {
	conns := make([]*testkit.FakeConn, 5000)
	for i := range conns {
		conns[i] = benchRandConn(b)
	}
	b.Cleanup(func() { _ = cm.Close() })
	not := cm.Notifee()
	var kill chan struct{}
	var wg sync.WaitGroup
	return benchkit.Side{
		Name: name,
		Before: func() error {
			kill = make(chan struct{})
			for range 16 {
				wg.Go(func() {
					for {
						select {
						case <-kill:
							return
						default:
							cm.TagPeer(conns[rand.Intn(len(conns))].RemotePeer(), "another-tag", 1)
						}
					}
				})
			}
			return nil
		},
		Op: func() error {
			rc := conns[rand.Intn(len(conns))]
			benchAdmit(cm, rc)
			cm.TagPeer(rc.RemotePeer(), "tag", 100)
			cm.UntagPeer(rc.RemotePeer(), "tag")
			not.Disconnected(nil, rc)
			return nil
		},
		After: func() error {
			close(kill)
			wg.Wait()
			return nil
		},
	}
}
