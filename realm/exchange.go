package realm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/record"
)

// MaxExchangeRecords caps the signed peer records one side sends, and
// accepts, in one member exchange.
const MaxExchangeRecords = 64

// exchangeAddrTTL is how long the signed record of an authenticated member,
// received in member exchange, stays in the certified address book.
// Records of peers that are not authenticated members never go to the
// peerstore (candidates.go).
const exchangeAddrTTL = 10 * time.Minute

// Member exchange runs on a realm stream of kind kindMembers, opened by the
// handshake's initiator once both sides have admitted each other:
//
//	I → R  frame* (signed peer record envelopes, ≤ MaxExchangeRecords) ‖ empty frame
//	R → I  frame* ‖ empty frame, then end of stream
//
// Each envelope is go-libp2p's core/record envelope of a peer.PeerRecord,
// signed by the member it describes; a receiver accepts it only if the
// signature verifies and the signing key is the record's peer ID, so a
// member cannot forge another member's addresses.

// exchangeAsync starts a member exchange with p in the background.
func (r *Realm) exchangeAsync(p peer.ID) {
	r.spawn(func() {
		ctx, cancel := context.WithTimeout(r.ctx, HandshakeTimeout)
		defer cancel()
		if err := r.exchange(ctx, p); err != nil {
			r.svc.stats.exchangesFailed.Add(1)
			log.Debugw("member exchange failed", "realm", r.name, "peer", p, "err", err)
		}
	})
}

func (r *Realm) exchange(ctx context.Context, p peer.ID) error {
	str, err := r.openStream(ctx, p, streamHeader{kind: kindMembers})
	if err != nil {
		return err
	}
	deadline, _ := ctx.Deadline()
	_ = str.SetDeadline(deadline)
	if err := r.sendRecords(str, p); err != nil {
		_ = str.Reset()
		return err
	}
	if err := r.receiveRecords(str); err != nil {
		_ = str.Reset()
		return err
	}
	_ = str.CloseWrite()
	if err := expectEOF(str); err != nil {
		_ = str.Reset()
		return err
	}
	// The exchange is complete once the responder's end of stream is read;
	// Close's error (the stream is done both ways) does not undo it.
	r.svc.stats.exchangesCompleted.Add(1)
	_ = str.Close()
	return nil
}

// answerExchange is the responder side of a member exchange. An exchange
// opened less than exchangeInterval after the member's previous answered
// one is reset (ExchangesRefused).
func (r *Realm) answerExchange(str network.Stream) {
	if !r.exchangeAllowed(str.Conn().RemotePeer()) {
		r.svc.stats.exchangesRefused.Add(1)
		_ = str.Reset()
		return
	}
	_ = str.SetDeadline(time.Now().Add(HandshakeTimeout))
	if err := r.receiveRecords(str); err != nil {
		r.svc.stats.exchangesFailed.Add(1)
		_ = str.Reset()
		return
	}
	if err := r.sendRecords(str, str.Conn().RemotePeer()); err != nil {
		r.svc.stats.exchangesFailed.Add(1)
		_ = str.Reset()
		return
	}
	if closeGracefully(str) {
		r.svc.stats.exchangesCompleted.Add(1)
	} else {
		r.svc.stats.exchangesFailed.Add(1)
	}
}

// sendRecords writes this node's own signed record and those of its other
// authenticated members (as they signed them), then an empty frame.
func (r *Realm) sendRecords(w io.Writer, to peer.ID) error {
	h := r.svc.deps.Host
	own, err := r.svc.ownRecord(r)
	if err != nil {
		return err
	}
	envelopes := [][]byte{own}
	if cab, ok := peerstore.GetCertifiedAddrBook(h.Peerstore()); ok {
		for _, p := range r.Members() {
			if len(envelopes) == MaxExchangeRecords {
				break
			}
			if p == to || !r.authenticated(p) {
				continue
			}
			env := cab.GetPeerRecord(p)
			if env == nil {
				continue
			}
			if b, err := env.Marshal(); err == nil && len(b) <= MaxFrameSize {
				envelopes = append(envelopes, b)
			}
		}
	}
	for _, b := range envelopes {
		if err := writeFrame(w, b); err != nil {
			return fmt.Errorf("realm %q: member exchange: %w", r.name, err)
		}
	}
	return writeFrame(w, nil)
}

// exchangeAllowed reports whether member p may have an exchange answered
// now (at most one per exchangeInterval), and records it if so.
func (r *Realm) exchangeAllowed(p peer.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.membership.members[p]
	if m == nil {
		return false
	}
	now := r.svc.deps.Clock.Now()
	if !m.lastExchange.IsZero() && now.Sub(m.lastExchange) < exchangeInterval {
		return false
	}
	m.lastExchange = now
	return true
}

// receiveRecords reads records until the empty frame and verifies each.
// The record of an authenticated member goes to the certified address
// book; any other is kept in the realm's learnt records (bounded, outside
// the peerstore) and, for at most maxDialsPerExchange new peers per
// exchange, dialed with its filtered addresses. More than
// MaxExchangeRecords records is an error.
func (r *Realm) receiveRecords(rd io.Reader) error {
	dialed := 0
	for i := 0; ; i++ {
		frame, err := readFrame(rd)
		if err != nil {
			return fmt.Errorf("realm %q: member exchange: %w", r.name, err)
		}
		if frame == nil {
			return nil
		}
		if i == MaxExchangeRecords {
			return fmt.Errorf("%w: more than %d member records", ErrBadFrame, MaxExchangeRecords)
		}
		env, pr, err := decodePeerRecord(frame)
		if err != nil {
			r.svc.stats.recordsRejected.Add(1)
			log.Debugw("member record rejected", "realm", r.name, "err", err)
			continue
		}
		switch {
		case pr.PeerID == r.svc.deps.Host.ID():
		case r.authenticated(pr.PeerID):
			r.svc.storeRecord(env)
		default:
			ai := r.learn(env, pr)
			if dialed < maxDialsPerExchange && len(ai.Addrs) > 0 && r.wantsMore() && r.candidate(ai, sourceExchange) {
				dialed++
			}
		}
	}
}

// ownRecord returns this node's signed peer record for r's members: its
// current addresses and its circuit addresses through relays that are
// members of r (relay.go).
func (s *Service) ownRecord(r *Realm) ([]byte, error) {
	h := s.deps.Host
	key := h.Peerstore().PrivKey(h.ID())
	if key == nil {
		return nil, errors.New("realm: no private key in the peerstore")
	}
	addrs := slices.Concat(h.Addrs(), s.relayAddrs(r))
	env, err := record.Seal(peer.PeerRecordFromAddrInfo(peer.AddrInfo{ID: h.ID(), Addrs: addrs}), key)
	if err != nil {
		return nil, fmt.Errorf("realm: sign own peer record: %w", err)
	}
	return env.Marshal()
}

// decodePeerRecord verifies a signed peer record envelope: the signature,
// and that the signing key is the key of the record's peer ID.
func decodePeerRecord(b []byte) (*record.Envelope, *peer.PeerRecord, error) {
	env, rec, err := record.ConsumeEnvelope(b, peer.PeerRecordEnvelopeDomain)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: peer record: %w", ErrBadFrame, err)
	}
	pr, ok := rec.(*peer.PeerRecord)
	if !ok {
		return nil, nil, fmt.Errorf("%w: envelope holds a %T, not a peer record", ErrBadFrame, rec)
	}
	signer, err := peer.IDFromPublicKey(env.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: peer record signer: %w", ErrBadFrame, err)
	}
	if signer != pr.PeerID {
		return nil, nil, fmt.Errorf("%w: record for %s signed by %s", ErrBadFrame, pr.PeerID, signer)
	}
	return env, pr, nil
}
