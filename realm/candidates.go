package realm

import (
	"net"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/record"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Candidates learnt from member exchange are the cheapest for a member to
// fabricate: valid self-signed records of made-up peers cost it a key
// generation each. Issue #11 measured what an unbounded treatment costs: 63
// made-up peers × 64 addresses per exchange, repeated, grew the victim's
// heap to 441 MiB through the global peerstore (item 5), filled the 64
// candidate slots so that members in their reconnect grace and Peers
// entries were dropped (item 6), and made the victim dial 62 third-party
// addresses for one 70 KB exchange (item 7). The bounds below, each per
// realm, answer them.
const (
	// maxCandidateAddrs caps the addresses kept, and dialed, per candidate
	// learnt from an exchange (after filtering, see usableAddrs): a host
	// has a handful of useful addresses (one per interface and transport);
	// go-libp2p's identify keeps more, but for authenticated peers only.
	maxCandidateAddrs = 8
	// maxLearntRecords caps the records learnt from exchanges and kept,
	// outside the peerstore, until their peer authenticates (its record
	// then goes to the certified address book): two full exchanges.
	// Beyond it the least recently named is dropped. At most 128 ×
	// MaxFrameSize = 512 KiB per realm.
	maxLearntRecords = 2 * MaxExchangeRecords
	// maxExchangeCandidates caps the candidates learnt from exchanges that
	// are being dialed or wait for a dial at once; the other sources
	// (members in their reconnect grace, Peers, the DHT, mDNS) have their
	// own maxCandidates slots, which exchange candidates never take.
	maxExchangeCandidates = 16
	// maxExchangeDials caps concurrent dials to candidates learnt from
	// exchanges (the other sources have their own maxCandidateDials).
	maxExchangeDials = 4
	// maxDialsPerExchange caps the new candidates one exchange starts
	// dialing; the others are dialed when an exchange names them again
	// (every discovery round runs one). With the per-member exchange rate
	// below, a member makes this node start at most 4 dials, of at most
	// maxCandidateAddrs addresses each, per exchangeInterval.
	maxDialsPerExchange = 4
	// exchangeInterval is the least time between two exchanges a member
	// opens that this node answers; one that comes sooner is reset
	// (ExchangesRefused). Honest members open one per discovery round (at
	// least MinDiscoveryInterval apart, less 10 % jitter: 1.8 s) and one per
	// handshake; 1 s lets both through.
	exchangeInterval = time.Second
	// candidateRetryMin and candidateRetryMax bound the backoff before a
	// candidate learnt from an exchange whose dial or handshake failed is
	// dialed again: 5 s, doubling at each failure, up to 10 min.
	candidateRetryMin = 5 * time.Second
	candidateRetryMax = 10 * time.Minute
	// maxFailedCandidates caps the remembered failures (least recently
	// failed dropped first).
	maxFailedCandidates = 1024
)

// candidateSource says where a candidate came from: candidates learnt from
// member exchange have their own slots, dials, per-exchange budget and
// failure backoff, so that a member's made-up peers never crowd out the
// others.
type candidateSource uint8

const (
	// sourceKnown: a member in its reconnect grace, a Peers entry, a DHT
	// provider or an mDNS peer.
	sourceKnown candidateSource = iota
	// sourceExchange: a record learnt from a member exchange.
	sourceExchange
)

// learntRecord is a verified record learnt from an exchange, for a peer
// not authenticated yet.
type learntRecord struct {
	env   *record.Envelope
	addrs []ma.Multiaddr // filtered, at most maxCandidateAddrs
}

// candidateFailure is the backoff of a candidate learnt from an exchange.
type candidateFailure struct {
	failures int
	until    time.Time
}

func newLearntCache() *lru.Cache[peer.ID, learntRecord] {
	c, err := lru.New[peer.ID, learntRecord](maxLearntRecords)
	if err != nil {
		panic(err) // only for a size ≤ 0
	}
	return c
}

func newFailureCache() *lru.Cache[peer.ID, candidateFailure] {
	c, err := lru.New[peer.ID, candidateFailure](maxFailedCandidates)
	if err != nil {
		panic(err)
	}
	return c
}

// retryAfter is the backoff after the n-th consecutive failure (n ≥ 1).
func retryAfter(n int) time.Duration {
	d := candidateRetryMin
	for i := 1; i < n && d < candidateRetryMax; i++ {
		d *= 2
	}
	return min(d, candidateRetryMax)
}

// addrClass sorts IP addresses for usableAddrs.
type addrClass uint8

const (
	addrPublic addrClass = iota
	addrLoopback
	addrPrivate
	addrUnusable // unspecified, multicast, link-local
)

func classify(a ma.Multiaddr) addrClass {
	ip, err := manet.ToIP(a)
	if err != nil {
		return addrPublic // not an IP address (DNS names and the like): kept
	}
	switch {
	case ip.IsUnspecified(), ip.IsMulticast(), ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast():
		return addrUnusable
	case ip.IsLoopback():
		return addrLoopback
	case ip.IsPrivate() || isShared(ip):
		return addrPrivate
	}
	return addrPublic
}

// sharedSpace is RFC 6598's carrier-grade NAT space, private in effect.
var sharedSpace = &net.IPNet{IP: net.IPv4(100, 64, 0, 0), Mask: net.CIDRMask(10, 32)}

func isShared(ip net.IP) bool { return sharedSpace.Contains(ip) }

// usableAddrs filters the addresses of a record learnt from an exchange:
// unspecified, multicast and link-local addresses are dropped; loopback and
// private (RFC 1918, RFC 4193, RFC 6598) addresses are kept only when this
// node has an address of the same class itself — a node on a LAN (or, in
// tests, on loopback) reaches its members there, a node with only public
// addresses cannot, and would only send packets into its own networks on a
// member's say. At most maxCandidateAddrs are kept, in the record's order.
func (s *Service) usableAddrs(addrs []ma.Multiaddr) []ma.Multiaddr {
	var own [addrUnusable + 1]bool
	for _, a := range s.deps.Host.Addrs() {
		own[classify(a)] = true
	}
	out := make([]ma.Multiaddr, 0, min(len(addrs), maxCandidateAddrs))
	for _, a := range addrs {
		if len(out) == maxCandidateAddrs {
			break
		}
		switch c := classify(a); c {
		case addrUnusable:
			continue
		case addrLoopback, addrPrivate:
			if !own[c] {
				continue
			}
		}
		out = append(out, a)
	}
	return out
}

// storeRecord puts an authenticated member's signed record in the
// certified address book (which keeps the newest sequence number).
func (s *Service) storeRecord(env *record.Envelope) {
	if cab, ok := peerstore.GetCertifiedAddrBook(s.deps.Host.Peerstore()); ok {
		if _, err := cab.ConsumePeerRecord(env, exchangeAddrTTL); err != nil {
			log.Debugw("member record not stored", "err", err)
		}
	}
}

// learn keeps a record learnt from an exchange for a peer that is not an
// authenticated member, outside the peerstore, and returns its candidate
// (no addresses: nothing to dial).
func (r *Realm) learn(env *record.Envelope, pr *peer.PeerRecord) peer.AddrInfo {
	addrs := r.svc.usableAddrs(pr.Addrs)
	if old, ok := r.candidates.learnt.Peek(pr.PeerID); ok {
		if oldRec, err := old.env.Record(); err == nil {
			if o, ok := oldRec.(*peer.PeerRecord); ok && o.Seq > pr.Seq {
				// An older record does not replace a newer one.
				r.candidates.learnt.Get(pr.PeerID)
				return peer.AddrInfo{ID: pr.PeerID, Addrs: old.addrs}
			}
		}
	}
	r.candidates.learnt.Add(pr.PeerID, learntRecord{env: env, addrs: addrs})
	return peer.AddrInfo{ID: pr.PeerID, Addrs: addrs}
}

// admitted moves p's learnt record, if any, to the certified address book:
// p is an authenticated member now.
func (r *Realm) admitted(p peer.ID) {
	if rec, ok := r.candidates.learnt.Peek(p); ok {
		r.candidates.learnt.Remove(p)
		r.svc.storeRecord(rec.env)
	}
	r.candidates.failed.Remove(p)
}
