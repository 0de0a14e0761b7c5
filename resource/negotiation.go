package resource

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Inbound streams wait in rcmgr's transient scope until their protocol is
// negotiated (go-libp2p's host gives them 10 s). That scope is one for the
// whole node: a few peers that open streams and never finish the
// multistream header could fill it (504 inbound streams on a 2-core
// machine) and every other peer's streams — realm members' included — were
// reset for as long as they stalled. Peer IDs are free, so a per-peer limit
// alone does not help. The manager therefore splits the transient scope's
// inbound streams: untrusted peers (not a realm member, not allowlisted,
// not a bootstrap peer: the node says who is trusted with SetTrusted) may
// hold at most UntrustedNegotiatingPerPeer of them each and
// UntrustedNegotiatingShare percent of the scope's limit together, so the
// rest is always there for trusted peers.
const (
	// UntrustedNegotiatingPerPeer is how many inbound streams one untrusted
	// peer may have in protocol negotiation at once. go-libp2p's host
	// negotiates a stream in one round trip; 32 leaves room for a burst of
	// DHT queries or pings from an honest peer.
	UntrustedNegotiatingPerPeer = 32
	// UntrustedNegotiatingShare is the percentage of rcmgr's transient
	// inbound stream limit that untrusted peers may hold together.
	UntrustedNegotiatingShare = 50
)

// negotiation counts the untrusted inbound streams in negotiation. Its
// per-peer map only holds peers with streams in negotiation (at most
// share entries), so it cannot grow with the number of peers.
type negotiation struct {
	trusted func(peer.ID) bool // nil: nobody is trusted specially

	mu      sync.Mutex
	share   int // 0: no split (the transient scope is unlimited)
	total   int
	perPeer map[peer.ID]int
	refused uint64
}

// SetTrusted sets who is trusted (realm members, allowlisted and bootstrap
// peers): their inbound streams in negotiation are not counted against the
// untrusted peers' share. trusted is called on every inbound stream, from
// many goroutines, and must be fast and safe for concurrent use. nil trusts
// nobody. Safe for concurrent use.
func (m *Manager) SetTrusted(trusted func(peer.ID) bool) {
	m.negotiation.mu.Lock()
	m.negotiation.trusted = trusted
	m.negotiation.mu.Unlock()
}

// NegotiationRefused counts the inbound streams refused because an
// untrusted peer, or untrusted peers together, held their share of the
// streams in negotiation. Safe for concurrent use.
func (m *Manager) NegotiationRefused() uint64 {
	m.negotiation.mu.Lock()
	defer m.negotiation.mu.Unlock()
	return m.negotiation.refused
}

// NegotiationError says why an untrusted peer's inbound stream was refused;
// it matches network.ErrResourceLimitExceeded.
type NegotiationError struct {
	Peer peer.ID
	// PerPeer is true when the peer held UntrustedNegotiatingPerPeer
	// streams, false when untrusted peers together held their share.
	PerPeer bool
	Limit   int
}

func (e *NegotiationError) Error() string {
	if e.PerPeer {
		return fmt.Sprintf("resource: untrusted peer %s has %d inbound streams in negotiation already", e.Peer, e.Limit)
	}
	return fmt.Sprintf("resource: untrusted peers hold their %d inbound streams in negotiation", e.Limit)
}

func (e *NegotiationError) Unwrap() error { return network.ErrResourceLimitExceeded }

// OpenStream is rcmgr's OpenStream; an inbound stream of an untrusted peer
// is first counted against the untrusted share (see SetTrusted) and
// refused with a *NegotiationError when it is full. The count is released
// once the stream's protocol is set, or when the stream is done.
func (m *Manager) OpenStream(p peer.ID, dir network.Direction) (network.StreamManagementScope, error) {
	if dir != network.DirInbound {
		s, err := m.ResourceManager.OpenStream(p, dir)
		if err != nil {
			m.blocked.openRefused(err, dir, "stream", false)
		}
		return s, err
	}
	counted, err := m.negotiation.acquire(p)
	if err != nil {
		return nil, err
	}
	s, err := m.ResourceManager.OpenStream(p, dir)
	if err != nil {
		m.blocked.openRefused(err, dir, "stream", false)
		if counted {
			m.negotiation.release(p)
		}
		return nil, err
	}
	if !counted {
		return s, nil
	}
	return &negotiatingStream{StreamManagementScope: s, negotiation: &m.negotiation, peer: p}, nil
}

// acquire counts one untrusted inbound stream of p; false when p is trusted
// or there is no split (nothing was counted, nothing to release).
func (n *negotiation) acquire(p peer.ID) (counted bool, err error) {
	n.mu.Lock()
	trusted, share := n.trusted, n.share
	n.mu.Unlock()
	// trusted reaches other components' locks: not under n.mu.
	if share == 0 || (trusted != nil && trusted(p)) {
		return false, nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.perPeer[p] >= UntrustedNegotiatingPerPeer:
		n.refused++
		return false, &NegotiationError{Peer: p, PerPeer: true, Limit: UntrustedNegotiatingPerPeer}
	case n.total >= n.share:
		n.refused++
		return false, &NegotiationError{Peer: p, Limit: n.share}
	}
	n.perPeer[p]++
	n.total++
	return true, nil
}

// release gives back one stream counted by acquire for p.
func (n *negotiation) release(p peer.ID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.total--
	if n.perPeer[p]--; n.perPeer[p] <= 0 {
		delete(n.perPeer, p)
	}
}

// negotiatingStream releases its untrusted-share count when its protocol
// is set (it leaves the transient scope then) or when it is done.
type negotiatingStream struct {
	network.StreamManagementScope
	negotiation *negotiation
	peer        peer.ID
	released    atomic.Bool
}

// release gives the count back once (SetProtocol or Done, whichever is
// first; both may run concurrently).
func (s *negotiatingStream) release() {
	if s.released.CompareAndSwap(false, true) {
		s.negotiation.release(s.peer)
	}
}

func (s *negotiatingStream) SetProtocol(proto protocol.ID) error {
	if err := s.StreamManagementScope.SetProtocol(proto); err != nil {
		return err
	}
	s.release()
	return nil
}

func (s *negotiatingStream) Done() {
	s.release()
	s.StreamManagementScope.Done()
}
