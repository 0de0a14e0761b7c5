package realm

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
	ma "github.com/multiformats/go-multiaddr"
)

// Fuzz targets for every decoder of the realm protocols' wire format. Each
// target checks that its decoder never panics, that its errors wrap
// ErrBadFrame (readFrame: those about the length, see FuzzReadFrame), and
// what a successful decode guarantees.
//
// Seeds come from two places: fuzzSeeds, added with f.Add and built afresh
// on every run (real signed records with new keys; seeds named "valid-..."
// decode, the others are edge cases that must be refused), and the
// committed corpus in testdata/fuzz/<FuzzName>/, which plain `go test` runs
// too. The corpus is fuzzSeeds' output at one point in time; regenerate it
// with
//
//	go test -run '^TestWriteFuzzCorpus$' ./realm/ -realm.writecorpus
//
// which rewrites the files it names and leaves the others (inputs the
// fuzzer found and someone committed) alone. .ci/fuzz runs each target for
// a few seconds.
//
// Run on a 32-bit platform (GOARCH=386 go test -run Fuzz ./realm/), the
// FuzzReadFrame seeds "declared-4294967295" (panic), "declared-4294967301"
// and "varint-9-bytes" (lengths truncated) fail: go-msgio converts the
// declared length to int before comparing it with the limit.

var fuzzWriteCorpus = flag.Bool("realm.writecorpus", false, "TestWriteFuzzCorpus: rewrite the seed corpus under testdata/fuzz")

// fuzzSeed is one named seed input of a fuzz target.
type fuzzSeed struct {
	name string
	data []byte
}

// fuzzFrame returns b with its varint length prefix (as writeFrame sends it).
func fuzzFrame(b []byte) []byte {
	return append(binary.AppendUvarint(nil, uint64(len(b))), b...)
}

// fuzzRandom returns n bytes from crypto/rand.
func fuzzRandom(tb testing.TB, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return b
}

// fuzzRawRecord is a record.Record with any domain, codec and payload, to seal
// malformed payloads with a valid signature.
type fuzzRawRecord struct {
	domain  string
	codec   []byte
	payload []byte
}

func (r *fuzzRawRecord) Domain() string                 { return r.domain }
func (r *fuzzRawRecord) Codec() []byte                  { return r.codec }
func (r *fuzzRawRecord) MarshalRecord() ([]byte, error) { return r.payload, nil }
func (r *fuzzRawRecord) UnmarshalRecord(b []byte) error { r.payload = b; return nil }

// fuzzKey returns a fresh private key of type typ (crypto.Ed25519, ...).
func fuzzKey(tb testing.TB, typ int) crypto.PrivKey {
	tb.Helper()
	key, _, err := crypto.GenerateKeyPairWithReader(typ, 256, rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

// fuzzSeal returns the marshalled envelope of rec signed with key.
func fuzzSeal(tb testing.TB, rec record.Record, key crypto.PrivKey) []byte {
	tb.Helper()
	env, err := record.Seal(rec, key)
	if err != nil {
		tb.Fatal(err)
	}
	b, err := env.Marshal()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func fuzzID(tb testing.TB, key crypto.PrivKey) peer.ID {
	tb.Helper()
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// fuzzPeerRecord returns a signed peer record envelope for key's peer with addrs.
func fuzzPeerRecord(tb testing.TB, key crypto.PrivKey, addrs ...string) []byte {
	tb.Helper()
	ai := peer.AddrInfo{ID: fuzzID(tb, key)}
	for _, a := range addrs {
		ai.Addrs = append(ai.Addrs, ma.StringCast(a))
	}
	return fuzzSeal(tb, peer.PeerRecordFromAddrInfo(ai), key)
}

// fuzzGoodbye returns a signed goodbye envelope as sayGoodbye sends it.
func fuzzGoodbye(tb testing.TB, key crypto.PrivKey, unixNano int64) []byte {
	tb.Helper()
	g := &goodbye{unixNano: unixNano}
	copy(g.proof[:], fuzzRandom(tb, len(g.proof)))
	b, err := sealWith(g, key)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// fuzzSeeds returns the seeds of the fuzz target called name: valid inputs
// and edge cases.
func fuzzSeeds(tb testing.TB, name string) []fuzzSeed {
	tb.Helper()
	switch name {
	case "FuzzReadFrame":
		maxBody := bytes.Repeat([]byte{0xa5}, MaxFrameSize)
		hello := append(fuzzRandom(tb, nonceSize), fuzzRandom(tb, macSize)...)
		return []fuzzSeed{
			{"empty-input", nil},
			{"valid-empty-frame", []byte{0x00}},
			{"valid-hello", fuzzFrame(hello)},
			{"valid-two-frames", append(fuzzFrame([]byte("first")), fuzzFrame([]byte("second"))...)},
			{"valid-max-size", fuzzFrame(maxBody)},
			{"max-size-truncated", fuzzFrame(maxBody)[:MaxFrameSize]},
			{"declared-4097", append(binary.AppendUvarint(nil, MaxFrameSize+1), maxBody...)},
			{"declared-4097-no-body", binary.AppendUvarint(nil, MaxFrameSize+1)},
			{"truncated-varint", []byte{0x80}},
			{"truncated-varint-2", []byte{0xff, 0xff}},
			{"non-minimal-varint", []byte{0x81, 0x00, 'x'}},
			{"non-minimal-zero", []byte{0x80, 0x00}},
			{"varint-9-bytes", binary.AppendUvarint(nil, 1<<62)},
			{"varint-10-bytes", binary.AppendUvarint(nil, 1<<63)},
			{"varint-overlong", bytes.Repeat([]byte{0xff}, 11)},
			// Lengths whose low 32 bits are small or negative: a 32-bit int
			// conversion in the reader would get them wrong.
			{"declared-4294967301", append(binary.AppendUvarint(nil, 1<<32+5), "hello"...)},
			{"declared-4294967295", append(binary.AppendUvarint(nil, 1<<32-1), "x"...)},
			{"declared-max-int63", binary.AppendUvarint(nil, 1<<63-1)},
			{"body-truncated", fuzzFrame([]byte("hello"))[:4]},
		}
	case "FuzzDecodeNonceMAC":
		return []fuzzSeed{
			{"valid-hello", fuzzRandom(tb, helloSize)},
			{"valid-zeros", make([]byte, helloSize)},
			{"empty", nil},
			{"short", fuzzRandom(tb, helloSize-1)},
			{"long", fuzzRandom(tb, helloSize+1)},
			{"finish-size", fuzzRandom(tb, finishSize)},
		}
	case "FuzzDecodeFinish":
		return []fuzzSeed{
			{"valid-finish", fuzzRandom(tb, finishSize)},
			{"valid-zeros", make([]byte, finishSize)},
			{"empty", nil},
			{"short", fuzzRandom(tb, finishSize-1)},
			{"long", fuzzRandom(tb, finishSize+1)},
			{"hello-size", fuzzRandom(tb, helloSize)},
		}
	case "FuzzDecodeStreamHeader":
		var h handle
		copy(h[:], fuzzRandom(tb, len(h)))
		hdr := func(kind byte, proto string) []byte {
			return append(append([]byte{kind}, h[:]...), proto...)
		}
		return []fuzzSeed{
			{"valid-app", encodeStreamHeader(streamHeader{kind: kindApp, handle: h, protocol: "/echo/1.0.0"})},
			{"valid-members", encodeStreamHeader(streamHeader{kind: kindMembers, handle: h})},
			{"valid-goodbye", encodeStreamHeader(streamHeader{kind: kindGoodbye, handle: h})},
			{"valid-app-max-protocol", hdr(byte(kindApp), strings.Repeat("p", MaxProtocolLength))},
			{"app-protocol-too-long", hdr(byte(kindApp), strings.Repeat("p", MaxProtocolLength+1))},
			{"valid-app-utf8", hdr(byte(kindApp), "/écho/✓")},
			{"app-no-protocol", hdr(byte(kindApp), "")},
			{"app-bad-utf8", hdr(byte(kindApp), "/echo\xff")},
			{"members-trailing", hdr(byte(kindMembers), "x")},
			{"kind-0", hdr(0, "")},
			{"kind-4", hdr(4, "")},
			{"kind-255", hdr(255, "/echo")},
			{"empty", nil},
			{"short", hdr(byte(kindApp), "")[:headerFixedSize-1]},
			{"max-frame", hdr(byte(kindApp), strings.Repeat("p", MaxFrameSize-headerFixedSize))},
		}
	case "FuzzDecodePeerRecord":
		ed := fuzzKey(tb, crypto.Ed25519)
		other := fuzzKey(tb, crypto.Ed25519)
		valid := fuzzPeerRecord(tb, ed, "/ip4/127.0.0.1/udp/4001/quic-v1", "/ip6/::1/udp/4001/quic-v1")
		// Another peer's record signed with ed's key: must be refused.
		forged := fuzzSeal(tb, peer.PeerRecordFromAddrInfo(peer.AddrInfo{
			ID: fuzzID(tb, other), Addrs: []ma.Multiaddr{ma.StringCast("/ip4/10.0.0.1/udp/1/quic-v1")},
		}), ed)
		// As many addresses as fit in one frame.
		var many []string
		for i := 0; ; i++ {
			many = append(many, fmt.Sprintf("/ip4/10.%d.%d.%d/udp/%d/quic-v1", i>>16&255, i>>8&255, i&255, 1024+i))
			if len(fuzzPeerRecord(tb, ed, many...)) > MaxFrameSize {
				many = many[:len(many)-1]
				break
			}
		}
		return []fuzzSeed{
			{"valid-ed25519", valid},
			{"valid-no-addrs", fuzzPeerRecord(tb, ed)},
			{"valid-secp256k1", fuzzPeerRecord(tb, fuzzKey(tb, crypto.Secp256k1), "/ip4/192.0.2.1/tcp/4001")},
			{"valid-ecdsa", fuzzPeerRecord(tb, fuzzKey(tb, crypto.ECDSA), "/ip4/192.0.2.1/udp/4001/quic-v1")},
			{"valid-max-size", fuzzPeerRecord(tb, ed, many...)},
			{"forged-signer", forged},
			{"bad-payload", fuzzSeal(tb, &fuzzRawRecord{domain: peer.PeerRecordEnvelopeDomain, codec: peer.PeerRecordEnvelopePayloadType, payload: []byte{0x0a, 0xff}}, ed)},
			{"wrong-domain", fuzzSeal(tb, &fuzzRawRecord{domain: "not-libp2p-routing-state", codec: peer.PeerRecordEnvelopePayloadType, payload: nil}, ed)},
			{"goodbye", fuzzGoodbye(tb, ed, 1)},
			{"flipped-signature-byte", fuzzFlipLast(valid)},
			{"truncated", valid[:len(valid)/2]},
			{"empty", nil},
		}
	case "FuzzDecodeGoodbye":
		ed := fuzzKey(tb, crypto.Ed25519)
		valid := fuzzGoodbye(tb, ed, 1_700_000_000_000_000_000)
		return []fuzzSeed{
			{"valid-ed25519", valid},
			{"valid-secp256k1", fuzzGoodbye(tb, fuzzKey(tb, crypto.Secp256k1), -1)},
			{"short-payload", fuzzSeal(tb, &fuzzRawRecord{domain: goodbyeDomain, codec: goodbyeCodec, payload: make([]byte, 39)}, ed)},
			{"long-payload", fuzzSeal(tb, &fuzzRawRecord{domain: goodbyeDomain, codec: goodbyeCodec, payload: make([]byte, 41)}, ed)},
			{"wrong-codec", fuzzSeal(tb, &fuzzRawRecord{domain: goodbyeDomain, codec: []byte("/other"), payload: make([]byte, 40)}, ed)},
			{"peer-record", fuzzPeerRecord(tb, ed, "/ip4/127.0.0.1/udp/4001/quic-v1")},
			{"flipped-signature-byte", fuzzFlipLast(valid)},
			{"truncated", valid[:len(valid)-1]},
			{"empty", nil},
		}
	}
	tb.Fatalf("no seeds for %s", name)
	return nil
}

// fuzzFlipLast returns a copy of b with its last byte inverted (inside the
// signature of a marshalled envelope).
func fuzzFlipLast(b []byte) []byte {
	b = bytes.Clone(b)
	b[len(b)-1] ^= 0xff
	return b
}

func fuzzAddSeeds(f *testing.F) {
	for _, s := range fuzzSeeds(f, f.Name()) {
		f.Add(s.data)
	}
}

// fuzzTargets names every fuzz target, for TestWriteFuzzCorpus.
var fuzzTargets = []string{
	"FuzzReadFrame", "FuzzDecodeNonceMAC", "FuzzDecodeFinish",
	"FuzzDecodeStreamHeader", "FuzzDecodePeerRecord", "FuzzDecodeGoodbye",
}

// TestWriteFuzzCorpus rewrites testdata/fuzz/<FuzzName>/<seed name> for
// every seed of fuzzSeeds, in the "go test fuzz v1" format, when run with
// -realm.writecorpus; otherwise it is skipped.
func TestWriteFuzzCorpus(t *testing.T) {
	if !*fuzzWriteCorpus {
		t.Skip("run with -realm.writecorpus to rewrite testdata/fuzz")
	}
	for _, name := range fuzzTargets {
		dir := filepath.Join("testdata", "fuzz", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, s := range fuzzSeeds(t, name) {
			content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s.data)
			if err := os.WriteFile(filepath.Join(dir, s.name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// fuzzDecoders runs each fuzz target's decoder on one input, for
// TestFuzzSeedsDecode.
var fuzzDecoders = map[string]func([]byte) error{
	"FuzzReadFrame": func(b []byte) error {
		_, err := readFrame(bytes.NewReader(b))
		return err
	},
	"FuzzDecodeNonceMAC": func(b []byte) error {
		_, _, err := decodeNonceMAC(b)
		return err
	},
	"FuzzDecodeFinish": func(b []byte) error {
		_, err := decodeFinish(b)
		return err
	},
	"FuzzDecodeStreamHeader": func(b []byte) error {
		_, err := decodeStreamHeader(b)
		return err
	},
	"FuzzDecodePeerRecord": func(b []byte) error {
		_, _, err := decodePeerRecord(b)
		return err
	},
	"FuzzDecodeGoodbye": func(b []byte) error {
		_, _, err := decodeGoodbye(b)
		return err
	},
}

// fuzzCorpus reads the committed corpus of the fuzz target called name
// (files in the "go test fuzz v1" format holding one []byte), named
// "corpus/<file name>".
func fuzzCorpus(t *testing.T, name string) []fuzzSeed {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", name)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("corpus of %s: %v", name, err)
	}
	var out []fuzzSeed
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		header, value, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		quoted, hasPrefix := strings.CutPrefix(value, "[]byte(")
		quoted, hasSuffix := strings.CutSuffix(quoted, ")")
		if !hasPrefix || !hasSuffix || header != "go test fuzz v1" {
			t.Fatalf("%s/%s: not one []byte in the go test fuzz v1 format", name, e.Name())
		}
		data, err := strconv.Unquote(quoted)
		if err != nil {
			t.Fatalf("%s/%s: %v", name, e.Name(), err)
		}
		out = append(out, fuzzSeed{name: "corpus/" + e.Name(), data: []byte(data)})
	}
	return out
}

// TestFuzzSeedsDecode checks that the seeds, and the committed corpus files
// named after them, are what their names say: the "valid-" ones decode, the
// others are refused. (The fuzz targets check properties that hold either
// way.)
func TestFuzzSeedsDecode(t *testing.T) {
	for _, name := range fuzzTargets {
		decode := fuzzDecoders[name]
		if decode == nil {
			t.Fatalf("no decoder for %s", name)
		}
		seeds := fuzzSeeds(t, name)
		named := make(map[string]bool, len(seeds))
		for _, s := range seeds {
			named[s.name] = true
		}
		// Committed files named after a seed (others are inputs the fuzzer
		// found, checked by the fuzz target only).
		for _, s := range fuzzCorpus(t, name) {
			if named[strings.TrimPrefix(s.name, "corpus/")] {
				seeds = append(seeds, s)
			}
		}
		for _, s := range seeds {
			err := decode(s.data)
			base := strings.TrimPrefix(s.name, "corpus/")
			if valid := strings.HasPrefix(base, "valid-"); valid != (err == nil) {
				t.Errorf("%s/%s: err = %v", name, s.name, err)
			}
		}
	}
}

// FuzzReadFrame checks readFrame against a model of the framing: a minimal
// unsigned varint n ≤ MaxFrameSize followed by at least n bytes is the frame
// of those n bytes (nil for n = 0); a longer declared length fails with
// ErrBadFrame; anything else fails. No call returns more than MaxFrameSize
// bytes.
func FuzzReadFrame(f *testing.F) {
	fuzzAddSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := readFrame(bytes.NewReader(data))
		if len(msg) > MaxFrameSize {
			t.Fatalf("readFrame returned %d bytes (err %v), the limit is %d", len(msg), err, MaxFrameSize)
		}
		n, k := binary.Uvarint(data)
		// go-varint (msgio's reader) takes minimal varints of at most 9
		// bytes (63 bits); binary.Uvarint also takes overlong encodings.
		minimal := k > 0 && k <= 9 && bytes.Equal(binary.AppendUvarint(nil, n), data[:k])
		switch {
		case !minimal:
			if err == nil {
				t.Fatalf("readFrame accepted %x, whose length prefix is not a minimal varint of at most 9 bytes: %x", data, msg)
			}
		case n > MaxFrameSize:
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("declared length %d: err = %v, want ErrBadFrame", n, err)
			}
			if msg != nil {
				t.Fatalf("declared length %d: returned %d bytes", n, len(msg))
			}
		case uint64(len(data)-k) < n:
			if err == nil {
				t.Fatalf("declared length %d with %d bytes following: no error", n, len(data)-k)
			}
		default:
			if err != nil {
				t.Fatalf("frame of %d bytes: %v", n, err)
			}
			if n == 0 && msg != nil {
				t.Fatalf("empty frame: got %x, want nil", msg)
			}
			if !bytes.Equal(msg, data[k:k+int(n)]) {
				t.Fatalf("frame of %d bytes: got %x, want %x", n, msg, data[k:k+int(n)])
			}
		}
	})
}

func FuzzDecodeNonceMAC(f *testing.F) {
	fuzzAddSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		nonce, mac, err := decodeNonceMAC(data)
		if len(data) != helloSize {
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("%d bytes: err = %v, want ErrBadFrame", len(data), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("%d bytes: %v", len(data), err)
		}
		if got := encodeNonceMAC(&nonce, &mac); !bytes.Equal(got, data) {
			t.Fatalf("round trip: got %x, want %x", got, data)
		}
	})
}

func FuzzDecodeFinish(f *testing.F) {
	fuzzAddSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		mac, err := decodeFinish(data)
		if len(data) != finishSize {
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("%d bytes: err = %v, want ErrBadFrame", len(data), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("%d bytes: %v", len(data), err)
		}
		if !bytes.Equal(mac[:], data) {
			t.Fatalf("got %x, want %x", mac, data)
		}
	})
}

func FuzzDecodeStreamHeader(f *testing.F) {
	fuzzAddSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := decodeStreamHeader(data)
		if err != nil {
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("err = %v, want ErrBadFrame", err)
			}
			return
		}
		if got := encodeStreamHeader(h); !bytes.Equal(got, data) {
			t.Fatalf("round trip: got %x, want %x", got, data)
		}
		switch h.kind {
		case kindApp:
			if h.protocol == "" || len(h.protocol) > MaxProtocolLength || !utf8.ValidString(string(h.protocol)) {
				t.Fatalf("accepted protocol ID %q", h.protocol)
			}
		case kindMembers, kindGoodbye:
			if h.protocol != "" {
				t.Fatalf("kind %d header with protocol %q", h.kind, h.protocol)
			}
		default:
			t.Fatalf("accepted kind %d", h.kind)
		}
	})
}

func FuzzDecodePeerRecord(f *testing.F) {
	fuzzAddSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		env, pr, err := decodePeerRecord(data)
		if err != nil {
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("err = %v, want ErrBadFrame", err)
			}
			if env != nil || pr != nil {
				t.Fatalf("error %v with a result", err)
			}
			return
		}
		signer, err := peer.IDFromPublicKey(env.PublicKey)
		if err != nil {
			t.Fatalf("accepted a record whose key has no peer ID: %v", err)
		}
		if signer != pr.PeerID {
			t.Fatalf("accepted a record for %s signed by %s", pr.PeerID, signer)
		}
		// The envelope marshals again, and that decodes to the same record.
		b, err := env.Marshal()
		if err != nil {
			t.Fatalf("marshal accepted envelope: %v", err)
		}
		env2, pr2, err := decodePeerRecord(b)
		if err != nil {
			t.Fatalf("re-marshalled envelope refused: %v", err)
		}
		if !env2.Equal(env) || pr2.PeerID != pr.PeerID || pr2.Seq != pr.Seq || len(pr2.Addrs) != len(pr.Addrs) {
			t.Fatalf("re-marshalled envelope decodes to %+v, want %+v", pr2, pr)
		}
		for i := range pr.Addrs {
			if !pr.Addrs[i].Equal(pr2.Addrs[i]) {
				t.Fatalf("address %d: %s, then %s", i, pr.Addrs[i], pr2.Addrs[i])
			}
		}
	})
}

func FuzzDecodeGoodbye(f *testing.F) {
	fuzzAddSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		signer, g, err := decodeGoodbye(data)
		if err != nil {
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("err = %v, want ErrBadFrame", err)
			}
			if signer != "" || g != nil {
				t.Fatalf("error %v with a result", err)
			}
			return
		}
		if g == nil || signer.Validate() != nil {
			t.Fatalf("accepted with goodbye %v, signer %q", g, signer)
		}
		env, err := record.UnmarshalEnvelope(data)
		if err != nil {
			t.Fatalf("accepted an envelope that does not unmarshal: %v", err)
		}
		if id, err := peer.IDFromPublicKey(env.PublicKey); err != nil || id != signer {
			t.Fatalf("signer %s, the envelope's key is %s (%v)", signer, id, err)
		}
		payload, err := g.MarshalRecord()
		if err != nil || !bytes.Equal(payload, env.RawPayload) {
			t.Fatalf("goodbye marshals to %x (%v), the envelope carried %x", payload, err, env.RawPayload)
		}
	})
}
