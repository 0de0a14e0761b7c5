package multipath

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestIdleProbesOnTheGrid: an idle path's next probe is due on the last
// grid instant (multiples of probeGrid since the scheduler's start) not
// after it would be due, so it moves earlier by less than the grid and
// never later; a probe sent on the grid keeps the interval exactly, and
// one sent late (the scheduler woke late) comes back to the grid. A busy
// probe is not moved.
func TestIdleProbesOnTheGrid(t *testing.T) {
	m := &Manager{cfg: Config{HeartbeatInterval: 5 * time.Second}}
	grid := instant(probeGrid)
	far := instant(time.Hour)
	at := func(d time.Duration) instant { return instant(d) }
	for _, tc := range []struct {
		name      string
		lastProbe instant
		want      instant
	}{
		{"on the grid", at(7 * time.Second), at(12 * time.Second)},
		{"woke 40 ms late", at(7*time.Second + 40*time.Millisecond), at(12 * time.Second)},
		{"off the grid", at(7*time.Second + 900*time.Millisecond), at(12 * time.Second)},
		{"just before a grid instant", at(7*time.Second + 999*time.Millisecond), at(12 * time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pr := &probe{lastProbe: tc.lastProbe}
			due := tc.lastProbe.add(m.cfg.HeartbeatInterval)
			pr.scheduleProbe(m, due, far)
			require.Equal(t, tc.want, pr.due)
			require.Equal(t, tc.want, pr.next)
			require.Zero(t, pr.due%grid, "due off the grid")
			require.LessOrEqual(t, pr.due, due, "a probe moved later")
			require.Less(t, due.sub(pr.due), probeGrid, "a probe moved a grid or more earlier")
			require.True(t, pr.pokeArmed.Load(), "an idle probe is brought forward by a stream")
		})
	}

	// The idle deadline comes first when it is earlier.
	pr := &probe{lastProbe: at(7 * time.Second)}
	pr.scheduleProbe(m, at(12*time.Second), at(9*time.Second))
	require.Equal(t, at(9*time.Second), pr.due)

	// A busy-rate probe is due when it is due.
	pr = &probe{lastProbe: at(7*time.Second + 300*time.Millisecond)}
	pr.scheduleProbe(m, pr.lastProbe.add(200*time.Millisecond), far)
	require.Equal(t, at(7*time.Second+500*time.Millisecond), pr.due)
	require.False(t, pr.pokeArmed.Load())

	// A short interval: the grid is a quarter of it.
	short := &Manager{cfg: Config{HeartbeatInterval: time.Second}}
	pr = &probe{lastProbe: at(3*time.Second + 100*time.Millisecond)}
	pr.scheduleProbe(short, pr.lastProbe.add(time.Second), far)
	require.Equal(t, at(4*time.Second), pr.due)
}
