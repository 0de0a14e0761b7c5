package realm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Request/response inside a realm: one realm stream per request, for the
// request's application protocol, so that only authenticated members take
// part and the realm's stream scope is charged as for any realm stream.
//
// On the stream, after the realm's header:
//
//	request   uvarint length ‖ request bytes, then the caller closes its write side
//	response  status byte ‖ uvarint length ‖ body (the response, or an error message)
//
// Both sides cap what they read before allocating: the server requests at
// its MaxRequestSize (a longer one is answered RemoteRequestTooLarge
// without being read), the caller responses at its MaxResponseSize and
// error messages at MaxRemoteErrorSize.

// Defaults of RequestConfig.
const (
	// DefaultMaxRequestSize caps a request, 1 MiB.
	DefaultMaxRequestSize = 1 << 20
	// DefaultMaxResponseSize caps a response, 1 MiB.
	DefaultMaxResponseSize = 1 << 20
	// DefaultRequestTimeout bounds a request from the stream's opening to
	// the response's end (the caller) and from the stream's arrival to the
	// response sent (the server), 10 s.
	DefaultRequestTimeout = 10 * time.Second
	// MaxRequestLimit is the largest MaxRequestSize or MaxResponseSize a
	// RequestConfig may set, 64 MiB: a request is held in memory whole.
	MaxRequestLimit = 64 << 20
	// MaxRemoteErrorSize caps the message of a *RemoteError, 1 KiB: longer
	// handler errors are cut.
	MaxRemoteErrorSize = 1 << 10
	// MaxConcurrentRequests bounds a realm's requests in flight to one
	// member, 32: more wait for a slot (within their context). Every
	// request is a realm stream, and go-libp2p's resource manager allows
	// a peer 64 inbound streams of one protocol at once (rcmgr's
	// ProtocolPeerBaseLimit, shared by all of a realm's streams): beyond
	// that the member would refuse them.
	MaxConcurrentRequests = 32
)

var (
	// ErrRequestTooLarge: the request is over MaxRequestSize, the caller's
	// own (not sent) or the server's (a *RemoteError with code
	// RemoteRequestTooLarge matches it too).
	ErrRequestTooLarge = errors.New("realm: request too large")
	// ErrResponseTooLarge: the response is over the caller's
	// MaxResponseSize (the stream is reset), or over the server's (a
	// *RemoteError with code RemoteResponseTooLarge matches it too).
	ErrResponseTooLarge = errors.New("realm: response too large")
	// ErrNoRequestHandler: the member has no handler for the request's
	// protocol.
	ErrNoRequestHandler = errors.New("realm: no request handler for the protocol")
)

// RemoteCode says why a member's request handler did not answer.
type RemoteCode byte

// The response statuses; RemoteOK is no error.
const (
	RemoteOK RemoteCode = iota
	// RemoteHandlerError: the handler returned an error.
	RemoteHandlerError
	// RemoteRequestTooLarge: the request was over the server's
	// MaxRequestSize.
	RemoteRequestTooLarge
	// RemoteHandlerPanic: the handler panicked (the server recovered and
	// logged it).
	RemoteHandlerPanic
	// RemoteResponseTooLarge: the handler's response was over the server's
	// MaxResponseSize.
	RemoteResponseTooLarge
	remoteCodes // the number of codes: a byte at or above it is bad
)

// String returns the code's name.
func (c RemoteCode) String() string {
	switch c {
	case RemoteOK:
		return "ok"
	case RemoteHandlerError:
		return "handler error"
	case RemoteRequestTooLarge:
		return "request too large"
	case RemoteHandlerPanic:
		return "handler panic"
	case RemoteResponseTooLarge:
		return "response too large"
	}
	return fmt.Sprintf("unknown (%d)", byte(c))
}

// RemoteError is the error of a request that the member's handler (or the
// member's request limits) refused: the failure is on the remote side.
type RemoteError struct {
	// Realm, Peer and Protocol say which request failed.
	Realm    string
	Peer     peer.ID
	Protocol protocol.ID
	// Code says why; Message is the handler's error (for
	// RemoteHandlerError), at most MaxRemoteErrorSize bytes.
	Code    RemoteCode
	Message string
}

// Error describes the failure, naming the member and the protocol.
func (e *RemoteError) Error() string {
	return fmt.Sprintf("realm %q: request %s to %s: remote %s: %s", e.Realm, e.Protocol, e.Peer, e.Code, e.Message)
}

// Is makes a remote RemoteRequestTooLarge match ErrRequestTooLarge and a
// remote RemoteResponseTooLarge ErrResponseTooLarge.
func (e *RemoteError) Is(target error) bool {
	return (target == ErrRequestTooLarge && e.Code == RemoteRequestTooLarge) ||
		(target == ErrResponseTooLarge && e.Code == RemoteResponseTooLarge)
}

// RequestConfig are a realm's request/response limits, for the requests
// it sends and those it serves (see Requests). Zero fields take the
// defaults.
type RequestConfig struct {
	// MaxRequestSize caps a request, bytes (default 1 MiB, at most
	// MaxRequestLimit).
	MaxRequestSize int
	// MaxResponseSize caps a response, bytes (default 1 MiB, at most
	// MaxRequestLimit).
	MaxResponseSize int
	// Timeout bounds a request on each side (default 10 s).
	Timeout time.Duration
}

func (c RequestConfig) withDefaults() (RequestConfig, error) {
	if c.MaxRequestSize == 0 {
		c.MaxRequestSize = DefaultMaxRequestSize
	}
	if c.MaxResponseSize == 0 {
		c.MaxResponseSize = DefaultMaxResponseSize
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultRequestTimeout
	}
	switch {
	case c.MaxRequestSize < 0 || c.MaxRequestSize > MaxRequestLimit:
		return c, fmt.Errorf("realm: RequestConfig.MaxRequestSize must be in [1, %d], got %d", MaxRequestLimit, c.MaxRequestSize)
	case c.MaxResponseSize < 0 || c.MaxResponseSize > MaxRequestLimit:
		return c, fmt.Errorf("realm: RequestConfig.MaxResponseSize must be in [1, %d], got %d", MaxRequestLimit, c.MaxResponseSize)
	case c.Timeout < 0:
		return c, fmt.Errorf("realm: RequestConfig.Timeout must be > 0, got %s", c.Timeout)
	}
	return c, nil
}

// Requests sets the realm's request/response limits (see RequestConfig).
// Errors name a value out of range.
func Requests(cfg RequestConfig) Option {
	return func(c *Config) error {
		cfg, err := cfg.withDefaults()
		if err != nil {
			return err
		}
		c.Requests = cfg
		return nil
	}
}

// RequestHandler answers a member's request: from is the member, req the
// request (at most MaxRequestSize bytes). ctx ends at the realm's request
// Timeout or when the realm is left. The response (at most
// MaxResponseSize bytes) goes back to the caller; an error goes back as a
// *RemoteError with the error's message (cut at MaxRemoteErrorSize); a
// panic is recovered, logged and reported as RemoteHandlerPanic. Each
// request runs on its own goroutine: handlers must be safe for concurrent
// use.
type RequestHandler func(ctx context.Context, from peer.ID, req []byte) ([]byte, error)

// SetRequestHandler answers requests for proto from the realm's members
// with handler (replacing any stream or request handler of proto). The
// error names a bad protocol ID (ErrBadProtocol), a nil handler, or is
// ErrLeft.
func (r *Realm) SetRequestHandler(proto protocol.ID, handler RequestHandler) error {
	if handler == nil {
		return fmt.Errorf("realm %q: SetRequestHandler %q: nil handler", r.name, proto)
	}
	return r.SetStreamHandler(proto, func(s network.Stream) { r.serveRequest(s, proto, handler) })
}

// Request sends req to member p for proto and returns the response.
// Errors: ErrRequestTooLarge (over this realm's MaxRequestSize: nothing is
// sent), the errors of NewStream (ErrNotMember, ErrBadProtocol, ErrLeft,
// a *resource.LimitError), ErrNoRequestHandler, a *RemoteError when the
// member's handler failed or refused (matching ErrRequestTooLarge or
// ErrResponseTooLarge for the member's limits), ErrResponseTooLarge (over
// this realm's MaxResponseSize), context.DeadlineExceeded when no response
// came within the realm's request Timeout or ctx's deadline, ctx's error,
// or the stream's. Every error names the realm, the protocol and p. At
// most MaxConcurrentRequests requests to one member are in flight; more
// wait for a slot, within ctx and the Timeout. Safe for concurrent use.
func (r *Realm) Request(ctx context.Context, p peer.ID, proto protocol.ID, req []byte) ([]byte, error) {
	cfg := r.cfg.Requests
	fail := func(err error) ([]byte, error) {
		return nil, fmt.Errorf("realm %q: request %s to %s: %w", r.name, proto, p, err)
	}
	if len(req) > cfg.MaxRequestSize {
		return fail(fmt.Errorf("%w: %d bytes, MaxRequestSize is %d", ErrRequestTooLarge, len(req), cfg.MaxRequestSize))
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	release, err := r.requestSlot(ctx, p)
	if err != nil {
		return fail(fmt.Errorf("waiting for one of the %d request slots: %w", MaxConcurrentRequests, err))
	}
	defer release()
	str, err := r.NewStream(ctx, p, proto)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	_ = str.SetDeadline(deadline)
	// Cancellation of ctx interrupts a blocked read or write.
	stop := context.AfterFunc(ctx, func() { _ = str.SetDeadline(time.Now()) })
	defer stop()
	resp, err := r.exchangeRequest(str, req, cfg)
	if err != nil {
		_ = str.Reset()
		var timeout net.Error
		switch {
		case ctx.Err() != nil:
			err = fmt.Errorf("no response in time: %w (%w)", ctx.Err(), err)
		case errors.As(err, &timeout) && timeout.Timeout():
			// The stream's deadline (ctx's) passed a moment before ctx
			// noticed.
			err = fmt.Errorf("no response in time: %w (%w)", context.DeadlineExceeded, err)
		}
		var remote *RemoteError
		if errors.As(err, &remote) {
			remote.Realm, remote.Peer, remote.Protocol = r.name, p, proto
			return nil, remote
		}
		return fail(err)
	}
	_ = str.Close()
	return resp, nil
}

// requestSlots counts a member's requests in flight (at most
// MaxConcurrentRequests) and queues those that wait for a slot, in order;
// guarded by Realm.mu. An entry lives while a request to its member is in
// flight or waiting, so a member's requests one after the other allocate
// nothing here.
type requestSlots struct {
	inFlight int
	waiting  []chan struct{}
}

// requestSlot takes a request slot of member p, waiting for one (or ctx's
// end), and returns the function that gives it back.
func (r *Realm) requestSlot(ctx context.Context, p peer.ID) (release func(), err error) {
	r.mu.Lock()
	s := r.requestSlots[p]
	if s == nil {
		s = &requestSlots{}
		r.requestSlots[p] = s
	}
	release = func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(s.waiting) > 0 {
			// The slot goes to the first waiter, still counted.
			close(s.waiting[0])
			s.waiting = s.waiting[1:]
			return
		}
		if s.inFlight--; s.inFlight == 0 {
			delete(r.requestSlots, p)
		}
	}
	if s.inFlight < MaxConcurrentRequests {
		s.inFlight++
		r.mu.Unlock()
		return release, nil
	}
	ready := make(chan struct{})
	s.waiting = append(s.waiting, ready)
	r.mu.Unlock()
	select {
	case <-ready:
		return release, nil
	case <-ctx.Done():
		r.mu.Lock()
		i := slices.Index(s.waiting, ready)
		if i >= 0 {
			s.waiting = slices.Delete(s.waiting, i, i+1)
		}
		r.mu.Unlock()
		if i < 0 {
			release() // handed a slot meanwhile: give it on
		}
		return nil, ctx.Err()
	}
}

// exchangeRequest writes req on str and reads the response.
func (r *Realm) exchangeRequest(str network.Stream, req []byte, cfg RequestConfig) ([]byte, error) {
	var prefix [binary.MaxVarintLen64]byte
	if err := writeAll(str, prefix[:binary.PutUvarint(prefix[:], uint64(len(req)))], req); err != nil {
		// The handler refuses a request over its MaxRequestSize by the
		// length prefix alone, answers and closes its end, which can stop
		// our sending before the body is out: its answer says why.
		if code, body, readErr := readResponse(str, cfg.MaxResponseSize); readErr == nil && code != RemoteOK {
			return nil, &RemoteError{Code: code, Message: string(body)}
		}
		return nil, noHandler(fmt.Errorf("send: %w", err))
	}
	// The error is not ours to report: the handler reads a request by its
	// length, so it may have answered and closed its end (STOP_SENDING)
	// before this CloseWrite, which then fails although the request
	// arrived whole; a request that did not arrive fails the read below.
	_ = str.CloseWrite()
	code, body, err := readResponse(str, cfg.MaxResponseSize)
	if err != nil {
		return nil, noHandler(err)
	}
	if code != RemoteOK {
		return nil, &RemoteError{Code: code, Message: string(body)}
	}
	return body, nil
}

// noHandler turns the realm's no-handler reset into ErrNoRequestHandler.
func noHandler(err error) error {
	var se *network.StreamError
	if errors.As(err, &se) && se.Remote && se.ErrorCode == ErrorCodeNoHandler {
		return fmt.Errorf("%w (%w)", ErrNoRequestHandler, err)
	}
	return err
}

// errBadResponse: a response that breaks the format.
var errBadResponse = errors.New("bad response")

// writeAll writes head then body: in one write (writeJoined) when they fit
// in coalesceLimit bytes together, so that a small request or response
// leaves in one STREAM frame.
func writeAll(w io.Writer, head, body []byte) error {
	_, err := writeJoined(w, head, body)
	return err
}

// readResponse reads a response: its status and body, the body capped at
// maxResponse bytes for RemoteOK and MaxRemoteErrorSize otherwise, checked
// before it is allocated.
func readResponse(rd io.Reader, maxResponse int) (RemoteCode, []byte, error) {
	b, err := byteReader{rd}.ReadByte()
	if err != nil {
		return 0, nil, fmt.Errorf("read response: %w", err)
	}
	code := RemoteCode(b)
	if code >= remoteCodes {
		return 0, nil, fmt.Errorf("%w: status %d", errBadResponse, b)
	}
	limit := maxResponse
	if code != RemoteOK {
		limit = MaxRemoteErrorSize
	}
	body, err := readSized(rd, limit)
	if errors.Is(err, errTooLarge) {
		if code == RemoteOK {
			return 0, nil, fmt.Errorf("%w: %w, MaxResponseSize is %d", ErrResponseTooLarge, err, maxResponse)
		}
		return 0, nil, fmt.Errorf("%w: error message: %w", errBadResponse, err)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("read response: %w", err)
	}
	return code, body, nil
}

// errTooLarge: a length prefix over the reader's limit.
var errTooLarge = errors.New("length over the limit")

// readSized reads a uvarint length, at most limit, and that many bytes.
// The length is read a byte at a time: nothing past the frame is consumed,
// and no read buffer is allocated.
func readSized(rd io.Reader, limit int) ([]byte, error) {
	n, err := binary.ReadUvarint(byteReader{rd})
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if n > uint64(limit) {
		return nil, fmt.Errorf("%w: %d bytes declared, %d allowed", errTooLarge, n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(rd, b); err != nil {
		return nil, err
	}
	return b, nil
}

// serveRequest answers one request stream with handler, within the
// realm's request Timeout; a malformed request resets the stream.
func (r *Realm) serveRequest(str network.Stream, proto protocol.ID, handler RequestHandler) {
	cfg := r.cfg.Requests
	deadline := time.Now().Add(cfg.Timeout)
	_ = str.SetDeadline(deadline)
	req, err := readSized(str, cfg.MaxRequestSize)
	switch {
	case errors.Is(err, errTooLarge):
		r.respond(str, RemoteRequestTooLarge, []byte(fmt.Sprintf("%v, MaxRequestSize is %d", err, cfg.MaxRequestSize)))
		return
	case err != nil:
		_ = str.Reset()
		return
	}
	from := str.Conn().RemotePeer()
	ctx, cancel := context.WithDeadline(r.ctx, deadline)
	defer cancel()
	resp, err := callHandler(ctx, handler, from, req)
	var panicked *handlerPanic
	switch {
	case errors.As(err, &panicked):
		log.Errorw("request handler panicked", "realm", r.name, "protocol", proto, "peer", from, "panic", panicked.value)
		r.respond(str, RemoteHandlerPanic, []byte("the request handler panicked"))
	case err != nil:
		msg := err.Error()
		if len(msg) > MaxRemoteErrorSize {
			msg = msg[:MaxRemoteErrorSize]
		}
		r.respond(str, RemoteHandlerError, []byte(msg))
	case len(resp) > cfg.MaxResponseSize:
		r.respond(str, RemoteResponseTooLarge, []byte(fmt.Sprintf("the response is %d bytes, MaxResponseSize is %d", len(resp), cfg.MaxResponseSize)))
	default:
		r.respond(str, RemoteOK, resp)
	}
}

// respond writes a response and closes the stream (resetting it when the
// write fails).
func (r *Realm) respond(str network.Stream, code RemoteCode, body []byte) {
	var head [1 + binary.MaxVarintLen64]byte
	head[0] = byte(code)
	n := 1 + binary.PutUvarint(head[1:], uint64(len(body)))
	if err := writeAll(str, head[:n], body); err != nil {
		_ = str.Reset()
		return
	}
	_ = str.Close()
}

// handlerPanic is a recovered panic of a request handler.
type handlerPanic struct{ value any }

func (p *handlerPanic) Error() string { return fmt.Sprintf("request handler panicked: %v", p.value) }

// callHandler runs handler, turning a panic into a *handlerPanic.
func callHandler(ctx context.Context, handler RequestHandler, from peer.ID, req []byte) (resp []byte, err error) {
	defer func() {
		if v := recover(); v != nil {
			resp, err = nil, &handlerPanic{value: v}
		}
	}()
	return handler(ctx, from, req)
}
