package node_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/swarm"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Process-wide singletons of libraries, started once and never
		// stopped: go-log's writer and opencensus's metric views.
		goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		// goleveldb's pool drainer waits up to 1 s after DB.Close before it
		// returns (leveldb/db_state.go); it ends by itself.
		goleak.IgnoreTopFunction("github.com/syndtr/goleveldb/leveldb.(*DB).mpoolDrain"),
	)
}

const loopback = "/ip4/127.0.0.1/udp/0/quic-v1"

func newNode(t *testing.T, opts ...node.Option) *node.Node {
	t.Helper()
	opts = append([]node.Option{node.ListenAddrs(loopback), node.DHTMode(node.DHTServer)}, opts...)
	n, err := node.New(opts...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, n.Close()) })
	return n
}

const echoProtocol = "/realmnet/test/echo/1.0.0"

func echoHandler(s network.Stream) {
	_, _ = io.Copy(s, s)
	_ = s.Close()
}

func echoOver(t *testing.T, s network.Stream, size int) {
	t.Helper()
	msg := make([]byte, size)
	_, _ = rand.Read(msg)
	errc := make(chan error, 1)
	go func() {
		_, err := s.Write(msg)
		if err == nil {
			err = s.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(s)
	require.NoError(t, err)
	require.NoError(t, <-errc)
	require.True(t, bytes.Equal(msg, got), "echo corrupted: sent %d bytes, got %d", len(msg), len(got))
	_ = s.Close()
}

func TestEchoOneMiBBothWays(t *testing.T) {
	a, b := newNode(t), newNode(t)
	a.SetStreamHandler(echoProtocol, echoHandler)
	b.SetStreamHandler(echoProtocol, echoHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, a.Connect(ctx, b.AddrInfo()))

	s, err := a.NewStream(ctx, b.ID(), echoProtocol)
	require.NoError(t, err)
	require.EqualValues(t, echoProtocol, s.Protocol())
	echoOver(t, s, 1<<20)

	s, err = b.NewStream(ctx, a.ID(), echoProtocol)
	require.NoError(t, err)
	echoOver(t, s, 1<<20)

	// Identify ran over realmnet's swarm: each knows the other's agent.
	agent, err := a.Host().Peerstore().Get(b.ID(), "AgentVersion")
	require.NoError(t, err)
	require.Equal(t, node.UserAgent, agent)
	require.NoError(t, a.Connect(ctx, b.AddrInfo()), "connecting again is a no-op")
	require.Len(t, a.Host().Network().ConnsToPeer(b.ID()), 1)
}

func TestDHTTenNodesFindEachOther(t *testing.T) {
	const count = 10
	first := newNode(t)
	nodes := []*node.Node{first}
	for range count - 1 {
		nodes = append(nodes, newNode(t, node.Bootstrap(first.AddrInfo())))
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
					errs <- err
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
	a := newNode(t)
	b := newNode(t, node.Bootstrap(a.AddrInfo()))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stranger := randomPeerID(t)
	err := b.ConnectPeer(ctx, stranger)
	require.Error(t, err)
	require.Contains(t, err.Error(), stranger.String())
	require.ErrorIs(t, b.ConnectPeer(ctx, b.ID()), swarm.ErrDialToSelf)
}

func randomPeerID(t *testing.T) peer.ID {
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	id, err := peer.IDFromPublicKey(pub)
	require.NoError(t, err)
	return id
}

// newStockHost is a go-libp2p host as libp2p.New makes it, QUIC only.
func newStockHost(t *testing.T) host.Host {
	t.Helper()
	h, err := libp2p.New(
		libp2p.Transport(libp2pquic.NewTransport),
		libp2p.ListenAddrStrings(loopback),
		libp2p.DisableRelay(),
	)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, h.Close()) })
	return h
}

func TestInteropStockHostPingsRealmnet(t *testing.T) {
	n := newNode(t)
	stock := newStockHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, stock.Connect(ctx, n.AddrInfo()))
	res := <-ping.Ping(ctx, stock, n.ID())
	require.NoError(t, res.Error)
	require.Greater(t, res.RTT, time.Duration(0))
	// The stock side identified realmnet.
	agent, err := stock.Peerstore().Get(n.ID(), "AgentVersion")
	require.NoError(t, err)
	require.Equal(t, node.UserAgent, agent)
	require.Eventually(t, func() bool { return n.Host().Network().Connectedness(stock.ID()) == network.Connected },
		5*time.Second, 10*time.Millisecond)
}

func TestInteropRealmnetIdentifiesStockHost(t *testing.T) {
	n := newNode(t)
	stock := newStockHost(t)
	stock.SetStreamHandler(echoProtocol, echoHandler)
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
	require.NotEqual(t, node.UserAgent, agent, "the agent is the stock host's, not ours")

	res := <-ping.Ping(ctx, n.Host(), stock.ID())
	require.NoError(t, res.Error)
	s, err := n.NewStream(ctx, stock.ID(), echoProtocol)
	require.NoError(t, err)
	echoOver(t, s, 64<<10)
}

func TestDialUnreachableNamesAddressWithinTimeout(t *testing.T) {
	n := newNode(t, node.DialTimeout(time.Second))
	other := randomPeerID(t)
	dead := ma.StringCast("/ip4/127.0.0.1/udp/9/quic-v1") // discard port: nothing answers
	start := time.Now()
	err := n.Connect(context.Background(), peer.AddrInfo{ID: other, Addrs: []ma.Multiaddr{dead}})
	require.Error(t, err)
	require.Less(t, time.Since(start), 2500*time.Millisecond)
	require.Contains(t, err.Error(), dead.String())
}

func TestBadListenAddress(t *testing.T) {
	for _, bad := range []string{"not-a-multiaddr", "/ip4/300.1.1.1/udp/1/quic-v1", "/ip4/127.0.0.1/udp/99999/quic-v1"} {
		_, err := node.New(node.ListenAddrs(bad))
		require.ErrorContains(t, err, bad)
	}
	// Well formed but not QUIC: New fails at listen time and names it.
	_, err := node.New(node.ListenAddrs("/ip4/127.0.0.1/tcp/0"))
	require.ErrorContains(t, err, "/ip4/127.0.0.1/tcp/0")
}

func TestIdentityFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.key")
	a := newNode(t, node.IdentityFile(path))
	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file is left beside the identity")
	require.NoError(t, a.Close())

	b := newNode(t, node.IdentityFile(path))
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
		_, err := node.New(node.IdentityFile(path), node.ListenAddrs(loopback))
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
		"no address": node.Bootstrap(peer.AddrInfo{ID: randomPeerID(t)}),
		"DHT mode 7": node.DHTMode(7),
	}
	for want, opt := range cases {
		_, err := node.New(opt)
		require.Error(t, err, want)
		require.Contains(t, err.Error(), map[string]string{"-1s": "-1s", "MaxRetries": "MaxRetries", "no address": "no address", "DHT mode 7": "7"}[want])
	}
	_, err := node.New(node.Identity(nil))
	require.ErrorContains(t, err, "nil")
	key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	_, err = node.New(node.Identity(key), node.IdentityFile(filepath.Join(t.TempDir(), "k")))
	require.ErrorContains(t, err, "exclusive")
	_, err = node.New(node.RealmOnly(), node.AuthTimeout(0))
	require.ErrorContains(t, err, "AuthTimeout must be > 0, got 0s")
	_, err = node.New(node.RealmOnly(), node.RealmOnlyBackoff(-time.Minute))
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
	n := newNode(t, node.Fx(fx.Populate(&fromFx, &ps)))
	require.Same(t, n.Swarm(), fromFx)
	require.Same(t, n.Host().Network(), network.Network(fromFx))
	require.Equal(t, n.Host().Peerstore(), ps)
}

func TestCloseTwice(t *testing.T) {
	n, err := node.New(node.ListenAddrs(loopback))
	require.NoError(t, err)
	require.NoError(t, n.Close())
	require.NoError(t, n.Close())
}
