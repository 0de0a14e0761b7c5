package realm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/realmnet/realmnet/internal/benchkit"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

// These benchmarks measure realm operations next to the plain libp2p
// operation they build on, interleaved in one loop (internal/benchkit) on
// 127.0.0.1, and report both and their ratio with its spread:
//
//   - BenchmarkJoinToFirstMember: JoinRealm until the first member is
//     authenticated, next to the plain operation of the same kind: a
//     connect + identify when the join connects too, a stream round trip
//     when both run on an open connection.
//   - BenchmarkRealmStreamEcho: a 1 KiB echo on a new realm stream, next to
//     the same echo on a new plain host stream over the same connection.
//   - BenchmarkRealmRequest: p50 and p99 of a 1 KiB request/response on a
//     new realm stream, next to the same on a stock go-libp2p host pair.

const (
	benchRealmName = "bench"
	benchEchoProto = protocol.ID("/bench/echo/1.0.0")
	benchEchoSize  = 1 << 10
	// benchWait bounds every wait of the benchmarks' setup and teardown.
	benchWait = 10 * time.Second
)

// benchWaitUntil polls cond every millisecond until it holds, or fails b
// after benchWait.
func benchWaitUntil(b *testing.B, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(benchWait)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// benchDisconnect closes every connection between x and y and waits until
// both sides see it.
func benchDisconnect(b *testing.B, x, y *node.Node) {
	b.Helper()
	// Closed again while waiting: a dial already under way when the peer is
	// closed (a multipath standby path, a realm reconnecting a member in
	// its grace) may connect them again; the benchmark needs them apart.
	benchWaitUntil(b, "disconnected", func() bool {
		if x.Host().Network().Connectedness(y.ID()) == network.Connected {
			_ = x.Host().Network().ClosePeer(y.ID())
			return false
		}
		return y.Host().Network().Connectedness(x.ID()) != network.Connected
	})
}

// BenchmarkJoinToFirstMember measures how long a node takes from JoinRealm
// to having its first authenticated member: node A is in the realm (with a
// PSK); per op, node B joins it and the op ends when B's realm has A as an
// authenticated member (WaitMembers); B then leaves (not timed). Each
// variant compares the join with the plain libp2p operation of the same
// kind, interleaved (benchkit.Compare, blocks of one op), ratio-* =
// join/reference per round:
//
//   - connected: B is already connected to A, identify done; the join is
//     the handshake on that connection (a new stream: hello, reply,
//     finish, end of stream — 1.5 round trips — and the membership
//     bookkeeping). Reference "echo": a new host stream on the same
//     connection with a 1 KiB echo (one round trip after the stream's
//     lazy negotiation): what any request on an open connection costs.
//   - withPeers: B is not connected and joins with Peers(A); the join
//     includes the connection (QUIC, identify) and the handshake.
//     Reference "connect": a plain host.Connect to A from the same
//     disconnected state (QUIC handshake and identify).
//
// Anomalies are counted, not fatal, so the numbers stay usable while they
// exist (each one is a bug, see the counters):
//   - stuck-joins: B had no member joinStuckAfter after joining (a failed
//     handshake is not retried); the op then counts joinStuckAfter (the
//     medians are robust to a few).
//   - stale-members: A still listed B as a member after B's goodbye was
//     acknowledged.
//   - leave-errors: B's Leave returned an error although it had time.
//
// After a stuck join or a stale member A leaves and joins again (not timed),
// so every op starts from the same state.
//
// Target: join-ns/op ≤ 50 ms in both variants.
func BenchmarkJoinToFirstMember(b *testing.B) {
	b.Run("connected", func(b *testing.B) { benchJoin(b, false) })
	b.Run("withPeers", func(b *testing.B) { benchJoin(b, true) })
}

// joinStuckAfter is how long a join may take before it counts as stuck
// (a join normally takes a few milliseconds).
const joinStuckAfter = 3 * time.Second

func benchJoin(b *testing.B, withPeers bool) {
	a, bn := testnode.New(b), testnode.New(b)
	ra := join(b, a, benchRealmName, realm.PSK(testPSK))
	a.SetStreamHandler(benchEchoProto, testnode.Echo)
	opts := []realm.Option{realm.PSK(testPSK)}
	if withPeers {
		opts = append(opts, realm.Peers(a.AddrInfo()))
	}
	ctx := context.Background()
	var stuck, stale, leaveErrors int
	// refusedByB runs f and waits until B (in no realm) has refused the
	// handshake f makes A start: A tries every peer it identifies, and every
	// connected peer when its realm starts.
	refusedByB := func(f func() error) error {
		refused := bn.RealmStats().AuthUnknownRealm
		if err := f(); err != nil {
			return err
		}
		benchWaitUntil(b, "B refused A's handshake", func() bool { return bn.RealmStats().AuthUnknownRealm > refused })
		return nil
	}
	connectB := func() error {
		return bn.Host().Connect(ctx, peer.AddrInfo{ID: a.ID(), Addrs: a.Addrs()})
	}
	// resetA gives A a fresh realm, without B.
	resetA := func() {
		lctx, cancel := context.WithTimeout(ctx, benchWait)
		_ = ra.Leave(lctx) // a goodbye to B, who is in no realm, is refused
		cancel()
		start := func() error { ra = join(b, a, benchRealmName, realm.PSK(testPSK)); return nil }
		if bn.Host().Network().Connectedness(a.ID()) == network.Connected {
			_ = refusedByB(start)
		} else {
			_ = start()
		}
	}
	// ready brings B to the state the variant's ops start from.
	ready := func() error {
		connected := bn.Host().Network().Connectedness(a.ID()) == network.Connected
		switch {
		case withPeers && connected:
			benchDisconnect(b, bn, a)
		case !withPeers && !connected:
			return refusedByB(connectB)
		}
		return nil
	}

	var rb *realm.Realm
	var joined bool
	var leaveStart time.Time
	joinSide := benchkit.Side{
		Name:   "join",
		Before: ready,
		Op: func() error {
			var err error
			rb, err = bn.JoinRealm(ctx, benchRealmName, opts...)
			if err != nil {
				return fmt.Errorf("join: %w", err)
			}
			wctx, cancel := context.WithTimeout(ctx, joinStuckAfter)
			err = rb.WaitMembers(wctx, 1)
			cancel()
			joined = err == nil
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("wait for the first member: %w", err)
			}
			return nil
		},
		After: func() error {
			if joined {
				if _, ok := rb.Member(a.ID()); !ok {
					return fmt.Errorf("first member is %v, want A", rb.Members())
				}
			} else {
				stuck++
				_, aHasB := ra.Member(bn.ID())
				b.Logf("stuck join: B has no member after %v (A lists B: %v; B: %+v; A: %+v)", joinStuckAfter, aHasB, bn.RealmStats(), a.RealmStats())
			}
			lctx, cancel := context.WithTimeout(ctx, benchWait)
			leaveStart = time.Now()
			err := rb.Leave(lctx)
			cancel()
			if err != nil {
				leaveErrors++
				b.Logf("leave: %v", err)
			}
			if !memPollFor(time.Second, func() bool { _, ok := ra.Member(bn.ID()); return !ok }) {
				if joined { // (after a stuck join, A lists B and B does not list A)
					stale++
					if info, ok := ra.Member(bn.ID()); ok && stale == 1 {
						b.Logf("stale member: A (re-)admitted B %v after B began to leave", info.Since.Sub(leaveStart))
					}
				}
				resetA()
			}
			return nil
		},
	}
	var ref benchkit.Side
	if withPeers {
		var refused uint64
		ref = benchkit.Side{
			Name: "connect",
			Before: func() error {
				if err := ready(); err != nil {
					return err
				}
				refused = bn.RealmStats().AuthUnknownRealm
				return nil
			},
			Op: connectB,
			After: func() error {
				// A starts a handshake with every peer it identifies.
				benchWaitUntil(b, "B refused A's handshake", func() bool { return bn.RealmStats().AuthUnknownRealm > refused })
				return nil
			},
		}
	} else {
		msg := bytes.Repeat([]byte{0xab}, benchEchoSize)
		reply := make([]byte, benchEchoSize)
		if err := ready(); err != nil {
			b.Fatal(err)
		}
		if err := bn.Host().Peerstore().AddProtocols(a.ID(), benchEchoProto); err != nil {
			b.Fatal(err)
		}
		ref = benchkit.Side{
			Name:   "echo",
			Before: ready,
			Op: func() error {
				s, err := bn.Host().NewStream(ctx, a.ID(), benchEchoProto)
				if err != nil {
					return err
				}
				return benchEchoOnce(s, msg, reply)
			},
		}
	}
	res := benchkit.Compare(b, joinSide, ref, benchkit.Config{Block: 1, MinRounds: 20})
	b.ReportMetric(res.A.NsPerOp/1e6, "join-ms/op")
	b.ReportMetric(res.B.NsPerOp/1e6, ref.Name+"-ms/op")
	b.ReportMetric(float64(stuck), "stuck-joins")
	b.ReportMetric(float64(stale), "stale-members")
	b.ReportMetric(float64(leaveErrors), "leave-errors")
}

// benchEchoPair makes two nodes that are members of one realm (with a PSK)
// and both serve benchEchoProto, inside the realm and on the host.
func benchEchoPair(b *testing.B) (client *node.Node, rc *realm.Realm, server *node.Node) {
	b.Helper()
	server, client = testnode.New(b), testnode.New(b)
	rs := join(b, server, benchRealmName, realm.PSK(testPSK))
	rc = join(b, client, benchRealmName, realm.PSK(testPSK), realm.Peers(server.AddrInfo()))
	waitMembers(b, rs, 1)
	waitMembers(b, rc, 1)
	if err := rs.SetStreamHandler(benchEchoProto, testnode.Echo); err != nil {
		b.Fatal(err)
	}
	server.SetStreamHandler(benchEchoProto, testnode.Echo)
	// The host handler was set after identify: tell the client's peerstore,
	// so the plain stream negotiates lazily as after identify.
	if err := client.Host().Peerstore().AddProtocols(server.ID(), benchEchoProto); err != nil {
		b.Fatal(err)
	}
	return client, rc, server
}

// benchEchoOnce writes msg on s, closes the write side, reads the echo into
// reply (len(msg) bytes) and closes s.
func benchEchoOnce(s network.Stream, msg, reply []byte) error {
	if _, err := s.Write(msg); err != nil {
		_ = s.Reset()
		return fmt.Errorf("write: %w", err)
	}
	if err := s.CloseWrite(); err != nil {
		_ = s.Reset()
		return fmt.Errorf("close write: %w", err)
	}
	if n, err := io.ReadFull(s, reply); err != nil {
		_ = s.Reset()
		return fmt.Errorf("read echo (%d of %d bytes): %w", n, len(msg), err)
	}
	return s.Close()
}

// benchStreamSide is a benchkit side that opens a stream with open and
// runs one 1 KiB echo on it; the first echo (a warm-up) is checked.
func benchStreamSide(b *testing.B, name string, open func(context.Context) (network.Stream, error)) benchkit.Side {
	b.Helper()
	msg := bytes.Repeat([]byte{0xab}, benchEchoSize)
	reply := make([]byte, benchEchoSize)
	op := func() error {
		s, err := open(context.Background())
		if err != nil {
			return fmt.Errorf("%s stream: %w", name, err)
		}
		return benchEchoOnce(s, msg, reply)
	}
	if err := op(); err != nil {
		b.Fatalf("warm-up: %v", err)
	}
	if !bytes.Equal(reply, msg) {
		b.Fatal("warm-up: the echo differs from the message")
	}
	return benchkit.Side{Name: name, Op: op}
}

// BenchmarkRealmStreamEcho measures one short request on an existing,
// authenticated connection between two members on 127.0.0.1: open a stream
// for /bench/echo/1.0.0, write 1 KiB, CloseWrite, read the 1 KiB echo,
// close. Sides, interleaved (benchkit.Compare, blocks of 8 echoes, each
// echo also timed on its own for p50/p99):
//
//   - realm: the stream is a realm stream (Realm.NewStream: the generic
//     realm protocol plus a header frame, dispatched by handle to the
//     realm's handler, charged to the realm's resource scope).
//   - plain: the stream is a host stream (Host().NewStream) to a host
//     handler, on the same connection.
//
// ratio-* is realm/plain per round. Target: ratio-median ≤ 1.1.
func BenchmarkRealmStreamEcho(b *testing.B) {
	client, rc, server := benchEchoPair(b)
	sid := server.ID()
	benchkit.Compare(b,
		benchStreamSide(b, "realm", func(ctx context.Context) (network.Stream, error) {
			return rc.NewStream(ctx, sid, benchEchoProto)
		}),
		benchStreamSide(b, "plain", func(ctx context.Context) (network.Stream, error) {
			return client.Host().NewStream(ctx, sid, benchEchoProto)
		}),
		benchkit.Config{Block: 8, Warmup: 50, MinRounds: 100, Allocs: true, Latencies: true})
}

// BenchmarkRealmRequest measures the latency distribution of a 1 KiB
// request/response over a new realm stream (the op of
// BenchmarkRealmStreamEcho's realm side, between two members on
// 127.0.0.1), next to the same 1 KiB echo on a new stream between two
// stock go-libp2p hosts (testkit.StockHost, "libp2p"), interleaved
// (benchkit.Compare, blocks of 8, every request timed on its own).
// Reported: realm-p50-us, realm-p99-us, realm-p99/p50 and the same for
// libp2p (nearest rank over every request of the side); ratio-* compares
// the block medians, realm/libp2p.
//
// Target: realm-p99/p50 ≤ 3.
func BenchmarkRealmRequest(b *testing.B) {
	_, rc, server := benchEchoPair(b)
	sid := server.ID()
	lc, ls := testkit.StockHost(b), testkit.StockHost(b)
	ls.SetStreamHandler(benchEchoProto, testnode.Echo)
	ctx, cancel := context.WithTimeout(context.Background(), benchWait)
	defer cancel()
	if err := lc.Connect(ctx, peer.AddrInfo{ID: ls.ID(), Addrs: ls.Addrs()}); err != nil {
		b.Fatal(err)
	}
	benchkit.Compare(b,
		benchStreamSide(b, "realm", func(ctx context.Context) (network.Stream, error) {
			return rc.NewStream(ctx, sid, benchEchoProto)
		}),
		benchStreamSide(b, "libp2p", func(ctx context.Context) (network.Stream, error) {
			return lc.NewStream(ctx, ls.ID(), benchEchoProto)
		}),
		benchkit.Config{Block: 8, Warmup: 50, MinRounds: 250, Latencies: true})
}

// benchRequestProto is BenchmarkRealmRequestResponse's request protocol.
const benchRequestProto = "/bench/request/1.0.0"

// BenchmarkRealmRequestResponse measures a 1 KiB request answered with
// itself (Realm.Request to a Realm.SetRequestHandler handler) against the
// same 1 KiB echo on a plain realm stream (Realm.NewStream, the realm side
// of BenchmarkRealmStreamEcho), between two members on 127.0.0.1,
// interleaved (benchkit.Compare, blocks of 8, every op timed on its own).
// ratio-* is request/stream per round. Target: ratio-median ≤ 1.1.
func BenchmarkRealmRequestResponse(b *testing.B) {
	_, rc, server := benchEchoPair(b)
	sid := server.ID()
	if err := server.Realm(benchRealmName).SetRequestHandler(benchRequestProto, func(_ context.Context, _ peer.ID, req []byte) ([]byte, error) {
		return req, nil
	}); err != nil {
		b.Fatal(err)
	}
	msg := bytes.Repeat([]byte{0xab}, benchEchoSize)
	request := func() error {
		resp, err := rc.Request(context.Background(), sid, benchRequestProto, msg)
		if err != nil {
			return err
		}
		if len(resp) != len(msg) {
			return fmt.Errorf("response of %d bytes, want %d", len(resp), len(msg))
		}
		return nil
	}
	if err := request(); err != nil {
		b.Fatalf("warm-up: %v", err)
	}
	benchkit.Compare(b,
		benchkit.Side{Name: "request", Op: request},
		benchStreamSide(b, "stream", func(ctx context.Context) (network.Stream, error) {
			return rc.NewStream(ctx, sid, benchEchoProto)
		}),
		benchkit.Config{Block: 8, Warmup: 50, MinRounds: 100, Allocs: true, Latencies: true})
}
