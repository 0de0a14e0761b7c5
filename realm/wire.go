package realm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/multiformats/go-varint"
)

// MaxFrameSize caps every frame of the realm protocols, in bytes: a frame is
// an unsigned-varint length followed by that many bytes (the varint framing
// of go-msgio and of libp2p's protocols); a longer declared length is
// refused before anything is allocated.
const MaxFrameSize = 4096

// Sizes of the handshake frames, in bytes.
const (
	nonceSize  = 32
	macSize    = 32
	helloSize  = nonceSize + macSize // nonce_i ‖ tag
	replySize  = nonceSize + macSize // nonce_r ‖ MAC_r
	finishSize = macSize             // MAC_i
)

// MaxProtocolLength caps the application protocol ID in a realm stream
// header, in bytes.
const MaxProtocolLength = 1024

// ErrBadFrame is wrapped by every decoding error: a frame of the wrong size,
// an unknown kind, a malformed protocol ID, or a frame over MaxFrameSize.
var ErrBadFrame = errors.New("realm: bad frame")

// readFrame reads one frame (at most MaxFrameSize bytes) from r. An empty
// frame yields a nil slice. The length is read one byte at a time (never
// past the frame) as a minimal unsigned varint (go-varint) and checked
// against MaxFrameSize as a uint64, before any allocation — go-msgio's
// reader converts it to int first, which on 32-bit platforms lets a 5-byte
// frame claim a negative or wrapped length. Malformed lengths wrap
// ErrBadFrame; a frame cut short is io.ErrUnexpectedEOF (or the stream's
// error).
func readFrame(r io.Reader) ([]byte, error) {
	n, err := varint.ReadUvarint(byteReader{r})
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return nil, err
	case errors.Is(err, varint.ErrOverflow) || errors.Is(err, varint.ErrNotMinimal):
		return nil, fmt.Errorf("%w: frame length: %w", ErrBadFrame, err)
	case err != nil:
		return nil, err
	case n > MaxFrameSize:
		return nil, fmt.Errorf("%w: %d bytes declared, the limit is %d", ErrBadFrame, n, MaxFrameSize)
	case n == 0:
		return nil, nil
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// byteReader reads single bytes from r, without buffering.
type byteReader struct{ r io.Reader }

// ReadByte reads exactly one byte (io.ByteReader).
func (b byteReader) ReadByte() (byte, error) {
	var one [1]byte
	if _, err := io.ReadFull(b.r, one[:]); err != nil {
		return 0, err
	}
	return one[0], nil
}

// writeFrame writes b as one frame in one Write.
func writeFrame(w io.Writer, b []byte) error {
	frame, err := appendFrame(nil, b)
	if err != nil {
		return err
	}
	_, err = w.Write(frame)
	return err
}

// appendFrame appends b as a frame (its uvarint length, then b) to dst.
// It returns ErrBadFrame when b is over MaxFrameSize.
func appendFrame(dst, b []byte) ([]byte, error) {
	if len(b) > MaxFrameSize {
		return dst, fmt.Errorf("%w: %d bytes to send, the limit is %d", ErrBadFrame, len(b), MaxFrameSize)
	}
	dst = slices.Grow(dst, varint.MaxLenUvarint63+len(b))
	dst = binary.AppendUvarint(dst, uint64(len(b))) // the same unsigned varint (LEB128)
	return append(dst, b...), nil
}

// coalesceLimit is the largest write that the realm layer copies into one
// buffer, so that pieces written together leave in one QUIC STREAM frame,
// usually one packet, instead of a frame and a wake-up of the reader each:
// a stream's header with the application's first write, a request's or
// response's length prefix with its body. Larger writes fill packets of
// their own anyway. In bytes.
const coalesceLimit = 4 << 10

// coalescePool holds coalesceLimit-byte buffers for writeJoined.
var coalescePool = sync.Pool{New: func() any {
	b := make([]byte, 0, coalesceLimit)
	return &b
}}

// writeJoined writes parts to w: with one Write when they fit in
// coalesceLimit bytes together, one Write per part otherwise. It returns
// the number of bytes written.
func writeJoined(w io.Writer, parts ...[]byte) (int, error) {
	total := 0
	for _, p := range parts {
		total += len(p)
	}
	if total > coalesceLimit || len(parts) == 1 {
		n := 0
		for _, p := range parts {
			if len(p) == 0 {
				continue
			}
			m, err := w.Write(p)
			n += m
			if err != nil {
				return n, err
			}
		}
		return n, nil
	}
	if total == 0 {
		return 0, nil
	}
	bp := coalescePool.Get().(*[]byte)
	buf := (*bp)[:0]
	for _, p := range parts {
		buf = append(buf, p...)
	}
	n, err := w.Write(buf)
	*bp = buf[:0]
	coalescePool.Put(bp)
	return n, err
}

// decodeNonceMAC splits a hello (nonce_i ‖ tag) or reply (nonce_r ‖ MAC_r).
func decodeNonceMAC(b []byte) (nonce, mac [32]byte, err error) {
	if len(b) != helloSize {
		return nonce, mac, fmt.Errorf("%w: %d bytes, want %d", ErrBadFrame, len(b), helloSize)
	}
	copy(nonce[:], b[:nonceSize])
	copy(mac[:], b[nonceSize:])
	return nonce, mac, nil
}

func encodeNonceMAC(nonce, mac *[32]byte) []byte {
	b := make([]byte, 0, helloSize)
	return append(append(b, nonce[:]...), mac[:]...)
}

// decodeFinish reads MAC_i.
func decodeFinish(b []byte) (mac [32]byte, err error) {
	if len(b) != finishSize {
		return mac, fmt.Errorf("%w: %d bytes, want %d", ErrBadFrame, len(b), finishSize)
	}
	copy(mac[:], b)
	return mac, nil
}

// streamKind says what a realm stream carries.
type streamKind byte

const (
	kindApp      streamKind = 1 // an application protocol
	kindMembers  streamKind = 2 // member exchange (signed peer records)
	kindGoodbye  streamKind = 3 // a leaving member's signed goodbye
	maxKindValue            = kindGoodbye
)

// streamHeader opens every realm stream: kind (1 byte) ‖ realm handle
// (16 bytes) ‖ application protocol ID (kindApp only, 1–MaxProtocolLength
// bytes of UTF-8).
type streamHeader struct {
	kind     streamKind
	handle   handle
	protocol protocol.ID
}

const headerFixedSize = 1 + len(handle{})

func encodeStreamHeader(h streamHeader) []byte {
	b := make([]byte, 0, headerFixedSize+len(h.protocol))
	b = append(b, byte(h.kind))
	b = append(b, h.handle[:]...)
	return append(b, h.protocol...)
}

func decodeStreamHeader(b []byte) (streamHeader, error) {
	var h streamHeader
	if len(b) < headerFixedSize {
		return h, fmt.Errorf("%w: stream header of %d bytes, want at least %d", ErrBadFrame, len(b), headerFixedSize)
	}
	h.kind = streamKind(b[0])
	if h.kind == 0 || h.kind > maxKindValue {
		return h, fmt.Errorf("%w: unknown stream kind %d", ErrBadFrame, b[0])
	}
	copy(h.handle[:], b[1:headerFixedSize])
	proto := b[headerFixedSize:]
	if h.kind != kindApp {
		if len(proto) != 0 {
			return h, fmt.Errorf("%w: %d trailing bytes after a kind-%d header", ErrBadFrame, len(proto), h.kind)
		}
		return h, nil
	}
	p := string(proto) // one conversion, for the check and the header
	if err := checkProtocol(p); err != nil {
		return h, fmt.Errorf("%w: %w", ErrBadFrame, err)
	}
	h.protocol = protocol.ID(p)
	return h, nil
}

// checkProtocol validates an application protocol ID.
func checkProtocol(p string) error {
	return checkText(ErrBadProtocol, "protocol ID", p, MaxProtocolLength)
}

// checkText checks that s is non-empty UTF-8 of at most limit bytes; the
// error wraps kind and names what and the value.
func checkText(kind error, what, s string, limit int) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty %s", kind, what)
	case len(s) > limit:
		return fmt.Errorf("%w: %s of %d bytes, the limit is %d", kind, what, len(s), limit)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s %q is not valid UTF-8", kind, what, s)
	}
	return nil
}
