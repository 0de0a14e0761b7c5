package node_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
)

// TestCloseBoundedWithUnreadSubscription proves that an event subscription
// the application never reads cannot make Close hang: go-libp2p's bus
// blocks an emitter on a full subscription, so without Shutdown ending the
// application's subscriptions the node's emitters (identify, connectedness,
// the swarm's event queue) would wait for ever and Close with them. Close
// ends the subscriptions.
func TestCloseBoundedWithUnreadSubscription(t *testing.T) {
	a, err := node.New(context.Background(), node.ListenAddrStrings(testkit.Loopback), node.DHTMode(node.DHTClient))
	require.NoError(t, err)
	// Two subscriptions nobody reads: every event, and one type.
	all, err := a.Host().EventBus().Subscribe(event.WildcardSubscription)
	require.NoError(t, err)
	sub, err := a.Host().EventBus().Subscribe(new(event.EvtPeerConnectednessChanged))
	require.NoError(t, err)
	// More events than the subscription buffers (16): connectedness,
	// identify, protocols, connections and streams of a few peers. The
	// node stalls on its emitters meanwhile, so each connect is bounded
	// and its outcome does not matter.
	for range 4 {
		b := testnode.New(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = a.Connect(ctx, b.AddrInfo())
		cancel()
	}
	require.Eventually(t, func() bool { return len(all.Out()) == cap(all.Out()) }, 10*time.Second, 10*time.Millisecond,
		"the subscription's buffer never filled: %d/%d", len(all.Out()), cap(all.Out()))

	start := time.Now()
	require.NoError(t, a.Close())
	require.Less(t, time.Since(start), node.DefaultCloseTimeout, "Close took longer than its bound")
	// Ended by Close: a typed subscription's channel is closed (go-libp2p
	// closes a wildcard subscription's sink without closing its channel).
	for range sub.Out() {
	}
	_, err = a.Host().EventBus().Subscribe(event.WildcardSubscription)
	require.Error(t, err, "a closed node's bus takes no new subscription")
}

// TestShutdownHonoursContext proves that Shutdown returns by its context's
// deadline and that Close after it returns the same result.
func TestShutdownHonoursContext(t *testing.T) {
	n, err := node.New(context.Background(), node.ListenAddrStrings(testkit.Loopback))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	first := n.Shutdown(ctx)
	require.NoError(t, first)
	require.Equal(t, first, n.Close())
}

// TestNewHonoursContext proves that New returns ctx's error, and leaves
// nothing running (goleak in TestMain), when its context has ended.
func TestNewHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := node.New(ctx, node.ListenAddrStrings(testkit.Loopback))
	require.ErrorIs(t, err, context.Canceled)
	var noContext context.Context // nil: the bad input under test
	_, err = node.New(noContext, node.ListenAddrStrings(testkit.Loopback))
	require.ErrorContains(t, err, "nil context")
}

// TestConnectPeerRightAfterNew proves that a node is started when New
// returns: its bootstrap peer is already in its DHT routing table, so a
// lookup of a third node made at once succeeds (before, the lookup failed
// 5 of 5 with "failed to find any peer in table" and worked ~50 ms later).
// Ten rounds, fresh nodes each.
func TestConnectPeerRightAfterNew(t *testing.T) {
	for round := range 10 {
		boot := testnode.New(t, node.DHTMode(node.DHTServer))
		target := testnode.New(t, node.DHTMode(node.DHTServer), node.Bootstrap(boot.AddrInfo()))
		a := testnode.New(t, node.Bootstrap(boot.AddrInfo()))
		require.Positive(t, a.DHT().RoutingTable().Size(), "round %d: New returned before its bootstrap peer was in the routing table", round)
		ctx := testkit.Context(t, 10*time.Second)
		require.NoError(t, a.ConnectPeer(ctx, target.ID()), "round %d", round)
		require.Equal(t, network.Connected, a.Host().Network().Connectedness(target.ID()))
		for _, n := range []*node.Node{a, target, boot} {
			require.NoError(t, n.Close())
		}
	}
}

// TestOptionOrderDoesNotMatter proves that options that touch the same
// configuration give the same node in either order, and that users can
// write options of their own on node.Config.
func TestOptionOrderDoesNotMatter(t *testing.T) {
	realmDefaults := core.PoolLimits{LowWater: 3, HighWater: 7}
	limits := connmgr.Config{HighWater: 50, LowWater: 20}
	for name, opts := range map[string][]node.Option{
		"RealmDefaults first": {node.RealmDefaults(realmDefaults), node.ConnLimits(limits)},
		"ConnLimits first":    {node.ConnLimits(limits), node.RealmDefaults(realmDefaults)},
	} {
		n := testnode.New(t, opts...)
		st := n.Stats()
		require.Equal(t, 50, st.Global.HighWater, name)
		require.Equal(t, 20, st.Global.LowWater, name)
		require.Equal(t, realmDefaults, n.ConnManager().RealmLimitsOf(core.RealmID("some-realm")), name)
	}
	// A user's own option.
	var seen node.Config
	spy := func(c *node.Config) error { seen = *c; return nil }
	testnode.New(t, node.DialTimeout(3*time.Second), spy)
	require.Equal(t, 3*time.Second, seen.Swarm.DialTimeout, "options run in order; a user's option sees what came before")
	_, err := node.New(context.Background(), node.ListenAddrStrings(testkit.Loopback), func(c *node.Config) error {
		c.Swarm.AddrDialTimeout = -time.Second
		return nil
	})
	require.ErrorContains(t, err, "AddrDialTimeout must be > 0, got -1s")
}

// TestListenAddrsTakesMultiaddrs proves go-libp2p's option shapes:
// ListenAddrs takes multiaddrs, ListenAddrStrings strings.
func TestListenAddrsTakesMultiaddrs(t *testing.T) {
	n := testnode.New(t, node.ListenAddrs(ma.StringCast(testkit.Loopback)))
	require.NotEmpty(t, n.Addrs())
	_, err := node.New(context.Background(), node.ListenAddrs())
	require.ErrorContains(t, err, "at least one address")
	_, err = node.New(context.Background(), node.ListenAddrs(nil))
	require.ErrorContains(t, err, "nil")
}

// TestIdentityCreateAndLoad proves the identity file operations: Create
// refuses an existing file and leaves it untouched, Load never creates one,
// a missing directory is named (and never a temporary file name), and
// nothing but the key is left in the directory.
func TestIdentityCreateAndLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	_, err := node.LoadIdentity(path)
	require.ErrorIs(t, err, fs.ErrNotExist)
	require.ErrorContains(t, err, path)
	_, err = os.Stat(path)
	require.ErrorIs(t, err, fs.ErrNotExist, "LoadIdentity created a file")

	key, err := node.CreateIdentity(path)
	require.NoError(t, err)
	before, err := os.ReadFile(path)
	require.NoError(t, err)
	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	_, err = node.CreateIdentity(path)
	require.ErrorIs(t, err, node.ErrIdentityExists)
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, before, after, "CreateIdentity modified an existing identity")
	loaded, err := node.LoadIdentity(path)
	require.NoError(t, err)
	require.True(t, key.Equals(loaded))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "only the key is left in the directory")

	missing := filepath.Join(dir, "no", "such", "dir", "key")
	_, err = node.CreateIdentity(missing)
	require.ErrorIs(t, err, fs.ErrNotExist)
	require.ErrorContains(t, err, missing)
	require.ErrorContains(t, err, "does not exist")
	require.NotContains(t, err.Error(), ".tmp-", "the error names a temporary file")
	_, err = node.LoadOrCreateIdentity(missing)
	require.NotContains(t, err.Error(), ".tmp-")
	require.True(t, strings.Contains(err.Error(), missing), err.Error())
	require.False(t, errors.Is(err, node.ErrIdentityExists))
}

// TestUnreachableBootstrapIsBounded proves that an unreachable bootstrap
// peer is not fatal: New returns within BootstrapTimeout.
func TestUnreachableBootstrapIsBounded(t *testing.T) {
	dead := testkit.PeerID(t)
	start := time.Now()
	n := testnode.New(t, node.BootstrapTimeout(time.Second), node.Bootstrap(peer.AddrInfo{
		ID: dead, Addrs: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/udp/9/quic-v1")},
	}))
	require.Less(t, time.Since(start), 5*time.Second)
	require.Zero(t, n.DHT().RoutingTable().Size())
}

// TestUserAgentFromBuildInfo proves that identify reports realmnet's
// version from the build info (not a constant): a stock host sees
// "realmnet/" + node.Version().
func TestUserAgentFromBuildInfo(t *testing.T) {
	require.NotEmpty(t, node.Version())
	require.Equal(t, "realmnet/"+node.Version(), node.UserAgent())
	a := testnode.New(t)
	b := testnode.New(t)
	require.NoError(t, a.Connect(testkit.Context(t, 10*time.Second), b.AddrInfo()))
	agent, err := a.Host().Peerstore().Get(b.ID(), "AgentVersion")
	require.NoError(t, err)
	require.Equal(t, node.UserAgent(), agent)
}
