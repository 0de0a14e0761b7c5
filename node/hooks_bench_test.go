package node_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/internal/benchkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
)

// BenchmarkDialWithHooks measures one connection (dial, handshake,
// identify) and its close between two nodes on loopback, with three
// registered hooks on the dialer (two BeforeConnect, one AfterHandshake,
// each allowing: "3-hooks") against a dialer without hooks ("no-hooks"),
// two client nodes dialing the same server. The sides are interleaved
// (benchkit.Compare, blocks of one connection); waiting until both ends
// have seen the close is not timed. ratio-* is 3-hooks/no-hooks per round:
// the cost of running hooks on the dial path.
func BenchmarkDialWithHooks(b *testing.B) {
	allowBefore := func(context.Context, hooks.ConnectAttempt) error { return nil }
	allowAfter := func(context.Context, hooks.Handshake) error { return nil }
	server := testnode.New(b)
	ctx := context.Background()
	side := func(name string, opts ...node.Option) benchkit.Side {
		client := testnode.New(b, opts...)
		return benchkit.Side{
			Name: name,
			Op: func() error {
				if err := client.Connect(ctx, server.AddrInfo()); err != nil {
					return err
				}
				return client.Host().Network().ClosePeer(server.ID())
			},
			After: func() error {
				deadline := time.Now().Add(benchSetupTimeout)
				for len(server.Host().Network().ConnsToPeer(client.ID())) > 0 ||
					len(client.Host().Network().ConnsToPeer(server.ID())) > 0 {
					if time.Now().After(deadline) {
						return errors.New("still connected")
					}
					time.Sleep(50 * time.Microsecond)
				}
				return nil
			},
		}
	}
	benchkit.Compare(b,
		side("3-hooks", node.BeforeConnect(allowBefore), node.BeforeConnect(allowBefore), node.AfterHandshake(allowAfter)),
		side("no-hooks"),
		benchkit.Config{Block: 1, MinRounds: 50, Allocs: true})
}
