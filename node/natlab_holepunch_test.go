package node_test

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"

	"github.com/realmnet/realmnet/internal/natlab"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
)

// labPunchCommand runs the hole punching commands both lab roles share, on
// h; handled is false for another command.
//
//	await-punch-ready          wait until DCUtR is served (the host has a public address) → "punch-ready"
//	upgrade ADDR MS            dial ADDR (a circuit address ending in /p2p/<peer>) and wait up to MS ms
//	                           for a direct connection, with streams running → "upgrade direct=BOOL
//	                           relayed_ns=N direct_ns=N errors=N new=N new_direct=N long=N first_error=Q"
//	                           (times from the dial's start; new: streams opened one after the other,
//	                           new_direct: those on a direct connection; long: echoes on one stream
//	                           opened on the relayed connection)
//	echo-loop PEER MS          new streams with 1 KiB echoes (each 300 ms at most) for MS ms → "loop ok=N
//	                           failed=N relayed_ok=N max_gap_ns=N" (the longest time without a success)
//	await-direct PEER MS       wait up to MS ms for a direct connection to PEER → "direct"
func labPunchCommand(ctx context.Context, h host.Host, command, arg string) (answer string, handled bool, err error) {
	switch command {
	case "await-punch-ready":
		err := labWait(ctx, func() bool { return slices.Contains(h.Mux().Protocols(), holepunch.Protocol) })
		if err != nil {
			return "", true, fmt.Errorf("DCUtR not served: %w; addresses %v", err, h.Addrs())
		}
		return "punch-ready", true, nil
	case "upgrade":
		addr, ms, _ := strings.Cut(arg, " ")
		ai, err := peer.AddrInfoFromString(addr)
		if err != nil {
			return "", true, err
		}
		wait, err := strconv.Atoi(ms)
		if err != nil {
			return "", true, err
		}
		u, err := labUpgrade(ctx, h, *ai, time.Duration(wait)*time.Millisecond)
		if err != nil {
			return "", true, err
		}
		return fmt.Sprintf("upgrade direct=%t relayed_ns=%d direct_ns=%d errors=%d new=%d new_direct=%d long=%d first_error=%q",
			u.direct, u.relayedAt, u.directAt, u.errors, u.newStreams, u.newDirect, u.longEchoes, u.firstError), true, nil
	case "echo-loop", "await-direct":
		p, ms, err := peerAndCount(arg)
		if err != nil {
			return "", true, err
		}
		d := time.Duration(ms) * time.Millisecond
		if command == "await-direct" {
			wctx, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			if err := labWait(wctx, func() bool { return hasDirectConn(h, p) }); err != nil {
				return "", true, fmt.Errorf("no direct connection to %s: %w", p, err)
			}
			return "direct", true, nil
		}
		return labEchoLoop(ctx, h, p, d), true, nil
	}
	return "", false, nil
}

// labNodePunchCommand is labPunchCommand on a realmnet node, plus
//
//	hp-stats PEER              → "stats attempts=N successes=N failures=N upgrades=N ttd_ns=N"
//	await-attempts PEER N      wait until more than N hole punches with PEER ended → "attempts N"
func labNodePunchCommand(ctx context.Context, n *node.Node, command, arg string) (string, bool, error) {
	switch command {
	case "await-attempts":
		p, above, err := peerAndCount(arg)
		if err != nil {
			return "", true, err
		}
		var st node.HolePunchStats
		err = labWait(ctx, func() bool { st, _ = n.HolePunchStats(p); return st.Attempts > above })
		if err != nil {
			return "", true, fmt.Errorf("%w: %+v", err, st)
		}
		return fmt.Sprintf("attempts %d", st.Attempts), true, nil
	case "hp-stats", "hp-stats-full":
		p, err := peer.Decode(arg)
		if err != nil {
			return "", true, err
		}
		st, _ := n.HolePunchStats(p)
		if command == "hp-stats-full" {
			return fmt.Sprintf("stats %+v", st), true, nil
		}
		return fmt.Sprintf("stats attempts=%d successes=%d failures=%d upgrades=%d ttd_ns=%d",
			st.Attempts, st.Successes, st.Failures, st.Upgrades, st.TimeToDirect), true, nil
	}
	return labPunchCommand(ctx, n.Host(), command, arg)
}

// peerAndCount parses a command's "PEER N" argument.
func peerAndCount(arg string) (peer.ID, int, error) {
	id, n, _ := strings.Cut(arg, " ")
	p, err := peer.Decode(id)
	if err != nil {
		return "", 0, err
	}
	count, err := strconv.Atoi(n)
	if err != nil {
		return "", 0, fmt.Errorf("%q: %w", n, err)
	}
	return p, count, nil
}

// labWait polls done every 5 ms until it is true or ctx ends.
func labWait(ctx context.Context, done func() bool) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !done() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func hasDirectConn(h host.Host, p peer.ID) bool {
	for _, c := range h.Network().ConnsToPeer(p) {
		if !c.Stat().Limited && !c.IsClosed() {
			return true
		}
	}
	return false
}

// upgradeResult is what labUpgrade saw.
type upgradeResult struct {
	direct                        bool
	relayedAt, directAt           time.Duration
	errors, newStreams, newDirect int
	longEchoes                    int
	firstError                    string
}

// labUpgrade dials ai (its circuit address only), then runs two kinds of
// streams until a direct connection has carried new streams for 300 ms, or
// wait ends: new streams one after the other (1 KiB echoes) and one stream
// opened on the relayed connection, echoing 64 bytes every 5 ms.
func labUpgrade(ctx context.Context, h host.Host, ai peer.AddrInfo, wait time.Duration) (upgradeResult, error) {
	var r upgradeResult
	directCh := make(chan time.Time, 1)
	notifiee := &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		if c.RemotePeer() == ai.ID && !c.Stat().Limited {
			select {
			case directCh <- time.Now():
			default:
			}
		}
	}}
	h.Network().Notify(notifiee)
	defer h.Network().StopNotify(notifiee)
	h.Peerstore().ClearAddrs(ai.ID)
	limitedOK := network.WithAllowLimitedConn(ctx, "lab")
	start := time.Now()
	if err := h.Connect(limitedOK, ai); err != nil {
		return r, fmt.Errorf("%w (addresses %v)", err, h.Peerstore().Addrs(ai.ID))
	}
	r.relayedAt = time.Since(start)

	tctx, stop := context.WithCancel(limitedOK)
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		r.errors++
		if r.firstError == "" {
			r.firstError = err.Error()
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		s, err := h.NewStream(tctx, ai.ID, testnode.EchoProtocol)
		if err != nil {
			fail(fmt.Errorf("long stream: %w", err))
			return
		}
		defer s.Close()
		msg, reply := make([]byte, 64), make([]byte, 64)
		for tctx.Err() == nil {
			_ = s.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := s.Write(msg); err != nil {
				fail(fmt.Errorf("long stream write: %w", err))
				return
			}
			if _, err := io.ReadFull(s, reply); err != nil {
				fail(fmt.Errorf("long stream read: %w", err))
				return
			}
			mu.Lock()
			r.longEchoes++
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	})
	wg.Go(func() {
		for tctx.Err() == nil {
			s, err := h.NewStream(tctx, ai.ID, testnode.EchoProtocol)
			if err != nil {
				if tctx.Err() == nil {
					fail(fmt.Errorf("new stream: %w", err))
				}
				continue
			}
			direct := !s.Conn().Stat().Limited
			if err := testnode.EchoErr(s, 1024); err != nil {
				fail(fmt.Errorf("new stream echo: %w", err))
				continue
			}
			mu.Lock()
			r.newStreams++
			if direct {
				r.newDirect++
			}
			mu.Unlock()
		}
	})
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case at := <-directCh:
		r.direct, r.directAt = true, at.Sub(start)
		// Until a few new streams have run on the direct path (the
		// caller checks new_direct), within the wait.
		wctx, cancel := context.WithTimeout(ctx, wait)
		_ = labWait(wctx, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return r.newDirect >= 3 || r.errors > 0
		})
		cancel()
	case <-timer.C:
	case <-ctx.Done():
	}
	stop()
	wg.Wait()
	return r, nil
}

// labEchoLoop runs 1 KiB echoes on new streams to p, each bounded by
// 300 ms, for d.
func labEchoLoop(ctx context.Context, h host.Host, p peer.ID, d time.Duration) string {
	limitedOK := network.WithAllowLimitedConn(ctx, "lab")
	start := time.Now()
	last := start
	var ok, failed, relayed int
	var maxGap time.Duration
	for time.Since(start) < d && ctx.Err() == nil {
		ectx, cancel := context.WithTimeout(limitedOK, 300*time.Millisecond)
		s, err := h.NewStream(ectx, p, testnode.EchoProtocol)
		if err == nil {
			_ = s.SetDeadline(time.Now().Add(300 * time.Millisecond))
			limited := s.Conn().Stat().Limited
			if err = testnode.EchoErr(s, 1024); err == nil {
				ok++
				if limited {
					relayed++
				}
				maxGap = max(maxGap, time.Since(last))
				last = time.Now()
			}
		}
		cancel()
		if err != nil {
			failed++
		}
	}
	maxGap = max(maxGap, time.Since(last))
	return fmt.Sprintf("loop ok=%d failed=%d relayed_ok=%d max_gap_ns=%d", ok, failed, relayed, maxGap)
}

// field returns the value of key=value in line.
func field(t testing.TB, line, key string) string {
	t.Helper()
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	t.Fatalf("%q has no %s", line, key)
	return ""
}

func intField(t testing.TB, line, key string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(field(t, line, key), 10, 64)
	if err != nil {
		t.Fatalf("%q: %s: %v", line, key, err)
	}
	return v
}

// punchLab is the NAT matrix: a relay; listeners (with a reservation on the
// relay) behind r1 (endpoint-independent) and r3 (symmetric); dialers behind
// r2 (endpoint-independent) and r4 (symmetric). Each host's s-prefixed twin
// runs the stock go-libp2p side of the benchmark.
func punchLab(t testing.TB) *natlab.Lab {
	return natlab.New(t, natlab.Topology{
		Public: []string{"relay"},
		Sites: []natlab.Site{
			{Router: "r1", NAT: natlab.EndpointIndependent, Hosts: []string{"a", "sa"}},
			{Router: "r2", NAT: natlab.EndpointIndependent, Hosts: []string{"b", "sb"}},
			{Router: "r3", NAT: natlab.Symmetric, Hosts: []string{"c", "sc"}},
			{Router: "r4", NAT: natlab.Symmetric, Hosts: []string{"d", "sd"}},
		},
	})
}

// startLabRole starts role on host name with -listen and args, and waits
// for it to be ready.
func startLabRole(t testing.TB, lab *natlab.Lab, name, role string, args ...string) *labProc {
	t.Helper()
	p := &labProc{Proc: lab.Start(t, name, role, append([]string{"-listen", lab.Addr(name).String()}, args...)...)}
	fields := strings.Fields(p.expect(t, "ready ", 60*time.Second))
	id, err := peer.Decode(fields[1])
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	p.id, p.addr = id, fields[2]
	return p
}

// punchArgs are args for role with hole punching on (a stock host has it
// off by default).
func punchArgs(role string, args ...string) []string {
	if role == labStockRole {
		return append(args, "-holepunch")
	}
	return args
}

// startPunchListener starts a private listener with the relay as static
// relay and returns it with its circuit address (ending in its /p2p/ID),
// once it serves DCUtR.
func startPunchListener(t testing.TB, lab *natlab.Lab, name, role string, port int, relay *labProc) (*labProc, string) {
	t.Helper()
	// Every trial's dialer reaches the listener from its router's one
	// public IP, which rcmgr's default rate limit (a burst of 16, then one
	// per 5 s) would refuse from the 17th on. (A stock listener's
	// relayed connections, which all carry the relay's IP, would be
	// refused from the 17th too: rcmgr's per-IP limits apply to them in
	// go-libp2p.)
	args := []string{"-port", strconv.Itoa(port), "-relay", relay.addr, "-private", "-no-conn-rate-limit"}
	l := startLabRole(t, lab, name, role, punchArgs(role, args...)...)
	circuit := strings.TrimPrefix(l.do(t, "await-circuit", "circuit "), "circuit ")
	l.do(t, "await-punch-ready", "punch-ready")
	return l, circuit + "/p2p/" + l.id.String()
}

// startPunchDialer starts a dialer on a fresh port (so that no NAT mapping
// of an earlier trial helps), connected to the relay and serving DCUtR.
func startPunchDialer(t testing.TB, lab *natlab.Lab, name, role string, port int, relay *labProc) *labProc {
	t.Helper()
	d := startLabRole(t, lab, name, role, punchArgs(role, "-port", strconv.Itoa(port))...)
	d.do(t, "dial "+relay.addr, "dialed ")
	d.do(t, "await-punch-ready", "punch-ready")
	return d
}

// TestNATLabHolePunch is the automatic upgrade in the NAT lab, with
// realmnet nodes at both ends:
//
//   - both behind endpoint-independent NATs: 20 trials, each with a fresh
//     dialer on a fresh port, dial the listener's circuit address; each
//     gets a direct path within 1 s of the relayed connection, while
//     streams run without an error across the upgrade (new streams go
//     direct; one opened on the relayed path keeps echoing);
//   - one or both behind symmetric NATs: the pair keeps working on the
//     relayed path (the cells that punched are logged);
//   - the direct path blackholed after the upgrade: new streams fall back
//     to the relay within 1 s, the listener retries the upgrade (a hole
//     punch after the direct path died), and once the path is restored a
//     direct path comes back.
func TestNATLabHolePunch(t *testing.T) {
	lab := punchLab(t)
	relay := startLabRole(t, lab, "relay", labNodeRole, "-relay-service", "-no-conn-rate-limit")
	a, circuitA := startPunchListener(t, lab, "a", labNodeRole, 4001, relay)
	c, circuitC := startPunchListener(t, lab, "c", labNodeRole, 4001, relay)

	const trials = 20
	var lastDialer *labProc
	var ttds []time.Duration
	for i := range trials {
		b := startPunchDialer(t, lab, "b", labNodeRole, 4100+i, relay)
		res := b.do(t, "upgrade "+circuitA+" 5000", "upgrade ")
		if field(t, res, "direct") != "true" {
			t.Fatalf("trial %d: no direct path through two endpoint-independent NATs: %s; the listener's figures: %s",
				i+1, res, a.do(t, "hp-stats-full "+b.id.String(), "stats "))
		}
		ttd := time.Duration(intField(t, res, "direct_ns") - intField(t, res, "relayed_ns"))
		ttds = append(ttds, ttd)
		if ttd > time.Second {
			t.Errorf("trial %d: direct %s after the relayed connection; want 1 s at most: %s", i+1, ttd, res)
		}
		if intField(t, res, "errors") != 0 || intField(t, res, "new_direct") == 0 || intField(t, res, "long") == 0 {
			t.Errorf("trial %d: streams across the upgrade: %s", i+1, res)
		}
		if i < trials-1 {
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
		} else {
			lastDialer = b
		}
	}
	slices.Sort(ttds)
	t.Logf("endpoint-independent/endpoint-independent: %d of %d direct; relayed → direct p50 %s, max %s",
		len(ttds), trials, ttds[len(ttds)/2].Round(time.Millisecond), ttds[len(ttds)-1].Round(time.Millisecond))

	// The symmetric cells: the pair keeps working, relayed where the
	// punch fails.
	for _, cell := range []struct {
		name, circuit, dialer string
	}{
		{"endpoint-independent/symmetric", circuitA, "d"},
		{"symmetric/endpoint-independent", circuitC, "b"},
		{"symmetric/symmetric", circuitC, "d"},
	} {
		d := startPunchDialer(t, lab, cell.dialer, labNodeRole, 4200, relay)
		res := d.do(t, "upgrade "+cell.circuit+" 3000", "upgrade ")
		if intField(t, res, "errors") != 0 || intField(t, res, "new") == 0 || intField(t, res, "long") == 0 {
			t.Errorf("%s: the pair does not keep working: %s", cell.name, res)
		}
		t.Logf("%s: direct=%s (%s)", cell.name, field(t, res, "direct"), res)
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
	_ = c

	// Blackhole the last trial's direct path (a ↔ b's router).
	b := lastDialer
	before := intField(t, a.do(t, "hp-stats "+b.id.String(), "stats "), "attempts")
	if err := b.Send(fmt.Sprintf("echo-loop %s 2500", a.id)); err != nil {
		t.Fatal(err)
	}
	restore := lab.Blackhole(t, "r1", lab.Addr("a"), lab.Addr("r2"))
	loop := b.expect(t, "loop ", 30*time.Second)
	gap := time.Duration(intField(t, loop, "max_gap_ns"))
	t.Logf("blackholed: %s (longest gap %s)", loop, gap.Round(time.Millisecond))
	if gap > time.Second || intField(t, loop, "relayed_ok") == 0 {
		t.Errorf("streams did not fall back to the relayed path within 1 s: %s", loop)
	}
	// The direct path dies (no heartbeat answer for 6.5 s) and the
	// listener tries the upgrade again at once; it fails while the path
	// is blackholed.
	a.do(t, fmt.Sprintf("await-attempts %s %d", b.id, before), "attempts ")
	restore()
	b.do(t, fmt.Sprintf("await-direct %s 30000", a.id), "direct")
	// (The direct path that comes back may be the retried punch's, or a
	// standby path b's multipath dialed to a's public address meanwhile:
	// only the retry itself, awaited above, is the listener's.)
	t.Logf("after the retry: %s", a.do(t, "hp-stats "+b.id.String(), "stats "))
}

// BenchmarkNATLabHolePunch is the NAT matrix, realmnet and stock go-libp2p
// (libp2p.New with hole punching, the same relay) side by side in one lab:
// in each cell (the listener's NAT / the dialer's) and trial, a realmnet
// dialer and a stock one, each a fresh process on a fresh port, dial their
// listener's circuit address at the same moment. Reported per cell and
// side: the success rate and, over the successes, the time to the direct
// connection from the dial of the circuit address and from the relayed
// connection, p50 and p99 (the max, with 20 trials or fewer). The
// endpoint-independent cell runs alone, the three cells with a symmetric
// NAT then run at the same time (about 45 s in all).
func BenchmarkNATLabHolePunch(b *testing.B) {
	lab := punchLab(b)
	relay := startLabRole(b, lab, "relay", labNodeRole, "-relay-service", "-no-conn-rate-limit")
	// The listeners: realmnet on port 4001, stock on 4002 (two hosts
	// behind one NAT keep their ports only when they differ).
	circuits := map[string]string{}
	for _, l := range []struct {
		name, role string
		port       int
	}{{"a", labNodeRole, 4001}, {"sa", labStockRole, 4002}, {"c", labNodeRole, 4001}, {"sc", labStockRole, 4002}} {
		_, circuits[l.name] = startPunchListener(b, lab, l.name, l.role, l.port, relay)
	}
	sides := []struct{ name, role, prefix string }{{"realmnet", labNodeRole, ""}, {"libp2p", labStockRole, "s"}}
	type cellSpec struct {
		name     string
		listener string // "a": endpoint-independent, "c": symmetric
		dialer   string // "b": endpoint-independent, "d": symmetric
		trials   int
		wait     time.Duration
		port     int // the first dialer port of the cell
	}
	type cellResult struct {
		times       map[string][]time.Duration // from the dial of the circuit address
		fromRelayed map[string][]time.Duration // from the relayed connection
	}
	runCell := func(cell cellSpec) cellResult {
		var mu sync.Mutex
		res := cellResult{times: map[string][]time.Duration{}, fromRelayed: map[string][]time.Duration{}}
		port := cell.port
		for range cell.trials {
			var wg sync.WaitGroup
			for _, s := range sides {
				dport := port
				port++
				wg.Go(func() {
					d := startPunchDialer(b, lab, s.prefix+cell.dialer, s.role, dport, relay)
					defer d.Close()
					out := d.do(b, fmt.Sprintf("upgrade %s %d", circuits[s.prefix+cell.listener], cell.wait.Milliseconds()), "upgrade ")
					if field(b, out, "direct") != "true" {
						return
					}
					mu.Lock()
					defer mu.Unlock()
					res.times[s.name] = append(res.times[s.name], time.Duration(intField(b, out, "direct_ns")))
					res.fromRelayed[s.name] = append(res.fromRelayed[s.name], time.Duration(intField(b, out, "direct_ns")-intField(b, out, "relayed_ns")))
				})
			}
			wg.Wait()
		}
		return res
	}
	// The endpoint-independent cell alone: its times are the figures.
	// Then the three cells with a symmetric NAT at once: their figure is
	// the success rate (none: a symmetric NAT maps each destination to a
	// new port), each trial waits its whole window, and one after the
	// other they took 36 s of the suite's 5 minutes.
	cells := []cellSpec{
		{"EIM-EIM", "a", "b", 20, 5 * time.Second, 4100},
		{"EIM-sym", "a", "d", 3, 4 * time.Second, 4200},
		{"sym-EIM", "c", "b", 3, 4 * time.Second, 4300},
		{"sym-sym", "c", "d", 3, 4 * time.Second, 4400},
	}
	results := make([]cellResult, len(cells))
	results[0] = runCell(cells[0])
	var wg sync.WaitGroup
	for i := 1; i < len(cells); i++ {
		wg.Go(func() { results[i] = runCell(cells[i]) })
	}
	wg.Wait()
	for i, cell := range cells {
		for _, s := range sides {
			ts := results[i].times[s.name]
			b.ReportMetric(float64(len(ts))/float64(cell.trials), fmt.Sprintf("%s-%s-success", s.name, cell.name))
			if len(ts) == 0 {
				continue
			}
			for _, m := range []struct {
				suffix string
				ts     []time.Duration
			}{{"", ts}, {"-after-relayed", results[i].fromRelayed[s.name]}} {
				slices.Sort(m.ts)
				b.ReportMetric(float64(m.ts[len(m.ts)/2].Microseconds())/1000, fmt.Sprintf("%s-%s-p50-ms%s", s.name, cell.name, m.suffix))
				b.ReportMetric(float64(m.ts[len(m.ts)*99/100].Microseconds())/1000, fmt.Sprintf("%s-%s-p99-ms%s", s.name, cell.name, m.suffix))
			}
		}
	}
}
