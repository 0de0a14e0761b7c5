package node_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"

	"github.com/realmnet/realmnet/internal/benchkit"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
)

// benchRelayResources lets a relay carry the benchmarks' transfers (go-libp2p
// resets a default circuit after 128 KiB).
func benchRelayResources() relay.Resources {
	rc := relay.DefaultResources()
	rc.Limit = &relay.RelayLimit{Duration: time.Hour, Data: 1 << 40}
	return rc
}

// benchRelayedRealmnet is a realmnet client holding only a relayed
// connection to a private realmnet server (static relay, reservation)
// through a realmnet relay on 127.0.0.3; they are isolated from each other.
func benchRelayedRealmnet(b *testing.B, proto protocol.ID, handler network.StreamHandler) (client, server host.Host) {
	b.Helper()
	resources := benchRelayResources()
	r := testnode.New(b, node.ListenAddrStrings("/ip4/127.0.0.3/udp/0/quic-v1"), node.RelayService(node.RelayServiceConfig{Resources: &resources}))
	s := testnode.New(b, node.ListenAddrStrings("/ip4/127.0.0.2/udp/0/quic-v1"),
		node.Relays(r.AddrInfo()), node.ForceReachability(network.ReachabilityPrivate))
	s.Host().SetStreamHandler(proto, handler)
	c := testnode.New(b)
	isolate(b, c, s)
	ctx, cancel := context.WithTimeout(context.Background(), benchSetupTimeout)
	defer cancel()
	connectThroughRelay(b, ctx, c.Host(), s.ID(), circuitAddrs(b, r))
	return c.Host(), s.Host()
}

// benchRelayedLibp2p is the same with stock go-libp2p hosts: a relay
// (EnableRelayService), a private server with it as static relay
// (autorelay), and a client that knows the server only by its circuit
// address (a stock host opens no other path).
func benchRelayedLibp2p(b *testing.B, proto protocol.ID, handler network.StreamHandler) (client, server host.Host) {
	b.Helper()
	r := testkit.StockHostOn(b, "/ip4/127.0.0.3/udp/0/quic-v1", libp2p.EnableRelay(),
		libp2p.EnableRelayService(relay.WithResources(benchRelayResources())), libp2p.ForceReachabilityPublic())
	relayInfo := peer.AddrInfo{ID: r.ID(), Addrs: r.Addrs()}
	s := testkit.StockHostOn(b, "/ip4/127.0.0.2/udp/0/quic-v1", libp2p.EnableRelay(),
		libp2p.EnableAutoRelayWithStaticRelays([]peer.AddrInfo{relayInfo}), libp2p.ForceReachabilityPrivate())
	s.SetStreamHandler(proto, handler)
	c := testkit.StockHost(b, libp2p.EnableRelay())
	ctx, cancel := context.WithTimeout(context.Background(), benchSetupTimeout)
	defer cancel()
	connectThroughRelay(b, ctx, c, s.ID(), circuitAddrsOf(b, relayInfo))
	return c, s
}

// BenchmarkRelayedPath measures a relayed path (circuit relay v2 on
// loopback: client → relay → private server), realmnet against stock
// go-libp2p in the same run (benchkit.Compare, interleaved):
//
//   - echo-1KiB: a new stream (network.WithAllowLimitedConn) and a 1 KiB
//     echo over the relayed connection; *-ns/op is the median round trip.
//   - throughput-4MiB: 4 MiB on one stream, acknowledged; *-MB/s.
//   - time-to-relayed: from the start of a new private server (static
//     relay, forced private) to the client's first relayed connection to
//     it: reservation included, the server's start excluded on neither
//     side.
//
// ratio-* is realmnet/libp2p per round. No target is set by the issue
// beyond printing both sides.
func BenchmarkRelayedPath(b *testing.B) {
	b.Run("echo-1KiB", func(b *testing.B) {
		rc, rs := benchRelayedRealmnet(b, benchEchoProto, testnode.Echo)
		lc, ls := benchRelayedLibp2p(b, benchEchoProto, testnode.Echo)
		msg := bytes.Repeat([]byte{0xab}, benchEchoSize)
		reply := make([]byte, benchEchoSize)
		ctx := network.WithAllowLimitedConn(context.Background(), "benchmark")
		side := func(name string, c, s host.Host) benchkit.Side {
			return benchkit.Side{Name: name, Op: func() error { return benchEchoOnce(ctx, c, s.ID(), msg, reply) }}
		}
		benchkit.Compare(b, side("realmnet", rc, rs), side("libp2p", lc, ls),
			benchkit.Config{Block: 8, Warmup: 20, MinRounds: 50, Allocs: true})
	})
	b.Run("throughput-4MiB", func(b *testing.B) {
		const size = 4 << 20
		rc, rs := benchRelayedRealmnet(b, benchThroughputProto, benchDiscardHandler)
		lc, ls := benchRelayedLibp2p(b, benchThroughputProto, benchDiscardHandler)
		chunk := bytes.Repeat([]byte{0x5a}, benchThroughputChunk)
		ctx := network.WithAllowLimitedConn(context.Background(), "benchmark")
		side := func(name string, c, s host.Host) benchkit.Side {
			return benchkit.Side{Name: name, Op: func() error { return benchSendOnce(ctx, c, s.ID(), chunk, size) }}
		}
		benchkit.Compare(b, side("realmnet", rc, rs), side("libp2p", lc, ls),
			benchkit.Config{Block: 1, MinRounds: 6, Bytes: size})
	})
	b.Run("time-to-relayed", func(b *testing.B) {
		resources := benchRelayResources()
		r := testnode.New(b, node.ListenAddrStrings("/ip4/127.0.0.3/udp/0/quic-v1"), node.RelayService(node.RelayServiceConfig{Resources: &resources}))
		rClient := testnode.New(b)
		lr := testkit.StockHostOn(b, "/ip4/127.0.0.3/udp/0/quic-v1", libp2p.EnableRelay(),
			libp2p.EnableRelayService(relay.WithResources(benchRelayResources())), libp2p.ForceReachabilityPublic())
		lrInfo := peer.AddrInfo{ID: lr.ID(), Addrs: lr.Addrs()}
		lClient := testkit.StockHost(b, libp2p.EnableRelay())
		realmnet := benchkit.Side{Name: "realmnet", Op: func() error {
			ctx, cancel := context.WithTimeout(context.Background(), benchSetupTimeout)
			defer cancel()
			s, err := node.New(ctx, node.ListenAddrStrings("/ip4/127.0.0.2/udp/0/quic-v1"), node.DHTMode(node.DHTClient),
				node.Relays(r.AddrInfo()), node.ForceReachability(network.ReachabilityPrivate))
			if err != nil {
				return err
			}
			defer s.Close()
			connectThroughRelay(b, ctx, rClient.Host(), s.ID(), circuitAddrs(b, r))
			return rClient.Host().Network().ClosePeer(s.ID())
		}}
		libp2pSide := benchkit.Side{Name: "libp2p", Op: func() error {
			ctx, cancel := context.WithTimeout(context.Background(), benchSetupTimeout)
			defer cancel()
			s, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.2/udp/0/quic-v1"), libp2p.EnableRelay(),
				libp2p.EnableAutoRelayWithStaticRelays([]peer.AddrInfo{lrInfo}), libp2p.ForceReachabilityPrivate())
			if err != nil {
				return err
			}
			defer s.Close()
			connectThroughRelay(b, ctx, lClient, s.ID(), circuitAddrsOf(b, lrInfo))
			return lClient.Network().ClosePeer(s.ID())
		}}
		benchkit.Compare(b, realmnet, libp2pSide, benchkit.Config{Block: 1, MinRounds: 10})
	})
}
