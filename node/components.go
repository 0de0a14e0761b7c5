package node

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	libp2pconfig "github.com/libp2p/go-libp2p/config"
	libp2pcoreconnmgr "github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/transport"
	basichost "github.com/libp2p/go-libp2p/p2p/host/basic"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/libp2p/go-libp2p/p2p/host/observedaddrs"
	"github.com/libp2p/go-libp2p/p2p/host/peerstore/pstoremem"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/quicreuse"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"go.uber.org/fx"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/gater"
	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/internal/eventqueue"
	"github.com/realmnet/realmnet/internal/realmwire"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/realm"
	"github.com/realmnet/realmnet/resource"
	"github.com/realmnet/realmnet/swarm"
)

// components lists the node's fx constructors, in dependency order. Each
// appends its own stop hook, so fx stops them in reverse order. The basic
// host also closes the peerstore, resource and connection managers and the
// swarm it was given; their Close methods are safe to call twice.
func components(ctx context.Context, cfg *Config, key crypto.PrivKey) fx.Option {
	return fx.Options(
		fx.Supply(cfg),
		fx.Supply(startContext{ctx}),
		fx.Supply(fx.Annotate(key, fx.As(new(crypto.PrivKey)))),
		fx.Provide(
			peer.IDFromPrivateKey,
			newPeerstore,
			newEventBus,
			newResourceManager,
			newHooks,
			newGater,
			newConnManager,
			fx.Annotate(func(cm *connmgr.Manager) *connmgr.Manager { return cm }, fx.As(new(libp2pcoreconnmgr.ConnManager))),
			libp2pconfig.PrivKeyToStatelessResetKey,
			libp2pconfig.PrivKeyToTokenGeneratorKey,
			newQUICReuse,
			newTransport,
			newSwarm,
			newMultipath,
			newRealmBackend,
			newObservedAddrs,
			newHost,
			newHolePunching,
			newNodeIdentifyTracker,
			newDHT,
			newRealms,
			newReachability,
			newAutoNAT,
		),
		fx.Invoke(start),
		// After start, which decides the build order (see below); the
		// relay transport listens on /p2p-circuit when it is added, before
		// start's hook listens on the QUIC addresses.
		fx.Invoke(addRelayTransport),
		fx.Invoke(startRelayService),
		fx.Invoke(connectBootstrap),
		// After start: its parameters decide the order in which the
		// components are built (the gater, which can refuse to start on a
		// damaged store, first).
		fx.Invoke(registerMetrics),
	)
}

func newPeerstore(lc fx.Lifecycle, key crypto.PrivKey, id peer.ID) (peerstore.Peerstore, error) {
	ps, err := pstoremem.NewPeerstore()
	if err != nil {
		return nil, fmt.Errorf("node: create peerstore: %w", err)
	}
	if err := ps.AddPrivKey(id, key); err != nil {
		ps.Close()
		return nil, fmt.Errorf("node: store identity: %w", err)
	}
	if err := ps.AddPubKey(id, key.GetPublic()); err != nil {
		ps.Close()
		return nil, fmt.Errorf("node: store identity: %w", err)
	}
	lc.Append(fx.StopHook(ps.Close))
	return ps, nil
}

// newEventBus is go-libp2p's event bus behind an eventqueue.ClosingBus, so
// that Shutdown can end the application's subscriptions (tracking starts
// when New returns).
func newEventBus(cfg *Config) (*eventqueue.ClosingBus, event.Bus) {
	var opts []eventbus.Option
	if cfg.Metrics != nil {
		opts = append(opts, eventbus.WithMetricsTracer(eventbus.NewMetricsTracer(eventbus.WithRegisterer(cfg.Metrics))))
	}
	bus := eventqueue.NewClosingBus(eventbus.NewBus(opts...), false)
	return bus, bus
}

// newResourceManager is realmnet's resource manager: rcmgr with the
// ResourceLimits option's limits over rcmgr's auto-scaled defaults — sized so
// that a peer may hold MaxPaths connections (rcmgr's default is 8) and the
// system the pools' ceiling — plus realm scopes.
func newResourceManager(lc fx.Lifecycle, cfg *Config, id peer.ID) (*resource.Manager, network.ResourceManager, error) {
	rc := cfg.Resources
	rc.PartialLimitConfig.Apply(resourceLimits(cfg.Multipath.MaxPaths, cfg.ConnLimits.HighWater).ToPartialLimitConfig())
	// resource.New turns rcmgr's trace-fed metrics off (they cost a stream
	// ~17 % of its time) and, with a registerer, exports the same
	// libp2p_rcmgr_* families and the realm usage at scrape time, labelled
	// with the node's ID.
	var reg prometheus.Registerer
	if cfg.Metrics != nil {
		reg = prometheus.WrapRegistererWith(prometheus.Labels{"node": id.String()}, cfg.Metrics)
	}
	rm, err := resource.New(rc, reg)
	if err != nil {
		return nil, nil, fmt.Errorf("node: create resource manager: %w", err)
	}
	lc.Append(fx.StopHook(rm.Close))
	return rm, rm, nil
}

// resourceLimits is rcmgr's auto-scaled default configuration with the
// per-peer connection limits raised to maxPaths and the system connection
// limits raised to the connection manager's ceiling (HighWater + 10 %)
// where they are lower, so that the default resource manager never refuses
// what the multipath and connection managers want (go-libp2p issue #1640).
func resourceLimits(maxPaths, highWater int) rcmgr.ConcreteLimitConfig {
	scaled := rcmgr.DefaultLimits.AutoScale()
	partial := scaled.ToPartialLimitConfig()
	raise := func(to int, vals ...*rcmgr.LimitVal) {
		for _, v := range vals {
			if *v >= 0 && int(*v) < to {
				*v = rcmgr.LimitVal(to)
			}
		}
	}
	raise(maxPaths, &partial.PeerDefault.Conns, &partial.PeerDefault.ConnsInbound, &partial.PeerDefault.ConnsOutbound)
	ceiling := highWater + max(1, highWater*connmgr.CeilingPercent/100)
	raise(ceiling, &partial.System.Conns, &partial.System.ConnsInbound, &partial.System.ConnsOutbound)
	return partial.Build(scaled)
}

// newHooks is the hook registry, with the hooks given as options.
func newHooks(cfg *Config) (*hooks.Registry, error) {
	r, err := hooks.NewRegistry(cfg.HookTimeout)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	for _, fn := range cfg.BeforeConnect {
		r.OnBeforeConnect(fn)
	}
	for _, fn := range cfg.AfterHandshake {
		r.OnAfterHandshake(fn)
	}
	return r, nil
}

// newGater is realmnet's gater; its rules persist in DataDir/gater (LevelDB)
// or, without a data directory, in memory.
func newGater(lc fx.Lifecycle, cfg *Config, registry *hooks.Registry) (*gater.Gater, libp2pcoreconnmgr.ConnectionGater, error) {
	if cfg.DataDir == "" {
		g, err := gater.New(dssync.MutexWrap(datastore.NewMapDatastore()), registry)
		if err != nil {
			return nil, nil, err
		}
		return g, g, nil
	}
	dir := filepath.Join(cfg.DataDir, "gater")
	// gater.Open opens LevelDB strictly and checks the rules against their
	// manifest: a damaged store refuses to start (a *gater.StoreDamagedError
	// naming dir and what was lost) unless RecoverGaterStore is given.
	g, err := gater.Open(dir, registry, gater.RecoverStore(cfg.RecoverGaterStore))
	if err != nil {
		return nil, nil, fmt.Errorf("node: gater rules in %s: %w", dir, err)
	}
	lc.Append(fx.StopHook(g.Close))
	return g, g, nil
}

// newConnManager is realmnet's layered connection manager. It fails when
// its HighWater exceeds the resource manager's system connection limit (a
// resource manager given through node.Fx; the default one is sized to fit).
func newConnManager(lc fx.Lifecycle, cfg *Config, bus event.Bus, rm network.ResourceManager) (*connmgr.Manager, error) {
	cm, err := connmgr.New(cfg.ConnLimits, bus, connmgr.WithClock(cfg.Clock))
	if err != nil {
		return nil, err
	}
	if limiter, ok := rm.(libp2pcoreconnmgr.GetConnLimiter); ok {
		if err := cm.CheckLimit(limiter); err != nil {
			_ = cm.Close()
			return nil, fmt.Errorf("node: %w", err)
		}
	}
	lc.Append(fx.StopHook(cm.Close))
	return cm, nil
}

// newQUICReuse is go-libp2p's QUIC socket manager, wired as libp2p.New wires
// it: inbound connections are charged to the resource manager before the
// handshake, and source addresses are verified when it asks.
func newQUICReuse(lc fx.Lifecycle, resetKey quic.StatelessResetKey, tokenKey quic.TokenGeneratorKey, rm network.ResourceManager) (*quicreuse.ConnManager, error) {
	cm, err := quicreuse.NewConnManager(resetKey, tokenKey,
		quicreuse.ConnContext(func(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
			addr, err := quicreuse.ToQuicMultiaddr(info.RemoteAddr, quic.Version1)
			if err != nil {
				addr = nil
			}
			scope, err := rm.OpenConnection(network.DirInbound, false, addr)
			if err != nil {
				return ctx, err
			}
			ctx = network.WithConnManagementScope(ctx, scope)
			context.AfterFunc(ctx, scope.Done)
			return ctx, nil
		}),
		quicreuse.VerifySourceAddress(rm.VerifySourceAddress),
	)
	if err != nil {
		return nil, fmt.Errorf("node: create QUIC socket manager: %w", err)
	}
	lc.Append(fx.StopHook(cm.Close))
	return cm, nil
}

// newTransport is go-libp2p's QUIC transport. Its listener asks the gater
// InterceptAccept (address rules only) once the QUIC
// handshake is done, in its accept loop; the gater's InterceptSecured allows
// everything, the peer being judged by the swarm's admission pipeline
// instead.
func newTransport(key crypto.PrivKey, reuse *quicreuse.ConnManager, gater libp2pcoreconnmgr.ConnectionGater, rm network.ResourceManager) (transport.Transport, error) {
	t, err := libp2pquic.NewTransport(key, reuse, nil, gater, rm)
	if err != nil {
		return nil, fmt.Errorf("node: create QUIC transport: %w", err)
	}
	return t, nil
}

type swarmParams struct {
	fx.In
	Lifecycle fx.Lifecycle
	Config    *Config
	ID        peer.ID
	Peerstore peerstore.Peerstore
	Transport transport.Transport
	Resources network.ResourceManager
	Gater     *gater.Gater
	Bus       event.Bus
	Pools     *connmgr.Manager
}

// newSwarm is realmnet's swarm. Its admission pipeline is completed by
// newMultipath, which needs the swarm to dial: gater, paths, pools.
func newSwarm(p swarmParams) (*swarm.Swarm, error) {
	cfg := p.Config.Swarm
	if cfg.MetricsTracer == nil {
		cfg.MetricsTracer = swarmMetricsTracer(p.Config.Metrics)
	}
	s, err := swarm.New(swarm.Params{
		LocalPeer:       p.ID,
		Peerstore:       p.Peerstore,
		Transport:       p.Transport,
		ResourceManager: p.Resources,
		Dials:           p.Gater,
		Admission:       []core.AdmissionStage{p.Gater, p.Pools},
		Pools:           p.Pools,
		EventBus:        p.Bus,
		Config:          cfg,
		Clock:           p.Config.Clock,
	})
	if err != nil {
		return nil, err
	}
	p.Lifecycle.Append(fx.StopHook(s.Close))
	return s, nil
}

// newMultipath is the path manager, installed before anything connects as
// the second stage of the swarm's admission pipeline (gater, paths, pools),
// its path selector and a notifiee. Its stop hook runs after the host's
// (which closes the swarm): by then every path is gone, and its goroutines
// only wait to be stopped.
func newMultipath(lc fx.Lifecycle, cfg *Config, s *swarm.Swarm, bus event.Bus, g *gater.Gater, pools *connmgr.Manager) (*multipath.Manager, error) {
	m, err := multipath.New(s, bus, cfg.Multipath, multipath.WithClock(cfg.Clock))
	if err != nil {
		return nil, err
	}
	s.SetAdmission(g, m, pools)
	s.SetPathSelector(m)
	s.Notify(m)
	pools.SetPathSelector(m)
	lc.Append(fx.StopHook(func() error {
		s.StopNotify(m)
		s.SetPathSelector(nil)
		pools.SetPathSelector(nil)
		return m.Close()
	}))
	return m, nil
}

// newNodeIdentifyTracker records identify outcomes for Node.Connect.
func newNodeIdentifyTracker(lc fx.Lifecycle, bus event.Bus) (*identifyTracker, error) {
	t, err := newIdentifyTracker(bus)
	if err != nil {
		return nil, err
	}
	lc.Append(fx.StopHook(t.close))
	return t, nil
}

// newObservedAddrs is go-libp2p's observed-address manager: the addresses
// identify says peers see us at (a NAT's mapping) become the host's
// addresses once observedaddrs.ActivationThresh (4) peers on different IPs
// agree; hole punching uses them from the first observation.
func newObservedAddrs(lc fx.Lifecycle, s *swarm.Swarm, bus event.Bus) (*observedaddrs.Manager, error) {
	observed, err := observedaddrs.NewManager(bus, s)
	if err != nil {
		return nil, fmt.Errorf("node: observed addresses: %w", err)
	}
	observed.Start(s)
	lc.Append(fx.StopHook(observed.Close))
	return observed, nil
}

// newHost is libp2p's basic host over our swarm, with identify, ping and
// identify's observed addresses.
func newHost(lc fx.Lifecycle, cfg *Config, s *swarm.Swarm, bus event.Bus, cm libp2pcoreconnmgr.ConnManager, observed *observedaddrs.Manager) (host.Host, error) {
	h, err := basichost.NewHost(s, &basichost.HostOpts{
		EventBus:             bus,
		ConnManager:          cm,
		EnablePing:           true,
		UserAgent:            UserAgent(),
		ObservedAddrsManager: observed,
		// go-libp2p's identify metrics (libp2p_identify_*).
		EnableMetrics:        cfg.Metrics != nil,
		PrometheusRegisterer: cfg.Metrics,
	})
	if err != nil {
		return nil, fmt.Errorf("node: create host: %w", err)
	}
	// Started at once (identify's handlers, the address manager), before
	// the components built on the host: kad-dht dials its bootstrap peers
	// from its constructor, and a peer that identifies us over that
	// connection must find identify's handler (it would otherwise record
	// "protocols not supported" and never list our DHT protocol).
	h.Start()
	lc.Append(fx.StopHook(h.Close))
	return h, nil
}

// newDHT is go-libp2p-kad-dht on the host, under the /realmnet protocol
// prefix. It is built after AutoNAT v2 (its parameter), which must see the
// bootstrap connections kad-dht's constructor makes.
func newDHT(lc fx.Lifecycle, cfg *Config, h host.Host, _ *autonatService) (*dht.IpfsDHT, error) {
	opts := []dht.Option{
		dht.ProtocolPrefix(protocol.ID(DefaultDHTProtocolPrefix)),
		dht.Mode(kadMode(cfg.DHTMode)),
	}
	if len(cfg.Bootstrap) > 0 {
		opts = append(opts, dht.BootstrapPeers(cfg.Bootstrap...))
	}
	if !cfg.DHTPrivateAddrs {
		opts = append(opts,
			dht.AddressFilter(func(addrs []ma.Multiaddr) []ma.Multiaddr {
				return ma.FilterAddrs(addrs, manet.IsPublicAddr)
			}),
			dht.QueryFilter(dht.PublicQueryFilter),
			dht.RoutingTableFilter(dht.PublicRoutingTableFilter),
		)
	}
	d, err := dht.New(h, opts...)
	if err != nil {
		return nil, fmt.Errorf("node: create DHT: %w", err)
	}
	lc.Append(fx.StopHook(d.Close))
	return d, nil
}

func kadMode(m DHTRole) dht.ModeOpt {
	switch m {
	case DHTServer:
		return dht.ModeServer
	case DHTClient:
		return dht.ModeClient
	}
	return dht.ModeAutoServer
}

// newRealms builds the realm service over the host (its stop hook runs
// before the host's and the DHT's, so goodbyes still go out), turns the
// realm-only policy on when asked, exempting bootstrap and allowlisted
// peers, and tells the resource manager who is trusted (members,
// allowlisted and bootstrap peers) for the streams in negotiation.
func newRealms(lc fx.Lifecycle, cfg *Config, h host.Host, bus *eventqueue.ClosingBus, backend *realmBackend, g *gater.Gater, d *dht.IpfsDHT, rm *resource.Manager) (*realm.Service, error) {
	deps := realmwire.Deps{Host: h, InternalBus: bus.Bus, Backend: backend, Routing: d, Clock: cfg.Clock, PublicRelay: cfg.RelayService != nil}
	bootstrapPeers := make(map[peer.ID]bool, len(cfg.Bootstrap))
	for _, ai := range cfg.Bootstrap {
		bootstrapPeers[ai.ID] = true
	}
	if cfg.RealmOnly {
		deps.RealmOnly = &realmwire.RealmOnly{
			AuthTimeout: cfg.AuthTimeout,
			Backoff:     cfg.RealmOnlyBackoff,
			Exempt:      func(p peer.ID) bool { return bootstrapPeers[p] || g.HasAllowRule(p) },
		}
	}
	svc, err := realm.NewService(deps)
	if err != nil {
		return nil, err
	}
	lc.Append(fx.StopHook(svc.Close))
	// Realm members, allowlisted and bootstrap peers keep their share of
	// the streams in negotiation, whatever untrusted peers open.
	rm.SetTrusted(func(p peer.ID) bool { return bootstrapPeers[p] || svc.IsMember(p) || g.HasAllowRule(p) })
	return svc, nil
}

// startContext is New's context, for the start hook. fx gets a context of
// its own (startTimeout): were New's context given to fx and ended before
// fx ran the first hooks, fx would return without stopping the components
// already built; ended inside the start hook, it makes fx roll back every
// component.
type startContext struct{ context.Context }

// startTimeout bounds fx's own start and rollback: New's context bounds the
// work (listening, bootstrap) inside the start hook.
const startTimeout = 2 * time.Minute

// start is the node's first start hook. It depends on every component, so
// that all of them are built, and have their stop hooks registered, before
// anything starts: when listening fails, fx rolls all of them back. It
// listens (the host itself is started when it is built, see newHost);
// connectBootstrap's hook, the last, connects to the bootstrap peers. ctx
// is New's. The gater comes first in its
// parameters: fx builds them in order, and the gater — whose rule store may
// refuse to open — needs nothing that starts goroutines, so a refusal leaves
// nothing running (fx runs no stop hook when building fails).
func start(lc fx.Lifecycle, ctx startContext, cfg *Config, g *gater.Gater, s *swarm.Swarm, _ *multipath.Manager, _ host.Host, _ *dht.IpfsDHT, _ *identifyTracker, _ *realm.Service) {
	g.SetNetwork(s)
	lc.Append(fx.StartHook(func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		return s.Listen(cfg.ListenAddrs...)
	}))
}

// connectBootstrap connects to the bootstrap peers when the node starts,
// in the last start hook: every component that follows new peers (AutoNAT
// v2's server list, autorelay, realms) is running by then.
func connectBootstrap(lc fx.Lifecycle, ctx startContext, cfg *Config, h host.Host, d *dht.IpfsDHT) {
	lc.Append(fx.StartHook(func() error {
		return bootstrap(ctx, cfg, h, d)
	}))
}

// bootstrap connects to the bootstrap peers in parallel, waiting at most
// BootstrapTimeout (and ctx); a peer that cannot be reached is logged, not
// fatal (the DHT keeps trying its bootstrap peers while its routing table
// is empty). Each reached peer that serves the DHT is then awaited in the
// routing table (kad-dht adds it once identify has run, on its own
// goroutine), so that DHT calls made as soon as New returns find it. It
// returns ctx's error only when ctx ended.
func bootstrap(ctx context.Context, cfg *Config, h host.Host, d *dht.IpfsDHT) error {
	if len(cfg.Bootstrap) == 0 {
		return nil
	}
	bctx, cancel := context.WithTimeout(ctx, cfg.BootstrapTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, ai := range cfg.Bootstrap {
		wg.Go(func() {
			if err := h.Connect(bctx, ai); err != nil {
				log.Warnw("bootstrap peer unreachable", "peer", ai.ID, "addrs", ai.Addrs, "error", err)
				return
			}
			// Connect returns at once when the DHT's constructor already
			// dialed the peer: wait for identify to tell its protocols.
			waitIdentified(bctx, h, ai.ID)
			if !servesDHT(h, ai.ID) {
				return
			}
			if err := waitInRoutingTable(bctx, d, ai.ID); err != nil {
				log.Warnw("bootstrap peer not in the DHT routing table", "peer", ai.ID, "error", err)
			}
		})
	}
	wg.Wait()
	_ = d.Bootstrap(bctx)
	return ctx.Err()
}

// routingTablePoll is how often waitInRoutingTable and waitRoutingTable
// look at kad-dht's routing table (it offers no event for a peer added).
const routingTablePoll = 5 * time.Millisecond

// waitIdentified waits until identify has run on every connection to p
// (go-libp2p's IdentifyWait), or ctx ends.
func waitIdentified(ctx context.Context, h host.Host, p peer.ID) {
	withIDs, ok := h.(interface{ IDService() identify.IDService })
	if !ok {
		return
	}
	for _, c := range h.Network().ConnsToPeer(p) {
		select {
		case <-withIDs.IDService().IdentifyWait(c):
		case <-ctx.Done():
			return
		}
	}
}

// servesDHT reports whether identify says p serves the realmnet DHT.
func servesDHT(h host.Host, p peer.ID) bool {
	protos, err := h.Peerstore().SupportsProtocols(p, dhtProtocol)
	return err == nil && len(protos) > 0
}

// dhtProtocol is the DHT protocol ID under DefaultDHTProtocolPrefix.
const dhtProtocol = protocol.ID(DefaultDHTProtocolPrefix + "/kad/1.0.0")

// waitInRoutingTable waits until p is in d's routing table or ctx ends.
func waitInRoutingTable(ctx context.Context, d *dht.IpfsDHT, p peer.ID) error {
	return pollUntil(ctx, func() bool { return d.RoutingTable().Find(p) != "" })
}

// pollUntil checks cond every routingTablePoll until it holds (nil) or ctx
// ends (ctx's error).
func pollUntil(ctx context.Context, cond func() bool) error {
	if cond() {
		return nil
	}
	ticker := time.NewTicker(routingTablePoll)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
			if cond() {
				return nil
			}
		}
	}
}
