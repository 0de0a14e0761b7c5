package realm_test

// Helpers of the attack tests (attack_test.go): a stock go-libp2p attacker
// host, the realm wire format and key schedule re-implemented from their
// documentation (realm/wire.go, realm/keys.go, realm/auth.go), and checks.
// Nothing here calls into the realm package's internals: an attacker only
// has the wire.

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/record"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/hkdf"

	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

// atkDeadline bounds every attacker stream: a victim that neither answers
// nor resets within it fails the test instead of hanging it.
const atkDeadline = 8 * time.Second

// atkNewHost is testkit.StockHost: a stock go-libp2p host (libp2p.New),
// QUIC only, on loopback, closed at the end of the test.
var atkNewHost = testkit.StockHost

// atkConnect connects h to n (identify included).
func atkConnect(t testing.TB, h host.Host, n *node.Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, h.Connect(ctx, n.AddrInfo()))
}

// atkOpen opens a stream of proto from h to p, with atkDeadline set.
func atkOpen(t testing.TB, h host.Host, p peer.ID, proto protocol.ID) network.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, p, proto)
	require.NoError(t, err)
	require.NoError(t, s.SetDeadline(time.Now().Add(atkDeadline)))
	return s
}

// atkExpectReset reads s to its end and requires that the victim reset it
// (not a clean end of stream, not our own deadline). When code is not nil
// and the error carries a stream error code, it must be *code. It returns
// the read error.
func atkExpectReset(t testing.TB, s network.Stream, code *network.StreamErrorCode) error {
	t.Helper()
	got, err := io.ReadAll(s)
	require.Error(t, err, "the victim closed the stream cleanly after sending %q; it must reset it", got)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "the victim never reset the stream within %v: %v", atkDeadline, err)
	var se *network.StreamError
	if code != nil && errors.As(err, &se) {
		require.Equal(t, *code, se.ErrorCode, "reset code: %v", err)
	}
	_ = s.Reset()
	return err
}

// atkRequireRemoteReset requires that err is the victim's reset of the
// stream.
func atkRequireRemoteReset(t testing.TB, err error) {
	t.Helper()
	var se *network.StreamError
	require.True(t, errors.As(err, &se) && se.Remote, "not a reset by the victim: %v", err)
}

// atkFrame encodes b as one realm frame: uvarint length ‖ b (go-msgio's
// varint framing).
func atkFrame(b []byte) []byte {
	return append(binary.AppendUvarint(nil, uint64(len(b))), b...)
}

type atkByteReader struct{ r io.Reader }

func (b atkByteReader) ReadByte() (byte, error) {
	var x [1]byte
	_, err := io.ReadFull(b.r, x[:])
	return x[0], err
}

// atkReadFrame reads one realm frame (at most realm.MaxFrameSize bytes)
// without reading past it.
func atkReadFrame(r io.Reader) ([]byte, error) {
	n, err := binary.ReadUvarint(atkByteReader{r})
	if err != nil {
		return nil, err
	}
	if n > realm.MaxFrameSize {
		return nil, fmt.Errorf("frame of %d bytes, over %d", n, realm.MaxFrameSize)
	}
	b := make([]byte, n)
	_, err = io.ReadFull(r, b)
	return b, err
}

// atkWrite writes the concatenation of chunks in one Write.
func atkWrite(t testing.TB, s network.Stream, chunks ...[]byte) {
	t.Helper()
	var b []byte
	for _, c := range chunks {
		b = append(b, c...)
	}
	_, err := s.Write(b)
	require.NoError(t, err)
}

// atkKeys re-derives a realm's key schedule as realm/keys.go documents it:
//
//	id   = HKDF-SHA256(secret, salt "realmnet/realm/id/v1",         info name)[:16]
//	auth = HKDF-SHA256(secret, salt "realmnet/realm/auth/v1",       info name)[:32]
//	rdv  = HKDF-SHA256(secret, salt "realmnet/realm/rendezvous/v1", info name)[:32]
//
// with secret = the PSK (closed realms only).
type atkKeys struct {
	name string
	psk  []byte
	id   [16]byte
	auth [32]byte
	rdv  [32]byte
}

func atkDeriveKeys(name string, psk []byte) *atkKeys {
	k := &atkKeys{name: name, psk: psk}
	expand := func(salt string, out []byte) {
		if _, err := io.ReadFull(hkdf.New(sha256.New, psk, []byte(salt), []byte(name)), out); err != nil {
			panic(err)
		}
	}
	expand("realmnet/realm/id/v1", k.id[:])
	expand("realmnet/realm/auth/v1", k.auth[:])
	expand("realmnet/realm/rendezvous/v1", k.rdv[:])
	return k
}

// atkRealmKeys derives r's keys and checks the derivation against r.ID(),
// so that a mistake in the test's key schedule cannot pass for a refusal.
func atkRealmKeys(t testing.TB, r *realm.Realm, psk []byte) *atkKeys {
	t.Helper()
	k := atkDeriveKeys(r.Name(), psk)
	require.Equal(t, string(r.ID()), hex.EncodeToString(k.id[:]), "the test's key schedule disagrees with realm/keys.go")
	return k
}

// mac is HMAC-SHA256(auth, label ‖ parts…).
func (k *atkKeys) mac(label string, parts ...[]byte) (out [32]byte) {
	h := hmac.New(sha256.New, k.auth[:])
	h.Write([]byte(label))
	for _, p := range parts {
		h.Write(p)
	}
	h.Sum(out[:0])
	return out
}

// atkPeerField is a peer ID as a MAC field: uvarint length ‖ ID bytes.
func atkPeerField(p peer.ID) []byte {
	return append(binary.AppendUvarint(nil, uint64(len(p))), p...)
}

// tag is the hello's tag: HMAC(auth, "tag" ‖ initiator ‖ responder ‖ nonce_i).
func (k *atkKeys) tag(initiator, responder peer.ID, nonce [32]byte) [32]byte {
	return k.mac("tag", atkPeerField(initiator), atkPeerField(responder), nonce[:])
}

// transcript is MAC_r ("resp") or MAC_i ("init").
func (k *atkKeys) transcript(label string, initiator, responder peer.ID, nonceI, nonceR [32]byte) [32]byte {
	return k.mac(label, k.id[:], atkPeerField(initiator), atkPeerField(responder), nonceI[:], nonceR[:])
}

// handle is the realm handle of the pair a, b: HMAC(auth, "handle" ‖ lower
// ‖ higher)[:16].
func (k *atkKeys) handle(a, b peer.ID) (h [16]byte) {
	if b < a {
		a, b = b, a
	}
	sum := k.mac("handle", atkPeerField(a), atkPeerField(b))
	copy(h[:], sum[:])
	return h
}

// hello returns a fresh hello payload from initiator to responder:
// nonce_i ‖ tag.
func (k *atkKeys) hello(initiator, responder peer.ID) (nonce [32]byte, payload []byte) {
	nonce = atkRandom32()
	tag := k.tag(initiator, responder, nonce)
	return nonce, append(nonce[:], tag[:]...)
}

func atkRandom32() (b [32]byte) {
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return b
}

func atkRandomHandle() (h [16]byte) {
	if _, err := rand.Read(h[:]); err != nil {
		panic(err)
	}
	return h
}

// Stream kinds of the realm stream header (realm/wire.go).
const (
	atkKindApp     = 1
	atkKindMembers = 2
	atkKindGoodbye = 3
)

// atkHeader is a realm stream header payload: kind ‖ handle ‖ protocol.
func atkHeader(kind byte, h [16]byte, proto string) []byte {
	b := append([]byte{kind}, h[:]...)
	return append(b, proto...)
}

// atkReply is what the responder sent back to a hand-made hello.
type atkReply struct {
	nonceI, nonceR, macR [32]byte
}

// atkInitiate runs the initiator side of the handshake by hand from h to
// victim: it sends hello, reads the reply and sends finish(reply) as MAC_i,
// then reads the end of the stream. err is nil only when the victim closed
// its side cleanly, i.e. admitted h; replyErr is non-nil when the victim
// reset before replying (finish is then not called).
func atkInitiate(t testing.TB, h host.Host, victim peer.ID, hello []byte, finish func(atkReply) []byte) (rep atkReply, replyErr, err error) {
	t.Helper()
	s := atkOpen(t, h, victim, realm.AuthProtocol)
	defer func() { _ = s.Reset() }()
	copy(rep.nonceI[:], hello)
	atkWrite(t, s, atkFrame(hello))
	frame, err := atkReadFrame(s)
	if err != nil {
		return rep, err, err
	}
	require.Len(t, frame, 64, "reply frame")
	copy(rep.nonceR[:], frame[:32])
	copy(rep.macR[:], frame[32:])
	atkWrite(t, s, atkFrame(finish(rep)))
	// The responder may already have closed its read side (STOP_SENDING)
	// by now: whether this fails says nothing; the end of stream decides.
	_ = s.CloseWrite()
	var one [1]byte
	n, err := s.Read(one[:])
	switch {
	case n != 0:
		return rep, nil, fmt.Errorf("%d unexpected bytes after the handshake", n)
	case errors.Is(err, io.EOF):
		return rep, nil, nil
	case err == nil:
		return rep, nil, errors.New("no end of stream")
	}
	return rep, nil, err
}

// atkJoinAsMember runs a correct handshake by hand from h (which knows the
// key) into victim's realm and requires that the victim admitted h.
func atkJoinAsMember(t testing.TB, h host.Host, victim peer.ID, k *atkKeys) (hello []byte, rep atkReply, macI [32]byte) {
	t.Helper()
	_, hello = k.hello(h.ID(), victim)
	rep, replyErr, err := atkInitiate(t, h, victim, hello, func(r atkReply) []byte {
		macI = k.transcript("init", h.ID(), victim, r.nonceI, r.nonceR)
		return macI[:]
	})
	require.NoError(t, replyErr)
	require.NoError(t, err, "the hand-made handshake must succeed: the test's wire format is wrong otherwise")
	wantR := k.transcript("resp", h.ID(), victim, rep.nonceI, rep.nonceR)
	require.Equal(t, wantR, rep.macR, "the victim's MAC_r")
	return hello, rep, macI
}

// atkJoins records every EvtMemberJoined of a realm, to prove an attacker
// was never admitted, not even for a moment.
type atkJoins struct {
	mu     sync.Mutex
	joined []peer.ID
	done   chan struct{}
}

func atkWatchJoins(t testing.TB, r *realm.Realm) *atkJoins {
	t.Helper()
	sub, err := r.Subscribe()
	require.NoError(t, err)
	j := &atkJoins{done: make(chan struct{})}
	go func() {
		defer close(j.done)
		for e := range sub.Out() {
			if ev, ok := e.(realm.EvtMemberJoined); ok {
				j.mu.Lock()
				j.joined = append(j.joined, ev.Peer)
				j.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		_ = sub.Close()
		<-j.done
	})
	return j
}

func (j *atkJoins) peers() []peer.ID {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.joined)
}

// atkRequireNotMember requires that none of attackers is, or ever was, a
// member of r (as r's members list, Member and the join events say).
func atkRequireNotMember(t testing.TB, r *realm.Realm, joins *atkJoins, attackers ...peer.ID) {
	t.Helper()
	members := r.Members()
	for _, p := range attackers {
		require.NotContains(t, members, p, "attacker %s is listed as a member of %q", p, r.Name())
		_, ok := r.Member(p)
		require.False(t, ok, "attacker %s: Member says it is a member", p)
		if joins != nil {
			require.NotContains(t, joins.peers(), p, "attacker %s was admitted at some point (EvtMemberJoined)", p)
		}
	}
}

// atkStatsEventually waits until cond holds on n's realm stats.
func atkStatsEventually(t testing.TB, n *node.Node, what string, cond func(realm.Stats) bool) {
	t.Helper()
	require.Eventually(t, func() bool { return cond(n.RealmStats()) }, 5*time.Second, 10*time.Millisecond,
		"%s; stats: %+v", what, n.RealmStats())
}

// atkCountingHandler returns a realm stream handler that counts its calls
// (an attack stream must never reach it) and resets the stream.
func atkCountingHandler(calls *atomic.Int64) network.StreamHandler {
	return func(s network.Stream) {
		calls.Add(1)
		_ = s.Reset()
	}
}

// atkProtoFields parses a stream of varint-delimited protobuf messages (an
// identify response) by hand and returns the length-delimited fields by
// field number, for every message. Varint fields are skipped.
func atkProtoFields(raw []byte) (map[uint64][][]byte, error) {
	fields := make(map[uint64][][]byte)
	for len(raw) > 0 {
		n, k := binary.Uvarint(raw)
		if k <= 0 || uint64(len(raw)-k) < n {
			return nil, fmt.Errorf("bad message length")
		}
		msg := raw[k : k+int(n)]
		raw = raw[k+int(n):]
		for len(msg) > 0 {
			key, k := binary.Uvarint(msg)
			if k <= 0 {
				return nil, fmt.Errorf("bad field key")
			}
			msg = msg[k:]
			switch key & 7 {
			case 0:
				_, k := binary.Uvarint(msg)
				if k <= 0 {
					return nil, fmt.Errorf("bad varint field")
				}
				msg = msg[k:]
			case 2:
				l, k := binary.Uvarint(msg)
				if k <= 0 || uint64(len(msg)-k) < l {
					return nil, fmt.Errorf("bad bytes field")
				}
				fields[key>>3] = append(fields[key>>3], msg[k:k+int(l)])
				msg = msg[k+int(l):]
			default:
				return nil, fmt.Errorf("wire type %d", key&7)
			}
		}
	}
	return fields, nil
}

// atkGoodbye is a goodbye record as realm/members.go documents it: a
// core/record Record (domain "realmnet-realm-goodbye", codec
// "/realmnet/realm/goodbye") whose payload is
//
//	time (8 bytes, Unix ns, big-endian) ‖ HMAC(auth, "bye" ‖ peer ‖ time)
type atkGoodbye struct{ payload []byte }

func (g *atkGoodbye) Domain() string                 { return "realmnet-realm-goodbye" }
func (g *atkGoodbye) Codec() []byte                  { return []byte("/realmnet/realm/goodbye") }
func (g *atkGoodbye) MarshalRecord() ([]byte, error) { return g.payload, nil }
func (g *atkGoodbye) UnmarshalRecord(b []byte) error { g.payload = b; return nil }

// goodbyePayload is p's goodbye payload at time at.
func (k *atkKeys) goodbyePayload(p peer.ID, at time.Time) []byte {
	ts := binary.BigEndian.AppendUint64(nil, uint64(at.UnixNano()))
	proof := k.mac("bye", atkPeerField(p), ts)
	return append(ts, proof[:]...)
}

// atkSealGoodbye signs a goodbye payload with key.
func atkSealGoodbye(t testing.TB, payload []byte, key crypto.PrivKey) []byte {
	t.Helper()
	env, err := record.Seal(&atkGoodbye{payload: payload}, key)
	require.NoError(t, err)
	b, err := env.Marshal()
	require.NoError(t, err)
	return b
}
