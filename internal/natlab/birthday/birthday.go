// Package birthday is the birthday-paradox stage meant to follow DCUtR in
// the direct-path upgrade, for the one cell of NAT pairs where hole
// punching can never work: one peer behind an endpoint-dependent NAT that
// randomises its ports (the "hard" side: a symmetric NAT, Linux's
// masquerade fully-random), the other behind an endpoint-independent NAT
// that keeps one public port per socket (the "easy" side). Over UDP,
// bounded in packets and in time, it returns a pair of sockets that works
// both ways, or ErrNoPair.
//
// It is not part of the node's upgrade yet, and so gives no direct path:
// the pair is one of the hard side's extra UDP sockets and the easy side's
// QUIC socket, and go-libp2p's QUIC transport (quicreuse) cannot be asked
// to dial from a given socket, nor lets an application read non-QUIC
// datagrams on its own; turning the pair into a path needs a QUIC
// transport of realmnet's own on the hard side's winning socket. The
// package measures what that stage would give (below) and is kept in
// internal/natlab, next to the lab it is measured in.
//
// # Why DCUtR fails there
//
// DCUtR has each side send to the other's observed address. The easy
// side's is right for every destination, so the hard side's packets
// reach it — but they are dropped, because the easy side's NAT filters by
// address and port and the easy side has not sent to the hard side's
// port. And the easy side cannot: the port that the hard side's NAT gives
// the flow towards the easy side is new and random, unrelated to the one
// a relay observed.
//
// # The technique
//
// The hard side (Hard) opens N sockets and sends a probe from each to the
// easy side's public address: its NAT makes N mappings, N random ports of
// its public address, each of which lets in the packets from the easy
// side's address. The easy side (Easy) sends, from its one socket, probes
// to M distinct random ports of the hard side's public address. When one
// of those ports is one of the N mappings, the probe goes through; it does
// too in the other order, when the easy side probed a port before the
// hard side's NAT gave it out: the hard side's probe from that mapping is
// then a reply to the easy side's NAT. Either way, one datagram crossing
// opens the pair, and the sides confirm it by acknowledging each other's
// datagrams on it. With the ports uniform over a range of R, the chance
// that M probes find one of N mappings is
//
//	P = 1 − ∏_{k=0}^{M−1} (1 − N/(R−k)) ≈ 1 − e^{−MN/R}
//
// and the expected number of probes to the first hit is (R+1)/(N+1).
// For Linux's masquerade (R = 64512, ports 1024–65535) and N = 256:
// M = 256 gives 64 %, M = 1024 gives 98.3 %, M = 2048 gives 99.97 %, and
// the first hit comes after 251 probes on average.
//
// Tailscale's figures, from "How NAT traversal works", section "The
// benefits of birthdays" (https://tailscale.com/blog/how-nat-traversal-works):
// 256 ports on the hard side; 1024 random probes from the easy side give
// a 98 % chance, 2048 probes 99.9 %, which at 100 probes per second is 20
// seconds. The calculator behind them
// (https://github.com/danderson/nat-birthday-paradox) gives 64 % for 256
// sockets and 256 probes. The formula above reproduces all of them.
//
// The defaults here are tailscale's counts, N = 256 and M = 2048, sent
// faster, at 500 probes per second, so that all of them fit in a 5 s
// stage (4.1 s) rather than 20 s: P is then 99.97 % for a uniform NAT, and
// the expected time to the first hit about 0.5 s. The price is a burst of
// 500 × 58-byte datagrams per second (IP and UDP headers included), 230
// kbit/s, for at most 4 s, towards one host.
//
// # Measured
//
// In realmnet's NAT lab (TestBirthdayLab and BenchmarkBirthday: an easy
// and a hard site of internal/natlab, nftables masquerade and masquerade
// fully-random, both filtering by conntrack; the defaults; a 2-core
// machine, idle or with two CPU burners, with and without -race):
//
//   - the stage found a working pair in 260 of 260 stages (eight runs of
//     20 and one of 100). Over the 100: time to the pair p50 0.48 s, max
//     1.9 s; datagrams sent per stage, mean, 281 by the easy side and 199
//     by the hard side. Over the runs of 20: p50 0.35–0.49 s, max 1.1–2.9
//     s (the longest under -race); at most 1451 and 257 datagrams in any
//     stage. The easy side needs 250 to 390 probes on average, above the
//     model's 251 because the hard side makes its mappings over the first
//     half second;
//   - the DCUtR-like baseline (one probe per side, from the socket whose
//     mapping a reflector observed, to the observed addresses) found none
//     in 180 of 180 stages: each router's filtering dropped the other
//     side's probe, exactly one per stage;
//   - masquerade fully-random maps over 1024–65535, uniformly except that
//     1024–2047 come twice as often (2.0 times, over 16384 mappings):
//     nf_nat draws a 16-bit offset and takes it modulo the range's 64512
//     ports. Uniform random probes hit with chance N/R whatever the
//     allocation, so P stands; probing 1024–2047 first (as Hints) hits
//     with chance 2N/65536 a probe there: 100 of 100 stages, time to the
//     pair p50 0.28 s, max 1.6 s, 161 and 142 datagrams per stage. That
//     is a Linux artefact; a NAT that allocates elsewhere would waste
//     those 1024 probes, so it is not the default.
//
// # Limits
//
//   - Both sides must know the session's token and the other's public
//     address: in the upgrade they come over the relayed DCUtR stream (the
//     easy side's address is its observed address, the hard side's its
//     NAT's public IP), and the two sides start within a fraction of the
//     timeout of each other.
//   - A hard NAT that allocates from a smaller range (R) or sequentially,
//     that limits the mappings per host below N, or that rate-limits new
//     mappings, lowers P; one that is not endpoint-dependent needs no such
//     stage. Two hard NATs need about R probes per side, out of reach
//     (tailscale's calculator: 65536 each for 64 %).
//   - The easy side's probes look like a UDP port scan of the hard side's
//     NAT; an intrusion detection system may object.
//   - The easy side decides which pair both keep (see session). It returns
//     once it has sent its confirm; if every copy is lost, the hard side
//     returns ErrNoPair at its Timeout although the easy side has a pair.
//
// # Protocol
//
// Every datagram is 30 bytes: a magic, the sender's side, its kind
// (probe, reply, confirm), the token, a sequence number and the sequence
// number it acknowledges (see wire.go). A datagram of another length, with
// another token or from the receiver's own side is ignored. A side answers
// every probe and reply of the peer on the pair it came on, so a pair is
// confirmed in three or four datagrams after the first that crosses; a
// side that has heard the peer on a pair but not confirmed it resends its
// answer every 200 ms, at most 10 times per pair and on at most 16 pairs.
package birthday

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Defaults and bounds of HardConfig and EasyConfig.
const (
	// DefaultSockets is the hard side's number of sockets (N): tailscale's
	// 256 (see the package documentation).
	DefaultSockets = 256
	// MaxSockets bounds HardConfig.Sockets: each is a file descriptor and
	// a goroutine for the length of the stage.
	MaxSockets = 4096
	// DefaultProbes is the easy side's number of probes (M): tailscale's
	// 2048, 99.97 % against 256 mappings in 64512 ports.
	DefaultProbes = 2048
	// DefaultRate is the probes per second of either side: 2048 probes in
	// 4.1 s, within DefaultTimeout. Tailscale's blog counts 100 per second
	// (20 s for 2048).
	DefaultRate = 500
	// MaxRate bounds the Rate of either side.
	MaxRate = 10000
	// DefaultTimeout bounds the stage: tailscale's 2048 probes at
	// DefaultRate, plus 0.9 s for the last ones' answers.
	DefaultTimeout = 5 * time.Second
	// DefaultMinPort and DefaultMaxPort are the range of ports that the
	// easy side probes: the range from which Linux's nf_nat picks a
	// masqueraded source port of 1024 or more (1024–65535; for a source
	// port below 1024 it picks below 1024). TestBirthdayLab checks that
	// masquerade fully-random stays in it.
	DefaultMinPort = 1024
	DefaultMaxPort = 65535
)

// Pacing of the probes.
const (
	// minTick is the shortest interval of the pacing timer; above 1000
	// probes per second a tick sends several.
	minTick = time.Millisecond
	// maxBurst caps the probes of one tick: a side whose process was not
	// scheduled for a while does not catch up with a burst of hundreds.
	maxBurst = 16
)

// ErrNoPair is the error of a stage that found no pair within its
// Timeout: no probe crossed, or no pair was confirmed both ways.
var ErrNoPair = errors.New("birthday: no pair confirmed")

// HardConfig configures the hard side of a stage, the side behind the
// endpoint-dependent NAT.
type HardConfig struct {
	// Token is the session's secret; both sides must use the same.
	Token Token
	// Easy is the easy side's public address and port: its
	// endpoint-independent mapping, the address a relay or DCUtR observed.
	// Required.
	Easy netip.AddrPort
	// Sockets is the number of sockets (N) that send a probe each to Easy,
	// Conn included. Default DefaultSockets; at most MaxSockets.
	Sockets int
	// Conn, when set, is socket 0, one of the Sockets: the socket the hard
	// side already uses (its QUIC socket, whose mapping a relay observed).
	// Hard reads it until it returns, clearing its read deadline then;
	// the caller must not read it meanwhile. Hard never closes it.
	Conn *net.UDPConn
	// LocalAddr is the address the new sockets bind to, with a random
	// port each. Default: the unspecified address of Easy's family.
	LocalAddr netip.Addr
	// Rate is the probes per second. Default DefaultRate; at most MaxRate.
	Rate int
	// Timeout bounds the stage. Default DefaultTimeout.
	Timeout time.Duration
}

// EasyConfig configures the easy side of a stage, the side behind the
// endpoint-independent NAT.
type EasyConfig struct {
	// Token is the session's secret; both sides must use the same.
	Token Token
	// Conn is the socket whose public mapping the hard side probes (the
	// one whose address a relay or DCUtR observed). Required. Easy reads
	// it until it returns, clearing its read deadline then; the caller
	// must not read it meanwhile. Easy never closes it.
	Conn *net.UDPConn
	// Hard is the hard side's public IP address (its NAT's). Required.
	Hard netip.Addr
	// Hints are ports probed first, before the random ones, and counted in
	// Probes: the port of the hard side's observed address, say. Port 0 is
	// invalid.
	Hints []uint16
	// Probes is the number of probes (M), Hints included. Default
	// DefaultProbes; at least len(Hints), at most what Hints and the port
	// range hold.
	Probes int
	// MinPort and MaxPort are the range of the random ports, inclusive.
	// Default DefaultMinPort and DefaultMaxPort (both zero).
	MinPort, MaxPort uint16
	// Rate is the probes per second. Default DefaultRate; at most MaxRate.
	Rate int
	// Timeout bounds the stage. Default DefaultTimeout.
	Timeout time.Duration
}

// Pair is the outcome of a stage: the socket that works with the peer,
// and the peer's address as that socket sees it.
type Pair struct {
	// Conn is the pair's socket. The caller owns it: it is HardConfig.Conn
	// or EasyConfig.Conn, or one of the sockets that Hard opened, which
	// the caller must close.
	Conn *net.UDPConn
	// Socket is the index of Conn among the hard side's sockets (0 is
	// HardConfig.Conn when set); always 0 at the easy side.
	Socket int
	// Local is Conn's local address.
	Local netip.AddrPort
	// Remote is the peer's address as Conn sees it: at the easy side, the
	// hard NAT's public IP and the port it mapped for this pair; at the
	// hard side, the easy side's public address.
	Remote netip.AddrPort
}

// Stats are a side's counters of a stage, success or not.
type Stats struct {
	// Probes is the number of probes sent (or tried, when a send failed).
	Probes int
	// Sent is the number of datagrams sent: probes, answers,
	// retransmissions and confirms, not counting failed sends.
	Sent int
	// SendErrors is the number of sends that failed.
	SendErrors int
	// Received is the number of the peer's datagrams read.
	Received int
	// Ignored is the number of other datagrams read: wrong length, token
	// or side.
	Ignored int
	// Elapsed is the time from the call to the pair's confirmation, or to
	// the failure.
	Elapsed time.Duration
}

// Hard runs the hard side of a stage: it opens cfg.Sockets UDP sockets
// (less one when cfg.Conn is set), sends one probe from each to cfg.Easy,
// cfg.Rate per second, and answers the easy side until the easy side
// confirms a pair or cfg.Timeout passes. It returns the pair, with its
// socket open, and closes every other socket it opened; no goroutine of
// it outlives the call.
//
// Errors: ErrNoPair (wrapped, with the counts) when no pair was confirmed
// in time; ctx's error (wrapped) when ctx ends first; an error for an
// invalid cfg or a socket that cannot be opened. Stats are valid with
// every error but an invalid cfg.
func Hard(ctx context.Context, cfg HardConfig) (Pair, Stats, error) {
	if !cfg.Easy.IsValid() || cfg.Easy.Port() == 0 {
		return Pair{}, Stats{}, fmt.Errorf("birthday: HardConfig.Easy %v: want an address and a port", cfg.Easy)
	}
	n := cmpDefault(cfg.Sockets, DefaultSockets)
	if n < 1 || n > MaxSockets {
		return Pair{}, Stats{}, fmt.Errorf("birthday: HardConfig.Sockets %d: want 1 to %d", cfg.Sockets, MaxSockets)
	}
	rate, timeout, err := pacing(cfg.Rate, cfg.Timeout)
	if err != nil {
		return Pair{}, Stats{}, err
	}
	easy := unmap(cfg.Easy)
	local := cfg.LocalAddr
	if !local.IsValid() {
		local = netip.IPv4Unspecified()
		if easy.Addr().Is6() {
			local = netip.IPv6Unspecified()
		}
	}
	var socks []*net.UDPConn
	owned := 0 // socks[owned:] were opened here
	if cfg.Conn != nil {
		socks, owned = append(socks, cfg.Conn), 1
	}
	for len(socks) < n {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
		if err != nil {
			for _, c := range socks[owned:] {
				_ = c.Close()
			}
			return Pair{}, Stats{}, fmt.Errorf("birthday: open socket %d of %d: %w", len(socks)+1, n, err)
		}
		socks = append(socks, c)
	}
	return run(ctx, plan{
		me: sideHard, token: cfg.Token, socks: socks, owned: owned,
		total: n, probe: func(i int) pairKey { return pairKey{sock: i, remote: easy} },
		rate: rate, timeout: timeout,
	})
}

// Easy runs the easy side of a stage: from cfg.Conn it sends cfg.Probes
// probes, cfg.Rate per second, to cfg.Hints and then to distinct random
// ports of cfg.Hard, and answers the hard side, until a pair works both
// ways (it then confirms it to the hard side and returns it) or
// cfg.Timeout passes. No goroutine of it outlives the call.
//
// Errors: as Hard's.
func Easy(ctx context.Context, cfg EasyConfig) (Pair, Stats, error) {
	if cfg.Conn == nil {
		return Pair{}, Stats{}, errors.New("birthday: EasyConfig.Conn is nil")
	}
	if !cfg.Hard.IsValid() || cfg.Hard.IsUnspecified() {
		return Pair{}, Stats{}, fmt.Errorf("birthday: EasyConfig.Hard %v: want the hard side's public address", cfg.Hard)
	}
	lo, hi := cfg.MinPort, cfg.MaxPort
	if lo == 0 && hi == 0 {
		lo, hi = DefaultMinPort, DefaultMaxPort
	}
	if lo == 0 || lo > hi {
		return Pair{}, Stats{}, fmt.Errorf("birthday: EasyConfig port range %d-%d: want 1 <= MinPort <= MaxPort", cfg.MinPort, cfg.MaxPort)
	}
	hinted := map[uint16]bool{}
	var hints []uint16
	inRange := 0
	for _, p := range cfg.Hints {
		if p == 0 {
			return Pair{}, Stats{}, errors.New("birthday: EasyConfig.Hints has port 0")
		}
		if !hinted[p] {
			hinted[p] = true
			hints = append(hints, p)
			if p >= lo && p <= hi {
				inRange++
			}
		}
	}
	m := cmpDefault(cfg.Probes, DefaultProbes)
	if most := len(hints) + int(hi-lo) + 1 - inRange; m < len(hints) || m > most {
		return Pair{}, Stats{}, fmt.Errorf("birthday: EasyConfig.Probes %d: want %d (the hints) to %d (the hints and the port range)", cfg.Probes, len(hints), most)
	}
	rate, timeout, err := pacing(cfg.Rate, cfg.Timeout)
	if err != nil {
		return Pair{}, Stats{}, err
	}
	hard := cfg.Hard.Unmap()
	ports := newSampler(lo, hi)
	return run(ctx, plan{
		me: sideEasy, token: cfg.Token, socks: []*net.UDPConn{cfg.Conn}, owned: 1,
		total: m,
		probe: func(i int) pairKey {
			if i < len(hints) {
				return pairKey{remote: netip.AddrPortFrom(hard, hints[i])}
			}
			p := ports.next()
			for hinted[p] {
				p = ports.next()
			}
			return pairKey{remote: netip.AddrPortFrom(hard, p)}
		},
		rate: rate, timeout: timeout,
	})
}

// cmpDefault returns v, or def when v is 0.
func cmpDefault(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// pacing applies the defaults and bounds of Rate and Timeout.
func pacing(rate int, timeout time.Duration) (int, time.Duration, error) {
	rate = cmpDefault(rate, DefaultRate)
	if rate < 1 || rate > MaxRate {
		return 0, 0, fmt.Errorf("birthday: Rate %d: want 1 to %d probes per second", rate, MaxRate)
	}
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	if timeout < 0 {
		return 0, 0, fmt.Errorf("birthday: Timeout %v is negative", timeout)
	}
	return rate, timeout, nil
}

// unmap returns ap with an IPv4-mapped IPv6 address made IPv4, as the
// pairs are keyed.
func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// sampler draws distinct ports of a range at random, without replacement:
// a Fisher–Yates shuffle of the range done lazily, with the swapped-out
// entries in a map, so M draws cost O(M) whatever the range.
type sampler struct {
	lo, n int         // the range is lo .. lo+n-1
	i     int         // draws so far
	moved map[int]int // position → the value now there, where it is not lo+position
}

func newSampler(lo, hi uint16) *sampler {
	return &sampler{lo: int(lo), n: int(hi) - int(lo) + 1, moved: map[int]int{}}
}

// next returns the next port; the caller draws at most the range's size.
func (s *sampler) next() uint16 {
	at := func(p int) int {
		if v, ok := s.moved[p]; ok {
			return v
		}
		return s.lo + p
	}
	j := s.i + rand.IntN(s.n-s.i)
	v := at(j)
	s.moved[j] = at(s.i)
	delete(s.moved, s.i)
	s.i++
	return uint16(v)
}

// plan is what run needs of either side.
type plan struct {
	me      side
	token   Token
	socks   []*net.UDPConn
	owned   int // socks[owned:] are the call's own: closed unless one is the pair's
	total   int // probes
	probe   func(i int) pairKey
	rate    int
	timeout time.Duration
}

// inbound is a datagram that a socket read.
type inbound struct {
	sock int
	from netip.AddrPort
	b    []byte
}

// run is the stage, either side: a reader goroutine per socket, and this
// loop, which owns the session and sends.
func run(ctx context.Context, p plan) (pair Pair, st Stats, err error) {
	start := time.Now()
	s := newSession(p.me, p.token)
	in := make(chan inbound, 64)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range p.socks {
		_ = c.SetReadDeadline(time.Time{})
		wg.Go(func() { read(i, c, in, done) })
	}
	winner := -1
	defer func() {
		// Wake the readers (a deadline, since the caller's sockets stay
		// open), wait for them, then close what is neither the caller's
		// nor the pair's.
		close(done)
		now := time.Now()
		for _, c := range p.socks {
			_ = c.SetReadDeadline(now)
		}
		wg.Wait()
		for i, c := range p.socks {
			if i == winner || i < p.owned {
				_ = c.SetReadDeadline(time.Time{})
			} else {
				_ = c.Close()
			}
		}
	}()

	send := func(ds []datagram) {
		for _, d := range ds {
			if _, err := p.socks[d.on.sock].WriteToUDPAddrPort(d.b, d.on.remote); err != nil {
				st.SendErrors++
			} else {
				st.Sent++
			}
		}
	}
	sendDue := func(now time.Time) {
		due := min(p.total, 1+int(int64(now.Sub(start))*int64(p.rate)/int64(time.Second)))
		for burst := 0; st.Probes < due && burst < maxBurst; burst++ {
			send([]datagram{s.probe(p.probe(st.Probes))})
			st.Probes++
		}
	}

	pace := time.NewTicker(max(time.Second/time.Duration(p.rate), minTick))
	defer pace.Stop()
	paceC := pace.C
	retx := time.NewTicker(retransmitInterval)
	defer retx.Stop()
	deadline := time.NewTimer(p.timeout)
	defer deadline.Stop()

	sendDue(start)
	for {
		if st.Probes == p.total {
			paceC = nil
		}
		select {
		case now := <-paceC:
			sendDue(now)
		case <-retx.C:
			send(s.retransmit())
		case d := <-in:
			ds, ok := s.receive(pairKey{sock: d.sock, remote: d.from}, d.b)
			if ok {
				st.Received++
			} else {
				st.Ignored++
			}
			send(ds)
			if s.done {
				st.Elapsed = time.Since(start)
				winner = s.chosen.sock
				c := p.socks[winner]
				return Pair{
					Conn:   c,
					Socket: winner,
					Local:  unmap(c.LocalAddr().(*net.UDPAddr).AddrPort()),
					Remote: s.chosen.remote,
				}, st, nil
			}
		case <-deadline.C:
			st.Elapsed = time.Since(start)
			return Pair{}, st, fmt.Errorf("%w within %v (%s side): %d probes, %d datagrams sent, %d received from the peer, %d pairs heard",
				ErrNoPair, p.timeout, p.me, st.Probes, st.Sent, st.Received, len(s.pairs))
		case <-ctx.Done():
			st.Elapsed = time.Since(start)
			return Pair{}, st, fmt.Errorf("birthday: %s side stopped: %w", p.me, ctx.Err())
		}
	}
}

// read forwards the datagrams of socket i to in until the socket's read
// fails: its deadline, set when run returns, or its closing.
func read(i int, c *net.UDPConn, in chan<- inbound, done <-chan struct{}) {
	buf := make([]byte, readBuf)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		select {
		case in <- inbound{sock: i, from: unmap(from), b: bytes.Clone(buf[:n])}:
		case <-done:
			return
		}
	}
}
