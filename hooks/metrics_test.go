package hooks_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/hooks"
)

// hookCalls is the number of observations of realmnet_hook_duration_seconds
// for stage.
func hookCalls(t *testing.T, r *hooks.Registry, stage string) uint64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(r.Collector()))
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != "realmnet_hook_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			if m.GetLabel()[0].GetValue() == stage {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	t.Fatalf("no realmnet_hook_duration_seconds{stage=%q}", stage)
	return 0
}

// TestMetricsCountEveryHookCall drives each outcome through the registry:
// accepted and rejected (BeforeConnect hooks 0 and 1), panic (AfterHandshake
// hook 0), timeout (a later AfterHandshake hook 0 that ignores its context
// past the registry's 20 ms timeout), and checks each series and the
// duration histogram's counts.
func TestMetricsCountEveryHookCall(t *testing.T) {
	r := newRegistry(t, 20*time.Millisecond)
	c := r.Collector()
	require.Equal(t, 0, testutil.CollectAndCount(c, "realmnet_hook_decisions_total"), "no series before any call")
	require.Equal(t, 2, testutil.CollectAndCount(c, "realmnet_hook_duration_seconds"), "one histogram per stage from the start")

	r.OnBeforeConnect(func(context.Context, hooks.ConnectAttempt) error { return nil })
	r.OnBeforeConnect(func(context.Context, hooks.ConnectAttempt) error { return errors.New("deny list") })
	require.ErrorIs(t, r.RunBeforeConnect(t.Context(), attempt), hooks.ErrRejected)
	require.ErrorIs(t, r.RunBeforeConnect(t.Context(), attempt), hooks.ErrRejected)

	removePanic := r.OnAfterHandshake(func(context.Context, hooks.Handshake) error { panic("boom") })
	handshake := hooks.Handshake{Direction: network.DirInbound, Peer: "peer", RemoteAddr: attempt.RemoteAddr}
	require.ErrorIs(t, r.RunAfterHandshake(t.Context(), handshake), hooks.ErrRejected)
	removePanic()

	release := make(chan struct{})
	r.OnAfterHandshake(func(context.Context, hooks.Handshake) error { <-release; return nil })
	err := r.RunAfterHandshake(t.Context(), handshake)
	close(release) // the hook's goroutine ends
	require.ErrorIs(t, err, context.DeadlineExceeded)

	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(`
# HELP realmnet_hook_decisions_total Hook calls by stage (before_connect, after_handshake), hook (its position in registration order among its stage's hooks when it ran, as RejectedError.Hook) and outcome (accepted, rejected, timeout, panic).
# TYPE realmnet_hook_decisions_total counter
realmnet_hook_decisions_total{hook="0",outcome="accepted",stage="before_connect"} 2
realmnet_hook_decisions_total{hook="1",outcome="rejected",stage="before_connect"} 2
realmnet_hook_decisions_total{hook="0",outcome="panic",stage="after_handshake"} 1
realmnet_hook_decisions_total{hook="0",outcome="timeout",stage="after_handshake"} 1
`), "realmnet_hook_decisions_total"))
	require.Equal(t, uint64(4), hookCalls(t, r, "before_connect"))
	require.Equal(t, uint64(2), hookCalls(t, r, "after_handshake"))

	problems, err := testutil.CollectAndLint(c)
	require.NoError(t, err)
	require.Empty(t, problems)
}

// TestMetricsTimeoutOfAHookThatHonoursItsContext: a hook that returns its
// context's error when the registry's timeout ends it is counted as a
// timeout, not as a rejection of its own.
func TestMetricsTimeoutOfAHookThatHonoursItsContext(t *testing.T) {
	r := newRegistry(t, 10*time.Millisecond)
	r.OnBeforeConnect(func(ctx context.Context, _ hooks.ConnectAttempt) error {
		<-ctx.Done()
		return ctx.Err()
	})
	require.ErrorIs(t, r.RunBeforeConnect(t.Context(), attempt), context.DeadlineExceeded)
	require.NoError(t, testutil.CollectAndCompare(r.Collector(), strings.NewReader(`
# HELP realmnet_hook_decisions_total Hook calls by stage (before_connect, after_handshake), hook (its position in registration order among its stage's hooks when it ran, as RejectedError.Hook) and outcome (accepted, rejected, timeout, panic).
# TYPE realmnet_hook_decisions_total counter
realmnet_hook_decisions_total{hook="0",outcome="timeout",stage="before_connect"} 1
`), "realmnet_hook_decisions_total"))
	require.Equal(t, uint64(1), hookCalls(t, r, "before_connect"))
}
