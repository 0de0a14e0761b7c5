package realm_test

// Tests of issue #11, items 5–7: a member poisoning the victim through
// member exchange — made-up peers (valid self-signed records) with many
// addresses, sent again and again.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/benbjohnson/clock"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/record"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

// poisonPeer is a made-up peer: its ID and its signed record (a frame's
// payload).
type poisonPeer struct {
	id     peer.ID
	record []byte
}

// poisonPeers makes n peers with fresh keys, peer j's record holding
// addrs(j).
func poisonPeers(t testing.TB, n int, addrs func(j int) []ma.Multiaddr) []poisonPeer {
	t.Helper()
	out := make([]poisonPeer, n)
	for j := range out {
		sk, _, err := crypto.GenerateEd25519Key(nil)
		require.NoError(t, err)
		id, err := peer.IDFromPrivateKey(sk)
		require.NoError(t, err)
		env, err := record.Seal(peer.PeerRecordFromAddrInfo(peer.AddrInfo{ID: id, Addrs: addrs(j)}), sk)
		require.NoError(t, err)
		b, err := env.Marshal()
		require.NoError(t, err)
		require.LessOrEqual(t, len(b), realm.MaxFrameSize)
		out[j] = poisonPeer{id: id, record: b}
	}
	return out
}

// poisonExchange opens a member exchange from member h to v carrying
// peers' records and reports whether v answered it (false: v reset it).
func poisonExchange(t testing.TB, h host.Host, v peer.ID, k *atkKeys, peers []poisonPeer) bool {
	t.Helper()
	s := atkOpen(t, h, v, realm.StreamProtocol)
	defer func() { _ = s.Reset() }()
	chunks := [][]byte{atkFrame(atkHeader(atkKindMembers, k.handle(h.ID(), v), ""))}
	for _, p := range peers {
		chunks = append(chunks, atkFrame(p.record))
	}
	chunks = append(chunks, atkFrame(nil))
	if _, err := s.Write(concat(chunks)); err != nil {
		t.Logf("exchange not sent: %v", err)
		return false
	}
	for {
		f, err := atkReadFrame(s)
		if err != nil {
			t.Logf("exchange not answered: %v", err)
			return false
		}
		if len(f) == 0 {
			_ = s.CloseWrite()
			return true
		}
	}
}

func concat(chunks [][]byte) []byte {
	var b []byte
	for _, c := range chunks {
		b = append(b, c...)
	}
	return b
}

// poisonAddrs returns n addresses /ip4/203.0.113.x/udp/port/quic-v1
// (TEST-NET-3: public in form, reaching nobody), distinct for peer j.
func poisonAddrs(j, n int) []ma.Multiaddr {
	out := make([]ma.Multiaddr, n)
	for i := range out {
		out[i] = ma.StringCast(fmt.Sprintf("/ip4/203.0.113.%d/udp/%d/quic-v1", 1+j%250, 1024+i))
	}
	return out
}

// heapAlloc is the live heap after a collection.
func heapAlloc() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestExchangeRecordsStayOutOfPeerstore proves (issue #11, item 5) that
// records of made-up peers received in member exchanges do not reach the
// victim's peerstore: after 10 exchanges (answered: the victim's mock clock
// moves past the per-member exchange interval between them) of 63 made-up
// peers × 64 addresses, the peerstore holds addresses only for the peers
// the victim dialed (at most 4 per exchange, at most 8 addresses each, with
// the dial's TTL), the certified address book none of them; and that a
// second exchange within the interval is reset (ExchangesRefused).
func TestExchangeRecordsStayOutOfPeerstore(t *testing.T) {
	const rounds = 10
	mock := clock.NewMock()
	v := newNode(t, node.Clock(mock))
	rv := join(t, v, "poison", realm.PSK(testPSK))
	k := atkRealmKeys(t, rv, testPSK)
	h := atkNewHost(t)
	atkConnect(t, h, v)
	atkJoinAsMember(t, h, v.ID(), k)
	heapBefore := heapAlloc()

	var made []poisonPeer
	for round := range rounds {
		peers := poisonPeers(t, realm.MaxExchangeRecords-1, func(int) []ma.Multiaddr { return poisonAddrs(round, 64) })
		made = append(made, peers...)
		mock.Add(2 * time.Second)
		require.True(t, poisonExchange(t, h, v.ID(), k, peers), "exchange %d was not answered", round)
	}
	heapAfter := heapAlloc()

	ps := v.Host().Peerstore()
	cab, ok := peerstore.GetCertifiedAddrBook(ps)
	require.True(t, ok)
	withAddrs, addrs, certified, maxPer := 0, 0, 0, 0
	for _, p := range made {
		n := len(ps.Addrs(p.id))
		addrs += n
		maxPer = max(maxPer, n)
		if n > 0 {
			withAddrs++
		}
		if cab.GetPeerRecord(p.id) != nil {
			certified++
		}
	}
	t.Logf("after %d exchanges of %d made-up peers × 64 addresses: %d of %d made-up peers in the peerstore, %d addresses (at most %d per peer), %d certified records; heap %.1f → %.1f MiB",
		rounds, realm.MaxExchangeRecords-1, withAddrs, len(made), addrs, maxPer, certified,
		float64(heapBefore)/(1<<20), float64(heapAfter)/(1<<20))
	require.Zero(t, certified, "records of made-up peers reached the certified address book")
	require.LessOrEqual(t, withAddrs, rounds*4, "made-up peers in the peerstore: more than the 4 dialed per exchange")
	require.LessOrEqual(t, maxPer, 8, "a made-up peer has more than 8 addresses in the peerstore")

	// The member's next exchange within the interval is reset.
	before := v.RealmStats().ExchangesRefused
	require.False(t, poisonExchange(t, h, v.ID(), k, made[:1]), "an exchange within a second of the previous one was answered")
	require.Greater(t, v.RealmStats().ExchangesRefused, before)
}

// poisonSilentAddr returns the QUIC address of a loopback UDP socket that
// never answers: a dial to it hangs until its timeout.
func poisonSilentAddr(t testing.TB) ma.Multiaddr {
	t.Helper()
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = silent.Close() })
	return ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/udp/%d/quic-v1", silent.LocalAddr().(*net.UDPAddr).Port))
}

// poisonFlood sends, from member h to v, an exchange of 63 fresh made-up
// peers at addr every 1.1 s (just over the per-member exchange interval)
// until the test ends, and returns once two have been sent: by then the
// victim's candidate slots are taken.
func poisonFlood(t *testing.T, h host.Host, v peer.ID, k *atkKeys, addr ma.Multiaddr) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	sent := make(chan struct{}, 2)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			peers := poisonPeers(t, realm.MaxExchangeRecords-1, func(int) []ma.Multiaddr { return []ma.Multiaddr{addr} })
			poisonExchange(t, h, v, k, peers)
			select {
			case sent <- struct{}{}:
			default:
			}
			select {
			case <-ctx.Done():
			case <-time.After(1100 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	for range 2 {
		<-sent
	}
}

// TestExchangeFloodLeavesKnownCandidates proves (issue #11, item 6) that a
// member flooding exchanges of made-up peers (whose dials hang: their
// addresses are a UDP socket that never answers) does not crowd out the
// victim's Peers entry: b, unreachable when the victim joined (its gater
// blocked the victim), joins later without knowing the victim, and the
// victim's discovery rounds still dial it from Peers and admit it.
func TestExchangeFloodLeavesKnownCandidates(t *testing.T) {
	silentAddr := poisonSilentAddr(t)
	v, b := newNode(t), newNode(t)
	require.NoError(t, b.Gater().BlockPeer(v.ID()))
	rv := join(t, v, "starve", realm.PSK(testPSK), realm.Peers(b.AddrInfo()))
	k := atkRealmKeys(t, rv, testPSK)
	h := atkNewHost(t)
	atkConnect(t, h, v)
	atkJoinAsMember(t, h, v.ID(), k)

	poisonFlood(t, h, v.ID(), k, silentAddr)

	require.NoError(t, b.Gater().UnblockPeer(v.ID()))
	rb := join(t, b, "starve", realm.PSK(testPSK))
	start := time.Now()
	wctx, wcancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer wcancel()
	err := rv.WaitMembers(wctx, 2)
	t.Logf("b admitted after %v (err %v); victim's members %v", time.Since(start).Round(time.Millisecond), err, rv.Members())
	require.NoError(t, err, "the Peers entry b was never dialed again during the flood")
	require.Contains(t, rv.Members(), b.ID())
	waitMembers(t, rb, 1)
}

// TestExchangeFloodLeavesGraceCandidate proves (issue #11, item 6) that
// the same flood does not crowd out a member in its reconnect grace: v
// closes its connection to member b and refuses b's own reconnections (an
// AfterHandshake hook on inbound connections from b), so only v's grace
// candidate can bring b back; it does, well within the grace.
func TestExchangeFloodLeavesGraceCandidate(t *testing.T) {
	v, b := newNode(t), newNode(t)
	rv := join(t, v, "grace", realm.PSK(testPSK))
	rb := join(t, b, "grace", realm.PSK(testPSK), realm.Peers(v.AddrInfo()))
	waitMembers(t, rv, 1)
	waitMembers(t, rb, 1)
	k := atkRealmKeys(t, rv, testPSK)
	h := atkNewHost(t)
	atkConnect(t, h, v)
	atkJoinAsMember(t, h, v.ID(), k)
	poisonFlood(t, h, v.ID(), k, poisonSilentAddr(t))

	remove := v.Hooks().OnAfterHandshake(func(_ context.Context, hs hooks.Handshake) error {
		if hs.Peer == b.ID() && hs.Direction == network.DirInbound {
			return errors.New("b comes back only by v's own dial")
		}
		return nil
	})
	defer remove()
	old := map[string]bool{}
	for _, c := range v.Host().Network().ConnsToPeer(b.ID()) {
		old[c.ID()] = true
	}
	start := time.Now()
	_ = v.Host().Network().ClosePeer(b.ID())
	// b's grace may last only milliseconds (v redials at once), too short
	// to be seen by polling: what proves the grace candidate is that b is
	// a connected member again over a new connection that v dialed (b's
	// own are refused by the hook).
	redialed := func() bool {
		for _, c := range v.Host().Network().ConnsToPeer(b.ID()) {
			if !old[c.ID()] && c.Stat().Direction == network.DirOutbound {
				return true
			}
		}
		return false
	}
	require.Eventually(t, func() bool { info, ok := rv.Member(b.ID()); return ok && info.Connected && redialed() },
		realm.DefaultReconnectGrace-3*time.Second, 10*time.Millisecond,
		"v never reconnected to b, in its grace, during the flood (members %v)", rv.Members())
	t.Logf("b reconnected by v after %v", time.Since(start).Round(time.Millisecond))
}

// vnSocket is a UDP socket on loopback that answers every QUIC Initial with
// a Version Negotiation packet offering only a version nobody speaks, so
// that each dial to it fails at once, and counts the dial attempts
// (distinct destination connection IDs).
type vnSocket struct {
	conn *net.UDPConn
	mu   sync.Mutex
	seen map[string]struct{}
}

func newVNSocket(t testing.TB) *vnSocket {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	s := &vnSocket{conn: c, seen: make(map[string]struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			s.answer(buf[:n], from)
		}
	}()
	t.Cleanup(func() { _ = c.Close(); <-done })
	return s
}

func (s *vnSocket) addr() ma.Multiaddr {
	return ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/udp/%d/quic-v1", s.conn.LocalAddr().(*net.UDPAddr).Port))
}

// answer parses a long header (RFC 9000 §17.2: flags, version, DCID len,
// DCID, SCID len, SCID) and sends a Version Negotiation packet (§17.2.1)
// echoing the connection IDs, offering the reserved version 0x1a2a3a4a.
func (s *vnSocket) answer(b []byte, to *net.UDPAddr) {
	if len(b) < 7 || b[0]&0x80 == 0 {
		return
	}
	dl := int(b[5])
	if len(b) < 6+dl+1 {
		return
	}
	dcid := b[6 : 6+dl]
	sl := int(b[6+dl])
	if len(b) < 7+dl+sl {
		return
	}
	scid := b[7+dl : 7+dl+sl]
	s.mu.Lock()
	s.seen[string(dcid)] = struct{}{}
	s.mu.Unlock()
	vn := []byte{0x80 | 0x2a, 0, 0, 0, 0, byte(len(scid))}
	vn = append(vn, scid...)
	vn = append(vn, byte(len(dcid)))
	vn = append(vn, dcid...)
	vn = append(vn, 0x1a, 0x2a, 0x3a, 0x4a)
	_, _ = s.conn.WriteToUDP(vn, to)
}

func (s *vnSocket) attempts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

// TestExchangeDialsAreBounded proves (issue #11, item 7) that one exchange
// of 63 made-up peers × 64 addresses makes the victim attempt at most 4
// peers × 8 addresses (every address is a loopback socket whose answer
// fails the dial at once, and which counts the attempts), and that the
// same peers named again by the next exchange are not redialed within
// their backoff (the victim's clock is a mock: the backoff does not pass).
func TestExchangeDialsAreBounded(t *testing.T) {
	socks := make([]*vnSocket, 64)
	sockAddrs := make([]ma.Multiaddr, len(socks))
	for i := range socks {
		socks[i] = newVNSocket(t)
		sockAddrs[i] = socks[i].addr()
	}
	total := func() int {
		n := 0
		for _, s := range socks {
			n += s.attempts()
		}
		return n
	}
	mock := clock.NewMock()
	v := newNode(t, node.Clock(mock))
	rv := join(t, v, "amplify", realm.PSK(testPSK))
	k := atkRealmKeys(t, rv, testPSK)
	h := atkNewHost(t)
	atkConnect(t, h, v)
	atkJoinAsMember(t, h, v.ID(), k)
	require.Zero(t, total())

	peers := poisonPeers(t, realm.MaxExchangeRecords-1, func(int) []ma.Multiaddr { return sockAddrs })
	mock.Add(2 * time.Second)
	require.True(t, poisonExchange(t, h, v.ID(), k, peers))
	require.Eventually(t, func() bool { return total() > 0 }, 10*time.Second, 10*time.Millisecond, "the victim dialed no made-up peer")
	// The dials fail at once: 3 s is many times what they take.
	time.Sleep(3 * time.Second)
	first := total()
	used := 0
	for _, s := range socks {
		if s.attempts() > 0 {
			used++
		}
	}
	t.Logf("one exchange of %d made-up peers × %d addresses: %d dial attempts, to %d distinct addresses",
		len(peers), len(sockAddrs), first, used)
	require.LessOrEqual(t, first, 4*8, "more than 4 peers × 8 addresses dialed for one exchange")
	require.LessOrEqual(t, used, 8, "more than 8 addresses of a made-up peer dialed")

	// The same exchange again (after the exchange interval): the peers
	// dialed, all failed, are in their backoff; at most 4 others are new.
	// Naming only the failed ones must dial nothing.
	mock.Add(2 * time.Second)
	require.True(t, poisonExchange(t, h, v.ID(), k, peers[:4]))
	time.Sleep(2 * time.Second)
	again := total() - first
	t.Logf("the 4 failed peers named again: %d new dial attempts", again)
	require.Zero(t, again, "failed candidates were redialed within their backoff")
}
