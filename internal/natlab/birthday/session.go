package birthday

import (
	"net/netip"
	"time"
)

// The bounds of a session beyond its probes. Every datagram a side sends
// that is not a probe answers one of the peer's, on a pair that the peer's
// token opened, so these caps bound what a session sends in all: at most
// maxPairs × maxSendsPerPair + confirmCopies datagrams besides the probes
// (162), however many datagrams the peer (or anyone who knows the token)
// sends.
const (
	// maxPairs is how many pairs a side tracks. In the easy/hard cell one
	// pair opens, rarely two (two of the easy side's guesses hit two of
	// the hard side's mappings within one round trip); more means
	// something else is sending with the token, and tracking it would
	// only cost memory.
	maxPairs = 16
	// maxSendsPerPair caps a side's answers and retransmissions on one
	// pair: with retransmitInterval, a pair that works one way is retried
	// for 2 s, long enough for several round trips on any path.
	maxSendsPerPair = 10
	// confirmCopies is how many copies of its confirm the easy side sends
	// back to back. The easy side returns as soon as it has sent it, so a
	// lost confirm would leave the hard side without a pair until its
	// Timeout while the easy side has one; two copies make that p² for a
	// path that loses p of its packets, for one datagram more.
	confirmCopies = 2
	// retransmitInterval is how often a side resends its answer on a pair
	// that it has heard the peer on but that is not yet confirmed. Only
	// such pairs are retried: the path works at least towards us, so a
	// lost answer is the likely reason for the silence. Shorter than most
	// internet round trips would only add duplicates; much longer would
	// add its length to the upgrade whenever an answer is lost.
	retransmitInterval = 200 * time.Millisecond
)

// pairKey is a pair as one side sees it: which of its sockets, and the
// peer's address as that socket sees it (the peer NAT's public address
// and port for this flow).
type pairKey struct {
	sock   int
	remote netip.AddrPort
}

// pairState is what a side knows of one pair.
type pairState struct {
	peerSeq uint32 // the seq of the peer's last datagram on the pair
	acked   bool   // the peer acknowledged a datagram we sent on the pair
	sends   int    // answers and retransmissions sent on the pair
}

// datagram is one datagram to send, on a pair.
type datagram struct {
	on pairKey
	b  []byte
}

// session is one side's state machine, without I/O: run feeds it what the
// sockets read and the retransmission timer, and sends what it returns.
//
// The easy side decides (as ICE's controlling agent): it keeps the first
// pair on which the hard side acknowledged one of its datagrams — a pair
// that worked both ways — and sends a confirm on it. The hard side keeps
// the pair on which the confirm arrives, provided it acknowledges one of
// the hard side's datagrams on that pair. Without one decider, the sides
// could each keep a different working pair: when the easy side's probe
// reaches hard socket i while the hard side's probe from socket j reaches
// the easy side (which had probed j's port before j's mapping existed),
// each side would see one pair work first.
type session struct {
	me     side
	token  Token
	seq    uint32             // the last seq sent
	sentOn map[uint32]pairKey // every seq sent, with its pair
	pairs  map[pairKey]*pairState

	done   bool
	chosen pairKey // when done
}

func newSession(me side, token Token) *session {
	return &session{me: me, token: token, sentOn: map[uint32]pairKey{}, pairs: map[pairKey]*pairState{}}
}

// next builds the session's next datagram on a pair.
func (s *session) next(k kind, on pairKey, ack uint32) datagram {
	s.seq++
	s.sentOn[s.seq] = on
	m := message{from: s.me, kind: k, token: s.token, seq: s.seq, ack: ack}
	return datagram{on: on, b: m.append(make([]byte, 0, wireLen))}
}

// probe returns a probe on a pair.
func (s *session) probe(on pairKey) datagram { return s.next(kindProbe, on, 0) }

// receive handles datagram b, which arrived on pair on. It reports whether
// b was the peer's (its token, the other side; false: ignored), and
// returns what to send in answer. When it sets s.done, the session has
// its pair.
func (s *session) receive(on pairKey, b []byte) ([]datagram, bool) {
	m, err := decode(b)
	if err != nil || m.from == s.me || !sameToken(m.token, s.token) {
		return nil, false
	}
	if s.done {
		return nil, true
	}
	st := s.pairs[on]
	if st == nil {
		if len(s.pairs) >= maxPairs {
			return nil, true
		}
		st = &pairState{}
		s.pairs[on] = st
	}
	st.peerSeq = m.seq
	if m.ack != 0 {
		if k, ok := s.sentOn[m.ack]; ok && k == on {
			st.acked = true
		}
	}
	switch {
	case s.me == sideEasy && st.acked:
		s.done, s.chosen = true, on
		c := s.next(kindConfirm, on, m.seq)
		out := make([]datagram, confirmCopies)
		for i := range out {
			out[i] = c
		}
		return out, true
	case m.kind == kindConfirm: // at the hard side
		if st.acked {
			s.done, s.chosen = true, on
		}
		return nil, true // a confirm is never answered
	}
	return s.answer(on, st), true
}

// answer returns a reply on a pair, acknowledging the peer's last
// datagram on it, unless the pair has had its share.
func (s *session) answer(on pairKey, st *pairState) []datagram {
	if st.sends >= maxSendsPerPair {
		return nil
	}
	st.sends++
	return []datagram{s.next(kindReply, on, st.peerSeq)}
}

// retransmit returns the answers to resend: one on every pair heard but
// not confirmed.
func (s *session) retransmit() []datagram {
	if s.done {
		return nil
	}
	var out []datagram
	for on, st := range s.pairs {
		out = append(out, s.answer(on, st)...)
	}
	return out
}
