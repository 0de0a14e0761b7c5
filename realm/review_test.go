package realm_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/realm"
)

// TestLimitsResetOnRejoin proves that a realm's pool and resource limits
// are the ones of its latest JoinRealm: options given at an earlier join do
// not linger after Leave.
func TestLimitsResetOnRejoin(t *testing.T) {
	a := newNode(t)
	r1 := join(t, a, "limits", realm.PSK(testPSK),
		realm.PoolLimits(core.PoolLimits{LowWater: 1, HighWater: 2}),
		realm.ScopeLimits(core.RealmScopeLimits{Members: 1}))
	id := r1.ID()
	require.Equal(t, core.PoolLimits{LowWater: 1, HighWater: 2}, a.ConnManager().RealmLimitsOf(id))
	require.NoError(t, r1.Leave(context.Background()))

	r2 := join(t, a, "limits", realm.PSK(testPSK))
	require.Equal(t, id, r2.ID())
	require.Equal(t, a.ConnManager().Config().RealmDefaults, a.ConnManager().RealmLimitsOf(id))
	// Two members: with the first join's Conns limit of 1, the second
	// could not be admitted.
	b, c := newNode(t), newNode(t)
	join(t, b, "limits", realm.PSK(testPSK), realm.Peers(a.AddrInfo()))
	join(t, c, "limits", realm.PSK(testPSK), realm.Peers(a.AddrInfo()))
	waitMembers(t, r2, 2)
	view, ok := a.ResourceManager().ViewRealm(id)
	require.True(t, ok)
	require.Equal(t, 2, view.Members)
	require.NotEqual(t, 1, view.Limits.Members, "the first join's resource limit lingers: %+v", view.Limits)
}

// TestRejoinWhileLeaving proves that a realm's name stays taken until its
// Leave returns (a rejoin meanwhile is ErrAlreadyJoined, so two realm
// instances never share a sub-pool), and that a second Leave waits for the
// first instead of returning at once.
func TestRejoinWhileLeaving(t *testing.T) {
	a, b, c := newNode(t), newNode(t), newNode(t)
	r1 := join(t, a, "leaving", realm.PSK(testPSK))
	join(t, b, "leaving", realm.PSK(testPSK), realm.Peers(a.AddrInfo()))
	join(t, c, "leaving", realm.PSK(testPSK), realm.Peers(a.AddrInfo()))
	waitMembers(t, r1, 2)
	// c holds every realm stream without answering: a's goodbye to c waits.
	release := make(chan struct{})
	c.Host().SetStreamHandler(realm.StreamProtocol, func(s network.Stream) {
		<-release
		_ = s.Reset()
	})
	defer close(release)

	first := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		first <- r1.Leave(ctx)
	}()
	require.Eventually(t, func() bool { return len(r1.Members()) < 2 || len(first) == 0 }, time.Second, time.Millisecond)
	time.Sleep(100 * time.Millisecond) // the first Leave is waiting for c

	_, err := a.JoinRealm(context.Background(), "leaving", realm.PSK(testPSK))
	require.ErrorIs(t, err, realm.ErrAlreadyJoined)
	require.ErrorContains(t, err, "still being left")

	start := time.Now()
	second := r1.Leave(context.Background())
	require.GreaterOrEqual(t, time.Since(start), 500*time.Millisecond, "the second Leave returned before the first finished")
	firstErr := <-first
	require.Error(t, firstErr, "c never acknowledged its goodbye")
	require.Equal(t, firstErr, second)

	// The name is free again once Leave has returned. (Not left here: c
	// still swallows realm streams, so a goodbye to it would wait 5 s.)
	join(t, a, "leaving", realm.PSK(testPSK))
}

// TestExchangeFloodIsBounded proves that a member sending member exchanges
// full of made-up peers (valid self-signed records at unreachable
// addresses) cannot make the node hold a goroutine per record: at most
// maxExchangeCandidates (16) candidates learnt from exchanges wait at once;
// the rest are dropped.
func TestExchangeFloodIsBounded(t *testing.T) {
	v := newNode(t)
	rv := join(t, v, "flood", realm.PSK(testPSK))
	k := atkRealmKeys(t, rv, testPSK)
	h := atkNewHost(t)
	atkConnect(t, h, v)
	atkJoinAsMember(t, h, v.ID(), k)
	time.Sleep(200 * time.Millisecond)
	base := runtime.NumGoroutine()
	addr := ma.StringCast("/ip4/192.0.2.1/udp/4001/quic-v1") // TEST-NET-1: never dialed successfully (never answered)
	for round := 0; round < 20; round++ {
		s := atkOpen(t, h, v.ID(), realm.StreamProtocol)
		chunks := [][]byte{atkFrame(atkHeader(atkKindMembers, k.handle(h.ID(), v.ID()), ""))}
		for range realm.MaxExchangeRecords - 1 {
			sk, _, err := crypto.GenerateEd25519Key(nil)
			require.NoError(t, err)
			id, err := peer.IDFromPrivateKey(sk)
			require.NoError(t, err)
			env, err := record.Seal(peer.PeerRecordFromAddrInfo(peer.AddrInfo{ID: id, Addrs: []ma.Multiaddr{addr}}), sk)
			require.NoError(t, err)
			b, err := env.Marshal()
			require.NoError(t, err)
			chunks = append(chunks, atkFrame(b))
		}
		chunks = append(chunks, atkFrame(nil))
		// Exchanges sooner than one a second from a member are reset
		// (ExchangesRefused): the write may fail.
		_, _ = s.Write(concat(chunks))
		for {
			f, err := atkReadFrame(s)
			if err != nil || len(f) == 0 {
				break
			}
		}
		_ = s.CloseWrite()
		_ = s.Close()
	}
	time.Sleep(500 * time.Millisecond)
	grown := runtime.NumGoroutine() - base
	t.Logf("goroutines: %d → %d after 20 exchanges of %d made-up records", base, base+grown, realm.MaxExchangeRecords-1)
	// 64 waiting candidates, 8 of them dialing (a few goroutines each).
	require.Less(t, grown, 200, "one goroutine per made-up record")
}

// TestFailedAdmissionIsUndone proves that membership does not stay one-sided
// when the initiator cannot admit a responder that admitted it (the
// initiator's realm resource limit is reached): the responder gets a
// goodbye and does not list the initiator.
func TestFailedAdmissionIsUndone(t *testing.T) {
	a, b, c := newNode(t), newNode(t), newNode(t)
	ra := join(t, a, "full", realm.PSK(testPSK), realm.ScopeLimits(core.RealmScopeLimits{Members: 1}))
	rc := join(t, c, "full", realm.PSK(testPSK), realm.Peers(a.AddrInfo()))
	waitMembers(t, ra, 1)
	waitMembers(t, rc, 1)
	// b joins, then connects to a: a identifies b and starts a handshake as
	// initiator; b admits a, a cannot admit b (one member already).
	rb := join(t, b, "full", realm.PSK(testPSK))
	require.NoError(t, b.Connect(context.Background(), a.AddrInfo()))
	require.Eventually(t, func() bool { return a.RealmStats().AuthRefused > 0 }, 5*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { _, ok := rb.Member(a.ID()); return !ok }, 3*time.Second, 5*time.Millisecond,
		"b lists a, which never admitted b")
	require.Equal(t, []peer.ID{c.ID()}, ra.Members())
}
