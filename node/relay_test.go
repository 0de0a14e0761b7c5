package node_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/node"
)

// circuitAddrs are b's addresses through relay r: each of r's addresses
// with /p2p/<r>/p2p-circuit.
func circuitAddrs(t *testing.T, r *node.Node) []ma.Multiaddr {
	t.Helper()
	var out []ma.Multiaddr
	for _, a := range r.Addrs() {
		out = append(out, a.Encapsulate(ma.StringCast("/p2p/"+r.ID().String()+"/p2p-circuit")))
	}
	require.NotEmpty(t, out)
	return out
}

// TestRelayedPath: B is private with a static relay R (node.Relays,
// node.ForceReachability): go-libp2p's autorelay reserves a slot on R, and
// A, which knows B only by its circuit addresses, connects through R. B
// listens on 127.0.0.2, which A's gater blocks both ways, so that no direct
// path can replace the relayed one (on loopback, identify would hand A B's
// direct address and multipath would dial it). The
// connection is a relayed path on both ends: limited, through the
// admission pipeline and into the pools, in multipath's relayed tier. A
// stream on it needs network.WithAllowLimitedConn: without it NewStream
// waits for a direct connection and fails with network.ErrLimitedConn;
// with it the stream works.
func TestRelayedPath(t *testing.T) {
	fastHeartbeats := multipath.DefaultConfig()
	fastHeartbeats.HeartbeatInterval = 100 * time.Millisecond
	fastHeartbeats.PathIdleTimeout = 2 * time.Second
	r := testnode.New(t, node.RelayService(node.RelayServiceConfig{}))
	b := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.2/udp/0/quic-v1"),
		node.Relays(r.AddrInfo()), node.ForceReachability(network.ReachabilityPrivate), node.Multipath(fastHeartbeats))
	b.Host().SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
	a := testnode.New(t, node.Multipath(fastHeartbeats))
	require.NoError(t, a.Gater().BlockAddr(net.ParseIP("127.0.0.2")))
	require.Equal(t, network.ReachabilityPrivate, b.Reachability())
	require.Equal(t, network.ReachabilityUnknown, a.Reachability())

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	via := peer.AddrInfo{ID: b.ID(), Addrs: circuitAddrs(t, r)}
	// autorelay reserves in the background: until it has, R answers
	// NO_RESERVATION. Each attempt is a real dial; the state awaited is "B
	// has a reservation".
	for {
		err := a.Connect(ctx, via)
		if err == nil {
			break
		}
		require.NoError(t, ctx.Err(), "B never got a reservation on R: last error %v", err)
		a.Host().Peerstore().ClearAddrs(b.ID())
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
		}
	}

	for _, side := range []struct {
		n    *node.Node
		peer peer.ID
		dir  network.Direction
	}{{a, b.ID(), network.DirOutbound}, {b, a.ID(), network.DirInbound}} {
		conns := side.n.Host().Network().ConnsToPeer(side.peer)
		require.Len(t, conns, 1)
		c := conns[0]
		require.True(t, c.Stat().Limited, "a relayed connection is limited")
		require.Equal(t, side.dir, c.Stat().Direction)
		_, err := c.RemoteMultiaddr().ValueForProtocol(ma.P_CIRCUIT)
		require.NoError(t, err, "remote address %s goes through the relay", c.RemoteMultiaddr())
		require.Len(t, side.n.Connections(side.peer), 1, "the pools hold the relayed connection")
		paths := side.n.Paths(side.peer)
		require.Len(t, paths, 1)
		require.True(t, paths[0].Relayed, "multipath puts it in the relayed tier")
	}

	// Heartbeats run on the relayed path (their stream is allowed on a
	// limited connection): it keeps answering for 5 intervals and more.
	for _, side := range []struct {
		n    *node.Node
		peer peer.ID
	}{{a, b.ID()}, {b, a.ID()}} {
		tick := time.NewTicker(20 * time.Millisecond)
		for {
			paths := side.n.Paths(side.peer)
			require.Len(t, paths, 1, "the relayed path is alive")
			if p := paths[0]; p.HeartbeatRTT > 0 && p.LastHeartbeat.Sub(p.Opened) > 5*fastHeartbeats.HeartbeatInterval {
				break
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				t.Fatalf("no heartbeat answered on the relayed path: %+v", side.n.Paths(side.peer))
			}
		}
		tick.Stop()
	}

	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	_, err := a.Host().NewStream(short, b.ID(), testnode.EchoProtocol)
	require.True(t, errors.Is(err, network.ErrLimitedConn), "without WithAllowLimitedConn: %v", err)

	s, err := a.Host().NewStream(network.WithAllowLimitedConn(ctx, "test"), b.ID(), testnode.EchoProtocol)
	require.NoError(t, err)
	testnode.EchoOver(t, s, 1024)
}

// TestRelayOptionsRefuseBadInput: a relay without an address, a relay
// address given as a relay, a relay address as a listen address, and a
// reachability that is neither public nor private are refused by name.
func TestRelayOptionsRefuseBadInput(t *testing.T) {
	r := testnode.New(t)
	circuit := r.Addrs()[0].Encapsulate(ma.StringCast("/p2p/" + r.ID().String() + "/p2p-circuit"))
	for _, tc := range []struct {
		name string
		opt  node.Option
		want string
	}{
		{"relay without address", node.Relays(peer.AddrInfo{ID: r.ID()}), "has no address"},
		{"relay through a relay", node.Relays(peer.AddrInfo{ID: r.ID(), Addrs: []ma.Multiaddr{circuit}}), "is a relay address itself"},
		{"circuit listen address", node.ListenAddrs(circuit), "is a relay address"},
		{"unknown reachability", node.ForceReachability(network.ReachabilityUnknown), "want public or private"},
		{"no relays", node.Relays(), "at least one relay"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := node.New(context.Background(), tc.opt)
			require.ErrorContains(t, err, tc.want)
		})
	}
}
