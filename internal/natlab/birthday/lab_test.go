package birthday

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/realmnet/realmnet/internal/natlab"
)

// The roles that the lab's tests start (TestMain registers them).
var labRoles = map[string]natlab.Role{
	"peer":    peerRole,
	"reflect": reflectRole,
}

// The reflector's UDP ports on the public host: reflectPorts of them from
// reflectPort. The port-allocation measurement uses one per batch of
// mappings: the NAT keeps every mapping's port for its destination until
// its conntrack entry expires (30 s), so batch after batch towards one
// destination would fill the range and skew the allocation that it
// measures (nf_nat moves on to the next port from a taken one).
const (
	reflectPort  = 3478
	reflectPorts = 64
)

// reflectRole answers every datagram with the address it came from, as
// "ip:port" (a STUN server's service, in text), on each of its ports. It
// prints "ready" once it listens.
func reflectRole(args []string, in io.Reader, out io.Writer) error {
	var conns []*net.UDPConn
	var wg sync.WaitGroup
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
		wg.Wait()
	}()
	for i := range reflectPorts {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: reflectPort + i})
		if err != nil {
			return err
		}
		conns = append(conns, c)
		wg.Go(func() {
			buf := make([]byte, 64)
			for {
				_, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				_, _ = c.WriteToUDPAddrPort([]byte(unmap(from).String()), from)
			}
		})
	}
	fmt.Fprintln(out, "ready")
	_, _ = io.Copy(io.Discard, in)
	return nil
}

// runArgs is the argument of a peer's "run" command, in JSON.
type runArgs struct {
	Token string
	// Peer is, for the easy side, the hard side's public IP; for the hard
	// side, the easy side's public address.
	Peer string
	// Port is the easy side's local port, which its NAT keeps.
	Port int `json:",omitempty"`
	// Count is the hard side's Sockets or the easy side's Probes (0:
	// default).
	Count int           `json:",omitempty"`
	Hints []uint16      `json:",omitempty"`
	Limit time.Duration `json:",omitempty"` // Timeout (0: default)
	Kept  bool          `json:",omitempty"` // hard: socket 0 is the last "observe"'s
}

// runResult is a peer's answer to "run", in JSON.
type runResult struct {
	OK     bool
	NoPair bool   // the error is ErrNoPair
	Err    string `json:",omitempty"`
	Socket int
	Local  netip.AddrPort
	Remote netip.AddrPort
	Stats  Stats
}

// peer is the state of a peerRole process.
type peer struct {
	side  side
	kept  *net.UDPConn // hard: the socket of the last "observe", for the next run
	pair  Pair         // the last run's, until "close"; Conn nil when none
	echo  sync.WaitGroup
	pongs chan string
}

// peerRole runs one side of the stage, args[0] "easy" or "hard", stage
// after stage, on the commands of its input, one answer line each:
//
//	run <runArgs JSON>        result <runResult JSON>
//	observe <ip:port>         observed <ip:port>: a new socket's address as the reflector sees it (hard; kept for the next run)
//	mappings <ip:port> <n>    mappings <port>...: n new sockets' ports as the reflector sees them (closed after)
//	ping <id>                 pong <id>: the pair of the last run works both ways
//	close                     closed: the pair's socket is closed
//
// While a pair is open, its socket answers the peer's "ping <id>" with
// "pong <id>".
func peerRole(args []string, in io.Reader, out io.Writer) error {
	if len(args) != 1 || (args[0] != "easy" && args[0] != "hard") {
		return fmt.Errorf("want one argument, easy or hard; got %q", args)
	}
	p := &peer{side: sideEasy}
	if args[0] == "hard" {
		p.side = sideHard
	}
	defer p.closePair()
	defer func() {
		if p.kept != nil {
			_ = p.kept.Close()
		}
	}()
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		cmd, arg, _ := strings.Cut(lines.Text(), " ")
		answer, err := p.do(cmd, arg)
		if err != nil {
			answer = fmt.Sprintf("error %s: %v", cmd, err)
		}
		fmt.Fprintln(out, answer)
	}
	return lines.Err()
}

func (p *peer) do(cmd, arg string) (string, error) {
	switch cmd {
	case "run":
		var a runArgs
		if err := json.Unmarshal([]byte(arg), &a); err != nil {
			return "", err
		}
		r, err := p.run(a)
		if err != nil {
			return "", err
		}
		b, err := json.Marshal(r)
		return "result " + string(b), err
	case "observe":
		to, err := netip.ParseAddrPort(arg)
		if err != nil {
			return "", err
		}
		c, err := net.ListenUDP("udp4", nil)
		if err != nil {
			return "", err
		}
		seen, err := reflect(c, to)
		if err != nil {
			_ = c.Close()
			return "", err
		}
		if p.kept != nil {
			_ = p.kept.Close()
		}
		p.kept = c
		return "observed " + seen.String(), nil
	case "mappings":
		f := strings.Fields(arg)
		if len(f) != 2 {
			return "", errors.New("want <ip:port> <n>")
		}
		to, err := netip.ParseAddrPort(f[0])
		if err != nil {
			return "", err
		}
		n, err := strconv.Atoi(f[1])
		if err != nil || n < 1 || n > MaxSockets {
			return "", fmt.Errorf("n %q: want 1 to %d", f[1], MaxSockets)
		}
		return mappings(to, n)
	case "ping":
		if p.pair.Conn == nil {
			return "", errors.New("no pair")
		}
		for range 15 {
			if _, err := p.pair.Conn.WriteToUDPAddrPort([]byte("ping "+arg), p.pair.Remote); err != nil {
				return "", err
			}
			timeout := time.After(200 * time.Millisecond)
		wait:
			for {
				select {
				case id := <-p.pongs:
					if id == arg {
						return "pong " + arg, nil
					}
				case <-timeout:
					break wait
				}
			}
		}
		return "", fmt.Errorf("no pong from %v within 3 s", p.pair.Remote)
	case "close":
		p.closePair()
		return "closed", nil
	}
	return "", fmt.Errorf("unknown command %q", cmd)
}

// run runs one stage, and keeps its pair.
func (p *peer) run(a runArgs) (runResult, error) {
	p.closePair()
	tok, err := ParseToken(a.Token)
	if err != nil {
		return runResult{}, err
	}
	var pair Pair
	var st Stats
	if p.side == sideEasy {
		hard, err := netip.ParseAddr(a.Peer)
		if err != nil {
			return runResult{}, err
		}
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: a.Port})
		if err != nil {
			return runResult{}, err
		}
		pair, st, err = Easy(context.Background(), EasyConfig{Token: tok, Conn: c, Hard: hard, Hints: a.Hints, Probes: a.Count, Timeout: a.Limit})
		if err != nil {
			_ = c.Close()
			return result(pair, st, err), nil
		}
	} else {
		easy, err := netip.ParseAddrPort(a.Peer)
		if err != nil {
			return runResult{}, err
		}
		var kept *net.UDPConn
		if a.Kept {
			if p.kept == nil {
				return runResult{}, errors.New("no socket kept: observe first")
			}
			kept, p.kept = p.kept, nil
		}
		pair, st, err = Hard(context.Background(), HardConfig{Token: tok, Easy: easy, Sockets: a.Count, Conn: kept, Timeout: a.Limit})
		if kept != nil && pair.Conn != kept {
			_ = kept.Close()
		}
		if err != nil {
			return result(pair, st, err), nil
		}
	}
	p.pair = pair
	p.pongs = make(chan string, 16)
	c, remote, pongs := pair.Conn, pair.Remote, p.pongs
	p.echo.Go(func() {
		buf := make([]byte, 256)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if unmap(from) != remote {
				continue
			}
			msg := string(buf[:n])
			if id, ok := strings.CutPrefix(msg, "ping "); ok {
				_, _ = c.WriteToUDPAddrPort([]byte("pong "+id), remote)
			} else if id, ok := strings.CutPrefix(msg, "pong "); ok {
				select {
				case pongs <- id:
				default:
				}
			}
		}
	})
	return result(pair, st, nil), nil
}

func result(pair Pair, st Stats, err error) runResult {
	r := runResult{OK: err == nil, NoPair: errors.Is(err, ErrNoPair), Socket: pair.Socket, Local: pair.Local, Remote: pair.Remote, Stats: st}
	if err != nil {
		r.Err = err.Error()
	}
	return r
}

// closePair closes the last run's pair and stops its echo.
func (p *peer) closePair() {
	if p.pair.Conn != nil {
		_ = p.pair.Conn.Close()
		p.echo.Wait()
		p.pair = Pair{}
	}
}

// reflect returns c's address as the reflector at to sees it.
func reflect(c *net.UDPConn, to netip.AddrPort) (netip.AddrPort, error) {
	buf := make([]byte, 64)
	for range 25 {
		if _, err := c.WriteToUDPAddrPort([]byte("stun"), to); err != nil {
			return netip.AddrPort{}, err
		}
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return netip.AddrPort{}, err
		}
		if unmap(from) != to {
			continue
		}
		_ = c.SetReadDeadline(time.Time{})
		return netip.ParseAddrPort(string(buf[:n]))
	}
	return netip.AddrPort{}, fmt.Errorf("no answer from the reflector %v within 5 s", to)
}

// mappings opens n sockets at once, learns each one's public port from
// the reflector at to, closes them and returns "mappings <port>...".
func mappings(to netip.AddrPort, n int) (string, error) {
	socks := make([]*net.UDPConn, 0, n)
	defer func() {
		for _, c := range socks {
			_ = c.Close()
		}
	}()
	for range n {
		c, err := net.ListenUDP("udp4", nil)
		if err != nil {
			return "", err
		}
		socks = append(socks, c)
	}
	seen := make([]netip.AddrPort, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, c := range socks {
		wg.Go(func() { seen[i], errs[i] = reflect(c, to) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("mappings")
	for _, ap := range seen {
		fmt.Fprintf(&b, " %d", ap.Port())
	}
	return b.String(), nil
}

// birthdayLab is the lab of the easy/hard cell, with its processes: a
// reflector on the public host "p", the easy side on host "e" behind the
// endpoint-independent router "easy", the hard side on host "h" behind the
// symmetric router "hard".
type birthdayLab struct {
	lab        *natlab.Lab
	easy, hard *natlab.Proc
	reflector  netip.AddrPort
	easyIP     netip.Addr // the easy side's public address: its router's
	hardIP     netip.Addr // the hard side's
	nextPort   int        // the easy side's next local port: one per stage
}

// newBirthdayLab builds the lab and starts its processes.
func newBirthdayLab(tb testing.TB) *birthdayLab {
	tb.Helper()
	lab := natlab.New(tb, natlab.Topology{
		Public: []string{"p"},
		Sites: []natlab.Site{
			{Router: "easy", NAT: natlab.EndpointIndependent, Hosts: []string{"e"}},
			{Router: "hard", NAT: natlab.Symmetric, Hosts: []string{"h"}},
		},
	})
	x := &birthdayLab{
		lab:       lab,
		reflector: netip.AddrPortFrom(lab.Addr("p"), reflectPort),
		easyIP:    lab.Addr("easy"),
		hardIP:    lab.Addr("hard"),
		nextPort:  20000,
	}
	do(tb, lab.Start(tb, "p", "reflect"), "", "ready", wait)
	x.easy = lab.Start(tb, "e", "peer", "easy")
	x.hard = lab.Start(tb, "h", "peer", "hard")
	return x
}

// wait bounds a command's answer beyond the stage's own timeout: generous,
// for a busy two-core machine under -race.
const wait = 30 * time.Second

// do sends cmd to p (unless it is empty) and returns p's answer, which
// must start with want.
func do(tb testing.TB, p *natlab.Proc, cmd, want string, timeout time.Duration) string {
	tb.Helper()
	if cmd != "" {
		if err := p.Send(cmd); err != nil {
			tb.Fatal(err)
		}
	}
	line, err := p.Recv(timeout)
	if err != nil {
		tb.Fatal(err)
	}
	if !strings.HasPrefix(line, want) {
		tb.Fatalf("%s: %q answered %q, want %q...", p, cmd, line, want)
	}
	return line
}

// stage is the outcome of one stage in the lab.
type stage struct {
	easy, hard runResult
	// ok: both sides kept a pair, the same one, and it carried a ping each
	// way.
	ok bool
	// elapsed is the later side's Elapsed: the time to a pair that both
	// sides have (each side from its own start; the two start within
	// milliseconds).
	elapsed time.Duration
}

// run runs one stage: the easy side on a fresh local port (conntrack
// entries of earlier stages live on in the routers, and must not help),
// with the given counts, hints, and timeout (0: the defaults). A pair that
// a side reports must work: the test fails otherwise.
func (x *birthdayLab) run(tb testing.TB, easyProbes int, hints []uint16, hardSockets int, kept bool, limit time.Duration) stage {
	tb.Helper()
	port := x.nextPort
	x.nextPort++
	tok := NewToken().String()
	easyArgs, _ := json.Marshal(runArgs{Token: tok, Peer: x.hardIP.String(), Port: port, Count: easyProbes, Hints: hints, Limit: limit})
	hardArgs, _ := json.Marshal(runArgs{Token: tok, Peer: netip.AddrPortFrom(x.easyIP, uint16(port)).String(), Count: hardSockets, Kept: kept, Limit: limit})
	if err := x.easy.Send("run " + string(easyArgs)); err != nil {
		tb.Fatal(err)
	}
	if err := x.hard.Send("run " + string(hardArgs)); err != nil {
		tb.Fatal(err)
	}
	var s stage
	timeout := max(limit, DefaultTimeout) + wait
	for _, side := range []struct {
		p *natlab.Proc
		r *runResult
	}{{x.easy, &s.easy}, {x.hard, &s.hard}} {
		line := do(tb, side.p, "", "result ", timeout)
		if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "result ")), side.r); err != nil {
			tb.Fatalf("%s: %q: %v", side.p, line, err)
		}
		if !side.r.OK && !side.r.NoPair {
			tb.Fatalf("%s: the stage failed otherwise than with ErrNoPair: %s", side.p, side.r.Err)
		}
	}
	s.elapsed = max(s.easy.Stats.Elapsed, s.hard.Stats.Elapsed)
	switch {
	case s.easy.OK && s.hard.OK:
		// The pair is the same seen from both ends: the easy side sees the
		// hard NAT's address (at some port of the range), the hard side
		// the easy side's public address, whose port is its local port.
		wantEasy := netip.AddrPortFrom(x.easyIP, uint16(port))
		if s.hard.Remote != wantEasy || s.easy.Local.Port() != uint16(port) || s.easy.Remote.Addr() != x.hardIP {
			tb.Fatalf("the sides' pairs do not match: easy %v <-> %v, hard socket %d %v <-> %v; want the hard side to see %v and the easy side %v:*",
				s.easy.Local, s.easy.Remote, s.hard.Socket, s.hard.Local, s.hard.Remote, wantEasy, x.hardIP)
		}
		do(tb, x.easy, "ping e", "pong e", wait)
		do(tb, x.hard, "ping h", "pong h", wait)
		s.ok = true
	case s.easy.OK || s.hard.OK:
		tb.Logf("only one side kept a pair (its peer's confirm was lost?): easy %+v, hard %+v", s.easy, s.hard)
	}
	do(tb, x.easy, "close", "closed", wait)
	do(tb, x.hard, "close", "closed", wait)
	return s
}

// baseline runs what DCUtR does, as a stage of one probe per side: the
// hard side learns its address from the reflector (as a relay observes
// it) and probes the easy side from that socket; the easy side probes that
// address. The lab's round trips are below a millisecond, so 500 ms is
// plenty for the two datagrams; TestBirthdayLab checks that both were
// dropped, not late.
func (x *birthdayLab) baseline(tb testing.TB) stage {
	tb.Helper()
	observed, err := netip.ParseAddrPort(strings.TrimPrefix(do(tb, x.hard, "observe "+x.reflector.String(), "observed ", wait), "observed "))
	if err != nil {
		tb.Fatal(err)
	}
	if observed.Addr() != x.hardIP {
		tb.Fatalf("the reflector saw the hard side at %v, want the address of its router, %v", observed, x.hardIP)
	}
	return x.run(tb, 1, []uint16{observed.Port()}, 1, true, 500*time.Millisecond)
}

// summary sums up stages.
type summary struct {
	stages, ok                 int
	p50, max                   time.Duration // time to a pair, over the stages that found one
	easySent, hardSent         float64       // datagrams per stage, mean over all stages
	easySentMax, hardSentMax   int
	easyProbesP50, easyProbesN float64 // the easy side's probes when it found a pair: median, and mean
}

func summarize(ss []stage) summary {
	var sum summary
	var times []time.Duration
	var probes []int
	sum.stages = len(ss)
	for _, s := range ss {
		sum.easySent += float64(s.easy.Stats.Sent) / float64(len(ss))
		sum.hardSent += float64(s.hard.Stats.Sent) / float64(len(ss))
		sum.easySentMax = max(sum.easySentMax, s.easy.Stats.Sent)
		sum.hardSentMax = max(sum.hardSentMax, s.hard.Stats.Sent)
		if s.ok {
			sum.ok++
			times = append(times, s.elapsed)
			probes = append(probes, s.easy.Stats.Probes)
			sum.easyProbesN += float64(s.easy.Stats.Probes)
		}
	}
	if len(times) > 0 {
		slices.Sort(times)
		slices.Sort(probes)
		sum.p50, sum.max = times[(len(times)-1)/2], times[len(times)-1]
		sum.easyProbesP50 = float64(probes[(len(probes)-1)/2])
		sum.easyProbesN /= float64(len(probes))
	}
	return sum
}

func (s summary) String() string {
	return fmt.Sprintf("%d of %d stages found a pair (%.0f %%); time to a pair p50 %v, max %v; easy side's probes to a pair p50 %.0f, mean %.0f; datagrams sent per stage: easy %.0f (max %d), hard %.0f (max %d)",
		s.ok, s.stages, s.rate(), s.p50.Round(time.Millisecond), s.max.Round(time.Millisecond), s.easyProbesP50, s.easyProbesN, s.easySent, s.easySentMax, s.hardSent, s.hardSentMax)
}

func (s summary) rate() float64 { return 100 * float64(s.ok) / float64(max(s.stages, 1)) }

// unsolicited returns the packet count of a router's counter of
// unsolicited packets, the ones its filtering dropped.
func unsolicited(tb testing.TB, lab *natlab.Lab, router string) int {
	tb.Helper()
	out := lab.Exec(tb, router, "nft", "list", "ruleset")
	m := regexp.MustCompile(`counter packets (\d+) bytes \d+ drop comment "unsolicited"`).FindStringSubmatch(out)
	if m == nil {
		tb.Fatalf("no unsolicited counter in %s's ruleset:\n%s", router, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// The number of stages of TestBirthdayLab: each birthday stage takes about
// 0.5 s, each baseline 0.5 s (its timeout).
const (
	labStages      = 20
	baselineStages = 20
	// minOK is the least number of labStages that must find a pair. The
	// model (uniform ports, 256 mappings, 2048 probes in 64512 ports)
	// gives 99.97 % a stage, and 260 of 260 stages found one (see the
	// package documentation). Fewer than 17 of 20 would happen once in
	// 1700 runs if 2 % of the stages failed, one run in 8 if 10 % did: the
	// bound lets the test pass on a machine too busy for a stage or two,
	// and fails it when the stage stops working.
	minOK = 17
)

// TestBirthdayLab is the experiment in the easy/hard cell of the NAT lab:
// the DCUtR-like baseline fails every time, because both routers drop the
// two probes; the birthday stage finds a working pair in (nearly) every
// stage, and every pair it reports carries a ping each way; and the hard
// router's masquerade fully-random allocates its ports over 1024–65535,
// the range the easy side probes, at random (uniformly but for 1024–2047,
// twice as likely), as the model assumes. It logs the figures.
func TestBirthdayLab(t *testing.T) {
	x := newBirthdayLab(t)

	t.Run("baseline", func(t *testing.T) {
		dropsEasy, dropsHard := unsolicited(t, x.lab, "easy"), unsolicited(t, x.lab, "hard")
		var ss []stage
		for range baselineStages {
			s := x.baseline(t)
			ss = append(ss, s)
			if s.easy.OK || s.hard.OK {
				t.Errorf("a baseline stage found a pair: easy %+v, hard %+v", s.easy, s.hard)
			}
			for _, r := range []runResult{s.easy, s.hard} {
				if r.Stats.Probes != 1 || r.Stats.Sent != 1 || r.Stats.Received != 0 {
					t.Errorf("a baseline side: %+v; want one probe sent, nothing received", r.Stats)
				}
			}
		}
		// Each stage's two probes were dropped, one by each router's
		// filtering: the hard side's by the easy router (the easy side had
		// sent to the relay-observed address, not to the hard side's new
		// mapping), the easy side's by the hard router (the observed
		// mapping lets in the reflector only).
		for deadline := time.Now().Add(wait); ; time.Sleep(10 * time.Millisecond) {
			de, dh := unsolicited(t, x.lab, "easy")-dropsEasy, unsolicited(t, x.lab, "hard")-dropsHard
			if de == baselineStages && dh == baselineStages {
				break
			}
			if de > baselineStages || dh > baselineStages || time.Now().After(deadline) {
				t.Fatalf("after %d baseline stages the easy router dropped %d unsolicited packets and the hard router %d; want %d each", baselineStages, de, dh, baselineStages)
			}
		}
		t.Logf("baseline (DCUtR-like, 1 probe per side to the observed addresses): %v; every probe dropped by the other side's router", summarize(ss))
	})

	var seenPorts []int // the hard side's ports that the easy side saw
	t.Run("birthday", func(t *testing.T) {
		var ss []stage
		for range labStages {
			s := x.run(t, 0, nil, 0, false, 0)
			ss = append(ss, s)
			if s.ok {
				seenPorts = append(seenPorts, int(s.easy.Remote.Port()))
			}
			for _, r := range []runResult{s.easy, s.hard} {
				if r.Stats.Probes > max(DefaultSockets, DefaultProbes) || r.Stats.Sent > r.Stats.Probes+maxPairs*maxSendsPerPair+confirmCopies {
					t.Errorf("a side went beyond its bounds: %+v", r.Stats)
				}
			}
		}
		sum := summarize(ss)
		t.Logf("birthday stage (N=%d, M=%d, %d probes/s, %v): %v; the hard side's ports as the easy side saw them: %v",
			DefaultSockets, DefaultProbes, DefaultRate, DefaultTimeout, sum, seenPorts)
		if sum.ok < minOK {
			t.Errorf("%d of %d stages found a pair, want at least %d", sum.ok, sum.stages, minOK)
		}
	})

	t.Run("port-allocation", func(t *testing.T) {
		// Batches of 256 simultaneous mappings towards one of the
		// reflector's ports each, as the hard side makes them towards the
		// easy side.
		const batches, batch = reflectPorts, DefaultSockets
		var ports []int
		for i := range batches {
			to := netip.AddrPortFrom(x.reflector.Addr(), uint16(reflectPort+i))
			f := strings.Fields(strings.TrimPrefix(do(t, x.hard, fmt.Sprintf("mappings %v %d", to, batch), "mappings ", wait), "mappings "))
			seen := map[int]bool{}
			for _, s := range f {
				p, err := strconv.Atoi(s)
				if err != nil {
					t.Fatal(err)
				}
				if seen[p] {
					t.Errorf("port %d mapped twice in one batch: two live mappings to one destination", p)
				}
				seen[p] = true
				ports = append(ports, p)
			}
		}
		ports = append(ports, seenPorts...)
		lo, hi := slices.Min(ports), slices.Max(ports)
		if lo < DefaultMinPort || hi > DefaultMaxPort {
			t.Errorf("masquerade fully-random mapped ports %d to %d, outside %d-%d, which the easy side probes", lo, hi, DefaultMinPort, DefaultMaxPort)
		}
		// Two models: uniform over 1024-65535, and the same with 1024-2047
		// twice as likely — what nf_nat_l4proto_unique_tuple does: a
		// 16-bit random offset (u16 off) taken modulo the range's 64512
		// ports, so offsets 0-1023 come from two values each. 130 is the
		// chi-square quantile of 62 degrees of freedom at 1 - 1e-6
		// (Wilson–Hilferty): the right model exceeds it once in a million
		// runs; a sequential or clustered allocation exceeds both by far.
		uniform := chiSquare(ports, 1)
		lowTwice := chiSquare(ports, 2)
		if min(uniform, lowTwice) > 130 {
			t.Errorf("the ports fit neither model: chi-square %.1f (uniform) and %.1f (1024-2047 twice as likely), 62 degrees of freedom", uniform, lowTwice)
		}
		low := 0
		for _, p := range ports {
			if p < 2048 {
				low++
			}
		}
		density := float64(low) / 1024 / (float64(len(ports)-low) / float64(DefaultMaxPort-2047))
		r := DefaultMaxPort - DefaultMinPort + 1
		t.Logf("port allocation of masquerade fully-random: %d ports (%d batches of %d simultaneous mappings, and the %d that the birthday stages hit), min %d, max %d; "+
			"chi-square over the 63 bins of 1024 ports: %.1f against uniform, %.1f against 1024-2047 twice as likely (62 degrees of freedom, 1e-6 quantile 130); "+
			"ports 1024-2047 are %.2f times as likely as the others. "+
			"A uniformly random probe hits a mapping with chance N/R whatever the allocation, so P(M=%d, N=%d) = %.2f %% stands; probing 1024-2047 first would hit with chance 2N/65536 a probe: %.2f %% in its 1024 probes",
			len(ports), batches, batch, len(seenPorts), lo, hi, uniform, lowTwice, density,
			DefaultProbes, DefaultSockets, 100*successProbability(DefaultSockets, DefaultProbes, r),
			100*(1-math.Pow(1-2*float64(DefaultSockets)/65536, 1024)))
	})
}

// chiSquare returns the chi-square statistic of ports against a model of
// the allocation over 1024-65535, in its 63 bins of 1024 ports (62 degrees
// of freedom): the bin 1024-2047 has weight lowWeight, each other bin 1.
func chiSquare(ports []int, lowWeight float64) float64 {
	const bins = 63
	counts := make([]float64, bins)
	for _, p := range ports {
		counts[min(bins-1, max(0, (p-DefaultMinPort)/1024))]++
	}
	total := lowWeight + bins - 1
	chi := 0.0
	for i, c := range counts {
		w := 1.0
		if i == 0 {
			w = lowWeight
		}
		want := float64(len(ports)) * w / total
		chi += (c - want) * (c - want) / want
	}
	return chi
}

// successProbability is the model's P: that m distinct random ports of r
// include one of n.
func successProbability(n, m, r int) float64 {
	miss := 1.0
	for k := range m {
		miss *= 1 - float64(n)/float64(r-k)
	}
	return 1 - miss
}

// BenchmarkBirthday runs b.N stages (use -benchtime=20x: a stage takes
// about half a second) in the lab's easy/hard cell in each of three modes:
// "birthday", the defaults; "low-first", the defaults with the ports
// 1024-2047 as hints, probed first (Linux's masquerade fully-random maps
// them twice as often as the others: see TestBirthdayLab); "baseline", the
// DCUtR-like stage of one probe per side. It reports per mode:
//
//   - success-%: the stages that found a working pair;
//   - ms-to-pair-p50, ms-to-pair-max: over those;
//   - easy-pkts/op, hard-pkts/op: datagrams sent per stage, each side.
func BenchmarkBirthday(b *testing.B) {
	x := newBirthdayLab(b)
	low := make([]uint16, 1024) // 1024-2047, shuffled
	for i, p := range rand.Perm(1024) {
		low[i] = uint16(1024 + p)
	}
	for _, mode := range []string{"birthday", "low-first", "baseline"} {
		b.Run(mode, func(b *testing.B) {
			var ss []stage
			for range b.N {
				switch mode {
				case "birthday":
					ss = append(ss, x.run(b, 0, nil, 0, false, 0))
				case "low-first":
					ss = append(ss, x.run(b, 0, low, 0, false, 0))
				case "baseline":
					ss = append(ss, x.baseline(b))
				}
			}
			sum := summarize(ss)
			b.ReportMetric(sum.rate(), "success-%")
			b.ReportMetric(float64(sum.p50.Microseconds())/1000, "ms-to-pair-p50")
			b.ReportMetric(float64(sum.max.Microseconds())/1000, "ms-to-pair-max")
			b.ReportMetric(sum.easySent, "easy-pkts/op")
			b.ReportMetric(sum.hardSent, "hard-pkts/op")
		})
	}
}
