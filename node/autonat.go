package node

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"time"

	libp2pconfig "github.com/libp2p/go-libp2p/config"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	blankhost "github.com/libp2p/go-libp2p/p2p/host/blank"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/libp2p/go-libp2p/p2p/host/peerstore/pstoremem"
	"github.com/libp2p/go-libp2p/p2p/protocol/autonatv2"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/quicreuse"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"go.uber.org/fx"

	"github.com/realmnet/realmnet/swarm"
)

// AutoNATConfig configures reachability measurement: go-libp2p's AutoNAT v2
// (p2p/protocol/autonatv2), whose client asks other peers to dial one of
// this node's addresses back and whose server answers such requests,
// dialing back from a second, separate dialer (its own key, swarm and QUIC
// sockets, as AutoNAT v2 requires: the dial-back must not reuse a
// connection of the node's).
type AutoNATConfig struct {
	// Disabled turns AutoNAT v2 off, client and server: the node's
	// reachability stays unknown unless ForceReachability fixes it.
	Disabled bool
	// PrivateAddrs lets the client probe, and the server dial back,
	// loopback and private addresses (autonatv2.AllowPrivateAddrs): for a
	// LAN or a test lab, never on the internet (a server would dial into
	// its own networks on a client's say).
	PrivateAddrs bool
	// RecheckInterval is how often reachability is measured again once it
	// is known (0: DefaultAutoNATRecheckInterval). While it is unknown the
	// node asks again after 2 s, doubling up to 15 s: without a server an
	// attempt sends nothing (autonatv2.ErrNoPeers), and a server that
	// refuses is not asked again for 2 minutes (go-libp2p's throttle), so
	// the next attempt goes to another.
	RecheckInterval time.Duration
}

// DefaultAutoNATRecheckInterval is how often a node measures its
// reachability again once it knows it (ours; go-libp2p's address tracker
// re-confirms reachable addresses on a similar scale).
const DefaultAutoNATRecheckInterval = 5 * time.Minute

// Times of the reachability prober while reachability is unknown.
const (
	autonatRetryMin = 2 * time.Second
	autonatRetryMax = 15 * time.Second
	// autonatProbeTimeout bounds one AutoNAT v2 request (the server may
	// ask for dial data and wait before dialing back).
	autonatProbeTimeout = 30 * time.Second
)

// AutoNAT configures the node's reachability measurement (see
// AutoNATConfig). Without it AutoNAT v2 runs with the defaults. Errors: a
// negative RecheckInterval.
func AutoNAT(cfg AutoNATConfig) Option {
	return func(c *Config) error {
		if cfg.RecheckInterval < 0 {
			return fmt.Errorf("node: AutoNAT: RecheckInterval must be >= 0, got %s", cfg.RecheckInterval)
		}
		c.AutoNAT = cfg
		return nil
	}
}

// newAutoNAT runs AutoNAT v2 on the host — server and client — and the
// prober that turns its answers into the node's reachability. The server
// answers on every node, as go-libp2p's does (its rate limits are
// go-libp2p's): a node that refused while it believed itself private would,
// on a wrong verdict (a dial-back lost under load), stop every peer that
// has no other server from learning its own reachability. With
// ForceReachability only the server runs.
func newAutoNAT(lc fx.Lifecycle, cfg *Config, h host.Host, r *reachability) (*autonatService, error) {
	svc := &autonatService{}
	if cfg.AutoNAT.Disabled {
		return svc, nil
	}
	opts := []autonatv2.AutoNATOption{}
	if cfg.AutoNAT.PrivateAddrs {
		opts = append(opts, autonatv2.AllowPrivateAddrs)
	}
	if cfg.Metrics != nil {
		opts = append(opts, autonatv2.WithMetricsTracer(autonatv2.NewMetricsTracer(cfg.Metrics)))
	}
	recheck := cfg.AutoNAT.RecheckInterval
	if recheck == 0 {
		recheck = DefaultAutoNATRecheckInterval
	}
	// AutoNAT v2 learns its servers from identify's events: it starts
	// with the host (which kad-dht's constructor already uses to dial its
	// bootstrap peers), before any connection it must know of.
	dialer, closeDialer, err := newAutoNATDialer()
	if err != nil {
		return nil, err
	}
	an, err := autonatv2.New(dialer, opts...)
	if err == nil {
		if err = an.Start(h); err != nil {
			an.Close()
		}
	}
	if err != nil {
		closeDialer()
		return nil, fmt.Errorf("node: start AutoNAT v2: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	lc.Append(fx.Hook{
		// The prober starts with the node: its verdicts go to the
		// reachability emitter, made at start.
		OnStart: func(context.Context) error {
			go func() {
				defer close(done)
				if cfg.ForceReachability == nil {
					probeReachability(ctx, an, h, r, cfg.AutoNAT.PrivateAddrs, recheck)
				}
			}()
			return nil
		},
		OnStop: func(context.Context) error {
			cancel()
			<-done // fx stops only hooks it started
			an.Close()
			closeDialer()
			return nil
		},
	})
	return svc, nil
}

// autonatService marks AutoNAT v2 as built; the DHT depends on it, so that
// AutoNAT is running before kad-dht dials its bootstrap peers.
type autonatService struct{}

// newAutoNATDialer builds the AutoNAT v2 server's dialer: a fresh key, its
// own peerstore, QUIC sockets and realmnet swarm (no listener, no admission
// stages: it only dials back), behind go-libp2p's blank host.
func newAutoNATDialer() (host.Host, func(), error) {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("node: AutoNAT dialer key: %w", err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("node: AutoNAT dialer peer ID: %w", err)
	}
	ps, err := pstoremem.NewPeerstore()
	if err != nil {
		return nil, nil, fmt.Errorf("node: AutoNAT dialer peerstore: %w", err)
	}
	if err := ps.AddPrivKey(id, key); err != nil {
		_ = ps.Close()
		return nil, nil, fmt.Errorf("node: AutoNAT dialer peerstore: %w", err)
	}
	resetKey, err := libp2pconfig.PrivKeyToStatelessResetKey(key)
	if err != nil {
		_ = ps.Close()
		return nil, nil, fmt.Errorf("node: AutoNAT dialer: %w", err)
	}
	tokenKey, err := libp2pconfig.PrivKeyToTokenGeneratorKey(key)
	if err != nil {
		_ = ps.Close()
		return nil, nil, fmt.Errorf("node: AutoNAT dialer: %w", err)
	}
	reuse, err := quicreuse.NewConnManager(resetKey, tokenKey)
	if err != nil {
		_ = ps.Close()
		return nil, nil, fmt.Errorf("node: AutoNAT dialer sockets: %w", err)
	}
	closeAll := func(closers ...func() error) func() {
		return func() {
			for _, c := range closers {
				_ = c()
			}
		}
	}
	t, err := libp2pquic.NewTransport(key, reuse, nil, nil, nil)
	if err != nil {
		closeAll(reuse.Close, ps.Close)()
		return nil, nil, fmt.Errorf("node: AutoNAT dialer transport: %w", err)
	}
	bus := eventbus.NewBus()
	// A dial-back is one attempt: an address that does not answer within
	// AddrDialTimeout is unreachable (retries would only delay the
	// answer past the server's own 10 s bound).
	cfg := swarm.DefaultConfig()
	cfg.Retry = swarm.RetryConfig{MaxRetries: 0, InitialDelay: time.Second, MaxDelay: time.Second, Multiplier: 1}
	s, err := swarm.New(swarm.Params{LocalPeer: id, Peerstore: ps, Transport: t, EventBus: bus, Config: cfg})
	if err != nil {
		closeAll(reuse.Close, ps.Close)()
		return nil, nil, fmt.Errorf("node: AutoNAT dialer swarm: %w", err)
	}
	h := blankhost.NewBlankHost(s, blankhost.WithEventBus(bus))
	return h, closeAll(h.Close, reuse.Close, ps.Close), nil
}

// probeReachability measures the node's reachability until ctx ends: it
// asks an AutoNAT v2 server to dial one of the node's addresses back (the
// server picks the first it accepts) and sets the reachability from the
// answer: public when the address was reached, private when it was not.
// Without an answer (no server, refused) reachability stays as it is and
// the prober asks again later — at once (after autonatServerSettle) when
// identify finds a new peer serving AutoNAT v2.
func probeReachability(ctx context.Context, an *autonatv2.AutoNAT, h host.Host, r *reachability, privateAddrs bool, recheck time.Duration) {
	sub, err := h.EventBus().Subscribe(new(event.EvtPeerIdentificationCompleted), eventbus.Name("realmnet/autonat"))
	if err != nil {
		log.Warnw("AutoNAT v2: no identify events; probing on a timer only", "error", err)
	} else {
		defer sub.Close()
	}
	var identified <-chan any
	if sub != nil {
		identified = sub.Out()
	}
	wait := autonatRetryMin
	timer := time.NewTimer(wait)
	defer timer.Stop()
	answered := false
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-identified:
			if !ok {
				identified = nil // the bus closed it (shutdown)
				continue
			}
			evt := e.(event.EvtPeerIdentificationCompleted)
			if answered || !slices.Contains(evt.Protocols, autonatv2.DialProtocol) {
				continue
			}
			// A server appeared while the node has no answer: ask soon,
			// and from there on as if just starting.
			wait = autonatRetryMin
			resetTimer(timer, autonatServerSettle)
			continue
		case <-timer.C:
		}
		result, err := probeOnce(ctx, an, h, privateAddrs)
		switch {
		case err != nil:
			log.Debugw("AutoNAT v2: no answer", "error", err)
			wait = min(2*wait, autonatRetryMax)
		default:
			answered = true
			r.set(result)
			wait = recheck
		}
		timer.Reset(wait)
	}
}

// autonatServerSettle is the wait between identify reporting a new AutoNAT
// v2 server and the request to it, so that the AutoNAT client has taken
// the server in too (it follows the same identify events).
const autonatServerSettle = 500 * time.Millisecond

// resetTimer stops t, drains it, and sets it to fire after d.
func resetTimer(t *time.Timer, d time.Duration) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	t.Reset(d)
}

// errNoAddrToProbe: the node has no address AutoNAT may check.
var errNoAddrToProbe = errors.New("no address to check (only loopback, private or relay addresses)")

// probeOnce makes one AutoNAT v2 request for the node's addresses.
func probeOnce(ctx context.Context, an *autonatv2.AutoNAT, h host.Host, privateAddrs bool) (network.Reachability, error) {
	var reqs []autonatv2.Request
	for _, a := range h.Addrs() {
		if _, err := a.ValueForProtocol(ma.P_CIRCUIT); err == nil {
			continue
		}
		// A loopback address is reached by no other host (a server
		// asked to dial it would dial itself); a private one only on a
		// LAN or in a lab.
		if manet.IsIPLoopback(a) || (!privateAddrs && !manet.IsPublicAddr(a)) {
			continue
		}
		reqs = append(reqs, autonatv2.Request{Addr: a, SendDialData: true})
	}
	if len(reqs) == 0 {
		return network.ReachabilityUnknown, errNoAddrToProbe
	}
	ctx, cancel := context.WithTimeout(ctx, autonatProbeTimeout)
	defer cancel()
	res, err := an.GetReachability(ctx, reqs)
	if err != nil {
		return network.ReachabilityUnknown, err
	}
	if res.AllAddrsRefused || res.Reachability == network.ReachabilityUnknown {
		return network.ReachabilityUnknown, fmt.Errorf("the server checked none of %d addresses", len(reqs))
	}
	log.Debugw("AutoNAT v2 answer", "addr", res.Addr, "reachability", res.Reachability)
	return res.Reachability, nil
}
