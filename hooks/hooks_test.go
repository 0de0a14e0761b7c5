package hooks_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/hooks"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"))
}

func newRegistry(t *testing.T, timeout time.Duration) *hooks.Registry {
	t.Helper()
	r, err := hooks.NewRegistry(timeout)
	require.NoError(t, err)
	return r
}

var attempt = hooks.ConnectAttempt{Direction: network.DirOutbound, RemoteAddr: ma.StringCast("/ip4/127.0.0.1/udp/1/quic-v1")}

func TestOrderAndFirstRejectWins(t *testing.T) {
	r := newRegistry(t, 0)
	require.Equal(t, hooks.DefaultTimeout, r.Timeout())
	require.True(t, r.Empty())
	var mu sync.Mutex
	var calls []int
	record := func(i int, err error) hooks.BeforeConnectFunc {
		return func(context.Context, hooks.ConnectAttempt) error {
			mu.Lock()
			calls = append(calls, i)
			mu.Unlock()
			return err
		}
	}
	reason := errors.New("peer is on the deny list")
	r.OnBeforeConnect(record(0, nil))
	r.OnBeforeConnect(record(1, reason))
	r.OnBeforeConnect(record(2, errors.New("never reached")))
	require.False(t, r.Empty())

	err := r.RunBeforeConnect(context.Background(), attempt)
	require.ErrorIs(t, err, hooks.ErrRejected)
	require.ErrorIs(t, err, reason, "the hook's reason is carried")
	var rejected *hooks.RejectedError
	require.ErrorAs(t, err, &rejected)
	require.Equal(t, hooks.StageBeforeConnect, rejected.Stage)
	require.Equal(t, 1, rejected.Hook)
	require.Contains(t, err.Error(), "deny list")
	require.Equal(t, []int{0, 1}, calls, "in registration order, stopping at the first rejection")
}

func TestRemove(t *testing.T) {
	r := newRegistry(t, 0)
	remove := r.OnAfterHandshake(func(context.Context, hooks.Handshake) error { return errors.New("no") })
	require.Error(t, r.RunAfterHandshake(context.Background(), hooks.Handshake{}))
	remove()
	remove() // idempotent
	require.NoError(t, r.RunAfterHandshake(context.Background(), hooks.Handshake{}))
	require.True(t, r.Empty())
	r.OnBeforeConnect(nil)() // nil hooks are ignored
	require.True(t, r.Empty())
}

func TestRemoveKeepsOthersInOrder(t *testing.T) {
	r := newRegistry(t, 0)
	var got []string
	mk := func(name string) hooks.AfterHandshakeFunc {
		return func(context.Context, hooks.Handshake) error { got = append(got, name); return nil }
	}
	r.OnAfterHandshake(mk("a"))
	removeB := r.OnAfterHandshake(mk("b"))
	r.OnAfterHandshake(mk("c"))
	removeB()
	require.NoError(t, r.RunAfterHandshake(context.Background(), hooks.Handshake{}))
	require.Equal(t, []string{"a", "c"}, got)
}

func TestPanicIsRecoveredAndRejects(t *testing.T) {
	r := newRegistry(t, 0)
	r.OnBeforeConnect(func(context.Context, hooks.ConnectAttempt) error { panic("boom") })
	err := r.RunBeforeConnect(context.Background(), attempt)
	require.ErrorIs(t, err, hooks.ErrRejected)
	require.Contains(t, err.Error(), "panicked: boom")
}

func TestTimeoutRejects(t *testing.T) {
	r := newRegistry(t, 50*time.Millisecond)
	release := make(chan struct{})
	r.OnAfterHandshake(func(context.Context, hooks.Handshake) error {
		<-release // ignores its context on purpose
		return nil
	})
	start := time.Now()
	err := r.RunAfterHandshake(context.Background(), hooks.Handshake{})
	elapsed := time.Since(start)
	close(release)
	require.ErrorIs(t, err, hooks.ErrRejected)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, elapsed, time.Second)
	require.GreaterOrEqual(t, elapsed, 50*time.Millisecond)

	// A hook that honours its context sees the deadline.
	r2 := newRegistry(t, 30*time.Millisecond)
	r2.OnBeforeConnect(func(ctx context.Context, _ hooks.ConnectAttempt) error {
		<-ctx.Done()
		return ctx.Err()
	})
	require.ErrorIs(t, r2.RunBeforeConnect(context.Background(), attempt), context.DeadlineExceeded)
}

func TestHooksSeeTheirArguments(t *testing.T) {
	r := newRegistry(t, 0)
	var seen hooks.ConnectAttempt
	r.OnBeforeConnect(func(_ context.Context, a hooks.ConnectAttempt) error { seen = a; return nil })
	require.NoError(t, r.RunBeforeConnect(context.Background(), attempt))
	require.Equal(t, attempt.Direction, seen.Direction)
	require.True(t, attempt.RemoteAddr.Equal(seen.RemoteAddr))
}

func TestConcurrentRegistrationAndRuns(t *testing.T) {
	r := newRegistry(t, 0)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				remove := r.OnBeforeConnect(func(context.Context, hooks.ConnectAttempt) error { return nil })
				_ = r.RunBeforeConnect(context.Background(), attempt)
				remove()
			}
		})
	}
	wg.Wait()
	require.True(t, r.Empty())
}

func TestNegativeTimeoutIsAnError(t *testing.T) {
	_, err := hooks.NewRegistry(-time.Second)
	require.ErrorContains(t, err, "-1s")
}
