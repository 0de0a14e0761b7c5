package node_test

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/x/rate"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/realmnet/realmnet/internal/natlab"
	"github.com/realmnet/realmnet/internal/testnode"
)

// labStockRole is the role of a stock go-libp2p host in the NAT lab
// (runLabStock): the reference of BenchmarkNATLabRelayedPath.
const labStockRole = "stock"

// labHostCommand runs the commands both lab roles share, on h; handled is
// false for another command.
//
//	await-circuit        wait for a /p2p-circuit address → "circuit ADDR"
//	dial ADDR            connect to ADDR (ending in /p2p/<peer>) → "dialed limited=BOOL"
//	rtt PEER N           N new streams + 1 KiB echoes (limited allowed) → "rtt P50NS P99NS"
//	send PEER BYTES      BYTES on one stream, acknowledged → "sent NS"
func labHostCommand(ctx context.Context, h host.Host, command, arg string) (answer string, handled bool, err error) {
	limitedOK := network.WithAllowLimitedConn(ctx, "lab")
	switch command {
	case "await-circuit":
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, a := range h.Addrs() {
				if _, err := a.ValueForProtocol(ma.P_CIRCUIT); err == nil {
					return "circuit " + a.String(), true, nil
				}
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				return "", true, fmt.Errorf("%w; addresses: %v", ctx.Err(), h.Addrs())
			}
		}
	case "dial":
		ai, err := peer.AddrInfoFromString(arg)
		if err != nil {
			return "", true, err
		}
		if err := h.Connect(limitedOK, *ai); err != nil {
			return "", true, err
		}
		limited := true
		for _, c := range h.Network().ConnsToPeer(ai.ID) {
			limited = limited && c.Stat().Limited
		}
		return fmt.Sprintf("dialed limited=%t", limited), true, nil
	case "rtt", "send":
		p, count, err := peerAndCount(arg)
		if err != nil {
			return "", true, err
		}
		if command == "send" {
			chunk := bytes.Repeat([]byte{0x5a}, benchThroughputChunk)
			start := time.Now()
			if err := benchSendOnce(limitedOK, h, p, chunk, count); err != nil {
				return "", true, err
			}
			return fmt.Sprintf("sent %d", time.Since(start)), true, nil
		}
		msg := bytes.Repeat([]byte{0xab}, benchEchoSize)
		reply := make([]byte, benchEchoSize)
		rtts := make([]time.Duration, 0, count)
		for range count {
			start := time.Now()
			if err := benchEchoOnce(limitedOK, h, p, msg, reply); err != nil {
				return "", true, err
			}
			rtts = append(rtts, time.Since(start))
		}
		slices.Sort(rtts)
		return fmt.Sprintf("rtt %d %d", rtts[len(rtts)/2], rtts[len(rtts)*99/100]), true, nil
	}
	return "", false, nil
}

// runLabStock runs a stock go-libp2p host (QUIC, relay client) in a lab
// namespace on -listen:4001, with -relay-service (circuits of up to 1 TiB),
// -relay ADDR (autorelay with a static relay) and -private
// (ForceReachabilityPrivate). It prints "ready <peer ID> <address>" and
// answers labHostCommand's commands.
func runLabStock(args []string, in io.Reader, out io.Writer) error {
	flags := flag.NewFlagSet(labStockRole, flag.ContinueOnError)
	listen := flags.String("listen", "", "lab IPv4 address to listen on")
	relayService := flags.Bool("relay-service", false, "run the relay service")
	staticRelay := flags.String("relay", "", "static relay's address")
	private := flags.Bool("private", false, "force private reachability")
	port := flags.Int("port", 4001, "UDP port to listen on")
	holePunch := flags.Bool("holepunch", false, "enable hole punching (DCUtR)")
	noRateLimit := flags.Bool("no-conn-rate-limit", false, "rcmgr without its connection rate limiter")
	flags.Bool("no-holepunch", true, "hole punching off (the default here; for the realmnet role's flag set)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	natlab.DeclareInternetPublic()
	opts := []libp2p.Option{libp2p.Transport(libp2pquic.NewTransport),
		libp2p.ListenAddrStrings(fmt.Sprintf("/ip4/%s/udp/%d/quic-v1", *listen, *port)), libp2p.EnableRelay()}
	if *holePunch {
		opts = append(opts, libp2p.EnableHolePunching())
	}
	if *noRateLimit {
		rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(rcmgr.DefaultLimits.AutoScale()), rcmgr.WithConnRateLimiters(&rate.Limiter{}))
		if err != nil {
			return err
		}
		opts = append(opts, libp2p.ResourceManager(rm))
	}
	if *relayService {
		opts = append(opts, libp2p.EnableRelayService(relay.WithResources(benchRelayResources())), libp2p.ForceReachabilityPublic())
	}
	if *staticRelay != "" {
		ai, err := peer.AddrInfoFromString(*staticRelay)
		if err != nil {
			return err
		}
		opts = append(opts, libp2p.EnableAutoRelayWithStaticRelays([]peer.AddrInfo{*ai}))
	}
	if *private {
		opts = append(opts, libp2p.ForceReachabilityPrivate())
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return err
	}
	defer h.Close()
	h.SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
	h.SetStreamHandler(benchEchoProto, testnode.Echo)
	h.SetStreamHandler(benchThroughputProto, benchDiscardHandler)
	var mu sync.Mutex
	say := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, format+"\n", a...)
	}
	say("ready %s %s/p2p/%s", h.ID(), h.Addrs()[0], h.ID())
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		command, arg, _ := strings.Cut(lines.Text(), " ")
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		answer, handled, err := labHostCommand(ctx, h, command, arg)
		if !handled {
			answer, handled, err = labPunchCommand(ctx, h, command, arg)
		}
		cancel()
		switch {
		case !handled:
			say("error %s: unknown command", command)
		case err != nil:
			say("error %s: %s", command, strings.ReplaceAll(err.Error(), "\n", " | "))
		default:
			say("%s", answer)
		}
	}
	return lines.Err()
}

// BenchmarkNATLabRelayedPath runs a relayed path in the NAT lab, realmnet
// and stock go-libp2p side by side in one lab: a relay on the lab's
// internet, a private server behind an endpoint-independent NAT with it as
// static relay (reachability forced private on both sides, so that the
// time is the relay's and not AutoNAT's), and a client behind a second
// NAT that dials the server's circuit address. Reported per side:
//
//   - <side>-ms-to-circuit: from starting the server's process to its
//     first advertised /p2p-circuit address;
//   - <side>-rtt-p50-µs, <side>-rtt-p99-µs: 200 new streams with 1 KiB
//     echoes over the relayed path;
//   - <side>-MB/s: 8 MiB on one stream, best of 3.
//
// One lab per benchmark run (b.N is ignored: a lab is seconds to build).
func BenchmarkNATLabRelayedPath(b *testing.B) {
	lab := natlab.New(b, natlab.Topology{
		Public: []string{"relay", "stock-relay"},
		Sites: []natlab.Site{
			{Router: "r1", NAT: natlab.EndpointIndependent, Hosts: []string{"server", "stock-server"}},
			{Router: "r2", NAT: natlab.EndpointIndependent, Hosts: []string{"client", "stock-client"}},
		},
	})
	start := func(name, role string, args ...string) (*labProc, time.Time) {
		started := time.Now()
		p := &labProc{Proc: lab.Start(b, name, role, append([]string{"-listen", lab.Addr(name).String()}, args...)...)}
		fields := strings.Fields(p.expect(b, "ready ", 60*time.Second))
		id, err := peer.Decode(fields[1])
		if err != nil {
			b.Fatal(err)
		}
		p.id, p.addr = id, fields[2]
		return p, started
	}
	for _, side := range []struct{ name, role, prefix string }{{"realmnet", labNodeRole, ""}, {"libp2p", labStockRole, "stock-"}} {
		relayNode, _ := start(side.prefix+"relay", side.role, "-relay-service")
		// realmnet's hole punching off (stock's is off by default): the
		// relayed path is what is measured here.
		server, started := start(side.prefix+"server", side.role, "-relay", relayNode.addr, "-private", "-no-holepunch")
		circuit := strings.TrimPrefix(server.do(b, "await-circuit", "circuit "), "circuit ")
		b.ReportMetric(float64(time.Since(started).Microseconds())/1000, side.name+"-ms-to-circuit")
		client, _ := start(side.prefix+"client", side.role, "-no-holepunch")
		if got := client.do(b, "dial "+circuit+"/p2p/"+server.id.String(), "dialed "); got != "dialed limited=true" {
			b.Fatalf("%s: %q", side.name, got)
		}
		rtt := strings.Fields(client.do(b, fmt.Sprintf("rtt %s 200", server.id), "rtt "))
		p50, _ := strconv.ParseFloat(rtt[1], 64)
		p99, _ := strconv.ParseFloat(rtt[2], 64)
		b.ReportMetric(p50/1000, side.name+"-rtt-p50-µs")
		b.ReportMetric(p99/1000, side.name+"-rtt-p99-µs")
		best := 0.0
		for range 3 {
			sent := strings.Fields(client.do(b, fmt.Sprintf("send %s %d", server.id, 8<<20), "sent "))
			ns, _ := strconv.ParseFloat(sent[1], 64)
			best = max(best, float64(8<<20)/(ns/1e9)/1e6)
		}
		b.ReportMetric(best, side.name+"-MB/s")
	}
}
