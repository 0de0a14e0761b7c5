package node_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/internal/natlab"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/swarm"
)

func TestMain(m *testing.M) {
	natlab.RunIfChild(map[string]natlab.Role{labNodeRole: runLabNode, labStockRole: runLabStock})
	goleak.VerifyTestMain(m, testkit.LeakOptions()...)
}

// dhtServer is the DHT mode of the tests that need DHT lookups to work:
// testnode.New makes DHT clients, which other nodes keep out of their
// routing tables.
var dhtServer = node.DHTMode(node.DHTServer)

func TestEchoOneMiBBothWays(t *testing.T) {
	a, b := testnode.New(t), testnode.New(t)
	a.SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
	b.SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, a.Connect(ctx, b.AddrInfo()))

	s, err := a.NewStream(ctx, b.ID(), testnode.EchoProtocol)
	require.NoError(t, err)
	require.EqualValues(t, testnode.EchoProtocol, s.Protocol())
	testnode.EchoOver(t, s, 1<<20)

	s, err = b.NewStream(ctx, a.ID(), testnode.EchoProtocol)
	require.NoError(t, err)
	testnode.EchoOver(t, s, 1<<20)

	// Identify ran over realmnet's swarm: each knows the other's agent.
	agent, err := a.Host().Peerstore().Get(b.ID(), "AgentVersion")
	require.NoError(t, err)
	require.Equal(t, node.UserAgent(), agent)
	require.NoError(t, a.Connect(ctx, b.AddrInfo()), "connecting again is a no-op")
	require.Len(t, a.Host().Network().ConnsToPeer(b.ID()), 1)
}

func TestDHTTenNodesFindEachOther(t *testing.T) {
	const count = 10
	first := testnode.New(t, dhtServer)
	nodes := []*node.Node{first}
	for range count - 1 {
		nodes = append(nodes, testnode.New(t, dhtServer, node.Bootstrap(first.AddrInfo())))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Wait until every node's routing table holds the bootstrap node, and
	// the bootstrap node's holds every node: a lookup that reaches the
	// bootstrap node before it has added the target ends "not found".
	for i, n := range nodes[1:] {
		ok := assert.Eventually(t, func() bool {
			return n.DHT().RoutingTable().Find(first.ID()) != "" && first.DHT().RoutingTable().Find(n.ID()) != ""
		}, 10*time.Second, 20*time.Millisecond)
		if !ok {
			p, _ := first.Host().Peerstore().GetProtocols(n.ID())
			p2, _ := n.Host().Peerstore().GetProtocols(first.ID())
			t.Fatalf("node %d: has first %v, first has it %v, conns %d/%d, first sees protos %v, n sees %v, paths %+v", i+1,
				n.DHT().RoutingTable().Find(first.ID()) != "", first.DHT().RoutingTable().Find(n.ID()) != "",
				len(first.Host().Network().ConnsToPeer(n.ID())), len(n.Host().Network().ConnsToPeer(first.ID())), p, p2, n.Paths(first.ID()))
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, count*count)
	for i, n := range nodes {
		for j, target := range nodes {
			if i == j {
				continue
			}
			wg.Go(func() {
				// Forget every address of the target: only the DHT may
				// tell where it is.
				if n.Host().Network().Connectedness(target.ID()) != network.Connected {
					n.Host().Peerstore().ClearAddrs(target.ID())
				}
				if err := n.ConnectPeer(ctx, target.ID()); err != nil {
					errs <- fmt.Errorf("%w (now: connectedness %v, %d conns, %d addrs, rt size %d, target in rt %v)", err,
						n.Host().Network().Connectedness(target.ID()), len(n.Host().Network().ConnsToPeer(target.ID())),
						len(n.Host().Peerstore().Addrs(target.ID())), n.DHT().RoutingTable().Size(), n.DHT().RoutingTable().Find(target.ID()) != "")
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	for _, n := range nodes {
		require.Len(t, n.Host().Network().Peers(), count-1, "node %s", n.ID())
	}
}

func TestConnectPeerFailsClearlyWithoutDHTRecord(t *testing.T) {
	a := testnode.New(t, dhtServer)
	b := testnode.New(t, dhtServer, node.Bootstrap(a.AddrInfo()))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stranger := testkit.PeerID(t)
	err := b.ConnectPeer(ctx, stranger)
	require.Error(t, err)
	require.Contains(t, err.Error(), stranger.String())
	require.ErrorIs(t, b.ConnectPeer(ctx, b.ID()), swarm.ErrDialToSelf)
}

func TestInteropStockHostPingsRealmnet(t *testing.T) {
	n := testnode.New(t)
	stock := testkit.StockHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, stock.Connect(ctx, n.AddrInfo()))
	res := <-ping.Ping(ctx, stock, n.ID())
	require.NoError(t, res.Error)
	require.Greater(t, res.RTT, time.Duration(0))
	// The stock side identified realmnet.
	agent, err := stock.Peerstore().Get(n.ID(), "AgentVersion")
	require.NoError(t, err)
	require.Equal(t, node.UserAgent(), agent)
	require.Eventually(t, func() bool { return n.Host().Network().Connectedness(stock.ID()) == network.Connected },
		5*time.Second, 10*time.Millisecond)
}

func TestInteropRealmnetIdentifiesStockHost(t *testing.T) {
	n := testnode.New(t)
	stock := testkit.StockHost(t)
	stock.SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, n.Connect(ctx, peer.AddrInfo{ID: stock.ID(), Addrs: stock.Addrs()}))
	// Connect waits for identify; its results are in the peerstore.
	protocols, err := n.Host().Peerstore().GetProtocols(stock.ID())
	require.NoError(t, err)
	require.Contains(t, protocols, protocol.ID(identify.ID))
	require.Contains(t, protocols, protocol.ID(ping.ID))
	agent, err := n.Host().Peerstore().Get(stock.ID(), "AgentVersion")
	require.NoError(t, err)
	require.NotEmpty(t, agent)
	require.NotEqual(t, node.UserAgent(), agent, "the agent is the stock host's, not ours")

	res := <-ping.Ping(ctx, n.Host(), stock.ID())
	require.NoError(t, res.Error)
	s, err := n.NewStream(ctx, stock.ID(), testnode.EchoProtocol)
	require.NoError(t, err)
	testnode.EchoOver(t, s, 64<<10)
}

func TestDialUnreachableNamesAddressWithinTimeout(t *testing.T) {
	n := testnode.New(t, node.DialTimeout(time.Second))
	other := testkit.PeerID(t)
	dead := ma.StringCast("/ip4/127.0.0.1/udp/9/quic-v1") // discard port: nothing answers
	start := time.Now()
	err := n.Connect(context.Background(), peer.AddrInfo{ID: other, Addrs: []ma.Multiaddr{dead}})
	require.Error(t, err)
	require.Less(t, time.Since(start), 2500*time.Millisecond)
	require.Contains(t, err.Error(), dead.String())
}

func TestBadListenAddress(t *testing.T) {
	for _, bad := range []string{"not-a-multiaddr", "/ip4/300.1.1.1/udp/1/quic-v1", "/ip4/127.0.0.1/udp/99999/quic-v1"} {
		_, err := node.New(context.Background(), node.ListenAddrStrings(bad))
		require.ErrorContains(t, err, bad)
	}
	// Well formed but not QUIC: New fails at listen time and names it.
	_, err := node.New(context.Background(), node.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	require.ErrorContains(t, err, "/ip4/127.0.0.1/tcp/0")
}

func TestIdentityFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.key")
	a := testnode.New(t, node.IdentityFile(path))
	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file is left beside the identity")
	require.NoError(t, a.Close())

	b := testnode.New(t, node.IdentityFile(path))
	require.Equal(t, a.ID(), b.ID(), "the same file gives the same peer ID")

	key, err := node.LoadOrCreateIdentity(path)
	require.NoError(t, err)
	id, err := peer.IDFromPrivateKey(key)
	require.NoError(t, err)
	require.Equal(t, a.ID(), id)
}

func TestCorruptIdentityFileIsRefusedAndUntouched(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string][]byte{
		"garbage":   []byte("this is not a key"),
		"empty":     {},
		"truncated": truncatedKey(t),
		"oversized": bytes.Repeat([]byte{1}, 64<<10),
	} {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, content, 0o600))
		_, err := node.New(context.Background(), node.IdentityFile(path), node.ListenAddrStrings(testkit.Loopback))
		require.Error(t, err, name)
		require.Contains(t, err.Error(), path)
		after, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, content, after, "%s: the file must be left untouched", name)
	}
}

func truncatedKey(t *testing.T) []byte {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	data, err := crypto.MarshalPrivateKey(key)
	require.NoError(t, err)
	return data[:len(data)/2]
}

func TestOptionErrorsNameTheValue(t *testing.T) {
	cases := map[string]node.Option{
		"-1s":        node.DialTimeout(-time.Second),
		"MaxRetries": node.Retry(node.RetryConfig{MaxRetries: -2, InitialDelay: time.Millisecond, MaxDelay: time.Second, Multiplier: 2}),
		"no address": node.Bootstrap(peer.AddrInfo{ID: testkit.PeerID(t)}),
		"DHT mode 7": node.DHTMode(7),
	}
	for want, opt := range cases {
		_, err := node.New(context.Background(), opt)
		require.Error(t, err, want)
		require.Contains(t, err.Error(), map[string]string{"-1s": "-1s", "MaxRetries": "MaxRetries", "no address": "no address", "DHT mode 7": "7"}[want])
	}
	_, err := node.New(context.Background(), node.Identity(nil))
	require.ErrorContains(t, err, "nil")
	key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	_, err = node.New(context.Background(), node.Identity(key), node.IdentityFile(filepath.Join(t.TempDir(), "k")))
	require.ErrorContains(t, err, "exclusive")
	_, err = node.New(context.Background(), node.RealmOnly(), node.AuthTimeout(0))
	require.ErrorContains(t, err, "AuthTimeout must be > 0, got 0s")
	_, err = node.New(context.Background(), node.RealmOnly(), node.RealmOnlyBackoff(-time.Minute))
	require.ErrorContains(t, err, "RealmOnlyBackoff must be > 0, got -1m0s")
	_, err = node.ParseDHTRole("sever")
	require.ErrorContains(t, err, "sever")
	role, err := node.ParseDHTRole("client")
	require.NoError(t, err)
	require.Equal(t, node.DHTClient, role)
}

func TestFxOptionReachesComponents(t *testing.T) {
	var fromFx *swarm.Swarm
	var ps peerstore.Peerstore
	n := testnode.New(t, node.Fx(fx.Populate(&fromFx, &ps)))
	require.Same(t, n.Network(), fromFx)
	require.Same(t, n.Host().Network(), network.Network(fromFx))
	require.Equal(t, n.Host().Peerstore(), ps)
}

func TestCloseTwice(t *testing.T) {
	n, err := node.New(context.Background(), node.ListenAddrStrings(testkit.Loopback))
	require.NoError(t, err)
	require.NoError(t, n.Close())
	require.NoError(t, n.Close())
}
