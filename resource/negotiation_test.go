package resource_test

import (
	"errors"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/resource"
)

// TestUntrustedStreamsInNegotiationAreCapped proves the split of rcmgr's
// transient inbound streams: an untrusted peer holds at most
// UntrustedNegotiatingPerPeer streams in negotiation, untrusted peers
// together at most UntrustedNegotiatingShare percent of the limit, trusted
// peers are not counted, and a stream's count is released when its
// protocol is set or when it is done (so the share drains).
func TestUntrustedStreamsInNegotiationAreCapped(t *testing.T) {
	var cfg resource.Config
	cfg.PartialLimitConfig.Transient.StreamsInbound = 100
	cfg.PartialLimitConfig.Transient.Streams = 200
	m, err := resource.New(cfg, nil)
	require.NoError(t, err)
	defer m.Close()
	trusted := testkit.PeerID(t)
	m.SetTrusted(func(p peer.ID) bool { return p == trusted })

	open := func(p peer.ID) (network.StreamManagementScope, error) { return m.OpenStream(p, network.DirInbound) }
	one := testkit.PeerID(t)
	var held []network.StreamManagementScope
	for range resource.UntrustedNegotiatingPerPeer {
		s, err := open(one)
		require.NoError(t, err)
		held = append(held, s)
	}
	_, err = open(one)
	var ne *resource.NegotiationError
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.PerPeer)
	require.ErrorIs(t, err, network.ErrResourceLimitExceeded)

	// Fresh peers fill the share (50 of 100) and no more.
	share := 100 * resource.UntrustedNegotiatingShare / 100
	for len(held) < share {
		s, err := open(testkit.PeerID(t))
		require.NoError(t, err)
		held = append(held, s)
	}
	_, err = open(testkit.PeerID(t))
	require.ErrorAs(t, err, &ne)
	require.False(t, ne.PerPeer)
	require.Equal(t, share, ne.Limit)
	require.Equal(t, uint64(2), m.NegotiationRefused())

	// A trusted peer still gets the other half.
	for i := range 100 - share {
		s, err := open(trusted)
		require.NoError(t, err, "trusted stream %d", i)
		defer s.Done()
	}
	_, err = open(trusted)
	require.ErrorIs(t, err, network.ErrResourceLimitExceeded, "rcmgr's own limit still holds")
	require.False(t, errors.As(err, &ne), "the refusal is rcmgr's, not the split's")

	// Negotiated streams leave the count; done ones too.
	require.NoError(t, held[0].SetProtocol("/test/1.0.0"))
	held[0].Done()
	held[1].Done()
	held[1].Done() // idempotent release
	for range 2 {
		s, err := open(testkit.PeerID(t))
		require.NoError(t, err)
		defer s.Done()
	}
	for _, s := range held[2:] {
		s.Done()
	}
	st := m.Stat()
	require.Equal(t, 2+(100-share), st.Rcmgr.Transient.NumStreamsInbound)
}
