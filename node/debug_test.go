package node_test

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/debugapi"
	"github.com/realmnet/realmnet/internal/browser"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

// realmTrio is three nodes with debug endpoints, all members of one closed
// realm, each connected to the other two.
type realmTrio struct {
	nodes []*node.Node
	realm string
	psk   []byte
}

func newRealmTrio(t *testing.T) realmTrio {
	t.Helper()
	tr := realmTrio{realm: "observatory", psk: []byte("a pre-shared key of the observatory realm")}
	ctx := testkit.Context(t, 30*time.Second)
	for range 3 {
		tr.nodes = append(tr.nodes, testnode.New(t, node.DebugAddr("127.0.0.1:0")))
	}
	for i, n := range tr.nodes {
		var peers []peer.AddrInfo
		for _, other := range tr.nodes[:i] {
			peers = append(peers, other.AddrInfo())
		}
		_, err := n.JoinRealm(ctx, tr.realm, realm.PSK(tr.psk), realm.Peers(peers...))
		require.NoError(t, err)
	}
	for _, n := range tr.nodes {
		require.Eventually(t, func() bool { return len(n.Realm(tr.realm).Members()) == 2 }, 20*time.Second, 10*time.Millisecond,
			"%s did not see both other members", n.ID())
	}
	return tr
}

// TestDebugEndpointServesTheNode: the JSON API of a node in a 3-node realm
// shows the node, its two peers with their paths, its pools, the realm and
// its members, its recent events and its peers' health; /metrics serves
// the node's own registry; no realm key material appears in any answer.
func TestDebugEndpointServesTheNode(t *testing.T) {
	tr := newRealmTrio(t)
	a := tr.nodes[0]
	require.True(t, strings.HasPrefix(a.DebugURL(), "http://127.0.0.1:"), a.DebugURL())
	client, err := debugapi.NewClient(a.DebugURL(), "")
	require.NoError(t, err)
	ctx := testkit.Context(t, 20*time.Second)

	nv, err := client.Node(ctx)
	require.NoError(t, err)
	require.Equal(t, a.ID().String(), nv.ID)
	require.Equal(t, 2, nv.Peers)
	require.NotEmpty(t, nv.ListenAddrs)

	peers, err := client.Peers(ctx)
	require.NoError(t, err)
	seen := map[string]debugapi.PeerView{}
	for _, p := range peers {
		seen[p.ID] = p
	}
	for _, other := range tr.nodes[1:] {
		pv, ok := seen[other.ID().String()]
		require.True(t, ok, "peer %s missing from /v1/peers", other.ID())
		require.Equal(t, []string{tr.realm}, pv.Realms)
		require.Positive(t, pv.Paths)
	}

	paths, err := client.Paths(ctx, "")
	require.NoError(t, err)
	for _, other := range tr.nodes[1:] {
		for _, c := range a.Connections(other.ID()) {
			found := false
			for _, pv := range paths {
				found = found || pv.ConnID == c.ID()
			}
			require.True(t, found, "path %s missing", c.ID())
		}
	}

	pools, err := client.Pools(ctx)
	require.NoError(t, err)
	poolNames := map[string]int{}
	for _, pv := range pools {
		poolNames[string(pv.Name)] = pv.Size
	}
	require.Equal(t, a.ConnectionCount(), poolNames["global"])
	require.Contains(t, poolNames, "realm:"+tr.realm)

	realms, err := client.Realms(ctx)
	require.NoError(t, err)
	require.Len(t, realms, 1)
	require.Equal(t, tr.realm, realms[0].Name)
	require.Len(t, realms[0].Members, 2)

	require.Eventually(t, func() bool {
		events, err := client.Events(ctx)
		if err != nil {
			return false
		}
		kinds := map[string]bool{}
		for _, e := range events {
			kinds[e.Type] = true
		}
		return kinds["connection_opened"] && kinds["member_joined"] && kinds["path_selected"]
	}, 10*time.Second, 20*time.Millisecond, "recent events lack connections, paths or members")

	hv, err := client.Health(ctx)
	require.NoError(t, err)
	require.Len(t, hv, 2)
	for _, h := range hv {
		require.Equal(t, debugapi.BreakerClosed, h.Breaker)
		require.Positive(t, h.Quality)
	}

	// /metrics: the node's own registry, labelled with its ID.
	body := get(t, a.DebugURL()+"/metrics")
	require.Contains(t, body, `realmnet_pool_connections{node="`+a.ID().String()+`",pool="global"}`)

	// No key material anywhere: the PSK in any of its usual spellings.
	for _, path := range []string{"/", "/v1/node", "/v1/peers", "/v1/paths", "/v1/pools", "/v1/realms", "/v1/events", "/v1/health", "/metrics",
		"/v1/doctor/" + tr.nodes[1].ID().String()} {
		body := get(t, a.DebugURL()+path)
		for _, form := range []string{string(tr.psk), hex.EncodeToString(tr.psk), base64.StdEncoding.EncodeToString(tr.psk), base64.RawURLEncoding.EncodeToString(tr.psk)} {
			require.NotContains(t, body, form, "%s shows the realm's PSK", path)
		}
	}
}

// get returns the body of a GET of url, which must answer 200.
func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", url, body)
	return string(body)
}

// TestDebugPageInBrowser: headless Chromium loads the live page of a node
// in a 3-node realm and finds, in the rendered DOM, each peer ID, each path
// and the realm's name; a screenshot is saved as a test artifact.
func TestDebugPageInBrowser(t *testing.T) {
	ctx := browser.Start(t)
	tr := newRealmTrio(t)
	a := tr.nodes[0]

	ctx, cancel := context.WithTimeout(ctx, browser.Timeout)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.NavigateResponse(a.DebugURL()+"/"))
	require.NoError(t, err)
	selectors := []string{`[data-realm="` + tr.realm + `"]`}
	for _, n := range tr.nodes {
		selectors = append(selectors, `[data-peer="`+n.ID().String()+`"]`)
	}
	for _, other := range tr.nodes[1:] {
		for _, c := range a.Connections(other.ID()) {
			selectors = append(selectors, `[data-path="`+c.ID()+`"]`)
		}
	}
	for _, sel := range selectors {
		require.NoError(t, chromedp.Do(ctx, chromedp.WaitReady(chromedp.CSS(sel))), "the page shows no %s", sel)
	}
	browser.Screenshot(t, ctx, "node-debug-page")
}

// TestDebugAddrNeedsATokenOffLoopback: a debug endpoint on a non-loopback
// address needs a token — New fails without one, naming the address — and
// then refuses requests without it.
func TestDebugAddrNeedsATokenOffLoopback(t *testing.T) {
	ctx := testkit.Context(t, 20*time.Second)
	_, err := node.New(ctx, node.ListenAddrStrings(testkit.Loopback), node.DebugAddr("0.0.0.0:0"))
	require.ErrorContains(t, err, "0.0.0.0:0")

	_, err = node.New(ctx, node.DebugToken("short"))
	require.ErrorContains(t, err, "DebugToken")
	_, err = node.New(ctx, node.DebugToken("a token of at least sixteen bytes\n"))
	require.ErrorContains(t, err, "DebugToken")
	_, err = node.New(ctx, node.DebugAddr("no-port"))
	require.ErrorContains(t, err, "no-port")

	const token = "a token of at least sixteen bytes"
	n := testnode.New(t, node.DebugAddr("0.0.0.0:0"), node.DebugToken(token))
	url := strings.Replace(n.DebugURL(), "0.0.0.0", "127.0.0.1", 1)
	url = strings.Replace(url, "[::]", "127.0.0.1", 1)
	resp, err := http.Get(url + "/v1/node")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	client, err := debugapi.NewClient(url, token)
	require.NoError(t, err)
	nv, err := client.Node(ctx)
	require.NoError(t, err)
	require.Equal(t, n.ID().String(), nv.ID)
}

// TestDoctor: the doctor explains a connected peer, a peer the gater
// blocks (the verdict names the rule), and an unknown peer.
func TestDoctor(t *testing.T) {
	a := testnode.New(t, node.DebugAddr("127.0.0.1:0"))
	b := testnode.New(t)
	blocked := testnode.New(t)
	ctx := testkit.Context(t, 30*time.Second)
	require.NoError(t, a.Connect(ctx, b.AddrInfo()))
	client, err := debugapi.NewClient(a.DebugURL(), "")
	require.NoError(t, err)

	rep, err := client.Doctor(ctx, b.ID().String())
	require.NoError(t, err)
	require.True(t, rep.Known)
	require.Equal(t, "Connected", rep.Connectedness)
	require.True(t, strings.HasPrefix(rep.Verdict, "connected"), rep.Verdict)
	require.NotEmpty(t, rep.Paths)
	require.NotNil(t, rep.Health)
	require.Empty(t, rep.Dials, "a connected peer is not dialed")
	for _, av := range rep.Addresses {
		// kad-dht's FindPeer answers with the peerstore's addresses:
		// only an address the lookup added is the DHT's.
		require.NotContains(t, av.Sources, "dht", "%s", av.Addr)
	}

	a.Host().Peerstore().AddAddrs(blocked.ID(), blocked.Addrs(), time.Hour)
	require.NoError(t, a.Gater().BlockPeer(blocked.ID()))
	rep, err = client.Doctor(ctx, blocked.ID().String())
	require.NoError(t, err)
	require.Contains(t, rep.Verdict, "blocked peer", rep.Verdict)
	require.Empty(t, rep.Dials, "a blocked peer is not dialed")
	require.Equal(t, "denied", rep.Decisions[0].Outcome)

	// A peer whose every address is in a blocked subnet.
	fenced := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.4/udp/0/quic-v1"))
	a.Host().Peerstore().AddAddrs(fenced.ID(), fenced.Addrs(), time.Hour)
	_, subnet, err := net.ParseCIDR("127.0.0.4/32")
	require.NoError(t, err)
	require.NoError(t, a.Gater().BlockSubnet(subnet))
	rep, err = client.Doctor(ctx, fenced.ID().String())
	require.NoError(t, err)
	require.Contains(t, rep.Verdict, "blocked subnet 127.0.0.4/32", rep.Verdict)
	require.Empty(t, rep.Dials)

	unknown := testnode.New(t).ID() // never told to a
	rep, err = client.Doctor(ctx, unknown.String())
	require.NoError(t, err)
	require.False(t, rep.Known)
	require.True(t, strings.HasPrefix(rep.Verdict, "unknown peer"), rep.Verdict)

	_, err = client.Doctor(ctx, "not-a-peer-id")
	var apiErr *debugapi.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusBadRequest, apiErr.Status)
}
