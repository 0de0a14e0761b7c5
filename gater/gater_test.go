package gater_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	dssync "github.com/ipfs/go-datastore/sync"
	leveldb "github.com/ipfs/go-ds-leveldb"
	ic "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/gater"
	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, append(testkit.LeakOptions(),
		// goleveldb v1.0.0's RecoverFile (recoverTable, leveldb/db.go)
		// creates a buffer pool it never closes; its drain goroutine
		// outlives the recovery. Open's refusal (inspect) and its recovery
		// of a store with a missing table file both call it, once per Open.
		goleak.IgnoreTopFunction("github.com/syndtr/goleveldb/leveldb/util.(*BufferPool).drain"))...)
}

// ---------------------------------------------------------------- helpers

const rulesPrefix = "/realmnet/gater"

func newStore() datastore.Batching { return dssync.MutexWrap(datastore.NewMapDatastore()) }

func newGater(t testing.TB, ds datastore.Datastore, reg *hooks.Registry) *gater.Gater {
	t.Helper()
	if ds == nil {
		ds = newStore()
	}
	g, err := gater.New(ds, reg)
	require.NoError(t, err)
	return g
}

func newRegistry(t testing.TB) *hooks.Registry {
	t.Helper()
	r, err := hooks.NewRegistry(0)
	require.NoError(t, err)
	return r
}

// testKey returns a deterministic Ed25519 key; seed distinguishes keys.
func testKey(t testing.TB, seed byte) ic.PrivKey {
	t.Helper()
	sk, _, err := ic.GenerateEd25519Key(bytes.NewReader(bytes.Repeat([]byte{seed}, 64)))
	require.NoError(t, err)
	return sk
}

func testPeer(t testing.TB, seed byte) peer.ID {
	t.Helper()
	id, err := peer.IDFromPrivateKey(testKey(t, seed))
	require.NoError(t, err)
	return id
}

// quic returns a QUIC multiaddr for ip (IPv4, IPv6 or IPv4-mapped IPv6).
func quic(t testing.TB, ip string) ma.Multiaddr {
	t.Helper()
	proto := "ip4"
	if strings.Contains(ip, ":") {
		proto = "ip6"
	}
	a, err := ma.NewMultiaddr(fmt.Sprintf("/%s/%s/udp/4001/quic-v1", proto, ip))
	require.NoError(t, err)
	return a
}

func cidr(t testing.TB, s string) *net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(s)
	require.NoError(t, err)
	return n
}

func ip(t testing.TB, s string) net.IP {
	t.Helper()
	v := net.ParseIP(s)
	require.NotNil(t, v, s)
	return v
}

var localAddr = ma.StringCast("/ip4/192.0.2.254/udp/4001/quic-v1")

// directions are the two directions AdmitConn decides for.
var directions = []network.Direction{network.DirOutbound, network.DirInbound}

// fakeAddrs is a network.ConnMultiaddrs, what InterceptAccept and
// InterceptSecured are given.
type fakeAddrs struct{ local, remote ma.Multiaddr }

func (f fakeAddrs) LocalMultiaddr() ma.Multiaddr  { return f.local }
func (f fakeAddrs) RemoteMultiaddr() ma.Multiaddr { return f.remote }

func inbound(remote ma.Multiaddr) network.ConnMultiaddrs {
	return fakeAddrs{local: localAddr, remote: remote}
}

// newConn returns a testkit.FakeConn (a core.Conn, what the swarm gives
// AdmitConn) from p at remote, in direction dir. Its addresses are set
// explicitly: NewFakeConn's default remote address is in 10.0.0.0/8, which
// tests block.
func newConn(p peer.ID, dir network.Direction, remote ma.Multiaddr) *testkit.FakeConn {
	c := testkit.NewFakeConn("", p, dir)
	c.SetAddrs(localAddr, remote)
	return c
}

// requireRefused checks that err is the gater stage's refusal of a
// connection of p: a *core.RefusedError matching core.ErrRefused, with
// reason, code network.ConnGated, and inner reachable with errors.Is. It
// returns the RefusedError.
func requireRefused(t testing.TB, err error, p peer.ID, reason core.CloseReason, inner error) *core.RefusedError {
	t.Helper()
	require.Error(t, err)
	require.ErrorIs(t, err, core.ErrRefused)
	require.ErrorIs(t, err, inner)
	var refused *core.RefusedError
	require.ErrorAs(t, err, &refused)
	require.Equal(t, core.StageGater, refused.Stage)
	require.Equal(t, reason, refused.Reason)
	require.Equal(t, network.ConnGated, refused.Code)
	require.Equal(t, p, refused.Peer)
	require.Nil(t, refused.Survivor)
	require.Contains(t, err.Error(), string(reason), "the message names the reason")
	return refused
}

// admitVerdict is the gater's verdict on a new connection of p from a in
// direction dir: AdmitConn's error. It also checks that InterceptSecured
// leaves the decision to AdmitConn (allows), that InterceptUpgraded, for
// go-libp2p's own swarm, decides as AdmitConn does, and that neither closes
// the connection (the swarm does, with the RefusedError's code).
func admitVerdict(t testing.TB, g *gater.Gater, p peer.ID, dir network.Direction, a ma.Multiaddr) error {
	t.Helper()
	require.True(t, g.InterceptSecured(dir, p, inbound(a)), "InterceptSecured allows every connection")
	c := newConn(p, dir, a)
	err := g.AdmitConn(t.Context(), c)
	upgraded, _ := g.InterceptUpgraded(c)
	require.Equal(t, err == nil, upgraded, "InterceptUpgraded decides as AdmitConn (%v)", err)
	g.AbortConn(c) // reserves nothing: a no-op whatever the verdict
	require.False(t, c.IsClosed(), "the gater does not close the connection it decides on")
	return err
}

// addrVerdicts is the verdict of every address-level decision point for a
// remote address: outbound dial, inbound accept, and admission (AdmitConn,
// both directions) of a connection of an otherwise unblocked peer. A
// refusal of the dial or the admission must name the address and wrap
// gater.ErrAddrBlocked.
func addrVerdicts(t *testing.T, g *gater.Gater, p peer.ID, a ma.Multiaddr) (dial, accept, admitted bool) {
	t.Helper()
	dial = g.InterceptAddrDial(p, a)
	if err := g.CheckAddrDial(p, a); dial {
		require.NoError(t, err)
	} else {
		require.ErrorIs(t, err, gater.ErrAddrBlocked)
		require.Contains(t, err.Error(), a.String(), "the reason names the address")
	}
	accept = g.InterceptAccept(inbound(a))
	var verdicts []bool
	for _, dir := range directions {
		err := admitVerdict(t, g, p, dir, a)
		if err != nil {
			requireRefused(t, err, p, core.ReasonBlocked, gater.ErrAddrBlocked)
			require.NotErrorIs(t, err, gater.ErrPeerBlocked)
			require.Contains(t, err.Error(), a.String(), "the reason names the address")
		}
		verdicts = append(verdicts, err == nil)
	}
	require.Equal(t, verdicts[0], verdicts[1], "AdmitConn decides on addresses alike in both directions")
	return dial, accept, verdicts[0]
}

func requireAddrAllowed(t *testing.T, g *gater.Gater, a ma.Multiaddr) {
	t.Helper()
	p := testPeer(t, 200)
	dial, accept, admitted := addrVerdicts(t, g, p, a)
	require.True(t, dial, "InterceptAddrDial %s", a)
	require.True(t, accept, "InterceptAccept %s", a)
	require.True(t, admitted, "AdmitConn %s", a)
}

func requireAddrRefused(t *testing.T, g *gater.Gater, a ma.Multiaddr) {
	t.Helper()
	p := testPeer(t, 200)
	dial, accept, admitted := addrVerdicts(t, g, p, a)
	require.False(t, dial, "InterceptAddrDial %s", a)
	require.False(t, accept, "InterceptAccept %s", a)
	require.False(t, admitted, "AdmitConn %s", a)
}

// peerAddr is the remote address of requirePeerAllowed / requirePeerRefused;
// no test blocks it.
const peerAddr = "203.0.113.77"

func requirePeerAllowed(t *testing.T, g *gater.Gater, p peer.ID) {
	t.Helper()
	require.NoError(t, g.CheckPeerDial(p))
	require.True(t, g.InterceptPeerDial(p))
	for _, dir := range directions {
		require.NoError(t, admitVerdict(t, g, p, dir, quic(t, peerAddr)), "AdmitConn %s", dir)
	}
}

func requirePeerRefused(t *testing.T, g *gater.Gater, p peer.ID) {
	t.Helper()
	err := g.CheckPeerDial(p)
	require.ErrorIs(t, err, gater.ErrPeerBlocked)
	require.Contains(t, err.Error(), p.String(), "the reason names the peer")
	require.False(t, g.InterceptPeerDial(p))
	for _, dir := range directions {
		err := admitVerdict(t, g, p, dir, quic(t, peerAddr))
		requireRefused(t, err, p, core.ReasonBlocked, gater.ErrPeerBlocked)
		require.NotErrorIs(t, err, gater.ErrAddrBlocked)
		require.NotErrorIs(t, err, gater.ErrPeerPolicy)
		require.Contains(t, err.Error(), p.String(), "the reason names the peer")
	}
}

// namedConn is a testkit.FakeConn with a name for the closing tests.
type namedConn struct {
	name string
	*testkit.FakeConn
}

// fakeNetwork is a network.Network whose Conns are fixed fake conns; only
// Conns is implemented (the gater uses nothing else).
type fakeNetwork struct {
	network.Network
	conns []namedConn
}

// ClosePeer closes p's connections (those not closed yet) without a code,
// as a swarm's ClosePeer does.
func (n *fakeNetwork) ClosePeer(p peer.ID) error {
	for _, c := range n.conns {
		if c.RemotePeer() == p && !c.IsClosed() {
			_ = c.Close()
		}
	}
	return nil
}

func (n *fakeNetwork) Conns() []network.Conn {
	out := make([]network.Conn, len(n.conns))
	for i, c := range n.conns {
		out[i] = c.FakeConn
	}
	return out
}

// closedConns names the connections closed (each must have been closed
// with network.ConnGated).
func (n *fakeNetwork) closedConns(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, c := range n.conns {
		if !c.IsClosed() {
			continue
		}
		require.Equal(t, network.ConnGated, c.CloseCode(), "connection %s", c.name)
		names = append(names, c.name)
	}
	return names
}

func named(name string, p peer.ID, remote ma.Multiaddr) namedConn {
	return namedConn{name: name, FakeConn: newConn(p, network.DirOutbound, remote)}
}

// ruleKeys lists the rule keys in ds.
func ruleKeys(t testing.TB, ds datastore.Datastore) []string {
	t.Helper()
	res, err := ds.Query(context.Background(), query.Query{Prefix: rulesPrefix, KeysOnly: true})
	require.NoError(t, err)
	entries, err := res.Rest()
	require.NoError(t, err)
	keys := make([]string, 0, len(entries))
	for _, e := range entries {
		keys = append(keys, e.Key)
	}
	slices.Sort(keys)
	return keys
}

// ---------------------------------------------------------------- rules

func TestNewNilDatastore(t *testing.T) {
	g, err := gater.New(nil, nil)
	require.Error(t, err)
	require.Nil(t, g)
	require.Contains(t, err.Error(), "datastore")
}

func TestEmptyGaterAllowsEverything(t *testing.T) {
	g := newGater(t, nil, nil)
	requirePeerAllowed(t, g, testPeer(t, 1))
	requireAddrAllowed(t, g, quic(t, "10.1.2.3"))
	requireAddrAllowed(t, g, quic(t, "2001:db8::1"))
	require.Empty(t, g.BlockedPeers())
	require.Empty(t, g.BlockedAddrs())
	require.Empty(t, g.BlockedSubnets())
}

func TestPeerRules(t *testing.T) {
	g := newGater(t, nil, nil)
	p, other := testPeer(t, 1), testPeer(t, 2)

	require.NoError(t, g.BlockPeer(p))
	requirePeerRefused(t, g, p)
	requirePeerAllowed(t, g, other)
	require.Equal(t, []peer.ID{p}, g.BlockedPeers())
	// A peer rule does not affect address decisions.
	require.True(t, g.InterceptAddrDial(p, quic(t, "192.0.2.1")))

	require.NoError(t, g.BlockPeer(p), "blocking twice is fine")
	require.Len(t, g.BlockedPeers(), 1)

	// Allow wins over block.
	require.NoError(t, g.AllowPeer(p))
	requirePeerAllowed(t, g, p)
	require.Equal(t, []peer.ID{p}, g.BlockedPeers(), "the block rule stays, overridden")
	require.NoError(t, g.RemoveAllowedPeer(p))
	requirePeerRefused(t, g, p)

	require.NoError(t, g.UnblockPeer(p))
	requirePeerAllowed(t, g, p)
	require.Empty(t, g.BlockedPeers())
	require.NoError(t, g.UnblockPeer(p), "unblocking an unblocked peer is fine")
	require.Contains(t, g.String(), "block: 0 peers")
}

func TestAddrRules(t *testing.T) {
	for _, tc := range []struct {
		name, addr, neighbour string
	}{
		{"IPv4", "10.1.2.3", "10.1.2.4"},
		{"IPv6", "2001:db8::1", "2001:db8::2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGater(t, nil, nil)
			a, n := quic(t, tc.addr), quic(t, tc.neighbour)
			require.NoError(t, g.BlockAddr(ip(t, tc.addr)))
			requireAddrRefused(t, g, a)
			requireAddrAllowed(t, g, n)
			require.Equal(t, []netip.Addr{netip.MustParseAddr(tc.addr)}, g.BlockedAddrs())
			// Other transports and encapsulations of the same IP are refused too.
			tcp := ma.StringCast(strings.Replace(a.String(), "/udp/4001/quic-v1", "/tcp/1234", 1))
			requireAddrRefused(t, g, tcp)
			// An address rule does not make the peer refused: it may be
			// dialed, and its connections from other addresses are
			// admitted; the one from the blocked address is refused for
			// its address.
			p := testPeer(t, 3)
			require.True(t, g.InterceptPeerDial(p))
			for _, dir := range directions {
				require.NoError(t, admitVerdict(t, g, p, dir, n))
				err := admitVerdict(t, g, p, dir, a)
				requireRefused(t, err, p, core.ReasonBlocked, gater.ErrAddrBlocked)
				require.NotErrorIs(t, err, gater.ErrPeerBlocked)
			}

			require.NoError(t, g.AllowAddr(ip(t, tc.addr)))
			requireAddrAllowed(t, g, a)
			require.NoError(t, g.RemoveAllowedAddr(ip(t, tc.addr)))
			requireAddrRefused(t, g, a)

			require.NoError(t, g.UnblockAddr(ip(t, tc.addr)))
			requireAddrAllowed(t, g, a)
			require.Empty(t, g.BlockedAddrs())
		})
	}
}

func TestSubnetRules(t *testing.T) {
	for _, tc := range []struct {
		name, subnet, masked string
		inside, outside      []string
	}{
		{"IPv4", "10.1.0.0/16", "10.1.0.0/16", []string{"10.1.0.0", "10.1.2.3", "10.1.255.255"}, []string{"10.0.255.255", "10.2.0.0", "192.0.2.1", "2001:db8::1"}},
		{"IPv4 host bits set", "10.1.2.3/16", "10.1.0.0/16", []string{"10.1.9.9"}, []string{"10.2.0.1"}},
		{"IPv4 /32", "10.1.2.3/32", "10.1.2.3/32", []string{"10.1.2.3"}, []string{"10.1.2.4"}},
		{"IPv6", "2001:db8:1::/48", "2001:db8:1::/48", []string{"2001:db8:1::1", "2001:db8:1:ffff::1"}, []string{"2001:db8:2::1", "10.1.2.3"}},
		{"IPv6 /128", "2001:db8::1/128", "2001:db8::1/128", []string{"2001:db8::1"}, []string{"2001:db8::2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGater(t, nil, nil)
			subnet := cidr(t, tc.subnet)
			require.NoError(t, g.BlockSubnet(subnet))
			require.Equal(t, []netip.Prefix{netip.MustParsePrefix(tc.masked)}, g.BlockedSubnets())
			for _, a := range tc.inside {
				requireAddrRefused(t, g, quic(t, a))
			}
			for _, a := range tc.outside {
				requireAddrAllowed(t, g, quic(t, a))
			}
			require.NoError(t, g.UnblockSubnet(subnet))
			require.Empty(t, g.BlockedSubnets())
			for _, a := range tc.inside {
				requireAddrAllowed(t, g, quic(t, a))
			}
		})
	}

	t.Run("overlapping subnets are independent rules", func(t *testing.T) {
		g := newGater(t, nil, nil)
		require.NoError(t, g.BlockSubnet(cidr(t, "10.0.0.0/8")))
		require.NoError(t, g.BlockSubnet(cidr(t, "10.1.0.0/16")))
		require.NoError(t, g.UnblockSubnet(cidr(t, "10.1.0.0/16")))
		requireAddrRefused(t, g, quic(t, "10.1.2.3"))
		require.NoError(t, g.UnblockSubnet(cidr(t, "10.0.0.0/8")))
		requireAddrAllowed(t, g, quic(t, "10.1.2.3"))
	})

	t.Run("the whole address space", func(t *testing.T) {
		g := newGater(t, nil, nil)
		require.NoError(t, g.BlockSubnet(cidr(t, "0.0.0.0/0")))
		requireAddrRefused(t, g, quic(t, "10.1.2.3"))
		requireAddrAllowed(t, g, quic(t, "2001:db8::1"))
		require.NoError(t, g.BlockSubnet(cidr(t, "::/0")))
		requireAddrRefused(t, g, quic(t, "2001:db8::1"))
	})
}

func TestAllowWinsOverBlock(t *testing.T) {
	t.Run("IPv4 address in blocked subnet", func(t *testing.T) {
		g := newGater(t, nil, nil)
		require.NoError(t, g.BlockSubnet(cidr(t, "10.0.0.0/8")))
		require.NoError(t, g.AllowAddr(ip(t, "10.1.2.3")))
		requireAddrAllowed(t, g, quic(t, "10.1.2.3"))
		requireAddrRefused(t, g, quic(t, "10.1.2.4"))
		require.NoError(t, g.RemoveAllowedAddr(ip(t, "10.1.2.3")))
		requireAddrRefused(t, g, quic(t, "10.1.2.3"))
	})
	t.Run("IPv6 address in blocked subnet", func(t *testing.T) {
		g := newGater(t, nil, nil)
		require.NoError(t, g.BlockSubnet(cidr(t, "2001:db8::/32")))
		require.NoError(t, g.AllowAddr(ip(t, "2001:db8::1")))
		requireAddrAllowed(t, g, quic(t, "2001:db8::1"))
		requireAddrRefused(t, g, quic(t, "2001:db8::2"))
	})
	t.Run("subnet in blocked subnet", func(t *testing.T) {
		g := newGater(t, nil, nil)
		require.NoError(t, g.BlockSubnet(cidr(t, "10.0.0.0/8")))
		require.NoError(t, g.AllowSubnet(cidr(t, "10.1.2.0/24")))
		requireAddrAllowed(t, g, quic(t, "10.1.2.200"))
		requireAddrRefused(t, g, quic(t, "10.1.3.1"))
		require.NoError(t, g.RemoveAllowedSubnet(cidr(t, "10.1.2.0/24")))
		requireAddrRefused(t, g, quic(t, "10.1.2.200"))
	})
	t.Run("allowed subnet over blocked address", func(t *testing.T) {
		g := newGater(t, nil, nil)
		require.NoError(t, g.AllowSubnet(cidr(t, "2001:db8::/32")))
		require.NoError(t, g.BlockAddr(ip(t, "2001:db8::1")))
		requireAddrAllowed(t, g, quic(t, "2001:db8::1"))
	})
	t.Run("allow rules alone refuse nothing", func(t *testing.T) {
		g := newGater(t, nil, nil)
		require.NoError(t, g.AllowAddr(ip(t, "10.1.2.3")))
		require.NoError(t, g.AllowSubnet(cidr(t, "10.2.0.0/16")))
		require.NoError(t, g.AllowPeer(testPeer(t, 1)))
		requireAddrAllowed(t, g, quic(t, "10.9.9.9"))
		requirePeerAllowed(t, g, testPeer(t, 2))
	})
}

func TestNonIPAddressesIgnoreIPRules(t *testing.T) {
	g := newGater(t, nil, nil)
	require.NoError(t, g.BlockSubnet(cidr(t, "0.0.0.0/0")))
	require.NoError(t, g.BlockSubnet(cidr(t, "::/0")))
	require.NoError(t, g.BlockAddr(ip(t, "93.184.216.34")))
	for _, s := range []string{
		"/dns4/example.com/udp/4001/quic-v1",
		"/dns6/example.com/udp/4001/quic-v1",
		"/dns/example.com/tcp/4001",
		"/dnsaddr/example.com",
	} {
		requireAddrAllowed(t, g, ma.StringCast(s))
	}
	requireAddrRefused(t, g, quic(t, "93.184.216.34"))
	requireAddrRefused(t, g, quic(t, "2001:db8::1"))
}

func TestIPv4MappedIPv6MatchedAsIPv4(t *testing.T) {
	t.Run("mapped address, IPv4 subnet rule", func(t *testing.T) {
		g := newGater(t, nil, nil)
		require.NoError(t, g.BlockSubnet(cidr(t, "10.0.0.0/8")))
		requireAddrRefused(t, g, quic(t, "::ffff:10.1.2.3"))
		requireAddrAllowed(t, g, quic(t, "::ffff:192.0.2.1"))
		require.NoError(t, g.AllowAddr(ip(t, "10.1.2.3")))
		requireAddrAllowed(t, g, quic(t, "::ffff:10.1.2.3"))
	})
	t.Run("mapped address rule, IPv4 address", func(t *testing.T) {
		g := newGater(t, nil, nil)
		mapped := ip(t, "::ffff:192.0.2.1")
		require.Len(t, mapped, net.IPv6len)
		require.NoError(t, g.BlockAddr(mapped))
		require.Equal(t, []netip.Addr{netip.MustParseAddr("192.0.2.1")}, g.BlockedAddrs(), "stored as IPv4")
		requireAddrRefused(t, g, quic(t, "192.0.2.1"))
		requireAddrRefused(t, g, quic(t, "::ffff:192.0.2.1"))
		require.NoError(t, g.BlockAddr(ip(t, "192.0.2.1").To4()))
		require.Len(t, g.BlockedAddrs(), 1, "4- and 16-byte forms are the same rule")
		require.NoError(t, g.UnblockAddr(ip(t, "192.0.2.1").To4()))
		requireAddrAllowed(t, g, quic(t, "::ffff:192.0.2.1"))
	})
	t.Run("16-byte IPv4 subnet", func(t *testing.T) {
		g := newGater(t, nil, nil)
		// A 16-byte IPv4 address with a 4-byte mask (what net.IPv4 gives).
		require.NoError(t, g.BlockSubnet(&net.IPNet{IP: net.IPv4(10, 0, 0, 0), Mask: net.CIDRMask(8, 32)}))
		require.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, g.BlockedSubnets())
		requireAddrRefused(t, g, quic(t, "10.1.2.3"))
		requireAddrRefused(t, g, quic(t, "::ffff:10.1.2.3"))
	})
}

// Regression: a subnet written in IPv4-mapped IPv6 form (net.ParseCIDR
// ("::ffff:10.0.0.0/104"): 16-byte IP, 16-byte mask) was stored as the IPv6
// prefix ::ffff:10.0.0.0/104, but every address is unmapped before it is
// matched, so the rule covered nothing. net.IPNet.Contains, and go-libp2p's
// BasicConnectionGater, treat that subnet as 10.0.0.0/8.
func TestIPv4MappedSubnetMatchedAsIPv4(t *testing.T) {
	g := newGater(t, nil, nil)
	subnet := cidr(t, "::ffff:10.0.0.0/104")
	require.True(t, subnet.Contains(net.ParseIP("10.1.2.3")), "net.IPNet semantics")
	require.NoError(t, g.BlockSubnet(subnet))
	requireAddrRefused(t, g, quic(t, "10.1.2.3"))
	requireAddrRefused(t, g, quic(t, "::ffff:10.1.2.3"))
}

// ---------------------------------------------------------------- persistence

// writeRules writes one rule of each kind and returns a check that a gater
// enforces them.
func writeRules(t *testing.T, g *gater.Gater) (check func(*testing.T, *gater.Gater)) {
	t.Helper()
	blocked, allowed := testPeer(t, 1), testPeer(t, 2)
	require.NoError(t, g.BlockPeer(blocked))
	require.NoError(t, g.BlockPeer(allowed))
	require.NoError(t, g.AllowPeer(allowed))
	require.NoError(t, g.BlockAddr(ip(t, "192.0.2.1")))
	require.NoError(t, g.BlockAddr(ip(t, "2001:db8::1")))
	require.NoError(t, g.BlockSubnet(cidr(t, "10.0.0.0/8")))
	require.NoError(t, g.BlockSubnet(cidr(t, "2001:db8:1::/48")))
	require.NoError(t, g.AllowAddr(ip(t, "10.1.2.3")))
	require.NoError(t, g.AllowSubnet(cidr(t, "2001:db8:1:2::/64")))
	return func(t *testing.T, g *gater.Gater) {
		t.Helper()
		requirePeerRefused(t, g, blocked)
		requirePeerAllowed(t, g, allowed)
		requirePeerAllowed(t, g, testPeer(t, 3))
		requireAddrRefused(t, g, quic(t, "192.0.2.1"))
		requireAddrRefused(t, g, quic(t, "2001:db8::1"))
		requireAddrRefused(t, g, quic(t, "10.9.9.9"))
		requireAddrRefused(t, g, quic(t, "2001:db8:1:3::1"))
		requireAddrAllowed(t, g, quic(t, "10.1.2.3"))
		requireAddrAllowed(t, g, quic(t, "2001:db8:1:2::1"))
		requireAddrAllowed(t, g, quic(t, "192.0.2.2"))
		require.ElementsMatch(t, []peer.ID{blocked, allowed}, g.BlockedPeers())
		require.ElementsMatch(t, []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}, g.BlockedAddrs())
		require.ElementsMatch(t, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:1::/48")}, g.BlockedSubnets())
	}
}

// removeRules removes every rule writeRules wrote.
func removeRules(t *testing.T, g *gater.Gater) {
	t.Helper()
	require.NoError(t, g.UnblockPeer(testPeer(t, 1)))
	require.NoError(t, g.UnblockPeer(testPeer(t, 2)))
	require.NoError(t, g.RemoveAllowedPeer(testPeer(t, 2)))
	require.NoError(t, g.UnblockAddr(ip(t, "192.0.2.1")))
	require.NoError(t, g.UnblockAddr(ip(t, "2001:db8::1")))
	require.NoError(t, g.UnblockSubnet(cidr(t, "10.0.0.0/8")))
	require.NoError(t, g.UnblockSubnet(cidr(t, "2001:db8:1::/48")))
	require.NoError(t, g.RemoveAllowedAddr(ip(t, "10.1.2.3")))
	require.NoError(t, g.RemoveAllowedSubnet(cidr(t, "2001:db8:1:2::/64")))
}

func requireNoRules(t *testing.T, g *gater.Gater) {
	t.Helper()
	require.Empty(t, g.BlockedPeers())
	require.Empty(t, g.BlockedAddrs())
	require.Empty(t, g.BlockedSubnets())
	requirePeerAllowed(t, g, testPeer(t, 1))
	requireAddrAllowed(t, g, quic(t, "10.9.9.9"))
	requireAddrAllowed(t, g, quic(t, "2001:db8::1"))
}

func TestPersistenceMapDatastore(t *testing.T) {
	ds := newStore()
	g1 := newGater(t, ds, nil)
	check := writeRules(t, g1)
	check(t, g1)
	require.Len(t, ruleKeys(t, ds), 9, "one key per rule")

	g2 := newGater(t, ds, nil)
	check(t, g2)
	require.Equal(t, g1.String(), g2.String())

	removeRules(t, g2)
	require.Empty(t, ruleKeys(t, ds), "removing a rule deletes its key")
	requireNoRules(t, newGater(t, ds, nil))
}

func TestPersistenceLevelDB(t *testing.T) {
	dir := t.TempDir()
	open := func() *leveldb.Datastore {
		ds, err := leveldb.NewDatastore(dir, nil)
		require.NoError(t, err)
		return ds
	}

	ds := open()
	check := writeRules(t, newGater(t, ds, nil))
	require.NoError(t, ds.Close())

	ds = open()
	g := newGater(t, ds, nil)
	check(t, g)
	require.NoError(t, g.UnblockPeer(testPeer(t, 1)))
	require.NoError(t, g.UnblockSubnet(cidr(t, "10.0.0.0/8")))
	require.NoError(t, g.RemoveAllowedSubnet(cidr(t, "2001:db8:1:2::/64")))
	require.NoError(t, ds.Close())

	ds = open()
	g = newGater(t, ds, nil)
	requirePeerAllowed(t, g, testPeer(t, 1))
	requireAddrAllowed(t, g, quic(t, "10.9.9.9"))
	requireAddrRefused(t, g, quic(t, "2001:db8:1:2::1")) // the allow rule is gone; the /48 block applies
	requireAddrRefused(t, g, quic(t, "192.0.2.1"))
	removeRules(t, g)
	require.Empty(t, ruleKeys(t, ds))
	require.NoError(t, ds.Close())

	ds = open()
	requireNoRules(t, newGater(t, ds, nil))
	require.NoError(t, ds.Close())
}

func TestCorruptRuleKey(t *testing.T) {
	for _, key := range []string{
		rulesPrefix + "/block/peer",
		rulesPrefix + "/block/peer/x/y",
		rulesPrefix + "/block/peer/notapeerid",
		rulesPrefix + "/allow/ip/999.1.2.3",
		rulesPrefix + "/block/subnet/10.0.0.0%2F40",
		rulesPrefix + "/block/subnet/%zz",
		rulesPrefix + "/block/asn/64512",
	} {
		t.Run(key, func(t *testing.T) {
			ds := newStore()
			require.NoError(t, ds.Put(context.Background(), datastore.NewKey(key), nil))
			g, err := gater.New(ds, nil)
			require.Error(t, err)
			require.Nil(t, g)
			require.Contains(t, err.Error(), key, "the error names the key")
		})
	}

	t.Run("keys outside the prefix are ignored", func(t *testing.T) {
		ds := newStore()
		require.NoError(t, ds.Put(context.Background(), datastore.NewKey("/realmnet/other/block/peer/x"), nil))
		require.NoError(t, ds.Put(context.Background(), datastore.NewKey("/realmnet/gaterx/block/peer/x"), nil))
		requireNoRules(t, newGater(t, ds, nil))
	})
}

// Regression: a key whose action is neither "block" nor "allow" (a typo, a
// rule from a later version) was loaded as a block rule instead of failing
// like every other corrupt key.
func TestCorruptRuleKeyUnknownAction(t *testing.T) {
	ds := newStore()
	key := rulesPrefix + "/deny/ip/192.0.2.1"
	require.NoError(t, ds.Put(context.Background(), datastore.NewKey(key), nil))
	g, err := gater.New(ds, nil)
	if err == nil {
		require.Empty(t, g.BlockedAddrs(), "an unknown action %q became a block rule", "deny")
	}
	require.Error(t, err)
	require.Contains(t, err.Error(), key)
}

func TestBadInput(t *testing.T) {
	ds := newStore()
	g := newGater(t, ds, nil)

	err := g.BlockAddr(nil)
	require.Error(t, err)
	require.Contains(t, err.Error(), "<nil>", "the error names the value")

	err = g.BlockAddr(net.IP{1, 2, 3})
	require.Error(t, err)
	require.Contains(t, err.Error(), net.IP{1, 2, 3}.String(), "the error names the value")

	for name, f := range map[string]func(net.IP) error{
		"UnblockAddr": g.UnblockAddr, "AllowAddr": g.AllowAddr, "RemoveAllowedAddr": g.RemoveAllowedAddr,
	} {
		err := f(net.IP{1, 2, 3})
		require.Error(t, err, name)
		require.Contains(t, err.Error(), net.IP{1, 2, 3}.String(), name)
	}

	for name, f := range map[string]func(*net.IPNet) error{
		"BlockSubnet": g.BlockSubnet, "UnblockSubnet": g.UnblockSubnet,
		"AllowSubnet": g.AllowSubnet, "RemoveAllowedSubnet": g.RemoveAllowedSubnet,
	} {
		err := f(nil)
		require.Error(t, err, name)
		require.Contains(t, err.Error(), "nil", name)
	}

	bad := &net.IPNet{IP: net.IP{10, 0, 0, 0}, Mask: net.IPMask{255, 0, 255, 0}}
	err = g.BlockSubnet(bad)
	require.Error(t, err)
	require.Contains(t, err.Error(), bad.String(), "the error names the subnet")

	bad = &net.IPNet{IP: net.IP{10, 0, 0}, Mask: net.CIDRMask(8, 32)}
	err = g.BlockSubnet(bad)
	require.Error(t, err)

	require.Empty(t, ruleKeys(t, ds), "nothing was saved")
	requireNoRules(t, newGater(t, ds, nil))
}

// Regression: change saved a rule before it parsed it, and did not delete
// it when parsing failed, so a call that returned an error left in the
// datastore a key that New cannot load: the node did not start again until
// the key was removed by hand. Two inputs reached it: a peer.ID that does not decode (BlockPeer(peer.ID("x")), or
// BlockPeer("") which saves "/realmnet/gater/block/peer"), and a 4-byte
// IPv4 subnet with a 16-byte mask (net.IPNet semantics: 10.0.0.0/8), which
// toPrefix turned into the invalid prefix saved as "invalid Prefix".
func TestRejectedRuleIsNotPersisted(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(*gater.Gater) error
	}{
		{"BlockPeer(undecodable ID)", func(g *gater.Gater) error { return g.BlockPeer(peer.ID("not a peer id")) }},
		{"BlockPeer(empty ID)", func(g *gater.Gater) error { return g.BlockPeer("") }},
		{"AllowPeer(undecodable ID)", func(g *gater.Gater) error { return g.AllowPeer(peer.ID("x")) }},
		{"BlockSubnet(4-byte IP, 16-byte mask)", func(g *gater.Gater) error {
			return g.BlockSubnet(&net.IPNet{IP: net.IP{10, 0, 0, 0}, Mask: net.CIDRMask(104, 128)})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := newStore()
			g := newGater(t, ds, nil)
			err := tc.call(g)
			if err != nil {
				require.Empty(t, ruleKeys(t, ds), "a rule refused with %q was saved", err)
			}
			g2, err := gater.New(ds, nil)
			require.NoError(t, err, "the datastore no longer loads")
			require.Equal(t, g.String(), g2.String())
		})
	}
}

// failingStore fails every write.
type failingStore struct{ datastore.Datastore }

var errDisk = errors.New("disk full")

func (failingStore) Put(context.Context, datastore.Key, []byte) error { return errDisk }
func (failingStore) Delete(context.Context, datastore.Key) error      { return errDisk }

// Issue #11 item 9: BlockPeer on a full disk returned the write error and
// did not apply the block, so the peer stayed connected. Now every rule
// change is in force at once and the error says it was not saved
// (ErrNotPersisted, wrapping the datastore's error).
func TestUnsavedRuleIsInForce(t *testing.T) {
	p, q := testPeer(t, 1), testPeer(t, 2)
	g := newGater(t, failingStore{newStore()}, nil)
	n := &fakeNetwork{conns: []namedConn{
		named("p", p, quic(t, peerAddr)),
		named("a", q, quic(t, "10.1.2.3")),
		named("s", q, quic(t, "2001:db8::7")),
	}}
	g.SetNetwork(n)
	requireUnsaved := func(t *testing.T, err error, what string) {
		t.Helper()
		require.ErrorIs(t, err, gater.ErrNotPersisted, what)
		require.ErrorIs(t, err, errDisk, what)
		require.Contains(t, err.Error(), "in force but not persisted", what)
	}

	requireUnsaved(t, g.BlockPeer(p), "BlockPeer")
	requirePeerRefused(t, g, p)
	require.Equal(t, []string{"p"}, n.closedConns(t), "the blocked peer is disconnected at once")

	requireUnsaved(t, g.BlockAddr(ip(t, "10.1.2.3")), "BlockAddr")
	requireAddrRefused(t, g, quic(t, "10.1.2.3"))
	requireUnsaved(t, g.BlockSubnet(cidr(t, "2001:db8::/32")), "BlockSubnet")
	requireAddrRefused(t, g, quic(t, "2001:db8::9"))
	require.Equal(t, []string{"p", "a", "s"}, n.closedConns(t))

	requireUnsaved(t, g.AllowPeer(p), "AllowPeer")
	requirePeerAllowed(t, g, p)
	requireUnsaved(t, g.RemoveAllowedPeer(p), "RemoveAllowedPeer")
	requirePeerRefused(t, g, p)
	requireUnsaved(t, g.UnblockPeer(p), "UnblockPeer")
	requirePeerAllowed(t, g, p)

	requireUnsaved(t, g.AllowAddr(ip(t, "10.1.2.3")), "AllowAddr")
	requireAddrAllowed(t, g, quic(t, "10.1.2.3"))
	requireUnsaved(t, g.RemoveAllowedAddr(ip(t, "10.1.2.3")), "RemoveAllowedAddr")
	requireAddrRefused(t, g, quic(t, "10.1.2.3"))
	requireUnsaved(t, g.UnblockAddr(ip(t, "10.1.2.3")), "UnblockAddr")
	requireAddrAllowed(t, g, quic(t, "10.1.2.3"))

	requireUnsaved(t, g.AllowSubnet(cidr(t, "2001:db8::/48")), "AllowSubnet")
	requireAddrAllowed(t, g, quic(t, "2001:db8::9"))
	requireUnsaved(t, g.RemoveAllowedSubnet(cidr(t, "2001:db8::/48")), "RemoveAllowedSubnet")
	requireAddrRefused(t, g, quic(t, "2001:db8::9"))
	requireUnsaved(t, g.UnblockSubnet(cidr(t, "2001:db8::/32")), "UnblockSubnet")
	requireAddrAllowed(t, g, quic(t, "2001:db8::9"))

	// An invalid rule is still refused outright, not "in force".
	err := g.BlockAddr(net.IP{1, 2, 3})
	require.Error(t, err)
	require.NotErrorIs(t, err, gater.ErrNotPersisted)
}

// ---------------------------------------------------------------- closing

func testNetwork(t *testing.T) *fakeNetwork {
	a, b, c := testPeer(t, 1), testPeer(t, 2), testPeer(t, 3)
	n := &fakeNetwork{conns: []namedConn{
		named("a1", a, quic(t, "10.1.2.3")),
		named("a2", a, quic(t, "192.0.2.1")),
		named("b1", b, quic(t, "10.1.2.4")),
		named("b2", b, quic(t, "::ffff:10.1.2.5")),
		named("c1", c, quic(t, "2001:db8::1")),
		named("c2", c, quic(t, "2001:db8:1::1")),
		named("c3", c, ma.StringCast("/dns4/example.com/udp/4001/quic-v1")),
	}}
	// Half of them inbound: closing does not depend on the direction.
	for i := range n.conns {
		if i%2 == 1 {
			n.conns[i].FakeConn = newConn(n.conns[i].RemotePeer(), network.DirInbound, n.conns[i].RemoteMultiaddr())
		}
	}
	return n
}

func TestBlockClosesCoveredConnections(t *testing.T) {
	t.Run("no network", func(t *testing.T) {
		g := newGater(t, nil, nil)
		require.NoError(t, g.BlockPeer(testPeer(t, 1)))
		require.NoError(t, g.BlockAddr(ip(t, "10.1.2.3")))
		require.NoError(t, g.BlockSubnet(cidr(t, "10.0.0.0/8")))
	})
	t.Run("BlockPeer", func(t *testing.T) {
		g, n := newGater(t, nil, nil), testNetwork(t)
		g.SetNetwork(n)
		require.NoError(t, g.BlockPeer(testPeer(t, 1)))
		require.Equal(t, []string{"a1", "a2"}, n.closedConns(t))
	})
	t.Run("BlockPeer of an allowed peer", func(t *testing.T) {
		g, n := newGater(t, nil, nil), testNetwork(t)
		g.SetNetwork(n)
		require.NoError(t, g.AllowPeer(testPeer(t, 1)))
		require.NoError(t, g.BlockPeer(testPeer(t, 1)))
		require.Empty(t, n.closedConns(t))
	})
	t.Run("BlockAddr IPv4", func(t *testing.T) {
		g, n := newGater(t, nil, nil), testNetwork(t)
		g.SetNetwork(n)
		require.NoError(t, g.BlockAddr(ip(t, "10.1.2.3")))
		require.Equal(t, []string{"a1"}, n.closedConns(t))
	})
	t.Run("BlockAddr IPv4-mapped connection", func(t *testing.T) {
		g, n := newGater(t, nil, nil), testNetwork(t)
		g.SetNetwork(n)
		require.NoError(t, g.BlockAddr(ip(t, "10.1.2.5").To4()))
		require.Equal(t, []string{"b2"}, n.closedConns(t))
	})
	t.Run("BlockAddr IPv6", func(t *testing.T) {
		g, n := newGater(t, nil, nil), testNetwork(t)
		g.SetNetwork(n)
		require.NoError(t, g.BlockAddr(ip(t, "2001:db8::1")))
		require.Equal(t, []string{"c1"}, n.closedConns(t))
	})
	t.Run("BlockSubnet IPv4 except allowed", func(t *testing.T) {
		g, n := newGater(t, nil, nil), testNetwork(t)
		g.SetNetwork(n)
		require.NoError(t, g.AllowAddr(ip(t, "10.1.2.4")))
		require.NoError(t, g.BlockSubnet(cidr(t, "10.0.0.0/8")))
		require.Equal(t, []string{"a1", "b2"}, n.closedConns(t))
	})
	t.Run("BlockSubnet IPv6 except allowed subnet", func(t *testing.T) {
		g, n := newGater(t, nil, nil), testNetwork(t)
		g.SetNetwork(n)
		require.NoError(t, g.AllowSubnet(cidr(t, "2001:db8:1::/48")))
		require.NoError(t, g.BlockSubnet(cidr(t, "2001:db8::/32")))
		require.Equal(t, []string{"c1"}, n.closedConns(t))
	})
	t.Run("the network given last is used", func(t *testing.T) {
		g, n1, n2 := newGater(t, nil, nil), testNetwork(t), testNetwork(t)
		g.SetNetwork(n1)
		g.SetNetwork(n2)
		require.NoError(t, g.BlockPeer(testPeer(t, 2)))
		require.Empty(t, n1.closedConns(t))
		require.Equal(t, []string{"b1", "b2"}, n2.closedConns(t))
	})
}

// Regression: BlockAddr closed every connection whose remote IP equals the
// address without asking whether an allow rule covers it (BlockPeer and
// BlockSubnet do): with 10.1.0.0/16 allowed, BlockAddr(10.1.2.3) closed the
// connection from 10.1.2.3 although the gater keeps accepting that address
// (allow wins over block), so the peer was disconnected and reconnected at
// once.
func TestBlockAddrKeepsAllowedConnections(t *testing.T) {
	for _, allow := range []func(*testing.T, *gater.Gater) error{
		func(t *testing.T, g *gater.Gater) error { return g.AllowSubnet(cidr(t, "10.1.0.0/16")) },
		func(t *testing.T, g *gater.Gater) error { return g.AllowAddr(ip(t, "10.1.2.3")) },
	} {
		g, n := newGater(t, nil, nil), testNetwork(t)
		g.SetNetwork(n)
		require.NoError(t, allow(t, g))
		require.NoError(t, g.BlockAddr(ip(t, "10.1.2.3")))
		requireAddrAllowed(t, g, quic(t, "10.1.2.3"))
		require.Empty(t, n.closedConns(t), "an allowed connection was closed")
	}
}

// Regression: SetNetwork(nil) stored a pointer to a nil interface, so after
// it (detaching the network, e.g. at shutdown) every Block* call panicked
// with a nil-pointer dereference in closeWhere.
func TestSetNetworkNil(t *testing.T) {
	g, n := newGater(t, nil, nil), testNetwork(t)
	g.SetNetwork(n)
	g.SetNetwork(nil)
	require.NotPanics(t, func() { _ = g.BlockPeer(testPeer(t, 1)) })
	require.NotPanics(t, func() { _ = g.BlockAddr(ip(t, "10.1.2.4")) })
	require.NotPanics(t, func() { _ = g.BlockSubnet(cidr(t, "2001:db8::/32")) })
	require.Empty(t, n.closedConns(t))
}

// ---------------------------------------------------------------- concurrency

func TestConcurrentRuleChanges(t *testing.T) {
	ds := newStore()
	reg := newRegistry(t)
	g := newGater(t, ds, reg)
	n := testNetwork(t)
	g.SetNetwork(n)
	reg.OnBeforeConnect(func(context.Context, hooks.ConnectAttempt) error { return nil })
	seven := testPeer(t, 7)
	reg.OnAfterHandshake(func(_ context.Context, h hooks.Handshake) error {
		if h.Peer == seven {
			return errors.New("seven")
		}
		return nil
	})

	const writers, readers, rounds = 4, 4, 200
	peers := make([]peer.ID, 8)
	for i := range peers {
		peers[i] = testPeer(t, byte(i+1))
	}
	ctx, cancel := context.WithCancel(t.Context())
	var writersWG, readersWG sync.WaitGroup
	for w := range writers {
		writersWG.Go(func() {
			for i := range rounds {
				p := peers[(w+i)%len(peers)]
				a := net.IPv4(10, byte(w), byte(i), 1)
				v6 := net.ParseIP(fmt.Sprintf("2001:db8:%x::1", w*rounds+i))
				s := &net.IPNet{IP: net.IPv4(10, byte(w), 0, 0).To4(), Mask: net.CIDRMask(16, 32)}
				s6 := &net.IPNet{IP: v6.Mask(net.CIDRMask(48, 128)), Mask: net.CIDRMask(48, 128)}
				for _, err := range []error{
					g.BlockPeer(p), g.BlockAddr(a), g.BlockAddr(v6), g.BlockSubnet(s), g.BlockSubnet(s6),
					g.AllowAddr(a), g.AllowPeer(p), g.AllowSubnet(s6),
				} {
					if err != nil {
						t.Error(err)
					}
				}
				_ = g.BlockedPeers()
				_ = g.BlockedAddrs()
				_ = g.BlockedSubnets()
				_ = g.String()
				for _, err := range []error{
					g.RemoveAllowedAddr(a), g.RemoveAllowedPeer(p), g.RemoveAllowedSubnet(s6),
					g.UnblockAddr(a), g.UnblockAddr(v6), g.UnblockSubnet(s6),
				} {
					if err != nil {
						t.Error(err)
					}
				}
				switch i % 50 {
				case 0:
					g.SetPeerPolicy(func(q peer.ID) bool { return q != peers[0] })
					g.SetNetwork(n)
				case 25:
					g.SetPeerPolicy(nil)
				}
			}
		})
	}
	for r := range readers {
		readersWG.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				p := peers[(r+i)%len(peers)]
				a := quic(t, fmt.Sprintf("10.%d.%d.1", r, i%rounds))
				_ = g.InterceptPeerDial(p)
				_ = g.CheckPeerDial(p)
				_ = g.InterceptAddrDial(p, a)
				_ = g.CheckAddrDial(p, quic(t, "2001:db8::1"))
				_ = g.InterceptAccept(inbound(a))
				dir := directions[i%2]
				if !g.InterceptSecured(dir, p, inbound(a)) {
					t.Error("InterceptSecured refused")
				}
				c := newConn(p, dir, a)
				if err := g.AdmitConn(ctx, c); err != nil && !errors.Is(err, core.ErrRefused) {
					t.Errorf("AdmitConn: %v is not a refusal", err)
				}
				_, _ = g.InterceptUpgraded(c)
			}
		})
	}
	writersWG.Wait()
	cancel()
	readersWG.Wait()

	// Peers and the /16s are blocked by several writers in turn; remove
	// what is left, then everything is gone in memory and on disk.
	for _, p := range peers {
		require.NoError(t, g.UnblockPeer(p))
	}
	for w := range writers {
		require.NoError(t, g.UnblockSubnet(&net.IPNet{IP: net.IPv4(10, byte(w), 0, 0).To4(), Mask: net.CIDRMask(16, 32)}))
	}
	g.SetPeerPolicy(nil)
	requireNoRules(t, g)
	require.Empty(t, ruleKeys(t, ds))
	requireNoRules(t, newGater(t, ds, nil))
}

// blockingStore holds the first write after hold is set until release is
// closed, once the write has reached the underlying datastore.
type blockingStore struct {
	datastore.Datastore
	hold    atomic.Bool
	held    chan struct{}
	release chan struct{}
}

func (s *blockingStore) Put(ctx context.Context, k datastore.Key, v []byte) error {
	err := s.Datastore.Put(ctx, k, v)
	if s.hold.CompareAndSwap(true, false) {
		close(s.held)
		<-s.release
	}
	return err
}

// Regression: change wrote the datastore outside g.mu and updated the rule
// set afterwards, so two calls on the same rule could apply in one order on
// disk and in the other in memory. BlockPeer(p) saved its key; UnblockPeer(p)
// deleted the key and removed the (not yet added) rule; BlockPeer then added
// the rule. The running gater blocked p, the datastore said it was not
// blocked: after a restart the block silently disappeared (the mirror
// interleaving left a saved rule that was not in effect).
func TestConcurrentChangesKeepDatastoreAndMemoryInStep(t *testing.T) {
	ds := &blockingStore{Datastore: newStore(), held: make(chan struct{}), release: make(chan struct{})}
	g := newGater(t, ds, nil)
	p := testPeer(t, 1)

	ds.hold.Store(true)
	blocked := make(chan error, 1)
	go func() { blocked <- g.BlockPeer(p) }()
	<-ds.held // BlockPeer has saved its rule but not applied it yet
	unblocked := make(chan error, 1)
	go func() { unblocked <- g.UnblockPeer(p) }()
	// UnblockPeer either completes (the race) or waits for BlockPeer (a
	// correct gater). The latter cannot be observed (a goroutine waiting
	// on a mutex), so UnblockPeer is given a window to do the former; the
	// assertion below holds for a correct gater whatever the timing, the
	// window only gives a regression the chance to show.
	select {
	case err := <-unblocked:
		require.NoError(t, err)
		close(ds.release)
	case <-time.After(200 * time.Millisecond):
		close(ds.release)
		require.NoError(t, <-unblocked)
	}
	require.NoError(t, <-blocked)

	running := g.InterceptPeerDial(p)
	restarted := newGater(t, ds.Datastore, nil).InterceptPeerDial(p)
	require.Equal(t, running, restarted, "the running gater says blocked=%v, the datastore says blocked=%v", !running, !restarted)
}
