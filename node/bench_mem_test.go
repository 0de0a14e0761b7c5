package node_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	basicconnmgr "github.com/libp2p/go-libp2p/p2p/net/connmgr"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/benchkit"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/node"
)

const (
	// benchMemPeers is the number of peers of BenchmarkMemory.
	benchMemPeers = 200
	// benchMemEnv makes the test binary one of BenchmarkMemory's child
	// processes (see init): "peers:<count>" or "measure:<side>:<peer file>".
	benchMemEnv = "REALMNET_BENCH_MEM"
)

// init turns the test binary into a child process of BenchmarkMemory when
// benchMemEnv is set; it never returns then.
func init() {
	if v := os.Getenv(benchMemEnv); v != "" {
		os.Exit(benchMemChild(v))
	}
}

// benchMemSample is one process's memory at one instant, after a full GC
// that returned free memory to the system (debug.FreeOSMemory).
type benchMemSample struct {
	HeapBytes  uint64 // runtime/metrics /gc/heap/live:bytes: the heap the last GC marked live
	RSSBytes   uint64 // VmRSS of /proc/self/status
	Goroutines int
}

// benchMemResult is what a measuring child reports: the process before the
// host exists, with the idle host, and with a connection to every peer.
type benchMemResult struct {
	Base, Idle, Conns benchMemSample
	NConns            int
}

// benchMemSnapshot waits until the number of goroutines has stayed the same
// for three reads 100 ms apart (at most 5 s: the host's start-up and
// identify goroutines have ended), then samples five times, 200 ms apart,
// and keeps the smallest live heap (with that sample's RSS and goroutines).
//
// Each sample collects garbage twice and returns free memory to the system.
// The first collection moves sync.Pool caches to the pools' victim caches,
// the second frees them: quic-go caches its packet buffers there, 20 KB per
// send buffer, as many as were returned just before, however many
// connections there are. The heap is the live heap as the last collection
// marked it (runtime/metrics /gc/heap/live:bytes), not MemStats.HeapAlloc,
// which also counts what was allocated since, garbage included. The
// smallest of five samples leaves out a transient that one sample still
// catches (a send buffer returned between the two collections: in heap
// profiles of the 200-connection sample, four or five of them, 0.4 KiB per
// connection, always on the side whose connections had just sent a
// packet); state that every connection holds is in every sample.
func benchMemSnapshot() benchMemSample {
	last, same := runtime.NumGoroutine(), 0
	for deadline := time.Now().Add(5 * time.Second); same < 3 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		if g := runtime.NumGoroutine(); g == last {
			same++
		} else {
			last, same = g, 0
		}
	}
	var best benchMemSample
	for i := range 5 {
		if i > 0 {
			time.Sleep(200 * time.Millisecond)
		}
		runtime.GC()
		debug.FreeOSMemory()
		live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		metrics.Read(live)
		if s := live[0].Value.Uint64(); i == 0 || s < best.HeapBytes {
			best = benchMemSample{HeapBytes: s, RSSBytes: benchRSS(), Goroutines: runtime.NumGoroutine()}
		}
	}
	return best
}

// benchRSS returns the process's resident set size (VmRSS), 0 when
// /proc/self/status cannot be read.
func benchRSS() uint64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// benchMemChild runs a child process's role and returns its exit code.
func benchMemChild(role string) int {
	fields := strings.Split(role, ":")
	switch {
	case len(fields) == 2 && fields[0] == "peers":
		count, err := strconv.Atoi(fields[1])
		if err != nil || count <= 0 {
			fmt.Fprintf(os.Stderr, "bad %s=%q\n", benchMemEnv, role)
			return 2
		}
		return benchMemPeerProcess(count)
	case len(fields) == 3 && fields[0] == "measure":
		return benchMemMeasure(fields[1], fields[2])
	}
	fmt.Fprintf(os.Stderr, "bad %s=%q\n", benchMemEnv, role)
	return 2
}

// benchMemPeerProcess runs count stock go-libp2p hosts on 127.0.0.1 (the
// peers of both sides), prints "PEER <AddrInfo JSON>" for each and
// "READY", and closes them at stdin's EOF.
func benchMemPeerProcess(count int) int {
	hosts := make([]host.Host, 0, count)
	defer func() {
		for _, h := range hosts {
			_ = h.Close()
		}
	}()
	out := bufio.NewWriter(os.Stdout)
	for range count {
		h, err := libp2p.New(libp2p.Transport(libp2pquic.NewTransport), libp2p.ListenAddrStrings(testkit.Loopback), libp2p.DisableRelay())
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		hosts = append(hosts, h)
		js, err := json.Marshal(peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Fprintf(out, "PEER %s\n", js)
	}
	fmt.Fprintln(out, "READY")
	_ = out.Flush()
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// benchMemMeasure builds one host of side ("realmnet" or "libp2p") in this
// otherwise idle process, connects it to every peer in the JSON file and
// prints "RESULT <benchMemResult JSON>". Both sides' connection managers
// hold 400–500 connections, so none of the 200 is trimmed: realmnet's
// node.ConnLimits for the global and unassigned pools (the defaults keep
// 32–64 unassigned connections), go-libp2p's BasicConnMgr(400, 500) (the
// default is 160–192).
func benchMemMeasure(side, file string) int {
	data, err := os.ReadFile(file)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var peers []peer.AddrInfo
	if err := json.Unmarshal(data, &peers); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if os.Getenv(benchMemProfileEnv) != "" {
		runtime.MemProfileRate = 1 // every allocation in the profile
	}
	ctx := context.Background()
	var res benchMemResult
	res.Base = benchMemSnapshot()
	var (
		h       host.Host
		connect func(context.Context, peer.AddrInfo) error
		closeH  func() error
	)
	switch side {
	case "realmnet":
		n, err := node.New(ctx, node.ListenAddrStrings(testkit.Loopback), node.DHTMode(node.DHTClient),
			node.ConnLimits(connmgr.Config{
				LowWater: 400, HighWater: 500,
				Unassigned: core.PoolLimits{LowWater: 400, HighWater: 500},
			}))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		h, connect, closeH = n.Host(), n.Connect, n.Close
	case "libp2p":
		cm, err := basicconnmgr.NewConnManager(400, 500)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		h, err = libp2p.New(libp2p.Transport(libp2pquic.NewTransport), libp2p.ListenAddrStrings(testkit.Loopback),
			libp2p.DisableRelay(), libp2p.ConnectionManager(cm))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		connect, closeH = h.Connect, h.Close
	default:
		fmt.Fprintf(os.Stderr, "unknown side %q\n", side)
		return 2
	}
	defer func() { _ = closeH() }()
	res.Idle = benchMemSnapshot()
	if dir := os.Getenv(benchMemProfileEnv); dir != "" {
		if err := benchWriteHeapProfile(filepath.Join(dir, side+"-idle.heap")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}

	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < len(peers); i = int(next.Add(1)) - 1 {
				cctx, cancel := context.WithTimeout(ctx, benchSetupTimeout)
				if err := connect(cctx, peers[i]); err != nil {
					failed.Add(1)
					fmt.Fprintf(os.Stderr, "connect %s: %v\n", peers[i].ID, err)
				}
				cancel()
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		return 1
	}
	res.Conns = benchMemSnapshot()
	res.NConns = len(h.Network().Conns())
	if dir := os.Getenv(benchMemProfileEnv); dir != "" {
		if err := benchWriteHeapProfile(filepath.Join(dir, side+".heap")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	js, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("RESULT %s\n", js)
	return 0
}

// benchMemProfileEnv names a directory where each measured host of
// BenchmarkMemory writes a heap profile ("realmnet.heap", "libp2p.heap")
// once its connections are up, for `go tool pprof -diff_base`.
const benchMemProfileEnv = "REALMNET_BENCH_MEM_HEAPPROFILE"

// benchWriteHeapProfile writes the heap profile after a GC to file.
func benchWriteHeapProfile(file string) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// benchChild is a running child process of this test binary.
type benchChild struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *bytes.Buffer
}

// benchStartChild re-executes the test binary with env set (and no GOLOG_
// variables, to keep the child's logs out of the parent's); its stdout
// lines arrive on lines. Its stdin is closed and it is waited for (killed
// after 60 s) at the end of b.
func benchStartChild(b *testing.B, env string) *benchChild {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	c := &benchChild{cmd: exec.Command(exe), lines: make(chan string, 1024), stderr: new(bytes.Buffer)}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOLOG_") {
			c.cmd.Env = append(c.cmd.Env, kv)
		}
	}
	c.cmd.Env = append(c.cmd.Env, env)
	c.cmd.Stderr = c.stderr
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	go func() { _ = c.cmd.Wait(); close(done) }()
	b.Cleanup(func() {
		_ = c.stdin.Close()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			_ = c.cmd.Process.Kill()
			<-done
		}
	})
	return c
}

// line returns the first stdout line with prefix (the prefix removed),
// failing b when the child ends or within passes first.
func (c *benchChild) line(b *testing.B, prefix string, within time.Duration, skip func(string)) string {
	b.Helper()
	timeout := time.After(within)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				b.Fatalf("child process ended before %q: %s", prefix, c.stderr)
			}
			if v, found := strings.CutPrefix(l, prefix); found {
				return v
			}
			if skip != nil {
				skip(l)
			}
		case <-timeout:
			b.Fatalf("child process: no %q line within %s: %s", prefix, within, c.stderr)
		}
	}
}

// BenchmarkMemory measures the memory of an idle host and of each of its
// connections: realmnet (a node as node.New makes it, DHT client, with its
// multipath manager, realm service and pools) against stock go-libp2p
// (libp2p.New, QUIC only, no relay, no DHT).
//
// Setup: 200 stock go-libp2p hosts on 127.0.0.1 in one child process (the
// test binary re-executed with REALMNET_BENCH_MEM=peers:200), the peers of
// both sides. Each measurement is a fresh child process
// (REALMNET_BENCH_MEM=measure:<side>:<file>) holding one host and nothing
// else, so that the measured process is clean: it samples itself before the
// host exists, with the idle host, and connected to all 200 peers (8
// concurrent Connects, each waiting for identify), each sample taken once
// the goroutine count has been stable for 300 ms, after a GC that returned
// free memory to the system (benchMemSnapshot). Both connection managers
// are raised to hold the 200 connections (benchMemMeasure).
//
// Sides alternate: realmnet, libp2p, libp2p, realmnet (two rounds, the
// first side alternating). Reported per side (mean of its two
// measurements): idle host "-idle-heap-KiB", "-idle-rss-KiB",
// "-idle-goroutines" (minus the empty process) and per connection
// "-conn-heap-KiB", "-conn-rss-KiB", "-conn-goroutines" (the 200-peer
// sample minus the idle one, over the number of connections); and the
// ratios realmnet/libp2p of each, per round ("…-ratio-min", "…-ratio-max"
// over the two rounds, "…-ratio" their mean). The benchmark ignores b.N
// and takes about 30 s.
func BenchmarkMemory(b *testing.B) {
	peers := benchStartChild(b, fmt.Sprintf("%s=peers:%d", benchMemEnv, benchMemPeers))
	var infos []peer.AddrInfo
	for len(infos) < benchMemPeers {
		var ai peer.AddrInfo
		js := peers.line(b, "PEER ", 120*time.Second, nil)
		if err := json.Unmarshal([]byte(js), &ai); err != nil {
			b.Fatalf("peer line %q: %v", js, err)
		}
		infos = append(infos, ai)
	}
	peers.line(b, "READY", 30*time.Second, nil)
	file := filepath.Join(b.TempDir(), "peers.json")
	js, err := json.Marshal(infos)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(file, js, 0o600); err != nil {
		b.Fatal(err)
	}

	measure := func(side string) benchMemResult {
		c := benchStartChild(b, fmt.Sprintf("%s=measure:%s:%s", benchMemEnv, side, file))
		var res benchMemResult
		if err := json.Unmarshal([]byte(c.line(b, "RESULT ", 120*time.Second, nil)), &res); err != nil {
			b.Fatal(err)
		}
		if res.NConns != benchMemPeers {
			b.Fatalf("%s: %d connections, want %d", side, res.NConns, benchMemPeers)
		}
		return res
	}
	type figures struct{ idleHeap, idleRSS, idleG, connHeap, connRSS, connG float64 }
	fig := func(r benchMemResult) figures {
		n := float64(r.NConns)
		return figures{
			idleHeap: (float64(r.Idle.HeapBytes) - float64(r.Base.HeapBytes)) / 1024,
			idleRSS:  (float64(r.Idle.RSSBytes) - float64(r.Base.RSSBytes)) / 1024,
			idleG:    float64(r.Idle.Goroutines - r.Base.Goroutines),
			connHeap: (float64(r.Conns.HeapBytes) - float64(r.Idle.HeapBytes)) / 1024 / n,
			connRSS:  (float64(r.Conns.RSSBytes) - float64(r.Idle.RSSBytes)) / 1024 / n,
			connG:    float64(r.Conns.Goroutines-r.Idle.Goroutines) / n,
		}
	}
	var rounds [][2]figures // realmnet, libp2p
	for i := range 2 {
		var r figures
		var l figures
		if i%2 == 0 {
			r = fig(measure("realmnet"))
			l = fig(measure("libp2p"))
		} else {
			l = fig(measure("libp2p"))
			r = fig(measure("realmnet"))
		}
		b.Logf("round %d: realmnet %+v; libp2p %+v", i, r, l)
		rounds = append(rounds, [2]figures{r, l})
	}
	for b.Loop() {
	}
	b.ReportMetric(0, "ns/op")
	for _, m := range []struct {
		name string
		get  func(figures) float64
	}{
		{"idle-heap-KiB", func(f figures) float64 { return f.idleHeap }},
		{"idle-rss-KiB", func(f figures) float64 { return f.idleRSS }},
		{"idle-goroutines", func(f figures) float64 { return f.idleG }},
		{"conn-heap-KiB", func(f figures) float64 { return f.connHeap }},
		{"conn-rss-KiB", func(f figures) float64 { return f.connRSS }},
		{"conn-goroutines", func(f figures) float64 { return f.connG }},
	} {
		var rs, ls, ratios []float64
		for _, rd := range rounds {
			rs = append(rs, m.get(rd[0]))
			ls = append(ls, m.get(rd[1]))
			ratios = append(ratios, benchkit.Ratio(m.get(rd[0]), m.get(rd[1])))
		}
		spread := benchkit.Summarize(ratios)
		b.ReportMetric(benchkit.Summarize(rs).Median, "realmnet-"+m.name)
		b.ReportMetric(benchkit.Summarize(ls).Median, "libp2p-"+m.name)
		b.ReportMetric(spread.Median, m.name+"-ratio")
		b.ReportMetric(spread.Min, m.name+"-ratio-min")
		b.ReportMetric(spread.Max, m.name+"-ratio-max")
	}
}
