package gater_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/conngater"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/gater"
	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/internal/benchkit"
	"github.com/realmnet/realmnet/internal/testkit"
)

const benchSubnetCount = 10_000

// benchConnAddrs is a network.ConnMultiaddrs for InterceptAccept.
type benchConnAddrs struct{ local, remote ma.Multiaddr }

func (a benchConnAddrs) LocalMultiaddr() ma.Multiaddr  { return a.local }
func (a benchConnAddrs) RemoteMultiaddr() ma.Multiaddr { return a.remote }

// benchGate is the part of a connection gater the benchmark times.
type benchGate interface {
	InterceptAddrDial(peer.ID, ma.Multiaddr) bool
	InterceptAccept(network.ConnMultiaddrs) bool
}

// benchSubnets returns benchSubnetCount distinct random IPv4 /24s (fixed
// seed) and an IPv4 address none of them covers.
func benchSubnets() ([]*net.IPNet, netip.Addr) {
	rng := rand.New(rand.NewPCG(1, 2))
	seen := make(map[[3]byte]bool, benchSubnetCount)
	subnets := make([]*net.IPNet, 0, benchSubnetCount)
	for len(subnets) < benchSubnetCount {
		v := rng.Uint32()
		key := [3]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8)}
		if seen[key] {
			continue
		}
		seen[key] = true
		subnets = append(subnets, &net.IPNet{IP: net.IP{key[0], key[1], key[2], 0}, Mask: net.CIDRMask(24, 32)})
	}
	for {
		v := rng.Uint32()
		key := [3]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8)}
		if !seen[key] {
			return subnets, netip.AddrFrom4([4]byte{key[0], key[1], key[2], byte(v)})
		}
	}
}

// BenchmarkSubnetDecision times the decision on one allowed address with
// benchSubnetCount (10,000) blocked IPv4 /24 subnets, for a dial
// (InterceptAddrDial) and for an accepted connection (InterceptAccept).
//
// Sides, interleaved (benchkit.Compare: blocks calibrated to ≥ 20 µs per
// side, the first side alternating per round): "realmnet" (gater.Gater) and
// "libp2p-linear-scan", go-libp2p's conngater.BasicConnectionGater with the
// same rules. The reference is a strawman for this case, and labelled so:
// BasicConnectionGater tests an address against every blocked subnet in
// turn (a loop over a map), which is what go-libp2p ships but was never
// meant for 10,000 subnets; the ratio shows what an index gains over a
// linear scan, not over a tuned implementation. ratio-* is
// realmnet/libp2p-linear-scan per round.
func BenchmarkSubnetDecision(b *testing.B) {
	subnets, free := benchSubnets()
	covered := netip.AddrFrom4([4]byte(subnets[len(subnets)/2].IP.To4())).Next()
	benchAddr := func(a netip.Addr) ma.Multiaddr {
		return ma.StringCast("/ip4/" + a.String() + "/udp/4001/quic-v1")
	}
	addr, blockedAddr := benchAddr(free), benchAddr(covered)
	conn := benchConnAddrs{local: ma.StringCast("/ip4/192.0.2.254/udp/4001/quic-v1"), remote: addr}
	p := testPeer(b, 1)

	realmnet, err := gater.New(newStore(), nil)
	if err != nil {
		b.Fatal(err)
	}
	basic, err := conngater.NewBasicConnectionGater(nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range subnets {
		if err := realmnet.BlockSubnet(s); err != nil {
			b.Fatal(err)
		}
		if err := basic.BlockSubnet(s); err != nil {
			b.Fatal(err)
		}
	}
	sides := []struct {
		name string
		g    benchGate
	}{
		{"realmnet", realmnet},
		{"libp2p-linear-scan", basic},
	}
	for _, side := range sides {
		// Both gaters must decide the same way: the address is allowed,
		// one inside a blocked /24 is not.
		if !side.g.InterceptAddrDial(p, addr) || !side.g.InterceptAccept(conn) {
			b.Fatalf("%s refused %s", side.name, addr)
		}
		if side.g.InterceptAddrDial(p, blockedAddr) || side.g.InterceptAccept(benchConnAddrs{conn.local, blockedAddr}) {
			b.Fatalf("%s allowed %s", side.name, blockedAddr)
		}
	}
	errRefused := errors.New("refused")
	cfg := benchkit.Config{MinRounds: 100, Allocs: true}
	b.Run("InterceptAddrDial", func(b *testing.B) {
		op := func(g benchGate) func() error {
			return func() error {
				if !g.InterceptAddrDial(p, addr) {
					return errRefused
				}
				return nil
			}
		}
		benchkit.Compare(b, benchkit.Side{Name: sides[0].name, Op: op(sides[0].g)},
			benchkit.Side{Name: sides[1].name, Op: op(sides[1].g)}, cfg)
	})
	b.Run("InterceptAccept", func(b *testing.B) {
		op := func(g benchGate) func() error {
			return func() error {
				if !g.InterceptAccept(conn) {
					return errRefused
				}
				return nil
			}
		}
		benchkit.Compare(b, benchkit.Side{Name: sides[0].name, Op: op(sides[0].g)},
			benchkit.Side{Name: sides[1].name, Op: op(sides[1].g)}, cfg)
	})
}

// BenchmarkAdmitConn times the gater stage of the admission pipeline, which
// every new connection passes, for an admitted connection: with
// benchSubnetCount blocked subnets, without hooks and with one
// AfterHandshake hook (each hook call runs on its own goroutine, bounded by
// the registry's timeout).
func BenchmarkAdmitConn(b *testing.B) {
	subnets, free := benchSubnets()
	covered := netip.AddrFrom4([4]byte(subnets[0].IP.To4())).Next()
	p := testPeer(b, 1)
	conn := func(a netip.Addr) *testkit.FakeConn {
		return newConn(p, network.DirInbound, ma.StringCast("/ip4/"+a.String()+"/udp/4001/quic-v1"))
	}
	c, blocked := conn(free), conn(covered)
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		hooks int
	}{
		{"no hooks", 0},
		{"one AfterHandshake hook", 1},
	} {
		reg, err := hooks.NewRegistry(0)
		if err != nil {
			b.Fatal(err)
		}
		for range tc.hooks {
			reg.OnAfterHandshake(func(context.Context, hooks.Handshake) error { return nil })
		}
		g, err := gater.New(newStore(), reg)
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range subnets {
			if err := g.BlockSubnet(s); err != nil {
				b.Fatal(err)
			}
		}
		if err := g.AdmitConn(ctx, c); err != nil {
			b.Fatalf("%s: %v", tc.name, err)
		}
		if err := g.AdmitConn(ctx, blocked); !errors.Is(err, core.ErrRefused) {
			b.Fatalf("%s: %s admitted (%v)", tc.name, blocked.RemoteMultiaddr(), err)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := g.AdmitConn(ctx, c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
