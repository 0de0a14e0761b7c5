package gater_test

import (
	"context"
	"errors"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/gater"
	"github.com/realmnet/realmnet/hooks"
)

// movedDecisions gathers g's collector and returns its series of
// realmnet_gater_decisions_total that are not zero, keyed
// "stage outcome rule".
func movedDecisions(t *testing.T, g *gater.Gater) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(g.Collector()))
	families, err := reg.Gather()
	require.NoError(t, err)
	moved := make(map[string]float64)
	for _, f := range families {
		require.Equal(t, "realmnet_gater_decisions_total", f.GetName())
		for _, m := range f.GetMetric() {
			if v := m.GetCounter().GetValue(); v != 0 {
				labels := make(map[string]string)
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				moved[labels["stage"]+" "+labels["outcome"]+" "+labels["rule"]] = v
			}
		}
	}
	return moved
}

func TestMetricsSeriesAndLint(t *testing.T) {
	g := newGater(t, nil, nil)
	c := g.Collector()
	// Allowed for each of the 5 stages, and the denials each can make:
	// peer_dial 2, addr_dial 3, accept 2, admit 5, upgraded 5.
	require.Equal(t, 5+2+3+2+5+5, testutil.CollectAndCount(c, "realmnet_gater_decisions_total"))
	problems, err := testutil.CollectAndLint(c)
	require.NoError(t, err)
	require.Empty(t, problems)
	require.Empty(t, movedDecisions(t, g), "every series starts at zero")
}

// admitBoth runs AdmitConn and InterceptUpgraded for a connection of p from
// remote; it reports whether they admitted it (they decide alike).
func admitBoth(t *testing.T, g *gater.Gater, p peer.ID, remote string) bool {
	t.Helper()
	c := newConn(p, network.DirInbound, quic(t, remote))
	err := g.AdmitConn(t.Context(), c)
	upgraded, _ := g.InterceptUpgraded(c)
	require.Equal(t, err == nil, upgraded)
	return upgraded
}

func TestMetricsAllowed(t *testing.T) {
	g := newGater(t, nil, nil)
	p := testPeer(t, 1)
	require.True(t, g.InterceptPeerDial(p))
	require.NoError(t, g.CheckPeerDial(p))
	require.True(t, g.InterceptAddrDial(p, quic(t, peerAddr)))
	require.True(t, g.InterceptAccept(inbound(quic(t, peerAddr))))
	require.True(t, g.InterceptSecured(network.DirInbound, p, inbound(quic(t, peerAddr))))
	require.True(t, admitBoth(t, g, p, peerAddr))
	require.Equal(t, map[string]float64{
		"peer_dial allowed none": 2,
		"addr_dial allowed none": 1,
		"accept allowed none":    1,
		"admit allowed none":     1,
		"upgraded allowed none":  1,
	}, movedDecisions(t, g), "InterceptSecured decides nothing and counts nothing")
}

func TestMetricsBlockedPeer(t *testing.T) {
	g := newGater(t, nil, nil)
	p := testPeer(t, 1)
	require.NoError(t, g.BlockPeer(p))
	require.False(t, g.InterceptPeerDial(p))
	require.False(t, admitBoth(t, g, p, peerAddr))
	require.Equal(t, map[string]float64{
		"peer_dial denied blocked_peer": 1,
		"admit denied blocked_peer":     1,
		"upgraded denied blocked_peer":  1,
	}, movedDecisions(t, g))
}

func TestMetricsBlockedAddr(t *testing.T) {
	g := newGater(t, nil, nil)
	p := testPeer(t, 1)
	require.NoError(t, g.BlockAddr(ip(t, "198.51.100.7")))
	require.NoError(t, g.BlockSubnet(cidr(t, "198.51.100.0/24")))
	// The address has a rule of its own and is in a blocked subnet: the
	// address rule is named.
	require.False(t, g.InterceptAddrDial(p, quic(t, "198.51.100.7")))
	require.False(t, g.InterceptAccept(inbound(quic(t, "198.51.100.7"))))
	require.False(t, admitBoth(t, g, p, "198.51.100.7"))
	require.Equal(t, map[string]float64{
		"addr_dial denied blocked_addr": 1,
		"accept denied blocked_addr":    1,
		"admit denied blocked_addr":     1,
		"upgraded denied blocked_addr":  1,
	}, movedDecisions(t, g))
}

func TestMetricsBlockedSubnet(t *testing.T) {
	g := newGater(t, nil, nil)
	p := testPeer(t, 1)
	require.NoError(t, g.BlockSubnet(cidr(t, "198.51.100.0/24")))
	require.NoError(t, g.AllowAddr(ip(t, "198.51.100.9")))
	require.False(t, g.InterceptAddrDial(p, quic(t, "198.51.100.8")))
	require.False(t, g.InterceptAccept(inbound(quic(t, "198.51.100.8"))))
	require.False(t, admitBoth(t, g, p, "198.51.100.8"))
	// An allow rule inside the subnet wins: an allowed decision.
	require.True(t, g.InterceptAccept(inbound(quic(t, "198.51.100.9"))))
	require.Equal(t, map[string]float64{
		"addr_dial denied blocked_subnet": 1,
		"accept denied blocked_subnet":    1,
		"admit denied blocked_subnet":     1,
		"upgraded denied blocked_subnet":  1,
		"accept allowed none":             1,
	}, movedDecisions(t, g))
}

func TestMetricsPeerPolicyAndHooks(t *testing.T) {
	reg := newRegistry(t)
	g := newGater(t, nil, reg)
	p, member := testPeer(t, 1), testPeer(t, 2)
	g.SetPeerPolicy(func(q peer.ID) bool { return q == member })
	require.ErrorIs(t, g.CheckPeerDial(p), gater.ErrPeerPolicy)
	require.False(t, admitBoth(t, g, p, peerAddr))

	reg.OnBeforeConnect(func(context.Context, hooks.ConnectAttempt) error { return errors.New("not today") })
	require.ErrorIs(t, g.CheckAddrDial(member, quic(t, peerAddr)), hooks.ErrRejected)
	require.False(t, admitBoth(t, g, member, peerAddr), "the inbound BeforeConnect hook rejects")
	require.Equal(t, map[string]float64{
		"peer_dial denied peer_policy": 1,
		"admit denied peer_policy":     1,
		"upgraded denied peer_policy":  1,
		"addr_dial denied hook":        1,
		"admit denied hook":            1,
		"upgraded denied hook":         1,
	}, movedDecisions(t, g))
}
