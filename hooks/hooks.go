// Package hooks holds the BeforeConnect and AfterHandshake hook types and
// their registry. Hooks let an application refuse a connection: before any
// packet is sent to a peer (outbound) or once the transport has accepted a
// connection (inbound, with its addresses only), and once the TLS handshake
// has proven the peer's identity, before the connection is announced to
// anyone. It is a leaf: no network I/O, no
// imports from the rest of realmnet; the gater runs the registry at its
// decision points (docs/admission.md).
//
// Rules (iroh's EndpointHooks): hooks run in registration order and the
// first non-nil error rejects; a panicking hook is recovered and counts as a
// rejection; each call is bounded by the registry's timeout (default 2 s)
// and a timeout rejects.
package hooks

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	logging "github.com/ipfs/go-log/v2"
	ic "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

var log = logging.Logger("realmnet/hooks")

// DefaultTimeout bounds one hook call (DESIGN.md: hook timeout 2 s).
const DefaultTimeout = 2 * time.Second

// ErrRejected is matched (errors.Is) by every rejection a hook causes.
var ErrRejected = errors.New("hooks: connection rejected")

// ConnectAttempt describes a connection about to be made (outbound, before
// any packet is sent) or accepted by the transport (inbound: judged in the
// swarm's admission stage 1, off the transport's accept loop, before the
// AfterHandshake hooks).
type ConnectAttempt struct {
	Direction network.Direction
	// Peer is the peer being dialed; empty for inbound attempts.
	Peer       peer.ID
	RemoteAddr ma.Multiaddr
	// LocalAddr is the local address, when known (inbound).
	LocalAddr ma.Multiaddr
}

// Handshake describes a connection whose TLS handshake has completed: Peer
// and RemotePublicKey are proven.
type Handshake struct {
	Direction       network.Direction
	Peer            peer.ID
	RemotePublicKey ic.PubKey
	RemoteAddr      ma.Multiaddr
	LocalAddr       ma.Multiaddr
	// ConnID is the connection's ID (network.Conn.ID), the same that its
	// events, paths and logs carry.
	ConnID string
}

// BeforeConnectFunc decides on a connection attempt; a non-nil error
// rejects it and is the reason. It must honour ctx (the registry's timeout).
type BeforeConnectFunc func(ctx context.Context, a ConnectAttempt) error

// AfterHandshakeFunc decides on an authenticated connection; a non-nil
// error rejects it and is the reason. It must honour ctx.
type AfterHandshakeFunc func(ctx context.Context, h Handshake) error

// Stage names the point at which a hook rejected.
type Stage string

const (
	// StageBeforeConnect is the BeforeConnect stage.
	StageBeforeConnect Stage = "BeforeConnect"
	// StageAfterHandshake is the AfterHandshake stage.
	StageAfterHandshake Stage = "AfterHandshake"
)

// RejectedError is the error of a rejection: which stage, which hook (its
// position in registration order among the hooks of that stage when it
// ran), and why. errors.Is(err, ErrRejected) holds; errors.Unwrap gives the
// hook's own error (context.DeadlineExceeded for a timeout).
type RejectedError struct {
	Stage  Stage
	Hook   int
	Reason error
}

// Error says the stage, the hook and the reason.
func (e *RejectedError) Error() string {
	return fmt.Sprintf("hooks: %s hook %d rejected the connection: %v", e.Stage, e.Hook, e.Reason)
}

// Is reports whether target is ErrRejected.
func (e *RejectedError) Is(target error) bool { return target == ErrRejected }

// Unwrap returns the hook's reason.
func (e *RejectedError) Unwrap() error { return e.Reason }

// Registry holds the hooks. The zero value is not usable: create it with
// NewRegistry. All methods are safe for concurrent use; hooks may be added
// and removed while others run (a run uses the hooks registered when it
// starts).
type Registry struct {
	timeout time.Duration
	metrics metrics

	mu     sync.RWMutex
	nextID uint64
	before []entry[BeforeConnectFunc]
	after  []entry[AfterHandshakeFunc]
}

type entry[F any] struct {
	id uint64
	fn F
}

// NewRegistry returns an empty registry whose hook calls are bounded by
// timeout; zero means DefaultTimeout. A negative timeout is an error naming
// it.
func NewRegistry(timeout time.Duration) (*Registry, error) {
	if timeout < 0 {
		return nil, fmt.Errorf("hooks: timeout must be > 0, got %s", timeout)
	}
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	r := &Registry{timeout: timeout}
	r.metrics.init()
	return r, nil
}

// Timeout returns the bound of one hook call.
func (r *Registry) Timeout() time.Duration { return r.timeout }

// OnBeforeConnect registers fn after the BeforeConnect hooks already there
// and returns a function that removes it (idempotent). A nil fn is ignored.
func (r *Registry) OnBeforeConnect(fn BeforeConnectFunc) (remove func()) {
	if fn == nil {
		return func() {}
	}
	return add(r, &r.before, fn)
}

// OnAfterHandshake registers fn after the AfterHandshake hooks already there
// and returns a function that removes it (idempotent). A nil fn is ignored.
func (r *Registry) OnAfterHandshake(fn AfterHandshakeFunc) (remove func()) {
	if fn == nil {
		return func() {}
	}
	return add(r, &r.after, fn)
}

func add[F any](r *Registry, list *[]entry[F], fn F) func() {
	r.mu.Lock()
	r.nextID++
	id := r.nextID
	*list = append(*list, entry[F]{id: id, fn: fn})
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			*list = slices.DeleteFunc(slices.Clone(*list), func(e entry[F]) bool { return e.id == id })
		})
	}
}

// Empty reports whether no hook is registered, so callers can skip building
// the hook arguments.
func (r *Registry) Empty() bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.before) == 0 && len(r.after) == 0
}

// RunBeforeConnect runs the BeforeConnect hooks in order and returns nil,
// or the *RejectedError of the first that rejects, panics or times out.
func (r *Registry) RunBeforeConnect(ctx context.Context, a ConnectAttempt) error {
	r.mu.RLock()
	hooks := r.before
	r.mu.RUnlock()
	for i, e := range hooks {
		if err := r.call(ctx, stageBefore, i, func(ctx context.Context) error { return e.fn(ctx, a) }); err != nil {
			return &RejectedError{Stage: StageBeforeConnect, Hook: i, Reason: err}
		}
	}
	return nil
}

// RunAfterHandshake runs the AfterHandshake hooks in order and returns nil,
// or the *RejectedError of the first that rejects, panics or times out.
func (r *Registry) RunAfterHandshake(ctx context.Context, h Handshake) error {
	r.mu.RLock()
	hooks := r.after
	r.mu.RUnlock()
	for i, e := range hooks {
		if err := r.call(ctx, stageAfter, i, func(ctx context.Context) error { return e.fn(ctx, h) }); err != nil {
			return &RejectedError{Stage: StageAfterHandshake, Hook: i, Reason: err}
		}
	}
	return nil
}

// errPanicked wraps a recovered panic.
type errPanicked struct{ value any }

func (e errPanicked) Error() string { return fmt.Sprintf("hook panicked: %v", e.value) }

// call runs one hook, the index-th of its stage, bounded by the timeout,
// and counts its outcome and duration. The hook runs on its own goroutine
// so that a hook that ignores its context cannot hold the connection past
// the timeout; that goroutine ends when the hook returns (hooks must honour
// ctx).
func (r *Registry) call(ctx context.Context, st stage, index int, hook func(context.Context) error) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				log.Errorw("hook panicked; the connection is rejected", "panic", v)
				done <- errPanicked{v}
			}
		}()
		done <- hook(ctx)
	}()
	var err error
	var out outcome
	select {
	case err = <-done:
		_, panicked := err.(errPanicked)
		switch {
		case err == nil:
			out = outcomeAccepted
		case panicked:
			out = outcomePanic
		case ctx.Err() != nil:
			// The hook gave up because its context ended (it honours
			// ctx): a timeout, not a decision of its own.
			out = outcomeTimeout
		default:
			out = outcomeRejected
		}
	case <-ctx.Done():
		err = fmt.Errorf("hook did not return within %s: %w", r.timeout, ctx.Err())
		out = outcomeTimeout
	}
	r.metrics.observe(st, index, out, time.Since(start))
	return err
}
