package node_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/record"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

// TestRealmRelay: R joins the realm with realm.Relay; A, private
// (ForceReachability) on 127.0.0.2, joins through R and reserves a slot on
// it without any configured relay; its circuit address reaches R in A's
// signed record. C, kept from A by their gaters (each blocks the other's
// loopback address), joins through R,
// learns A's record from R's exchange and becomes A's member over a
// relayed path, on which a realm stream works. D, no member, is refused a
// reservation on R and a circuit to A through R.
func TestRealmRelay(t *testing.T) {
	psk := []byte("realm relay test key, 32 bytes!")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	r := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.3/udp/0/quic-v1"))
	_, err := r.JoinRealm(ctx, "team", realm.PSK(psk), realm.Relay())
	require.NoError(t, err)

	a := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.2/udp/0/quic-v1"), node.ForceReachability(network.ReachabilityPrivate))
	ra, err := a.JoinRealm(ctx, "team", realm.PSK(psk), realm.Peers(r.AddrInfo()),
		realm.StreamHandler(testnode.EchoProtocol, testnode.Echo))
	require.NoError(t, err)

	// A reserves on R once R is its member and identify said R serves
	// the hop protocol; R then holds A's record with the circuit address.
	cab, ok := peerstore.GetCertifiedAddrBook(r.Host().Peerstore())
	require.True(t, ok)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !recordHasCircuit(t, cab.GetPeerRecord(a.ID())) {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("A's record with a circuit address never reached R; A's relay addresses: %v", ra.RelayAddrs())
		}
	}
	require.NotEmpty(t, ra.RelayAddrs())
	for _, addr := range ra.RelayAddrs() {
		id, err := peer.IDFromP2PAddr(addr.Decapsulate(ma.StringCast("/p2p-circuit")))
		require.NoError(t, err, "%s names the relay", addr)
		require.Equal(t, r.ID(), id)
	}

	// A (127.0.0.2) and C (127.0.0.1) block each other's addresses:
	// dialing from 127.0.0.2, A's packets may leave from 127.0.0.1, so
	// C's rule alone would not keep them apart.
	c := testnode.New(t)
	require.NoError(t, c.Gater().BlockAddr(net.ParseIP("127.0.0.2")))
	require.NoError(t, a.Gater().BlockAddr(net.ParseIP("127.0.0.1")))
	rc, err := c.JoinRealm(ctx, "team", realm.PSK(psk), realm.Peers(r.AddrInfo()))
	require.NoError(t, err)
	for {
		if _, ok := rc.Member(a.ID()); ok {
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("C never admitted A; C's members: %v", rc.Members())
		}
	}
	conns := c.Host().Network().ConnsToPeer(a.ID())
	require.NotEmpty(t, conns)
	for _, conn := range conns {
		require.True(t, conn.Stat().Limited, "C reaches A only through R: %s", conn.RemoteMultiaddr())
	}
	s, err := rc.NewStream(ctx, a.ID(), testnode.EchoProtocol)
	require.NoError(t, err, "a realm stream runs on the relayed path")
	testnode.EchoOver(t, s, 1024)

	d := testnode.New(t)
	_, err = client.Reserve(ctx, d.Host(), r.AddrInfo())
	require.Error(t, err, "a non-member gets no reservation")
	var rsvErr client.ReservationError
	require.ErrorAs(t, err, &rsvErr)
	via := peer.AddrInfo{ID: a.ID(), Addrs: ra.RelayAddrs()}
	require.Error(t, d.Connect(ctx, via), "a non-member gets no circuit")
}

// recordHasCircuit reports whether env is a peer record with a relay
// address.
func recordHasCircuit(t *testing.T, env *record.Envelope) bool {
	t.Helper()
	if env == nil {
		return false
	}
	rec, err := env.Record()
	require.NoError(t, err)
	for _, a := range rec.(*peer.PeerRecord).Addrs {
		if _, err := a.ValueForProtocol(ma.P_CIRCUIT); err == nil {
			return true
		}
	}
	return false
}
