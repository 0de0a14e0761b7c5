package birthday

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// Token is a session's secret, 16 random bytes that both sides learn over
// the signalling channel (in the upgrade, the relayed DCUtR stream) and
// that every probe carries: a datagram without it is not the peer's and
// is ignored. An off-path host cannot guess it (2^-128), so it can neither
// forge a pair nor make a side answer it.
type Token [16]byte

// NewToken returns a new random token (crypto/rand).
func NewToken() Token {
	var t Token
	_, _ = rand.Read(t[:]) // never fails: crypto/rand.Read crashes the program instead
	return t
}

// String returns the token in hex, 32 characters.
func (t Token) String() string { return hex.EncodeToString(t[:]) }

// ParseToken parses the hex form of String.
func ParseToken(s string) (Token, error) {
	var t Token
	if len(s) != 2*len(t) {
		return t, fmt.Errorf("birthday: token %q: want %d hex digits", s, 2*len(t))
	}
	if _, err := hex.Decode(t[:], []byte(s)); err != nil {
		return t, fmt.Errorf("birthday: token %q: %w", s, err)
	}
	return t, nil
}

// side is which end of the session sent a datagram. A side accepts only
// the other's: its own probes, reflected by a middlebox or looped back,
// are not the peer.
type side byte

const (
	sideHard side = 1 // behind the endpoint-dependent (symmetric) NAT
	sideEasy side = 2 // behind the endpoint-independent NAT
)

func (s side) String() string {
	switch s {
	case sideHard:
		return "hard"
	case sideEasy:
		return "easy"
	}
	return fmt.Sprintf("side(%d)", byte(s))
}

// kind is what a datagram is for.
type kind byte

const (
	// kindProbe opens a pair: the hard side sends one from each of its
	// sockets to the easy side's address, the easy side one to each port
	// it guesses. It acknowledges nothing (ack 0).
	kindProbe kind = 1
	// kindReply answers a datagram of the peer on the pair it came on,
	// acknowledging its seq: the path works towards us, and the reply
	// tests it the other way.
	kindReply kind = 2
	// kindConfirm is the easy side's choice: it sends it on the pair it
	// keeps, acknowledging the hard side's seq on that pair, once it has
	// seen the pair work both ways. The hard side keeps the pair on which
	// it arrives; nobody answers it.
	kindConfirm kind = 3
)

// The datagram, 30 bytes, big-endian:
//
//	0   4  magic "rnBD"
//	4   1  side of the sender: 1 hard, 2 easy
//	5   1  kind: 1 probe, 2 reply, 3 confirm
//	6  16  token
//	22  4  seq: the sender's sequence number, from 1, unique in the session
//	26  4  ack: the seq of the peer's datagram this one answers; 0 for a probe
const (
	magic   = "rnBD"
	wireLen = 30
	// readBuf is the size of the read buffer: larger than wireLen, so that
	// a longer datagram is seen whole enough to be rejected for its
	// length, and small, since nothing longer is ever accepted.
	readBuf = 64
)

// message is a decoded datagram.
type message struct {
	from     side
	kind     kind
	token    Token
	seq, ack uint32
}

// append appends m's wire form to b.
func (m message) append(b []byte) []byte {
	b = append(b, magic...)
	b = append(b, byte(m.from), byte(m.kind))
	b = append(b, m.token[:]...)
	b = binary.BigEndian.AppendUint32(b, m.seq)
	return binary.BigEndian.AppendUint32(b, m.ack)
}

// errMalformed marks a datagram that is not a birthday message at all.
var errMalformed = errors.New("birthday: malformed datagram")

// decode parses one datagram. It accepts exactly the shape that append
// writes and checks every field's range; it never panics.
func decode(b []byte) (message, error) {
	if len(b) != wireLen {
		return message{}, fmt.Errorf("%w: %d bytes, want %d", errMalformed, len(b), wireLen)
	}
	if string(b[:4]) != magic {
		return message{}, fmt.Errorf("%w: bad magic", errMalformed)
	}
	m := message{
		from: side(b[4]),
		kind: kind(b[5]),
		seq:  binary.BigEndian.Uint32(b[22:26]),
		ack:  binary.BigEndian.Uint32(b[26:30]),
	}
	copy(m.token[:], b[6:22])
	switch {
	case m.from != sideHard && m.from != sideEasy:
		return message{}, fmt.Errorf("%w: side %d", errMalformed, b[4])
	case m.kind < kindProbe || m.kind > kindConfirm:
		return message{}, fmt.Errorf("%w: kind %d", errMalformed, b[5])
	case m.seq == 0:
		return message{}, fmt.Errorf("%w: seq 0", errMalformed)
	case (m.kind == kindProbe) != (m.ack == 0):
		return message{}, fmt.Errorf("%w: kind %d with ack %d", errMalformed, m.kind, m.ack)
	case m.kind == kindConfirm && m.from != sideEasy:
		return message{}, fmt.Errorf("%w: a confirm from the hard side", errMalformed)
	}
	return m, nil
}

// sameToken compares tokens in constant time.
func sameToken(a, b Token) bool { return subtle.ConstantTimeCompare(a[:], b[:]) == 1 }
