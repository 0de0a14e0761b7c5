// Package benchkit runs the two sides of a realmnet-vs-reference benchmark
// interleaved: short blocks of side A and side B alternate inside one
// b.Loop, the side that goes first alternating from round to round, so that
// both sides see the same machine — the same other processes, the same
// clock frequency, the same GC pressure. Two sub-benchmarks run one after
// the other on a busy 2-core machine can differ by 20 % for no reason of
// their own; a ratio taken round by round does not drift with the machine.
//
// Reported, through b.ReportMetric:
//
//   - "<A>-ns/op", "<B>-ns/op": each side's median over its blocks of the
//     block's time per operation. A block that another process or a GC cycle
//     interrupted counts no more than one that ran undisturbed.
//   - "ratio-median", "ratio-min", "ratio-max", "ratio-p10", "ratio-p90":
//     A's time per operation over B's, computed for each round (the two
//     blocks of one round ran next to each other) and summarized over the
//     rounds. A ratio above 1 means A is slower.
//   - "ns/op": the built-in figure would be one round (both sides); it is
//     replaced by A's median, so that benchstat compares side A.
//   - with Config.Allocs: "<A>-allocs/op", "<B>-allocs/op", "<A>-B/op",
//     "<B>-B/op" from runtime.ReadMemStats deltas around each block (outside
//     the timed block). They count every goroutine of the process: both ends
//     of a loopback connection when both live in the test process, and the
//     other side's background work (identify, heartbeats) during the block.
//   - with Config.Bytes: "<A>-MB/s", "<B>-MB/s" from the medians.
//   - with Config.Latencies: "<A>-p50-us", "<A>-p99-us", "<A>-p99/p50" and
//     the same for B, each operation timed on its own (nearest-rank
//     percentiles over all operations of the side).
//
// Only tests import this package.
package benchkit

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"testing"
	"time"
)

// Side is one side of a comparison.
type Side struct {
	// Name prefixes the side's metrics ("realmnet", "libp2p",
	// "quic-go-raw"); it must not contain spaces.
	Name string
	// Op runs one operation. An error fails the benchmark.
	Op func() error
	// Before, when set, runs before each of the side's blocks, untimed
	// (reset state the previous block changed).
	Before func() error
	// After, when set, runs after each of the side's blocks, untimed
	// (verify, clean up).
	After func() error
}

// Config tunes Compare. The zero value is usable.
type Config struct {
	// Block is the number of operations in one block of either side. 0
	// calibrates each side's block during the warm-up: the smallest power
	// of two (at most 1<<16) for which the fastest of three of that side's
	// blocks takes at least MinBlock, so a side 1,000 times slower than the other runs blocks of
	// fewer operations and a round stays short.
	Block int
	// MinBlock is the calibration's target block time; default 20 µs, 400
	// times time.Now's cost, so the clock reads are negligible while the
	// blocks stay short enough to interleave finely.
	MinBlock time.Duration
	// Warmup is the number of untimed operations of each side (alternating)
	// before the first round, besides the calibration's; default 1.
	Warmup int
	// MinRounds is the least number of rounds; rounds are added after
	// b.Loop is done when it ran fewer (a slow operation under the default
	// -benchtime 1s gives only a few rounds, too few for a spread).
	MinRounds int
	// Allocs measures allocations per operation of each side.
	Allocs bool
	// Bytes is the payload of one operation, for MB/s (0: not reported).
	Bytes int64
	// Latencies times every operation on its own and reports p50 and p99.
	Latencies bool
}

// Result is what Compare measured, for a benchmark's log line or further
// metrics.
type Result struct {
	A, B  SideStats
	Ratio Spread // A's ns/op over B's, per round
	// Rounds is the number of rounds.
	Rounds int
}

// SideStats summarizes one side.
type SideStats struct {
	Name          string
	Block         int     // operations per block
	NsPerOp       float64 // median over blocks of the block's ns per operation
	AllocsPerOp   float64 // mean over all operations (Config.Allocs)
	BytesPerOp    float64 // mean heap bytes allocated per operation (Config.Allocs)
	P50, P99, Max time.Duration
}

// Spread summarizes a sample: nearest-rank percentiles, exact median.
type Spread struct {
	Min, P10, Median, P90, Max float64
}

// String formats a Spread as "median (min p10–p90 max)".
func (s Spread) String() string {
	return fmt.Sprintf("%.3f (min %.3f, p10 %.3f, p90 %.3f, max %.3f)", s.Median, s.Min, s.P10, s.P90, s.Max)
}

// Compare runs a and b interleaved inside b.Loop and reports the metrics
// listed in the package comment. Each loop iteration is one round: a block
// of a and a block of b, a first in even rounds, b first in odd ones.
func Compare(tb *testing.B, a, b Side, cfg Config) Result {
	tb.Helper()
	if cfg.MinBlock <= 0 {
		cfg.MinBlock = 20 * time.Microsecond
	}
	if cfg.Warmup <= 0 {
		cfg.Warmup = 1
	}
	sides := [2]*sideRun{{Side: a}, {Side: b}}
	for range cfg.Warmup {
		for _, s := range sides {
			s.run(tb, 1, false, false)
		}
	}
	for _, s := range sides {
		s.block = cfg.Block
		if s.block <= 0 {
			s.block = 1
			// The fastest of three blocks: one that a GC cycle or another
			// process interrupted does not stop the doubling early.
			for s.block < 1<<16 && min(s.run(tb, s.block, false, false), s.run(tb, s.block, false, false),
				s.run(tb, s.block, false, false)) < cfg.MinBlock {
				s.block *= 2
			}
		}
		s.reset()
	}

	var ratios []float64
	round := func(i int) {
		var perOp [2]float64
		for k := range sides {
			j := k
			if i%2 == 1 {
				j = 1 - k
			}
			d := sides[j].run(tb, sides[j].block, cfg.Allocs, cfg.Latencies)
			perOp[j] = float64(d) / float64(sides[j].block)
			sides[j].blocks = append(sides[j].blocks, perOp[j])
		}
		ratios = append(ratios, Ratio(perOp[0], perOp[1]))
	}
	rounds := 0
	for tb.Loop() {
		round(rounds)
		rounds++
	}
	for rounds < cfg.MinRounds {
		round(rounds)
		rounds++
	}

	res := Result{Rounds: rounds, Ratio: Summarize(ratios)}
	for k, s := range sides {
		st := s.stats()
		st.Block = s.block
		if k == 0 {
			res.A = st
		} else {
			res.B = st
		}
		tb.ReportMetric(st.NsPerOp, s.Name+"-ns/op")
		if cfg.Allocs {
			tb.ReportMetric(st.AllocsPerOp, s.Name+"-allocs/op")
			tb.ReportMetric(st.BytesPerOp, s.Name+"-B/op")
		}
		if cfg.Bytes > 0 && st.NsPerOp > 0 {
			tb.ReportMetric(float64(cfg.Bytes)*1e3/st.NsPerOp, s.Name+"-MB/s")
		}
		if cfg.Latencies {
			tb.ReportMetric(float64(st.P50)/1e3, s.Name+"-p50-us")
			tb.ReportMetric(float64(st.P99)/1e3, s.Name+"-p99-us")
			tb.ReportMetric(Ratio(float64(st.P99), float64(st.P50)), s.Name+"-p99/p50")
		}
	}
	tb.ReportMetric(res.A.NsPerOp, "ns/op")
	tb.ReportMetric(res.Ratio.Median, "ratio-median")
	tb.ReportMetric(res.Ratio.Min, "ratio-min")
	tb.ReportMetric(res.Ratio.Max, "ratio-max")
	tb.ReportMetric(res.Ratio.P10, "ratio-p10")
	tb.ReportMetric(res.Ratio.P90, "ratio-p90")
	tb.Logf("%d rounds: %s %.0f ns/op (blocks of %d), %s %.0f ns/op (blocks of %d), %s/%s %s",
		rounds, a.Name, res.A.NsPerOp, res.A.Block, b.Name, res.B.NsPerOp, res.B.Block, a.Name, b.Name, res.Ratio)
	return res
}

// sideRun is one side's state during Compare.
type sideRun struct {
	Side
	block          int             // operations per block
	blocks         []float64       // ns per operation, one per timed block
	ops            int             // operations in the timed blocks
	mallocs, bytes uint64          // allocations in the timed blocks (Config.Allocs)
	lat            []time.Duration // per operation (Config.Latencies)
	ms             runtime.MemStats
}

func (s *sideRun) reset() {
	s.blocks, s.ops, s.mallocs, s.bytes, s.lat = nil, 0, 0, 0, nil
}

// run runs one block of n operations and returns its duration; allocations
// and per-operation times are recorded when asked.
func (s *sideRun) run(tb *testing.B, n int, allocs, latencies bool) time.Duration {
	if s.Before != nil {
		if err := s.Before(); err != nil {
			tb.Fatalf("%s: before block: %v", s.Name, err)
		}
	}
	var mallocs0, bytes0 uint64
	if allocs {
		runtime.ReadMemStats(&s.ms)
		mallocs0, bytes0 = s.ms.Mallocs, s.ms.TotalAlloc
	}
	start := time.Now()
	if latencies {
		for range n {
			t0 := time.Now()
			if err := s.Op(); err != nil {
				tb.Fatalf("%s: %v", s.Name, err)
			}
			s.lat = append(s.lat, time.Since(t0))
		}
	} else {
		for range n {
			if err := s.Op(); err != nil {
				tb.Fatalf("%s: %v", s.Name, err)
			}
		}
	}
	d := time.Since(start)
	if allocs {
		runtime.ReadMemStats(&s.ms)
		s.mallocs += s.ms.Mallocs - mallocs0
		s.bytes += s.ms.TotalAlloc - bytes0
	}
	s.ops += n
	if s.After != nil {
		if err := s.After(); err != nil {
			tb.Fatalf("%s: after block: %v", s.Name, err)
		}
	}
	return d
}

func (s *sideRun) stats() SideStats {
	st := SideStats{Name: s.Name, NsPerOp: Summarize(s.blocks).Median}
	if s.ops > 0 {
		st.AllocsPerOp = float64(s.mallocs) / float64(s.ops)
		st.BytesPerOp = float64(s.bytes) / float64(s.ops)
	}
	if len(s.lat) > 0 {
		slices.Sort(s.lat)
		st.P50, st.P99, st.Max = Percentile(s.lat, 0.50), Percentile(s.lat, 0.99), s.lat[len(s.lat)-1]
	}
	return st
}

// Ratio returns a/b, or NaN when b is 0.
func Ratio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}

// Summarize returns the spread of xs (which it does not modify): minimum,
// maximum, nearest-rank 10th and 90th percentiles, and the median (the mean
// of the two middle values when len(xs) is even). All zero for no values.
func Summarize(xs []float64) Spread {
	if len(xs) == 0 {
		return Spread{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return Spread{Min: s[0], P10: Percentile(s, 0.10), Median: med, P90: Percentile(s, 0.90), Max: s[n-1]}
}

// Percentile returns the nearest-rank q-quantile (0 < q ≤ 1) of sorted,
// which must be sorted in ascending order: the smallest value with at least
// q·len(sorted) values at or below it. The zero value for an empty slice.
func Percentile[T ~int64 | ~float64](sorted []T, q float64) T {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
