package birthday

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// TestWireRoundTrip: what append writes, decode reads back.
func TestWireRoundTrip(t *testing.T) {
	m := message{from: sideEasy, kind: kindReply, token: NewToken(), seq: 7, ack: 3}
	b := m.append(nil)
	if len(b) != wireLen {
		t.Fatalf("wire form is %d bytes, want %d", len(b), wireLen)
	}
	got, err := decode(b)
	if err != nil || got != m {
		t.Fatalf("decode(append(%+v)) = %+v, %v", m, got, err)
	}
}

// TestDecodeRejects: every field out of its range is rejected.
func TestDecodeRejects(t *testing.T) {
	good := message{from: sideHard, kind: kindProbe, token: NewToken(), seq: 1}.append(nil)
	if _, err := decode(good); err != nil {
		t.Fatalf("a good probe: %v", err)
	}
	set := func(off int, v ...byte) []byte {
		b := bytes.Clone(good)
		copy(b[off:], v)
		return b
	}
	ack := func(k kind, from side, ack uint32) []byte {
		b := set(4, byte(from), byte(k))
		binary.BigEndian.PutUint32(b[26:], ack)
		return b
	}
	for name, b := range map[string][]byte{
		"empty":               nil,
		"short":               good[:wireLen-1],
		"long":                append(bytes.Clone(good), 0),
		"magic":               set(0, 'x'),
		"side 0":              set(4, 0),
		"side 3":              set(4, 3),
		"kind 0":              set(5, 0),
		"kind 4":              set(5, 4),
		"seq 0":               set(22, 0, 0, 0, 0),
		"probe with ack":      ack(kindProbe, sideHard, 1),
		"reply without ack":   ack(kindReply, sideHard, 0),
		"confirm from hard":   ack(kindConfirm, sideHard, 1),
		"confirm without ack": ack(kindConfirm, sideEasy, 0),
	} {
		if m, err := decode(b); err == nil {
			t.Errorf("%s: decoded as %+v", name, m)
		}
	}
}

// FuzzDecode: decode never panics, and what it accepts is exactly what
// append writes.
func FuzzDecode(f *testing.F) {
	f.Add(message{from: sideHard, kind: kindProbe, token: NewToken(), seq: 1}.append(nil))
	f.Add(message{from: sideEasy, kind: kindConfirm, token: NewToken(), seq: 9, ack: 4}.append(nil))
	f.Add([]byte("rnBD"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decode(b)
		if err == nil && !bytes.Equal(m.append(nil), b) {
			t.Fatalf("decode(%x) = %+v, which encodes as %x", b, m, m.append(nil))
		}
	})
}

// TestToken: String and ParseToken are inverses; bad forms are errors.
func TestToken(t *testing.T) {
	tok := NewToken()
	if got, err := ParseToken(tok.String()); err != nil || got != tok {
		t.Fatalf("ParseToken(%s) = %v, %v", tok, got, err)
	}
	if tok == NewToken() {
		t.Fatal("two tokens are equal")
	}
	for _, s := range []string{"", "00", tok.String() + "00", "zz" + tok.String()[2:]} {
		if _, err := ParseToken(s); err == nil {
			t.Errorf("ParseToken(%q) accepted it", s)
		}
	}
}

// The pairs of the session tests: the easy side's public address, and the
// hard side's public port for its socket i.
var (
	easyAt = netip.MustParseAddrPort("203.0.113.100:20000")
	hardIP = netip.MustParseAddr("203.0.113.101")
)

func hardPort(i int) netip.AddrPort { return netip.AddrPortFrom(hardIP, uint16(40000+i)) }

// atEasy is the pair of hard socket i as the easy side sees it.
func atEasy(i int) pairKey { return pairKey{remote: hardPort(i)} }

// atHard is the pair of hard socket i as the hard side sees it.
func atHard(i int) pairKey { return pairKey{sock: i, remote: easyAt} }

// cross delivers ds, sent by one side, to the other, as the network would
// between the pairs of atEasy and atHard, and returns the answers.
func cross(t *testing.T, to *session, ds []datagram) []datagram {
	t.Helper()
	var out []datagram
	for _, d := range ds {
		on := atHard(int(d.on.remote.Port()) - 40000)
		if to.me == sideEasy {
			on = atEasy(d.on.sock)
		}
		ans, ok := to.receive(on, d.b)
		if !ok {
			t.Fatalf("the %s side ignored a datagram of the peer", to.me)
		}
		out = append(out, ans...)
	}
	return out
}

// TestSessionEasyProbeFirst: the easy side's probe crosses first (the hard
// side's mapping existed): probe, reply, confirm; both keep that pair.
func TestSessionEasyProbeFirst(t *testing.T) {
	tok := NewToken()
	easy, hard := newSession(sideEasy, tok), newSession(sideHard, tok)
	_ = hard.probe(atHard(3)) // made the mapping; dropped at the easy NAT
	reply := cross(t, hard, []datagram{easy.probe(atEasy(3))})
	if len(reply) != 1 || hard.done {
		t.Fatalf("hard side: %d answers, done %v; want 1 reply, not done", len(reply), hard.done)
	}
	confirm := cross(t, easy, reply)
	if !easy.done || easy.chosen != atEasy(3) || len(confirm) != confirmCopies {
		t.Fatalf("easy side: done %v on %v with %d datagrams; want done on %v with %d confirms", easy.done, easy.chosen, len(confirm), atEasy(3), confirmCopies)
	}
	if out := cross(t, hard, confirm); len(out) != 0 {
		t.Fatalf("the hard side answered a confirm: %d datagrams", len(out))
	}
	if !hard.done || hard.chosen != atHard(3) {
		t.Fatalf("hard side: done %v on %v; want done on %v", hard.done, hard.chosen, atHard(3))
	}
}

// TestSessionHardProbeFirst: the hard side's probe crosses first (the easy
// side had probed the port before the mapping existed): probe, reply,
// reply, confirm.
func TestSessionHardProbeFirst(t *testing.T) {
	tok := NewToken()
	easy, hard := newSession(sideEasy, tok), newSession(sideHard, tok)
	_ = easy.probe(atEasy(5)) // dropped at the hard NAT, but opened the easy NAT
	reply := cross(t, easy, []datagram{hard.probe(atHard(5))})
	if easy.done || len(reply) != 1 {
		t.Fatalf("easy side after a probe: done %v, %d answers", easy.done, len(reply))
	}
	reply = cross(t, hard, reply)
	if hard.done || len(reply) != 1 {
		t.Fatalf("hard side after a reply: done %v, %d answers; a reply does not make it done", hard.done, len(reply))
	}
	confirm := cross(t, easy, reply)
	if !easy.done || easy.chosen != atEasy(5) {
		t.Fatalf("easy side: done %v on %v", easy.done, easy.chosen)
	}
	cross(t, hard, confirm)
	if !hard.done || hard.chosen != atHard(5) {
		t.Fatalf("hard side: done %v on %v", hard.done, hard.chosen)
	}
}

// TestSessionCrossedPairs: two pairs open at once, one each way; the sides
// still keep the same one, the easy side's choice.
func TestSessionCrossedPairs(t *testing.T) {
	tok := NewToken()
	easy, hard := newSession(sideEasy, tok), newSession(sideHard, tok)
	_ = easy.probe(atEasy(1))
	toHard := cross(t, easy, []datagram{hard.probe(atHard(1))}) // pair 1, hard side first
	toEasy := cross(t, hard, []datagram{easy.probe(atEasy(2))}) // pair 2, easy side first
	confirm := cross(t, easy, toEasy)                           // the hard side's reply on pair 2
	if !easy.done || easy.chosen != atEasy(2) {
		t.Fatalf("easy side: done %v on %v; want pair 2", easy.done, easy.chosen)
	}
	cross(t, hard, toHard) // the easy side's reply on pair 1: acknowledges, but is no confirm
	if hard.done {
		t.Fatalf("the hard side kept pair %v on a reply, while the easy side keeps pair 2", hard.chosen)
	}
	cross(t, hard, confirm)
	if !hard.done || hard.chosen != atHard(2) {
		t.Fatalf("hard side: done %v on %v; want pair 2", hard.done, hard.chosen)
	}
}

// TestSessionIgnores: datagrams with another token, from the receiver's
// own side, or malformed are ignored; an acknowledgement of a datagram
// sent on another pair confirms nothing.
func TestSessionIgnores(t *testing.T) {
	tok := NewToken()
	easy := newSession(sideEasy, tok)
	probe := easy.probe(atEasy(1))
	if _, ok := easy.receive(atEasy(1), probe.b); ok {
		t.Error("the easy side took its own probe, reflected, for the peer's")
	}
	forged := newSession(sideHard, NewToken()).probe(atHard(1))
	if _, ok := easy.receive(atEasy(1), forged.b); ok {
		t.Error("the easy side took a probe with another token for the peer's")
	}
	if _, ok := easy.receive(atEasy(1), []byte("hello")); ok {
		t.Error("the easy side took a malformed datagram for the peer's")
	}
	// The hard side acknowledges the easy side's probe to port 1, but the
	// acknowledgement arrives from port 2: it proves nothing of pair 2.
	hard := newSession(sideHard, tok)
	_, _ = hard.receive(atHard(1), probe.b)
	misplaced := hard.next(kindReply, atHard(1), 1)
	if _, ok := easy.receive(atEasy(2), misplaced.b); !ok || easy.done {
		t.Errorf("the easy side: peer's %v, done %v; want the peer's, not done", ok, easy.done)
	}
}

// TestSessionBounds: a side tracks at most maxPairs pairs and sends at
// most maxSendsPerPair answers and retransmissions on each.
func TestSessionBounds(t *testing.T) {
	tok := NewToken()
	hard := newSession(sideHard, tok)
	peer := newSession(sideEasy, tok)
	sent := 0
	for i := range 2 * maxPairs {
		for range 3 * maxSendsPerPair {
			out, ok := hard.receive(atHard(i), peer.probe(atEasy(i)).b)
			if !ok {
				t.Fatal("a probe with the token was ignored")
			}
			sent += len(out)
		}
		sent += len(hard.retransmit())
	}
	if len(hard.pairs) != maxPairs || sent != maxPairs*maxSendsPerPair {
		t.Fatalf("%d pairs tracked and %d datagrams sent; want %d and %d", len(hard.pairs), sent, maxPairs, maxPairs*maxSendsPerPair)
	}
}

// TestSampler: the sampler's ports are distinct and in range, and it can
// draw the whole range.
func TestSampler(t *testing.T) {
	s := newSampler(60000, 60999)
	seen := map[uint16]bool{}
	for range 1000 {
		p := s.next()
		if p < 60000 || p > 60999 || seen[p] {
			t.Fatalf("port %d: out of range or drawn twice", p)
		}
		seen[p] = true
	}
	s = newSampler(65535, 65535)
	if p := s.next(); p != 65535 {
		t.Fatalf("the one port of 65535-65535: %d", p)
	}
}
