package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/realmnet/realmnet/debugapi"
	"github.com/realmnet/realmnet/internal/natlab"
)

// The demo side of demo --nat: it builds the NAT lab, starts a node in four
// of its namespaces (runNATNode) and watches a relayed path between the two
// NATed nodes turn into a direct one.

// natDemoTopology is demo --nat's lab: the relay and the bootstrap node on
// the lab's internet, a and b each behind a router of its own. Both NATs
// are endpoint-independent, the kind hole punching gets through: each
// host's flows keep one public address and port (its own port) for every
// destination, and the router lets in only the replies of flows its host
// started.
var natDemoTopology = natlab.Topology{
	Public: []string{"relay", "bootstrap"},
	Sites: []natlab.Site{
		{Router: "r1", NAT: natlab.EndpointIndependent, Hosts: []string{"a"}},
		{Router: "r2", NAT: natlab.EndpointIndependent, Hosts: []string{"b"}},
	},
}

// describeNATLab describes demo --nat's lab in a line.
func describeNATLab(topo natlab.Topology) string {
	parts := []string{strings.Join(topo.Public, " and ") + " on its internet (203.0.113.0/24)"}
	for _, site := range topo.Sites {
		parts = append(parts, fmt.Sprintf("%s behind %s (%s NAT)", strings.Join(site.Hosts, " and "), site.Router, site.NAT))
	}
	return strings.Join(parts, ", ")
}

// buildNATLab builds demo --nat's lab: natlab.Build, which the tests
// replace to play a machine where the lab cannot be built.
var buildNATLab = natlab.Build

// natLabRequirements says what demo --nat needs, after the reason the lab
// could not be built here.
const natLabRequirements = "demo --nat builds its NAT lab from Linux network namespaces, without root: it needs Linux\n" +
	"with unprivileged user namespaces (sysctl user.max_user_namespaces > 0 and, where they exist,\n" +
	"kernel.unprivileged_userns_clone=1 and kernel.apparmor_restrict_unprivileged_userns=0), and\n" +
	"iproute2's ip and nftables' nft with NAT support (Debian, Ubuntu: apt-get install iproute2 nftables)"

const (
	// natPollInterval is how often demo --nat asks a for its circuit
	// address, and b for its paths, while it waits for them.
	natPollInterval = 50 * time.Millisecond
	// natRecvSlice bounds one wait for a lab node's line, so that the demo
	// notices the end of its context (--timeout, Ctrl-C) that soon.
	natRecvSlice = 200 * time.Millisecond
	// natAnswerTimeout bounds the answer to a command that a lab node
	// answers at once (circuit, paths), even after --timeout: the last
	// paths table is asked for then.
	natAnswerTimeout = 10 * time.Second
)

// errNoDirectPath says that the relayed path between a and b was not
// upgraded in time.
var errNoDirectPath = errors.New("no direct path between a and b: hole punching (DCUtR) did not upgrade the relayed path")

// natLabNode is a node of demo --nat, seen from the demo: its lab
// process and what it said when it started.
type natLabNode struct {
	host string // its lab host: relay, bootstrap, a or b
	role string // what it does, for the table of nodes
	proc *natlab.Proc
	id   peer.ID
	addr string // its listen address, ending /p2p/ID
}

// runNATDemo runs demo --nat, writing progress and tables to out, and
// removes the lab before it returns. Errors: the lab's (errors.Is
// natlab.ErrUnavailable where it cannot be built here), a lab node's (with
// the end of its standard error), errNoDirectPath when ctx ends before
// the direct path opens, ctx's error when it ends before.
func runNATDemo(ctx context.Context, out io.Writer) (err error) {
	progressf := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	progressf("building the NAT lab: %s…", describeNATLab(natDemoTopology))
	begin := time.Now()
	lab, err := buildNATLab(natDemoTopology)
	if err != nil {
		return err
	}
	var nodes []*natLabNode
	defer func() {
		// After a run to the end the nodes close on their own,
		// concurrently, and one that fails to says so. After a failure
		// (Ctrl-C included) the lab's Close kills them at once: a node
		// still starting could take seconds to notice its closed input.
		errs := make([]error, len(nodes))
		if err == nil {
			var wg sync.WaitGroup
			for index, labNode := range nodes {
				wg.Go(func() { errs[index] = labNode.proc.Close() })
			}
			wg.Wait()
		}
		err = errors.Join(err, errors.Join(errs...), lab.Close())
	}()
	progressf("built the NAT lab in %s", time.Since(begin).Round(time.Millisecond))

	start := func(host, role string, args ...string) (*natLabNode, error) {
		args = append([]string{"-listen", lab.Addr(host).String()}, args...)
		proc, err := lab.StartRole(host, natNodeRole, args...)
		if err != nil {
			return nil, err
		}
		labNode := &natLabNode{host: host, role: role, proc: proc}
		nodes = append(nodes, labNode)
		return labNode, nil
	}
	// Each pair starts together: StartRole returns before the node is
	// ready, which ready waits for.
	relay, err := start("relay", "relay service", "-relay-service")
	if err != nil {
		return err
	}
	bootstrap, err := start("bootstrap", "DHT server", "-dht-server")
	if err != nil {
		return err
	}
	for _, labNode := range []*natLabNode{relay, bootstrap} {
		if err := labNode.ready(ctx); err != nil {
			return err
		}
	}
	private := []string{"-private", "-bootstrap", bootstrap.addr, "-relay", relay.addr}
	var behind []*natLabNode
	for _, site := range natDemoTopology.Sites {
		labNode, err := start(site.Hosts[0], fmt.Sprintf("private, behind %s (%s)", site.Router, lab.Addr(site.Router)), private...)
		if err != nil {
			return err
		}
		behind = append(behind, labNode)
	}
	a, b := behind[0], behind[1]
	for _, labNode := range behind {
		if err := labNode.ready(ctx); err != nil {
			return err
		}
	}
	nodeTable := newTable(out, "", "HOST", "PEER ID", "LISTEN ADDRESS", "ROLE")
	for _, labNode := range nodes {
		nodeTable.row(labNode.host, shortID(labNode.id), strings.TrimSuffix(labNode.addr, "/p2p/"+labNode.id.String()), labNode.role)
	}
	if err := nodeTable.flush(); err != nil {
		return err
	}

	// a, private, reserves a slot on its static relay (go-libp2p's
	// autorelay) and advertises the circuit address it got.
	var circuit string
	for {
		answer, err := a.do(ctx, "circuit", "circuit")
		if err != nil {
			return fmt.Errorf("wait for a's circuit address: %w", err)
		}
		if answer != "-" {
			circuit = answer
			break
		}
		if err := sleep(ctx, natPollInterval); err != nil {
			return fmt.Errorf("wait for a's circuit address: %w", err)
		}
	}
	progressf("a reserved a slot on the relay: %s", circuit)

	// b dials a through that address only: the relay carries the
	// connection.
	answer, err := b.do(ctx, "connect "+circuit+"/p2p/"+a.id.String(), "connected")
	if err != nil {
		return fmt.Errorf("connect b to a through the relay: %w", err)
	}
	first, err := decodePaths(b, answer)
	if err != nil {
		return err
	}
	relayedOpened, ok := firstOpened(first, debugapi.TierRelayed)
	if !ok {
		return fmt.Errorf("b connected to a through %s, but has no relayed path to a: %s", circuit, answer)
	}
	progressf("b connected to a through a's circuit address\n")
	progressf("paths when b connected to a through the relay:")
	if err := printNATPaths(ctx, out, first, a, b); err != nil {
		return err
	}

	progressf("\nwaiting for hole punching (DCUtR) to open a direct path between a and b…")
	last, err := awaitDirectPath(ctx, a, b)
	if err != nil && !errors.Is(err, errNoDirectPath) {
		return err
	}
	if err != nil {
		progressf("\npaths when the demo gave up:")
		if printErr := printNATPaths(ctx, out, last, a, b); printErr != nil {
			return errors.Join(err, printErr)
		}
		return err
	}
	progressf("\npaths once the direct path opened:")
	if err := printNATPaths(ctx, out, last, a, b); err != nil {
		return err
	}
	directOpened, _ := firstOpened(last, debugapi.TierDirect)
	progressf("\nupgraded to a direct path in %d ms (from the opening of b's relayed connection to a to the opening of the direct one)",
		max(directOpened.Sub(relayedOpened), 0).Milliseconds())
	return nil
}

// awaitDirectPath polls b's paths to a until one is direct, and returns
// them. When ctx ends first it returns b's last paths and errNoDirectPath
// with ctx's error.
func awaitDirectPath(ctx context.Context, a, b *natLabNode) ([]debugapi.PathView, error) {
	var last []debugapi.PathView
	for {
		if err := ctx.Err(); err != nil {
			return last, fmt.Errorf("%w (%w)", errNoDirectPath, err)
		}
		paths, err := b.paths(ctx, a)
		if err != nil {
			return nil, err
		}
		if _, ok := firstOpened(paths, debugapi.TierDirect); ok {
			return paths, nil
		}
		last = paths
		_ = sleep(ctx, natPollInterval) // the loop checks ctx
	}
}

// printNATPaths prints b's paths to a (given) and a's paths to b (asked
// for now), as `realmnet inspect paths` prints them.
func printNATPaths(ctx context.Context, out io.Writer, bToA []debugapi.PathView, a, b *natLabNode) error {
	aToB, err := a.paths(ctx, b)
	if err != nil {
		return err
	}
	for _, side := range []struct {
		from, to *natLabNode
		paths    []debugapi.PathView
	}{{b, a, bToA}, {a, b, aToB}} {
		fmt.Fprintf(out, "%s → %s (%s):\n", side.from.host, side.to.host, shortID(side.to.id))
		if err := printPaths(out, "  ", side.paths, peerIDs{}); err != nil {
			return err
		}
	}
	return nil
}

// firstOpened returns the earliest opening time of the paths of the tier,
// and whether there is one.
func firstOpened(paths []debugapi.PathView, tier debugapi.Tier) (time.Time, bool) {
	var opened []time.Time
	for _, path := range paths {
		if path.Tier == tier {
			opened = append(opened, path.Opened)
		}
	}
	if len(opened) == 0 {
		return time.Time{}, false
	}
	return slices.MinFunc(opened, time.Time.Compare), true
}

// ready waits for the node's ready line: "ready PEER ADDR".
func (n *natLabNode) ready(ctx context.Context) error {
	line, err := recvLine(ctx, n.proc)
	if err != nil {
		return fmt.Errorf("start the node on %s: %w", n.host, err)
	}
	fields := strings.Fields(line)
	if len(fields) != 3 || fields[0] != "ready" {
		return fmt.Errorf("start the node on %s: it said %q, want ready PEER ADDR", n.host, line)
	}
	if n.id, err = peer.Decode(fields[1]); err != nil {
		return fmt.Errorf("start the node on %s: %q: %w", n.host, line, err)
	}
	n.addr = fields[2]
	return nil
}

// do sends command to the node and returns the rest of its answer, which
// must start with want and a space; an "error" answer is returned as an
// error. It waits for the answer until ctx ends.
func (n *natLabNode) do(ctx context.Context, command, want string) (string, error) {
	if err := n.proc.Send(command); err != nil {
		return "", err
	}
	line, err := recvLine(ctx, n.proc)
	if err != nil {
		return "", err
	}
	if message, ok := strings.CutPrefix(line, "error "); ok {
		return "", fmt.Errorf("the node on %s: %s", n.host, message)
	}
	answer, ok := strings.CutPrefix(line, want+" ")
	if !ok {
		return "", fmt.Errorf("the node on %s answered %q to %q, want %q and more", n.host, line, command, want+" ")
	}
	return answer, nil
}

// paths returns the node's paths to other. The node answers at once, so
// the answer is awaited for natAnswerTimeout whether ctx has ended or not:
// the link never falls out of step, and the last table can be printed
// after --timeout. ctx gives only its values.
func (n *natLabNode) paths(ctx context.Context, other *natLabNode) ([]debugapi.PathView, error) {
	answerCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), natAnswerTimeout)
	defer cancel()
	answer, err := n.do(answerCtx, "paths "+other.id.String(), "paths")
	if err != nil {
		return nil, err
	}
	return decodePaths(n, answer)
}

// decodePaths decodes the paths the node sent.
func decodePaths(n *natLabNode, answer string) ([]debugapi.PathView, error) {
	var paths []debugapi.PathView
	if err := json.Unmarshal([]byte(answer), &paths); err != nil {
		return nil, fmt.Errorf("the paths of the node on %s: %w", n.host, err)
	}
	return paths, nil
}

// recvLine returns p's next line, waiting until ctx ends.
func recvLine(ctx context.Context, p *natlab.Proc) (string, error) {
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		line, err := p.Recv(natRecvSlice)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue // a part of a line is kept for the next Recv
		}
		return line, err
	}
}

// sleep waits for d, or returns ctx's error when it ends first.
func sleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
