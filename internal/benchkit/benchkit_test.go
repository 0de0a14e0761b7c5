package benchkit

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		name string
		xs   []float64
		want Spread
	}{
		{"empty", nil, Spread{}},
		{"one", []float64{2.5}, Spread{Min: 2.5, P10: 2.5, Median: 2.5, P90: 2.5, Max: 2.5}},
		{"odd", []float64{5, 1, 3}, Spread{Min: 1, P10: 1, Median: 3, P90: 5, Max: 5}},
		{"even: median is the mean of the middle two", []float64{4, 1, 3, 2}, Spread{Min: 1, P10: 1, Median: 2.5, P90: 4, Max: 4}},
		{"ten", []float64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, Spread{Min: 1, P10: 1, Median: 5.5, P90: 9, Max: 10}},
		{"twenty", []float64{
			1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
		}, Spread{Min: 1, P10: 2, Median: 10.5, P90: 18, Max: 20}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.xs)
			if got := Summarize(tc.xs); got != tc.want {
				t.Errorf("Summarize(%v) = %+v, want %+v", tc.xs, got, tc.want)
			}
			if !slices.Equal(in, tc.xs) {
				t.Errorf("Summarize modified its input: %v, was %v", tc.xs, in)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	ds := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.01, 1}, {0.1, 1}, {0.11, 2}, {0.5, 5}, {0.99, 10}, {1, 10}, {0, 1}} {
		if got := Percentile(ds, tc.q); got != tc.want {
			t.Errorf("Percentile(1..10, %v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	// 100 values: p99 is the 99th, not the largest.
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(i + 1)
	}
	if got := Percentile(hundred, 0.99); got != 99 {
		t.Errorf("p99 of 1..100 = %v, want 99", got)
	}
	if got := Percentile([]float64(nil), 0.5); got != 0 {
		t.Errorf("Percentile(empty) = %v, want 0", got)
	}
}

func TestRatio(t *testing.T) {
	if got := Ratio(3, 2); got != 1.5 {
		t.Errorf("Ratio(3, 2) = %v, want 1.5", got)
	}
	if got := Ratio(1, 0); !math.IsNaN(got) {
		t.Errorf("Ratio(1, 0) = %v, want NaN", got)
	}
}

// TestCompareAlternates runs Compare on two operations that only record
// their order and checks the interleaving: warm-up, calibration, then rounds
// whose first side alternates, each block of Block operations.
func TestCompareAlternates(t *testing.T) {
	var order strings.Builder
	var res Result
	testing.Benchmark(func(b *testing.B) {
		order.Reset()
		side := func(name string) Side {
			return Side{
				Name:   name,
				Op:     func() error { return nil },
				Before: func() error { order.WriteString(name); return nil },
			}
		}
		res = Compare(b, side("A"), side("B"), Config{Block: 3, Warmup: 2, MinRounds: 5, Allocs: true})
	})
	got := order.String()
	// Warm-up: two blocks of one operation each, alternating A, B.
	if !strings.HasPrefix(got, "ABAB") {
		t.Fatalf("warm-up order %q, want ABAB first", got)
	}
	rounds := got[4:]
	if len(rounds) != 2*res.Rounds || res.Rounds < 5 {
		t.Fatalf("%d blocks after warm-up for %d rounds (want ≥ 5 rounds, 2 blocks each)", len(rounds), res.Rounds)
	}
	for i := 0; i < res.Rounds; i++ {
		want := "AB"
		if i%2 == 1 {
			want = "BA"
		}
		if rounds[2*i:2*i+2] != want {
			t.Fatalf("round %d ran %q, want %q (order %q)", i, rounds[2*i:2*i+2], want, rounds)
		}
	}
	if res.A.Block != 3 || res.B.Block != 3 {
		t.Errorf("blocks of %d and %d operations, want 3", res.A.Block, res.B.Block)
	}
	if res.A.Name != "A" || res.B.Name != "B" {
		t.Errorf("side names %q, %q", res.A.Name, res.B.Name)
	}
}
