package node_test

import (
	"context"
	"crypto/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
)

// TestPoolsHoldUnderInboundBurst: a node with HighWater 20 / LowWater 10
// accepts 40 inbound connections from 40 peer nodes. Its count never goes
// above HighWater + 10 % (22) at any sampled moment, it is at or below
// HighWater within one SilencePeriod after the burst, protected peers keep
// their connections, and the DHT still works afterwards.
func TestPoolsHoldUnderInboundBurst(t *testing.T) {
	const (
		peers     = 40
		highWater = 20
		lowWater  = 10
		ceiling   = highWater + highWater/10
		silence   = 2 * time.Second
	)
	hub := testnode.New(t, dhtServer, node.ConnLimits(connmgr.Config{
		LowWater: lowWater, HighWater: highWater,
		GracePeriod: 300 * time.Millisecond, SilencePeriod: silence,
	}))

	var others []*node.Node
	for range peers {
		others = append(others, testnode.New(t, dhtServer))
	}
	protected := []peer.ID{others[0].ID(), others[1].ID(), others[2].ID()}
	for _, p := range protected {
		hub.ConnManager().Protect(p, "test")
	}
	require.Zero(t, hub.ConnectionCount())

	// Sample the pool and the swarm every millisecond during the test.
	var maxPool, maxSwarm atomic.Int64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		ticker := time.NewTicker(time.Millisecond)
		defer ticker.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ticker.C:
			}
			if n := int64(hub.ConnectionCount()); n > maxPool.Load() {
				maxPool.Store(n)
			}
			if n := int64(len(hub.Host().Network().Conns())); n > maxSwarm.Load() {
				maxSwarm.Store(n)
			}
		}
	})
	defer func() { close(stop); sampler.Wait() }()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The protected peers connect first; the burst must not take their
	// connections away.
	for _, o := range others[:len(protected)] {
		require.NoError(t, o.Connect(ctx, hub.AddrInfo()))
	}
	var wg sync.WaitGroup
	for _, o := range others[len(protected):] {
		wg.Go(func() { _ = o.Connect(ctx, hub.AddrInfo()) }) // some are refused: fine
	}
	wg.Wait()
	burstEnd := time.Now()
	require.LessOrEqual(t, maxPool.Load(), int64(ceiling), "the pool went above HighWater + 10 %")
	require.LessOrEqual(t, maxSwarm.Load(), int64(ceiling), "the swarm held more than HighWater + 10 % connections")

	// The background trim runs every SilencePeriod and skips connections
	// in their grace period: a tick right after the burst may find the
	// newest connections still in grace, the next one trims them. So the
	// pool is at or below HighWater within two SilencePeriods (plus slack
	// for a loaded machine).
	if !assert.Eventually(t, func() bool { return hub.ConnectionCount() <= highWater }, 2*silence+time.Second, 20*time.Millisecond,
		"not at or below HighWater within two SilencePeriods") {
		t.Fatalf("count %d; stats %+v; swarm %+v", hub.ConnectionCount(), hub.Stats(), hub.Network().AdmissionStats())
	}
	t.Logf("max pool %d, max swarm %d, %d connections %s after the burst; stats %+v",
		maxPool.Load(), maxSwarm.Load(), hub.ConnectionCount(), time.Since(burstEnd).Round(time.Millisecond), hub.Stats())
	require.Positive(t, hub.Stats().Closed[core.ReasonPoolCeiling]+hub.Stats().Closed[core.ReasonGlobalHighWater]+
		hub.Stats().Closed[core.ReasonUnassignedHighWater], "trims closed connections")
	require.LessOrEqual(t, maxPool.Load(), int64(ceiling))

	for _, p := range protected {
		require.Equal(t, network.Connected, hub.Host().Network().Connectedness(p), "protected peer %s lost its connection", p)
	}

	// The DHT still works after the trims: a new node that bootstraps
	// from the hub (protected there, so the full pool lets it in) finds,
	// by ID alone, an unprotected peer the hub kept.
	var target *node.Node
	for _, o := range others[len(protected):] {
		if hub.Host().Network().Connectedness(o.ID()) == network.Connected {
			target = o
			break
		}
	}
	require.NotNil(t, target, "the hub kept no unprotected peer")
	seekerKey, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	seekerID, err := peer.IDFromPrivateKey(seekerKey)
	require.NoError(t, err)
	hub.ConnManager().Protect(seekerID, "test")
	seeker := testnode.New(t, dhtServer, node.Identity(seekerKey), node.Bootstrap(hub.AddrInfo()))
	// The seeker's bootstrap lookups may already have taught it the
	// target's addresses (New waits for its routing table): forget them,
	// so that ConnectPeer has to find the target through the DHT.
	seeker.Host().Peerstore().ClearAddrs(target.ID())
	require.Empty(t, seeker.Host().Peerstore().Addrs(target.ID()))
	require.Eventually(t, func() bool { return seeker.DHT().RoutingTable().Find(hub.ID()) != "" }, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, seeker.ConnectPeer(ctx, target.ID()))
}

func TestConnManagerOptionsAndLimits(t *testing.T) {
	// LowWater above HighWater names the field and both values.
	_, err := node.New(context.Background(), node.ConnLimits(connmgr.Config{LowWater: 50, HighWater: 10}))
	require.ErrorContains(t, err, "LowWater (50)")
	_, err = node.New(context.Background(), node.ConnLimits(connmgr.Config{LowWater: 1, HighWater: 10, GracePeriod: -time.Second}))
	require.ErrorContains(t, err, "GracePeriod")
	_, err = node.New(context.Background(), node.RealmDefaults(core.PoolLimits{LowWater: 9, HighWater: 3}))
	require.ErrorContains(t, err, "RealmDefaults")

	var pools *connmgr.Manager // the component itself, for AssignRealm (wiring, not in the ConnManager view)
	n := testnode.New(t, node.ConnLimits(connmgr.Config{LowWater: 5, HighWater: 50}), node.RealmDefaults(core.PoolLimits{LowWater: 2, HighWater: 8}),
		node.Fx(fx.Populate(&pools)))
	cfg := n.ConnManager().Config()
	require.Equal(t, 5, cfg.LowWater)
	require.Equal(t, 50, cfg.HighWater)
	require.Equal(t, core.PoolLimits{LowWater: 2, HighWater: 8}, cfg.RealmDefaults)
	require.Equal(t, connmgr.DefaultGracePeriod, cfg.GracePeriod)

	// The host and kad-dht see realmnet's manager.
	require.Same(t, any(n.ConnManager()), any(n.Host().ConnManager()))

	// Accessors on the node.
	other := testnode.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, n.Connect(ctx, other.AddrInfo()))
	require.Eventually(t, func() bool { return n.ConnectionCount() >= 1 }, 5*time.Second, 10*time.Millisecond)
	require.Len(t, n.Connections(other.ID()), 1)
	require.Equal(t, n.Connections(other.ID())[0], n.Connection(other.ID()))
	require.Contains(t, n.ConnectionsMap(), other.ID())
	pools.AssignRealm(other.ID(), "realm-a")
	require.Len(t, n.RealmConnections("realm-a"), 1)
	st := n.Stats()
	require.Equal(t, 1, st.Realms["realm-a"].Count)
	require.Equal(t, 0, st.Unassigned.Count)
	closed, err := n.TrimConnections(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, 0, closed, "the connection is inside its grace period")
}
