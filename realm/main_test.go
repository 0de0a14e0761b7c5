package realm_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Process-wide singletons of libraries, started once and never
		// stopped: go-log's writer and opencensus's metric views.
		goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

const loopback = "/ip4/127.0.0.1/udp/0/quic-v1"

// newNode starts a node on loopback (DHT client unless opts say otherwise),
// closed at the end of the test.
func newNode(t testing.TB, opts ...node.Option) *node.Node {
	t.Helper()
	opts = append([]node.Option{node.ListenAddrs(loopback), node.DHTMode(node.DHTClient)}, opts...)
	n, err := node.New(opts...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, n.Close()) })
	return n
}

var testPSK = []byte("0123456789abcdef-test-psk")

func join(t testing.TB, n *node.Node, name string, opts ...realm.Option) *realm.Realm {
	t.Helper()
	r, err := n.JoinRealm(context.Background(), name, opts...)
	require.NoError(t, err)
	return r
}

func waitMembers(t testing.TB, r *realm.Realm, count int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, r.WaitMembers(ctx, count), "realm %q: members %v", r.Name(), r.Members())
}

func echo(s network.Stream) {
	_, _ = io.Copy(s, s)
	_ = s.Close()
}

func TestTwoMembersAuthenticateAndEcho(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ra := join(t, a, "alpha", realm.WithPSK(testPSK))
	rb := join(t, b, "alpha", realm.WithPSK(testPSK), realm.WithPeers(a.AddrInfo()))
	waitMembers(t, ra, 1)
	waitMembers(t, rb, 1)
	require.Equal(t, []string{b.ID().String()}, []string{ra.Members()[0].String()})
	require.NoError(t, ra.SetStreamHandler("/echo", echo))

	s, err := rb.NewStream(context.Background(), a.ID(), "/echo")
	require.NoError(t, err)
	_, err = s.Write([]byte("hello realm"))
	require.NoError(t, err)
	require.NoError(t, s.CloseWrite())
	got, err := io.ReadAll(s)
	require.NoError(t, err)
	require.Equal(t, "hello realm", string(got))
	require.NoError(t, s.Close())
	require.GreaterOrEqual(t, a.RealmStats().AuthSucceeded, uint64(1))
}
