package realm

import (
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/realmnet/realmnet/core"
)

// EvtMemberJoined is emitted on the host's event bus and on the realm's own
// bus (Realm.Subscribe) when a peer completes mutual authentication into a
// realm it was not a member of. It carries no key material.
type EvtMemberJoined struct {
	Realm   string // the realm's name
	RealmID core.RealmID
	Peer    peer.ID
}

// EvtMemberLeft is emitted, like EvtMemberJoined, when a member stops being
// one; Reason says why (one of the Reason* constants).
type EvtMemberLeft struct {
	Realm   string
	RealmID core.RealmID
	Peer    peer.ID
	Reason  string
}

// Reasons of EvtMemberLeft.
const (
	// ReasonGoodbye: the member left the realm and said so (signed goodbye).
	ReasonGoodbye = "goodbye"
	// ReasonGraceExpired: no authenticated connection for ReconnectGrace.
	ReasonGraceExpired = "reconnect grace expired"
	// ReasonLocalLeave: this node left the realm (Leave or Close).
	ReasonLocalLeave = "left locally"
)

// Stats counts what the realm service did and refused, for monitoring
// (Service.Collector exports it) and for the attack tests: every failed
// authentication, refused realm stream and rejected record is counted once,
// under its first reason. Values are totals since the node started.
type Stats struct {
	// AuthSucceeded counts completed handshakes (either role).
	AuthSucceeded uint64
	// AuthUnknownRealm: a hello whose tag matches none of this node's realms
	// (a non-member, or a peer in other realms only).
	AuthUnknownRealm uint64
	// AuthReplayed: a hello or reply reusing a nonce already seen
	// (a replayed transcript or a reflected message).
	AuthReplayed uint64
	// AuthBadMAC: a reply's MAC_r or a finish's MAC_i did not verify.
	AuthBadMAC uint64
	// AuthBadFrame: truncated, oversized or malformed frames, timeouts and
	// streams reset mid-handshake.
	AuthBadFrame uint64
	// AuthRefused: the handshake verified but the member could not be
	// admitted (realm resource limit) or too many handshakes were running.
	AuthRefused uint64
	// StreamsOpenedOutbound: application realm streams this node opened
	// (Realm.NewStream returned them; the realm's own exchanges and
	// goodbyes are not counted).
	StreamsOpenedOutbound uint64
	// StreamsOpenedInbound: application realm streams from members handed
	// to the realm's handler.
	StreamsOpenedInbound uint64
	// StreamsRefused: realm streams reset before dispatch (bad header,
	// unknown handle, handle of another peer, sender not a member).
	StreamsRefused uint64
	// StreamsNoHandler: realm streams from members for a protocol with no
	// handler in that realm.
	StreamsNoHandler uint64
	// StreamsLimited: realm streams from members reset because the
	// realm's inbound stream limit was reached (ErrorCodeResourceLimit).
	StreamsLimited uint64
	// ExchangesCompleted: member exchanges that ran to their end, in
	// either role (each side of one exchange counts it once).
	ExchangesCompleted uint64
	// ExchangesFailed: member exchanges that did not (the stream could not
	// be opened, a frame was bad, the peer reset or timed out), in either
	// role; refused ones are ExchangesRefused.
	ExchangesFailed uint64
	// RecordsRejected: signed peer records in member exchange that did not
	// verify (bad signature, a record signed by another key than its peer
	// ID's, malformed).
	RecordsRejected uint64
	// GoodbyesSent: goodbyes this node sent that the receiver
	// acknowledged (one per peer and Leave).
	GoodbyesSent uint64
	// GoodbyesUnacknowledged: goodbyes this node sent that were not
	// acknowledged before Leave's context or HandshakeTimeout ended, or
	// that the receiver refused.
	GoodbyesUnacknowledged uint64
	// GoodbyesReceived: goodbyes from members that verified (the member
	// left at once).
	GoodbyesReceived uint64
	// GoodbyesRejected: goodbyes that did not verify.
	GoodbyesRejected uint64
	// PeersClosedRealmOnly: peers closed by the realm-only policy.
	PeersClosedRealmOnly uint64
	// ExchangesRefused: member exchanges reset because the member opened
	// them too often (more than one per second).
	ExchangesRefused uint64
}

type counters struct {
	authSucceeded, authUnknownRealm, authReplayed, authBadMAC, authBadFrame, authRefused                   atomic.Uint64
	streamsRefused, streamsNoHandler, recordsRejected, goodbyesRejected, closedRealmOnly, exchangesRefused atomic.Uint64
	streamsOutbound, streamsInbound, streamsLimited, exchangesCompleted, exchangesFailed                   atomic.Uint64
	goodbyesSent, goodbyesUnacknowledged, goodbyesReceived                                                 atomic.Uint64
}

func (c *counters) snapshot() Stats {
	return Stats{
		AuthSucceeded:          c.authSucceeded.Load(),
		AuthUnknownRealm:       c.authUnknownRealm.Load(),
		AuthReplayed:           c.authReplayed.Load(),
		AuthBadMAC:             c.authBadMAC.Load(),
		AuthBadFrame:           c.authBadFrame.Load(),
		AuthRefused:            c.authRefused.Load(),
		StreamsOpenedOutbound:  c.streamsOutbound.Load(),
		StreamsOpenedInbound:   c.streamsInbound.Load(),
		StreamsRefused:         c.streamsRefused.Load(),
		StreamsNoHandler:       c.streamsNoHandler.Load(),
		StreamsLimited:         c.streamsLimited.Load(),
		ExchangesCompleted:     c.exchangesCompleted.Load(),
		ExchangesFailed:        c.exchangesFailed.Load(),
		RecordsRejected:        c.recordsRejected.Load(),
		GoodbyesSent:           c.goodbyesSent.Load(),
		GoodbyesUnacknowledged: c.goodbyesUnacknowledged.Load(),
		GoodbyesReceived:       c.goodbyesReceived.Load(),
		GoodbyesRejected:       c.goodbyesRejected.Load(),
		PeersClosedRealmOnly:   c.closedRealmOnly.Load(),
		ExchangesRefused:       c.exchangesRefused.Load(),
	}
}
