// Package testkit holds the test helpers that realmnet's packages share:
// a fake connection for pure policy tests (FakeConn), a stock go-libp2p
// host on loopback (StockHost), the goroutine-leak options every TestMain
// uses (LeakOptions), fresh peer IDs (PeerID), and waiting helpers. It
// imports nothing of realmnet but core, so any package's tests — internal
// ones included — may use it. Only tests import it.
package testkit

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	ic "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/core"
)

// Loopback is the listen address of test nodes and hosts: QUIC on
// 127.0.0.1, a port chosen by the system.
const Loopback = "/ip4/127.0.0.1/udp/0/quic-v1"

// LeakOptions are the goleak options of every package's TestMain: the
// process-wide singletons that libraries start once and never stop.
func LeakOptions(extra ...goleak.Option) []goleak.Option {
	return append([]goleak.Option{
		// go-log's writer and opencensus's metric views.
		goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		// goleveldb's pool drainer waits up to 1 s after DB.Close before it
		// returns (leveldb/db_state.go); it ends by itself.
		goleak.IgnoreTopFunction("github.com/syndtr/goleveldb/leveldb.(*DB).mpoolDrain"),
	}, extra...)
}

// StockHost is a go-libp2p host as libp2p.New makes it — QUIC only, on
// Loopback, no relay — closed at the end of the test. It is the reference
// peer of interop and attack tests.
func StockHost(t testing.TB, opts ...libp2p.Option) host.Host {
	t.Helper()
	return StockHostOn(t, Loopback, opts...)
}

// StockHostOn is StockHost listening on listen (a QUIC multiaddr) instead
// of Loopback.
func StockHostOn(t testing.TB, listen string, opts ...libp2p.Option) host.Host {
	t.Helper()
	opts = append([]libp2p.Option{
		libp2p.Transport(libp2pquic.NewTransport),
		libp2p.ListenAddrStrings(listen),
		libp2p.DisableRelay(),
	}, opts...)
	h, err := libp2p.New(opts...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, h.Close()) })
	return h
}

// PeerID returns a fresh peer ID, derived from a new Ed25519 key: a peer
// nobody runs.
func PeerID(t testing.TB) peer.ID {
	t.Helper()
	_, pub, err := ic.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	id, err := peer.IDFromPublicKey(pub)
	require.NoError(t, err)
	return id
}

// Context returns a context that ends after d or at the end of the test.
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Subscribe subscribes to bus for events of the type evtType points to
// (new(EvtFoo)); the subscription is closed at the end of the test.
func Subscribe(t testing.TB, bus event.Bus, evtType any) event.Subscription {
	t.Helper()
	sub, err := bus.Subscribe(evtType)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Close() })
	return sub
}

// WaitEvent reads sub until match returns true for an event, and returns
// that event; it fails the test when within passes first.
func WaitEvent[E any](t testing.TB, sub event.Subscription, within time.Duration, match func(E) bool) E {
	t.Helper()
	timeout := time.NewTimer(within)
	defer timeout.Stop()
	for {
		select {
		case e, ok := <-sub.Out():
			require.True(t, ok, "subscription closed while waiting for %T", *new(E))
			if evt, ok := e.(E); ok && match(evt) {
				return evt
			}
		case <-timeout.C:
			var zero E
			require.FailNowf(t, "event not seen", "no matching %T within %s", zero, within)
			return zero
		}
	}
}

// FakeConn is a core.Conn for pure policy tests: no transport, no streams.
// Its direction, opening time, limited flag and activity are settable; it
// records whether, how and in which order it was closed. Safe for concurrent
// use.
type FakeConn struct {
	id     string
	local  peer.ID
	remote peer.ID
	laddr  ma.Multiaddr
	raddr  ma.Multiaddr

	mu         sync.Mutex
	dir        network.Direction
	opened     time.Time
	numStreams int
	limited    bool

	streamsOpened atomic.Uint64
	bytes         atomic.Uint64

	closed    atomic.Bool
	closeCode atomic.Uint32
	closeSeq  atomic.Int64 // 1-based position in the global close order, 0 while open
	onClose   func(*FakeConn)
}

var _ core.Conn = (*FakeConn)(nil)

var (
	fakeConnIDs   atomic.Int64
	fakeCloseSeqs atomic.Int64
)

// NewFakeConn returns an open connection from local (the peer "local" when
// empty) to remote, in direction dir, opened now, with a distinct remote
// address (10.x.y.z) and a common local one.
func NewFakeConn(local, remote peer.ID, dir network.Direction) *FakeConn {
	n := fakeConnIDs.Add(1)
	if local == "" {
		local = peer.ID("local")
	}
	return &FakeConn{
		id:     fmt.Sprintf("fake-%d", n),
		local:  local,
		remote: remote,
		laddr:  ma.StringCast("/ip4/127.0.0.1/udp/4001/quic-v1"),
		raddr:  ma.StringCast(fmt.Sprintf("/ip4/10.%d.%d.%d/udp/%d/quic-v1", n>>16&0xff, n>>8&0xff, n&0xff, 1024+n%60000)),
		dir:    dir,
		opened: time.Now(),
	}
}

// SetAddrs sets the connection's local and remote multiaddrs.
func (c *FakeConn) SetAddrs(local, remote ma.Multiaddr) {
	c.mu.Lock()
	c.laddr, c.raddr = local, remote
	c.mu.Unlock()
}

// SetOpened sets the time Stat reports as the opening time.
func (c *FakeConn) SetOpened(t time.Time) {
	c.mu.Lock()
	c.opened = t
	c.mu.Unlock()
}

// SetLimited sets Stat().Limited (a relayed connection).
func (c *FakeConn) SetLimited(limited bool) {
	c.mu.Lock()
	c.limited = limited
	c.mu.Unlock()
}

// SetNumStreams sets Stat().NumStreams.
func (c *FakeConn) SetNumStreams(n int) {
	c.mu.Lock()
	c.numStreams = n
	c.mu.Unlock()
}

// OpenStreams simulates traffic: n more streams opened (Activity).
func (c *FakeConn) OpenStreams(n uint64) { c.streamsOpened.Add(n) }

// MoveBytes simulates traffic: n more bytes received (Activity).
func (c *FakeConn) MoveBytes(n uint64) { c.bytes.Add(n) }

// OnClose sets a function run once, inside the first Close.
func (c *FakeConn) OnClose(f func(*FakeConn)) {
	c.mu.Lock()
	c.onClose = f
	c.mu.Unlock()
}

// Activity implements core.Conn.
func (c *FakeConn) Activity() core.Activity {
	return core.Activity{StreamsOpened: c.streamsOpened.Load(), BytesReceived: c.bytes.Load()}
}

// ClosedAt returns the connection's position in the global close order of
// FakeConns (0 while open).
func (c *FakeConn) ClosedAt() int64 { return c.closeSeq.Load() }

// CloseCode returns the code the connection was closed with.
func (c *FakeConn) CloseCode() network.ConnErrorCode {
	return network.ConnErrorCode(c.closeCode.Load())
}

func (c *FakeConn) close(code network.ConnErrorCode) error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	c.closeCode.Store(uint32(code))
	c.closeSeq.Store(fakeCloseSeqs.Add(1))
	c.mu.Lock()
	onClose := c.onClose
	c.mu.Unlock()
	if onClose != nil {
		onClose(c)
	}
	return nil
}

// Reopen makes a closed connection open again, as if it had never been
// closed (close code and position cleared), for benchmarks that admit the
// same connections over and over. The OnClose function runs again at the
// next Close.
func (c *FakeConn) Reopen() {
	c.closeCode.Store(0)
	c.closeSeq.Store(0)
	c.closed.Store(false)
}

// Close closes the connection with network.ConnNoError.
func (c *FakeConn) Close() error { return c.close(network.ConnNoError) }

// CloseWithError closes the connection with code.
func (c *FakeConn) CloseWithError(code network.ConnErrorCode) error { return c.close(code) }

// IsClosed reports whether the connection was closed.
func (c *FakeConn) IsClosed() bool { return c.closed.Load() }

// ID returns "fake-N".
func (c *FakeConn) ID() string { return c.id }

// LocalPeer returns the local peer.
func (c *FakeConn) LocalPeer() peer.ID { return c.local }

// RemotePeer returns the remote peer.
func (c *FakeConn) RemotePeer() peer.ID { return c.remote }

// RemotePublicKey returns nil.
func (c *FakeConn) RemotePublicKey() ic.PubKey { return nil }

// ConnState names the transport "fake".
func (c *FakeConn) ConnState() network.ConnectionState {
	return network.ConnectionState{Transport: "fake"}
}

// LocalMultiaddr returns the local address.
func (c *FakeConn) LocalMultiaddr() ma.Multiaddr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.laddr
}

// RemoteMultiaddr returns the remote address.
func (c *FakeConn) RemoteMultiaddr() ma.Multiaddr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.raddr
}

// Stat returns the settable direction, opening time, limited flag and
// stream count.
func (c *FakeConn) Stat() network.ConnStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return network.ConnStats{
		Stats:      network.Stats{Direction: c.dir, Opened: c.opened, Limited: c.limited},
		NumStreams: c.numStreams,
	}
}

// Scope returns a null scope.
func (c *FakeConn) Scope() network.ConnScope { return &network.NullScope{} }

// NewStream fails: a FakeConn has no streams.
func (c *FakeConn) NewStream(context.Context) (network.Stream, error) {
	return nil, errors.New("testkit: FakeConn has no streams")
}

// GetStreams returns nil.
func (c *FakeConn) GetStreams() []network.Stream { return nil }

// As reaches nothing.
func (c *FakeConn) As(any) bool { return false }

// String is the ID and the remote peer.
func (c *FakeConn) String() string { return c.id + "→" + c.remote.ShortString() }
