package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"

	"github.com/realmnet/realmnet/debugapi"
)

// inspectTimeout is inspect's default --timeout: every view is a snapshot
// of the node's memory, answered in milliseconds; 10 s is a node that is
// stuck or a network that drops the request.
const inspectTimeout = 10 * time.Second

// peerFlag is `realmnet inspect paths --peer`.
const peerFlag = "peer"

// inspectLong is the help of `realmnet inspect`.
const inspectLong = `inspect reads a running node's debug endpoint (its JSON API) and prints
one view of the node as a table:

    node     the node: peer ID, version, uptime, counts, addresses
    peers    PEER CONNECTEDNESS PATHS RTT REALMS POOLS BREAKER QUALITY
    paths    PEER CONN STATE TIER DIR SEL SRTT LOSS STREAMS SENT RECEIVED REMOTE
             (SEL: * on each peer's selected path; --peer ID: one peer's only)
    pools    POOL SIZE LOW HIGH FILL TRIMMED REFUSED
             (FILL: [#####.....], the size against the high water)
    realms   REALM MEMBER SINCE PATHS, one row per member
    events   TIME TYPE PEER TEXT, the node's recent events, oldest first
    health   PEER BREAKER OPEN UNTIL QUALITY FAILURES, best quality first

With --json it prints the API's answer instead, as indented JSON (the
shapes of package debugapi's views: NodeView, PeerView, PathView, ...;
docs/observability.md).

` + endpointHelp + `

An error (the endpoint cannot be reached, requires a token, answers an
error) makes inspect exit with status 1.`

// newInspectCommand returns `realmnet inspect`, whose subcommands print the
// views of a node's debug endpoint.
func newInspectCommand(globals *globalOptions) *cobra.Command {
	options := &endpointOptions{}
	command := &cobra.Command{
		Use:   "inspect [--addr URL] [--token-file FILE] node|peers|paths|pools|realms|events|health",
		Short: "Print a running node's state from its debug endpoint",
		Long:  inspectLong,
		// Without Args, cobra would print the help and succeed for an
		// unknown view; NoArgs makes it an "unknown command" error.
		Args: cobra.NoArgs,
		RunE: func(command *cobra.Command, _ []string) error {
			return errors.New("inspect: say what to inspect: node, peers, paths, pools, realms, events or health")
		},
	}
	options.addFlags(command.PersistentFlags(), inspectTimeout)

	var pathsPeer string
	paths := newViewCommand(globals, options, "paths [--peer ID]", "Print the paths (connections) of every peer, or of one",
		func(ctx context.Context, client *debugapi.Client) ([]debugapi.PathView, error) {
			return client.Paths(ctx, pathsPeer)
		},
		func(out io.Writer, paths []debugapi.PathView, ids peerIDs, _ time.Time) error {
			return printPaths(out, "", paths, ids)
		})
	paths.Flags().StringVar(&pathsPeer, peerFlag, "", "print only the paths of the peer with this ID")
	// The peer ID is checked before any request.
	paths.PreRunE = func(*cobra.Command, []string) error {
		if pathsPeer == "" {
			return nil
		}
		if _, err := peer.Decode(pathsPeer); err != nil {
			return fmt.Errorf("--%s %q is not a peer ID: %w", peerFlag, pathsPeer, err)
		}
		return nil
	}

	command.AddCommand(
		newViewCommand(globals, options, "node", "Print the node: peer ID, version, uptime, counts, addresses",
			func(ctx context.Context, client *debugapi.Client) (debugapi.NodeView, error) { return client.Node(ctx) },
			func(out io.Writer, value debugapi.NodeView, _ peerIDs, _ time.Time) error {
				return printNode(out, value)
			}),
		newViewCommand(globals, options, "peers", "Print the peers: connectedness, paths, RTT, realms, pools, health",
			func(ctx context.Context, client *debugapi.Client) ([]debugapi.PeerView, error) {
				return client.Peers(ctx)
			},
			func(out io.Writer, value []debugapi.PeerView, ids peerIDs, _ time.Time) error {
				return printPeers(out, value, ids)
			}),
		paths,
		newViewCommand(globals, options, "pools", "Print the connection manager's pools: size, watermarks, fill, trims, refusals",
			func(ctx context.Context, client *debugapi.Client) ([]debugapi.PoolView, error) {
				return client.Pools(ctx)
			},
			func(out io.Writer, value []debugapi.PoolView, _ peerIDs, _ time.Time) error {
				return printPools(out, value)
			}),
		newViewCommand(globals, options, "realms", "Print the joined realms and their members",
			func(ctx context.Context, client *debugapi.Client) ([]debugapi.RealmView, error) {
				return client.Realms(ctx)
			},
			func(out io.Writer, value []debugapi.RealmView, ids peerIDs, now time.Time) error {
				return printRealms(out, value, ids, now)
			}),
		newViewCommand(globals, options, "events", "Print the node's recent events, oldest first",
			func(ctx context.Context, client *debugapi.Client) ([]debugapi.EventView, error) {
				return client.Events(ctx)
			},
			func(out io.Writer, value []debugapi.EventView, ids peerIDs, now time.Time) error {
				return printEvents(out, value, ids, now)
			}),
		newViewCommand(globals, options, "health", "Print the peers' health: circuit breaker, quality, failures",
			func(ctx context.Context, client *debugapi.Client) ([]debugapi.PeerHealthView, error) {
				return client.Health(ctx)
			},
			func(out io.Writer, value []debugapi.PeerHealthView, ids peerIDs, now time.Time) error {
				return printHealth(out, "", value, ids, now)
			}),
	)
	return command
}

// newViewCommand returns the inspect subcommand use, which reads one view
// of the endpoint with get and prints it as text with print, or, with
// --json, as indented JSON.
func newViewCommand[T any](globals *globalOptions, options *endpointOptions, use, short string,
	get func(context.Context, *debugapi.Client) (T, error), print func(io.Writer, T, peerIDs, time.Time) error) *cobra.Command {
	return supportsJSON(&cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(command *cobra.Command, _ []string) error {
			e, err := options.connect(command)
			if err != nil {
				return err
			}
			value, err := call(command.Context(), e, func(ctx context.Context) (T, error) { return get(ctx, e.client) })
			if err != nil {
				return err
			}
			if globals.json {
				return printIndentedJSON(command.OutOrStdout(), value)
			}
			return print(command.OutOrStdout(), value, peerIDs{wide: options.wide}, time.Now())
		},
	})
}
