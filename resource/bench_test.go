package resource_test

import (
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/benchkit"
	"github.com/realmnet/realmnet/resource"
)

// BenchmarkStreamOpenClose compares what the accounting of one inbound
// application stream charged to a group's limit costs: realmnet's
// resource.Manager with a realm scope against plain go-libp2p rcmgr doing
// the same work with its own grouping, a service scope. Both managers have
// rcmgr's auto-scaled default limits and the same rcmgr options; the
// group's inbound-stream limit is 2^20 on both sides, so its check runs and
// never refuses.
//
//   - "realmnet": resource.Manager.OpenStream, SetProtocol, the realm scope
//     reservation the realm package makes when it dispatches a realm stream
//     (ReserveRealmStream, then its release), Done.
//   - "rcmgr-service": rcmgr.OpenStream, SetProtocol, SetService (the
//     stream joins a service scope with a stream limit), Done.
//
// The sides are interleaved (benchkit.Compare: blocks calibrated to ≥ 20 µs
// per side, the first side alternating per round); ratio-* is
// realmnet/rcmgr-service per round; *-allocs/op are per stream.
// Sub-benchmarks:
//
//   - metrics: both sides export libp2p_rcmgr_*: rcmgr with its default
//     options, whose trace reporter (on unless disabled) costs most of a
//     stream's accounting, against a resource.Manager with a registry (as
//     in a node with metrics), which reads the same families from rcmgr's
//     state at scrape time (never scraped here).
//   - nometrics: no registry on the realmnet side, rcmgr.WithMetricsDisabled
//     on rcmgr's; the group scope's share is larger.
//   - realm-scope-only: the realm scope reservation and release alone, no
//     stream, gauge off: realmnet's own code, measured directly (no
//     reference; ns/op and allocs/op are the usual ones).
//
// (Comparing a resource.Manager's OpenStream alone with rcmgr's would time
// rcmgr against itself: the Manager embeds rcmgr.)
func BenchmarkStreamOpenClose(b *testing.B) {
	b.Run("metrics", func(b *testing.B) { benchStreamOpenClose(b, true) })
	b.Run("nometrics", func(b *testing.B) { benchStreamOpenClose(b, false, rcmgr.WithMetricsDisabled()) })
	b.Run("realm-scope-only", func(b *testing.B) {
		m := benchManager(b, nil)
		b.ReportAllocs()
		for b.Loop() {
			release, err := m.ReserveRealmStream(benchRealm, network.DirInbound)
			if err != nil {
				b.Fatal(err)
			}
			release()
		}
	})
}

const (
	benchProto   = "/bench/1.0.0"
	benchService = "bench-realm"
	benchRealm   = core.RealmID("bench")
	// benchGroupLimit is the inbound-stream limit of the realm and of the
	// service scope.
	benchGroupLimit = 1 << 20
)

// benchManager is a resource.Manager with rcmgr's default limits, a realm
// limit of benchGroupLimit inbound streams, and the realm gauge registered
// on reg (nil: none).
func benchManager(b *testing.B, reg prometheus.Registerer, opts ...rcmgr.Option) *resource.Manager {
	b.Helper()
	m, err := resource.New(resource.Config{Realms: resource.RealmConfig{
		Default: core.RealmScopeLimits{StreamsInbound: benchGroupLimit},
	}}, reg, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Close() })
	return m
}

func benchStreamOpenClose(b *testing.B, gauge bool, opts ...rcmgr.Option) {
	p := peer.ID("benchpeer")
	var reg prometheus.Registerer
	if gauge {
		reg = prometheus.NewRegistry()
	}
	m := benchManager(b, reg, opts...)
	limits := rcmgr.PartialLimitConfig{Service: map[string]rcmgr.ResourceLimits{
		benchService: {StreamsInbound: benchGroupLimit},
	}}.Build(rcmgr.DefaultLimits.AutoScale())
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits), opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = rm.Close() })

	benchkit.Compare(b,
		benchkit.Side{Name: "realmnet", Op: func() error {
			s, err := m.OpenStream(p, network.DirInbound)
			if err != nil {
				return err
			}
			if err := s.SetProtocol(benchProto); err != nil {
				return err
			}
			release, err := m.ReserveRealmStream(benchRealm, network.DirInbound)
			if err != nil {
				return err
			}
			release()
			s.Done()
			return nil
		}},
		benchkit.Side{Name: "rcmgr-service", Op: func() error {
			s, err := rm.OpenStream(p, network.DirInbound)
			if err != nil {
				return err
			}
			if err := s.SetProtocol(benchProto); err != nil {
				return err
			}
			if err := s.SetService(benchService); err != nil {
				return err
			}
			s.Done()
			return nil
		}},
		benchkit.Config{Warmup: 64, MinRounds: 100, Allocs: true})
}
