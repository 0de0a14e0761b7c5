package natlab

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	RunIfChild(map[string]Role{"udp": udpRole, "fail": failRole})
	goleak.VerifyTestMain(m)
}

// udpRole listens on UDP port args[0] of every address. It prints
// "ready <addr>", then "recv <from> <payload>" for every datagram, and
// answers a datagram "ping <id>" with "pong <from> <id>", from as it saw
// the sender. Each input line "send <ip:port> <payload>" sends payload.
func udpRole(args []string, in io.Reader, out io.Writer) error {
	if len(args) != 1 {
		return fmt.Errorf("want one argument, the port; got %q", args)
	}
	pc, err := net.ListenPacket("udp4", ":"+args[0])
	if err != nil {
		return err
	}
	defer pc.Close()
	var mu sync.Mutex
	say := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, format+"\n", a...)
	}
	say("ready %s", pc.LocalAddr())
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			msg := string(buf[:n])
			say("recv %s %s", from, msg)
			if id, ok := strings.CutPrefix(msg, "ping "); ok {
				if _, err := pc.WriteTo(fmt.Appendf(nil, "pong %s %s", from, id), from); err != nil {
					say("error %v", err)
				}
			}
		}
	}()
	defer func() { _ = pc.Close(); <-done }()
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 3)
		if len(f) != 3 || f[0] != "send" {
			return fmt.Errorf("bad command %q: want send <ip:port> <payload>", sc.Text())
		}
		to, err := net.ResolveUDPAddr("udp4", f[1])
		if err != nil {
			return err
		}
		if _, err := pc.WriteTo([]byte(f[2]), to); err != nil {
			return err
		}
	}
	return sc.Err()
}

// failRole reads its input to the end and fails.
func failRole(args []string, in io.Reader, out io.Writer) error {
	fmt.Fprintln(out, "started")
	_, _ = io.Copy(io.Discard, in)
	return errors.New("failing on purpose")
}

// wait bounds every wait of these tests for an event: generous, for a
// busy two-core machine; a passing test never waits that long.
const wait = 20 * time.Second

// resend is how long a test waits for the answer to a datagram before it
// sends it again (in case it was lost).
const resend = 500 * time.Millisecond

// startUDP starts udpRole on name's port and waits until it listens.
func startUDP(t *testing.T, lab *Lab, name string, port int) *Proc {
	t.Helper()
	p := lab.Start(t, name, "udp", strconv.Itoa(port))
	line, err := p.Recv(wait)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(line, "ready ") {
		t.Fatalf("%s: first line %q, want ready", p, line)
	}
	return p
}

// send has p send payload to to.
func send(t *testing.T, p *Proc, to netip.AddrPort, payload string) {
	t.Helper()
	if err := p.Send(fmt.Sprintf("send %s %s", to, payload)); err != nil {
		t.Fatal(err)
	}
}

// recvUntil reads p's lines until one satisfies match or timeout passes.
// It returns that line, or "" on timeout, and the lines before it.
func recvUntil(t *testing.T, p *Proc, timeout time.Duration, match func(string) bool) (string, []string) {
	t.Helper()
	var seen []string
	deadline := time.Now().Add(timeout)
	for {
		line, err := p.Recv(time.Until(deadline))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return "", seen
		}
		if err != nil {
			t.Fatal(err)
		}
		if match(line) {
			return line, seen
		}
		seen = append(seen, line)
	}
}

// ping has p ping the udpRole at to with id, again every resend, until the
// pong comes; it returns the address from which the pinged host saw p,
// and the lines p printed before the pong.
func ping(t *testing.T, p *Proc, to netip.AddrPort, id string) (netip.AddrPort, []string) {
	t.Helper()
	prefix := fmt.Sprintf("recv %s pong ", to)
	var before []string
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); {
		send(t, p, to, "ping "+id)
		line, seen := recvUntil(t, p, resend, func(s string) bool {
			return strings.HasPrefix(s, prefix) && strings.HasSuffix(s, " "+id)
		})
		before = append(before, seen...)
		if line == "" {
			continue
		}
		fields := strings.Fields(strings.TrimPrefix(line, prefix))
		seenAs, err := netip.ParseAddrPort(fields[0])
		if err != nil {
			t.Fatalf("%s: pong line %q: %v", p, line, err)
		}
		return seenAs, before
	}
	t.Fatalf("%s: no pong from %s for ping %s within %v; lines: %q", p, to, id, wait, before)
	return netip.AddrPort{}, nil
}

// dropped returns the packet count of the router's nftables counter with
// the given comment ("blackhole" or "unsolicited").
func dropped(t *testing.T, lab *Lab, router, comment string) int {
	t.Helper()
	out := lab.Exec(t, router, "nft", "list", "table", "ip", nftTable)
	re := regexp.MustCompile(`counter packets (\d+) bytes \d+ drop comment "` + comment + `"`)
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no counter %q in %s's ruleset:\n%s", comment, router, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// waitDropped polls the router's counter until it reaches want.
func waitDropped(t *testing.T, lab *Lab, router, comment string, want int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		n := dropped(t, lab, router, comment)
		if n >= want {
			if n > want {
				t.Fatalf("%s's %s counter is %d, want %d: more was dropped than this test sent", router, comment, n, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's %s counter is %d after %v, want %d", router, comment, n, wait, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// oneSite is a lab of two public hosts and one site with one host.
func oneSite(nat NAT) Topology {
	return Topology{
		Public: []string{"p1", "p2"},
		Sites:  []Site{{Router: "r1", NAT: nat, Hosts: []string{"h1"}}},
	}
}

// The port every test's hosts listen on: the NATed host's differs from the
// public hosts', so that port preservation is not a coincidence.
const (
	publicPort = 7000
	hostPort   = 41000
)

// TestEndpointIndependentMapping: a host behind an endpoint-independent NAT
// is seen by two public hosts at the same public address and port, its
// own port.
func TestEndpointIndependentMapping(t *testing.T) {
	lab := New(t, oneSite(EndpointIndependent))
	startUDP(t, lab, "p1", publicPort)
	startUDP(t, lab, "p2", publicPort)
	h := startUDP(t, lab, "h1", hostPort)

	at1, _ := ping(t, h, netip.AddrPortFrom(lab.Addr("p1"), publicPort), "1")
	at2, _ := ping(t, h, netip.AddrPortFrom(lab.Addr("p2"), publicPort), "2")
	want := netip.AddrPortFrom(lab.Addr("r1"), hostPort)
	if at1 != want || at2 != want {
		t.Fatalf("p1 saw h1 at %v and p2 at %v; want both at %v (the router's address, h1's own port)", at1, at2, want)
	}
}

// TestSymmetricMapping: a host behind a symmetric NAT is seen by two public
// hosts at the router's address but at different ports.
func TestSymmetricMapping(t *testing.T) {
	lab := New(t, oneSite(Symmetric))
	startUDP(t, lab, "p1", publicPort)
	startUDP(t, lab, "p2", publicPort)
	h := startUDP(t, lab, "h1", hostPort)

	at1, _ := ping(t, h, netip.AddrPortFrom(lab.Addr("p1"), publicPort), "1")
	at2, _ := ping(t, h, netip.AddrPortFrom(lab.Addr("p2"), publicPort), "2")
	if at1.Addr() != lab.Addr("r1") || at2.Addr() != lab.Addr("r1") {
		t.Fatalf("p1 saw h1 at %v and p2 at %v; want the router's address %v", at1, at2, lab.Addr("r1"))
	}
	if at1.Port() == at2.Port() {
		t.Fatalf("p1 and p2 both saw h1 at port %d; a symmetric NAT maps each destination to its own port", at1.Port())
	}
	// The same destination keeps its mapping.
	again, _ := ping(t, h, netip.AddrPortFrom(lab.Addr("p1"), publicPort), "3")
	if again != at1 {
		t.Fatalf("p1 saw h1 at %v, then at %v; want one mapping per destination", at1, again)
	}
}

// TestUnsolicitedDropped: behind an endpoint-independent NAT, a packet from
// a public host to the host's mapped port is dropped until the host has
// sent to that public host, and let in after: the precondition of hole
// punching.
func TestUnsolicitedDropped(t *testing.T) {
	lab := New(t, oneSite(EndpointIndependent))
	startUDP(t, lab, "p1", publicPort)
	p2 := startUDP(t, lab, "p2", publicPort)
	h := startUDP(t, lab, "h1", hostPort)
	at2 := netip.AddrPortFrom(lab.Addr("p2"), publicPort)

	// The host has a mapping, towards p1.
	mapped, _ := ping(t, h, netip.AddrPortFrom(lab.Addr("p1"), publicPort), "1")

	// p2 sends to the mapping unasked: the router drops it.
	before := dropped(t, lab, "r1", "unsolicited")
	send(t, p2, mapped, "unsolicited")
	waitDropped(t, lab, "r1", "unsolicited", before+1)

	// Once the host has sent to p2 (from the same port, so the same
	// mapping), p2's packets come in.
	if at, _ := ping(t, h, at2, "2"); at != mapped {
		t.Fatalf("p2 saw h1 at %v, p1 at %v; want one mapping", at, mapped)
	}
	send(t, p2, mapped, "solicited")
	line, seen := recvUntil(t, h, wait, func(s string) bool { return s == fmt.Sprintf("recv %s solicited", at2) })
	if line == "" {
		t.Fatalf("h1 did not get p2's packet after it sent to p2; it printed %q", seen)
	}
	for _, s := range seen {
		if strings.HasSuffix(s, " unsolicited") {
			t.Fatalf("h1 got p2's packet from before it sent to p2: %q", s)
		}
	}
}

// TestBlackhole: a blackhole rule on the router stops the traffic between
// a host and a public host, both ways, and its removal restores it.
func TestBlackhole(t *testing.T) {
	lab := New(t, oneSite(EndpointIndependent))
	p1 := startUDP(t, lab, "p1", publicPort)
	h := startUDP(t, lab, "h1", hostPort)
	at1 := netip.AddrPortFrom(lab.Addr("p1"), publicPort)
	mapped, _ := ping(t, h, at1, "1")

	restore := lab.Blackhole(t, "r1", lab.Addr("h1"), lab.Addr("p1"))
	send(t, h, at1, "ping 2")                 // out: dropped
	send(t, p1, mapped, "inbound")            // in, on the live mapping: dropped
	waitDropped(t, lab, "r1", "blackhole", 2) // both, and nothing else

	restore()
	restore() // a second call does nothing
	if _, before := ping(t, h, at1, "3"); len(before) > 0 {
		t.Fatalf("h1 got %q during the blackhole", before)
	}
	if n := dropped(t, lab, "r1", "blackhole"); n != 2 {
		t.Fatalf("the blackhole dropped %d packets, want 2", n)
	}
}

// procStat is a process as /proc shows it.
type procStat struct {
	pid, ppid int
	start     string // start time, in clock ticks after boot: tells reused PIDs apart
}

// readStat reads /proc/<pid>/stat.
func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, false
	}
	// pid (comm) state ppid ... with starttime the 22nd field; comm may
	// hold spaces and parentheses.
	s := string(b)
	rest := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(rest) < 20 {
		return procStat{}, false
	}
	ppid, _ := strconv.Atoi(rest[1])
	return procStat{pid: pid, ppid: ppid, start: rest[19]}, true
}

// allProcs lists every process of /proc.
func allProcs(t *testing.T) []procStat {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []procStat
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			if st, ok := readStat(pid); ok {
				out = append(out, st)
			}
		}
	}
	return out
}

// descendants returns root and every process below it.
func descendants(t *testing.T, root int) []procStat {
	t.Helper()
	all := allProcs(t)
	in := map[int]bool{root: true}
	for changed := true; changed; {
		changed = false
		for _, p := range all {
			if in[p.ppid] && !in[p.pid] {
				in[p.pid], changed = true, true
			}
		}
	}
	var out []procStat
	for _, p := range all {
		if in[p.pid] {
			out = append(out, p)
		}
	}
	return out
}

// TestCleanup: at the end of the test that built it, the lab has stopped
// and reaped every process it started and closed every file it opened, and
// a process's failure or crash is reported.
func TestCleanup(t *testing.T) {
	var procs []procStat
	var closeErr, killErr error
	fds := openFDs(t)
	ok := t.Run("lab", func(t *testing.T) {
		lab := New(t, oneSite(EndpointIndependent))
		startUDP(t, lab, "p1", publicPort)
		startUDP(t, lab, "h1", hostPort)
		failing := lab.Start(t, "p2", "fail")
		if line, err := failing.Recv(wait); err != nil || line != "started" {
			t.Fatalf("fail role: %q, %v", line, err)
		}
		crashing := startUDP(t, lab, "p2", publicPort)

		procs = descendants(t, lab.sys.cmd.Process.Pid)
		// The root, 4 agents and 4 roles, each maybe with a child of
		// its own (none here).
		if len(procs) < 9 {
			t.Fatalf("the lab has %d processes, want at least 9: %v", len(procs), procs)
		}
		closeErr = failing.Close()
		killErr = crashing.Kill()
		if _, err := crashing.Recv(wait); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Recv after Kill: %v, want net.ErrClosed", err)
		}
	})
	if !ok {
		return
	}
	if procs == nil {
		t.Skip("the lab did not run")
	}
	if closeErr == nil || !strings.Contains(closeErr.Error(), "failing on purpose") {
		t.Errorf("Close of a role that failed: %v; want its exit and its standard error", closeErr)
	}
	if killErr != nil {
		t.Errorf("Kill: %v", killErr)
	}
	for _, p := range procs {
		if now, ok := readStat(p.pid); ok && now.start == p.start {
			t.Errorf("process %d (parent %d) of the lab still exists after its test ended", p.pid, p.ppid)
		}
	}
	for _, p := range allProcs(t) {
		if p.ppid == os.Getpid() {
			t.Errorf("process %d, a child of the test process, still exists after the lab's test ended", p.pid)
		}
	}
	if now := openFDs(t); now != fds {
		t.Errorf("the test process has %d open files after the lab's test, %d before", now, fds)
	}
}

// openFDs counts the test process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestPlan checks the address plan and the topology's validation.
func TestPlan(t *testing.T) {
	ms, err := plan(Topology{
		Public: []string{"relay", "boot"},
		Sites: []Site{
			{Router: "r1", NAT: EndpointIndependent, Hosts: []string{"a", "b"}},
			{Router: "r2", NAT: Symmetric, Hosts: []string{"c"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		s := m.name + "=" + m.addr.String()
		if m.lan.IsValid() {
			s += "/" + m.lan.String()
		}
		got = append(got, s)
	}
	want := "relay=203.0.113.10 boot=203.0.113.11 r1=203.0.113.100/10.0.1.1/24 a=10.0.1.10 b=10.0.1.11 r2=203.0.113.101/10.0.2.1/24 c=10.0.2.10"
	if strings.Join(got, " ") != want {
		t.Errorf("plan:\n got %s\nwant %s", strings.Join(got, " "), want)
	}
	for _, bad := range []Topology{
		{Public: []string{"a", "a"}},
		{Public: []string{"internet"}},
		{Public: []string{"a b"}},
		{Sites: []Site{{Router: "r", NAT: "full-cone"}}},
		{Public: []string{"r"}, Sites: []Site{{Router: "r", NAT: Symmetric}}},
		{Sites: []Site{{Router: "r", NAT: Symmetric, Hosts: []string{""}}}},
	} {
		if _, err := plan(bad); err == nil {
			t.Errorf("plan(%+v) accepted an invalid topology", bad)
		}
	}
}

// recorder is a testing.TB that records Skipf and Fatalf.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper()                        {}
func (r *recorder) Skipf(format string, a ...any)  { r.skipped = fmt.Sprintf(format, a...) }
func (r *recorder) Fatalf(format string, a ...any) { r.failed = fmt.Sprintf(format, a...) }

// TestUnavailable: where the lab cannot run, the test is skipped, or
// failed when REALMNET_REQUIRE_NATLAB is set, with the reason.
func TestUnavailable(t *testing.T) {
	err := fmt.Errorf("%w: nft is missing", errUnavailable)
	t.Setenv(RequireEnv, "")
	r := &recorder{}
	unavailable(r, err)
	if !strings.Contains(r.skipped, "nft is missing") || r.failed != "" {
		t.Errorf("without %s: skipped %q, failed %q; want a skip with the reason", RequireEnv, r.skipped, r.failed)
	}
	t.Setenv(RequireEnv, "1")
	r = &recorder{}
	unavailable(r, err)
	if !strings.Contains(r.failed, "nft is missing") || r.skipped != "" {
		t.Errorf("with %s=1: skipped %q, failed %q; want a failure with the reason", RequireEnv, r.skipped, r.failed)
	}
}

// TestLogTail checks the cut of long logs.
func TestLogTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if got := logTail(path); got != "" {
		t.Errorf("logTail of a missing file = %q", got)
	}
	if err := os.WriteFile(path, []byte(strings.Repeat("x", 10000)+"end\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := logTail(path); !strings.HasPrefix(got, "…") || !strings.HasSuffix(got, "end") || len(got) > 9000 {
		t.Errorf("logTail of a long file: %d bytes, want its last 8 KiB", len(got))
	}
}
