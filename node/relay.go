package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/sec"
	"github.com/libp2p/go-libp2p/core/transport"
	"github.com/libp2p/go-libp2p/p2p/host/autorelay"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/upgrader"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/realmnet/realmnet/core"
	"go.uber.org/fx"
)

// Relayed paths. Every node can dial and accept connections through a
// circuit relay v2 relay (go-libp2p's p2p/protocol/circuitv2/client, added
// to the swarm as a second transport, listening on /p2p-circuit). A relayed
// connection is secured and multiplexed by go-libp2p's upgrader (Noise,
// yamux) inside the relay's stream; the swarm marks it limited (streams
// need network.WithAllowLimitedConn), the admission pipeline and the pools
// take it like any other, and multipath puts it in the relayed tier.

// RelayServiceConfig is the relay service's configuration: go-libp2p's
// relay.Resources (reservation TTL, max reservations and circuits, per-peer
// and per-IP caps, and Limit: data and duration per relayed connection).
// The zero value means go-libp2p's defaults (relay.DefaultResources: 128
// reservations, 16 circuits per peer, 2 minutes and 128 KiB per circuit).
type RelayServiceConfig struct {
	// Resources replaces go-libp2p's default resources when set.
	Resources *relay.Resources
}

// RelayService runs go-libp2p's circuit relay v2 service (hop protocol
// /libp2p/circuit/relay/0.2.0/hop) on the node, with cfg's resources: other
// peers reserve slots on it and relay their connections through it, within
// its limits. Only a publicly reachable node should offer it (go-libp2p's
// EnableRelayService, which also waits for reachability; here the operator
// decides). Errors: a negative or zero field in cfg.Resources that go-libp2p
// needs positive, named.
func RelayService(cfg RelayServiceConfig) Option {
	return func(c *Config) error {
		if r := cfg.Resources; r != nil {
			switch {
			case r.ReservationTTL <= 0:
				return fmt.Errorf("node: RelayService: Resources.ReservationTTL must be > 0, got %s", r.ReservationTTL)
			case r.MaxReservations <= 0:
				return fmt.Errorf("node: RelayService: Resources.MaxReservations must be > 0, got %d", r.MaxReservations)
			case r.MaxCircuits <= 0:
				return fmt.Errorf("node: RelayService: Resources.MaxCircuits must be > 0, got %d", r.MaxCircuits)
			case r.BufferSize <= 0:
				return fmt.Errorf("node: RelayService: Resources.BufferSize must be > 0, got %d", r.BufferSize)
			}
		}
		c.RelayService = &cfg
		return nil
	}
}

// Relays sets static relays: when the node is not publicly reachable
// (Reachability private or unknown), go-libp2p's autorelay reserves a slot
// on them (and, beyond them, on relays from the DHT's routing table), keeps
// the reservations refreshed, and the node advertises its /p2p-circuit
// addresses through them (identify, DHT, realm exchange). go-libp2p's
// autorelay advertises circuit addresses only through relays with public
// addresses. Each
// relay needs its peer ID and at least one address that is not itself a
// relay address. Errors name the bad entry.
func Relays(relays ...peer.AddrInfo) Option {
	return func(c *Config) error {
		if len(relays) == 0 {
			return errors.New("node: Relays needs at least one relay")
		}
		for i, r := range relays {
			if err := r.ID.Validate(); err != nil {
				return fmt.Errorf("node: Relays: relay %d: peer ID: %w", i, err)
			}
			if len(r.Addrs) == 0 {
				return fmt.Errorf("node: Relays: relay %s has no address", r.ID)
			}
			for _, a := range r.Addrs {
				if core.IsRelayAddr(a) {
					return fmt.Errorf("node: Relays: relay %s: %s is a relay address itself (a relay must be reachable directly)", r.ID, a)
				}
			}
		}
		c.Relays = append(c.Relays, relays...)
		return nil
	}
}

// ForceReachability fixes the node's reachability instead of measuring it:
// network.ReachabilityPublic or network.ReachabilityPrivate (go-libp2p's
// ForceReachabilityPublic / ForceReachabilityPrivate). It is emitted on the
// event bus (event.EvtLocalReachabilityChanged) when the node starts:
// private starts autorelay on the Relays; public stops it. Errors: any
// other value.
func ForceReachability(r network.Reachability) Option {
	return func(c *Config) error {
		if r != network.ReachabilityPublic && r != network.ReachabilityPrivate {
			return fmt.Errorf("node: ForceReachability: want public or private, got %s", r)
		}
		c.ForceReachability = &r
		return nil
	}
}

// relayUpgrader is go-libp2p's upgrader for relayed connections: Noise
// (secured with the node's key) and yamux, as a stock go-libp2p host
// negotiates them. Gating is left to the admission pipeline, which every
// connection passes (the swarm's stages); rcmgr charges the connection.
func relayUpgrader(key crypto.PrivKey, rm network.ResourceManager) (transport.Upgrader, error) {
	muxers := []upgrader.StreamMuxer{{ID: yamux.ID, Muxer: yamux.DefaultTransport}}
	secure, err := noise.New(noise.ID, key, muxers)
	if err != nil {
		return nil, fmt.Errorf("node: relay transport: Noise: %w", err)
	}
	u, err := upgrader.New([]sec.SecureTransport{secure}, muxers, nil, rm, nil)
	if err != nil {
		return nil, fmt.Errorf("node: relay transport: upgrader: %w", err)
	}
	return u, nil
}

// addRelayTransport adds the circuit relay v2 client to the swarm (dial
// and accept relayed connections) and go-libp2p's autorelay, which reserves
// slots while the node is not publicly reachable, on relays from
// relayCandidates.
func addRelayTransport(lc fx.Lifecycle, cfg *Config, key crypto.PrivKey, h host.Host, rm network.ResourceManager, d *dht.IpfsDHT) error {
	u, err := relayUpgrader(key, rm)
	if err != nil {
		return err
	}
	if err := client.AddTransport(h, u); err != nil {
		return fmt.Errorf("node: relay transport: %w", err)
	}
	opts := []autorelay.Option{
		autorelay.WithPeerSource(relayCandidates(cfg.Relays, h, d)),
		// One candidate is enough to start reserving (go-libp2p waits
		// for 4, or 3 minutes); static relays are all wanted.
		autorelay.WithMinCandidates(1),
		// The source is local (static relays, the routing table), so it
		// may be asked often: go-libp2p's 30 s made a private node that
		// started before its routing table filled wait 30 s for a relay.
		autorelay.WithMinInterval(relaySourceInterval),
		autorelay.WithNumRelays(max(defaultNumRelays, len(cfg.Relays))),
	}
	if cfg.Metrics != nil {
		opts = append(opts, autorelay.WithMetricsTracer(autorelay.NewMetricsTracer(autorelay.WithRegisterer(cfg.Metrics))))
	}
	ar, err := autorelay.NewAutoRelay(h, opts...)
	if err != nil {
		return fmt.Errorf("node: autorelay: %w", err)
	}
	lc.Append(fx.StartStopHook(ar.Start, ar.Close))
	return nil
}

// relaySourceInterval is the least time between two asks of
// relayCandidates (go-libp2p's autorelay default: 30 s).
const relaySourceInterval = 2 * time.Second

// defaultNumRelays is how many relays autorelay keeps reservations on
// without static relays (go-libp2p's default, 2).
const defaultNumRelays = 2

// relayCandidates is autorelay's source of relays: the static relays
// first, then the DHT's routing-table peers that serve the circuit relay
// v2 hop protocol (as identify reported them), at most num in all.
// Realm relays are not offered: the realm reserves on them itself, and
// advertises them to its members only.
func relayCandidates(static []peer.AddrInfo, h host.Host, d *dht.IpfsDHT) autorelay.PeerSource {
	return func(_ context.Context, num int) <-chan peer.AddrInfo {
		out := make(chan peer.AddrInfo, num)
		defer close(out)
		offered := make(map[peer.ID]bool, num)
		offer := func(ai peer.AddrInfo) {
			if len(out) < num && !offered[ai.ID] {
				offered[ai.ID] = true
				out <- ai
			}
		}
		for _, ai := range static {
			offer(ai)
		}
		ps := h.Peerstore()
		for _, p := range d.RoutingTable().ListPeers() {
			if hop, err := ps.SupportsProtocols(p, proto.ProtoIDv2Hop); err == nil && len(hop) > 0 {
				offer(peer.AddrInfo{ID: p, Addrs: ps.Addrs(p)})
			}
		}
		return out
	}
}

// startRelayService runs the relay service when the node offers one.
func startRelayService(lc fx.Lifecycle, cfg *Config, h host.Host) error {
	if cfg.RelayService == nil {
		return nil
	}
	var opts []relay.Option
	if r := cfg.RelayService.Resources; r != nil {
		opts = append(opts, relay.WithResources(*r))
	}
	if cfg.Metrics != nil {
		opts = append(opts, relay.WithMetricsTracer(relay.NewMetricsTracer(relay.WithRegisterer(cfg.Metrics))))
	}
	r, err := relay.New(h, opts...)
	if err != nil {
		return fmt.Errorf("node: relay service: %w", err)
	}
	lc.Append(fx.StopHook(r.Close))
	return nil
}

// reachability is the node's reachability as last emitted on the bus
// (event.EvtLocalReachabilityChanged), by ForceReachability or AutoNAT
// (autonat.go): one stateful emitter, so that late subscribers (autorelay,
// kad-dht, the addresses manager) get the current value. Safe for
// concurrent use.
type reachability struct {
	// emitMu orders emissions; mu guards current, which readers take
	// without waiting for an emission (Emit blocks on slow subscribers).
	emitMu  sync.Mutex
	emitter event.Emitter // nil before start and after stop; guarded by emitMu
	mu      sync.Mutex
	current network.Reachability
}

func (r *reachability) get() network.Reachability {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current
}

// set emits v when it differs from the current reachability.
func (r *reachability) set(v network.Reachability) {
	r.emitMu.Lock()
	defer r.emitMu.Unlock()
	if v == r.get() || r.emitter == nil {
		return
	}
	r.mu.Lock()
	r.current = v
	r.mu.Unlock()
	if err := r.emitter.Emit(event.EvtLocalReachabilityChanged{Reachability: v}); err != nil {
		log.Warnw("reachability event not emitted", "reachability", v, "error", err)
	}
	log.Infow("reachability", "reachability", v)
}

// newReachability emits the node's reachability from its start to its
// stop: ForceReachability's value at start, AutoNAT's measurements later.
func newReachability(lc fx.Lifecycle, cfg *Config, bus event.Bus) *reachability {
	r := &reachability{}
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			emitter, err := bus.Emitter(new(event.EvtLocalReachabilityChanged), eventbus.Stateful)
			if err != nil {
				return fmt.Errorf("node: reachability emitter: %w", err)
			}
			r.emitMu.Lock()
			r.emitter = emitter
			r.emitMu.Unlock()
			if cfg.ForceReachability != nil {
				r.set(*cfg.ForceReachability)
			}
			return nil
		},
		OnStop: func(context.Context) error {
			r.emitMu.Lock()
			defer r.emitMu.Unlock()
			if r.emitter != nil {
				_ = r.emitter.Close()
				r.emitter = nil
			}
			return nil
		},
	})
	return r
}

// Reachability returns the node's reachability as it last announced it on
// its event bus (event.EvtLocalReachabilityChanged):
// network.ReachabilityUnknown until AutoNAT v2 measures it or
// ForceReachability fixes it. Safe for concurrent use.
func (n *Node) Reachability() network.Reachability { return n.reachability.get() }
