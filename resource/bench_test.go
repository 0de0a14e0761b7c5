package resource_test

import (
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"

	"github.com/realmnet/realmnet/resource"
)

// BenchmarkStreamOpenClose measures one stream's accounting: OpenStream,
// SetProtocol, Done. "realmnet" goes through resource.Manager (rcmgr
// wrapped); "realmnet+realm" also reserves and releases the stream in a
// realm scope, as the realm package does on dispatch; "rcmgr" is go-libp2p's
// resource manager alone with the same limits. Target: realmnet ≤ 1.1× rcmgr.
func BenchmarkStreamOpenClose(b *testing.B) {
	const proto = "/bench/1.0.0"
	p := peer.ID("benchpeer")
	run := func(b *testing.B, rm network.ResourceManager, realm func() (func(), error)) {
		b.ReportAllocs()
		for b.Loop() {
			s, err := rm.OpenStream(p, network.DirInbound)
			if err != nil {
				b.Fatal(err)
			}
			if err := s.SetProtocol(proto); err != nil {
				b.Fatal(err)
			}
			if realm != nil {
				release, err := realm()
				if err != nil {
					b.Fatal(err)
				}
				release()
			}
			s.Done()
		}
	}
	newRealmnet := func(b *testing.B) *resource.Manager {
		m, err := resource.New(resource.Config{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = m.Close() })
		return m
	}
	b.Run("realmnet", func(b *testing.B) { run(b, newRealmnet(b), nil) })
	b.Run("realmnet+realm", func(b *testing.B) {
		m := newRealmnet(b)
		run(b, m, func() (func(), error) { return m.ReserveRealmStream("bench", network.DirInbound) })
	})
	b.Run("rcmgr", func(b *testing.B) {
		rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(rcmgr.DefaultLimits.AutoScale()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = rm.Close() })
		run(b, rm, nil)
	})
}
