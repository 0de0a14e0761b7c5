package realm_test

// Adversarial integration tests: real realmnet nodes over QUIC on loopback,
// attacked by stock go-libp2p hosts (or misconfigured realmnet nodes) that
// speak the realm wire format by hand. Every attack must fail (the victim
// does not admit, dispatch or store) and be counted in the victim's
// RealmStats. The wire format and key schedule are re-implemented in
// attack_helpers_test.go from their documentation.
//
// Two tests document bugs of the realm package and fail until they are
// fixed: TestAttackSlowCloserCompletes (the handshake and goodbye ends race
// with STOP_SENDING) and TestAttackRehandshakeWhileStreaming (a data race in
// Realm.memberHandle, reported under -race).

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/record"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	ma "github.com/multiformats/go-multiaddr"
	mh "github.com/multiformats/go-multihash"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

// atkOtherPSK is a valid PSK that is not testPSK.
var atkOtherPSK = []byte("fedcba9876543210-other-psk")

// atkTwoMembers starts a victim and a legitimate member b in realm "alpha"
// (testPSK) and waits until they list each other.
func atkTwoMembers(t *testing.T) (v *node.Node, rv *realm.Realm, b *node.Node, rb *realm.Realm) {
	t.Helper()
	v, b = newNode(t), newNode(t)
	rv = join(t, v, "alpha", realm.PSK(testPSK))
	rb = join(t, b, "alpha", realm.PSK(testPSK), realm.Peers(v.AddrInfo()))
	waitMembers(t, rv, 1)
	waitMembers(t, rb, 1)
	return v, rv, b, rb
}

// atkCase is one malformed stream: the bytes written, and whether the write
// side is closed afterwards (a truncated frame needs the end of stream to be
// noticed before the deadline).
type atkCase struct {
	name  string
	bytes []byte
	close bool
}

// atkStall opens a stream of proto from h to p that sends nothing and
// returns a channel that receives how long the victim took to reset it.
// The read that waits runs on its own goroutine (it also flushes the
// multistream negotiation, so the victim's handler starts).
func atkStall(t *testing.T, h host.Host, p peer.ID, proto protocol.ID) <-chan atkStallResult {
	t.Helper()
	s := atkOpen(t, h, p, proto)
	out := make(chan atkStallResult, 1)
	start := time.Now()
	go func() {
		_, err := io.ReadAll(s)
		_ = s.Reset()
		out <- atkStallResult{elapsed: time.Since(start), err: err}
	}()
	return out
}

type atkStallResult struct {
	elapsed time.Duration
	err     error
}

// atkRequireStallReset checks a stalled stream was reset by the victim's
// HandshakeTimeout (5 s), by 7 s.
func atkRequireStallReset(t *testing.T, stall <-chan atkStallResult) {
	t.Helper()
	select {
	case res := <-stall:
		require.Error(t, res.err, "the victim closed a stalled stream cleanly")
		require.Less(t, res.elapsed, 7*time.Second, "stalled stream reset after %v: %v", res.elapsed, res.err)
		require.Greater(t, res.elapsed, realm.HandshakeTimeout-time.Second,
			"stalled stream reset after %v, before HandshakeTimeout: by what? %v", res.elapsed, res.err)
	case <-time.After(atkDeadline + time.Second):
		t.Fatal("stalled stream still open")
	}
}

// TestAttackRawRealmStreamFromNonMember proves that realm streams
// (realm.StreamProtocol) opened by hand by a non-member — garbage, frames
// over MaxFrameSize, malformed headers, well-formed headers of every kind
// with random handles, and a stream that sends nothing — are each reset with
// ErrorCodeRefused before dispatch (at once: a peer that is no member and
// has no handshake in flight is not waited for — the stalled one too, not
// at HandshakeTimeout), each counted once in StreamsRefused, and that the
// realm's handler is never called.
func TestAttackRawRealmStreamFromNonMember(t *testing.T) {
	v, rv, _, _ := atkTwoMembers(t)
	joins := atkWatchJoins(t, rv)
	var calls atomic.Int64
	require.NoError(t, rv.SetStreamHandler("/echo", atkCountingHandler(&calls)))
	x := atkNewHost(t)
	atkConnect(t, x, v)
	before := v.RealmStats()

	stall := atkStall(t, x, v.ID(), realm.StreamProtocol)
	cases := []atkCase{
		{"HTTP request", []byte("GET / HTTP/1.1\r\nHost: victim\r\n\r\n"), true},
		{"varint overflow", bytes.Repeat([]byte{0xff}, 11), true},
		{"declared 1 MiB", append(binary.AppendUvarint(nil, 1<<20), make([]byte, 100)...), false},
		{"declared MaxFrameSize+1", atkFrame(make([]byte, realm.MaxFrameSize+1)), false},
		{"empty frame", atkFrame(nil), true},
		{"header of 3 bytes", atkFrame([]byte{1, 2, 3}), true},
		{"header without handle end", atkFrame(atkHeader(atkKindApp, atkRandomHandle(), "")[:16]), true},
		{"kind 0", atkFrame(atkHeader(0, atkRandomHandle(), "/echo")), true},
		{"kind 9", atkFrame(atkHeader(9, atkRandomHandle(), "")), true},
		{"app header without protocol", atkFrame(atkHeader(atkKindApp, atkRandomHandle(), "")), true},
		{"protocol not UTF-8", atkFrame(atkHeader(atkKindApp, atkRandomHandle(), "\xff\xfe")), true},
		{"protocol too long", atkFrame(atkHeader(atkKindApp, atkRandomHandle(), strings.Repeat("p", realm.MaxProtocolLength+1))), true},
		{"members header with trailing bytes", atkFrame(atkHeader(atkKindMembers, atkRandomHandle(), "x")), true},
		{"app stream, random handle", append(atkFrame(atkHeader(atkKindApp, atkRandomHandle(), "/echo")), "payload"...), false},
		{"member exchange, random handle", atkFrame(atkHeader(atkKindMembers, atkRandomHandle(), "")), false},
		{"goodbye, random handle", atkFrame(atkHeader(atkKindGoodbye, atkRandomHandle(), "")), false},
		{"zero handle", atkFrame(atkHeader(atkKindApp, [16]byte{}, "/echo")), false},
	}
	refused := realm.ErrorCodeRefused
	for _, c := range cases {
		s := atkOpen(t, x, v.ID(), realm.StreamProtocol)
		// A long write may already meet the victim's reset.
		if _, err := s.Write(c.bytes); err != nil {
			atkRequireRemoteReset(t, err)
		}
		if c.close {
			_ = s.CloseWrite() // fails if the victim already reset it
		}
		err := atkExpectReset(t, s, &refused)
		t.Logf("%s: %v", c.name, err)
	}
	select {
	case res := <-stall:
		require.Error(t, res.err, "the victim closed a stalled stream cleanly")
		require.Less(t, res.elapsed, time.Second, "a non-member's stalled realm stream was waited for: reset after %v: %v", res.elapsed, res.err)
	case <-time.After(atkDeadline + time.Second):
		t.Fatal("stalled stream still open")
	}

	after := v.RealmStats()
	t.Logf("victim stats: %+v", after)
	require.Equal(t, before.StreamsRefused+uint64(len(cases))+1, after.StreamsRefused, "every attack stream counted once")
	require.Equal(t, before.StreamsNoHandler, after.StreamsNoHandler)
	require.Zero(t, calls.Load(), "the realm handler was called")
	atkRequireNotMember(t, rv, joins, x.ID())
}

// TestAttackWrongPSK proves that nodes that join the victim's realm name
// with another PSK, or the victim's PSK under another name, or the name as
// an open realm, never become members on either side, and that each
// handshake they attempt is counted as AuthUnknownRealm (the hello's tag
// matches none of the responder's realms) — while a node with the right
// PSK, in the same run, does become a member.
func TestAttackWrongPSK(t *testing.T) {
	v := newNode(t)
	rv := join(t, v, "alpha", realm.PSK(testPSK))
	joins := atkWatchJoins(t, rv)

	wrongPSK, wrongName, open := newNode(t), newNode(t), newNode(t)
	attackers := []*node.Node{wrongPSK, wrongName, open}
	ra := []*realm.Realm{
		join(t, wrongPSK, "alpha", realm.PSK(atkOtherPSK), realm.Peers(v.AddrInfo())),
		join(t, wrongName, "alpha2", realm.PSK(testPSK), realm.Peers(v.AddrInfo())),
		join(t, open, "alpha", realm.Open(), realm.Peers(v.AddrInfo())),
	}
	legit := newNode(t)
	rl := join(t, legit, "alpha", realm.PSK(testPSK), realm.Peers(v.AddrInfo()))
	waitMembers(t, rv, 1)
	waitMembers(t, rl, 1)

	// Each attacker's hello reaches the victim; the victim's hello (it
	// initiates to every identified peer that speaks the auth protocol)
	// reaches each attacker.
	atkStatsEventually(t, v, "the victim counts three unknown-realm hellos", func(s realm.Stats) bool { return s.AuthUnknownRealm >= 3 })
	for _, a := range attackers {
		atkStatsEventually(t, a, "the attacker counts the victim's hello as unknown realm", func(s realm.Stats) bool { return s.AuthUnknownRealm >= 1 })
	}
	ids := []peer.ID{wrongPSK.ID(), wrongName.ID(), open.ID()}
	require.Never(t, func() bool {
		if slices.ContainsFunc(rv.Members(), func(p peer.ID) bool { return slices.Contains(ids, p) }) {
			return true
		}
		for _, r := range ra {
			if len(r.Members()) > 0 {
				return true
			}
		}
		return false
	}, 2*time.Second, 50*time.Millisecond, "a wrong-key node became a member")

	require.Equal(t, []peer.ID{legit.ID()}, rv.Members())
	atkRequireNotMember(t, rv, joins, ids...)
	for i, a := range attackers {
		require.Empty(t, ra[i].Members())
		require.Zero(t, a.RealmStats().AuthSucceeded)
		t.Logf("attacker %d stats: %+v", i, a.RealmStats())
	}
	st := v.RealmStats()
	t.Logf("victim stats: %+v", st)
	require.NotZero(t, st.AuthSucceeded, "the legitimate node's handshake")
	require.Zero(t, st.AuthBadMAC, "a wrong key is caught by the tag, before any MAC")
}

// TestAttackReplayedTranscript proves that a hello, once used, cannot be
// used again: replayed from the host that sent it, it is reset and counted
// as AuthReplayed; replayed from another (non-member) host, its tag (bound
// to the original pair) matches no realm (AuthUnknownRealm). It also proves that
// a finishing MAC cannot be carried into another session: the old MAC_i in a
// fresh session (new nonce_r) with the same peer or another, a MAC_i bound
// to another initiator, and the victim's own MAC_r echoed as MAC_i are all
// reset and counted as AuthBadMAC, and the non-member is never admitted.
func TestAttackReplayedTranscript(t *testing.T) {
	v := newNode(t)
	rv := join(t, v, "alpha", realm.PSK(testPSK))
	k := atkRealmKeys(t, rv, testPSK)
	joins := atkWatchJoins(t, rv)
	x, y := atkNewHost(t), atkNewHost(t)
	atkConnect(t, x, v)
	atkConnect(t, y, v)

	// A legitimate session from x, recorded.
	hello, _, macI := atkJoinAsMember(t, x, v.ID(), k)
	require.Contains(t, rv.Members(), x.ID())

	before := v.RealmStats()
	replay := func(r atkReply) []byte { return macI[:] }
	for _, h := range []host.Host{y, x} {
		_, replyErr, err := atkInitiate(t, h, v.ID(), hello, replay)
		require.Error(t, replyErr, "the victim answered a replayed hello from %s", h.ID())
		require.Error(t, err)
	}
	mid := v.RealmStats()
	// From x the hello is a replay (its nonce was seen); from y its tag,
	// which binds x as the initiator, matches no realm.
	require.Equal(t, before.AuthReplayed+1, mid.AuthReplayed, "stats: %+v", mid)
	require.Equal(t, before.AuthUnknownRealm+1, mid.AuthUnknownRealm, "stats: %+v", mid)

	// Fresh sessions (a fresh hello, as a member's hello relayed by the
	// attacker would be) finished with MACs from elsewhere.
	finishes := []struct {
		name   string
		from   host.Host
		finish func(atkReply) []byte
	}{
		{"old MAC_i, same peer", x, replay},
		{"old MAC_i, other peer", y, replay},
		{"MAC_i bound to x, sent by y", y, func(r atkReply) []byte {
			m := k.transcript("init", x.ID(), v.ID(), r.nonceI, r.nonceR)
			return m[:]
		}},
		{"MAC_r echoed as MAC_i", y, func(r atkReply) []byte { return r.macR[:] }},
	}
	for _, f := range finishes {
		_, fresh := k.hello(f.from.ID(), v.ID())
		_, replyErr, err := atkInitiate(t, f.from, v.ID(), fresh, f.finish)
		require.NoError(t, replyErr, "%s: a fresh hello gets a reply", f.name)
		require.Error(t, err, "%s: admitted", f.name)
		t.Logf("%s: %v", f.name, err)
	}
	after := v.RealmStats()
	t.Logf("victim stats: %+v", after)
	require.Equal(t, mid.AuthBadMAC+uint64(len(finishes)), after.AuthBadMAC)
	require.Equal(t, before.AuthSucceeded, after.AuthSucceeded)
	atkRequireNotMember(t, rv, joins, y.ID())
	require.Equal(t, []peer.ID{x.ID()}, rv.Members())
}

// atkReflectMode is what the reflecting attacker does with the victim's
// hello.
type atkReflectMode int

const (
	// atkReflectHelloMode sends the victim's hello back to it on a new auth
	// stream; if the victim replies, the reply's MAC is echoed as MAC_i.
	atkReflectHelloMode atkReflectMode = iota
	// atkReflectAsReplyMode answers the victim's hello with the hello itself
	// (nonce_r = nonce_i, MAC_r = tag).
	atkReflectAsReplyMode
	// atkEchoTagMode answers with a fresh nonce_r and the victim's tag as
	// MAC_r.
	atkEchoTagMode
)

// atkReflectOutcome is what the reflecting attacker observed.
type atkReflectOutcome struct {
	// replied: the victim answered the reflected hello.
	replied bool
	// admitted: the victim closed the reflected stream cleanly after our
	// finish.
	admitted bool
	// finished: the victim sent MAC_i after our reflected reply.
	finished bool
	err      error
}

// TestAttackReflection proves that a non-member that receives the victim's
// hello (the victim initiates to it) cannot turn it against the victim:
// the hello reflected on a new auth stream is reset and counted as
// AuthUnknownRealm (its tag binds the pair the other way round), the hello
// echoed as the reply and the victim's tag echoed as MAC_r are counted as
// AuthBadMAC; the victim never sends MAC_i nor admits the attacker.
func TestAttackReflection(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mode  atkReflectMode
		stat  func(realm.Stats) uint64
		label string
	}{
		// The tag binds initiator and responder: reflected, it names the
		// pair the other way round and matches no realm.
		{"hello reflected", atkReflectHelloMode, func(s realm.Stats) uint64 { return s.AuthUnknownRealm }, "AuthUnknownRealm"},
		// MAC_r is checked before the nonce is remembered (a responder
		// without the key cannot fill the nonce cache).
		{"hello as reply", atkReflectAsReplyMode, func(s realm.Stats) uint64 { return s.AuthBadMAC }, "AuthBadMAC"},
		{"tag as MAC_r", atkEchoTagMode, func(s realm.Stats) uint64 { return s.AuthBadMAC }, "AuthBadMAC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newNode(t)
			z := atkNewHost(t)
			outcomes := make(chan atkReflectOutcome, 16)
			z.SetStreamHandler(realm.AuthProtocol, func(s1 network.Stream) {
				o := atkReflect(z, s1, tc.mode)
				select {
				case outcomes <- o:
				default:
				}
			})
			rv := join(t, v, "alpha", realm.PSK(testPSK), realm.Peers(peer.AddrInfo{ID: z.ID(), Addrs: z.Addrs()}))
			joins := atkWatchJoins(t, rv)

			var o atkReflectOutcome
			select {
			case o = <-outcomes:
			case <-time.After(10 * time.Second):
				t.Fatal("the victim never sent its hello to the attacker")
			}
			t.Logf("attacker saw: %+v", o)
			require.False(t, o.replied, "the victim answered its own reflected hello")
			require.False(t, o.admitted)
			require.False(t, o.finished, "the victim accepted a reflected reply and sent MAC_i")
			require.Error(t, o.err)
			atkStatsEventually(t, v, tc.label+" counted", func(s realm.Stats) bool { return tc.stat(s) >= 1 })
			st := v.RealmStats()
			t.Logf("victim stats: %+v", st)
			require.Zero(t, st.AuthSucceeded)
			atkRequireNotMember(t, rv, joins, z.ID())
		})
	}
}

// atkReflect is the reflecting attacker's auth handler (it runs on the
// attacker's host, not on the test goroutine: no require here).
func atkReflect(z host.Host, s1 network.Stream, mode atkReflectMode) (o atkReflectOutcome) {
	defer func() { _ = s1.Reset() }()
	_ = s1.SetDeadline(time.Now().Add(atkDeadline))
	hello, err := atkReadFrame(s1)
	if err != nil || len(hello) != 64 {
		o.err = err
		return o
	}
	switch mode {
	case atkReflectHelloMode:
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s2, err := z.NewStream(ctx, s1.Conn().RemotePeer(), realm.AuthProtocol)
		if err != nil {
			o.err = err
			return o
		}
		defer func() { _ = s2.Reset() }()
		_ = s2.SetDeadline(time.Now().Add(atkDeadline))
		if _, err := s2.Write(atkFrame(hello)); err != nil {
			o.err = err
			return o
		}
		reply, err := atkReadFrame(s2)
		if err != nil {
			o.err = err
			return o
		}
		o.replied = true
		if len(reply) == 64 {
			_, _ = s2.Write(atkFrame(reply[32:]))
			_ = s2.CloseWrite()
			var one [1]byte
			_, err = s2.Read(one[:])
			o.admitted = err == io.EOF
		}
		o.err = err
		return o
	case atkReflectAsReplyMode:
		if _, err := s1.Write(atkFrame(hello)); err != nil {
			o.err = err
			return o
		}
	case atkEchoTagMode:
		nonceR := atkRandom32()
		if _, err := s1.Write(atkFrame(append(nonceR[:], hello[32:]...))); err != nil {
			o.err = err
			return o
		}
	}
	f, err := atkReadFrame(s1)
	o.finished = err == nil && len(f) > 0
	o.err = err
	return o
}

// TestAttackMalformedAuthFrames proves that truncated, oversized (declared
// lengths over MaxFrameSize: the victim refuses them from the length alone)
// and garbage frames on the auth protocol, and a handshake abandoned or
// finished with a malformed MAC_i, are each reset and counted once as
// AuthBadFrame, never parsed as a hello of some realm, and that an attacker
// that opens an auth stream and sends nothing is reset by HandshakeTimeout
// (5 s), by 7 s.
func TestAttackMalformedAuthFrames(t *testing.T) {
	v := newNode(t)
	rv := join(t, v, "alpha", realm.PSK(testPSK))
	k := atkRealmKeys(t, rv, testPSK)
	joins := atkWatchJoins(t, rv)
	x := atkNewHost(t)
	atkConnect(t, x, v)
	before := v.RealmStats()

	stall := atkStall(t, x, v.ID(), realm.AuthProtocol)
	cases := []atkCase{
		{"truncated hello", append(binary.AppendUvarint(nil, 64), make([]byte, 10)...), true},
		{"truncated length", []byte{0x80}, true},
		{"declared 1 MiB", append(binary.AppendUvarint(nil, 1<<20), make([]byte, 32)...), false},
		{"declared MaxFrameSize+1", atkFrame(make([]byte, realm.MaxFrameSize+1)), false},
		{"MaxFrameSize of garbage", atkFrame(bytes.Repeat([]byte{0xa5}, realm.MaxFrameSize)), false},
		{"varint overflow", bytes.Repeat([]byte{0xff}, 11), false},
		{"empty frame", atkFrame(nil), false},
		{"63-byte hello", atkFrame(make([]byte, 63)), false},
		{"65-byte hello", atkFrame(make([]byte, 65)), false},
		{"text", []byte("hello realm\n"), true},
	}
	for _, c := range cases {
		s := atkOpen(t, x, v.ID(), realm.AuthProtocol)
		// A long write may already meet the victim's reset.
		if _, err := s.Write(c.bytes); err != nil {
			atkRequireRemoteReset(t, err)
		}
		if c.close {
			_ = s.CloseWrite() // fails if the victim already reset it
		}
		err := atkExpectReset(t, s, nil)
		t.Logf("%s: %v", c.name, err)
	}
	// With the key: a valid hello, then a malformed or missing finish.
	for _, finish := range [][]byte{atkFrame(make([]byte, 31)), atkFrame(make([]byte, 33)), nil} {
		s := atkOpen(t, x, v.ID(), realm.AuthProtocol)
		_, hello := k.hello(x.ID(), v.ID())
		atkWrite(t, s, atkFrame(hello))
		reply, err := atkReadFrame(s)
		require.NoError(t, err)
		require.Len(t, reply, 64)
		if finish != nil {
			atkWrite(t, s, finish)
		}
		_ = s.CloseWrite()
		atkExpectReset(t, s, nil)
	}
	atkRequireStallReset(t, stall)

	after := v.RealmStats()
	t.Logf("victim stats: %+v", after)
	require.Equal(t, before.AuthBadFrame+uint64(len(cases))+3+1, after.AuthBadFrame)
	require.Equal(t, before.AuthUnknownRealm, after.AuthUnknownRealm, "garbage was parsed as a hello")
	require.Equal(t, before.AuthSucceeded, after.AuthSucceeded)
	atkRequireNotMember(t, rv, joins, x.ID())
	require.Empty(t, rv.Members())
}

// TestAttackForgedMemberRecords proves that a legitimate member M (a stock
// host that knows the PSK and runs the handshake by hand) cannot make the
// victim store addresses for another member B through member exchange: a
// peer record claiming B's ID signed by M's key, the same with B's public
// key in the envelope (so the signature does not verify), and garbage are
// each rejected and counted in RecordsRejected, and the victim's peerstore
// (and certified address book) never holds the bogus address for B; M's own
// record in the same exchange is accepted, so the channel did carry the
// records to the check. The victim's answer holds only genuine records.
func TestAttackForgedMemberRecords(t *testing.T) {
	v, rv, b, _ := atkTwoMembers(t)
	k := atkRealmKeys(t, rv, testPSK)
	m := atkNewHost(t)
	atkConnect(t, m, v)
	atkJoinAsMember(t, m, v.ID(), k)
	require.ElementsMatch(t, []peer.ID{b.ID(), m.ID()}, rv.Members())
	cab, ok := peerstore.GetCertifiedAddrBook(v.Host().Peerstore())
	require.True(t, ok)
	require.Eventually(t, func() bool { return cab.GetPeerRecord(b.ID()) != nil }, 5*time.Second, 10*time.Millisecond,
		"the victim never stored B's record (member exchange)")

	bogus := ma.StringCast("/ip4/203.0.113.66/udp/4242/quic-v1")
	mKey := m.Peerstore().PrivKey(m.ID())
	require.NotNil(t, mKey)
	forged := &peer.PeerRecord{PeerID: b.ID(), Addrs: []ma.Multiaddr{bogus}, Seq: uint64(time.Now().UnixNano()) * 2}
	env, err := record.Seal(forged, mKey)
	require.NoError(t, err)
	forgedBytes, err := env.Marshal()
	require.NoError(t, err)
	bPub, err := b.ID().ExtractPublicKey()
	require.NoError(t, err)
	env.PublicKey = bPub // claims B's key; M's signature does not verify under it
	badSigBytes, err := env.Marshal()
	require.NoError(t, err)
	own, err := record.Seal(peer.PeerRecordFromAddrInfo(peer.AddrInfo{ID: m.ID(), Addrs: m.Addrs()}), mKey)
	require.NoError(t, err)
	ownBytes, err := own.Marshal()
	require.NoError(t, err)
	bad := [][]byte{forgedBytes, badSigBytes, []byte("not an envelope")}

	before := v.RealmStats()
	s := atkOpen(t, m, v.ID(), realm.StreamProtocol)
	h := k.handle(m.ID(), v.ID())
	msg := atkFrame(atkHeader(atkKindMembers, h, ""))
	for _, r := range bad {
		msg = append(msg, atkFrame(r)...)
	}
	msg = append(msg, atkFrame(ownBytes)...)
	msg = append(msg, atkFrame(nil)...)
	atkWrite(t, s, msg)
	_ = s.CloseWrite() // the victim may have closed its read side already
	// The victim's records: each genuine (signed by the peer it describes).
	var got []peer.ID
	for {
		f, err := atkReadFrame(s)
		require.NoError(t, err, "the victim's member exchange answer")
		if len(f) == 0 {
			break
		}
		env, rec, err := record.ConsumeEnvelope(f, peer.PeerRecordEnvelopeDomain)
		require.NoError(t, err)
		pr := rec.(*peer.PeerRecord)
		signer, err := peer.IDFromPublicKey(env.PublicKey)
		require.NoError(t, err)
		require.Equal(t, pr.PeerID, signer)
		require.NotContains(t, pr.Addrs, bogus)
		got = append(got, pr.PeerID)
	}
	_, err = io.ReadAll(s)
	require.NoError(t, err, "the victim ends a member exchange cleanly")
	require.ElementsMatch(t, []peer.ID{v.ID(), b.ID()}, got)

	after := v.RealmStats()
	t.Logf("victim stats: %+v", after)
	require.Equal(t, before.RecordsRejected+uint64(len(bad)), after.RecordsRejected)
	ps := v.Host().Peerstore()
	require.NotContains(t, ps.Addrs(b.ID()), bogus, "the forged address of B was stored")
	require.NotEmpty(t, ps.Addrs(b.ID()))
	benv := cab.GetPeerRecord(b.ID())
	require.NotNil(t, benv)
	rec, err := benv.Record()
	require.NoError(t, err)
	require.NotContains(t, rec.(*peer.PeerRecord).Addrs, bogus, "the certified record of B holds the forged address")
	require.True(t, benv.PublicKey.Equals(bPub))
	require.NotNil(t, cab.GetPeerRecord(m.ID()), "M's own record was not stored: the exchange never reached the check")
	// B is still reachable as before: a member with a working stream.
	info, ok := rv.Member(b.ID())
	require.True(t, ok)
	require.True(t, info.Connected)
}

// TestAttackHandleGuessing proves that a non-member cannot reach a realm by
// guessing handles: realm streams with random handles (every kind), with
// the real handle of the victim–B member pair (computed with the key, but
// sent from the wrong peer: application, member exchange and goodbye), and
// with the handle the attacker would have as a member, are all refused
// with ErrorCodeRefused and each counted in StreamsRefused; the handler is
// never called and B, whose handle was used for a goodbye, stays a member.
func TestAttackHandleGuessing(t *testing.T) {
	v, rv, b, rb := atkTwoMembers(t)
	k := atkRealmKeys(t, rv, testPSK)
	joins := atkWatchJoins(t, rv)
	var calls atomic.Int64
	require.NoError(t, rv.SetStreamHandler("/echo", atkCountingHandler(&calls)))
	n := atkNewHost(t)
	atkConnect(t, n, v)
	before := v.RealmStats()

	var headers [][]byte
	for i := range 48 {
		kind := byte(atkKindApp + i%3)
		proto := ""
		if kind == atkKindApp {
			proto = "/echo"
		}
		headers = append(headers, atkHeader(kind, atkRandomHandle(), proto))
	}
	pair := k.handle(v.ID(), b.ID())
	headers = append(headers,
		atkHeader(atkKindApp, pair, "/echo"),
		atkHeader(atkKindMembers, pair, ""),
		atkHeader(atkKindGoodbye, pair, ""),
		atkHeader(atkKindApp, k.handle(v.ID(), n.ID()), "/echo"),
		atkHeader(atkKindApp, k.handle(b.ID(), n.ID()), "/echo"),
	)
	refused := realm.ErrorCodeRefused
	for _, hdr := range headers {
		s := atkOpen(t, n, v.ID(), realm.StreamProtocol)
		atkWrite(t, s, atkFrame(hdr), []byte("payload"))
		atkExpectReset(t, s, &refused)
	}

	after := v.RealmStats()
	t.Logf("victim stats: %+v", after)
	require.Equal(t, before.StreamsRefused+uint64(len(headers)), after.StreamsRefused, "every guess counted")
	require.Equal(t, before.GoodbyesRejected, after.GoodbyesRejected, "a goodbye from a non-member must not even be parsed")
	require.Zero(t, calls.Load(), "the realm handler was called")
	atkRequireNotMember(t, rv, joins, n.ID())
	require.Equal(t, []peer.ID{b.ID()}, rv.Members())
	info, ok := rv.Member(b.ID())
	require.True(t, ok)
	require.True(t, info.Connected, "B lost its membership to a guessed goodbye")
	require.Equal(t, []peer.ID{v.ID()}, rb.Members())
}

// TestAttackIdentifyRevealsNoRealm proves that identify of a realm member,
// as a stock libp2p host sees it, reveals nothing of the realm: the raw
// identify message, the protocols (only the generic realm protocols, the
// same list as a node in no realm), the agent and protocol versions, the
// listen addresses and the signed peer record contain neither the realm
// name, nor its ID (hex, either case, or raw), nor its keys, PSK or
// rendezvous CID.
func TestAttackIdentifyRevealsNoRealm(t *testing.T) {
	const name = "attack-secret-realm-7f3a9c"
	a, b, c := newNode(t), newNode(t), newNode(t)
	ra := join(t, a, name, realm.PSK(testPSK))
	join(t, b, name, realm.PSK(testPSK), realm.Peers(a.AddrInfo()))
	waitMembers(t, ra, 1)
	k := atkRealmKeys(t, ra, testPSK)
	sum, err := mh.Sum(k.rdv[:], mh.SHA2_256, -1)
	require.NoError(t, err)
	rdvCID := cid.NewCidV1(cid.Raw, sum)

	needles := map[string][]byte{
		"realm name":           []byte(name),
		"realm ID (hex)":       []byte(ra.ID()),
		"realm ID (HEX)":       []byte(strings.ToUpper(string(ra.ID()))),
		"realm ID (raw)":       k.id[:],
		"auth key":             k.auth[:],
		"rendezvous key":       k.rdv[:],
		"PSK":                  testPSK,
		"rendezvous CID":       rdvCID.Bytes(),
		"rendezvous CID (str)": []byte(rdvCID.String()),
	}
	check := func(what string, hay []byte) {
		t.Helper()
		for n, needle := range needles {
			require.False(t, bytes.Contains(hay, needle), "%s contains the %s", what, n)
		}
	}

	stock := atkNewHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, stock.Connect(ctx, a.AddrInfo())) // waits for identify
	require.NoError(t, stock.Connect(ctx, c.AddrInfo()))

	// The raw identify message, parsed by hand.
	s := atkOpen(t, stock, a.ID(), identify.ID)
	raw, err := io.ReadAll(s)
	require.NoError(t, err)
	require.NotEmpty(t, raw)
	check("the identify message", raw)
	fields, err := atkProtoFields(raw)
	require.NoError(t, err)
	for _, f := range []struct {
		num  uint64
		what string
	}{{1, "public key"}, {2, "listen address"}, {3, "protocol"}, {4, "observed address"}, {5, "protocol version"}, {6, "agent version"}, {8, "signed peer record"}} {
		for _, v := range fields[f.num] {
			check("identify "+f.what, v)
		}
	}
	require.NotEmpty(t, fields[3], "identify lists protocols")
	var rawProtos []protocol.ID
	for _, p := range fields[3] {
		rawProtos = append(rawProtos, protocol.ID(p))
	}

	ps := stock.Peerstore()
	protos, err := ps.GetProtocols(a.ID())
	require.NoError(t, err)
	t.Logf("member's protocols: %v", protos)
	require.ElementsMatch(t, rawProtos, protos)
	require.Contains(t, protos, realm.AuthProtocol)
	require.Contains(t, protos, realm.StreamProtocol)
	for _, p := range protos {
		if strings.Contains(string(p), "realm") {
			require.Contains(t, []protocol.ID{realm.AuthProtocol, realm.StreamProtocol}, p, "a realm-specific protocol")
		}
	}
	others, err := ps.GetProtocols(c.ID())
	require.NoError(t, err)
	require.ElementsMatch(t, others, protos, "a member lists other protocols than a node in no realm")

	for _, key := range []string{"AgentVersion", "ProtocolVersion"} {
		val, err := ps.Get(a.ID(), key)
		require.NoError(t, err)
		str, _ := val.(string)
		t.Logf("%s: %q", key, str)
		check(key, []byte(str))
	}
	addrs := ps.Addrs(a.ID())
	require.NotEmpty(t, addrs)
	for _, addr := range addrs {
		check("address "+addr.String(), []byte(addr.String()))
		check("address "+addr.String(), addr.Bytes())
	}
	// The signed peer record (go-libp2p's identify no longer stores it in
	// the peerstore: take it from the message). go-libp2p's basic host
	// sends one unless told not to, and realmnet does not tell it: its
	// absence would leave the record's addresses unchecked.
	recs := fields[8]
	require.NotEmpty(t, recs, "the member's identify carries no signed peer record")
	env, rec, err := record.ConsumeEnvelope(recs[0], peer.PeerRecordEnvelopeDomain)
	require.NoError(t, err)
	require.True(t, env.PublicKey.Equals(ps.PubKey(a.ID())))
	require.NotEmpty(t, rec.(*peer.PeerRecord).Addrs)
	for _, addr := range rec.(*peer.PeerRecord).Addrs {
		check("record address", []byte(addr.String()))
	}
	pub := ps.PubKey(a.ID())
	require.NotNil(t, pub)
	pubBytes, err := crypto.MarshalPublicKey(pub)
	require.NoError(t, err)
	check("the public key", pubBytes)
}

// TestAttackMemberListExcludesAttackers runs the attacks above together —
// from one stock host (unknown-realm hello, bad frames, random and stolen
// handles, garbage, reflection of the victim's hello) and three
// misconfigured nodes (wrong PSK, wrong name, open realm) — against one
// victim that has one legitimate member, and proves that the victim's member list is
// exactly that member throughout (no attacker ever joined, per the join
// events) and after, and that every attack was counted.
func TestAttackMemberListExcludesAttackers(t *testing.T) {
	v, rv, b, rb := atkTwoMembers(t)
	k := atkRealmKeys(t, rv, testPSK)
	joins := atkWatchJoins(t, rv)
	var calls atomic.Int64
	require.NoError(t, rv.SetStreamHandler("/echo", atkCountingHandler(&calls)))

	// The stock attacker reflects whatever hello the victim sends it.
	x := atkNewHost(t)
	x.SetStreamHandler(realm.AuthProtocol, func(s network.Stream) { atkReflect(x, s, atkReflectHelloMode) })
	before := v.RealmStats()
	atkConnect(t, x, v)
	// Wrong keys, wrong name, open realm.
	wrong := []*node.Node{newNode(t), newNode(t), newNode(t)}
	join(t, wrong[0], "alpha", realm.PSK(atkOtherPSK), realm.Peers(v.AddrInfo()))
	join(t, wrong[1], "beta", realm.PSK(testPSK), realm.Peers(v.AddrInfo()))
	join(t, wrong[2], "alpha", realm.Open(), realm.Peers(v.AddrInfo()))

	// A hello with a made-up tag, garbage, an oversized frame.
	nonce := atkRandom32()
	s := atkOpen(t, x, v.ID(), realm.AuthProtocol)
	atkWrite(t, s, atkFrame(append(nonce[:], make([]byte, 32)...)))
	atkExpectReset(t, s, nil)
	for _, junk := range [][]byte{atkFrame([]byte("junk")), binary.AppendUvarint(nil, 1<<30)} {
		s := atkOpen(t, x, v.ID(), realm.AuthProtocol)
		atkWrite(t, s, junk)
		atkExpectReset(t, s, nil)
	}
	// Realm streams: random handle, the member pair's handle, garbage.
	refused := realm.ErrorCodeRefused
	for _, hdr := range [][]byte{
		atkFrame(atkHeader(atkKindApp, atkRandomHandle(), "/echo")),
		atkFrame(atkHeader(atkKindGoodbye, k.handle(v.ID(), b.ID()), "")),
		atkFrame(atkHeader(atkKindMembers, k.handle(v.ID(), b.ID()), "")),
		[]byte("garbage"),
	} {
		s := atkOpen(t, x, v.ID(), realm.StreamProtocol)
		atkWrite(t, s, hdr)
		_ = s.CloseWrite()
		atkExpectReset(t, s, &refused)
	}
	// The victim initiates to x (it speaks the auth protocol): reflected.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := rv.NewStream(ctx, x.ID(), "/echo")
	require.ErrorIs(t, err, realm.ErrNotMember)

	atkStatsEventually(t, v, "every attack counted", func(s realm.Stats) bool {
		return s.AuthUnknownRealm >= before.AuthUnknownRealm+4 &&
			s.AuthBadFrame >= before.AuthBadFrame+2 &&
			s.AuthUnknownRealm+s.AuthReplayed >= before.AuthUnknownRealm+before.AuthReplayed+5 &&
			s.StreamsRefused >= before.StreamsRefused+4
	})
	time.Sleep(500 * time.Millisecond)
	st := v.RealmStats()
	t.Logf("victim stats: %+v", st)
	attackers := []peer.ID{x.ID(), wrong[0].ID(), wrong[1].ID(), wrong[2].ID()}
	atkRequireNotMember(t, rv, joins, attackers...)
	require.Equal(t, []peer.ID{b.ID()}, rv.Members())
	require.Equal(t, []peer.ID{v.ID()}, rb.Members())
	// The only join seen may be b's own: the realm's events reach a
	// subscriber after Members() shows the change, so b's join may still
	// have been on its way when the watch started.
	for _, p := range joins.peers() {
		require.Equal(t, b.ID(), p, "no join but b's during the attacks")
	}
	require.Zero(t, calls.Load())
}

// TestAttackHandshakeFlood proves that stalled handshakes cannot lock
// members out. Peers without the key take no responder slot at all: 72
// stalled auth streams from nine of them refuse nothing (no AuthRefused)
// and are reset at the handshake deadline (AuthBadFrame). Key holders that
// stall after a valid hello do hold slots, but one peer holds at most 8
// (its 9th valid hello is reset at once) and, with all 64 taken by eight
// such peers, a ninth peer's valid hello is reset at once too — each
// refusal counted as AuthRefused — while a legitimate node still becomes a
// member (the victim initiates to the peers it identifies, and its
// outbound handshakes need no responder slot).
func TestAttackHandshakeFlood(t *testing.T) {
	const (
		perPeer = 8  // realm's maxInboundHandshakesPerPeer
		slots   = 64 // realm's maxInboundHandshakes
	)
	v := newNode(t)
	rv := join(t, v, "alpha", realm.PSK(testPSK))
	k := atkRealmKeys(t, rv, testPSK)
	joins := atkWatchJoins(t, rv)
	attackers := make([]host.Host, slots/perPeer+1)
	for i := range attackers {
		attackers[i] = atkNewHost(t)
		atkConnect(t, attackers[i], v)
	}

	// Without the key: stalled hellos take no slot.
	before := v.RealmStats()
	stalled := 0
	for _, h := range attackers {
		for range perPeer {
			s := atkOpen(t, h, v.ID(), realm.AuthProtocol)
			atkWrite(t, s, []byte{0x80}) // a length that never ends
			stalled++
		}
	}
	time.Sleep(200 * time.Millisecond)
	require.Equal(t, before.AuthRefused, v.RealmStats().AuthRefused, "keyless stalled hellos took responder slots")
	atkStatsEventually(t, v, "stalled hellos reset at the deadline", func(s realm.Stats) bool {
		return s.AuthBadFrame >= before.AuthBadFrame+uint64(stalled)
	})

	// With the key: a valid hello, then silence, holds a slot.
	holdSlot := func(h host.Host) network.Stream {
		s := atkOpen(t, h, v.ID(), realm.AuthProtocol)
		_, hello := k.hello(h.ID(), v.ID())
		atkWrite(t, s, atkFrame(hello))
		return s
	}
	fill := func(h host.Host) {
		for range perPeer {
			s := holdSlot(h)
			reply, err := atkReadFrame(s)
			require.NoError(t, err, "a valid hello within the caps gets a reply")
			require.Len(t, reply, 64)
		}
	}
	refusedAtOnce := func(h host.Host, what string) {
		s := holdSlot(h)
		opened := time.Now()
		atkExpectReset(t, s, nil)
		require.Less(t, time.Since(opened), time.Second, "%s: the stream must be reset at once", what)
	}
	before = v.RealmStats()
	start := time.Now()
	fill(attackers[0])
	refusedAtOnce(attackers[0], "over the per-peer cap")
	require.Equal(t, before.AuthRefused+1, v.RealmStats().AuthRefused)
	for _, h := range attackers[1 : slots/perPeer] {
		fill(h)
	}
	refusedAtOnce(attackers[slots/perPeer], "over the global cap")
	st := v.RealmStats()
	t.Logf("victim stats under flood: %+v", st)
	require.Equal(t, before.AuthRefused+2, st.AuthRefused)

	legit := newNode(t)
	rl := join(t, legit, "alpha", realm.PSK(testPSK), realm.Peers(v.AddrInfo()))
	ctx, cancel := context.WithTimeout(context.Background(), realm.HandshakeTimeout-time.Since(start)-500*time.Millisecond)
	defer cancel()
	require.NoError(t, rv.WaitMembers(ctx, 1), "the flood locked the legitimate node out (stats %+v)", v.RealmStats())
	require.NoError(t, rl.WaitMembers(ctx, 1))
	t.Logf("legitimate member admitted %v after the flood started; victim stats: %+v", time.Since(start), v.RealmStats())
	require.Equal(t, []peer.ID{legit.ID()}, rv.Members())
	for _, h := range attackers {
		atkRequireNotMember(t, rv, joins, h.ID())
	}
}

// TestAttackSlowCloserCompletes proves that the end of a handshake, and of
// a goodbye, does not depend on timing: a peer that follows the documented
// protocol (send its last message, close its write side, read the other
// side's end of stream) but closes its write side 100 ms after its last
// message still completes. (It did not when the responder ended with
// Stream.Close: on QUIC that also stops the read side, and the other side's
// later CloseWrite failed — a member on one side only. The responder now
// closes its write side, waits for the peer's, then closes.)
func TestAttackSlowCloserCompletes(t *testing.T) {
	t.Run("handshake", func(t *testing.T) {
		v := newNode(t)
		rv := join(t, v, "alpha", realm.PSK(testPSK))
		k := atkRealmKeys(t, rv, testPSK)
		x := atkNewHost(t)
		atkConnect(t, x, v)

		s := atkOpen(t, x, v.ID(), realm.AuthProtocol)
		defer func() { _ = s.Reset() }()
		nonceI, hello := k.hello(x.ID(), v.ID())
		atkWrite(t, s, atkFrame(hello))
		reply, err := atkReadFrame(s)
		require.NoError(t, err)
		require.Len(t, reply, 64)
		var nonceR [32]byte
		copy(nonceR[:], reply)
		macI := k.transcript("init", x.ID(), v.ID(), nonceI, nonceR)
		atkWrite(t, s, atkFrame(macI[:]))
		require.Eventually(t, func() bool { return slices.Contains(rv.Members(), x.ID()) }, 5*time.Second, 5*time.Millisecond,
			"the responder did not admit a correct initiator")
		time.Sleep(100 * time.Millisecond)
		require.NoError(t, s.CloseWrite(),
			"BUG: the responder's Close (auth.go respond) cancelled its read side, so the initiator's CloseWrite fails; "+
				"auth.go initiate treats that as a failed handshake although the responder admitted it")
		var one [1]byte
		n, err := s.Read(one[:])
		require.Zero(t, n)
		require.ErrorIs(t, err, io.EOF)
	})
	t.Run("goodbye", func(t *testing.T) {
		v := newNode(t)
		rv := join(t, v, "alpha", realm.PSK(testPSK))
		k := atkRealmKeys(t, rv, testPSK)
		x := atkNewHost(t)
		atkConnect(t, x, v)
		atkJoinAsMember(t, x, v.ID(), k)

		s := atkOpen(t, x, v.ID(), realm.StreamProtocol)
		defer func() { _ = s.Reset() }()
		bye := atkSealGoodbye(t, k.goodbyePayload(x.ID(), time.Now()), x.Peerstore().PrivKey(x.ID()))
		atkWrite(t, s, atkFrame(atkHeader(atkKindGoodbye, k.handle(x.ID(), v.ID()), "")), atkFrame(bye))
		require.Eventually(t, func() bool { return len(rv.Members()) == 0 }, 5*time.Second, 5*time.Millisecond,
			"the receiver did not process a correct goodbye")
		time.Sleep(100 * time.Millisecond)
		require.NoError(t, s.CloseWrite(),
			"BUG: the goodbye receiver's Close (members.go receiveGoodbye) cancelled its read side, so the sender's CloseWrite fails; "+
				"members.go sendGoodbye treats that as an unacknowledged goodbye although it was processed")
		_, err := io.ReadAll(s)
		require.NoError(t, err)
	})
}

// TestAttackForgedGoodbyes proves that a member cannot get another member
// removed, nor be removed by a goodbye that does not verify: over its own
// realm stream, a goodbye signed by another member (B's key and proof), one
// whose proof names another peer, one proven with another realm's key, one
// six minutes old, one six minutes ahead, and garbage are each reset,
// counted in GoodbyesRejected and change no membership; the member's own
// valid goodbye then removes it (and only it).
func TestAttackForgedGoodbyes(t *testing.T) {
	v := newNode(t)
	rv := join(t, v, "alpha", realm.PSK(testPSK))
	k := atkRealmKeys(t, rv, testPSK)
	other := atkDeriveKeys("alpha", atkOtherPSK)
	m, b := atkNewHost(t), atkNewHost(t)
	atkConnect(t, m, v)
	atkConnect(t, b, v)
	atkJoinAsMember(t, m, v.ID(), k)
	atkJoinAsMember(t, b, v.ID(), k)
	require.ElementsMatch(t, []peer.ID{m.ID(), b.ID()}, rv.Members())
	mKey, bKey := m.Peerstore().PrivKey(m.ID()), b.Peerstore().PrivKey(b.ID())
	now := time.Now()

	forged := []struct {
		name string
		env  []byte
	}{
		{"B's own goodbye, relayed by M", atkSealGoodbye(t, k.goodbyePayload(b.ID(), now), bKey)},
		{"proof naming B, signed by M", atkSealGoodbye(t, k.goodbyePayload(b.ID(), now), mKey)},
		{"proof with another realm's key", atkSealGoodbye(t, other.goodbyePayload(m.ID(), now), mKey)},
		{"six minutes old", atkSealGoodbye(t, k.goodbyePayload(m.ID(), now.Add(-6*time.Minute)), mKey)},
		{"six minutes ahead", atkSealGoodbye(t, k.goodbyePayload(m.ID(), now.Add(6*time.Minute)), mKey)},
		{"truncated payload", atkSealGoodbye(t, k.goodbyePayload(m.ID(), now)[:39], mKey)},
		{"garbage", []byte("not an envelope")},
	}
	before := v.RealmStats()
	hdr := atkFrame(atkHeader(atkKindGoodbye, k.handle(m.ID(), v.ID()), ""))
	for _, f := range forged {
		s := atkOpen(t, m, v.ID(), realm.StreamProtocol)
		atkWrite(t, s, hdr, atkFrame(f.env))
		_ = s.CloseWrite()
		err := atkExpectReset(t, s, nil)
		t.Logf("%s: %v", f.name, err)
		require.ElementsMatch(t, []peer.ID{m.ID(), b.ID()}, rv.Members(), "after %s", f.name)
	}
	after := v.RealmStats()
	t.Logf("victim stats: %+v", after)
	require.Equal(t, before.GoodbyesRejected+uint64(len(forged)), after.GoodbyesRejected)
	require.Equal(t, before.StreamsRefused, after.StreamsRefused, "the goodbyes reached the check")

	// Control: M's valid goodbye removes M, and only M.
	s := atkOpen(t, m, v.ID(), realm.StreamProtocol)
	atkWrite(t, s, hdr, atkFrame(atkSealGoodbye(t, k.goodbyePayload(m.ID(), time.Now()), mKey)))
	_ = s.CloseWrite()
	_, _ = io.ReadAll(s)
	require.Eventually(t, func() bool { return !slices.Contains(rv.Members(), m.ID()) }, 5*time.Second, 5*time.Millisecond)
	require.Equal(t, []peer.ID{b.ID()}, rv.Members())
	require.Equal(t, after.GoodbyesRejected, v.RealmStats().GoodbyesRejected)
}

// TestAttackRehandshakeWhileStreaming proves that a member that runs the
// handshake again and again (it may: every completed handshake re-admits
// it) while the victim opens realm streams to it causes no data race in the
// victim (run with -race) and stays one member.
//
// BUG: Realm.memberHandle (streams.go, "if m != nil && m.authenticated")
// reads the member's authenticated and handle fields after releasing r.mu,
// while admit (realm.go, "m.authenticated = true") writes them under it: the
// race detector reports it. Ordinary joins hit it too (a member exchange
// opening its stream while the other direction's handshake re-admits the
// peer): it fails TestTwoMembersAuthenticateAndEcho and
// TestAttackMemberListExcludesAttackers now and then under -race.
func TestAttackRehandshakeWhileStreaming(t *testing.T) {
	v := newNode(t)
	rv := join(t, v, "alpha", realm.PSK(testPSK))
	k := atkRealmKeys(t, rv, testPSK)
	x := atkNewHost(t)
	x.SetStreamHandler(realm.StreamProtocol, func(s network.Stream) { _ = s.Reset() })
	atkConnect(t, x, v)
	atkJoinAsMember(t, x, v.ID(), k)

	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		opened := 0
		for {
			select {
			case <-stop:
				done <- opened
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if s, err := rv.NewStream(ctx, x.ID(), "/p"); err == nil {
				opened++
				_ = s.Reset()
			}
			cancel()
		}
	}()
	handshakes := 0
	for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline); handshakes++ {
		atkJoinAsMember(t, x, v.ID(), k)
	}
	close(stop)
	opened := <-done
	t.Logf("%d handshakes, %d streams opened meanwhile; victim stats: %+v", handshakes, opened, v.RealmStats())
	require.NotZero(t, opened)
	require.Equal(t, []peer.ID{x.ID()}, rv.Members())
}
