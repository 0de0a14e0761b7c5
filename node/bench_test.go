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
	"github.com/prometheus/client_golang/prometheus"

	"github.com/realmnet/realmnet/internal/benchkit"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
)

// These benchmarks compare realmnet (libp2p's basic host over realmnet's own
// swarm) with a reference in the same run, both sides interleaved in short
// alternating blocks by internal/benchkit: stock go-libp2p (libp2p.New, QUIC
// only), raw quic-go, or realmnet's own pooled connection against a fresh
// connection per request. The two sides run literally the same code
// (benchEchoOnce, benchSendOnce) on a host pair; only the construction of
// the pair (benchRealmnetPair, benchLibp2pPair) differs. The ratio metrics
// are realmnet's time over the reference's ("ratio-median" and its spread
// over the rounds).

const (
	benchEchoProto = protocol.ID("/bench/echo/1.0.0")
	benchEchoSize  = 1 << 10

	benchThroughputProto = protocol.ID("/bench/throughput/1.0.0")
	benchThroughputSize  = 64 << 20
	benchThroughputChunk = 1 << 20

	// benchSetupTimeout bounds node construction, connection and warm-up.
	benchSetupTimeout = 30 * time.Second
)

// benchRealmnetPair makes two realmnet nodes (DHT client mode) on
// 127.0.0.1 and returns their hosts, which run over realmnet's swarm:
// handler is registered for proto on server before client connects to it,
// so that identify tells client about the protocol. Everything is closed
// with b.Cleanup; so is the pair of benchLibp2pPair.
func benchRealmnetPair(b *testing.B, proto protocol.ID, handler network.StreamHandler, opts ...node.Option) (host.Host, host.Host) {
	b.Helper()
	client, server := testnode.New(b, opts...), testnode.New(b, opts...)
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

// benchWarmEcho runs one echo from client to server and checks the reply,
// so that identify has completed on both sides and the protocol is known:
// every timed stream then takes the same path (lazy multistream-select).
func benchWarmEcho(b *testing.B, client, server host.Host, msg, reply []byte) {
	b.Helper()
	if err := benchEchoOnce(context.Background(), client, server.ID(), msg, reply); err != nil {
		b.Fatalf("warm-up echo: %v", err)
	}
	if !bytes.Equal(reply, msg) {
		b.Fatal("warm-up echo: reply differs from message")
	}
}

// benchEchoSide is a benchkit side that runs benchEchoOnce from client to
// server.
func benchEchoSide(name string, client, server host.Host, msg, reply []byte) benchkit.Side {
	ctx := context.Background()
	return benchkit.Side{Name: name, Op: func() error { return benchEchoOnce(ctx, client, server.ID(), msg, reply) }}
}

// BenchmarkStreamOpenEcho1KiB measures the cost of one short request on an
// existing, warmed-up connection between two hosts on 127.0.0.1: open a new
// stream for /bench/echo/1.0.0 (lazy multistream-select, as identify has
// told the client the protocol), write 1 KiB, CloseWrite, read the 1 KiB
// echo back, close the stream.
//
// Sides, interleaved (benchkit.Compare, blocks of 8 echoes): "realmnet"
// (two realmnet nodes) and "libp2p" (two stock go-libp2p hosts,
// testkit.StockHost), all four in the process. realmnet-ns/op and
// libp2p-ns/op are median round-trip times including stream setup and
// teardown on both ends; ratio-* is realmnet/libp2p per round;
// *-allocs/op count the whole process during the side's block (both ends of
// that side's connection).
//
// Target: ratio-median ≤ 1.1.
func BenchmarkStreamOpenEcho1KiB(b *testing.B) {
	rc, rs := benchRealmnetPair(b, benchEchoProto, testnode.Echo)
	lc, ls := benchLibp2pPair(b, benchEchoProto, testnode.Echo)
	msg := bytes.Repeat([]byte{0xab}, benchEchoSize)
	reply := make([]byte, benchEchoSize)
	benchWarmEcho(b, rc, rs, msg, reply)
	benchWarmEcho(b, lc, ls, msg, reply)
	benchkit.Compare(b,
		benchEchoSide("realmnet", rc, rs, msg, reply),
		benchEchoSide("libp2p", lc, ls, msg, reply),
		benchkit.Config{Block: 8, Warmup: 50, MinRounds: 100, Allocs: true})
}

// BenchmarkStreamOpenEcho1KiBMetrics is BenchmarkStreamOpenEcho1KiB between
// two realmnet pairs, interleaved: "metrics" has node.Metrics (one
// Prometheus registry per pair: go-libp2p's tracers and every realmnet
// collector registered) and "none" has none. The registry is not scraped
// during the run.
//
// realmnet's collectors, go-libp2p's rcmgr families among them (package
// resource), are read at scrape time and its histograms are observed off
// the stream path: they add nothing per stream. rcmgr's own tracer —
// every scope event, 26 per echo, formatted under a process-wide lock, 52
// allocations per echo — is off on both sides (it made this ratio 1.20-1.25
// when node.Metrics turned it on).
//
// Target (issue #13): ratio-median ≤ 1.02 and no allocation more per
// stream.
func BenchmarkStreamOpenEcho1KiBMetrics(b *testing.B) {
	mc, ms := benchRealmnetPair(b, benchEchoProto, testnode.Echo, node.Metrics(prometheus.NewRegistry()))
	nc, ns := benchRealmnetPair(b, benchEchoProto, testnode.Echo)
	msg := bytes.Repeat([]byte{0xab}, benchEchoSize)
	reply := make([]byte, benchEchoSize)
	benchWarmEcho(b, mc, ms, msg, reply)
	benchWarmEcho(b, nc, ns, msg, reply)
	benchkit.Compare(b,
		benchEchoSide("metrics", mc, ms, msg, reply),
		benchEchoSide("none", nc, ns, msg, reply),
		benchkit.Config{Block: 8, Warmup: 50, MinRounds: 100, Allocs: true})
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

// benchThroughputSide is a benchkit side that sends benchThroughputSize
// bytes from client to server on a new stream (benchSendOnce).
func benchThroughputSide(name string, client, server host.Host, chunk []byte) benchkit.Side {
	ctx := context.Background()
	return benchkit.Side{Name: name, Op: func() error {
		return benchSendOnce(ctx, client, server.ID(), chunk, benchThroughputSize)
	}}
}

// BenchmarkThroughput64MiB measures bulk transfer on one stream over an
// existing QUIC connection on 127.0.0.1: each op opens a stream, sends
// 64 MiB in 1 MiB writes to a handler that discards it, and waits for the
// handler's 1-byte ack after CloseWrite, so every byte has arrived when the
// op ends. *-MB/s is each side's median stream throughput; ratio-* is
// realmnet's time over the reference's per round (below 1: realmnet
// faster). The first op of each side (not timed) grows QUIC's congestion
// and flow-control windows.
//
//   - vs-libp2p: realmnet against two stock go-libp2p hosts. Target:
//     ratio-median ≤ 1.1.
//   - vs-quic-go-raw: realmnet against quic-go used directly (no libp2p:
//     a self-signed TLS 1.3 certificate, one connection, one stream per
//     op), with the quic.Config values of go-libp2p's quicreuse (10 MiB
//     stream and 15 MiB connection receive windows, 256 streams, 15 s
//     keep-alive, datagrams on), which realmnet's transport uses: the
//     physical limit of the transport on this machine. Target: keep
//     ratio-median ≤ 1.05 (it was 1/0.99 before the suite existed).
//
// Each sub-benchmark runs at least 6 rounds of one transfer per side.
func BenchmarkThroughput64MiB(b *testing.B) {
	rc, rs := benchRealmnetPair(b, benchThroughputProto, benchDiscardHandler)
	chunk := bytes.Repeat([]byte{0x5a}, benchThroughputChunk)
	realmnet := benchThroughputSide("realmnet", rc, rs, chunk)
	cfg := benchkit.Config{Block: 1, MinRounds: 6, Bytes: benchThroughputSize}
	b.Run("vs-libp2p", func(b *testing.B) {
		lc, ls := benchLibp2pPair(b, benchThroughputProto, benchDiscardHandler)
		benchkit.Compare(b, realmnet, benchThroughputSide("libp2p", lc, ls, chunk), cfg)
	})
	b.Run("vs-quic-go-raw", func(b *testing.B) {
		raw := benchRawQUIC(b)
		benchkit.Compare(b, realmnet, benchkit.Side{Name: "quic-go-raw", Op: func() error {
			return raw.send(chunk, benchThroughputSize)
		}}, cfg)
	})
}

// BenchmarkPooledVsFreshConn measures what connection pooling saves on a
// short request: a 1 KiB echo (benchEchoOnce) from a realmnet node to a
// realmnet server on 127.0.0.1.
//
//   - "fresh-conn": connect (QUIC handshake, libp2p TLS, identify, the
//     admission pipeline), one echo stream, close the connection — what a
//     client without a pool does per request. Waiting until both ends
//     have seen the close is not timed.
//   - "pooled": one echo stream on a connection that stays open (another
//     client node, connected once).
//
// Interleaved (benchkit.Compare, blocks of one request). ratio-* is
// fresh-conn/pooled per round, the factor pooling gains: the
// websocket-pooling report among the project's inputs claims 10–15× for
// WebSocket; 17–22× was measured here before this suite.
func BenchmarkPooledVsFreshConn(b *testing.B) {
	server := testnode.New(b)
	server.SetStreamHandler(benchEchoProto, testnode.Echo)
	pooled, fresh := testnode.New(b), testnode.New(b)
	ctx := context.Background()
	sid := server.ID()
	msg := bytes.Repeat([]byte{0xab}, benchEchoSize)
	reply := make([]byte, benchEchoSize)
	for _, c := range []*node.Node{pooled, fresh} {
		cctx, cancel := context.WithTimeout(ctx, benchSetupTimeout)
		err := c.Connect(cctx, server.AddrInfo())
		cancel()
		if err != nil {
			b.Fatalf("connect: %v", err)
		}
		benchWarmEcho(b, c.Host(), server.Host(), msg, reply)
	}
	// apart waits until neither end of fresh's connection sees the other.
	apart := func() error {
		deadline := time.Now().Add(benchSetupTimeout)
		for fresh.Host().Network().Connectedness(sid) == network.Connected ||
			len(server.Host().Network().ConnsToPeer(fresh.ID())) > 0 {
			if time.Now().After(deadline) {
				return errors.New("fresh client and server still connected")
			}
			time.Sleep(50 * time.Microsecond)
		}
		return nil
	}
	if err := fresh.Host().Network().ClosePeer(sid); err != nil {
		b.Fatal(err)
	}
	if err := apart(); err != nil {
		b.Fatal(err)
	}
	benchkit.Compare(b,
		benchkit.Side{
			Name: "fresh-conn",
			Op: func() error {
				if err := fresh.Connect(ctx, server.AddrInfo()); err != nil {
					return fmt.Errorf("connect: %w", err)
				}
				if err := benchEchoOnce(ctx, fresh.Host(), sid, msg, reply); err != nil {
					return err
				}
				return fresh.Host().Network().ClosePeer(sid)
			},
			After: apart,
		},
		benchEchoSide("pooled", pooled.Host(), server.Host(), msg, reply),
		benchkit.Config{Block: 1, MinRounds: 50})
}
