package birthday

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// loopback opens a UDP socket on 127.0.0.1 with a random port.
func loopback(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func addrOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(ents)
}

type outcome struct {
	pair  Pair
	stats Stats
	err   error
}

// both runs Hard and Easy concurrently.
func both(ctx context.Context, hc HardConfig, ec EasyConfig) (hard, easy outcome) {
	ch := make(chan outcome)
	go func() {
		var o outcome
		o.pair, o.stats, o.err = Hard(ctx, hc)
		ch <- o
	}()
	easy.pair, easy.stats, easy.err = Easy(ctx, ec)
	hard = <-ch
	return hard, easy
}

// TestLoopback runs both sides on 127.0.0.1, without NAT (so every probe
// of the hard side reaches the easy side): they agree on one pair, which
// works both ways; every socket but the pair's and the caller's is closed;
// no goroutine is left. The easy side probes only the hard side's own
// socket (a hint), so that no random port of the machine gets a datagram.
func TestLoopback(t *testing.T) {
	defer goleak.VerifyNone(t)
	hardConn, easyConn := loopback(t), loopback(t)
	fds := openFDs(t)
	tok := NewToken()
	hard, easy := both(t.Context(),
		HardConfig{Token: tok, Easy: addrOf(easyConn), Sockets: 8, Conn: hardConn, LocalAddr: netip.MustParseAddr("127.0.0.1"), Timeout: 10 * time.Second},
		EasyConfig{Token: tok, Conn: easyConn, Hard: netip.MustParseAddr("127.0.0.1"), Hints: []uint16{addrOf(hardConn).Port()}, Probes: 1, Timeout: 10 * time.Second})
	if hard.err != nil || easy.err != nil {
		t.Fatalf("hard: %v; easy: %v", hard.err, easy.err)
	}
	hp, ep := hard.pair, easy.pair
	t.Logf("hard side: socket %d %v, stats %+v; easy side: %v, stats %+v", hp.Socket, hp.Local, hard.stats, ep.Local, easy.stats)
	if hp.Remote != addrOf(easyConn) || ep.Remote != hp.Local || ep.Local != addrOf(easyConn) || ep.Conn != easyConn {
		t.Fatalf("the sides disagree: hard %v <-> %v, easy %v <-> %v", hp.Local, hp.Remote, ep.Local, ep.Remote)
	}
	if (hp.Socket == 0) != (hp.Conn == hardConn) {
		t.Fatalf("hard side: socket %d is %v, HardConfig.Conn is %v", hp.Socket, hp.Local, addrOf(hardConn))
	}
	if hp.Conn != hardConn {
		defer hp.Conn.Close()
	}
	// The stage ends at the first pair, maybe before the last probes.
	if hard.stats.Probes < 1 || hard.stats.Probes > 8 || easy.stats.Probes != 1 {
		t.Errorf("probes: hard %d, easy %d; want 1 to 8, and 1", hard.stats.Probes, easy.stats.Probes)
	}
	// The open sockets: the test's two, and the pair's when Hard opened it.
	want := fds
	if hp.Conn != hardConn {
		want++
	}
	if got := openFDs(t); got != want {
		t.Errorf("%d file descriptors open after the stage, want %d (%d before)", got, want, fds)
	}
	// The pair works both ways, and its sockets have no deadline left.
	for _, d := range []struct {
		from, to *net.UDPConn
		at       netip.AddrPort
	}{{easyConn, hp.Conn, ep.Remote}, {hp.Conn, easyConn, hp.Remote}} {
		if _, err := d.from.WriteToUDPAddrPort([]byte("data"), d.at); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		for {
			n, _, err := d.to.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatal(err)
			}
			if string(buf[:n]) == "data" {
				break // before it, maybe a late confirm or reply of the stage
			}
		}
	}
}

// TestTokenMismatch: sides with different tokens ignore each other and
// return ErrNoPair at their timeout, having answered nothing.
func TestTokenMismatch(t *testing.T) {
	hardConn, easyConn := loopback(t), loopback(t)
	start := time.Now()
	hard, easy := both(t.Context(),
		HardConfig{Token: NewToken(), Easy: addrOf(easyConn), Sockets: 4, Conn: hardConn, LocalAddr: netip.MustParseAddr("127.0.0.1"), Timeout: 300 * time.Millisecond},
		EasyConfig{Token: NewToken(), Conn: easyConn, Hard: netip.MustParseAddr("127.0.0.1"), Hints: []uint16{addrOf(hardConn).Port()}, Probes: 1, Timeout: 300 * time.Millisecond})
	for _, o := range []outcome{hard, easy} {
		if !errors.Is(o.err, ErrNoPair) {
			t.Errorf("err %v, want ErrNoPair", o.err)
		}
		if o.stats.Received != 0 || o.stats.Sent != o.stats.Probes {
			t.Errorf("stats %+v: want nothing received and nothing but probes sent", o.stats)
		}
	}
	if hard.stats.Ignored != 1 || easy.stats.Ignored != 4 {
		t.Errorf("ignored: hard %d, easy %d; want 1 (the easy side's probe) and 4 (the hard side's)", hard.stats.Ignored, easy.stats.Ignored)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a 300 ms stage took %v", d)
	}
}

// TestCancel: a stage returns soon after its context ends, with the
// context's error.
func TestCancel(t *testing.T) {
	sink, easyConn := loopback(t), loopback(t)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, st, err := Easy(ctx, EasyConfig{Token: NewToken(), Conn: easyConn, Hard: netip.MustParseAddr("127.0.0.1"), Hints: []uint16{addrOf(sink).Port()}, Probes: 1})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the context's", err)
	}
	if d := time.Since(start); d > 5*time.Second || st.Elapsed > d {
		t.Fatalf("returned after %v (Elapsed %v) for a 100 ms context", d, st.Elapsed)
	}
}

// TestConfigErrors: invalid configurations are refused before anything is
// sent.
func TestConfigErrors(t *testing.T) {
	c := loopback(t)
	ip := netip.MustParseAddr("127.0.0.1")
	ap := addrOf(c)
	for name, cfg := range map[string]HardConfig{
		"no easy address": {},
		"port 0":          {Easy: netip.AddrPortFrom(ip, 0)},
		"sockets":         {Easy: ap, Sockets: MaxSockets + 1},
		"rate":            {Easy: ap, Rate: MaxRate + 1},
		"timeout":         {Easy: ap, Timeout: -time.Second},
	} {
		if _, _, err := Hard(t.Context(), cfg); err == nil || errors.Is(err, ErrNoPair) {
			t.Errorf("Hard, %s: %v", name, err)
		}
	}
	for name, cfg := range map[string]EasyConfig{
		"no conn":       {Hard: ip},
		"no hard":       {Conn: c},
		"range":         {Conn: c, Hard: ip, MinPort: 2000, MaxPort: 1000},
		"hint 0":        {Conn: c, Hard: ip, Hints: []uint16{0}},
		"fewer":         {Conn: c, Hard: ip, Hints: []uint16{1, 2}, Probes: 1},
		"more than all": {Conn: c, Hard: ip, MinPort: 1000, MaxPort: 1009, Hints: []uint16{1005, 7}, Probes: 12},
	} {
		if _, _, err := Easy(t.Context(), cfg); err == nil || errors.Is(err, ErrNoPair) {
			t.Errorf("Easy, %s: %v", name, err)
		}
	}
}
