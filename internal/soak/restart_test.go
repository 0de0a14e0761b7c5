package soak

import (
	"context"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"
)

// TestLeaveRightAfterRestartIsSeen reproduces, between two processes, the
// phantom member the soak found: b is SIGKILLed and restarted with the
// same identity, DataDir and port, rejoins realms x and y, and as soon as
// the two list each other again a leaves x; b must drop a from x within
// 5 s, in each of 10 rounds. Before the fix, a's goodbye went on its
// connection to b's previous instance (the new one, on the same address
// pair, was held back as redundant until the old one was found dead), was
// answered by a stateless reset and never retried: b listed a for good,
// within 3 rounds in 5 runs of 5. REALMNET_SOAK_DIR keeps the children's
// logs there.
func TestLeaveRightAfterRestartIsSeen(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	if d := os.Getenv("REALMNET_SOAK_DIR"); d != "" {
		dir = d
	}
	pa, err := spawn(dir, "a")
	require.NoError(t, err)
	t.Cleanup(func() { pa.exit(5 * time.Second) })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ra, err := pa.call(ctx, Request{Op: OpStart, Node: 0, Dir: dir + "/a"})
	require.NoError(t, err)
	infoA := *ra.Info
	psk := []byte("0123456789abcdef-phantom-member")

	var pb *proc
	port := 0
	startB := func() peer.ID {
		pb, err = spawn(dir, "b-"+time.Now().Format("150405.000"))
		require.NoError(t, err)
		rb, err := pb.call(ctx, Request{Op: OpStart, Node: 0, Dir: dir + "/b", Port: port})
		require.NoError(t, err)
		if port == 0 {
			p, err := rb.Info.Addrs[0].ValueForProtocol(ma.P_UDP)
			require.NoError(t, err)
			port, err = strconv.Atoi(p)
			require.NoError(t, err)
		}
		for _, r := range []string{"x", "y"} {
			_, err := pb.call(ctx, Request{Op: OpJoin, Node: 0, Realm: r, PSK: psk, Peers: []peer.AddrInfo{infoA}})
			require.NoError(t, err)
		}
		return rb.Info.ID
	}
	for _, r := range []string{"x", "y"} {
		_, err := pa.call(ctx, Request{Op: OpJoin, Node: 0, Realm: r, PSK: psk})
		require.NoError(t, err)
	}
	b := startB()
	lists := func(p *proc, realm string, who peer.ID) bool {
		resp, err := p.call(ctx, Request{Op: OpMembers})
		return err == nil && slices.Contains(resp.Members[0][realm], who)
	}
	both := func() bool {
		return lists(pa, "x", b) && lists(pa, "y", b) && lists(pb, "x", infoA.ID) && lists(pb, "y", infoA.ID)
	}
	require.Eventually(t, both, 30*time.Second, 20*time.Millisecond)
	for round := range 10 {
		pb.kill()
		startB()
		require.Eventually(t, both, 30*time.Second, 20*time.Millisecond, "round %d: not members again after the restart", round)
		resp, err := pa.call(ctx, Request{Op: OpLeave, Node: 0, Realm: "x"})
		require.NoError(t, err)
		if resp.Note != "" {
			t.Logf("round %d: a's Leave: %s", round, resp.Note)
		}
		require.Eventually(t, func() bool { return !lists(pb, "x", infoA.ID) }, 5*time.Second, 20*time.Millisecond,
			"round %d: b still lists a in x after a left it", round)
		_, err = pa.call(ctx, Request{Op: OpJoin, Node: 0, Realm: "x", PSK: psk})
		require.NoError(t, err)
		require.Eventually(t, both, 30*time.Second, 20*time.Millisecond, "round %d: not members again after a rejoined", round)
	}
	pb.exit(5 * time.Second)
}
