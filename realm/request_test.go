package realm_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/realm"
)

// requestPair is two members of one realm; a serves, b asks.
func requestPair(t *testing.T, serverCfg, clientCfg realm.RequestConfig) (a, b *realm.Realm) {
	t.Helper()
	na, nb := testnode.New(t), testnode.New(t)
	a = join(t, na, "req", realm.PSK(testPSK), realm.Requests(serverCfg))
	b = join(t, nb, "req", realm.PSK(testPSK), realm.Requests(clientCfg), realm.Peers(na.AddrInfo()))
	waitMembers(t, a, 1)
	waitMembers(t, b, 1)
	return a, b
}

func upper(_ context.Context, _ peer.ID, req []byte) ([]byte, error) {
	return bytes.ToUpper(req), nil
}

func TestRequestResponse(t *testing.T) {
	const limit = 4 << 10
	a, b := requestPair(t, realm.RequestConfig{MaxRequestSize: limit, MaxResponseSize: 2 * limit, Timeout: 3 * time.Second},
		realm.RequestConfig{MaxRequestSize: 2 * limit, MaxResponseSize: limit, Timeout: time.Second})
	ctx := context.Background()
	server := a.Members()[0] // b's ID, as a sees it
	_ = server
	pa := b.Members()[0]

	var from atomic.Value
	require.NoError(t, a.SetRequestHandler("/upper", func(ctx context.Context, p peer.ID, req []byte) ([]byte, error) {
		from.Store(p)
		return upper(ctx, p, req)
	}))
	resp, err := b.Request(ctx, pa, "/upper", []byte("hello"))
	require.NoError(t, err)
	require.Equal(t, "HELLO", string(resp))
	require.Equal(t, a.Members()[0], from.Load(), "the handler is told the caller")

	t.Run("empty", func(t *testing.T) {
		resp, err := b.Request(ctx, pa, "/upper", nil)
		require.NoError(t, err)
		require.Empty(t, resp)
	})
	t.Run("request at and over the caps", func(t *testing.T) {
		resp, err := b.Request(ctx, pa, "/upper", bytes.Repeat([]byte("a"), limit))
		require.NoError(t, err, "at the server's MaxRequestSize")
		require.Len(t, resp, limit)
		// Over the server's cap, within the caller's: the server refuses
		// it without reading it.
		_, err = b.Request(ctx, pa, "/upper", bytes.Repeat([]byte("a"), limit+1))
		var remote *realm.RemoteError
		require.ErrorAs(t, err, &remote)
		require.Equal(t, realm.RemoteRequestTooLarge, remote.Code)
		require.ErrorIs(t, err, realm.ErrRequestTooLarge)
		require.Equal(t, pa, remote.Peer)
		// Over the caller's own cap: not sent.
		_, err = b.Request(ctx, pa, "/upper", bytes.Repeat([]byte("a"), 2*limit+1))
		require.ErrorIs(t, err, realm.ErrRequestTooLarge)
		require.NotErrorAs(t, err, &remote)
		require.ErrorContains(t, err, fmt.Sprintf("%d bytes, MaxRequestSize is %d", 2*limit+1, 2*limit))
	})
	t.Run("response at and over the caps", func(t *testing.T) {
		require.NoError(t, a.SetRequestHandler("/size", func(_ context.Context, _ peer.ID, req []byte) ([]byte, error) {
			var n int
			_, err := fmt.Sscan(string(req), &n)
			return bytes.Repeat([]byte("r"), n), err
		}))
		resp, err := b.Request(ctx, pa, "/size", []byte(fmt.Sprint(limit)))
		require.NoError(t, err, "at the caller's MaxResponseSize")
		require.Len(t, resp, limit)
		_, err = b.Request(ctx, pa, "/size", []byte(fmt.Sprint(limit+1)))
		require.ErrorIs(t, err, realm.ErrResponseTooLarge, "over the caller's cap")
		var remote *realm.RemoteError
		require.NotErrorAs(t, err, &remote)
		_, err = b.Request(ctx, pa, "/size", []byte(fmt.Sprint(2*limit+1)))
		require.ErrorAs(t, err, &remote, "over the server's cap")
		require.Equal(t, realm.RemoteResponseTooLarge, remote.Code)
		require.ErrorIs(t, err, realm.ErrResponseTooLarge)
	})
	t.Run("handler error, panic, long error", func(t *testing.T) {
		require.NoError(t, a.SetRequestHandler("/fail", func(_ context.Context, _ peer.ID, req []byte) ([]byte, error) {
			switch string(req) {
			case "panic":
				panic("boom")
			case "long":
				return nil, errors.New(strings.Repeat("x", 5000))
			}
			return nil, errors.New("no such thing")
		}))
		_, err := b.Request(ctx, pa, "/fail", []byte("x"))
		var remote *realm.RemoteError
		require.ErrorAs(t, err, &remote)
		require.Equal(t, realm.RemoteHandlerError, remote.Code)
		require.Equal(t, "no such thing", remote.Message)
		require.Equal(t, "req", remote.Realm)
		require.ErrorContains(t, err, `realm "req": request /fail to `+pa.String()+": remote handler error: no such thing")

		_, err = b.Request(ctx, pa, "/fail", []byte("panic"))
		require.ErrorAs(t, err, &remote)
		require.Equal(t, realm.RemoteHandlerPanic, remote.Code)
		require.NotContains(t, remote.Message, "boom", "the panic's value stays on the server")

		_, err = b.Request(ctx, pa, "/fail", []byte("long"))
		require.ErrorAs(t, err, &remote)
		require.Len(t, remote.Message, realm.MaxRemoteErrorSize)

		// The server still answers.
		resp, err := b.Request(ctx, pa, "/upper", []byte("ok"))
		require.NoError(t, err)
		require.Equal(t, "OK", string(resp))
	})
	t.Run("timeout", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		require.NoError(t, a.SetRequestHandler("/slow", func(ctx context.Context, _ peer.ID, _ []byte) ([]byte, error) {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil, ctx.Err()
		}))
		start := time.Now()
		_, err := b.Request(ctx, pa, "/slow", []byte("x"))
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Less(t, time.Since(start), 5*time.Second)
		require.GreaterOrEqual(t, time.Since(start), time.Second, "the realm's Timeout")
		// A shorter deadline of the caller's own wins.
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_, err = b.Request(short, pa, "/slow", []byte("x"))
		require.ErrorIs(t, err, context.DeadlineExceeded)
	})
	t.Run("no handler", func(t *testing.T) {
		_, err := b.Request(ctx, pa, "/nothing", []byte("x"))
		require.ErrorIs(t, err, realm.ErrNoRequestHandler)
	})
	t.Run("bad protocol and nil handler", func(t *testing.T) {
		_, err := b.Request(ctx, pa, "", []byte("x"))
		require.ErrorIs(t, err, realm.ErrBadProtocol)
		require.ErrorContains(t, a.SetRequestHandler("/x", nil), "nil handler")
	})
}

// TestRequestFromNonMember: a node outside the realm (another realm of the
// same name and another key) cannot ask, and a member cannot ask it.
func TestRequestFromNonMember(t *testing.T) {
	na, nb := testnode.New(t), testnode.New(t)
	a := join(t, na, "req", realm.PSK(testPSK))
	b := join(t, nb, "req", realm.PSK([]byte("another key, another realm, 32b")), realm.Peers(na.AddrInfo()))
	require.NoError(t, a.SetRequestHandler("/upper", upper))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, nb.Connect(ctx, na.AddrInfo()))
	_, err := b.Request(ctx, na.ID(), "/upper", []byte("x"))
	require.ErrorIs(t, err, realm.ErrNotMember)
	_, err = a.Request(ctx, nb.ID(), "/upper", []byte("x"))
	require.ErrorIs(t, err, realm.ErrNotMember)
}

// TestRequestsConcurrently: 1,000 requests at once from one member, each
// answered with its own payload.
func TestRequestsConcurrently(t *testing.T) {
	a, b := requestPair(t, realm.RequestConfig{}, realm.RequestConfig{})
	require.NoError(t, a.SetRequestHandler("/upper", upper))
	pa := b.Members()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for i := range 1000 {
		wg.Go(func() {
			msg := fmt.Sprintf("request %d", i)
			resp, err := b.Request(ctx, pa, "/upper", []byte(msg))
			if err == nil && string(resp) != strings.ToUpper(msg) {
				err = fmt.Errorf("request %d answered %q", i, resp)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestRequestConfigRefusesBadValues(t *testing.T) {
	n := testnode.New(t)
	for _, tc := range []struct {
		cfg  realm.RequestConfig
		want string
	}{
		{realm.RequestConfig{MaxRequestSize: -1}, "MaxRequestSize must be in [1, 67108864], got -1"},
		{realm.RequestConfig{MaxResponseSize: realm.MaxRequestLimit + 1}, "MaxResponseSize must be in [1, 67108864], got 67108865"},
		{realm.RequestConfig{Timeout: -time.Second}, "Timeout must be > 0, got -1s"},
	} {
		_, err := n.JoinRealm(context.Background(), "bad", realm.PSK(testPSK), realm.Requests(tc.cfg))
		require.ErrorContains(t, err, tc.want)
	}
}

// FuzzReadResponse: any bytes as a response decode or fail cleanly, never
// allocating more than the caps.
func FuzzReadResponse(f *testing.F) {
	f.Add([]byte{0, 5, 'h', 'e', 'l', 'l', 'o'})
	f.Add([]byte{1, 3, 'e', 'r', 'r'})
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{9})
	f.Fuzz(func(t *testing.T, b []byte) {
		code, body, err := realm.ReadResponse(bufio.NewReader(bytes.NewReader(b)), 64)
		if err != nil {
			return
		}
		limit := 64
		if code != realm.RemoteOK {
			limit = realm.MaxRemoteErrorSize
		}
		require.LessOrEqual(t, len(body), limit)
	})
}

// TestBadRequestFrames: a request stream with a malformed frame is reset
// (a length prefix that overflows, a body shorter than its length); one
// over the server's cap is answered RemoteRequestTooLarge unread. The
// server keeps serving.
func TestBadRequestFrames(t *testing.T) {
	a, b := requestPair(t, realm.RequestConfig{MaxRequestSize: 16, Timeout: time.Second}, realm.RequestConfig{})
	require.NoError(t, a.SetRequestHandler("/upper", upper))
	pa := b.Members()[0]
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		frame []byte
		reset bool
	}{
		{"overflowing length", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, true},
		{"short body", []byte{10, 'a', 'b'}, true},
		{"empty stream", nil, true},
		{"over the cap", []byte{0x80, 0x80, 0x04}, false}, // 65536 declared, nothing sent
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := b.NewStream(ctx, pa, "/upper")
			require.NoError(t, err)
			_, err = s.Write(tc.frame)
			require.NoError(t, err)
			require.NoError(t, s.CloseWrite())
			_ = s.SetDeadline(time.Now().Add(5 * time.Second))
			code, body, err := realm.ReadResponse(bufio.NewReader(s), 1024)
			if tc.reset {
				require.Error(t, err)
				require.NotErrorIs(t, err, context.DeadlineExceeded)
				return
			}
			require.NoError(t, err)
			require.Equal(t, realm.RemoteRequestTooLarge, code)
			require.Contains(t, string(body), "65536 bytes declared, 16 allowed")
			_ = s.Close()
		})
	}
	resp, err := b.Request(ctx, pa, "/upper", []byte("still"))
	require.NoError(t, err)
	require.Equal(t, "STILL", string(resp))
}

// FuzzReadRequest: any bytes as a request decode or fail cleanly, never
// allocating more than the cap.
func FuzzReadRequest(f *testing.F) {
	f.Add([]byte{5, 'h', 'e', 'l', 'l', 'o'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := realm.ReadSized(bufio.NewReader(bytes.NewReader(b)), 64)
		if err == nil {
			require.LessOrEqual(t, len(req), 64)
		}
	})
}

// TestRequestSlots: at most MaxConcurrentRequests requests to one member
// are in flight; one more waits for a slot and gives up with its context.
func TestRequestSlots(t *testing.T) {
	a, b := requestPair(t, realm.RequestConfig{}, realm.RequestConfig{})
	pa := b.Members()[0]
	var inHandler atomic.Int32
	release := make(chan struct{})
	require.NoError(t, a.SetRequestHandler("/hold", func(ctx context.Context, _ peer.ID, _ []byte) ([]byte, error) {
		inHandler.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return []byte("done"), nil
	}))
	ctx := context.Background()
	var wg sync.WaitGroup
	for range realm.MaxConcurrentRequests {
		wg.Go(func() {
			_, err := b.Request(ctx, pa, "/hold", nil)
			require.NoError(t, err)
		})
	}
	require.Eventually(t, func() bool { return inHandler.Load() == realm.MaxConcurrentRequests }, 10*time.Second, 5*time.Millisecond)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err := b.Request(short, pa, "/hold", nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, fmt.Sprintf("waiting for one of the %d request slots", realm.MaxConcurrentRequests))
	require.Equal(t, int32(realm.MaxConcurrentRequests), inHandler.Load(), "the request waited, it was not sent")
	close(release)
	wg.Wait()
	resp, err := b.Request(ctx, pa, "/hold", nil)
	require.NoError(t, err, "slots are given back")
	require.Equal(t, "done", string(resp))
}
