package realm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/record"
)

// MaxExchangeRecords caps the signed peer records one side sends, and
// accepts, in one member exchange.
const MaxExchangeRecords = 64

// exchangeAddrTTL is how long addresses learnt from member exchange stay in
// the peerstore.
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
	return str.Close()
}

// answerExchange is the responder side of a member exchange.
func (r *Realm) answerExchange(str network.Stream) {
	_ = str.SetDeadline(time.Now().Add(HandshakeTimeout))
	if err := r.receiveRecords(str); err != nil {
		_ = str.Reset()
		return
	}
	if err := r.sendRecords(str, str.Conn().RemotePeer()); err != nil {
		_ = str.Reset()
		return
	}
	closeGracefully(str)
}

// sendRecords writes this node's own signed record and those of its other
// authenticated members (as they signed them), then an empty frame.
func (r *Realm) sendRecords(w io.Writer, to peer.ID) error {
	h := r.svc.deps.Host
	own, err := r.svc.ownRecord()
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

// receiveRecords reads records until the empty frame, verifies each, stores
// the addresses of valid ones and tries the members it does not know yet.
// More than MaxExchangeRecords records is an error.
func (r *Realm) receiveRecords(rd io.Reader) error {
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
		ai, err := r.svc.consumeRecord(frame)
		if err != nil {
			r.svc.stats.recordsRejected.Add(1)
			log.Debugw("member record rejected", "realm", r.name, "err", err)
			continue
		}
		if ai.ID != r.svc.deps.Host.ID() && !r.authenticated(ai.ID) && r.wantsMore() {
			r.candidate(ai)
		}
	}
}

// ownRecord returns this node's signed peer record with its current
// addresses.
func (s *Service) ownRecord() ([]byte, error) {
	h := s.deps.Host
	key := h.Peerstore().PrivKey(h.ID())
	if key == nil {
		return nil, errors.New("realm: no private key in the peerstore")
	}
	env, err := record.Seal(peer.PeerRecordFromAddrInfo(peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}), key)
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

// consumeRecord verifies a record and stores its addresses in the
// peerstore's certified address book (which keeps the newest sequence).
func (s *Service) consumeRecord(b []byte) (peer.AddrInfo, error) {
	env, pr, err := decodePeerRecord(b)
	if err != nil {
		return peer.AddrInfo{}, err
	}
	if pr.PeerID != s.deps.Host.ID() {
		if cab, ok := peerstore.GetCertifiedAddrBook(s.deps.Host.Peerstore()); ok {
			if _, err := cab.ConsumePeerRecord(env, exchangeAddrTTL); err != nil {
				return peer.AddrInfo{}, fmt.Errorf("realm: store peer record of %s: %w", pr.PeerID, err)
			}
		}
	}
	return peer.AddrInfo{ID: pr.PeerID, Addrs: pr.Addrs}, nil
}
