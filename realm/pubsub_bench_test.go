package realm_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/realmnet/realmnet/internal/benchkit"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

// benchTopicMembers is the group size of BenchmarkPubSubDelivery.
const benchTopicMembers = 20

// deliverySide is one side of BenchmarkPubSubDelivery: publish on pub and
// wait until every other member's subscription has the message.
type deliverySide struct {
	publish func(context.Context, []byte) error
	got     chan string // one per delivery to a subscriber other than the publisher
	seq     int
}

func (d *deliverySide) op() error {
	d.seq++
	msg := fmt.Sprintf("message %d", d.seq)
	data := make([]byte, 1024) // 1 KiB: the id, then zeros
	copy(data, msg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.publish(ctx, data); err != nil {
		return err
	}
	for n := 0; n < benchTopicMembers-1; {
		select {
		case got := <-d.got:
			if got == msg {
				n++
			}
		case <-ctx.Done():
			return fmt.Errorf("%s: %d of %d members got it: %w", msg, n, benchTopicMembers-1, ctx.Err())
		}
	}
	return nil
}

// read passes the ids of the messages next returns to d.got (when count:
// the publisher's own deliveries are not counted) until next fails.
func (d *deliverySide) read(ctx context.Context, count bool, next func(context.Context) ([]byte, error)) {
	for {
		data, err := next(ctx)
		if err != nil {
			return
		}
		if count {
			d.got <- string(bytes.TrimRight(data, "\x00"))
		}
	}
}

// BenchmarkPubSubDelivery publishes a 1 KiB message and waits until all
// 19 other members of a 20-member group have received it: realm side,
// realmnet nodes in one realm on 127.0.0.1 (Realm.Join, Topic.Publish,
// Subscription.Next: the peer filter and the membership validator in the
// path); reference, 20 stock go-libp2p hosts (testkit.StockHost) with plain
// go-libp2p-pubsub gossipsub on one topic, every pair connected as the
// realm's members are. The realm's publish rate limit is lifted (it
// would pace the loop, not the delivery). Interleaved (benchkit.Compare, blocks of one
// publication, every one timed: p50 and p99); ratio-* is realm/libp2p.
func BenchmarkPubSubDelivery(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The realm side.
	nodes := make([]*node.Node, benchTopicMembers)
	realms := make([]*realm.Realm, benchTopicMembers)
	for i := range nodes {
		nodes[i] = newNode(b)
		// The publish rate limit (100/s by default) is not what is
		// measured: a publication follows the last one's deliveries.
		opts := []realm.Option{realm.PSK(testPSK), realm.PubSub(realm.PubSubConfig{PublishRate: 1e6, PublishBurst: 1000})}
		if i > 0 {
			opts = append(opts, realm.Peers(nodes[0].AddrInfo()))
		}
		realms[i] = join(b, nodes[i], "bench-pubsub", opts...)
	}
	realmSide := &deliverySide{got: make(chan string, 1024)}
	var realmTopics []*realm.Topic
	var readers sync.WaitGroup
	defer readers.Wait()
	defer cancel()
	for i, r := range realms {
		wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
		if err := r.WaitMembers(wctx, benchTopicMembers-1); err != nil {
			b.Fatalf("member %d: %v", i, err)
		}
		wcancel()
		topic, err := r.Join("bench")
		if err != nil {
			b.Fatal(err)
		}
		realmTopics = append(realmTopics, topic)
		if i == 0 {
			realmSide.publish = topic.Publish
		}
		// Every member subscribes, the publisher too (its own messages
		// are not counted).
		sub, err := topic.Subscribe()
		if err != nil {
			b.Fatal(err)
		}
		readers.Go(func() {
			realmSide.read(ctx, i > 0, func(ctx context.Context) ([]byte, error) {
				msg, err := sub.Next(ctx)
				if err != nil {
					return nil, err
				}
				return msg.Data, nil
			})
		})
	}
	for _, topic := range realmTopics {
		benchWaitUntil(b, "realm topic peers", func() bool { return len(topic.Peers()) == benchTopicMembers-1 })
	}

	// The stock side.
	hosts := make([]host.Host, benchTopicMembers)
	for i := range hosts {
		hosts[i] = testkit.StockHost(b)
	}
	for i := range hosts {
		for j := i + 1; j < len(hosts); j++ {
			if err := hosts[i].Connect(ctx, peer.AddrInfo{ID: hosts[j].ID(), Addrs: hosts[j].Addrs()}); err != nil {
				b.Fatal(err)
			}
		}
	}
	stockSide := &deliverySide{got: make(chan string, 1024)}
	var stockTopics []*pubsub.Topic
	for i, h := range hosts {
		ps, err := pubsub.NewGossipSub(ctx, h)
		if err != nil {
			b.Fatal(err)
		}
		topic, err := ps.Join("bench")
		if err != nil {
			b.Fatal(err)
		}
		stockTopics = append(stockTopics, topic)
		if i == 0 {
			stockSide.publish = func(ctx context.Context, data []byte) error { return topic.Publish(ctx, data) }
		}
		sub, err := topic.Subscribe()
		if err != nil {
			b.Fatal(err)
		}
		readers.Go(func() {
			stockSide.read(ctx, i > 0, func(ctx context.Context) ([]byte, error) {
				msg, err := sub.Next(ctx)
				if err != nil {
					return nil, err
				}
				return msg.Data, nil
			})
		})
	}
	for _, topic := range stockTopics {
		benchWaitUntil(b, "stock topic peers", func() bool { return len(topic.ListPeers()) == benchTopicMembers-1 })
	}

	realmOp := func() error { return realmSide.op() }
	stockOp := func() error { return stockSide.op() }
	for _, op := range []func() error{realmOp, stockOp} { // warm-up: every member subscribed
		for try := 0; ; try++ {
			if err := op(); err == nil {
				break
			} else if try == 5 {
				b.Fatal(err)
			}
		}
	}
	benchkit.Compare(b,
		benchkit.Side{Name: "realm", Op: realmOp},
		benchkit.Side{Name: "libp2p", Op: stockOp},
		benchkit.Config{Block: 1, Warmup: 5, MinRounds: 50, Latencies: true})
}
