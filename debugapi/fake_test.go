package debugapi

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testkit.LeakOptions()...)
}

// testPeer returns a fixed peer ID: the Ed25519 key whose seed is 32 bytes
// of seed.
func testPeer(t testing.TB, seed byte) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(bytes.NewReader(bytes.Repeat([]byte{seed}, 32)))
	if err != nil {
		t.Fatalf("generate key %d: %v", seed, err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatalf("peer ID of key %d: %v", seed, err)
	}
	return id
}

// errDoctorFailed is what fakeSource.Doctor returns for fakeSource.failing.
var errDoctorFailed = errors.New("peerstore is closed")

// fakeSource is a Source with fixed data: three peers (alice, bob, carol)
// with four paths, three pools, two realms, events and health, and one more
// peer (failing) whose diagnosis fails. Its methods return copies, as a
// Source must (the server sorts what it gets).
type fakeSource struct {
	alice, bob, carol, failing peer.ID

	node    NodeView
	peers   []PeerView
	paths   []PathView
	pools   []PoolView
	realms  []RealmView
	events  []EventView
	health  []PeerHealthView
	reports map[peer.ID]DoctorReport
}

var _ Source = (*fakeSource)(nil)

// at is a fixed time, minutes after the fake node started.
func at(minutes int) time.Time {
	return time.Date(2025, 3, 4, 10, minutes, 30, 250_000_000, time.UTC)
}

func newFakeSource(t testing.TB) *fakeSource {
	f := &fakeSource{
		alice:   testPeer(t, 1),
		bob:     testPeer(t, 2),
		carol:   testPeer(t, 3),
		failing: testPeer(t, 4),
	}
	self := testPeer(t, 9)
	alice, bob, carol := f.alice.String(), f.bob.String(), f.carol.String()
	openUntil := at(40)

	f.node = NodeView{
		ID:           self.String(),
		Version:      "realmnet/0.9.0",
		ListenAddrs:  []string{"/ip4/127.0.0.1/udp/4001/quic-v1", "/ip6/::1/udp/4001/quic-v1"},
		Addrs:        []string{"/ip4/203.0.113.7/udp/4001/quic-v1"},
		Started:      at(0),
		Peers:        3,
		Conns:        4,
		Streams:      7,
		Reachability: "Public",
	}
	f.health = []PeerHealthView{
		{Peer: carol, Breaker: BreakerOpen, OpenUntil: &openUntil, Quality: 0.1, RecentFailures: 5},
		{Peer: alice, Breaker: BreakerClosed, Quality: 0.98},
		{Peer: bob, Breaker: BreakerHalfOpen, Quality: 0.55, RecentFailures: 1},
	}
	health := func(p string) PeerHealthView {
		i := slices.IndexFunc(f.health, func(h PeerHealthView) bool { return h.Peer == p })
		return f.health[i]
	}
	f.peers = []PeerView{
		{ID: alice, Connectedness: "Connected", Paths: 2, SelectedRTTMs: 12.5, Realms: []string{"chat", "files"},
			Pools: []core.Pool{core.RealmPool("chat"), core.RealmPool("files")}, Protected: true, Health: health(alice)},
		{ID: bob, Connectedness: "Connected", Paths: 1, SelectedRTTMs: 80.25, Realms: []string{"chat"},
			Pools: []core.Pool{core.RealmPool("chat")}, Health: health(bob)},
		{ID: carol, Connectedness: "Limited", Paths: 1, Realms: []string{},
			Pools: []core.Pool{core.PoolUnassigned}, Health: health(carol)},
	}
	f.paths = []PathView{
		{Peer: alice, ConnID: "conn-a1", Local: "/ip4/127.0.0.1/udp/4001/quic-v1", Remote: "/ip4/192.0.2.10/udp/4001/quic-v1",
			Direction: DirectionOutbound, Tier: TierDirect, State: core.PathActive.String(), Selected: true,
			SmoothedRTTMs: 12.5, MinRTTMs: 11, HeartbeatRTTMs: 12.75, Loss: 0.001, OpenStreams: 3,
			BytesSent: 1 << 20, BytesReceived: 3 << 20, LastHeartbeat: at(10), Opened: at(1)},
		{Peer: alice, ConnID: "conn-a2", Local: "/ip6/::1/udp/4001/quic-v1", Remote: "/ip6/2001:db8::10/udp/4001/quic-v1",
			Direction: DirectionInbound, Tier: TierDirect, State: core.PathStandby.String(),
			SmoothedRTTMs: 20, MinRTTMs: 18.5, HeartbeatRTTMs: 21, OpenStreams: 0,
			BytesSent: 4096, BytesReceived: 2048, LastHeartbeat: at(10), Opened: at(2)},
		{Peer: bob, ConnID: "conn-b1", Local: "/ip4/127.0.0.1/udp/4001/quic-v1", Remote: "/ip4/198.51.100.3/udp/4001/quic-v1",
			Direction: DirectionOutbound, Tier: TierDirect, State: core.PathDegraded.String(), Selected: true,
			SmoothedRTTMs: 80.25, MinRTTMs: 60, HeartbeatRTTMs: 250, Loss: 0.2, OpenStreams: 4,
			BytesSent: 100, BytesReceived: 200, LastHeartbeat: at(9), Opened: at(3)},
		{Peer: carol, ConnID: "conn-c1", Local: "/ip4/127.0.0.1/udp/4001/quic-v1",
			Remote:    "/ip4/203.0.113.50/udp/4001/quic-v1/p2p/" + alice + "/p2p-circuit",
			Direction: DirectionOutbound, Tier: TierRelayed, State: core.PathValidating.String(),
			Opened: at(11)},
	}
	f.pools = []PoolView{
		{Name: core.PoolGlobal, Size: 4, LowWater: 160, HighWater: 192, Trimmed: 12, Refused: 3},
		{Name: core.PoolUnassigned, Size: 1, LowWater: 2, HighWater: 4, Trimmed: 30},
		{Name: core.RealmPool("chat"), Size: 3, LowWater: 1, HighWater: 3, Refused: 2},
	}
	f.realms = []RealmView{
		{Name: "chat", Joined: at(1), Members: []MemberView{
			{Peer: alice, Since: at(2), Paths: 2},
			{Peer: bob, Since: at(3), Paths: 1},
		}},
		{Name: "files", Joined: at(5), Members: []MemberView{{Peer: alice, Since: at(6), Paths: 2}}},
	}
	f.events = []EventView{
		{At: at(1), Type: "peer_connected", Peer: alice, Text: "connected over /ip4/192.0.2.10/udp/4001/quic-v1"},
		{At: at(3), Type: "realm_member_joined", Peer: bob, Text: "bob joined chat"},
		{At: at(9), Type: "path_degraded", Peer: bob, Text: "heartbeat overdue on conn-b1"},
		// Markup in data must stay text on the page.
		{At: at(12), Type: "note", Text: "<b>not bold</b><img src=x>"},
	}
	f.reports = map[peer.ID]DoctorReport{
		f.carol: {
			Peer:          carol,
			Known:         true,
			Connectedness: "Limited",
			Addresses: []AddressView{
				{Addr: "/ip4/203.0.113.50/udp/4001/quic-v1", Sources: []string{"dht", "realm-exchange"}},
			},
			Dials: []DialView{
				{At: at(10), Addr: "/ip4/203.0.113.50/udp/4001/quic-v1", Error: "timeout: no recent network activity", DurationMs: 5000},
				{At: at(11), Addr: "/ip4/203.0.113.50/udp/4001/quic-v1/p2p/" + alice + "/p2p-circuit", DurationMs: 310.5},
			},
			Decisions: []DecisionView{
				{At: at(11), Stage: string(core.StageGater), Outcome: "allowed"},
				{At: at(11), Stage: "before_connect", Hook: "geo-fence", Outcome: "allowed", Reason: "region ok"},
			},
			PoolRefusals: []RefusalView{{At: at(8), Pool: core.PoolUnassigned, Reason: core.ReasonUnassignedHighWater}},
			Realms: []RealmMembershipView{
				{Realm: "chat", Member: false, State: "handshake_failed"},
				{Realm: "files", Member: false, State: "not_seen"},
			},
			Paths:   []PathView{f.paths[3]},
			Health:  &f.health[0],
			Verdict: "reachable only through a relay: its direct address times out",
		},
	}
	return f
}

func (f *fakeSource) Node() NodeView           { return f.node }
func (f *fakeSource) Peers() []PeerView        { return slices.Clone(f.peers) }
func (f *fakeSource) Paths() []PathView        { return slices.Clone(f.paths) }
func (f *fakeSource) Pools() []PoolView        { return slices.Clone(f.pools) }
func (f *fakeSource) Realms() []RealmView      { return slices.Clone(f.realms) }
func (f *fakeSource) Events() []EventView      { return slices.Clone(f.events) }
func (f *fakeSource) Health() []PeerHealthView { return slices.Clone(f.health) }

// Doctor fails for f.failing, reports f.reports[p] for a known peer and an
// unknown peer (nil lists) otherwise.
func (f *fakeSource) Doctor(ctx context.Context, p peer.ID) (DoctorReport, error) {
	if p == f.failing {
		return DoctorReport{}, errDoctorFailed
	}
	if r, ok := f.reports[p]; ok {
		return r, nil
	}
	return DoctorReport{Peer: p.String(), Connectedness: "NotConnected", Verdict: "unknown peer: no address, no dial, no realm"}, nil
}

// healthSorted is f.health as /v1/health answers it: best quality first.
func (f *fakeSource) healthSorted() []PeerHealthView {
	h := slices.Clone(f.health)
	slices.SortFunc(h, func(x, y PeerHealthView) int {
		switch {
		case x.Quality > y.Quality:
			return -1
		case x.Quality < y.Quality:
			return 1
		}
		return 0
	})
	return h
}
