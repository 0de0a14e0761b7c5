package realm

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"
)

// Realm relays. A member joined with the Relay option runs go-libp2p's
// circuit relay v2 service for the members of that realm only: its ACL
// (relay.ACLFilter) grants a reservation to a peer authenticated in a realm
// it relays for, and a circuit when both ends are authenticated in one.
// Everyone else is refused, so non-members can use the relay for nothing.
// Its circuits get DefaultRelayResources' limits (an hour and 1 GiB per
// circuit, where go-libp2p's public default is 2 minutes and 128 KiB).
//
// A member that is not publicly reachable (event.EvtLocalReachabilityChanged
// says private) reserves a slot on up to MaxRelayReservations members
// that serve the hop protocol, keeps the reservations refreshed, and puts
// the circuit addresses in the signed record it exchanges with that realm's
// members (and only theirs: non-members do not learn which relay a realm
// uses). Other members then reach it through the relay without any
// configured relay.

// MaxRelayReservations is how many realm relays a private member reserves
// a slot on at once (two, so that one relay's loss leaves a path; ours).
const MaxRelayReservations = 2

// Times of the reservation loop.
const (
	// relayReserveTimeout bounds one reservation request.
	relayReserveTimeout = 10 * time.Second
	// relayRefreshBefore is how long before its expiration a reservation
	// is renewed (go-libp2p's autorelay renews 2 minutes ahead too).
	relayRefreshBefore = 2 * time.Minute
	// relayBackoffMin and relayBackoffMax bound the wait after a relay
	// refused or failed a reservation (doubling from the first to the
	// second: a relay that has not admitted us yet is retried soon).
	relayBackoffMin = time.Second
	relayBackoffMax = time.Minute
	// relayExchangeFanout caps the members told of new relay addresses at
	// once, per realm; the others learn them through later exchanges.
	relayExchangeFanout = 32
)

// DefaultRelayResources are a realm relay's resources: go-libp2p's
// defaults (relay.DefaultResources) with circuits of up to an hour and
// 1 GiB in each direction, since only authenticated members use them.
func DefaultRelayResources() relay.Resources {
	rc := relay.DefaultResources()
	rc.Limit = &relay.RelayLimit{Duration: time.Hour, Data: 1 << 30}
	return rc
}

// Relay makes this member a relay for the realm's members (see the package
// notes on realm relays): the node should be publicly reachable. When the
// node runs a public relay service already (node.RelayService), that
// service relays for members as for anyone, with its own limits.
func Relay() Option {
	return func(c *Config) error {
		c.Relay = true
		return nil
	}
}

// relayServer is the realm relay service and the number of joined realms
// that want it; guarded by Service.relayMu.
type relayServer struct {
	relay  *relay.Relay
	realms int
}

// relayJoined starts the realm relay service with the first realm that
// asks for it (unless a public relay runs).
func (s *Service) relayJoined() {
	if s.deps.PublicRelay {
		return
	}
	s.relayMu.Lock()
	defer s.relayMu.Unlock()
	s.relayServer.realms++
	if s.relayServer.relay != nil {
		return
	}
	r, err := relay.New(s.deps.Host,
		relay.WithResources(DefaultRelayResources()),
		relay.WithACL(relayACL{s}),
		// Members reach the relay where they are: on the LAN, on
		// loopback in tests, as well as on public addresses.
		relay.WithReservationAddressFilter(func(a ma.Multiaddr) bool { return classify(a) != addrUnusable }))
	if err != nil {
		log.Errorw("realm relay not started", "error", err)
		return
	}
	s.relayServer.relay = r
}

// relayLeft stops the realm relay service when the last realm that asked
// for it is left.
func (s *Service) relayLeft() {
	if s.deps.PublicRelay {
		return
	}
	s.relayMu.Lock()
	defer s.relayMu.Unlock()
	s.relayServer.realms--
	if s.relayServer.realms > 0 || s.relayServer.relay == nil {
		return
	}
	_ = s.relayServer.relay.Close()
	s.relayServer.relay = nil
}

// relayACL is the realm relay's relay.ACLFilter.
type relayACL struct{ s *Service }

// AllowReserve grants a reservation to a peer authenticated in a realm this
// node relays for.
func (a relayACL) AllowReserve(p peer.ID, _ ma.Multiaddr) bool {
	for _, r := range a.s.joined() {
		if r.cfg.Relay && r.authenticated(p) {
			return true
		}
	}
	return false
}

// AllowConnect grants a circuit when both ends are authenticated in one
// realm this node relays for.
func (a relayACL) AllowConnect(src peer.ID, _ ma.Multiaddr, dest peer.ID) bool {
	for _, r := range a.s.joined() {
		if r.cfg.Relay && r.authenticated(src) && r.authenticated(dest) {
			return true
		}
	}
	return false
}

// reservation is a slot held on a realm relay.
type reservation struct {
	expires time.Time
	// addrs are this node's circuit addresses through the relay.
	addrs []ma.Multiaddr
}

// relayClient is the member side: reservations by relay and the relays
// backed off; guarded by Service.relayMu.
type relayClient struct {
	private      bool
	reservations map[peer.ID]reservation
	backoff      map[peer.ID]relayBackoff
	// announceAgain is when the circuit addresses are sent to the members
	// a second time (zero: not due): a member that exchanged with us less
	// than exchangeInterval before refuses the first announcement.
	announceAgain time.Time
}

type relayBackoff struct {
	until time.Time
	wait  time.Duration
}

// RelayAddrs returns this node's circuit addresses through the realm
// relays it holds a reservation on that are authenticated members of r:
// the addresses its signed record carries to r's members, in no particular
// order; empty while the node is publicly reachable or has no reservation.
// Safe for concurrent use.
func (r *Realm) RelayAddrs() []ma.Multiaddr { return r.svc.relayAddrs(r) }

// relayAddrs returns this node's circuit addresses through the relays
// that are authenticated members of r.
func (s *Service) relayAddrs(r *Realm) []ma.Multiaddr {
	s.relayMu.Lock()
	defer s.relayMu.Unlock()
	var out []ma.Multiaddr
	for relayID, rsv := range s.relayClient.reservations {
		if r.authenticated(relayID) {
			out = append(out, rsv.addrs...)
		}
	}
	return out
}

// keepRelayReservations runs the member side until the service closes:
// it reconsiders the reservations when reachability changes, when members
// join or leave or identify says what they serve, and when a reservation
// is due for renewal or a backoff ends. Owned by the service (wg).
func (s *Service) keepRelayReservations(sub event.Subscription) {
	defer s.wg.Done()
	defer sub.Close()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case e, ok := <-sub.Out():
			if !ok {
				return
			}
			s.relayMu.Lock()
			if r, isReachability := e.(event.EvtLocalReachabilityChanged); isReachability {
				s.relayClient.private = r.Reachability == network.ReachabilityPrivate
			} else if !s.relayClient.private && len(s.relayClient.reservations) == 0 {
				// A reachable node holds no reservation: members and
				// identify changes need no look (and cost nothing).
				s.relayMu.Unlock()
				continue
			}
			s.relayMu.Unlock()
		case <-timer.C:
		}
		next := s.updateReservations(s.ctx)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(max(0, time.Until(next)))
	}
}

// updateReservations drops reservations that no longer serve (public
// again, relay gone, expiring), makes new ones up to MaxRelayReservations
// on members that serve the hop protocol, tells members when the circuit
// addresses changed, and returns when to look again.
func (s *Service) updateReservations(ctx context.Context) time.Time {
	now := time.Now()
	next := now.Add(time.Hour)
	candidates := s.relayCandidates()

	s.relayMu.Lock()
	before := s.relayAddrSetLocked()
	for relayID, rsv := range s.relayClient.reservations {
		if !s.relayClient.private || !slices.Contains(candidates, relayID) || now.After(rsv.expires.Add(-relayRefreshBefore)) {
			delete(s.relayClient.reservations, relayID)
		}
	}
	var try []peer.ID
	if s.relayClient.private {
		for _, p := range candidates {
			if len(s.relayClient.reservations)+len(try) == MaxRelayReservations {
				break
			}
			if _, ok := s.relayClient.reservations[p]; ok {
				continue
			}
			if b, ok := s.relayClient.backoff[p]; ok && now.Before(b.until) {
				next = minTime(next, b.until)
				continue
			}
			try = append(try, p)
		}
	}
	s.relayMu.Unlock()

	for _, p := range try {
		rctx, cancel := context.WithTimeout(ctx, relayReserveTimeout)
		rsv, err := client.Reserve(rctx, s.deps.Host, peer.AddrInfo{ID: p})
		cancel()
		s.relayMu.Lock()
		if err != nil {
			b := s.relayClient.backoff[p]
			b.wait = min(max(2*b.wait, relayBackoffMin), relayBackoffMax)
			b.until = time.Now().Add(b.wait)
			s.relayClient.backoff[p] = b
			next = minTime(next, b.until)
			s.relayMu.Unlock()
			log.Debugw("realm relay reservation failed", "relay", p, "error", err)
			continue
		}
		delete(s.relayClient.backoff, p)
		circuits := make([]ma.Multiaddr, 0, len(rsv.Addrs))
		for _, a := range rsv.Addrs {
			circuits = append(circuits, a.Encapsulate(circuitComponent))
		}
		s.relayClient.reservations[p] = reservation{expires: rsv.Expiration, addrs: circuits}
		s.relayMu.Unlock()
		log.Debugw("realm relay reservation made", "relay", p, "expires", rsv.Expiration, "addrs", circuits)
	}

	s.relayMu.Lock()
	for _, rsv := range s.relayClient.reservations {
		next = minTime(next, rsv.expires.Add(-relayRefreshBefore))
	}
	changed := !slices.Equal(before, s.relayAddrSetLocked())
	again := !s.relayClient.announceAgain.IsZero() && !time.Now().Before(s.relayClient.announceAgain)
	switch {
	case changed:
		s.relayClient.announceAgain = time.Now().Add(exchangeInterval + relayAnnounceMargin)
	case again:
		s.relayClient.announceAgain = time.Time{}
	}
	if !s.relayClient.announceAgain.IsZero() {
		next = minTime(next, s.relayClient.announceAgain)
	}
	s.relayMu.Unlock()
	if changed || again {
		s.announceRelayAddrs()
	}
	return next
}

// relayAnnounceMargin is added to exchangeInterval before the second
// announcement, so that it does not arrive a moment too early.
const relayAnnounceMargin = 200 * time.Millisecond

// circuitComponent is /p2p-circuit.
var circuitComponent = ma.StringCast("/p2p-circuit")

// relayCandidates are the authenticated members of the joined realms that
// serve the hop protocol, in a stable order.
func (s *Service) relayCandidates() []peer.ID {
	ps := s.deps.Host.Peerstore()
	var out []peer.ID
	for _, r := range s.joined() {
		for _, p := range r.Members() {
			if !r.authenticated(p) || slices.Contains(out, p) {
				continue
			}
			if hop, err := ps.SupportsProtocols(p, proto.ProtoIDv2Hop); err == nil && len(hop) > 0 {
				out = append(out, p)
			}
		}
	}
	slices.Sort(out)
	return out
}

// relayAddrSetLocked is every circuit address held, sorted by text.
func (s *Service) relayAddrSetLocked() []string {
	var out []string
	for _, rsv := range s.relayClient.reservations {
		for _, a := range rsv.addrs {
			out = append(out, a.String())
		}
	}
	slices.Sort(out)
	return out
}

// announceRelayAddrs runs a member exchange with up to relayExchangeFanout
// members of each realm, so that they learn the new circuit addresses.
func (s *Service) announceRelayAddrs() {
	for _, r := range s.joined() {
		n := 0
		for _, p := range r.Members() {
			if n == relayExchangeFanout {
				break
			}
			if r.authenticated(p) {
				r.exchangeAsync(p)
				n++
			}
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// relayState is the realm relay state of a Service: the server and the
// member side, under one lock.
type relayState struct {
	relayMu     sync.Mutex
	relayServer relayServer
	relayClient relayClient
}
