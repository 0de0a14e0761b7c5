package main

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/debugapi"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

// observedPair is two nodes on loopback, members of one realm (PSK) and
// connected; a serves a debug endpoint on 127.0.0.1.
type observedPair struct {
	a, b  *node.Node
	realm string
}

func newObservedPair(t *testing.T, options ...node.Option) observedPair {
	t.Helper()
	pair := observedPair{realm: "observatory"}
	psk := realm.PSK([]byte("a pre-shared key of the observatory realm"))
	pair.a = testnode.New(t, append([]node.Option{node.DebugAddr("127.0.0.1:0")}, options...)...)
	pair.b = testnode.New(t)
	ctx := testkit.Context(t, 30*time.Second)
	if _, err := pair.a.JoinRealm(ctx, pair.realm, psk); err != nil {
		t.Fatal(err)
	}
	if _, err := pair.b.JoinRealm(ctx, pair.realm, psk, realm.Peers(pair.a.AddrInfo())); err != nil {
		t.Fatal(err)
	}
	require.Eventually(t, func() bool {
		return slices.Contains(pair.a.Realm(pair.realm).Members(), pair.b.ID()) &&
			slices.Contains(pair.b.Realm(pair.realm).Members(), pair.a.ID())
	}, 20*time.Second, 10*time.Millisecond, "a and b did not become members of each other's realm")
	return pair
}

// inspect runs `realmnet inspect --addr URL args...` and returns its
// output, failing the test on an error.
func inspect(t *testing.T, url string, args ...string) string {
	t.Helper()
	stdout, stderr, err := execute(t, append([]string{"inspect", "--addr", url}, args...)...)
	if err != nil {
		t.Fatalf("inspect %v: %v\nstderr:\n%s", args, err, stderr)
	}
	return stdout
}

// wantLines fails the test unless text has, for each of want, a line
// holding all its parts.
func wantLines(t *testing.T, what, text string, want ...[]string) {
	t.Helper()
	for _, parts := range want {
		found := false
		for line := range strings.Lines(text) {
			found = found || containsAll(line, parts)
		}
		if !found {
			t.Errorf("%s has no line with %q:\n%s", what, parts, text)
		}
	}
}

func containsAll(text string, parts []string) bool {
	for _, part := range parts {
		if !strings.Contains(text, part) {
			return false
		}
	}
	return true
}

// TestInspectViews: every view of a node in a realm with one connected
// member, as a table (the member's short ID, the paths' connection IDs,
// the realm's name, the pools' names) and as JSON.
func TestInspectViews(t *testing.T) {
	pair := newObservedPair(t)
	a, b, url := pair.a, pair.b, pair.a.DebugURL()
	bShort := shortPeerID(b.ID().String())
	conns := a.Connections(b.ID())
	if len(conns) == 0 {
		t.Fatal("a has no connection to b")
	}

	text := inspect(t, url, "node")
	wantLines(t, "inspect node", text, []string{"id:", a.ID().String()}, []string{"version:", node.Version()},
		[]string{"peers:", "1"}, []string{"listen addrs:", "/ip4/127.0.0.1/udp/"}, []string{"uptime:"})

	text = inspect(t, url, "peers")
	wantLines(t, "inspect peers", text,
		[]string{"PEER", "CONNECTEDNESS", "PATHS", "RTT", "REALMS", "POOLS", "BREAKER", "QUALITY"},
		[]string{bShort, "Connected", pair.realm, "realm:" + pair.realm, "closed", " ms"})
	if strings.Contains(text, b.ID().String()) {
		t.Errorf("inspect peers shows b's full ID without --wide:\n%s", text)
	}
	wantColumnsAligned(t, "inspect peers", text)
	wantLines(t, "inspect peers --wide", inspect(t, url, "peers", "--wide"), []string{b.ID().String(), "Connected"})

	text = inspect(t, url, "paths")
	wantLines(t, "inspect paths", text, []string{"PEER", "CONN", "STATE", "TIER", "DIR", "SEL", "SRTT", "LOSS", "STREAMS", "REMOTE"})
	for _, c := range conns {
		wantLines(t, "inspect paths", text, []string{bShort, c.ID(), "direct", c.RemoteMultiaddr().String()})
	}
	wantLines(t, "inspect paths", text, []string{bShort, " * "})
	wantColumnsAligned(t, "inspect paths", text)
	wantLines(t, "inspect paths --peer", inspect(t, url, "paths", "--peer", b.ID().String()), []string{conns[0].ID()})
	if text := inspect(t, url, "paths", "--peer", testkit.PeerID(t).String()); strings.TrimSpace(text) != "(none)" {
		t.Errorf("inspect paths --peer of an unknown peer printed %q, want (none)", text)
	}

	text = inspect(t, url, "pools")
	wantLines(t, "inspect pools", text, []string{"POOL", "SIZE", "LOW", "HIGH", "FILL", "TRIMMED", "REFUSED"},
		[]string{"global", "["}, []string{"unassigned", "["}, []string{"realm:" + pair.realm, "["})
	wantColumnsAligned(t, "inspect pools", text)

	text = inspect(t, url, "realms")
	wantLines(t, "inspect realms", text, []string{"REALM", "MEMBER", "SINCE", "PATHS"},
		[]string{pair.realm, bShort, " ago"})

	// The node records events as its bus delivers them: poll.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		text = inspect(t, url, "events")
		if strings.Contains(text, "member_joined") && strings.Contains(text, "connection_opened") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("inspect events lacks member_joined or connection_opened after 10s:\n%s", text)
		}
	}
	wantLines(t, "inspect events", text, []string{"TIME", "TYPE", "PEER", "TEXT"},
		[]string{" ago", "member_joined", bShort, "realm " + pair.realm},
		[]string{" ago", "connection_opened", bShort, conns[0].ID()})

	text = inspect(t, url, "health")
	wantLines(t, "inspect health", text, []string{"PEER", "BREAKER", "OPEN UNTIL", "QUALITY", "FAILURES"},
		[]string{bShort, "closed", "-", "0"})

	// --json: the API's answer, indented, with its fields.
	nodeView := decodeJSON[debugapi.NodeView](t, "inspect node --json", inspect(t, url, "node", "--json"))
	if nodeView.ID != a.ID().String() || nodeView.Peers != 1 || len(nodeView.ListenAddrs) == 0 {
		t.Errorf("inspect node --json: %+v", nodeView)
	}
	output := inspect(t, url, "--json", "peers")
	if !strings.Contains(output, "\n  {") {
		t.Errorf("inspect peers --json is not indented:\n%s", output)
	}
	peers := decodeJSON[[]debugapi.PeerView](t, "inspect peers --json", output)
	if len(peers) != 1 || peers[0].ID != b.ID().String() || !slices.Equal(peers[0].Realms, []string{pair.realm}) {
		t.Errorf("inspect peers --json: %+v", peers)
	}
	paths := decodeJSON[[]debugapi.PathView](t, "inspect paths --json", inspect(t, url, "paths", "--json"))
	for _, c := range conns {
		if !slices.ContainsFunc(paths, func(p debugapi.PathView) bool { return p.ConnID == c.ID() && p.Peer == b.ID().String() }) {
			t.Errorf("inspect paths --json lacks %s: %+v", c.ID(), paths)
		}
	}
	pools := decodeJSON[[]debugapi.PoolView](t, "inspect pools --json", inspect(t, url, "pools", "--json"))
	for _, name := range []string{"global", "unassigned", "realm:" + pair.realm} {
		if !slices.ContainsFunc(pools, func(p debugapi.PoolView) bool { return string(p.Name) == name && p.HighWater > 0 }) {
			t.Errorf("inspect pools --json lacks %s: %+v", name, pools)
		}
	}
	realms := decodeJSON[[]debugapi.RealmView](t, "inspect realms --json", inspect(t, url, "realms", "--json"))
	if len(realms) != 1 || realms[0].Name != pair.realm || len(realms[0].Members) != 1 || realms[0].Members[0].Peer != b.ID().String() {
		t.Errorf("inspect realms --json: %+v", realms)
	}
	events := decodeJSON[[]debugapi.EventView](t, "inspect events --json", inspect(t, url, "events", "--json"))
	if !slices.ContainsFunc(events, func(e debugapi.EventView) bool { return e.Type == "member_joined" && e.Peer == b.ID().String() }) {
		t.Errorf("inspect events --json lacks b's member_joined: %+v", events)
	}
	health := decodeJSON[[]debugapi.PeerHealthView](t, "inspect health --json", inspect(t, url, "health", "--json"))
	if len(health) != 1 || health[0].Peer != b.ID().String() || health[0].Breaker != debugapi.BreakerClosed {
		t.Errorf("inspect health --json: %+v", health)
	}
}

// wantColumnsAligned fails the test unless every column of the table in
// text starts, on every row, where its header does: the header's words are
// the columns (a header of two words, "OPEN UNTIL", is not used here).
func wantColumnsAligned(t *testing.T, what, text string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	var starts []int
	for index, r := range []rune(lines[0]) {
		if r != ' ' && (index == 0 || []rune(lines[0])[index-1] == ' ') {
			starts = append(starts, index)
		}
	}
	for _, line := range lines[1:] {
		runes := []rune(line)
		for _, start := range starts[1:] {
			if start >= len(runes) || runes[start] == ' ' || runes[start-1] != ' ' {
				t.Errorf("%s: the row %q has no cell starting at column %d, as its header does:\n%s", what, line, start, text)
				break
			}
		}
	}
}

// freeLoopbackURL returns the URL of a loopback TCP port nothing listens
// on (bound, then closed).
func freeLoopbackURL(t *testing.T) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + listener.Addr().String()
	if err := listener.Close(); err != nil {
		t.Fatal(err)
	}
	return url
}

// TestInspectUnreachable: a port nothing listens on gives an error naming
// the URL and how to start a debug endpoint; $REALMNET_DEBUG_ADDR replaces
// --addr's default and is named when it is the one used.
func TestInspectUnreachable(t *testing.T) {
	url := freeLoopbackURL(t)
	stdout, _, err := execute(t, "inspect", "--addr", url, "node")
	wantErrorNaming(t, "inspect node on a closed port", err, url, "cannot reach", "realmnet run --debug-addr", "--addr")
	if stdout != "" {
		t.Errorf("inspect printed %q", stdout)
	}
	// A bare HOST:PORT, from the environment.
	t.Setenv(debugAddrEnv, strings.TrimPrefix(url, "http://"))
	_, _, err = execute(t, "inspect", "peers")
	wantErrorNaming(t, "inspect peers with $"+debugAddrEnv, err, url, "$"+debugAddrEnv)
	// --addr wins over the environment.
	_, _, err = execute(t, "inspect", "--addr", "ftp://127.0.0.1:1", "peers")
	wantErrorNaming(t, "inspect --addr ftp://", err, "--addr", "ftp://127.0.0.1:1", "http")
}

// TestInspectUsageErrors: no view, an unknown view, an argument too many
// and a --peer that is not a peer ID are cobra's usage errors or name the
// value, before any request.
func TestInspectUsageErrors(t *testing.T) {
	url := freeLoopbackURL(t)
	for _, test := range []struct {
		args  []string
		names []string
	}{
		{[]string{"inspect"}, []string{"node, peers, paths"}},
		{[]string{"inspect", "bogus"}, []string{"unknown command", "bogus"}},
		{[]string{"inspect", "--addr", url, "node", "extra"}, []string{"unknown command", "extra"}},
		{[]string{"inspect", "--addr", url, "paths", "--peer", "nope"}, []string{"--peer", "nope", "not a peer ID"}},
		{[]string{"inspect", "--addr", url, "peers", "--bogus"}, []string{"unknown flag", "--bogus"}},
		{[]string{"inspect", "--addr", url, "--timeout", "0s", "node"}, []string{"--timeout", "0s"}},
	} {
		_, _, err := execute(t, test.args...)
		wantErrorNaming(t, strings.Join(test.args, " "), err, test.names...)
		if err != nil && strings.Contains(err.Error(), "cannot reach") {
			t.Errorf("%v sent a request before checking its arguments: %v", test.args, err)
		}
	}
}

// writeTokenFile writes token to a new file of mode 0600 and returns its
// path.
func writeTokenFile(t *testing.T, token string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "debug.token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestInspectWithToken: an endpoint with a token answers 401 without it,
// which inspect turns into an error naming --token-file, refuses a wrong
// token, and answers with the right one.
func TestInspectWithToken(t *testing.T) {
	const token = "the debug token of this test"
	n := testnode.New(t, node.DebugAddr("127.0.0.1:0"), node.DebugToken(token))
	url := n.DebugURL()

	_, _, err := execute(t, "inspect", "--addr", url, "node")
	wantErrorNaming(t, "inspect without --token-file", err, url, "requires a token", "--token-file")

	wrong := writeTokenFile(t, "not the debug token of this test")
	_, _, err = execute(t, "inspect", "--addr", url, "--token-file", wrong, "node")
	wantErrorNaming(t, "inspect with a wrong token", err, url, wrong, "refused the token")

	right := writeTokenFile(t, token)
	text := inspect(t, url, "node", "--token-file", right)
	wantLines(t, "inspect node --token-file", text, []string{"id:", n.ID().String()})
	if strings.Contains(text, token) {
		t.Errorf("inspect printed the token:\n%s", text)
	}
}

// TestTableFormats: the human units of the tables.
func TestTableFormats(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, test := range []struct{ got, want string }{
		{shortPeerID("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"), "12D3KooW…6nXTN"},
		{shortPeerID("short"), "short"},
		{formatRTT(0), "-"},
		{formatRTT(12.345), "12.3 ms"},
		{formatLoss(0.0123), "1.2%"},
		{formatBytes(512), "512 B"},
		{formatBytes(1536), "1.5 KiB"},
		{formatBytes(3 << 20), "3.0 MiB"},
		{formatBytes(5 << 30), "5.0 GiB"},
		{formatAgo(time.Time{}, now), "-"},
		{formatAgo(now.Add(-3*time.Second-400*time.Millisecond), now), "3s ago"},
		{formatAgo(now.Add(-4*time.Minute-12*time.Second), now), "4m12s ago"},
		{formatAgo(now.Add(-3*time.Hour-4*time.Minute), now), "3h04m ago"},
		{formatAgo(now.Add(-50*time.Hour), now), "2d02h ago"},
		{formatAgo(now.Add(12*time.Second), now), "in 12s"},
		{fillBar(0, 100), "[..........]"},
		{fillBar(50, 100), "[#####.....]"},
		{fillBar(150, 100), "[##########]"},
		{fillBar(3, 0), "[..........]"},
		{formatElapsed(3.34), "3.3 ms"},
		{formatElapsed(5001.2), "5.0 s"},
		{cell(" a\nb\tc\r\n"), "a; b c"},
		// A terminal escape sequence a remote peer put in an address.
		{cell("/dns4/\x1b[2Jevil/udp/1/quic-v1"), `/dns4/\x1b[2Jevil/udp/1/quic-v1`},
	} {
		if test.got != test.want {
			t.Errorf("got %q, want %q", test.got, test.want)
		}
	}
}
