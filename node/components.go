package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	leveldb "github.com/ipfs/go-ds-leveldb"
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
	"github.com/libp2p/go-libp2p/p2p/host/peerstore/pstoremem"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
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
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/realm"
	"github.com/realmnet/realmnet/resource"
	"github.com/realmnet/realmnet/swarm"
)

// UserAgent is what identify reports for realmnet nodes.
const UserAgent = "realmnet/0.1"

// components lists the node's fx constructors, in dependency order. Each
// appends its own stop hook, so fx stops them in reverse order. The basic
// host also closes the peerstore, resource and connection managers and the
// swarm it was given; their Close methods are safe to call twice.
func components(cfg *config, key crypto.PrivKey) fx.Option {
	return fx.Options(
		fx.Supply(cfg),
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
			newHost,
			newNodeIdentifyTracker,
			newDHT,
			newRealms,
		),
		fx.Invoke(start),
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

func newEventBus() event.Bus { return eventbus.NewBus() }

// newResourceManager is realmnet's resource manager: rcmgr with the
// ResourceLimits option's limits over rcmgr's auto-scaled defaults — sized so
// that a peer may hold MaxPaths connections (rcmgr's default is 8) and the
// system the pools' ceiling — plus realm scopes.
func newResourceManager(lc fx.Lifecycle, cfg *config, id peer.ID) (*resource.Manager, network.ResourceManager, error) {
	rc := cfg.resources
	rc.PartialLimitConfig.Apply(resourceLimits(cfg.multipath.MaxPaths, cfg.connLimits.HighWater).ToPartialLimitConfig())
	var reg prometheus.Registerer
	var opts []rcmgr.Option
	if cfg.metrics != nil {
		// rcmgr's collectors are process-wide (registered once per
		// registry); the realm gauge is per node, labelled with its ID.
		reporter, err := rcmgr.NewStatsTraceReporter()
		if err != nil {
			return nil, nil, fmt.Errorf("node: rcmgr metrics: %w", err)
		}
		rcmgr.MustRegisterWith(cfg.metrics)
		opts = append(opts, rcmgr.WithTraceReporter(reporter))
		reg = prometheus.WrapRegistererWith(prometheus.Labels{"node": id.String()}, cfg.metrics)
	}
	rm, err := resource.New(rc, reg, opts...)
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
func newHooks(cfg *config) (*hooks.Registry, error) {
	r, err := hooks.NewRegistry(cfg.hookTimeout)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	for _, fn := range cfg.beforeConnect {
		r.OnBeforeConnect(fn)
	}
	for _, fn := range cfg.afterHandshake {
		r.OnAfterHandshake(fn)
	}
	return r, nil
}

// newGater is realmnet's gater; its rules persist in DataDir/gater (LevelDB)
// or, without a data directory, in memory.
func newGater(lc fx.Lifecycle, cfg *config, registry *hooks.Registry) (*gater.Gater, libp2pcoreconnmgr.ConnectionGater, error) {
	var store datastore.Batching = dssync.MutexWrap(datastore.NewMapDatastore())
	if cfg.dataDir != "" {
		dir := filepath.Join(cfg.dataDir, "gater")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, nil, fmt.Errorf("node: create data directory: %w", err)
		}
		ldb, err := leveldb.NewDatastore(dir, nil)
		if err != nil {
			return nil, nil, fmt.Errorf("node: open gater rules in %s: %w", dir, err)
		}
		store = ldb
	}
	g, err := gater.New(store, registry)
	if err != nil {
		_ = store.Close()
		return nil, nil, err
	}
	lc.Append(fx.StopHook(store.Close))
	return g, g, nil
}

// newConnManager is realmnet's layered connection manager. It fails when
// its HighWater exceeds the resource manager's system connection limit (a
// resource manager given through node.Fx; the default one is sized to fit).
func newConnManager(lc fx.Lifecycle, cfg *config, bus event.Bus, rm network.ResourceManager) (*connmgr.Manager, error) {
	cm, err := connmgr.New(cfg.connLimits, bus, connmgr.WithClock(cfg.clock))
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
// InterceptAccept (address rules, inbound BeforeConnect hooks) once the QUIC
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
	Config    *config
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
	s, err := swarm.New(swarm.Params{
		LocalPeer:       p.ID,
		Peerstore:       p.Peerstore,
		Transport:       p.Transport,
		ResourceManager: p.Resources,
		Dials:           p.Gater,
		Admission:       []core.AdmissionStage{p.Gater, p.Pools},
		Pools:           p.Pools,
		EventBus:        p.Bus,
		Config:          p.Config.swarm,
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
func newMultipath(lc fx.Lifecycle, cfg *config, s *swarm.Swarm, bus event.Bus, g *gater.Gater, pools *connmgr.Manager) (*multipath.Manager, error) {
	m, err := multipath.New(s, bus, cfg.multipath, multipath.WithClock(cfg.clock))
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

// newNodeIdentifyTracker records identify outcomes for Node.Connect; it
// forgets a peer when its last connection closes.
func newNodeIdentifyTracker(lc fx.Lifecycle, bus event.Bus, s *swarm.Swarm) (*identifyTracker, error) {
	t, err := newIdentifyTracker(bus)
	if err != nil {
		return nil, err
	}
	forget := &network.NotifyBundle{DisconnectedF: func(n network.Network, c network.Conn) {
		if n.Connectedness(c.RemotePeer()) != network.Connected {
			t.forget(c.RemotePeer())
		}
	}}
	s.Notify(forget)
	lc.Append(fx.StopHook(func() {
		s.StopNotify(forget)
		t.close()
	}))
	return t, nil
}

// newHost is libp2p's basic host over our swarm, with identify and ping.
func newHost(lc fx.Lifecycle, s *swarm.Swarm, bus event.Bus, cm libp2pcoreconnmgr.ConnManager) (host.Host, error) {
	h, err := basichost.NewHost(s, &basichost.HostOpts{
		EventBus:    bus,
		ConnManager: cm,
		EnablePing:  true,
		UserAgent:   UserAgent,
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
// prefix.
func newDHT(lc fx.Lifecycle, cfg *config, h host.Host) (*dht.IpfsDHT, error) {
	opts := []dht.Option{
		dht.ProtocolPrefix(protocol.ID(DefaultDHTProtocolPrefix)),
		dht.Mode(kadMode(cfg.dhtMode)),
	}
	if len(cfg.bootstrap) > 0 {
		opts = append(opts, dht.BootstrapPeers(cfg.bootstrap...))
	}
	if !cfg.dhtPrivateAddrs {
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
// before the host's and the DHT's, so goodbyes still go out) and turns the
// realm-only policy on when asked, exempting bootstrap and allowlisted peers.
func newRealms(lc fx.Lifecycle, cfg *config, h host.Host, backend *realmBackend, g *gater.Gater, d *dht.IpfsDHT) (*realm.Service, error) {
	svc, err := realm.NewService(realm.Deps{Host: h, Backend: backend, Routing: d, Clock: cfg.clock})
	if err != nil {
		return nil, err
	}
	lc.Append(fx.StopHook(svc.Close))
	if cfg.realmOnly {
		bootstrapPeers := make(map[peer.ID]bool, len(cfg.bootstrap))
		for _, ai := range cfg.bootstrap {
			bootstrapPeers[ai.ID] = true
		}
		exempt := func(p peer.ID) bool { return bootstrapPeers[p] || g.HasAllowRule(p) }
		if err := svc.EnableRealmOnly(cfg.authTimeout, cfg.realmOnlyBackoff, exempt); err != nil {
			return nil, err
		}
	}
	return svc, nil
}

// start is the node's one start hook. It depends on every component, so
// that all of them are built, and have their stop hooks registered, before
// anything starts: when listening fails, fx rolls all of them back. It
// listens, then connects to the bootstrap peers (the host itself is started
// when it is built, see newHost).
func start(lc fx.Lifecycle, cfg *config, s *swarm.Swarm, g *gater.Gater, _ *multipath.Manager, h host.Host, d *dht.IpfsDHT, _ *identifyTracker, _ *realm.Service) {
	g.SetNetwork(s)
	lc.Append(fx.StartHook(func() error {
		if err := s.Listen(cfg.listenAddrs...); err != nil {
			return err
		}
		bootstrap(cfg, h, d)
		return nil
	}))
}

// bootstrap connects to the bootstrap peers in parallel, waiting at most
// BootstrapTimeout; a peer that cannot be reached is logged, not fatal (the
// DHT keeps trying its bootstrap peers while its routing table is empty). It
// then asks the DHT to refresh its table.
func bootstrap(cfg *config, h host.Host, d *dht.IpfsDHT) {
	if len(cfg.bootstrap) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.bootstrapTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, ai := range cfg.bootstrap {
		wg.Go(func() {
			if err := h.Connect(ctx, ai); err != nil {
				log.Warnw("bootstrap peer unreachable", "peer", ai.ID, "addrs", ai.Addrs, "error", err)
			}
		})
	}
	wg.Wait()
	_ = d.Bootstrap(ctx)
}
