package realm_test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/realm"
)

// TestRealmStreamHeaderTravelsWithFirstUse proves that an outbound realm
// stream reaches its peer with its first use, not at NewStream: its header
// travels with the first Write, or alone before a first Read, CloseWrite
// or Close; a first write larger than the coalescing buffer arrives whole.
func TestRealmStreamHeaderTravelsWithFirstUse(t *testing.T) {
	a, b := testnode.New(t), testnode.New(t)
	ra := join(t, a, "lazy", realm.PSK(testPSK))
	rb := join(t, b, "lazy", realm.PSK(testPSK), realm.Peers(a.AddrInfo()))
	waitMembers(t, ra, 1)
	waitMembers(t, rb, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// A stream reaches a's handler with its first write, not at
	// NewStream: a whole echo on another stream, opened and written
	// later, completes while the first is still unknown to a.
	require.NoError(t, ra.SetStreamHandler("/echo", testnode.Echo))
	dispatched := make(chan network.Stream, 2)
	require.NoError(t, ra.SetStreamHandler("/first-byte", func(s network.Stream) { dispatched <- s }))
	opened, err := rb.NewStream(ctx, a.ID(), "/first-byte")
	require.NoError(t, err)
	defer opened.Close()
	echoed, err := rb.NewStream(ctx, a.ID(), "/echo")
	require.NoError(t, err)
	require.NoError(t, echoed.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = echoed.Write([]byte("ping"))
	require.NoError(t, err)
	require.NoError(t, echoed.CloseWrite())
	got, err := io.ReadAll(echoed)
	require.NoError(t, err)
	require.Equal(t, "ping", string(got))
	_ = echoed.Close()
	require.Empty(t, dispatched, "a stream without a write reached the peer's handler")
	_, err = opened.Write([]byte("O"))
	require.NoError(t, err)
	select {
	case s := <-dispatched:
		_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
		var buf [1]byte
		_, err := io.ReadFull(s, buf[:])
		require.NoError(t, err)
		require.Equal(t, "O", string(buf[:]))
		_ = s.Close()
	case <-ctx.Done():
		t.Fatal("the stream was not dispatched after its first write")
	}

	// A protocol whose handler speaks first: the client only reads.
	require.NoError(t, ra.SetStreamHandler("/hello", func(s network.Stream) {
		_, _ = s.Write([]byte("hi"))
		_ = s.Close()
	}))
	s, err := rb.NewStream(ctx, a.ID(), "/hello")
	require.NoError(t, err)
	require.NoError(t, s.SetDeadline(time.Now().Add(10*time.Second)))
	got, err = io.ReadAll(s)
	require.NoError(t, err)
	require.Equal(t, "hi", string(got))
	_ = s.Close() // may fail: the handler's Close stopped our sending side

	// CloseWrite and Close before any write still reach the handler,
	// which reads the end of the stream.
	ends := make(chan error, 2)
	require.NoError(t, ra.SetStreamHandler("/end", func(s network.Stream) {
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, s)
		if err == nil && n != 0 {
			err = io.ErrShortBuffer // any data is wrong here
		}
		ends <- err
		_, _ = s.Write([]byte("bye"))
		_ = s.Close()
	}))
	s, err = rb.NewStream(ctx, a.ID(), "/end")
	require.NoError(t, err)
	require.NoError(t, s.CloseWrite())
	select {
	case err := <-ends:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("CloseWrite before a write: the stream was not dispatched")
	}
	require.NoError(t, s.SetDeadline(time.Now().Add(10*time.Second)))
	got, err = io.ReadAll(s)
	require.NoError(t, err)
	require.Equal(t, "bye", string(got))
	require.NoError(t, s.Close())

	s, err = rb.NewStream(ctx, a.ID(), "/end")
	require.NoError(t, err)
	require.NoError(t, s.Close())
	select {
	case err := <-ends:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("Close before a write: the stream was not dispatched")
	}

	// A first write larger than the coalescing buffer (4 KiB).
	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10/16)
	s, err = rb.NewStream(ctx, a.ID(), "/echo")
	require.NoError(t, err)
	require.NoError(t, s.SetDeadline(time.Now().Add(10*time.Second)))
	done := make(chan error, 1)
	go func() {
		_, err := s.Write(big)
		if err == nil {
			err = s.CloseWrite()
		}
		done <- err
	}()
	got, err = io.ReadAll(s)
	require.NoError(t, err)
	require.NoError(t, <-done)
	require.True(t, bytes.Equal(big, got), "echo of %d bytes: got %d", len(big), len(got))
	_ = s.Close()
}
