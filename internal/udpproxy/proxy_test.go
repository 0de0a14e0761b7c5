package udpproxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testkit.LeakOptions()...)
}

// udpServer is a loopback UDP server that records the source address of every
// datagram and, if echo is set, sends it back.
type udpServer struct {
	conn *net.UDPConn
	wg   sync.WaitGroup

	mu      sync.Mutex
	sources []string // source address per datagram received
}

func startServer(t *testing.T, echo bool) *udpServer {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &udpServer{conn: conn}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 70000)
		for {
			n, src, err := conn.ReadFromUDP(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			s.mu.Lock()
			s.sources = append(s.sources, src.String())
			s.mu.Unlock()
			if echo {
				conn.WriteToUDP(buf[:n], src)
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		s.wg.Wait()
	})
	return s
}

func (s *udpServer) addr() *net.UDPAddr { return s.conn.LocalAddr().(*net.UDPAddr) }

func (s *udpServer) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sources)
}

func startProxy(t *testing.T, target *net.UDPAddr) *Proxy {
	t.Helper()
	p, err := New("127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dialProxy(t *testing.T, p *Proxy) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends msg on c and waits up to timeout for the identical echo. It
// returns the round-trip time, or false if nothing matching arrived in time.
func roundTrip(t *testing.T, c *net.UDPConn, msg []byte, timeout time.Duration) (time.Duration, bool) {
	t.Helper()
	start := time.Now()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 70000)
	deadline := start.Add(timeout)
	for {
		c.SetReadDeadline(deadline)
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return 0, false
			}
			t.Fatal(err)
		}
		if bytes.Equal(buf[:n], msg) {
			return time.Since(start), true
		}
	}
}

// minRTT returns the smallest of n echo round trips of small datagrams.
func minRTT(t *testing.T, c *net.UDPConn, n int) time.Duration {
	t.Helper()
	best := time.Duration(math.MaxInt64)
	for i := range n {
		rtt, ok := roundTrip(t, c, fmt.Appendf(nil, "ping %d", i), 2*time.Second)
		if !ok {
			t.Fatalf("ping %d: no echo", i)
		}
		best = min(best, rtt)
	}
	return best
}

// waitFor polls cond every 5 ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestEcho(t *testing.T) {
	srv := startServer(t, true)
	p := startProxy(t, srv.addr())
	c := dialProxy(t, p)

	sizes := []int{1, 100, 1200, 9000, 60000}
	for i, size := range sizes {
		msg := make([]byte, size)
		rand.Read(msg)
		msg[0] = byte(i)
		if _, ok := roundTrip(t, c, msg, 2*time.Second); !ok {
			t.Fatalf("datagram of %d bytes: no intact echo", size)
		}
	}
	// Counters are bumped after each write returns, possibly just after the
	// echo arrives, so wait for them to settle.
	want := uint64(len(sizes))
	waitFor(t, 2*time.Second, "counters", func() bool {
		st := p.Stats()
		return st.ToTarget == want && st.ToClient == want
	})
	st := p.Stats()
	if st.ToTarget != want || st.ToClient != want || st.Dropped != 0 || st.Oversized != 0 || st.Mappings != 1 {
		t.Errorf("Stats() = %+v, want %d forwarded each way, nothing dropped, 1 mapping", st, want)
	}
}

func TestDistinctUpstreamPerClient(t *testing.T) {
	srv := startServer(t, true)
	p := startProxy(t, srv.addr())
	c1, c2 := dialProxy(t, p), dialProxy(t, p)

	for round := range 2 {
		for i, c := range []*net.UDPConn{c1, c2} {
			msg := fmt.Appendf(nil, "client %d round %d", i, round)
			if _, ok := roundTrip(t, c, msg, 2*time.Second); !ok {
				t.Fatalf("client %d round %d: no echo", i, round)
			}
		}
	}
	src := srv.received()
	if len(src) != 4 {
		t.Fatalf("server saw %d datagrams, want 4: %v", len(src), src)
	}
	// Each client keeps its own upstream address; the two differ, and none
	// is the proxy's listen address or a client's own address.
	if src[0] != src[2] || src[1] != src[3] || src[0] == src[1] {
		t.Errorf("upstream source addresses %v: want two stable, distinct addresses (a b a b)", src)
	}
	for _, a := range []string{p.Addr().String(), c1.LocalAddr().String(), c2.LocalAddr().String()} {
		if slices.Contains(src, a) {
			t.Errorf("server saw source %s, which is not a dedicated upstream socket", a)
		}
	}
	if m := p.Stats().Mappings; m != 2 {
		t.Errorf("Stats().Mappings = %d, want 2", m)
	}
}

func TestDelay(t *testing.T) {
	srv := startServer(t, true)
	p := startProxy(t, srv.addr())
	c := dialProxy(t, p)

	base := minRTT(t, c, 5)
	const d = 20 * time.Millisecond
	p.SetDelay(d)
	delayed := minRTT(t, c, 5)
	t.Logf("min RTT without delay %v, with SetDelay(%v) %v", base, d, delayed)
	// Each direction holds a datagram for at least d, so the minimum RTT
	// grows by at least 2d (the 1 ms slack covers jitter in the baseline).
	if delayed < 2*d || delayed-base < 2*d-time.Millisecond {
		t.Errorf("RTT with delay %v = %v (baseline %v), want an increase of >= %v", d, delayed, base, 2*d)
	}
	if delayed-base > 2*d+200*time.Millisecond {
		t.Errorf("RTT grew by %v with delay %v, want < %v", delayed-base, d, 2*d+200*time.Millisecond)
	}

	p.SetDelay(0)
	if rtt := minRTT(t, c, 3); rtt >= 2*d {
		t.Errorf("RTT after SetDelay(0) = %v, want < %v", rtt, 2*d)
	}
}

func TestDelayPreservesOrder(t *testing.T) {
	srv := startServer(t, true)
	p := startProxy(t, srv.addr())
	p.SetDelay(10 * time.Millisecond)
	c := dialProxy(t, p)

	const n = 100
	for i := range n {
		if _, err := c.Write(binary.BigEndian.AppendUint32(nil, uint32(i))); err != nil {
			t.Fatal(err)
		}
		if i%10 == 9 {
			time.Sleep(time.Millisecond)
		}
	}
	buf := make([]byte, 16)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range n {
		k, err := c.Read(buf)
		if err != nil {
			t.Fatalf("after %d echoes: %v", i, err)
		}
		if got := binary.BigEndian.Uint32(buf[:k]); got != uint32(i) {
			t.Fatalf("echo %d carries sequence number %d: reordered or lost", i, got)
		}
	}
}

func TestDropRate(t *testing.T) {
	srv := startServer(t, false)
	p := startProxy(t, srv.addr())
	c := dialProxy(t, p)

	for _, bad := range []float64{-0.1, 1.5, math.NaN(), math.Inf(1)} {
		err := p.SetDropRate(bad)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprint(bad)) {
			t.Errorf("SetDropRate(%v) = %v, want an error naming the value", bad, err)
		}
	}
	if err := p.SetDropRate(0.5); err != nil {
		t.Fatal(err)
	}
	const n = 400
	for i := range n {
		if _, err := c.Write(binary.BigEndian.AppendUint32(nil, uint32(i))); err != nil {
			t.Fatal(err)
		}
		if i%10 == 9 {
			time.Sleep(time.Millisecond) // avoid overrunning socket buffers
		}
	}
	waitFor(t, 5*time.Second, "every datagram forwarded or dropped", func() bool {
		st := p.Stats()
		return st.ToTarget+st.Dropped == n && uint64(len(srv.received())) == st.ToTarget
	})
	st := p.Stats()
	frac := float64(st.Dropped) / n
	t.Logf("dropped %d of %d (%.1f%%)", st.Dropped, n, 100*frac)
	if frac < 0.25 || frac > 0.75 {
		t.Errorf("dropped %.1f%% of datagrams at rate 0.5, want 25%%..75%%", 100*frac)
	}

	// Rate 0 restores lossless forwarding.
	if err := p.SetDropRate(0); err != nil {
		t.Fatal(err)
	}
	before := p.Stats().Dropped
	for i := range 20 {
		c.Write([]byte{byte(i)})
	}
	waitFor(t, 5*time.Second, "20 more datagrams", func() bool { return p.Stats().ToTarget == st.ToTarget+20 })
	if after := p.Stats().Dropped; after != before {
		t.Errorf("dropped %d datagrams at rate 0", after-before)
	}
}

func TestBlackhole(t *testing.T) {
	srv := startServer(t, true)
	p := startProxy(t, srv.addr())
	c := dialProxy(t, p)

	if _, ok := roundTrip(t, c, []byte("before"), 2*time.Second); !ok {
		t.Fatal("no echo before blackhole")
	}
	p.SetBlackhole(true)
	for i := range 5 {
		if _, ok := roundTrip(t, c, fmt.Appendf(nil, "hole %d", i), 50*time.Millisecond); ok {
			t.Fatalf("datagram %d passed the blackhole", i)
		}
	}
	if got := len(srv.received()); got != 1 {
		t.Errorf("server received %d datagrams, want 1 (only the one before the blackhole)", got)
	}
	if st := p.Stats(); st.Dropped != 5 {
		t.Errorf("Stats().Dropped = %d, want 5", st.Dropped)
	}
	p.SetBlackhole(false)
	if _, ok := roundTrip(t, c, []byte("after"), 2*time.Second); !ok {
		t.Fatal("no echo after blackhole is lifted")
	}
}

// A one-way blackhole drops the target's replies and passes the client's
// datagrams.
func TestBlackholeToClient(t *testing.T) {
	srv := startServer(t, true)
	p := startProxy(t, srv.addr())
	c := dialProxy(t, p)

	p.SetBlackholeToClient(true)
	for i := range 3 {
		if _, ok := roundTrip(t, c, fmt.Appendf(nil, "one way %d", i), 50*time.Millisecond); ok {
			t.Fatalf("reply %d passed the one-way blackhole", i)
		}
	}
	waitFor(t, 2*time.Second, "3 datagrams at the server, 3 replies dropped", func() bool {
		return len(srv.received()) == 3 && p.Stats().Dropped == 3
	})
	p.SetBlackholeToClient(false)
	if _, ok := roundTrip(t, c, []byte("after"), 2*time.Second); !ok {
		t.Fatal("no echo after the one-way blackhole is lifted")
	}
}

// Datagrams already waiting in a delay queue are dropped by the blackhole.
func TestBlackholeDropsQueued(t *testing.T) {
	srv := startServer(t, true)
	p := startProxy(t, srv.addr())
	c := dialProxy(t, p)

	p.SetDelay(100 * time.Millisecond)
	if _, err := c.Write([]byte("queued")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "datagram read by proxy", func() bool { return p.Stats().Mappings == 1 })
	p.SetBlackhole(true)
	waitFor(t, 2*time.Second, "queued datagram dropped", func() bool { return p.Stats().Dropped == 1 })
	if got := len(srv.received()); got != 0 {
		t.Errorf("server received %d datagrams, want 0", got)
	}
}

func TestOversized(t *testing.T) {
	srv := startServer(t, true)
	p, err := newProxy("127.0.0.1:0", srv.addr(), 1000, MaxMappings)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c := dialProxy(t, p)

	if _, ok := roundTrip(t, c, bytes.Repeat([]byte{'x'}, 1001), 100*time.Millisecond); ok {
		t.Fatal("oversized datagram was forwarded")
	}
	if _, ok := roundTrip(t, c, bytes.Repeat([]byte{'y'}, 1000), 2*time.Second); !ok {
		t.Fatal("datagram at the size limit was not forwarded")
	}
	// Each side counts after its write returns, so the echo may be counted
	// before the datagram that caused it: wait for both.
	waitFor(t, 2*time.Second, "counters", func() bool { st := p.Stats(); return st.ToClient == 1 && st.ToTarget == 1 })
	if st := p.Stats(); st.Oversized != 1 || st.ToTarget != 1 || st.ToClient != 1 {
		t.Errorf("Stats() = %+v, want 1 oversized and 1 forwarded each way", st)
	}
}

func TestMappingLimit(t *testing.T) {
	srv := startServer(t, true)
	p, err := newProxy("127.0.0.1:0", srv.addr(), MaxDatagramSize, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c1, c2, c3 := dialProxy(t, p), dialProxy(t, p), dialProxy(t, p)
	for i, c := range []*net.UDPConn{c1, c2} {
		if _, ok := roundTrip(t, c, []byte("hi"), 2*time.Second); !ok {
			t.Fatalf("client %d: no echo", i)
		}
	}
	if _, ok := roundTrip(t, c3, []byte("hi"), 100*time.Millisecond); ok {
		t.Fatal("third client was served beyond the mapping limit of 2")
	}
	if st := p.Stats(); st.Mappings != 2 || st.Dropped != 1 {
		t.Errorf("Stats() = %+v, want 2 mappings and 1 dropped", st)
	}
}

func TestRefusesNonLoopback(t *testing.T) {
	target := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	for _, listen := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0", "[2001:db8::1]:0", "localhost:0", "nonsense"} {
		p, err := New(listen, target)
		if err == nil {
			p.Close()
			t.Errorf("New(%q, ...) succeeded, want an error", listen)
			continue
		}
		if !strings.Contains(err.Error(), listen) {
			t.Errorf("New(%q, ...) error %q does not name the address", listen, err)
		}
	}
	for _, tgt := range []*net.UDPAddr{
		{IP: net.IPv4(192, 0, 2, 1), Port: 9},
		{IP: net.IPv4zero, Port: 9},
		{IP: net.ParseIP("2001:db8::1"), Port: 9},
		{Port: 9},
	} {
		p, err := New("127.0.0.1:0", tgt)
		if err == nil {
			p.Close()
			t.Errorf("New(..., %v) succeeded, want an error", tgt)
			continue
		}
		if !strings.Contains(err.Error(), tgt.String()) {
			t.Errorf("New(..., %v) error %q does not name the address", tgt, err)
		}
	}
	if _, err := New("127.0.0.1:0", nil); err == nil {
		t.Error("New with a nil target succeeded")
	}
}

func TestMultiaddr(t *testing.T) {
	target := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	p := startProxy(t, target)
	if got, want := p.Multiaddr().String(), fmt.Sprintf("/ip4/127.0.0.1/udp/%d/quic-v1", p.Addr().Port); got != want {
		t.Errorf("Multiaddr() = %s, want %s", got, want)
	}

	p6, err := New("[::1]:0", target)
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer p6.Close()
	if got, want := p6.Multiaddr().String(), fmt.Sprintf("/ip6/::1/udp/%d/quic-v1", p6.Addr().Port); got != want {
		t.Errorf("Multiaddr() = %s, want %s", got, want)
	}
}

func TestCloseTwice(t *testing.T) {
	srv := startServer(t, true)
	ignoreBefore := goleak.IgnoreCurrent()
	p, err := New("127.0.0.1:0", srv.addr())
	if err != nil {
		t.Fatal(err)
	}
	p.SetDelay(time.Second) // leave a datagram queued at Close
	c := dialProxy(t, p)
	c.Write([]byte("pending"))
	waitFor(t, time.Second, "mapping", func() bool { return p.Stats().Mappings == 1 })

	if err := p.Close(); err != nil {
		t.Errorf("first Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// Methods stay usable after Close.
	p.SetBlackhole(true)
	p.SetDelay(0)
	_ = p.Stats()
	_ = p.Addr()
	goleak.VerifyNone(t, ignoreBefore)
}

// selfSignedTLS returns a server config with a fresh ECDSA certificate for
// 127.0.0.1 and a client config that trusts exactly that certificate.
func selfSignedTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "udpproxy test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos:   []string{"test"},
	}
	client = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"test"}}
	return server, client
}

// newTransport returns a QUIC transport on a fresh loopback socket, closed
// (with its goroutines stopped) when the test ends.
func newTransport(t *testing.T) *quic.Transport {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: c}
	t.Cleanup(func() {
		tr.Close()
		c.Close()
	})
	return tr
}

// TestQUIC runs a real QUIC connection through the proxy: a 1 MiB stream
// echo, then SetDelay and a check that quic-go's smoothed RTT follows.
func TestQUIC(t *testing.T) {
	serverTLS, clientTLS := selfSignedTLS(t)
	// Explicit Transports (rather than quic.ListenAddr / quic.DialAddr) so
	// the test owns, and Close stops, quic-go's socket goroutines; a
	// single-use transport only stops once its closed connections expire.
	serverTr := newTransport(t)
	ln, err := serverTr.Listen(serverTLS, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Server: accept one connection and echo every stream on it.
	var serverWG sync.WaitGroup
	serverWG.Add(1)
	go func() {
		defer serverWG.Done()
		conn, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		defer conn.CloseWithError(0, "")
		for {
			str, err := conn.AcceptStream(ctx)
			if err != nil {
				return
			}
			serverWG.Add(1)
			go func() {
				defer serverWG.Done()
				io.Copy(str, str)
				str.Close()
			}()
		}
	}()
	defer func() {
		cancel()
		ln.Close()
		serverWG.Wait()
	}()

	p := startProxy(t, ln.Addr().(*net.UDPAddr))
	clientTr := newTransport(t)
	conn, err := clientTr.Dial(ctx, p.Addr(), clientTLS, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")

	// echo writes msg on a new stream, closes it for writing and reads the
	// echo back concurrently (so flow control cannot deadlock).
	echo := func(msg []byte) error {
		str, err := conn.OpenStreamSync(ctx)
		if err != nil {
			return err
		}
		werr := make(chan error, 1)
		go func() {
			_, err := str.Write(msg)
			if cerr := str.Close(); err == nil {
				err = cerr
			}
			werr <- err
		}()
		got, rerr := io.ReadAll(str)
		if err := <-werr; err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if rerr != nil {
			return fmt.Errorf("read: %w", rerr)
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("echo of %d bytes came back as %d different bytes", len(msg), len(got))
		}
		return nil
	}

	payload := make([]byte, 1<<20)
	rand.Read(payload)
	start := time.Now()
	if err := echo(payload); err != nil {
		t.Fatalf("1 MiB echo: %v", err)
	}
	st := conn.ConnectionStats()
	t.Logf("1 MiB echo took %v; smoothed RTT %v; proxy %+v", time.Since(start), st.SmoothedRTT, p.Stats())

	const d = 30 * time.Millisecond
	p.SetDelay(d)
	deadline := time.Now().Add(10 * time.Second)
	pings := 0
	for conn.ConnectionStats().SmoothedRTT <= 40*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatalf("smoothed RTT still %v after %d pings with delay %v", conn.ConnectionStats().SmoothedRTT, pings, d)
		}
		if err := echo([]byte("ping")); err != nil {
			t.Fatalf("ping %d: %v", pings, err)
		}
		pings++
	}
	st = conn.ConnectionStats()
	t.Logf("with delay %v: smoothed RTT %v, latest RTT %v after %d pings", d, st.SmoothedRTT, st.LatestRTT, pings)
}
