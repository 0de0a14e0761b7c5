package resource_test

import (
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/resource"
)

// BenchmarkStreamOpenClose compares, in one run, what the accounting of one
// inbound application stream costs:
//
//   - rcmgr: go-libp2p's resource manager alone, auto-scaled default
//     limits: OpenStream, SetProtocol, Done.
//   - realmnet: a resource.Manager with the same rcmgr limits and options
//     doing the same — that part is rcmgr's code, which the Manager embeds,
//     not realmnet's — plus the code realmnet adds for the stream: the realm
//     scope reservation (ReserveRealmStream, then its release) that the
//     realm package makes when it dispatches a realm stream, under a realm
//     limit so that the limit check runs. Realm gauge off.
//   - realmnet+gauge: realmnet with the realm usage gauge registered, as in
//     a node with metrics.
//   - realm-scope: the realm scope reservation and release alone, no
//     stream, gauge off: realmnet's own cost, measured directly rather than
//     as the difference of two noisy numbers.
//
// (Comparing a resource.Manager's OpenStream alone with rcmgr's would time
// rcmgr against itself.) The sides run interleaved in the same loop, in
// batches of streams whose order rotates every iteration, so that they share
// the machine's state (clock, caches, GC); each batch is timed on its own.
// Reported: each side's median batch time per stream (ns/stream) and its
// allocs/stream, and the realmnet sides' ns/stream over rcmgr's (x-rcmgr);
// the built-in ns/op, which would be one iteration of every side, is
// suppressed.
//
// Two sub-benchmarks: rcmgr-metrics, rcmgr's default, whose trace reporter
// (on unless disabled, as in a node) costs most of a stream's accounting;
// rcmgr-nometrics, every side with rcmgr.WithMetricsDisabled, where the
// realm scope's share is larger.
func BenchmarkStreamOpenClose(b *testing.B) {
	b.Run("rcmgr-metrics", func(b *testing.B) { benchStreamOpenClose(b) })
	b.Run("rcmgr-nometrics", func(b *testing.B) { benchStreamOpenClose(b, rcmgr.WithMetricsDisabled()) })
}

func benchStreamOpenClose(b *testing.B, opts ...rcmgr.Option) {
	const (
		proto = "/bench/1.0.0"
		batch = 16
		realm = core.RealmID("bench")
	)
	p := peer.ID("benchpeer")
	stream := func(rm network.ResourceManager, scope func() (func(), error)) func() {
		return func() {
			s, err := rm.OpenStream(p, network.DirInbound)
			if err != nil {
				b.Fatal(err)
			}
			if err := s.SetProtocol(proto); err != nil {
				b.Fatal(err)
			}
			if scope != nil {
				release, err := scope()
				if err != nil {
					b.Fatal(err)
				}
				release()
			}
			s.Done()
		}
	}
	newManager := func(reg prometheus.Registerer) (*resource.Manager, func() (func(), error)) {
		m, err := resource.New(resource.Config{Realms: resource.RealmConfig{
			Default: core.RealmScopeLimits{StreamsInbound: 1 << 20},
		}}, reg, opts...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = m.Close() })
		return m, func() (func(), error) { return m.ReserveRealmStream(realm, network.DirInbound) }
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(rcmgr.DefaultLimits.AutoScale()), opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = rm.Close() })
	_, scope := newManager(nil)

	sides := []struct {
		name    string
		op      func()
		compare bool            // report ns over rcmgr's
		batches []time.Duration // one per iteration
	}{
		{name: "rcmgr", op: stream(rm, nil)},
		{name: "realmnet", op: stream(newManager(nil)), compare: true},
		{name: "realmnet+gauge", op: stream(newManager(prometheus.NewRegistry())), compare: true},
		{name: "realm-scope", op: func() {
			release, err := scope()
			if err != nil {
				b.Fatal(err)
			}
			release()
		}},
	}
	for _, side := range sides { // warm up: scopes, metric series, caches
		for range 4 * batch {
			side.op()
		}
	}
	var iters int
	for b.Loop() {
		for k := range sides {
			side := &sides[(iters+k)%len(sides)]
			start := time.Now()
			for range batch {
				side.op()
			}
			side.batches = append(side.batches, time.Since(start))
		}
		iters++
	}
	b.ReportMetric(0, "ns/op")
	// The median batch: a batch that another process or a GC cycle
	// interrupted does not count more than one that ran undisturbed.
	median := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2]) / batch
	}
	base := median(sides[0].batches)
	for _, side := range sides {
		ns := median(side.batches)
		b.ReportMetric(ns, side.name+"-ns/stream")
		b.ReportMetric(testing.AllocsPerRun(100, side.op), side.name+"-allocs/stream")
		if side.compare {
			b.ReportMetric(ns/base, side.name+"-x-rcmgr")
		}
	}
}
