package realm

import (
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
)

// goodbye is the payload of a leaving member's goodbye: a core/record
// Record signed (record.Seal) by the leaving member, proving the realm with
// a MAC over the leaving peer and the time:
//
//	time (8 bytes, Unix ns, big-endian) ‖ proof = HMAC(auth, "bye" ‖ peer ‖ time)
type goodbye struct {
	unixNano int64
	proof    [32]byte
}

// goodbyeDomain and goodbyeCodec identify goodbye envelopes.
const goodbyeDomain = "realmnet-realm-goodbye"

var goodbyeCodec = []byte("/realmnet/realm/goodbye")

// goodbyeMaxAge bounds the clock difference accepted on a goodbye.
const goodbyeMaxAge = 5 * time.Minute

// Domain is the goodbye's signature domain (record.Record).
func (g *goodbye) Domain() string { return goodbyeDomain }

// Codec is the goodbye envelope's payload type (record.Record).
func (g *goodbye) Codec() []byte { return goodbyeCodec }

// MarshalRecord encodes time ‖ proof (40 bytes).
func (g *goodbye) MarshalRecord() ([]byte, error) {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 40), uint64(g.unixNano))
	return append(b, g.proof[:]...), nil
}

// UnmarshalRecord decodes time ‖ proof; any other length is ErrBadFrame.
func (g *goodbye) UnmarshalRecord(b []byte) error {
	if len(b) != 40 {
		return fmt.Errorf("%w: goodbye of %d bytes, want 40", ErrBadFrame, len(b))
	}
	g.unixNano = int64(binary.BigEndian.Uint64(b))
	copy(g.proof[:], b[8:])
	return nil
}

func (r *Realm) goodbyeProof(p peer.ID, unixNano int64) [32]byte {
	return newMAC(&r.keys.auth, "bye").peer(p).bytes(binary.BigEndian.AppendUint64(nil, uint64(unixNano))).sum()
}

// decodeGoodbye opens a goodbye envelope and returns its signer and payload.
func decodeGoodbye(b []byte) (peer.ID, *goodbye, error) {
	var g goodbye
	env, err := record.ConsumeTypedEnvelope(b, &g)
	if err != nil {
		return "", nil, fmt.Errorf("%w: goodbye: %w", ErrBadFrame, err)
	}
	// ConsumeTypedEnvelope checks the domain, not the payload type.
	if !bytes.Equal(env.PayloadType, goodbyeCodec) {
		return "", nil, fmt.Errorf("%w: goodbye: payload type %q", ErrBadFrame, env.PayloadType)
	}
	signer, err := peer.IDFromPublicKey(env.PublicKey)
	if err != nil {
		return "", nil, fmt.Errorf("%w: goodbye signer: %w", ErrBadFrame, err)
	}
	return signer, &g, nil
}

// sayGoodbye sends a signed goodbye to each peer and waits for each to
// close its side (it has removed us), until ctx ends. The error joins the
// failures.
func (r *Realm) sayGoodbye(ctx context.Context, peers []peer.ID) error {
	if len(peers) == 0 {
		return nil
	}
	h := r.svc.deps.Host
	now := time.Now().UnixNano()
	g := &goodbye{unixNano: now, proof: r.goodbyeProof(h.ID(), now)}
	env, err := sealWith(g, h.Peerstore().PrivKey(h.ID()))
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(peers))
	for i, p := range peers {
		wg.Go(func() {
			errs[i] = r.sendGoodbye(ctx, p, env)
			if errs[i] == nil {
				r.svc.stats.goodbyesSent.Add(1)
			} else {
				r.svc.stats.goodbyesUnacknowledged.Add(1)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// goodbyeAsync sends a goodbye to p in the background (p admitted this node
// in a handshake this node could not complete).
func (r *Realm) goodbyeAsync(p peer.ID) {
	r.spawn(func() {
		if err := r.sayGoodbye(r.ctx, []peer.ID{p}); err != nil {
			log.Debugw("goodbye after a failed admission", "realm", r.name, "peer", p, "err", err)
		}
	})
}

func sealWith(rec record.Record, key crypto.PrivKey) ([]byte, error) {
	if key == nil {
		return nil, errors.New("realm: no private key in the peerstore")
	}
	env, err := record.Seal(rec, key)
	if err != nil {
		return nil, fmt.Errorf("realm: sign goodbye: %w", err)
	}
	return env.Marshal()
}

// sendGoodbye delivers the goodbye to p and waits for its acknowledgement,
// trying again, within HandshakeTimeout, when an attempt fails for any
// reason but p's refusal: the connection the stream goes on may be one to
// p's previous instance (p crashed and restarted on the same address: its
// new connection is then, on the same address pair, held back as redundant
// until the old one is found dead — a stateless reset, at the first
// packet). A goodbye lost there would leave p listing this node as a
// member for as long as they stay connected through another realm (found
// by the soak test, TestLeaveRightAfterRestartIsSeen). Attempts are spaced
// 20 ms, doubling.
func (r *Realm) sendGoodbye(ctx context.Context, p peer.ID, env []byte) error {
	ctx, cancel := context.WithTimeout(ctx, HandshakeTimeout)
	defer cancel()
	wait := 20 * time.Millisecond
	for {
		err := r.sendGoodbyeOnce(ctx, p, env)
		var se *network.StreamError
		if err == nil || ctx.Err() != nil || (errors.As(err, &se) && se.Remote && se.ErrorCode == ErrorCodeRefused) {
			return err
		}
		log.Debugw("goodbye attempt failed; trying again", "realm", r.name, "peer", p, "err", err)
		select {
		case <-time.After(wait):
			wait *= 2
		case <-ctx.Done():
			return err
		}
	}
}

// sendGoodbyeOnce is one attempt of sendGoodbye, on the stream the host
// opens to p.
func (r *Realm) sendGoodbyeOnce(ctx context.Context, p peer.ID, env []byte) error {
	str, err := r.svc.deps.Host.NewStream(ctx, p, StreamProtocol)
	if err != nil {
		return fmt.Errorf("realm %q: goodbye to %s: %w", r.name, p, err)
	}
	return r.goodbyeOn(ctx, str, p, env)
}

// goodbyeOn writes the goodbye on str and waits for the receiver's end of
// stream, its acknowledgement.
func (r *Realm) goodbyeOn(ctx context.Context, str network.Stream, p peer.ID, env []byte) error {
	// The realm is already marked left: the stream carries the pair's
	// handle directly.
	h := r.keys.handle(r.svc.deps.Host.ID(), p)
	deadline, _ := ctx.Deadline()
	_ = str.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = str.Reset() })
	defer stop()
	err := writeFrame(str, encodeStreamHeader(streamHeader{kind: kindGoodbye, handle: h}))
	if err == nil {
		err = writeFrame(str, env)
	}
	if err != nil {
		_ = str.Reset()
		return fmt.Errorf("realm %q: goodbye to %s: %w", r.name, p, err)
	}
	_ = str.CloseWrite() // the receiver's end of stream is the acknowledgement
	if err := expectEOF(str); err != nil {
		_ = str.Reset()
		return fmt.Errorf("realm %q: goodbye to %s not acknowledged: %w", r.name, p, err)
	}
	return str.Close()
}

// receiveGoodbye verifies a goodbye from the stream's peer and ends its
// membership at once.
func (r *Realm) receiveGoodbye(str network.Stream) {
	_ = str.SetDeadline(time.Now().Add(HandshakeTimeout))
	remote := str.Conn().RemotePeer()
	frame, err := readFrame(str)
	if err == nil {
		var signer peer.ID
		var g *goodbye
		signer, g, err = decodeGoodbye(frame)
		if err == nil {
			err = r.checkGoodbye(remote, signer, g)
		}
	}
	if err != nil {
		r.svc.stats.goodbyesRejected.Add(1)
		log.Debugw("goodbye rejected", "realm", r.name, "peer", remote, "err", err)
		_ = str.Reset()
		return
	}
	r.mu.Lock()
	r.membership.goodbyes[remote]++
	r.removeLocked(remote, ReasonGoodbye)
	r.mu.Unlock()
	r.svc.stats.goodbyesReceived.Add(1)
	closeGracefully(str)
}

func (r *Realm) checkGoodbye(remote, signer peer.ID, g *goodbye) error {
	if signer != remote {
		return fmt.Errorf("goodbye from %s signed by %s", remote, signer)
	}
	if age := time.Since(time.Unix(0, g.unixNano)); age > goodbyeMaxAge || age < -goodbyeMaxAge {
		return fmt.Errorf("goodbye from %s is %v old", remote, age)
	}
	want := r.goodbyeProof(remote, g.unixNano)
	if !hmac.Equal(want[:], g.proof[:]) {
		return fmt.Errorf("goodbye from %s does not prove the realm", remote)
	}
	return nil
}
