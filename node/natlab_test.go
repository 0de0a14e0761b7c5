package node_test

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/x/rate"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/realmnet/realmnet/internal/natlab"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
	"github.com/realmnet/realmnet/resource"
)

// labNodeRole is the role of a realmnet node in the NAT lab (runLabNode).
const labNodeRole = "node"

// labRealm and labPSK are the realm the lab's nodes join.
const labRealm = "lab"

var labPSK = []byte("the NAT lab's realm key, 32 byte")

// runLabNode runs one realmnet node in a lab namespace, listening on
// -listen (its lab address, UDP port 4001), measuring its reachability
// with AutoNAT v2 (private addresses allowed: the lab has no public ones).
// It prints "ready <peer ID> <address>/p2p/<peer ID>" and, whenever its
// reachability changes, "reachability <value>". Commands, one per line,
// each answered by one line ("error ..." when it fails):
//
//	connect ADDR           connect to ADDR → "connected"
//	await-addr IP          wait until an address of the node has IP (identify's observed addresses) → "addr ADDR"
//	join [ADDR]            join the lab realm (with ADDR as a known peer) → "joined"
//	await-relayaddrs       wait for a circuit address through a realm relay → "relayaddrs ADDR"
//	await-member PEER      wait until PEER is a member → "member PEER limited=BOOL"
//	await-record PEER      wait until PEER's signed record has a circuit address → "record PEER"
//	echo PEER              1 KiB realm stream echo with PEER → "echo ok"
//
// With -realm-relay the node joins as the realm's relay.
func runLabNode(args []string, in io.Reader, out io.Writer) error {
	flags := flag.NewFlagSet(labNodeRole, flag.ContinueOnError)
	listen := flags.String("listen", "", "lab IPv4 address to listen on")
	realmRelay := flags.Bool("realm-relay", false, "relay for the realm's members")
	relayService := flags.Bool("relay-service", false, "run the public relay service")
	dhtServer := flags.Bool("dht-server", false, "be a DHT server")
	bootstrap := flags.String("bootstrap", "", "bootstrap peer's address")
	staticRelay := flags.String("relay", "", "static relay's address")
	private := flags.Bool("private", false, "force private reachability")
	port := flags.Int("port", 4001, "UDP port to listen on")
	noHolePunch := flags.Bool("no-holepunch", false, "disable hole punching")
	noRateLimit := flags.Bool("no-conn-rate-limit", false, "no inbound connection rate limit (a relay that all of a site's trial processes reach from one IP)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	natlab.DeclareInternetPublic()
	var mu sync.Mutex
	say := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, format+"\n", a...)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := []node.Option{node.ListenAddrStrings(fmt.Sprintf("/ip4/%s/udp/%d/quic-v1", *listen, *port)),
		node.DHTMode(node.DHTClient), node.AutoNAT(node.AutoNATConfig{PrivateAddrs: true}),
		node.HolePunching(node.HolePunchConfig{Disabled: *noHolePunch})}
	if *dhtServer {
		opts = append(opts, node.DHTMode(node.DHTServer))
	}
	if *relayService {
		// Circuits that carry the tests' 1 MiB echo (go-libp2p's default
		// is 128 KiB per circuit).
		resources := relay.DefaultResources()
		resources.Limit = &relay.RelayLimit{Duration: time.Hour, Data: 64 << 20}
		opts = append(opts, node.RelayService(node.RelayServiceConfig{Resources: &resources}))
	}
	if *staticRelay != "" {
		ai, err := peer.AddrInfoFromString(*staticRelay)
		if err != nil {
			return err
		}
		opts = append(opts, node.Relays(*ai))
	}
	if *private {
		opts = append(opts, node.ForceReachability(network.ReachabilityPrivate))
	}
	if *noRateLimit {
		opts = append(opts, node.ResourceLimits(resource.Config{ConnRateLimiter: &rate.Limiter{}}))
	}
	if *bootstrap != "" {
		ai, err := peer.AddrInfoFromString(*bootstrap)
		if err != nil {
			return err
		}
		opts = append(opts, node.Bootstrap(*ai))
	}
	n, err := node.New(ctx, opts...)
	if err != nil {
		return err
	}
	defer n.Close()
	sub, err := n.Host().EventBus().Subscribe(new(event.EvtLocalReachabilityChanged))
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for e := range sub.Out() {
			say("reachability %s", strings.ToLower(e.(event.EvtLocalReachabilityChanged).Reachability.String()))
		}
	})
	defer wg.Wait()
	defer sub.Close()
	n.Host().SetStreamHandler(testnode.EchoProtocol, testnode.Echo)
	n.Host().SetStreamHandler(benchEchoProto, testnode.Echo)
	n.Host().SetStreamHandler(benchThroughputProto, benchDiscardHandler)
	say("ready %s %s/p2p/%s", n.ID(), n.Addrs()[0], n.ID())

	var joined *realm.Realm
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		command, arg, _ := strings.Cut(lines.Text(), " ")
		cctx, ccancel := context.WithTimeout(ctx, 60*time.Second)
		answer, handled, err := labHostCommand(cctx, n.Host(), command, arg)
		if !handled {
			answer, handled, err = labNodePunchCommand(cctx, n, command, arg)
		}
		if !handled {
			answer, err = labCommand(cctx, n, &joined, *realmRelay, command, arg)
		}
		ccancel()
		if err != nil {
			say("error %s: %s", command, strings.ReplaceAll(err.Error(), "\n", " | "))
			continue
		}
		say("%s", answer)
	}
	return lines.Err()
}

// labCommand runs one command of runLabNode.
func labCommand(ctx context.Context, n *node.Node, joined **realm.Realm, realmRelay bool, command, arg string) (string, error) {
	wait := func(done func() bool) error { return labWait(ctx, done) }
	switch command {
	case "connect":
		ai, err := peer.AddrInfoFromString(arg)
		if err != nil {
			return "", err
		}
		if err := n.Connect(ctx, *ai); err != nil {
			return "", err
		}
		return "connected", nil
	case "await-addr":
		var found ma.Multiaddr
		err := wait(func() bool {
			for _, a := range n.Addrs() {
				if ip, err := a.ValueForProtocol(ma.P_IP4); err == nil && ip == arg {
					found = a
					return true
				}
			}
			return false
		})
		if err != nil {
			return "", fmt.Errorf("%w; addresses: %v", err, n.Addrs())
		}
		return "addr " + found.String(), nil
	case "join":
		opts := []realm.Option{realm.PSK(labPSK), realm.DiscoveryInterval(realm.MinDiscoveryInterval),
			realm.StreamHandler(testnode.EchoProtocol, testnode.Echo)}
		if realmRelay {
			opts = append(opts, realm.Relay())
		}
		if arg != "" {
			ai, err := peer.AddrInfoFromString(arg)
			if err != nil {
				return "", err
			}
			opts = append(opts, realm.Peers(*ai))
		}
		r, err := n.JoinRealm(ctx, labRealm, opts...)
		if err != nil {
			return "", err
		}
		*joined = r
		return "joined", nil
	}
	switch command {
	case "connect-peer", "echo-big":
		p, err := peer.Decode(arg)
		if err != nil {
			return "", err
		}
		if command == "echo-big" {
			s, err := n.Host().NewStream(network.WithAllowLimitedConn(ctx, "lab"), p, testnode.EchoProtocol)
			if err != nil {
				return "", err
			}
			if err := testnode.EchoErr(s, 1<<20); err != nil {
				return "", err
			}
			return "echo ok", nil
		}
		if err := n.ConnectPeer(network.WithAllowLimitedConn(ctx, "lab"), p); err != nil {
			return "", err
		}
		limited := true
		for _, c := range n.Host().Network().ConnsToPeer(p) {
			limited = limited && c.Stat().Limited
		}
		return fmt.Sprintf("connected limited=%t", limited), nil
	}
	r := *joined
	if r == nil {
		return "", errors.New("join first")
	}
	switch command {
	case "await-relayaddrs":
		if err := wait(func() bool { return len(r.RelayAddrs()) > 0 }); err != nil {
			return "", err
		}
		return "relayaddrs " + r.RelayAddrs()[0].String(), nil
	case "await-record":
		p, err := peer.Decode(arg)
		if err != nil {
			return "", err
		}
		cab, ok := peerstore.GetCertifiedAddrBook(n.Host().Peerstore())
		if !ok {
			return "", errors.New("no certified address book")
		}
		hasCircuit := func() bool {
			env := cab.GetPeerRecord(p)
			if env == nil {
				return false
			}
			rec, err := env.Record()
			if err != nil {
				return false
			}
			for _, a := range rec.(*peer.PeerRecord).Addrs {
				if _, err := a.ValueForProtocol(ma.P_CIRCUIT); err == nil {
					return true
				}
			}
			return false
		}
		if err := wait(hasCircuit); err != nil {
			return "", err
		}
		return "record " + p.String(), nil
	case "await-member", "echo":
		p, err := peer.Decode(arg)
		if err != nil {
			return "", err
		}
		if command == "echo" {
			s, err := r.NewStream(ctx, p, testnode.EchoProtocol)
			if err != nil {
				return "", err
			}
			if err := testnode.EchoErr(s, 1024); err != nil {
				return "", err
			}
			return "echo ok", nil
		}
		if err := wait(func() bool { _, ok := r.Member(p); return ok }); err != nil {
			return "", err
		}
		limited := true
		for _, c := range n.Host().Network().ConnsToPeer(p) {
			limited = limited && c.Stat().Limited
		}
		return fmt.Sprintf("member %s limited=%t", p, limited), nil
	}
	return "", fmt.Errorf("unknown command %q", command)
}

// labProc is a lab node seen from the test: its process, its ID and
// address, and the reachability it last reported.
type labProc struct {
	*natlab.Proc
	id   peer.ID
	addr string

	mu           sync.Mutex
	reachability string
}

// startLabNode starts a node on host name of lab and waits for it to be
// ready.
func startLabNode(t *testing.T, lab *natlab.Lab, name string, args ...string) *labProc {
	t.Helper()
	p := &labProc{Proc: lab.Start(t, name, labNodeRole, append([]string{"-listen", lab.Addr(name).String()}, args...)...)}
	ready := p.expect(t, "ready ", 60*time.Second)
	fields := strings.Fields(ready)
	id, err := peer.Decode(fields[1])
	if err != nil {
		t.Fatalf("%s: %q: %v", name, ready, err)
	}
	p.id, p.addr = id, fields[2]
	return p
}

// expect returns the next line of p that starts with prefix, within
// timeout; reachability lines on the way are recorded, an error line fails
// the test.
func (p *labProc) expect(t testing.TB, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		line, err := p.Recv(time.Until(deadline))
		if err != nil {
			t.Fatalf("%s: waiting for %q: %v", p, prefix, err)
		}
		if r, ok := strings.CutPrefix(line, "reachability "); ok {
			p.mu.Lock()
			p.reachability = r
			p.mu.Unlock()
			if prefix != "reachability "+r {
				continue
			}
		}
		if strings.HasPrefix(line, "error ") {
			t.Fatalf("%s: %s", p, line)
		}
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
}

// awaitReachability waits until p has reported reachability want (now or
// earlier, while the test waited for other lines).
func (p *labProc) awaitReachability(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	p.mu.Lock()
	got := p.reachability
	p.mu.Unlock()
	if got != want {
		p.expect(t, "reachability "+want, timeout)
	}
}

// do sends command and returns its answer.
func (p *labProc) do(t testing.TB, command, answerPrefix string) string {
	t.Helper()
	if err := p.Send(command); err != nil {
		t.Fatal(err)
	}
	return p.expect(t, answerPrefix, 90*time.Second)
}

// TestNATLabReachabilityAndRealmRelay runs realmnet nodes in the NAT lab:
// a relay and three peers on public addresses, and a and b behind two
// endpoint-independent NATs. a connects to the four public nodes and, from
// identify's observed addresses (4 observers), advertises its NAT mapping:
// the router's address, port 4001 kept. AutoNAT v2 finds a and b private and the two
// public nodes public (each public node's dial-back from the other
// reaches it; nothing reaches a NATed host unsolicited). The relay joins
// the realm as its relay; a, private, reserves a slot on it through the
// realm and b — which cannot reach a directly — becomes a's member over a
// relayed path, on which a realm stream works.
func TestNATLabReachabilityAndRealmRelay(t *testing.T) {
	lab := natlab.New(t, natlab.Topology{
		Public: []string{"relay", "pub", "pub2", "pub3"},
		Sites: []natlab.Site{
			{Router: "r1", NAT: natlab.EndpointIndependent, Hosts: []string{"a"}},
			{Router: "r2", NAT: natlab.EndpointIndependent, Hosts: []string{"b"}},
		},
	})
	relay := startLabNode(t, lab, "relay", "-realm-relay")
	pub := startLabNode(t, lab, "pub")
	pub2 := startLabNode(t, lab, "pub2")
	pub3 := startLabNode(t, lab, "pub3")
	// Hole punching off: the relayed path is what this test is about
	// (TestNATLabHolePunch upgrades it).
	a := startLabNode(t, lab, "a", "-no-holepunch")
	b := startLabNode(t, lab, "b", "-no-holepunch")
	for _, p := range []*labProc{relay, pub, pub2, pub3} {
		a.do(t, "connect "+p.addr, "connected")
	}
	mapped := a.do(t, "await-addr "+lab.Addr("r1").String(), "addr ")
	if want := fmt.Sprintf("addr /ip4/%s/udp/4001/quic-v1", lab.Addr("r1")); mapped != want {
		t.Fatalf("a's observed address is %q, want %q (endpoint-independent, port-preserving)", mapped, want)
	}

	start := time.Now()
	step := func(what string) { t.Logf("%6.2fs %s", time.Since(start).Seconds(), what) }
	relay.do(t, "join", "joined")
	pub.do(t, "join "+relay.addr, "joined")
	a.do(t, "join "+relay.addr, "joined")
	step("joined")
	a.awaitReachability(t, "private", 90*time.Second)
	step("a private")
	relay.awaitReachability(t, "public", 90*time.Second)
	step("relay public")
	pub.awaitReachability(t, "public", 90*time.Second)
	step("pub public")

	circuit := a.do(t, "await-relayaddrs", "relayaddrs ")
	if !strings.Contains(circuit, relay.id.String()+"/p2p-circuit") {
		t.Fatalf("a's circuit address %q does not go through the relay %s", circuit, relay.id)
	}
	if _, err := ma.NewMultiaddr(strings.TrimPrefix(circuit, "relayaddrs ")); err != nil {
		t.Fatalf("%q: %v", circuit, err)
	}
	// The relay holds a's record with it (a sent it in an exchange), so
	// b, which learns a from the relay, dials the circuit at once.
	relay.do(t, "await-record "+a.id.String(), "record ")
	step("a reserved, its record at the relay")
	b.do(t, "join "+relay.addr, "joined")
	member := b.do(t, "await-member "+a.id.String(), "member ")
	if !strings.HasSuffix(member, "limited=true") {
		t.Fatalf("b reaches a over a direct path through two NATs without hole punching: %q", member)
	}
	step("b member of a")
	b.do(t, "echo "+a.id.String(), "echo ok")
	b.awaitReachability(t, "private", 90*time.Second)
	step("b private")
}

// TestNATLabDHTAndRelayedPath: a relay that is also the DHT's server on
// the lab's internet; a behind an endpoint-independent NAT and b behind a
// symmetric one. Each learns it is private within 15 s of its start
// (AutoNAT v2), reserves on the relay found in its DHT routing table and
// advertises a /p2p-circuit address; b then finds a by peer ID through the
// DHT and echoes 1 MiB over the relayed path.
func TestNATLabDHTAndRelayedPath(t *testing.T) {
	lab := natlab.New(t, natlab.Topology{
		Public: []string{"relay"},
		Sites: []natlab.Site{
			{Router: "r1", NAT: natlab.EndpointIndependent, Hosts: []string{"a"}},
			{Router: "r2", NAT: natlab.Symmetric, Hosts: []string{"b"}},
		},
	})
	relay := startLabNode(t, lab, "relay", "-relay-service", "-dht-server")
	started := time.Now()
	a := startLabNode(t, lab, "a", "-bootstrap", relay.addr, "-no-holepunch")
	b := startLabNode(t, lab, "b", "-bootstrap", relay.addr, "-no-holepunch")
	for _, p := range []*labProc{a, b} {
		p.awaitReachability(t, "private", 60*time.Second)
		took := time.Since(started)
		t.Logf("%s private %s after its start", p, took.Round(time.Millisecond))
		if took > 15*time.Second {
			t.Errorf("%s took %s to learn it is private; want 15 s at most", p, took)
		}
	}
	for _, p := range []*labProc{a, b} {
		circuit := p.do(t, "await-circuit", "circuit ")
		if !strings.Contains(circuit, relay.id.String()+"/p2p-circuit") {
			t.Fatalf("%s advertises %q, not a circuit through the relay", p, circuit)
		}
	}
	connected := b.do(t, "connect-peer "+a.id.String(), "connected ")
	if connected != "connected limited=true" {
		t.Fatalf("b reached a directly through two NATs without hole punching: %q", connected)
	}
	b.do(t, "echo-big "+a.id.String(), "echo ok")
}
