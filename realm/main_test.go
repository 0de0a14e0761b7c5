package realm_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testkit.LeakOptions()...)
}

// The package's older names for the shared helpers, still called by its
// other test files.

// loopback is testkit.Loopback.
const loopback = testkit.Loopback

var (
	// newNode is testnode.New: a node on loopback (DHT client unless
	// opts say otherwise), closed at the end of the test.
	newNode = testnode.New
	// echo is testnode.Echo: it copies a stream back to its sender and
	// closes it.
	echo = testnode.Echo
)

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
	require.NoError(t, r.WaitMembers(ctx, count), "realm %q: members %v, want %d", r.Name(), r.Members(), count)
}

func TestTwoMembersAuthenticateAndEcho(t *testing.T) {
	a, b := testnode.New(t), testnode.New(t)
	ra := join(t, a, "alpha", realm.PSK(testPSK))
	rb := join(t, b, "alpha", realm.PSK(testPSK), realm.Peers(a.AddrInfo()))
	waitMembers(t, ra, 1)
	waitMembers(t, rb, 1)
	require.Equal(t, []string{b.ID().String()}, []string{ra.Members()[0].String()})
	require.NoError(t, ra.SetStreamHandler("/echo", testnode.Echo))

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
