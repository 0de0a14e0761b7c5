package node_test

import (
	"context"
	"testing"
	"time"

	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
)

// BenchmarkDialWithHooks measures one connection (dial, handshake,
// identify) and its close between two nodes on loopback, with three
// registered hooks on the dialer (two BeforeConnect, one AfterHandshake,
// each allowing) against none. The ratio is the cost of running hooks on
// the dial path.
func BenchmarkDialWithHooks(b *testing.B) {
	allowBefore := func(context.Context, hooks.ConnectAttempt) error { return nil }
	allowAfter := func(context.Context, hooks.Handshake) error { return nil }
	for _, tc := range []struct {
		name string
		opts []node.Option
	}{
		{"no-hooks", nil},
		{"3-hooks", []node.Option{node.BeforeConnect(allowBefore), node.BeforeConnect(allowBefore), node.AfterHandshake(allowAfter)}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			server := testnode.New(b)
			client := testnode.New(b, tc.opts...)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if err := client.Connect(ctx, server.AddrInfo()); err != nil {
					b.Fatal(err)
				}
				_ = client.Host().Network().ClosePeer(server.ID())
				for len(server.Host().Network().ConnsToPeer(client.ID())) > 0 {
					time.Sleep(50 * time.Microsecond)
				}
			}
		})
	}
}
