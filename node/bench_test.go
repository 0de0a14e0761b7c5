package node_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
)

// These benchmarks compare realmnet (libp2p's basic host over realmnet's own
// swarm) with stock go-libp2p (libp2p.New, QUIC only) in the same run. Each
// benchmark has a "realmnet" and a "libp2p" sub-benchmark that run literally
// the same code (benchEcho, benchThroughput) on a host pair; only the
// construction of the pair (benchRealmnetPair, benchLibp2pPair) differs.

const (
	benchEchoProto = protocol.ID("/bench/echo/1.0.0")
	benchEchoSize  = 1 << 10

	benchThroughputProto = protocol.ID("/bench/throughput/1.0.0")
	benchThroughputSize  = 64 << 20
	benchThroughputChunk = 1 << 20

	// benchSetupTimeout bounds node construction, connection and warm-up.
	benchSetupTimeout = 30 * time.Second
)

// benchPairFunc builds two connected hosts on 127.0.0.1: handler is
// registered for proto on server before client connects to it, so that
// identify tells client about the protocol. Everything is closed with
// b.Cleanup.
type benchPairFunc func(b *testing.B, proto protocol.ID, handler network.StreamHandler) (client, server host.Host)

var benchPairs = []struct {
	name string
	make benchPairFunc
}{
	{"realmnet", benchRealmnetPair},
	{"libp2p", benchLibp2pPair},
}

// benchRealmnetPair makes two realmnet nodes (DHT client mode) and returns
// their hosts, which run over realmnet's swarm.
func benchRealmnetPair(b *testing.B, proto protocol.ID, handler network.StreamHandler) (host.Host, host.Host) {
	b.Helper()
	client, server := testnode.New(b), testnode.New(b)
	server.SetStreamHandler(proto, handler)
	ctx, cancel := context.WithTimeout(context.Background(), benchSetupTimeout)
	defer cancel()
	if err := client.Connect(ctx, server.AddrInfo()); err != nil {
		b.Fatalf("realmnet connect: %v", err)
	}
	return client.Host(), server.Host()
}

// benchLibp2pPair makes two stock go-libp2p hosts (testkit.StockHost): the
// QUIC transport only, relay disabled, and otherwise libp2p.New's defaults
// (resource manager with its default auto-scaled limits, BasicConnMgr,
// identify, ping, Prometheus metrics).
func benchLibp2pPair(b *testing.B, proto protocol.ID, handler network.StreamHandler) (host.Host, host.Host) {
	b.Helper()
	client, server := testkit.StockHost(b), testkit.StockHost(b)
	server.SetStreamHandler(proto, handler)
	ctx, cancel := context.WithTimeout(context.Background(), benchSetupTimeout)
	defer cancel()
	if err := client.Connect(ctx, peer.AddrInfo{ID: server.ID(), Addrs: server.Addrs()}); err != nil {
		b.Fatalf("libp2p connect: %v", err)
	}
	return client, server
}

// benchEchoOnce opens a stream to p, writes msg, closes the write side, reads
// the echo into reply (len(reply) == len(msg)), checks its length, and
// closes the stream.
func benchEchoOnce(ctx context.Context, h host.Host, p peer.ID, msg, reply []byte) error {
	s, err := h.NewStream(ctx, p, benchEchoProto)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	if _, err := s.Write(msg); err != nil {
		_ = s.Reset()
		return fmt.Errorf("write: %w", err)
	}
	if err := s.CloseWrite(); err != nil {
		_ = s.Reset()
		return fmt.Errorf("close write: %w", err)
	}
	n, err := io.ReadFull(s, reply)
	if err != nil {
		_ = s.Reset()
		return fmt.Errorf("read echo (%d of %d bytes): %w", n, len(msg), err)
	}
	if n != len(msg) {
		_ = s.Reset()
		return fmt.Errorf("echo is %d bytes, want %d", n, len(msg))
	}
	return s.Close()
}

// benchEcho runs the echo benchmark on the pair that mk builds.
func benchEcho(b *testing.B, mk benchPairFunc) {
	client, server := mk(b, benchEchoProto, testnode.Echo)
	msg := bytes.Repeat([]byte{0xab}, benchEchoSize)
	reply := make([]byte, benchEchoSize)
	ctx := context.Background()

	// Warm-up stream: identify has completed on both sides and the
	// protocol is known, so every timed stream takes the same path.
	if err := benchEchoOnce(ctx, client, server.ID(), msg, reply); err != nil {
		b.Fatalf("warm-up echo: %v", err)
	}
	if !bytes.Equal(reply, msg) {
		b.Fatal("warm-up echo: reply differs from message")
	}

	b.SetBytes(benchEchoSize)
	b.ReportAllocs()
	for b.Loop() {
		if err := benchEchoOnce(ctx, client, server.ID(), msg, reply); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStreamOpenEcho1KiB measures the cost of one short request on an
// existing, warmed-up connection between two hosts on 127.0.0.1: open a new
// stream for /bench/echo/1.0.0 (lazy multistream-select, as identify has
// told the client the protocol), write 1 KiB, CloseWrite, read the 1 KiB
// echo back, close the stream. ns/op is the latency of that round trip
// including stream setup and teardown on both sides; allocs/op counts both
// sides (the whole process).
//
// Target: realmnet within 10 % of stock go-libp2p on ns/op and MB/s.
func BenchmarkStreamOpenEcho1KiB(b *testing.B) {
	for _, p := range benchPairs {
		b.Run(p.name, func(b *testing.B) { benchEcho(b, p.make) })
	}
}

// benchDiscardHandler reads the stream to EOF, then writes a 1-byte ack so
// the sender knows every byte arrived, and closes.
func benchDiscardHandler(s network.Stream) {
	if _, err := io.Copy(io.Discard, s); err != nil {
		_ = s.Reset()
		return
	}
	if _, err := s.Write([]byte{1}); err != nil {
		_ = s.Reset()
		return
	}
	_ = s.Close()
}

// benchSendOnce opens a stream to p, sends total bytes by writing chunk over
// and over, closes the write side and waits for the receiver's 1-byte ack.
func benchSendOnce(ctx context.Context, h host.Host, p peer.ID, chunk []byte, total int) error {
	s, err := h.NewStream(ctx, p, benchThroughputProto)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	// A bound so a stalled transfer fails the benchmark instead of hanging.
	if err := s.SetDeadline(time.Now().Add(benchSetupTimeout)); err != nil {
		_ = s.Reset()
		return fmt.Errorf("set deadline: %w", err)
	}
	for sent := 0; sent < total; sent += len(chunk) {
		if _, err := s.Write(chunk); err != nil {
			_ = s.Reset()
			return fmt.Errorf("write after %d bytes: %w", sent, err)
		}
	}
	if err := s.CloseWrite(); err != nil {
		_ = s.Reset()
		return fmt.Errorf("close write: %w", err)
	}
	var ack [1]byte
	if _, err := io.ReadFull(s, ack[:]); err != nil {
		_ = s.Reset()
		return fmt.Errorf("read ack: %w", err)
	}
	if ack[0] != 1 {
		_ = s.Reset()
		return errors.New("bad ack")
	}
	return s.Close()
}

// benchThroughput runs the throughput benchmark on the pair that mk builds.
func benchThroughput(b *testing.B, mk benchPairFunc) {
	client, server := mk(b, benchThroughputProto, benchDiscardHandler)
	chunk := bytes.Repeat([]byte{0x5a}, benchThroughputChunk)
	ctx := context.Background()

	// Warm-up transfer: identify is done and QUIC's congestion and
	// connection flow-control windows have grown before timing starts.
	if err := benchSendOnce(ctx, client, server.ID(), chunk, benchThroughputSize); err != nil {
		b.Fatalf("warm-up transfer: %v", err)
	}

	b.SetBytes(benchThroughputSize)
	for b.Loop() {
		if err := benchSendOnce(ctx, client, server.ID(), chunk, benchThroughputSize); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkThroughput64MiB measures bulk transfer on one stream over an
// existing QUIC connection on 127.0.0.1: each op opens a stream, sends
// 64 MiB in 1 MiB writes to a handler that discards it, and waits for the
// handler's 1-byte ack after CloseWrite, so every byte has arrived when the
// op ends. MB/s is the stream throughput.
//
// Target: realmnet within 10 % of stock go-libp2p on ns/op and MB/s.
func BenchmarkThroughput64MiB(b *testing.B) {
	for _, p := range benchPairs {
		b.Run(p.name, func(b *testing.B) { benchThroughput(b, p.make) })
	}
}
