package swarm

import (
	"fmt"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Stream is one stream on a Conn. It implements network.Stream. Reads and
// writes go straight to the QUIC stream; Close, Reset and ResetWithError
// release the stream's resource-manager scope exactly once. Setting its
// protocol emits EvtStreamOpened; releasing it then emits EvtStreamClosed
// (each while the node's event bus has a subscriber of it). Safe for
// concurrent use as far as the underlying QUIC stream is (one reader and
// one writer at a time).
type Stream struct {
	id       uint64
	idString string // ID(), formatted once when the stream is made
	conn     *Conn
	stream   network.MuxedStream
	scope    network.StreamManagementScope
	stat     network.Stats
	protocol atomic.Pointer[protocol.ID]
	// announced is set when EvtStreamOpened was emitted (first protocol).
	announced atomic.Bool

	releaseOnce sync.Once
}

var _ network.Stream = (*Stream)(nil)

// The stream events' types: streams are opened and closed at a high rate,
// so their events are built only while someone subscribes to them
// (eventqueue.Queue.Wanted).
var (
	evtStreamOpenedType = reflect.TypeFor[EvtStreamOpened]()
	evtStreamClosedType = reflect.TypeFor[EvtStreamClosed]()
)

// ID returns a unique identifier: the connection's ID and the swarm-wide
// stream number.
func (s *Stream) ID() string { return s.idString }

// streamID formats a stream's ID, "<connection ID>-<stream number>", in one
// allocation.
func streamID(connID string, id uint64) string {
	buf := make([]byte, 0, 64)
	buf = append(buf, connID...)
	buf = append(buf, '-')
	buf = strconv.AppendUint(buf, id, 10)
	return string(buf)
}

// String describes the stream for logs.
func (s *Stream) String() string {
	return fmt.Sprintf("<swarm.Stream %s %s>", s.ID(), s.Protocol())
}

// Conn returns the connection (path) the stream belongs to.
func (s *Stream) Conn() network.Conn { return s.conn }

// Read reads from the stream.
func (s *Stream) Read(p []byte) (int, error) { return s.stream.Read(p) }

// Write writes to the stream.
func (s *Stream) Write(p []byte) (int, error) { return s.stream.Write(p) }

// CloseWrite closes the write side; the remote reads io.EOF.
func (s *Stream) CloseWrite() error { return s.stream.CloseWrite() }

// CloseRead stops reading; the remote's writes fail.
func (s *Stream) CloseRead() error { return s.stream.CloseRead() }

// Close closes both directions and releases the stream.
func (s *Stream) Close() error {
	err := s.stream.Close()
	s.release()
	return err
}

// Reset aborts both directions and releases the stream.
func (s *Stream) Reset() error {
	err := s.stream.Reset()
	s.release()
	return err
}

// ResetWithError aborts both directions with code and releases the stream.
func (s *Stream) ResetWithError(code network.StreamErrorCode) error {
	err := s.stream.ResetWithError(code)
	s.release()
	return err
}

func (s *Stream) release() {
	s.releaseOnce.Do(func() {
		s.conn.removeStream(s)
		s.scope.Done()
		if s.announced.Load() && s.conn.swarm.lifecycle.Wanted(evtStreamClosedType) {
			s.conn.swarm.lifecycle.Push(EvtStreamClosed{Peer: s.conn.RemotePeer(), ConnID: s.conn.ID(),
				StreamID: s.ID(), Direction: s.stat.Direction, Protocol: string(s.Protocol())})
		}
	})
}

// Protocol returns the protocol ID negotiated on the stream, or "".
func (s *Stream) Protocol() protocol.ID {
	if p := s.protocol.Load(); p != nil {
		return *p
	}
	return ""
}

// SetProtocol records the negotiated protocol and moves the stream into the
// resource manager's protocol scope; it returns the resource manager's error
// when that scope is full.
func (s *Stream) SetProtocol(p protocol.ID) error {
	if err := s.scope.SetProtocol(p); err != nil {
		return err
	}
	s.protocol.Store(&p)
	if s.announced.CompareAndSwap(false, true) && s.conn.swarm.lifecycle.Wanted(evtStreamOpenedType) {
		s.conn.swarm.lifecycle.Push(EvtStreamOpened{Peer: s.conn.RemotePeer(), ConnID: s.conn.ID(),
			StreamID: s.ID(), Direction: s.stat.Direction, Protocol: string(p)})
	}
	return nil
}

// SetDeadline sets the read and write deadlines.
func (s *Stream) SetDeadline(t time.Time) error { return s.stream.SetDeadline(t) }

// SetReadDeadline sets the read deadline.
func (s *Stream) SetReadDeadline(t time.Time) error { return s.stream.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline.
func (s *Stream) SetWriteDeadline(t time.Time) error { return s.stream.SetWriteDeadline(t) }

// Stat returns the stream's direction and opening time.
func (s *Stream) Stat() network.Stats { return s.stat }

// Scope returns the stream's resource-manager scope.
func (s *Stream) Scope() network.StreamScope { return s.scope }
