package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/spf13/cobra"

	"github.com/realmnet/realmnet/node"
)

// runFlags are the flags of `realmnet run`.
type runFlags struct {
	listenAddrs    []string
	identityFile   string
	bootstrapAddrs []string
	dhtMode        string
}

// newRunCommand returns `realmnet run`, which runs one node until it is
// interrupted.
func newRunCommand() *cobra.Command {
	var flags runFlags
	command := &cobra.Command{
		Use:   "run",
		Short: "Run one realmnet node until SIGINT or SIGTERM",
		Long: "run starts one realmnet node, prints its addresses (one per line, each\n" +
			"ending in /p2p/<peer ID>, ready to be given to another node's --bootstrap),\n" +
			"and runs until it receives SIGINT or SIGTERM; it then closes the node and\n" +
			"exits with status 0.\n\n" +
			"Without --identity the node gets a fresh key, hence a new peer ID, on every\n" +
			"run. With --identity FILE the key is read from FILE, or generated and\n" +
			"written there when FILE does not exist.",
		Args: cobra.NoArgs,
		RunE: func(command *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(command.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runNode(ctx, command.OutOrStdout(), flags)
		},
	}
	command.Flags().StringArrayVar(&flags.listenAddrs, "listen", []string{node.DefaultListenAddr},
		"QUIC multiaddr to listen on (repeatable)")
	command.Flags().StringVar(&flags.identityFile, "identity", "",
		"file holding the node's private key, created when missing (default: a fresh key each run)")
	command.Flags().StringArrayVar(&flags.bootstrapAddrs, "bootstrap", nil,
		"multiaddr of a bootstrap peer, ending in /p2p/<peer ID> (repeatable)")
	command.Flags().StringVar(&flags.dhtMode, "dht-mode", node.DHTAuto.String(),
		"DHT role: auto, server or client")
	return command
}

// runNode starts a node configured by flags, prints its addresses to out,
// and closes it when ctx is done.
func runNode(ctx context.Context, out io.Writer, flags runFlags) error {
	options, err := flags.nodeOptions()
	if err != nil {
		return err
	}
	runningNode, err := node.New(ctx, options...)
	if err != nil {
		return err
	}
	defer runningNode.Close()

	addrInfo := runningNode.AddrInfo()
	addrs, err := peer.AddrInfoToP2pAddrs(&addrInfo)
	if err != nil {
		return fmt.Errorf("format the node's addresses: %w", err)
	}
	fmt.Fprintf(out, "peer ID %s, listening on:\n", runningNode.ID())
	for _, addr := range addrs {
		fmt.Fprintln(out, addr)
	}
	fmt.Fprintln(out, "running until SIGINT or SIGTERM")

	<-ctx.Done()
	fmt.Fprintln(out, "stopping")
	if err := runningNode.Close(); err != nil {
		return fmt.Errorf("close node: %w", err)
	}
	fmt.Fprintln(out, "stopped")
	return nil
}

// nodeOptions turns the flags into node options. Errors name the bad value.
func (flags runFlags) nodeOptions() ([]node.Option, error) {
	dhtRole, err := node.ParseDHTRole(flags.dhtMode)
	if err != nil {
		return nil, fmt.Errorf("--dht-mode: %w", err)
	}
	for _, listenAddr := range flags.listenAddrs {
		if _, err := ma.NewMultiaddr(listenAddr); err != nil {
			return nil, fmt.Errorf("--listen %q is not a multiaddr: %w", listenAddr, err)
		}
	}
	options := []node.Option{node.ListenAddrStrings(flags.listenAddrs...), node.DHTMode(dhtRole)}
	if flags.identityFile != "" {
		options = append(options, node.IdentityFile(flags.identityFile))
	}
	if len(flags.bootstrapAddrs) > 0 {
		peers, err := parseBootstrapPeers(flags.bootstrapAddrs)
		if err != nil {
			return nil, err
		}
		options = append(options, node.Bootstrap(peers...))
	}
	return options, nil
}

// parseBootstrapPeers parses multiaddrs ending in /p2p/<peer ID> and merges
// the addresses of the same peer into one AddrInfo.
func parseBootstrapPeers(addrs []string) ([]peer.AddrInfo, error) {
	parsed := make([]ma.Multiaddr, 0, len(addrs))
	for _, value := range addrs {
		// AddrInfoFromString checks both the multiaddr and its /p2p part.
		if _, err := peer.AddrInfoFromString(value); err != nil {
			return nil, fmt.Errorf("--bootstrap %q is not a multiaddr ending in /p2p/<peer ID>: %w", value, err)
		}
		addr, err := ma.NewMultiaddr(value)
		if err != nil {
			return nil, fmt.Errorf("--bootstrap %q is not a multiaddr: %w", value, err)
		}
		parsed = append(parsed, addr)
	}
	peers, err := peer.AddrInfosFromP2pAddrs(parsed...)
	if err != nil {
		return nil, fmt.Errorf("--bootstrap: %w", err)
	}
	return peers, nil
}
