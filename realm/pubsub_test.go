package realm_test

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

// pubsubMember is one member's topic and subscription.
type pubsubMember struct {
	node  *node.Node
	realm *realm.Realm
	topic *realm.Topic
	sub   *realm.Subscription
}

// TestPubSubTwentyNodesTwoRealms: 20 nodes find each other through the
// DHT, ten in realm red and ten in realm blue (the same name, "team",
// with two keys), and each joins topic "chat". Every member receives every
// message of its realm exactly once (its own included) and none of the
// other realm; a stock go-libp2p-pubsub host that knows red's wire topic
// (not its key), and a blue member publishing on it, reach no red member;
// a wire topic shows neither the realm nor the topic; a member that
// leaves stops receiving at once and drops out of the others' topic
// peers within 1 s.
func TestPubSubTwentyNodesTwoRealms(t *testing.T) {
	const perRealm = 10
	boot := newNode(t, node.DHTMode(node.DHTServer))
	keys := map[string][]byte{"red": []byte("red realm's key, 32 bytes long!!"), "blue": []byte("blue realm's key, 32 bytes long!")}
	members := map[string][]*pubsubMember{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, color := range []string{"red", "blue"} {
		for range perRealm {
			wg.Go(func() {
				n := newNode(t, node.Bootstrap(boot.AddrInfo()))
				r := join(t, n, "team", realm.PSK(keys[color]), realm.DiscoveryInterval(realm.MinDiscoveryInterval))
				mu.Lock()
				members[color] = append(members[color], &pubsubMember{node: n, realm: r})
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	for _, color := range []string{"red", "blue"} {
		for _, m := range members[color] {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			require.NoError(t, m.realm.WaitMembers(ctx, perRealm-1), "%s: members %d", color, len(m.realm.Members()))
			cancel()
			topic, err := m.realm.Join("chat")
			require.NoError(t, err)
			sub, err := topic.Subscribe()
			require.NoError(t, err)
			m.topic, m.sub = topic, sub
		}
	}
	// Every member sees the other members' subscriptions (and no one
	// else's: the peer filter ignores non-members).
	for _, color := range []string{"red", "blue"} {
		for _, m := range members[color] {
			require.Eventually(t, func() bool { return len(m.topic.Peers()) == perRealm-1 }, 30*time.Second, 20*time.Millisecond,
				"%s member %s: topic peers %v", color, m.node.ID(), m.topic.Peers())
		}
	}

	// The wire topic reveals nothing.
	red := members["red"][0]
	wire := realm.WireTopic(red.realm, "chat")
	for _, secret := range []string{"team", "chat", "red", string(red.realm.ID())} {
		for _, form := range []string{secret, hex.EncodeToString([]byte(secret)), base64.StdEncoding.EncodeToString([]byte(secret)),
			base64.RawURLEncoding.EncodeToString([]byte(secret)), strings.ToUpper(secret)} {
			require.NotContains(t, strings.ToLower(wire), strings.ToLower(form), "wire topic %q", wire)
		}
	}
	require.NotEqual(t, wire, realm.WireTopic(members["blue"][0].realm, "chat"), "two keys, two wire topics")

	// Intruders: a stock pubsub host that knows red's wire topic, and a
	// blue member's router publishing on it.
	stock := testkit.StockHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stockPS, err := pubsub.NewGossipSub(ctx, stock)
	require.NoError(t, err)
	for _, m := range members["red"] {
		require.NoError(t, stock.Connect(ctx, m.node.AddrInfo()))
	}
	stockTopic, err := stockPS.Join(wire)
	require.NoError(t, err)
	blue := members["blue"][0]
	require.NoError(t, blue.node.Connect(ctx, red.node.AddrInfo()))
	blueTopic, err := realm.RouterOf(blue.realm).Join(wire)
	require.NoError(t, err)

	// Every member publishes one message; the intruders publish too.
	for _, color := range []string{"red", "blue"} {
		for i, m := range members[color] {
			require.NoError(t, m.topic.Publish(ctx, []byte(fmt.Sprintf("%s %d", color, i))))
		}
	}
	require.NoError(t, stockTopic.Publish(ctx, []byte("stock intruder")))
	require.NoError(t, blueTopic.Publish(ctx, []byte("blue intruder")))
	// A last message per realm, after the intruders': once it arrives,
	// an intruder's message would have too.
	for _, color := range []string{"red", "blue"} {
		require.NoError(t, members[color][0].topic.Publish(ctx, []byte(color+" last")))
	}
	for _, color := range []string{"red", "blue"} {
		for _, m := range members[color] {
			got := map[string]int{}
			for len(got) < perRealm+1 {
				msg, err := m.sub.Next(ctx)
				require.NoError(t, err, "%s member %s got %v", color, m.node.ID(), got)
				got[string(msg.Data)]++
				require.True(t, strings.HasPrefix(string(msg.Data), color+" "), "%s member got %q from %s", color, msg.Data, msg.From)
			}
			for text, n := range got {
				require.Equal(t, 1, n, "%s member got %q %d times", color, text, n)
			}
		}
	}

	// A red member leaves: its subscription ends at once, and the others'
	// topic peers drop it within 1 s.
	leaver := members["red"][1]
	start := time.Now()
	require.NoError(t, leaver.realm.Leave(ctx))
	_, err = leaver.sub.Next(ctx)
	require.ErrorIs(t, err, realm.ErrTopicClosed)
	for _, m := range members["red"] {
		if m == leaver {
			continue
		}
		require.Eventually(t, func() bool {
			for _, p := range m.topic.Peers() {
				if p == leaver.node.ID() {
					return false
				}
			}
			return true
		}, time.Second, 5*time.Millisecond, "still a topic peer after %s", time.Since(start))
	}
	require.NoError(t, red.topic.Publish(ctx, []byte("red after the leave")))
	msg, err := members["red"][2].sub.Next(ctx)
	require.NoError(t, err)
	require.Equal(t, "red after the leave", string(msg.Data))
	require.ErrorIs(t, leaver.topic.Publish(ctx, []byte("x")), realm.ErrTopicClosed)
}

func TestPubSubBadInput(t *testing.T) {
	a := testnode.New(t)
	r := join(t, a, "solo", realm.PSK(testPSK), realm.PubSub(realm.PubSubConfig{MaxMessageSize: 16}))
	for _, name := range []string{"", strings.Repeat("x", realm.MaxTopicNameLength+1), "\xff"} {
		_, err := r.Join(name)
		require.ErrorIs(t, err, realm.ErrBadTopic)
	}
	topic, err := r.Join("t")
	require.NoError(t, err)
	_, err = r.Join("t")
	require.ErrorIs(t, err, realm.ErrTopicJoined)
	ctx := context.Background()
	require.ErrorIs(t, topic.Publish(ctx, make([]byte, 17)), realm.ErrMessageTooLarge)
	sub, err := topic.Subscribe()
	require.NoError(t, err)
	require.NoError(t, topic.Publish(ctx, make([]byte, 16)))
	msg, err := sub.Next(ctx)
	require.NoError(t, err)
	require.Equal(t, a.ID(), msg.From)
	require.Equal(t, "t", msg.Topic)
	require.NoError(t, topic.Close())
	require.NoError(t, topic.Close())
	_, err = sub.Next(ctx)
	require.ErrorIs(t, err, realm.ErrTopicClosed)
	_, err = topic.Subscribe()
	require.ErrorIs(t, err, realm.ErrTopicClosed)
	again, err := r.Join("t")
	require.NoError(t, err, "a closed topic can be joined again")
	require.NoError(t, again.Close())
	for _, tc := range []struct {
		cfg  realm.PubSubConfig
		want string
	}{
		{realm.PubSubConfig{MaxMessageSize: realm.MaxMessageLimit + 1}, "MaxMessageSize must be in [1, 1048576], got 1048577"},
		{realm.PubSubConfig{PublishRate: -1}, "PublishRate must be > 0, got -1"},
		{realm.PubSubConfig{PublishBurst: -1}, "PublishBurst must be >= 1, got -1"},
	} {
		_, err := a.JoinRealm(ctx, "bad", realm.PSK(testPSK), realm.PubSub(tc.cfg))
		require.ErrorContains(t, err, tc.want)
	}
	// A subscription holds one of the realm's inbound streams.
	c := testnode.New(t)
	rc := join(t, c, "scoped", realm.PSK(testPSK), realm.ScopeLimits(core.RealmScopeLimits{StreamsInbound: 1}))
	tc, err := rc.Join("t")
	require.NoError(t, err)
	first, err := tc.Subscribe()
	require.NoError(t, err)
	_, err = tc.Subscribe()
	require.ErrorIs(t, err, network.ErrResourceLimitExceeded)
	first.Cancel()
	second, err := tc.Subscribe()
	require.NoError(t, err, "Cancel gives the stream back")
	second.Cancel()

	// The publish rate: a burst of 2 at 10 per second; the third waits
	// and gives up with its context.
	b := testnode.New(t)
	rb := join(t, b, "rate", realm.PSK(testPSK), realm.PubSub(realm.PubSubConfig{PublishRate: 1, PublishBurst: 2}))
	tb, err := rb.Join("t")
	require.NoError(t, err)
	require.NoError(t, tb.Publish(ctx, []byte("1")))
	require.NoError(t, tb.Publish(ctx, []byte("2")))
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	err = tb.Publish(short, []byte("3"))
	require.Error(t, err)
	require.True(t, errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "would exceed context deadline"), "%v", err)
}
