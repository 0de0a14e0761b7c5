package node_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/node"
)

// addrPairs lists n's usable connections to p — announced, open, and not
// retired as redundant — as "local remote" address pairs, sorted; mirrored
// swaps the two, to compare with the other end's list.
func addrPairs(n *node.Node, p peer.ID, mirrored bool) []string {
	redundant := make(map[string]bool)
	for _, pi := range n.Paths(p) {
		if pi.State == core.PathRedundant {
			redundant[pi.ConnID] = true
		}
	}
	var out []string
	for _, c := range n.Host().Network().ConnsToPeer(p) {
		if c.IsClosed() || redundant[c.ID()] {
			continue
		}
		l, r := c.LocalMultiaddr().String(), c.RemoteMultiaddr().String()
		if mirrored {
			l, r = r, l
		}
		out = append(out, l+" "+r)
	}
	slices.Sort(out)
	return out
}

// TestSimultaneousDialsKeepTheSameConnections: two nodes that each listen
// on two addresses (127.0.0.1 and 127.0.0.2) dial each other at the same
// instant, 300 times (a fresh pair each round, so nothing of a round's
// closing connections reaches the next). Every Connect returns nil; a stream
// opened by each side right after its Connect returns succeeds, in both
// directions; and both ends use the same connections (the admission
// pipeline's redundancy rule picks the same survivor on both ends, and no
// stream is ever lost on a connection the other end retires), the redundant
// ones closing by themselves.
func TestSimultaneousDialsKeepTheSameConnections(t *testing.T) {
	rounds := 300
	if testing.Short() {
		rounds = 30
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var redundant, retired atomic.Uint64
	start := time.Now()
	for round := range rounds {
		simultaneousRound(t, ctx, round, round%50 == 49, &redundant, &retired)
	}
	t.Logf("%d rounds of simultaneous dials in %s; %d connections refused as redundant, %d paths retired as redundant",
		rounds, time.Since(start).Round(time.Millisecond), redundant.Load(), retired.Load())
	require.NotZero(t, redundant.Load()+retired.Load(), "the dials never raced: the test proves nothing")
}

// simultaneousRound is one round of TestSimultaneousDialsKeepTheSameConnections
// on a new pair of nodes; waitSettled also waits for the redundant
// connections to close. It adds the pair's redundancy counts.
func simultaneousRound(t *testing.T, ctx context.Context, round int, waitSettled bool, redundant, retired *atomic.Uint64) {
	listen := node.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.2/udp/0/quic-v1")
	a, b := testnode.New(t, listen), testnode.New(t, listen)
	defer func() {
		require.NoError(t, a.Close())
		require.NoError(t, b.Close())
	}()
	for _, n := range []*node.Node{a, b} {
		n.SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
		// Paths retired after they were announced (the loser arrived
		// first).
		sub, err := n.Host().EventBus().Subscribe(new(multipath.EvtPathSelected))
		require.NoError(t, err)
		defer sub.Close()
		go func() {
			for e := range sub.Out() {
				if e.(multipath.EvtPathSelected).Reason == core.SwitchPathRedundant {
					retired.Add(1)
				}
			}
		}()
	}
	a.Host().Peerstore().AddAddrs(b.ID(), b.Addrs(), peerstore.PermanentAddrTTL)
	b.Host().Peerstore().AddAddrs(a.ID(), a.Addrs(), peerstore.PermanentAddrTTL)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	gate := make(chan struct{})
	for i, pair := range [][2]*node.Node{{a, b}, {b, a}} {
		wg.Go(func() {
			from, to := pair[0], pair[1]
			<-gate
			if err := from.Connect(ctx, to.AddrInfo()); err != nil {
				errs[i] = fmt.Errorf("Connect: %w", err)
				return
			}
			s, err := from.NewStream(ctx, to.ID(), testnode.EchoProtocol)
			if err != nil {
				errs[i] = fmt.Errorf("NewStream right after Connect: %w", err)
				return
			}
			errs[i] = testnode.EchoErr(s, 1024)
		})
	}
	close(gate)
	wg.Wait()
	require.NoError(t, errs[0], "round %d: a → b", round)
	require.NoError(t, errs[1], "round %d: b → a", round)

	// Both ends use the same connections: a's, and b's mirrored.
	if !assert.Eventually(t, func() bool {
		pa, pb := addrPairs(a, b.ID(), false), addrPairs(b, a.ID(), true)
		return len(pa) > 0 && slices.Equal(pa, pb)
	}, 10*time.Second, 5*time.Millisecond, "round %d", round) {
		t.Logf("a has %v, paths %+v", addrPairs(a, b.ID(), false), a.Paths(b.ID()))
		t.Logf("b has %v (mirrored), paths %+v", addrPairs(b, a.ID(), true), b.Paths(a.ID()))
		t.FailNow()
	}
	if waitSettled {
		// The redundant connections close by themselves, leaving exactly
		// the connections both ends use.
		require.Eventually(t, func() bool {
			return settled(a, b.ID()) && settled(b, a.ID()) &&
				slices.Equal(addrPairs(a, b.ID(), false), addrPairs(b, a.ID(), true)) &&
				len(a.Host().Network().ConnsToPeer(b.ID())) == len(b.Host().Network().ConnsToPeer(a.ID()))
		}, 15*time.Second, 10*time.Millisecond, "round %d: redundant connections left open", round)
	}
	redundant.Add(a.Network().AdmissionStats().Refused[core.ReasonPathRedundant] + b.Network().AdmissionStats().Refused[core.ReasonPathRedundant])
}

// settled reports whether every path of n to p is usable (none redundant,
// draining towards its close).
func settled(n *node.Node, p peer.ID) bool {
	paths := n.Paths(p)
	for _, pi := range paths {
		if pi.State == core.PathRedundant {
			return false
		}
	}
	return len(paths) == len(n.Host().Network().ConnsToPeer(p))
}
