package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	basichost "github.com/libp2p/go-libp2p/p2p/host/basic"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/libp2p/go-libp2p/p2p/host/observedaddrs"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/eventqueue"
	"github.com/realmnet/realmnet/swarm"
)

// Hole punching: go-libp2p's DCUtR (p2p/protocol/holepunch) runs on every
// node. When a peer reaches this node through a relay (an inbound relayed
// connection), go-libp2p's hole puncher asks the peer, over that
// connection, for its addresses, measures the relayed RTT, and both sides
// dial each other at once (network.WithSimultaneousConnect: the swarm's
// QUIC transport punches); the direct connection that results is a path
// like any other, and multipath selects it at once over the relayed one
// (an upgrade). go-libp2p tries once per relayed connection (three rounds);
// the upgrader here tries again while the peer has only relayed
// connections: right after that first round if it fails, then with
// backoff (RetryMin doubling to RetryMax); at once when the
// direct path dies or the peer starts serving DCUtR (identify's push); and
// when either side's direct addresses change (checked every 5 s).

// Defaults of HolePunchConfig.
const (
	// DefaultHolePunchRetryMin is the first delay between upgrade
	// attempts (iroh retries every 5 s while candidates change).
	DefaultHolePunchRetryMin = 5 * time.Second
	// DefaultHolePunchRetryMax caps the delay (tailscale tries to upgrade
	// every minute).
	DefaultHolePunchRetryMax = time.Minute
)

// holePunchAddrsCheck is how often the upgrader compares a relayed peer's
// direct addresses, and the node's, with those of its last attempt (iroh
// re-checks its candidates every 5 s).
const holePunchAddrsCheck = 5 * time.Second

// maxHolePunchPeers bounds the peers whose hole punching figures are kept
// (HolePunchStats); the least recently updated go first.
const maxHolePunchPeers = 4096

// HolePunchConfig configures hole punching and the automatic upgrade from
// a relayed path to a direct one (see HolePunching).
type HolePunchConfig struct {
	// Disabled turns hole punching off: DCUtR is neither served nor
	// started, and relayed paths stay relayed.
	Disabled bool
	// RetryMin and RetryMax bound the delay between upgrade attempts to a
	// peer reached only through a relay: RetryMin after an attempt that
	// failed, doubling up to RetryMax (> 0, RetryMin ≤ RetryMax; zero
	// means DefaultHolePunchRetryMin, 5 s, and DefaultHolePunchRetryMax,
	// 1 min).
	RetryMin, RetryMax time.Duration
}

// HolePunching configures hole punching (see HolePunchConfig). Without it
// hole punching runs with the defaults. Errors: a negative delay, or
// RetryMin above RetryMax, named.
func HolePunching(cfg HolePunchConfig) Option {
	return func(c *Config) error {
		if cfg.RetryMin < 0 || cfg.RetryMax < 0 {
			return fmt.Errorf("node: HolePunching: RetryMin and RetryMax must be >= 0, got %s and %s", cfg.RetryMin, cfg.RetryMax)
		}
		if cfg.RetryMin == 0 {
			cfg.RetryMin = DefaultHolePunchRetryMin
		}
		if cfg.RetryMax == 0 {
			cfg.RetryMax = max(DefaultHolePunchRetryMax, cfg.RetryMin)
		}
		if cfg.RetryMin > cfg.RetryMax {
			return fmt.Errorf("node: HolePunching: RetryMin %s is above RetryMax %s", cfg.RetryMin, cfg.RetryMax)
		}
		c.HolePunch = cfg
		return nil
	}
}

// EvtHolePunch is emitted on the node's event bus when a hole punch to a
// peer ends, on each side: the simultaneous dials of one DCUtR round.
type EvtHolePunch struct {
	// Peer is the remote peer.
	Peer peer.ID
	// Attempt counts this node's punches to Peer (1 for the first),
	// across rounds and retries.
	Attempt int
	// Success is true when a direct connection resulted.
	Success bool
	// Elapsed is the punch's duration, from the dials' start.
	Elapsed time.Duration
	// Error says why the punch failed ("" on success).
	Error string
}

// EvtUpgraded is emitted on the node's event bus when a peer that this
// node reached only through relays gets a direct connection (a hole
// punch's, or any other).
type EvtUpgraded struct {
	// Peer is the remote peer.
	Peer peer.ID
	// ConnID is the direct connection's ID.
	ConnID string
	// TimeToDirect is the time from the peer's first relayed connection
	// (while it had no direct one) to the direct connection.
	TimeToDirect time.Duration
}

// HolePunchStats are a peer's hole punching figures on this node (see
// Node.HolePunchStats).
type HolePunchStats struct {
	// Attempts, Successes and Failures count the hole punches (the
	// simultaneous dials of a DCUtR round) with the peer, from either
	// side.
	Attempts, Successes, Failures int
	// DirectDials and DirectDialSuccesses count DCUtR's direct dials
	// before a punch (tried when the peer lists a public address).
	DirectDials, DirectDialSuccesses int
	// ProtocolErrors counts DCUtR exchanges that failed before a punch
	// (the peer does not speak DCUtR, has no public address, a bad
	// message).
	ProtocolErrors int
	// LastError is the latest failure ("" when none).
	LastError string
	// LastAttempt is when the latest punch ended.
	LastAttempt time.Time
	// Upgrades counts the times the peer went from relayed connections
	// only to a direct one; TimeToDirect is the latest one's time from
	// the relayed connection to the direct one (0 before the first).
	Upgrades     int
	TimeToDirect time.Duration
}

// holePunching is the node's DCUtR service, its event tracer and the
// upgrader that retries.
type holePunching struct {
	cfg    HolePunchConfig
	host   host.Host
	net    *swarm.Swarm
	svc    *holepunch.Service
	events *eventqueue.Queue
	// listenAddrs are the public addresses DCUtR sends (as go-libp2p's
	// basic host's HolePunchAddrs).
	listenAddrs func() []ma.Multiaddr
	// timeToDirect observes EvtUpgraded.TimeToDirect (nil without
	// metrics).
	timeToDirect prometheus.Histogram

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex
	// stats holds the figures of the last maxHolePunchPeers peers.
	stats *lru.Cache[peer.ID, *HolePunchStats]
	// relayedSince is when each peer with only relayed connections got
	// its first one; watching has the wake channels of each peer's
	// upgrader goroutine. Both hold only connected peers (bounded by the
	// connection pools).
	relayedSince map[peer.ID]time.Time
	watching     map[peer.ID]upgradeWake
	closed       bool
}

var timeToDirectDesc = prometheus.HistogramOpts{
	Name:    "realmnet_holepunch_time_to_direct_seconds",
	Help:    "Time from a peer's first relayed connection (while it had no direct one) to its first direct connection.",
	Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300},
}

// newHolePunching builds the hole punching of the node: go-libp2p's DCUtR
// service on the host (unless Disabled) and the upgrader, started by the
// node's start and stopped by its stop (nothing runs before: a node whose
// build fails leaves nothing behind).
func newHolePunching(lc fx.Lifecycle, cfg *Config, id peer.ID, h host.Host, s *swarm.Swarm, observed *observedaddrs.Manager, bus event.Bus) (*holePunching, error) {
	hp := &holePunching{cfg: cfg.HolePunch, host: h, net: s,
		relayedSince: make(map[peer.ID]time.Time), watching: make(map[peer.ID]upgradeWake)}
	if cfg.HolePunch.Disabled {
		return hp, nil
	}
	bh, ok := h.(*basichost.BasicHost)
	if !ok {
		return nil, fmt.Errorf("node: hole punching needs go-libp2p's basic host, got %T", h)
	}
	stats, err := lru.New[peer.ID, *HolePunchStats](maxHolePunchPeers)
	if err != nil {
		return nil, fmt.Errorf("node: hole punching: %w", err)
	}
	hp.stats = stats
	hp.listenAddrs = func() []ma.Multiaddr { return holePunchAddrs(h, observed) }
	reg := nodeRegisterer(cfg.Metrics, id)
	if reg != nil {
		hp.timeToDirect = prometheus.NewHistogram(timeToDirectDesc)
	}
	lc.Append(fx.Hook{
		OnStart: func(context.Context) (err error) {
			var undo []func()
			defer func() {
				if err != nil {
					for _, f := range slices.Backward(undo) {
						f()
					}
				}
			}()
			if reg != nil {
				if err := reg.Register(hp.timeToDirect); err != nil {
					return fmt.Errorf("node: register the hole punching metrics: %w", err)
				}
				undo = append(undo, func() { reg.Unregister(hp.timeToDirect) })
			}
			events, err := eventqueue.New(bus, new(EvtHolePunch), new(EvtUpgraded))
			if err != nil {
				return fmt.Errorf("node: hole punching events: %w", err)
			}
			undo = append(undo, events.Close)
			sub, err := bus.Subscribe(new(event.EvtPeerProtocolsUpdated), eventbus.Name("realmnet/holepunch"))
			if err != nil {
				return fmt.Errorf("node: hole punching: %w", err)
			}
			undo = append(undo, func() { _ = sub.Close() })
			tracer := holepunch.WithTracer(hp)
			if cfg.Metrics != nil {
				// go-libp2p's libp2p_holepunch_* families, as a stock
				// host has them.
				tracer = holepunch.WithMetricsAndEventTracer(holepunch.NewMetricsTracer(holepunch.WithRegisterer(cfg.Metrics)), hp)
			}
			svc, err := holepunch.NewService(h, bh.IDService(), hp.listenAddrs, tracer)
			if err != nil {
				return fmt.Errorf("node: hole punching: %w", err)
			}
			hp.events, hp.svc = events, svc
			hp.ctx, hp.cancel = context.WithCancel(context.Background())
			s.Notify(hp)
			hp.wg.Add(1)
			go hp.watchProtocols(sub)
			return nil
		},
		OnStop: func(context.Context) error {
			if reg != nil {
				reg.Unregister(hp.timeToDirect)
			}
			return hp.close()
		},
	})
	return hp, nil
}

// holePunchAddrs are the node's public direct addresses for DCUtR: its own
// and those peers observed it at, even once (go-libp2p's basic host's
// HolePunchAddrs: the other side of a NAT needs the mapping, confirmed or
// not).
func holePunchAddrs(h host.Host, observed *observedaddrs.Manager) []ma.Multiaddr {
	addrs := append(h.Addrs(), observed.Addrs(1)...)
	addrs = slices.DeleteFunc(addrs, func(a ma.Multiaddr) bool {
		return core.IsRelayAddr(a) || !manet.IsPublicAddr(a)
	})
	return ma.Unique(addrs)
}

// close stops the upgrader and the DCUtR service: the service's close
// ends the punches in flight, which the upgrader's goroutines may be
// waiting for.
func (hp *holePunching) close() error {
	hp.mu.Lock()
	hp.closed = true
	hp.mu.Unlock()
	if hp.svc == nil {
		return nil // never started
	}
	hp.net.StopNotify(hp)
	hp.cancel()
	err := hp.svc.Close()
	hp.wg.Wait()
	hp.events.Close()
	return err
}

// Trace implements holepunch.EventTracer: it keeps the per-peer figures
// and emits EvtHolePunch. go-libp2p calls it from the goroutine that
// punches.
func (hp *holePunching) Trace(evt *holepunch.Event) {
	p := evt.Remote
	hp.mu.Lock()
	st, ok := hp.stats.Get(p)
	if !ok {
		st = &HolePunchStats{}
		hp.stats.Add(p, st)
	}
	var out *EvtHolePunch
	switch e := evt.Evt.(type) {
	case *holepunch.DirectDialEvt:
		st.DirectDials++
		if e.Success {
			st.DirectDialSuccesses++
		} else {
			st.LastError = "direct dial: " + e.Error
		}
	case *holepunch.ProtocolErrorEvt:
		st.ProtocolErrors++
		st.LastError = "DCUtR: " + e.Error
	case *holepunch.EndHolePunchEvt:
		st.Attempts++
		st.LastAttempt = time.Now()
		if e.Success {
			st.Successes++
		} else {
			st.Failures++
			st.LastError = "hole punch: " + e.Error
		}
		out = &EvtHolePunch{Peer: p, Attempt: st.Attempts, Success: e.Success, Elapsed: e.EllapsedTime, Error: e.Error}
	}
	hp.mu.Unlock()
	if out != nil {
		hp.events.Push(*out)
	}
}

// peerStats returns p's figures.
func (hp *holePunching) peerStats(p peer.ID) (HolePunchStats, bool) {
	if hp.stats == nil {
		return HolePunchStats{}, false
	}
	hp.mu.Lock()
	defer hp.mu.Unlock()
	st, ok := hp.stats.Peek(p)
	if !ok {
		return HolePunchStats{}, false
	}
	return *st, true
}

// Listen implements network.Notifiee; nothing to do.
func (hp *holePunching) Listen(network.Network, ma.Multiaddr) {}

// ListenClose implements network.Notifiee; nothing to do.
func (hp *holePunching) ListenClose(network.Network, ma.Multiaddr) {}

// Connected times the upgrade of a peer reached through a relay, and
// starts the upgrader of a peer that reached us through one.
func (hp *holePunching) Connected(_ network.Network, c network.Conn) {
	hp.update(c.RemotePeer(), c)
}

// Disconnected restarts the upgrade of a peer left with relayed
// connections only.
func (hp *holePunching) Disconnected(_ network.Network, c network.Conn) {
	hp.update(c.RemotePeer(), nil)
}

// update looks at p's connections after one of them opened (added) or
// closed; it runs on the swarm's notification path.
func (hp *holePunching) update(p peer.ID, added network.Conn) {
	relayed, direct, inboundRelayed := hp.connsOf(p)
	var upgraded *EvtUpgraded
	hp.mu.Lock()
	defer func() {
		hp.mu.Unlock()
		if upgraded != nil {
			if hp.timeToDirect != nil {
				hp.timeToDirect.Observe(upgraded.TimeToDirect.Seconds())
			}
			hp.events.Push(*upgraded)
		}
	}()
	if hp.closed {
		return
	}
	since, wasRelayed := hp.relayedSince[p]
	switch {
	case direct > 0 || relayed == 0:
		delete(hp.relayedSince, p)
		if wasRelayed && direct > 0 && added != nil && !added.Stat().Limited {
			upgraded = &EvtUpgraded{Peer: p, ConnID: added.ID(), TimeToDirect: time.Since(since)}
			if st, ok := hp.stats.Get(p); ok {
				st.Upgrades++
				st.TimeToDirect = upgraded.TimeToDirect
			} else {
				hp.stats.Add(p, &HolePunchStats{Upgrades: 1, TimeToDirect: upgraded.TimeToDirect})
			}
		}
	case !wasRelayed:
		hp.relayedSince[p] = time.Now()
	}
	wake, watched := hp.watching[p]
	switch {
	case watched:
		poke(wake.conns)
	case inboundRelayed && direct == 0:
		// DCUtR starts from the side the relayed connection reached;
		// the peer's side answers.
		wake = upgradeWake{conns: make(chan struct{}, 1), now: make(chan struct{}, 1)}
		hp.watching[p] = wake
		hp.wg.Add(1)
		go hp.upgrade(p, wake)
	}
}

// upgradeWake are the channels that wake a peer's upgrader: conns when its
// connections changed, now when an attempt is due at once.
type upgradeWake struct{ conns, now chan struct{} }

// poke signals c without blocking.
func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// watchProtocols wakes the upgrader of a peer that starts serving DCUtR: a
// peer serves it only once it knows a public address of its own, which
// may come after go-libp2p's first attempt (refused, the protocol not yet
// there); identify's push announces it. Owned by hp (wg).
func (hp *holePunching) watchProtocols(sub event.Subscription) {
	defer hp.wg.Done()
	defer sub.Close()
	for {
		select {
		case <-hp.ctx.Done():
			return
		case e, ok := <-sub.Out():
			if !ok {
				return
			}
			evt := e.(event.EvtPeerProtocolsUpdated)
			if !slices.Contains(evt.Added, holepunch.Protocol) {
				continue
			}
			hp.mu.Lock()
			if wake, ok := hp.watching[evt.Peer]; ok {
				poke(wake.now)
			}
			hp.mu.Unlock()
		}
	}
}

// connsOf counts p's open relayed and direct connections, and reports
// whether a relayed one is inbound.
func (hp *holePunching) connsOf(p peer.ID) (relayed, direct int, inboundRelayed bool) {
	for _, c := range hp.net.ConnsToPeer(p) {
		if c.IsClosed() {
			continue
		}
		if !c.Stat().Limited {
			direct++
			continue
		}
		relayed++
		if c.Stat().Direction == network.DirInbound {
			inboundRelayed = true
		}
	}
	return relayed, direct, inboundRelayed
}

// upgrade is p's upgrader: while p has an inbound relayed connection and
// no direct one, it asks DCUtR for a direct connection — after
// go-libp2p's own first attempt (started by the relayed connection), again
// after RetryMin doubling to RetryMax, and at once when the direct path
// dies or either side's addresses change (checked every 5 s). It first
// looks holePunchActivePoll after it starts; an attempt that finds
// go-libp2p's own round running asks again every holePunchActivePoll, so
// that a failed round is followed at once. It ends when p has no inbound
// relayed connection left. Owned by hp (wg).
func (hp *holePunching) upgrade(p peer.ID, wake upgradeWake) {
	defer hp.wg.Done()
	defer func() {
		hp.mu.Lock()
		delete(hp.watching, p)
		hp.mu.Unlock()
	}()
	retry := backoff.NewExponentialBackOff()
	retry.InitialInterval = hp.cfg.RetryMin
	retry.MaxInterval = hp.cfg.RetryMax
	retry.Multiplier = 2
	retry.RandomizationFactor = 0.1
	check := time.NewTicker(holePunchAddrsCheck)
	defer check.Stop()
	// go-libp2p's hole puncher makes the first attempt when the relayed
	// connection arrives (after identify). The upgrader looks
	// holePunchActivePoll later: that round is usually running then, and
	// the upgrader follows it at once if it fails (a peer that served
	// DCUtR from its first identify announces no protocol change that
	// would wake the upgrader sooner than RetryMin).
	lastAddrs := hp.addrsKey(p)
	hadDirect := false
	timer := time.NewTimer(holePunchActivePoll)
	defer timer.Stop()
	for {
		attempt := false
		select {
		case <-hp.ctx.Done():
			return
		case <-timer.C:
			attempt = true
		case <-check.C:
			attempt = hp.addrsKey(p) != lastAddrs
		case <-wake.conns:
		case <-wake.now:
			attempt = true
		}
		relayed, direct, inboundRelayed := hp.connsOf(p)
		if !inboundRelayed {
			// Re-check under the lock: a relayed connection may have
			// arrived since, whose update saw us watching.
			hp.mu.Lock()
			if _, _, again := hp.connsOf(p); !again || hp.closed {
				delete(hp.watching, p)
				hp.mu.Unlock()
				return
			}
			hp.mu.Unlock()
			continue
		}
		switch {
		case direct > 0:
			hadDirect = true
			retry.Reset()
			continue
		case hadDirect:
			// The direct path died: try again at once.
			hadDirect, attempt = false, true
		}
		if !attempt || relayed == 0 {
			continue
		}
		lastAddrs = hp.addrsKey(p)
		next := time.Duration(0)
		switch err := hp.directConnect(p); {
		case errors.Is(err, errHolePunchActive):
			// go-libp2p's own round is running: if it fails, the next
			// round starts within holePunchActivePoll, not RetryMin.
			next = holePunchActivePoll
		case err != nil:
			log.Debugw("upgrade attempt failed", "peer", p, "error", err)
		default:
			// A direct connection: check again after RetryMin.
			retry.Reset()
		}
		if next == 0 {
			next = retry.NextBackOff()
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

// errNoPublicAddrs: DCUtR has no public address of ours to send yet.
var errNoPublicAddrs = errors.New("no public address of ours to punch from yet")

// directConnect asks DCUtR for a direct connection to p. It does not call
// the service before the service serves DCUtR: until it has a public
// address, DirectConnect waits for one without a deadline.
func (hp *holePunching) directConnect(p peer.ID) error {
	if len(hp.listenAddrs()) == 0 || !slices.Contains(hp.host.Mux().Protocols(), holepunch.Protocol) {
		return errNoPublicAddrs
	}
	err := hp.svc.DirectConnect(p)
	if errors.Is(err, holepunch.ErrHolePunchActive) {
		return errHolePunchActive
	}
	return err
}

// errHolePunchActive: go-libp2p's own round of DCUtR with the peer is
// running (the one its hole puncher starts on a relayed connection).
var errHolePunchActive = errors.New("a hole punch with the peer is running")

// holePunchActivePoll is how often an upgrader whose attempt found
// go-libp2p's own round running asks again: a failed round is followed by
// the upgrader's at most this much later instead of after RetryMin (5 s),
// which made a first round lost to timing cost 5 s (TestDemoNATInTheLab
// once measured 5,137 ms under a full test run's load).
const holePunchActivePoll = 250 * time.Millisecond

// addrsKey identifies the direct addresses of p and of this node that a
// punch would use.
func (hp *holePunching) addrsKey(p peer.ID) string {
	var addrs []string
	for _, a := range hp.host.Peerstore().Addrs(p) {
		if !core.IsRelayAddr(a) {
			addrs = append(addrs, string(a.Bytes()))
		}
	}
	slices.Sort(addrs)
	addrs = append(addrs, "|")
	ours := len(addrs)
	for _, a := range hp.listenAddrs() {
		addrs = append(addrs, string(a.Bytes()))
	}
	slices.Sort(addrs[ours:])
	return strings.Join(addrs, "\x00")
}

// HolePunchStats returns the hole punching figures of p (false when this
// node has none: no relayed connection with p, or p's were among the
// oldest of more than 4,096 peers', or hole punching is disabled). Safe
// for concurrent use.
func (n *Node) HolePunchStats(p peer.ID) (HolePunchStats, bool) {
	return n.holePunch.peerStats(p)
}
