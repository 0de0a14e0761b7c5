// Package testnode builds realmnet nodes for tests: on loopback, closed at
// the end of the test, with echo helpers. It imports package node, so only
// tests outside node's own internal tests use it.
package testnode

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/udpproxy"
	"github.com/realmnet/realmnet/node"
)

// Proxy puts a fault-injection proxy (udpproxy, on 127.0.0.1) in front of
// n's first listen address; the proxy is closed at the end of the test.
func Proxy(t testing.TB, n *node.Node) *udpproxy.Proxy {
	t.Helper()
	target, err := manet.ToNetAddr(n.Network().ListenAddresses()[0].Decapsulate(ma.StringCast("/quic-v1")))
	require.NoError(t, err)
	p, err := udpproxy.New("127.0.0.1:0", target.(*net.UDPAddr))
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// EchoProtocol is the protocol of Echo.
const EchoProtocol = "/realmnet/test/echo/1.0.0"

// New starts a node listening on testkit.Loopback in DHT client mode, with
// opts applied after those defaults (so they can be overridden), and closes
// it at the end of the test.
func New(t testing.TB, opts ...node.Option) *node.Node {
	t.Helper()
	opts = append([]node.Option{node.ListenAddrStrings(testkit.Loopback), node.DHTMode(node.DHTClient)}, opts...)
	n, err := node.New(context.Background(), opts...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, n.Close()) })
	return n
}

// echoBuffers holds Echo's copy buffers. io.Copy allocates 32 KiB per
// stream (a stream is neither an io.WriterTo nor an io.ReaderFrom): three
// quarters of the bytes a 1 KiB request allocated in the benchmarks, whose
// tails then measured the garbage collection of their own echo handler.
var echoBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// Echo copies a stream back to its sender and closes it.
func Echo(s network.Stream) {
	buf := echoBuffers.Get().(*[]byte)
	_, _ = io.CopyBuffer(s, s, *buf)
	echoBuffers.Put(buf)
	_ = s.Close()
}

// EchoOver writes size random bytes to s, closes its write side, and
// requires the same bytes back; it closes s (EchoErr, failing the test).
func EchoOver(t testing.TB, s network.Stream, size int) {
	t.Helper()
	require.NoError(t, EchoErr(s, size))
}

// EchoErr writes size random bytes to s, closes its write side, and checks
// that the same bytes come back; it closes s, or resets it when the echo
// failed. It returns an error instead of failing the test, for echoes run
// off the test goroutine.
func EchoErr(s network.Stream, size int) error {
	msg := make([]byte, size)
	_, _ = rand.Read(msg)
	errc := make(chan error, 1)
	go func() {
		_, err := s.Write(msg)
		if err == nil {
			err = s.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		_ = s.Reset() // unblocks the writer
		<-errc
		return fmt.Errorf("read echo: %w", err)
	}
	if err := <-errc; err != nil {
		_ = s.Reset()
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(msg, got) {
		_ = s.Reset()
		return fmt.Errorf("echo corrupted: sent %d bytes, got %d", len(msg), len(got))
	}
	_ = s.Close()
	return nil
}

// EchoTimes opens n streams with open, one after the other, echoes 1 KiB
// over each (EchoErr) and returns the round-trip times, open included,
// sorted. A failed open or echo fails the test, naming what (e.g. "quiet",
// "flooded") and which attempt. Each attempt is bounded by 5 s.
func EchoTimes(t testing.TB, what string, n int, open func(ctx context.Context) (network.Stream, error)) []time.Duration {
	t.Helper()
	out := make([]time.Duration, 0, n)
	for i := range n {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s, err := open(ctx)
		if err == nil {
			err = EchoErr(s, 1024)
		}
		cancel()
		require.NoError(t, err, "%s: echo %d", what, i)
		out = append(out, time.Since(start))
	}
	slices.Sort(out)
	return out
}
