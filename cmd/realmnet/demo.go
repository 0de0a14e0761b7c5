package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/routing"
	"github.com/spf13/cobra"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/internal/natlab"
	"github.com/realmnet/realmnet/node"

	"github.com/realmnet/realmnet/core"
)

const (
	// minimumDemoNodes and maximumDemoNodes bound `demo --nodes`.
	minimumDemoNodes = 2
	maximumDemoNodes = 50
	// defaultDemoNodes is the default of `demo --nodes`.
	defaultDemoNodes = 5

	// defaultDemoTimeout is the default of `demo --timeout`, which bounds a
	// whole demo run.
	defaultDemoTimeout = 60 * time.Second
	// demoListenAddr is where every demo node listens; with --multipath it
	// also listens on demoSecondListenAddr, so every pair of nodes has two
	// paths.
	demoListenAddr       = "/ip4/127.0.0.1/udp/0/quic-v1"
	demoSecondListenAddr = "/ip4/127.0.0.2/udp/0/quic-v1"
	// otherPeerWaitTimeout bounds the wait, before a lookup, for a peer
	// other than the target in the looker's routing table.
	otherPeerWaitTimeout = 2 * time.Second
	// pathWaitTimeout bounds the wait for the standby paths with --multipath.
	pathWaitTimeout = 10 * time.Second
	// echoProtocol is the demo's echo protocol: the handler copies the
	// stream back, then closes it.
	echoProtocol = protocol.ID("/realmnet/demo/echo/1.0.0")
	// echoPayloadSize is how many random bytes each echo exchange sends.
	echoPayloadSize = 1024
	// echoTimeout bounds one echo exchange, on both sides.
	echoTimeout = 10 * time.Second
	// routingTableWaitTimeout bounds the wait for the routing tables to fill
	// after the nodes have started.
	routingTableWaitTimeout = 10 * time.Second
	// routingTableRefreshInterval is how long a node's routing table may
	// stay short before the demo asks it to refresh the table.
	routingTableRefreshInterval = 2 * time.Second
	// lookupAttempts is how many times a DHT lookup is tried before the demo
	// fails.
	lookupAttempts = 7
	// firstLookupRetryDelay separates the first two attempts of a lookup; it
	// doubles after each attempt (0.1 + 0.2 + … + 3.2 s = 6.3 s at most in
	// all).
	firstLookupRetryDelay = 100 * time.Millisecond
)

// newDemoCommand returns `realmnet demo`.
func newDemoCommand() *cobra.Command {
	var (
		options demoOptions
		timeout time.Duration
	)
	command := &cobra.Command{
		Use:   "demo",
		Short: "Run a small realmnet network in this process and print a summary",
		Long: "demo starts --nodes nodes in this process, all listening on 127.0.0.1 over\n" +
			"QUIC, with the DHT in server mode; node 0 starts first and is the bootstrap\n" +
			"peer of the others. Every node then finds every other node by peer ID through\n" +
			"the DHT only: before each lookup the looking node drops its connection to the\n" +
			"target and forgets the target's addresses, so the addresses it dials are the\n" +
			"ones other nodes gave it. Then every node echoes 1 KiB of random bytes with\n" +
			"every other node. demo prints a table of the nodes, each node's paths to its\n" +
			"peers (how many, the selected one, its RTT) and the echo round-trip times\n" +
			"(p50, p99), and exits with status 0 when every step succeeded. With\n" +
			"--multipath every node listens on two addresses and every pair ends with\n" +
			"two paths: the selected one and a warm standby.\n\n" +
			"Then the nodes join two realms, blue and green, each with a pre-shared key\n" +
			"drawn at random for the run: node 0 joins both, odd nodes blue, even nodes\n" +
			"green. Members find and authenticate each other with no address given (the\n" +
			"peers they are connected to, the DHT rendezvous record, member exchange).\n" +
			"demo waits until every member lists every other member, echoes over realm\n" +
			"streams between every pair of members of each realm, and checks isolation:\n" +
			"a realm stream from a member to a node outside the realm must fail with\n" +
			"realm.ErrNotMember, and a realm's connection sub-pool must hold members\n" +
			"only. It prints the members and sub-pools per node and realm and the realm\n" +
			"service's counters, and exits with status 1 when a check fails.\n\n" +
			"The whole run is bounded by --timeout; the lookups grow with the square of\n" +
			"--nodes, so many nodes on a small machine may need a longer one.\n\n" +
			"With --nat, demo runs instead in the NAT lab, a small internet of Linux\n" +
			"network namespaces that it builds without root: a relay (circuit relay v2\n" +
			"service) and a bootstrap node (DHT server) on public addresses, and two\n" +
			"nodes, a and b, each behind a router of its own with an endpoint-independent\n" +
			"NAT that lets in only replies. a and b are private and use the relay as\n" +
			"their static relay: a reserves a slot on it and gets a /p2p-circuit address,\n" +
			"and b connects to a through that address only. demo prints both ends' paths\n" +
			"as `realmnet inspect paths` does, waits for hole punching (DCUtR) to open a\n" +
			"direct path, prints the paths again and how long the upgrade took, from the\n" +
			"opening of the relayed connection to that of the direct one. It exits with\n" +
			"status 1 when no direct path opened within --timeout. Where the lab cannot\n" +
			"be built, demo --nat says why and what it needs (Linux, unprivileged user\n" +
			"namespaces, iproute2's ip and nftables' nft; on Debian: apt-get install\n" +
			"iproute2 nftables) and exits with status 1. --nat takes neither --nodes nor\n" +
			"--multipath.",
		Args: cobra.NoArgs,
		RunE: func(command *cobra.Command, _ []string) error {
			if options.nat {
				for _, flag := range []string{nodesFlag, multipathFlag} {
					if command.Flags().Changed(flag) {
						return fmt.Errorf("--%s does not go with --nat: the NAT demo runs its own four nodes (relay, bootstrap, a, b) in the NAT lab", flag)
					}
				}
			}
			if options.nodes < minimumDemoNodes || options.nodes > maximumDemoNodes {
				return fmt.Errorf("invalid --nodes %d: the demo runs between %d and %d nodes",
					options.nodes, minimumDemoNodes, maximumDemoNodes)
			}
			if timeout <= 0 {
				return fmt.Errorf("invalid --timeout %s: it must be positive", timeout)
			}
			ctx, stop := signal.NotifyContext(command.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			var err error
			if options.nat {
				err = runNATDemo(ctx, command.OutOrStdout())
				if errors.Is(err, natlab.ErrUnavailable) {
					return fmt.Errorf("demo --nat cannot run on this machine: %w\n%s", err, natLabRequirements)
				}
			} else {
				_, err = runDemo(ctx, command.OutOrStdout(), options)
			}
			if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("the demo did not finish within --timeout %s: %w", timeout, err)
			}
			return err
		},
	}
	command.Flags().IntVar(&options.nodes, nodesFlag, defaultDemoNodes,
		fmt.Sprintf("number of nodes to start (%d to %d)", minimumDemoNodes, maximumDemoNodes))
	command.Flags().BoolVar(&options.multipath, multipathFlag, false,
		"give every node two listen addresses (127.0.0.1 and 127.0.0.2), so every pair has two paths")
	command.Flags().BoolVar(&options.nat, "nat", false,
		"run a relay, a bootstrap node and two nodes behind NATs in the NAT lab (Linux), and watch hole punching upgrade their relayed path to a direct one")
	command.Flags().DurationVar(&timeout, "timeout", defaultDemoTimeout, "bound on the whole demo run")
	return command
}

// demoOptions are the demo's flags.
type demoOptions struct {
	// nodes is how many nodes to start.
	nodes int
	// multipath gives every node a second listen address.
	multipath bool
	// nat runs the NAT lab demo (runNATDemo) instead; it takes neither
	// nodes nor multipath.
	nat bool
}

// The demo's flags that --nat refuses.
const (
	nodesFlag     = "nodes"
	multipathFlag = "multipath"
)

// runDemo runs the whole demo, writing progress and the summary to out, and
// closes every node before it returns. It returns the nodes' peer IDs in
// index order.
func runDemo(ctx context.Context, out io.Writer, options demoOptions) (peerIDs []peer.ID, err error) {
	d := &demo{out: out, options: options}
	defer func() {
		if closeErr := d.close(); closeErr != nil && err == nil {
			err = closeErr
		}
	}()
	steps := []func(context.Context) error{
		d.start,
		d.waitForRoutingTables,
		d.discover,
		d.echo,
		d.waitForPaths,
		d.joinRealms,
		d.waitForRealmMembers,
		d.realmEcho,
		d.checkIsolation,
	}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return d.peerIDs(), err
		}
	}
	d.report()
	d.reportRealms()
	return d.peerIDs(), nil
}

// demo is one in-process demo network. Its steps run in order: start,
// waitForRoutingTables, discover, echo, waitForPaths, joinRealms,
// waitForRealmMembers, realmEcho, checkIsolation, then report and
// reportRealms; close ends it.
type demo struct {
	out     io.Writer
	options demoOptions
	nodes   []*node.Node

	// lookups counts the DHT lookups made by discover.
	lookups lookupCounts
	// echoRoundTrips holds one round-trip time per ordered pair of nodes.
	echoRoundTrips []time.Duration

	// realms are the demo's realms, in demoRealmNames order.
	realms []*demoRealm
	// realmEchoRoundTrips holds one round-trip time per ordered pair of
	// members of a realm.
	realmEchoRoundTrips []time.Duration
	// isolation holds the isolation checks that ran.
	isolation []isolationCheck
}

// lookupCounts sums up the DHT lookups of discover.
type lookupCounts struct {
	// pairs is the number of ordered pairs (looker, target) looked up.
	pairs int
	// throughNetwork counts lookups answered by other nodes: the looker was
	// not connected to the target and knew none of its addresses.
	throughNetwork int
	// answeredLocally counts lookups the looker's DHT answered itself,
	// because it had no other peer to ask (only with two nodes).
	answeredLocally int
	// attempts counts FindPeer calls, retries included.
	attempts int
	// peerResponses counts the answers of other nodes over all lookups.
	peerResponses int
}

// progressf prints one progress line.
func (d *demo) progressf(format string, args ...any) {
	fmt.Fprintf(d.out, format+"\n", args...)
}

// start starts the nodes, node 0 first; the others bootstrap from it. Every
// node serves the echo protocol.
func (d *demo) start(ctx context.Context) error {
	nodeCount := d.options.nodes
	d.progressf("starting %d nodes…", nodeCount)
	listen := []string{demoListenAddr}
	if d.options.multipath {
		listen = append(listen, demoSecondListenAddr)
	}
	for index := range nodeCount {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("start node %d: %w", index, err)
		}
		options := []node.Option{
			node.ListenAddrStrings(listen...),
			node.DHTMode(node.DHTServer),
		}
		if index > 0 {
			options = append(options, node.Bootstrap(d.nodes[0].AddrInfo()))
		}
		demoNode, err := node.New(ctx, options...)
		if err != nil {
			return fmt.Errorf("start node %d: %w", index, err)
		}
		demoNode.SetStreamHandler(echoProtocol, serveEcho)
		d.nodes = append(d.nodes, demoNode)
	}
	d.progressf("started %d nodes", nodeCount)
	return nil
}

// peerIDs returns the peer IDs of the started nodes, in index order.
func (d *demo) peerIDs() []peer.ID {
	ids := make([]peer.ID, len(d.nodes))
	for index, demoNode := range d.nodes {
		ids[index] = demoNode.ID()
	}
	return ids
}

// waitForRoutingTables waits, at most routingTableWaitTimeout, until every
// node's DHT routing table holds at least two peers (one with two nodes),
// so that a node that forgets one peer still has another one to ask. A node
// fills its table as its bootstrap connection and its first DHT queries
// complete, in the background after it started. A node's first self-lookup
// can run before its bootstrap peer knows the nodes started after it; a node
// whose table is still short after routingTableRefreshInterval is told to
// refresh its table again (kad-dht's ForceRefresh), at that interval. The
// lookups are tried anyway when the wait times out.
func (d *demo) waitForRoutingTables(ctx context.Context) error {
	wanted := min(2, len(d.nodes)-1)
	lastRefresh := time.Now()
	ready := func() bool {
		refresh := time.Since(lastRefresh) >= routingTableRefreshInterval
		if refresh {
			lastRefresh = time.Now()
		}
		allReady := true
		for _, demoNode := range d.nodes {
			if demoNode.DHT().RoutingTable().Size() < wanted {
				allReady = false
				if refresh {
					// The channel is buffered and safe to ignore (kad-dht).
					demoNode.DHT().ForceRefresh()
				}
			}
		}
		return allReady
	}
	timedOut, err := waitUntil(ctx, routingTableWaitTimeout, ready)
	if err != nil {
		return fmt.Errorf("wait for DHT routing tables: %w", err)
	}
	if timedOut {
		d.progressf("some DHT routing tables hold fewer than %d peers after %s; looking up anyway",
			wanted, routingTableWaitTimeout)
	}
	return nil
}

// discover makes every node find every other node by peer ID through the
// DHT, one lookup at a time, then connect to the addresses the DHT
// returned.
func (d *demo) discover(ctx context.Context) error {
	total := len(d.nodes) * (len(d.nodes) - 1)
	for lookerIndex, looker := range d.nodes {
		for targetIndex, target := range d.nodes {
			if targetIndex == lookerIndex {
				continue
			}
			if err := lookUp(ctx, looker, target.ID(), &d.lookups); err != nil {
				return fmt.Errorf("node %d looking up node %d (%s): %w",
					lookerIndex, targetIndex, shortID(target.ID()), err)
			}
		}
		d.progressf("DHT lookups %d/%d", d.lookups.pairs, total)
	}
	return nil
}

// lookUp finds target through looker's DHT, connects looker to the
// addresses found, and adds the lookup to counts.
//
// kad-dht's FindPeer answers from the local peerstore, without asking
// anyone, when the looker is already connected to the target — and after
// bootstrap most nodes are. So that the addresses really come from other
// nodes, lookUp first makes the looker forget the target: it closes their
// connections, clears the target's addresses from the looker's peerstore,
// and removes the target from the looker's routing table (else the lookup
// would first try to dial the target with no address at all). The target is
// back in the table once they are connected again. With two nodes there is
// no other node to ask, and the lookup is answered locally.
//
// A failed attempt is retried after a growing delay: right after a node has
// forgotten a peer, the DHT may still be dialing it for a query of its own,
// and the lookup races with that.
func lookUp(ctx context.Context, looker *node.Node, target peer.ID, counts *lookupCounts) error {
	var lastErr error
	delay := firstLookupRetryDelay
	for attempt := range lookupAttempts {
		if attempt > 0 {
			select {
			case <-time.After(delay):
				delay *= 2
			case <-ctx.Done():
				return fmt.Errorf("%w (last attempt: %w)", ctx.Err(), lastErr)
			}
		}
		// The peer found by the previous lookup rejoins the looker's
		// routing table a moment after identify: give it that moment.
		if _, err := waitUntil(ctx, otherPeerWaitTimeout, func() bool { return hasOtherDHTPeer(looker, target) }); err != nil {
			return err
		}
		throughNetwork := hasOtherDHTPeer(looker, target)
		if throughNetwork {
			if err := forget(looker, target); err != nil {
				lastErr = err
				continue
			}
		}
		addrInfo, responses, err := findPeer(ctx, looker, target)
		counts.attempts++
		counts.peerResponses += responses
		if err != nil {
			lastErr = err
			continue
		}
		if throughNetwork && responses == 0 {
			// Something reconnected the two nodes between forget and
			// FindPeer, and FindPeer answered from the peerstore.
			lastErr = errors.New("the DHT answered from the local peerstore instead of asking other nodes")
			continue
		}
		if len(addrInfo.Addrs) == 0 {
			lastErr = errors.New("the DHT found the peer but no address for it")
			continue
		}
		if err := looker.Connect(ctx, addrInfo); err != nil {
			lastErr = err
			continue
		}
		counts.pairs++
		if throughNetwork {
			counts.throughNetwork++
		} else {
			counts.answeredLocally++
		}
		return nil
	}
	return fmt.Errorf("%d attempts failed, the last one with: %w", lookupAttempts, lastErr)
}

// hasOtherDHTPeer reports whether looker's routing table holds a peer other
// than target, which the looker can ask for target.
func hasOtherDHTPeer(looker *node.Node, target peer.ID) bool {
	for _, peerID := range looker.DHT().RoutingTable().ListPeers() {
		if peerID != target {
			return true
		}
	}
	return false
}

// forget closes looker's connections to target, clears target's addresses
// from looker's peerstore and removes target from looker's routing table.
func forget(looker *node.Node, target peer.ID) error {
	lookerNetwork := looker.Host().Network()
	if err := lookerNetwork.ClosePeer(target); err != nil {
		return fmt.Errorf("close connections to %s: %w", shortID(target), err)
	}
	looker.Host().Peerstore().ClearAddrs(target)
	looker.DHT().RoutingTable().RemovePeer(target)
	if len(lookerNetwork.ConnsToPeer(target)) > 0 {
		return fmt.Errorf("still connected to %s after closing its connections", shortID(target))
	}
	if addrs := looker.Host().Peerstore().Addrs(target); len(addrs) > 0 {
		return fmt.Errorf("the peerstore still holds addresses %v of %s after clearing them", addrs, shortID(target))
	}
	return nil
}

// findPeer calls looker's DHT FindPeer for target. It also returns how
// many answers from other nodes the lookup received, and, when it fails, adds
// why the DHT could not reach the target if it tried to.
func findPeer(ctx context.Context, looker *node.Node, target peer.ID) (peer.AddrInfo, int, error) {
	queryCtx, cancel := context.WithCancel(ctx)
	queryCtx, events := routing.RegisterForQueryEvents(queryCtx)
	type eventSummary struct {
		responses      int
		targetDialErrs []string
	}
	summaries := make(chan eventSummary)
	go func() {
		var summary eventSummary
		// The channel is closed once queryCtx is cancelled.
		for event := range events {
			switch {
			case event.Type == routing.PeerResponse:
				summary.responses++
			case event.Type == routing.QueryError && event.ID == target:
				summary.targetDialErrs = append(summary.targetDialErrs, event.Extra)
			}
		}
		summaries <- summary
	}()
	addrInfo, err := looker.DHT().FindPeer(queryCtx, target)
	cancel()
	summary := <-summaries
	if err != nil {
		if len(summary.targetDialErrs) > 0 {
			err = fmt.Errorf("%w; dialing the peer failed: %s", err, strings.Join(summary.targetDialErrs, "; "))
		}
		return peer.AddrInfo{}, summary.responses, fmt.Errorf("DHT FindPeer: %w", err)
	}
	return addrInfo, summary.responses, nil
}

// echo opens an echo stream for every ordered pair of nodes and records the
// round-trip times.
func (d *demo) echo(ctx context.Context) error {
	total := len(d.nodes) * (len(d.nodes) - 1)
	d.echoRoundTrips = make([]time.Duration, 0, total)
	for senderIndex, sender := range d.nodes {
		for receiverIndex, receiver := range d.nodes {
			if senderIndex == receiverIndex {
				continue
			}
			roundTrip, err := echoOnce(ctx, sender, receiver.ID())
			if err != nil {
				return fmt.Errorf("echo from node %d to node %d (%s): %w",
					senderIndex, receiverIndex, shortID(receiver.ID()), err)
			}
			d.echoRoundTrips = append(d.echoRoundTrips, roundTrip)
		}
		d.progressf("echo %d/%d", len(d.echoRoundTrips), total)
	}
	return nil
}

// echoOnce sends echoPayloadSize random bytes to receiver over a new echo
// stream, checks that the same bytes come back, and returns the time from
// opening the stream to reading the last byte back.
func echoOnce(ctx context.Context, sender *node.Node, receiver peer.ID) (time.Duration, error) {
	return echoOver(ctx, func(ctx context.Context) (network.Stream, error) {
		return sender.NewStream(ctx, receiver, echoProtocol)
	})
}

// echoOver is echoOnce over the stream that open returns: any stream whose
// other end runs serveEcho.
func echoOver(ctx context.Context, open func(context.Context) (network.Stream, error)) (time.Duration, error) {
	payload := make([]byte, echoPayloadSize)
	rand.Read(payload)

	ctx, cancel := context.WithTimeout(ctx, echoTimeout)
	defer cancel()
	begin := time.Now()
	stream, err := open(ctx)
	if err != nil {
		return 0, err
	}
	defer stream.Close()
	if deadline, ok := ctx.Deadline(); ok {
		if err := stream.SetDeadline(deadline); err != nil {
			stream.Reset()
			return 0, fmt.Errorf("set stream deadline: %w", err)
		}
	}
	if _, err := stream.Write(payload); err != nil {
		stream.Reset()
		return 0, fmt.Errorf("send: %w", err)
	}
	if err := stream.CloseWrite(); err != nil {
		stream.Reset()
		return 0, fmt.Errorf("close the sending side: %w", err)
	}
	// Read one byte more than sent, to notice an echo that is too long.
	echoed, err := io.ReadAll(io.LimitReader(stream, echoPayloadSize+1))
	roundTrip := time.Since(begin)
	if err != nil {
		stream.Reset()
		return 0, fmt.Errorf("read the echo after %d bytes: %w", len(echoed), err)
	}
	if !bytes.Equal(echoed, payload) {
		return 0, fmt.Errorf("echo differs: sent %d bytes, got %d bytes back, %s",
			len(payload), len(echoed), firstDifference(payload, echoed))
	}
	return roundTrip, nil
}

// firstDifference describes where got first differs from want.
func firstDifference(want, got []byte) string {
	for index := range min(len(want), len(got)) {
		if want[index] != got[index] {
			return fmt.Sprintf("first difference at byte %d", index)
		}
	}
	return "one is a prefix of the other"
}

// serveEcho is the echo protocol's handler: it copies the stream back to
// its sender until the sender closes its side, then closes the stream.
func serveEcho(stream network.Stream) {
	if err := stream.SetDeadline(time.Now().Add(echoTimeout)); err != nil {
		stream.Reset()
		return
	}
	if _, err := io.Copy(stream, stream); err != nil {
		stream.Reset()
		return
	}
	stream.Close()
}

// waitForPaths waits, with --multipath, until every node has two paths to
// every other node: the multipath manager of the side that dialed opens the
// standby path once identify has reported the peer's second address.
func (d *demo) waitForPaths(ctx context.Context) error {
	if !d.options.multipath {
		return nil
	}
	ready := func() bool {
		for _, from := range d.nodes {
			for _, to := range d.nodes {
				if from != to && len(from.Paths(to.ID())) < 2 {
					return false
				}
			}
		}
		return true
	}
	timedOut, err := waitUntil(ctx, pathWaitTimeout, ready)
	if err != nil {
		return fmt.Errorf("wait for standby paths: %w", err)
	}
	if timedOut {
		return fmt.Errorf("not every pair of nodes has two paths after %s", pathWaitTimeout)
	}
	d.progressf("every pair of nodes has two paths")
	return nil
}

// waitUntil polls ready every 20 ms until it holds, timeout passes
// (timedOut) or ctx ends (its error).
func waitUntil(ctx context.Context, timeout time.Duration, ready func() bool) (timedOut bool, err error) {
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(20 * time.Millisecond)
	defer ticker.Stop()
	for !ready() {
		select {
		case <-ticker.C:
		case <-waitCtx.Done():
			if err := ctx.Err(); err != nil {
				return false, err
			}
			return true, nil
		}
	}
	return false, nil
}

// shortID is p shortened as every table of realmnet shows peer IDs
// (shortPeerID: "12D3KooW…XyZ12").
func shortID(p peer.ID) string { return shortPeerID(p.String()) }

// reportPaths prints, for every node and peer, the number of paths, the
// selected path and its smoothed RTT.
func (d *demo) reportPaths() {
	table := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(table, "NODE\tPEER\tPATHS\tSELECTED PATH\tRTT\tSTANDBY")
	for index, from := range d.nodes {
		for peerIndex, to := range d.nodes {
			if from == to {
				continue
			}
			paths := from.Paths(to.ID())
			selected, standby := "-", 0
			var rtt time.Duration
			for _, path := range paths {
				if path.Selected {
					selected, rtt = path.Remote.String(), path.SmoothedRTT
				} else if path.State == core.PathStandby {
					standby++
				}
			}
			fmt.Fprintf(table, "%d\t%d\t%d\t%s\t%s\t%d\n", index, peerIndex, len(paths), selected, formatDuration(rtt), standby)
		}
	}
	table.Flush()
	fmt.Fprintln(d.out)
}

// report prints the table of nodes, their paths, and the DHT lookup and echo
// figures.
func (d *demo) report() {
	fmt.Fprintln(d.out)
	table := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(table, "NODE\tPEER ID\tLISTEN ADDRESSES\tCONNECTIONS\tGLOBAL POOL\tUNASSIGNED POOL\tROUTING TABLE")
	for index, demoNode := range d.nodes {
		addrs := make([]string, 0, len(demoNode.Addrs()))
		for _, addr := range demoNode.Addrs() {
			addrs = append(addrs, addr.String())
		}
		pools := demoNode.Stats()
		fmt.Fprintf(table, "%d\t%s\t%s\t%d\t%s\t%s\t%d\n", index, shortID(demoNode.ID()), strings.Join(addrs, ", "),
			len(demoNode.Host().Network().Conns()), formatPool(pools.Global), formatPool(pools.Unassigned),
			demoNode.DHT().RoutingTable().Size())
	}
	table.Flush()
	fmt.Fprintln(d.out)
	d.reportPaths()

	lookups := d.lookups
	fmt.Fprintf(d.out, "DHT lookups: %d pairs, %d answered by other nodes, %d answered locally (no other node to ask); "+
		"%d FindPeer calls (%d retries), %.1f answers from other nodes per call\n",
		lookups.pairs, lookups.throughNetwork, lookups.answeredLocally,
		lookups.attempts, lookups.attempts-lookups.pairs,
		float64(lookups.peerResponses)/float64(max(lookups.attempts, 1)))
	sorted := slices.Clone(d.echoRoundTrips)
	slices.Sort(sorted)
	fmt.Fprintf(d.out, "echo: %d exchanges of %d bytes, round trip p50 %s, p99 %s\n",
		len(sorted), echoPayloadSize,
		formatDuration(nearestRankPercentile(sorted, 50)), formatDuration(nearestRankPercentile(sorted, 99)))
}

// formatPool shows a pool's count against its watermarks: "4 (10/20)".
func formatPool(p connmgr.PoolStats) string {
	return fmt.Sprintf("%d (%d/%d)", p.Count, p.LowWater, p.HighWater)
}

// nearestRankPercentile returns the given percentile (0 < percentile ≤ 100)
// of sorted by the nearest-rank method: the smallest sample such that at
// least that percentage of the samples are less than or equal to it. It returns 0 for no samples.
func nearestRankPercentile(sorted []time.Duration, percentile float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(percentile / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// formatDuration rounds d for display: to the microsecond.
func formatDuration(d time.Duration) string {
	return d.Round(time.Microsecond).String()
}

// close closes every node, last started first.
func (d *demo) close() error {
	var errs []error
	for index, demoNode := range slices.Backward(d.nodes) {
		if err := demoNode.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close node %d: %w", index, err))
		}
	}
	return errors.Join(errs...)
}
