package swarm

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	ic "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/transport"
	libp2pswarm "github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/quic-go/quic-go"

	"github.com/realmnet/realmnet/core"
)

// ErrConnClosed is returned when a stream is opened on, or accepted from, a
// connection that has been closed. It is go-libp2p's swarm.ErrConnClosed, so
// errors.Is works for code written against go-libp2p's swarm.
var ErrConnClosed = libp2pswarm.ErrConnClosed

// newStreamTimeout bounds Conn.NewStream when the caller's context has no
// deadline; go-libp2p's swarm uses the same 15 s.
const newStreamTimeout = 15 * time.Second

// Conn is one live connection (one path) to a peer: a QUIC connection made
// by go-libp2p's QUIC transport, with the swarm's bookkeeping around it. It
// implements network.Conn. A *Conn keeps its identity for its whole life, so
// it can be used as a map key. All methods are safe for concurrent use.
type Conn struct {
	id        uint64
	idString  string // ID(), computed once
	swarm     *Swarm
	conn      transport.CapableConn
	direction network.Direction
	opened    time.Time
	// limited is the transport's word (a relayed connection, with the
	// relay's data and time limits): streams need
	// network.WithAllowLimitedConn.
	limited bool

	// quic is the QUIC connection under conn (nil for another transport),
	// for Activity.
	quic *quic.Conn

	streamsOpened atomic.Uint64
	// closing is set first thing by doClose.
	closing atomic.Bool
	// connectedDone is set once the Connected notifications for this
	// connection have run, disconnectPending when it was closed before:
	// notifyConnected then starts Disconnected, so a notifiee never sees
	// Disconnected before Connected for the same connection. Both are
	// guarded by mu.
	connectedDone, disconnectPending bool

	mu      sync.Mutex
	streams map[*Stream]struct{} // nil once the connection is closed
	state   connState
	// done is closed by doClose; made (under mu) only for a redundant
	// connection, whose idle watcher waits on it.
	done chan struct{}
	// stages are the admission stages that admitted the connection (for
	// abort); set by the admission, under the peer's admission lock.
	stages []core.AdmissionStage
	// survivor is the connection a redundant one yields to.
	survivor *Conn
	// redundantCode is the code a redundant connection is closed with.
	redundantCode network.ConnErrorCode

	closeOnce sync.Once
	closeErr  error
}

var _ core.Conn = (*Conn)(nil)

// connState is where a connection stands in the swarm; guarded by the
// swarm's mu and the connection's mu (both held to change it).
type connState int

const (
	// connAdmitting (the zero value): in the admission pipeline, known
	// to nobody.
	_ connState = iota
	// connAnnounced: admitted, in Swarm.conns, announced.
	connAnnounced
	// connRedundant: found redundant; unannounced, serving the peer's
	// streams until it is closed (Swarm.redundant).
	connRedundant
)

// ID returns a unique, stable identifier: the last six characters of the
// remote peer ID and the swarm-wide connection number, e.g. "bUVgy6-7".
func (c *Conn) ID() string { return c.idString }

func connID(p peer.ID, n uint64) string {
	s := p.String()
	return fmt.Sprintf("%s-%d", s[max(0, len(s)-6):], n)
}

// String describes the connection for logs.
func (c *Conn) String() string {
	return fmt.Sprintf("<swarm.Conn %d %s (%s) <-> %s (%s)>", c.id,
		c.LocalMultiaddr(), c.LocalPeer(), c.RemoteMultiaddr(), c.RemotePeer())
}

// LocalPeer returns the local peer ID.
func (c *Conn) LocalPeer() peer.ID { return c.conn.LocalPeer() }

// RemotePeer returns the remote peer ID, as proven by the TLS handshake.
func (c *Conn) RemotePeer() peer.ID { return c.conn.RemotePeer() }

// RemotePublicKey returns the remote peer's public key from the handshake.
func (c *Conn) RemotePublicKey() ic.PubKey { return c.conn.RemotePublicKey() }

// ConnState reports the transport, security and muxer of the connection.
func (c *Conn) ConnState() network.ConnectionState { return c.conn.ConnState() }

// LocalMultiaddr returns the local address of this path.
func (c *Conn) LocalMultiaddr() ma.Multiaddr { return c.conn.LocalMultiaddr() }

// RemoteMultiaddr returns the remote address of this path.
func (c *Conn) RemoteMultiaddr() ma.Multiaddr { return c.conn.RemoteMultiaddr() }

// Scope returns the connection's resource-manager scope.
func (c *Conn) Scope() network.ConnScope { return c.conn.Scope() }

// IsClosed reports whether the connection is closed or being closed.
func (c *Conn) IsClosed() bool { return c.closing.Load() || c.conn.IsClosed() }

// As forwards to the transport connection, so that callers reach quic-go's
// connection: var qc *quic.Conn; conn.As(&qc).
func (c *Conn) As(target any) bool { return c.conn.As(target) }

// Stat returns the direction, the time the connection was opened, whether
// it is limited (relayed: the transport says so; QUIC connections never
// are) and the number of open streams.
func (c *Conn) Stat() network.ConnStats {
	c.mu.Lock()
	n := len(c.streams)
	c.mu.Unlock()
	return network.ConnStats{
		Stats:      network.Stats{Direction: c.direction, Opened: c.opened, Limited: c.limited},
		NumStreams: n,
	}
}

// Activity returns the streams opened on the connection, in both
// directions, since it was established, and the QUIC bytes it moved (from
// quic-go's ConnectionStats). The connection manager and multipath read it
// to tell busy connections from idle ones. It does not allocate.
func (c *Conn) Activity() core.Activity {
	a := core.Activity{StreamsOpened: c.streamsOpened.Load()}
	if c.quic != nil {
		st := c.quic.ConnectionStats()
		a.BytesSent, a.BytesReceived = st.BytesSent, st.BytesReceived
	}
	return a
}

// GetStreams returns the connection's open streams, in no particular order.
func (c *Conn) GetStreams() []network.Stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]network.Stream, 0, len(c.streams))
	for s := range c.streams {
		out = append(out, s)
	}
	return out
}

// Close closes the connection with no error code. It is idempotent: later
// calls return the first call's result.
func (c *Conn) Close() error { return c.CloseWithError(network.ConnNoError) }

// CloseWithError closes the connection, sending code to the remote peer
// (network.ConnGarbageCollected, network.ConnGated, ...). Open streams are
// reset, the swarm forgets the connection at once, and Disconnected is
// delivered to notifiees asynchronously. Idempotent.
func (c *Conn) CloseWithError(code network.ConnErrorCode) error {
	c.closeOnce.Do(func() { c.closeErr = c.doClose(code) })
	return c.closeErr
}

func (c *Conn) doClose(code network.ConnErrorCode) error {
	c.closing.Store(true)
	c.mu.Lock()
	if c.done != nil {
		close(c.done)
	}
	streams := c.streams
	c.streams = nil
	c.mu.Unlock()
	// A connection closed while it was being admitted was never
	// announced: the admission sees closing and drops it; no
	// notification. A redundant one was never announced either.
	announced := c.swarm.removeConn(c)

	err := c.conn.CloseWithError(code)
	for s := range streams {
		_ = s.Reset()
	}
	if announced {
		if mt := c.swarm.cfg.MetricsTracer; mt != nil {
			mt.ClosedConnection(c.direction, time.Since(c.opened), c.ConnState(), c.LocalMultiaddr())
		}
		c.swarm.lifecycle.Push(EvtConnectionClosed{Peer: c.RemotePeer(), ConnID: c.ID(),
			Direction: c.direction, Local: c.LocalMultiaddr(), Remote: c.RemoteMultiaddr()})
		// Disconnected runs on its own goroutine, so Close can be called
		// from a notifiee or a stream handler without deadlocking; it
		// starts once Connected has run (here, or by notifyConnected).
		c.mu.Lock()
		ready := c.connectedDone
		c.disconnectPending = !ready
		c.mu.Unlock()
		if ready {
			go c.notifyDisconnected()
		}
		c.swarm.reinstateLater(c.RemotePeer())
	}
	return err
}

// notifyDisconnected delivers Disconnected for an announced connection
// that closed, after its Connected. The swarm's refs count this goroutine:
// record (or the reinstatement) took the reference.
func (c *Conn) notifyDisconnected() {
	defer c.swarm.refs.Done()
	c.swarm.notifyAll(func(n network.Notifiee) { n.Disconnected(c.swarm, c) })
}

// closeWhenIdle closes a redundant connection once it has carried no
// stream for idle, unless it is announced meanwhile (reinstated) or closed
// (done, c.done). Owned by the swarm (refs).
func (c *Conn) closeWhenIdle(idle time.Duration, done <-chan struct{}) {
	defer c.swarm.refs.Done()
	check := min(idle/10, time.Second)
	tick := time.NewTicker(check)
	defer tick.Stop()
	idleSince := time.Now()
	for {
		select {
		case <-tick.C:
		case <-done:
			return
		case <-c.swarm.ctx.Done():
			return
		}
		c.mu.Lock()
		state, open := c.state, len(c.streams)
		closed := c.streams == nil
		c.mu.Unlock()
		switch {
		case closed || state != connRedundant:
			return
		case open > 0:
			idleSince = time.Now()
		case time.Since(idleSince) >= idle:
			log.Debugw("closing idle redundant connection", "peer", c.RemotePeer(), "conn", c.ID())
			_ = c.CloseWithError(c.redundantCode)
			return
		}
	}
}

// NewStream opens a new outbound stream on this connection. It charges the
// stream to the resource manager (OpenStream) before opening it and returns
// the resource manager's error when it refuses. Without a deadline on ctx,
// the open is bounded by 15 s. On a limited (relayed) connection ctx must
// carry network.WithAllowLimitedConn, or the error matches
// network.ErrLimitedConn (go-libp2p's rule).
func (c *Conn) NewStream(ctx context.Context) (network.Stream, error) {
	if c.limited {
		if allowed, _ := network.GetAllowLimitedConn(ctx); !allowed {
			return nil, fmt.Errorf("swarm: open stream on %s: relayed connection and the context does not allow limited connections (network.WithAllowLimitedConn): %w", c.ID(), network.ErrLimitedConn)
		}
	}
	scope, err := c.swarm.rcmgr.OpenStream(c.RemotePeer(), network.DirOutbound)
	if err != nil {
		return nil, fmt.Errorf("swarm: open stream to %s: %w", c.RemotePeer(), err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, newStreamTimeout)
		defer cancel()
	}
	muxed, err := c.conn.OpenStream(ctx)
	if err != nil {
		scope.Done()
		return nil, fmt.Errorf("swarm: open stream on %s: %w", c.ID(), err)
	}
	s, err := c.addStream(muxed, network.DirOutbound, scope)
	if err != nil {
		scope.Done()
		return nil, err
	}
	return s, nil
}

// addStream registers a transport stream; it resets the stream and returns
// ErrConnClosed when the connection closed meanwhile.
func (c *Conn) addStream(muxed network.MuxedStream, dir network.Direction, scope network.StreamManagementScope) (*Stream, error) {
	id := c.swarm.nextStreamID.Add(1)
	s := &Stream{
		id:       id,
		idString: streamID(c.ID(), id),
		conn:     c,
		stream:   muxed,
		scope:    scope,
		stat:     network.Stats{Direction: dir, Opened: time.Now()},
	}
	c.mu.Lock()
	if c.streams == nil {
		c.mu.Unlock()
		_ = muxed.Reset()
		return nil, ErrConnClosed
	}
	c.streams[s] = struct{}{}
	c.mu.Unlock()
	c.streamsOpened.Add(1)
	return s, nil
}

func (c *Conn) removeStream(s *Stream) {
	c.mu.Lock()
	if c.streams != nil {
		delete(c.streams, s)
	}
	c.mu.Unlock()
}

// acceptStreams runs for the life of the connection, owned by the swarm
// (refs). It ends when the transport stops accepting, which is how a close by
// the remote peer is noticed, and then closes the connection.
func (c *Conn) acceptStreams() {
	defer c.swarm.refs.Done()
	defer c.Close()
	for {
		muxed, err := c.conn.AcceptStream()
		if err != nil {
			return
		}
		scope, err := c.swarm.rcmgr.OpenStream(c.RemotePeer(), network.DirInbound)
		if err != nil {
			log.Debugw("resource manager refused inbound stream", "peer", c.RemotePeer(), "error", err)
			_ = muxed.ResetWithError(network.StreamResourceLimitExceeded)
			continue
		}
		s, err := c.addStream(muxed, network.DirInbound, scope)
		if err != nil {
			scope.Done()
			return
		}
		handler := c.swarm.StreamHandler()
		if handler == nil {
			_ = s.ResetWithError(network.StreamProtocolNegotiationFailed)
			continue
		}
		// Like go-libp2p's swarm, Close does not wait for handlers (a
		// handler may itself close the node); their stop signal is their
		// stream, which Close resets.
		go handler(s)
	}
}
