package connmgr

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	ic "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// fakeConn is a network.Conn for the pure policy tests: no transport, no
// streams. Its direction, opening time and stream count are settable; it
// records whether, how and in which order it was closed. It also implements
// streamCounter (StreamsOpened) so that the activity sampling can see it.
type fakeConn struct {
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

	closed    atomic.Bool
	closeCode atomic.Uint32
	closeSeq  atomic.Int64 // 1-based position in the global close order, 0 while open
	// onClose, when set, runs (once) inside the first Close/CloseWithError.
	onClose func(*fakeConn)
}

var (
	_ network.Conn  = (*fakeConn)(nil)
	_ streamCounter = (*fakeConn)(nil)
)

var (
	fakeConnIDs   atomic.Int64
	fakeCloseSeqs atomic.Int64
)

// newFakeConn returns an open connection to p opened now.
func newFakeConn(p peer.ID, dir network.Direction) *fakeConn {
	n := fakeConnIDs.Add(1)
	return &fakeConn{
		id:     fmt.Sprintf("fake-%d", n),
		local:  peer.ID("local"),
		remote: p,
		laddr:  ma.StringCast("/ip4/127.0.0.1/udp/4001/quic-v1"),
		raddr:  ma.StringCast(fmt.Sprintf("/ip4/10.%d.%d.%d/udp/%d/quic-v1", n>>16&0xff, n>>8&0xff, n&0xff, 1024+n%60000)),
		dir:    dir,
		opened: time.Now(),
	}
}

// setOpened sets the time Stat reports as the opening time.
func (c *fakeConn) setOpened(t time.Time) {
	c.mu.Lock()
	c.opened = t
	c.mu.Unlock()
}

// openStreams simulates traffic: n more streams opened (StreamsOpened).
func (c *fakeConn) openStreams(n uint64) { c.streamsOpened.Add(n) }

// StreamsOpened implements streamCounter (like the swarm's connections).
func (c *fakeConn) StreamsOpened() uint64 { return c.streamsOpened.Load() }

func (c *fakeConn) isClosed() bool { return c.closed.Load() }

// closedAt returns the connection's position in the global close order (0
// while open).
func (c *fakeConn) closedAt() int64 { return c.closeSeq.Load() }

func (c *fakeConn) close(code network.ConnErrorCode) error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	c.closeCode.Store(uint32(code))
	c.closeSeq.Store(fakeCloseSeqs.Add(1))
	if c.onClose != nil {
		c.onClose(c)
	}
	return nil
}

func (c *fakeConn) Close() error { return c.close(network.ConnNoError) }

func (c *fakeConn) CloseWithError(code network.ConnErrorCode) error { return c.close(code) }

func (c *fakeConn) IsClosed() bool { return c.closed.Load() }

func (c *fakeConn) ID() string { return c.id }

func (c *fakeConn) LocalPeer() peer.ID { return c.local }

func (c *fakeConn) RemotePeer() peer.ID { return c.remote }

func (c *fakeConn) RemotePublicKey() ic.PubKey { return nil }

func (c *fakeConn) ConnState() network.ConnectionState {
	return network.ConnectionState{Transport: "fake"}
}

func (c *fakeConn) LocalMultiaddr() ma.Multiaddr { return c.laddr }

func (c *fakeConn) RemoteMultiaddr() ma.Multiaddr { return c.raddr }

func (c *fakeConn) Stat() network.ConnStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return network.ConnStats{
		Stats:      network.Stats{Direction: c.dir, Opened: c.opened, Limited: c.limited},
		NumStreams: c.numStreams,
	}
}

func (c *fakeConn) Scope() network.ConnScope { return &network.NullScope{} }

func (c *fakeConn) NewStream(context.Context) (network.Stream, error) {
	return nil, errors.New("fakeConn: no streams")
}

func (c *fakeConn) GetStreams() []network.Stream { return nil }

func (c *fakeConn) As(any) bool { return false }

func (c *fakeConn) String() string { return c.id + "→" + c.remote.ShortString() }
