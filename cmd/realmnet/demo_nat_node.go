package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/realmnet/realmnet/debugapi"
	"github.com/realmnet/realmnet/internal/natlab"
	"github.com/realmnet/realmnet/node"
)

// The lab side of demo --nat: the role that each of its lab processes
// runs, one realmnet node. The demo process starts it in a lab namespace
// (natlab.Lab.StartRole) and talks to it over the process's standard input
// and output, a line each way.

// natNodeRole names the role of demo --nat's lab processes (runNATNode).
const natNodeRole = "demo-nat-node"

// labRoles returns the roles of realmnet's NAT lab processes: main passes
// them to natlab.RunIfChild, and so does the tests' TestMain, since a lab
// built in a test starts the test binary again.
func labRoles() map[string]natlab.Role {
	return map[string]natlab.Role{natNodeRole: runNATNode}
}

const (
	// natNodePort is the UDP port (QUIC) every lab node listens on, on its
	// lab address: each has a namespace of its own.
	natNodePort = 4001
	// natConnectTimeout bounds a lab node's connect command, retries
	// included.
	natConnectTimeout = 30 * time.Second
	// natConnectRetry separates two attempts of the connect command: an
	// attempt can fail while the relay does not yet know the target's
	// reservation.
	natConnectRetry = 50 * time.Millisecond
	// natPathsTimeout bounds the paths command (one request to the
	// node's own debug endpoint, on the namespace's loopback).
	natPathsTimeout = 5 * time.Second
)

// runNATNode runs one realmnet node in a lab namespace for demo --nat. The
// node listens on UDP port 4001 (QUIC) of -listen, its lab address; it
// measures its reachability with AutoNAT v2 allowing private addresses
// (the lab has no others), unless -private forces it private; and it
// serves its debug endpoint on the namespace's loopback, from which it
// reads its paths as `realmnet inspect paths` does. Lab addresses count as
// public in the process (natlab.DeclareInternetPublic), so that the relay's
// reservations carry them.
//
// It prints "ready PEER ADDR" (ADDR its listen address, ending
// /p2p/PEER), then answers each command line with one line, "error
// COMMAND: MESSAGE" when it fails:
//
//	circuit       its first /p2p-circuit address → "circuit ADDR", or "circuit -" while it has none
//	connect ADDR  connect to the peer at ADDR, with /p2p/ID, and only there (retried for up to 30 s)
//	              → "connected PATHS", its paths to the peer right after (JSON, []debugapi.PathView)
//	paths PEER    its paths to PEER → "paths PATHS"
//
// It returns when its input ends, closing the node.
func runNATNode(args []string, in io.Reader, out io.Writer) error {
	flags := flag.NewFlagSet(natNodeRole, flag.ContinueOnError)
	listen := flags.String("listen", "", "lab IPv4 address to listen on (required)")
	relayService := flags.Bool("relay-service", false, "run the circuit relay v2 service")
	dhtServer := flags.Bool("dht-server", false, "answer DHT queries (else only query)")
	bootstrap := flags.String("bootstrap", "", "bootstrap peer's address, ending /p2p/ID")
	staticRelay := flags.String("relay", "", "static relay's address, ending /p2p/ID")
	private := flags.Bool("private", false, "force private reachability")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *listen == "" {
		return errors.New("-listen is required")
	}
	natlab.DeclareInternetPublic()

	listenAddr := fmt.Sprintf("/ip4/%s/udp/%d/quic-v1", *listen, natNodePort)
	options := []node.Option{
		node.ListenAddrStrings(listenAddr),
		node.DHTMode(node.DHTClient),
		node.AutoNAT(node.AutoNATConfig{PrivateAddrs: true}),
		node.DebugAddr("127.0.0.1:0"),
	}
	if *dhtServer {
		options = append(options, node.DHTMode(node.DHTServer))
	}
	if *relayService {
		// go-libp2p's default limits a circuit to 2 minutes and 128 KiB,
		// which heartbeats and identify alone could use up while the demo
		// waits; node's NAT lab tests raise them the same way.
		resources := relay.DefaultResources()
		resources.Limit = &relay.RelayLimit{Duration: time.Hour, Data: 64 << 20}
		options = append(options, node.RelayService(node.RelayServiceConfig{Resources: &resources}))
	}
	for _, addr := range []struct {
		value string
		use   func(peer.AddrInfo) node.Option
	}{
		{*bootstrap, func(ai peer.AddrInfo) node.Option { return node.Bootstrap(ai) }},
		{*staticRelay, func(ai peer.AddrInfo) node.Option { return node.Relays(ai) }},
	} {
		if addr.value == "" {
			continue
		}
		ai, err := peer.AddrInfoFromString(addr.value)
		if err != nil {
			return err
		}
		options = append(options, addr.use(*ai))
	}
	if *private {
		options = append(options, node.ForceReachability(network.ReachabilityPrivate))
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	labNode, err := node.New(ctx, options...)
	if err != nil {
		return err
	}
	defer labNode.Close()
	debug, err := debugapi.NewClient(labNode.DebugURL(), "")
	if err != nil {
		return err
	}
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, format+"\n", args...)
	}
	say("ready %s %s/p2p/%s", labNode.ID(), listenAddr, labNode.ID())

	lines := bufio.NewScanner(in)
	for lines.Scan() {
		command, arg, _ := strings.Cut(lines.Text(), " ")
		answer, err := natNodeCommand(ctx, labNode, debug, command, arg)
		if err != nil {
			say("error %s: %s", command, cell(err.Error()))
			continue
		}
		say("%s", answer)
	}
	return lines.Err()
}

// natNodeCommand runs one command of runNATNode and returns its answer.
func natNodeCommand(ctx context.Context, labNode *node.Node, debug *debugapi.Client, command, arg string) (string, error) {
	switch command {
	case "circuit":
		for _, addr := range labNode.Addrs() {
			if _, err := addr.ValueForProtocol(ma.P_CIRCUIT); err == nil {
				return "circuit " + addr.String(), nil
			}
		}
		return "circuit -", nil
	case "connect":
		target, err := peer.AddrInfoFromString(arg)
		if err != nil {
			return "", err
		}
		ctx, cancel := context.WithTimeout(ctx, natConnectTimeout)
		defer cancel()
		for {
			err := labNode.Connect(ctx, *target)
			if err == nil {
				break
			}
			// Forget the addresses a failed attempt may have learnt, so
			// that the next one dials ADDR only.
			labNode.Host().Peerstore().ClearAddrs(target.ID)
			select {
			case <-time.After(natConnectRetry):
			case <-ctx.Done():
				return "", fmt.Errorf("%w; the last attempt: %w", ctx.Err(), err)
			}
		}
		return natNodePaths(ctx, debug, "connected", target.ID)
	case "paths":
		target, err := peer.Decode(arg)
		if err != nil {
			return "", err
		}
		return natNodePaths(ctx, debug, "paths", target)
	}
	return "", fmt.Errorf("unknown command %q (want circuit, connect or paths)", command)
}

// natNodePaths answers with prefix and the node's paths to target, read
// from its debug endpoint.
func natNodePaths(ctx context.Context, debug *debugapi.Client, prefix string, target peer.ID) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, natPathsTimeout)
	defer cancel()
	paths, err := debug.Paths(ctx, target.String())
	if err != nil {
		return "", err
	}
	encoded, err := json.Marshal(paths)
	if err != nil {
		return "", err
	}
	return prefix + " " + string(encoded), nil
}
