// Package node builds a realmnet node and is the SDK's public entry point.
//
// New wires the node's components with uber/fx, each from its own
// constructor — identity, peerstore, event bus, resource manager, connection
// gater, connection manager, QUIC transport, realmnet's swarm, libp2p's basic
// host (identify, ping) over that swarm, and the Kademlia DHT — starts them,
// and returns a *Node. Close stops them in reverse order. Users add or
// replace components with the Fx option (fx.Provide, fx.Decorate).
//
// Options follow one convention, go-libp2p's, here and in package realm:
// each is a bare noun naming what it sets (ListenAddrs, Bootstrap,
// realm.PSK), takes the value in its natural type (ListenAddrStrings for
// strings), and returns an error naming a bad value. An Option is a
// func(*Config) error, so applications may write their own. New applies
// every option and only then resolves the Config, so the order of options
// never matters.
package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	logging "github.com/ipfs/go-log/v2"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/routing"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
	"go.uber.org/zap/zapcore"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/debugapi"
	"github.com/realmnet/realmnet/gater"
	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/internal/eventqueue"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/realm"
	"github.com/realmnet/realmnet/resource"
	"github.com/realmnet/realmnet/swarm"
)

var log = logging.Logger("realmnet/node")

// DefaultCloseTimeout bounds Close: how long the components get to stop
// (Shutdown takes a context instead). 30 s, the bound Close always had: a
// loaded 2-core machine running the race detector has needed more than
// 10 s to stop a node with a few dozen connections.
const DefaultCloseTimeout = 30 * time.Second

// Node is a running realmnet node. Its methods are safe for concurrent use.
type Node struct {
	app   *fx.App
	host  host.Host
	swarm *swarm.Swarm
	paths *multipath.Manager
	pools *connmgr.Manager
	hooks *hooks.Registry
	gater *gater.Gater
	rm    *resource.Manager
	bus   *eventqueue.ClosingBus

	identified   *identifyTracker
	dht          *dht.IpfsDHT
	realms       *realm.Service
	reachability *reachability
	holePunch    *holePunching

	// debug is the debug endpoint (DebugAddr) and debugEvents its event
	// recorder; nil without one.
	debug       *debugapi.Server
	debugEvents *eventRecorder

	// routingTableWait bounds ConnectPeer's wait for a first DHT peer
	// (Config.BootstrapTimeout).
	routingTableWait time.Duration

	closeOnce sync.Once
	closeErr  error
}

// New builds and starts a node. With no options it gets a fresh Ed25519
// identity, listens on DefaultListenAddr, and runs the DHT in DHTAuto mode
// with no bootstrap peers. Options may come in any order (see Config).
//
// ctx bounds the start; when it ends first, New stops what it started and
// returns ctx's error. A node is started when New returns: it listens on
// every listen address, serves identify, ping and the DHT, and has tried
// every bootstrap peer (in parallel, each at most BootstrapTimeout, 10 s;
// an unreachable one is logged, not fatal) — the bootstrap peers it reached
// are in its DHT routing table, so DHT calls made at once find them.
//
// It returns an error, and leaves nothing running, when an option is
// invalid (the error names the bad value), the identity file is unreadable
// or corrupt (the file is left untouched), a listen address cannot be
// bound (named), a component fails to start, or ctx ends.
func New(ctx context.Context, opts ...Option) (*Node, error) {
	if ctx == nil {
		return nil, errors.New("node: New: nil context")
	}
	cfg := DefaultConfig()
	for _, opt := range opts {
		if opt == nil {
			return nil, errors.New("node: nil Option")
		}
		if err := opt(&cfg); err != nil {
			return nil, err
		}
	}
	if err := cfg.resolve(); err != nil {
		return nil, err
	}
	if cfg.DebugAddr != "" && cfg.Metrics == nil {
		// The debug endpoint's /metrics serves the node's own registry.
		cfg.Metrics = prometheus.NewRegistry()
	}
	key, err := identity(&cfg)
	if err != nil {
		return nil, err
	}

	n := &Node{routingTableWait: cfg.BootstrapTimeout}
	fxOpts := []fx.Option{
		fx.WithLogger(fxLogger),
		components(ctx, &cfg, key),
	}
	fxOpts = append(fxOpts, cfg.FxOptions...)
	fxOpts = append(fxOpts, fx.Populate(&n.host, &n.swarm, &n.paths, &n.pools, &n.hooks, &n.gater, &n.rm, &n.dht, &n.identified, &n.realms, &n.bus, &n.reachability, &n.holePunch))
	n.app = fx.New(fxOpts...)
	if err := n.app.Err(); err != nil {
		return nil, fmt.Errorf("node: build: %w", err)
	}
	fxCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), startTimeout)
	defer cancel()
	if err := n.app.Start(fxCtx); err != nil {
		return nil, fmt.Errorf("node: start: %w", err)
	}
	if cfg.DebugAddr != "" {
		if err := n.startDebug(&cfg); err != nil {
			stopCtx, cancel := context.WithTimeout(context.Background(), DefaultCloseTimeout)
			defer cancel()
			_ = n.app.Stop(stopCtx)
			return nil, err
		}
	}
	// From now on, subscriptions on the node's bus are the application's:
	// Close ends them (see Close).
	n.bus.Track()
	log.Infow("node started", "peer", n.ID(), "addrs", n.Addrs())
	return n, nil
}

// fxLogger sends fx's own events to the "realmnet/node" log at debug level;
// New returns start errors to the caller, so they are not logged twice.
func fxLogger() fxevent.Logger {
	l := &fxevent.ZapLogger{Logger: log.Desugar()}
	l.UseLogLevel(zapcore.DebugLevel)
	l.UseErrorLevel(zapcore.DebugLevel)
	return l
}

func identity(cfg *Config) (crypto.PrivKey, error) {
	switch {
	case cfg.Identity != nil:
		return cfg.Identity, nil
	case cfg.IdentityFile != "":
		return LoadOrCreateIdentity(cfg.IdentityFile)
	}
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, fmt.Errorf("node: generate identity: %w", err)
	}
	return key, nil
}

// ID returns the node's peer ID.
func (n *Node) ID() peer.ID { return n.host.ID() }

// Addrs returns the addresses the node advertises (listen addresses with
// unspecified IPs expanded), without /p2p.
func (n *Node) Addrs() []ma.Multiaddr { return n.host.Addrs() }

// AddrInfo returns the node's peer ID and advertised addresses, ready to be
// handed to another node's Connect or Bootstrap.
func (n *Node) AddrInfo() peer.AddrInfo {
	return peer.AddrInfo{ID: n.ID(), Addrs: n.Addrs()}
}

// Host returns the libp2p host that runs over realmnet's swarm: any libp2p
// protocol can be mounted on it.
func (n *Node) Host() host.Host { return n.host }

// Network returns realmnet's swarm (the host's network.Network) as the
// Network view: connections, streams, DialPath, admission counters.
func (n *Node) Network() Network { return n.swarm }

// Hooks returns the hook registry, for adding and removing BeforeConnect and
// AfterHandshake hooks at run time.
func (n *Node) Hooks() *hooks.Registry { return n.hooks }

// ResourceManager returns the resource manager: rcmgr's scopes and limits
// plus realm scopes (ReserveRealmMember, ReserveRealmStream, ViewRealm).
func (n *Node) ResourceManager() *resource.Manager { return n.rm }

// Gater returns the connection gater: block and allow rules for peers,
// addresses and subnets (persisted in DataDir), and the peer policy.
func (n *Node) Gater() *gater.Gater { return n.gater }

// ConnManager returns the connection manager: pools, tags, protection,
// realm assignment, trims.
func (n *Node) ConnManager() ConnManager { return n.pools }

// Connections returns every connection (path) to p.
func (n *Node) Connections(p peer.ID) []network.Conn { return n.pools.Connections(p) }

// Connection returns p's selected path, or nil when not connected.
func (n *Node) Connection(p peer.ID) network.Conn { return n.pools.Connection(p) }

// ConnectionsMap returns every connection, by peer.
func (n *Node) ConnectionsMap() map[peer.ID][]network.Conn { return n.pools.ConnectionsMap() }

// RealmConnections returns the connections of realm r's sub-pool.
func (n *Node) RealmConnections(r core.RealmID) []network.Conn { return n.pools.RealmConnections(r) }

// ConnectionCount returns the number of connections (several per peer
// count several times).
func (n *Node) ConnectionCount() int { return n.pools.ConnectionCount() }

// TrimConnections closes up to count connections in the connection
// manager's victim order and returns how many it closed.
func (n *Node) TrimConnections(ctx context.Context, count int) (int, error) {
	return n.pools.TrimConnections(ctx, count)
}

// Stats returns the connection pools' counts, watermarks, trims and closed
// connections per reason.
func (n *Node) Stats() connmgr.Stats { return n.pools.Stats() }

// Multipath returns the path manager: strategies, path snapshots, events.
func (n *Node) Multipath() PathManager { return n.paths }

// Paths returns snapshots of the paths (connections) to p: addresses, RTT,
// loss, state, which one is selected. Empty when not connected.
func (n *Node) Paths(p peer.ID) []core.PathInfo { return n.paths.Paths(p) }

// DHT returns the node's Kademlia DHT (protocol prefix /realmnet).
func (n *Node) DHT() *dht.IpfsDHT { return n.dht }

// Connect connects to the peer at the given addresses (added to the
// peerstore) and waits for identify to complete on the connection that
// survives admission (when both ends dial each other at the same moment,
// both keep the same one of the two connections). It returns nil at once
// when already connected. Errors are the swarm's dial errors, which name
// each address tried (errors.Is(err, hooks.ErrRejected) when one of our
// hooks refused, errors.Is(err, core.ErrRefused) for any stage of our
// admission), or ErrRefusedByPeer when the peer closed the connection
// right after the handshake.
func (n *Node) Connect(ctx context.Context, ai peer.AddrInfo) error {
	if ai.ID == "" {
		return errors.New("node: Connect: AddrInfo has no peer ID")
	}
	if n.host.Network().Connectedness(ai.ID) == network.Connected {
		return nil
	}
	return n.connect(ctx, ai, "")
}

// connect dials through the host (which waits for identify on the
// connection the swarm returns: the survivor of admission) and then asks
// the identify outcome whether the peer kept the connection: the peer's
// admission decides after the handshake, so a refused dial "succeeds" and
// only identify fails. where describes the addresses in errors.
func (n *Node) connect(ctx context.Context, ai peer.AddrInfo, where string) error {
	stop := n.identified.watch(ai.ID)
	defer stop()
	start := time.Now()
	if err := n.host.Connect(ctx, ai); err != nil {
		return fmt.Errorf("node: connect to %s%s: %w", ai.ID, where, err)
	}
	reason, ok := n.identified.wait(ctx, ai.ID, start)
	switch {
	case ok && refusedByGater(reason):
		return fmt.Errorf("node: connect to %s%s: %w (identify: %v)", ai.ID, where, ErrRefusedByPeer, reason)
	case ok && reason != nil && n.checkConnected(ai.ID) != nil:
		return fmt.Errorf("node: connect to %s%s: the connection closed during identify: %w", ai.ID, where, reason)
	}
	return n.checkConnected(ai.ID)
}

// refusedByGater reports whether err says the peer closed the connection
// with network.ConnGated (its gater or hooks refused us). Other closes — a
// redundant path closed by multipath, say — are not refusals.
func refusedByGater(err error) bool {
	var ce *network.ConnError
	return errors.As(err, &ce) && ce.Remote && ce.ErrorCode == network.ConnGated
}

// ErrRefusedByPeer is returned when a peer closes a new connection right
// after the handshake: its gater or hooks refused us. (go-libp2p's QUIC
// listener decides after the handshake, so the dial itself succeeds, and
// the basic host's Connect does not notice.)
var ErrRefusedByPeer = errors.New("node: the peer closed the connection after the handshake (refused by its gater or hooks)")

// checkConnected turns "connected, then closed at once" into
// ErrRefusedByPeer.
func (n *Node) checkConnected(p peer.ID) error {
	// The swarm forgets a connection the peer closed a moment after quic-go
	// knows it is closed: ask the connections themselves.
	for _, c := range n.host.Network().ConnsToPeer(p) {
		if !c.IsClosed() {
			return nil
		}
	}
	return fmt.Errorf("node: connect to %s: %w", p, ErrRefusedByPeer)
}

// ConnectPeer connects to p knowing only its peer ID: it dials the addresses
// already in the peerstore and, when there are none or they fail, looks the
// peer up in the DHT (FindPeer) and dials what it finds. While the DHT's
// routing table is empty it first waits for a peer to enter it, at most
// BootstrapTimeout (10 s) and within ctx. A lookup that ends without the
// peer is repeated up to findPeerAttempts times in all, 200 ms and 400 ms
// apart, within ctx: kad-dht ends a lookup once the closest peers it heard
// of have answered, and in a small or changing network those may not know
// the peer yet. Errors name p and what failed.
func (n *Node) ConnectPeer(ctx context.Context, p peer.ID) error {
	if p == "" {
		return errors.New("node: ConnectPeer: empty peer ID")
	}
	if p == n.ID() {
		return fmt.Errorf("node: ConnectPeer %s: %w", p, swarm.ErrDialToSelf)
	}
	if n.host.Network().Connectedness(p) == network.Connected {
		return nil
	}
	var firstErr error
	if len(n.host.Peerstore().Addrs(p)) > 0 {
		if firstErr = n.connect(ctx, peer.AddrInfo{ID: p}, ""); firstErr == nil || errors.Is(firstErr, ErrRefusedByPeer) {
			return firstErr
		}
	}
	// A node that is still filling its routing table (bootstrap peers
	// reached after New, or first peers connecting) would fail at once
	// with "failed to find any peer in table": wait for a first DHT peer,
	// within ctx and at most routingTableWait.
	if n.dht.RoutingTable().Size() == 0 {
		wctx, cancel := context.WithTimeout(ctx, n.routingTableWait)
		_ = pollUntil(wctx, func() bool { return n.dht.RoutingTable().Size() > 0 })
		cancel()
	}
	ai, err := n.findPeer(ctx, p)
	if err != nil {
		if firstErr != nil {
			return fmt.Errorf("node: connect to %s: known addresses failed (%v) and DHT lookup failed: %w", p, firstErr, err)
		}
		return fmt.Errorf("node: find %s through the DHT: %w", p, err)
	}
	return n.connect(ctx, ai, fmt.Sprintf(" at DHT addresses %v", ai.Addrs))
}

// findPeerAttempts is how many DHT lookups ConnectPeer makes for a peer
// that a lookup did not find.
const findPeerAttempts = 3

// findPeer is the DHT's FindPeer, repeated (see ConnectPeer) while it ends
// with routing.ErrNotFound.
func (n *Node) findPeer(ctx context.Context, p peer.ID) (peer.AddrInfo, error) {
	pause := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		ai, err := n.dht.FindPeer(ctx, p)
		if err == nil || !errors.Is(err, routing.ErrNotFound) || attempt == findPeerAttempts {
			return ai, err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return ai, err
		case <-t.C:
		}
		pause *= 2
	}
}

// NewStream opens a stream to p speaking the first of protocols the peer
// supports, dialing (ConnectPeer) when not connected.
func (n *Node) NewStream(ctx context.Context, p peer.ID, protocols ...protocol.ID) (network.Stream, error) {
	if len(protocols) == 0 {
		return nil, errors.New("node: NewStream needs at least one protocol ID")
	}
	if n.host.Network().Connectedness(p) != network.Connected {
		if err := n.ConnectPeer(ctx, p); err != nil {
			return nil, err
		}
	}
	s, err := n.host.NewStream(ctx, p, protocols...)
	if err != nil {
		return nil, fmt.Errorf("node: open stream to %s for %v: %w", p, protocols, err)
	}
	return s, nil
}

// SetStreamHandler sets the handler for inbound streams of protocol p. The
// handler runs on its own goroutine per stream and must close or reset it.
func (n *Node) SetStreamHandler(p protocol.ID, handler network.StreamHandler) {
	n.host.SetStreamHandler(p, handler)
}

// RemoveStreamHandler removes the handler of protocol p.
func (n *Node) RemoveStreamHandler(p protocol.ID) { n.host.RemoveStreamHandler(p) }

// Close is Shutdown bounded by DefaultCloseTimeout (30 s).
func (n *Node) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultCloseTimeout)
	defer cancel()
	return n.Shutdown(ctx)
}

// Shutdown stops every component in the reverse order of their start —
// realms (each says goodbye to its members, at most 500 ms), DHT, host,
// swarm (listeners and connections), transport, managers, peerstore — and
// waits for their goroutines, at most until ctx ends (then it returns ctx's
// error, wrapped, and components still stopping finish in the background).
//
// It first ends every subscription made on the node's event bus
// (Host().EventBus()) after New returned: their channels are closed. A
// subscription the application stopped reading would otherwise block the
// node's emitters, and its shutdown, for ever (go-libp2p's bus blocks an
// emitter on a full subscription).
//
// Safe to call more than once and concurrently; later calls return the
// first one's result.
func (n *Node) Shutdown(ctx context.Context) error {
	n.closeOnce.Do(func() {
		n.stopDebug(ctx)
		n.bus.CloseSubscriptions()
		if err := n.app.Stop(ctx); err != nil {
			n.closeErr = fmt.Errorf("node: stop: %w", err)
		}
	})
	return n.closeErr
}

// EventsDropped counts, per component, the events dropped because a
// subscriber of the node's bus did not keep up. Each component delivers
// its events through bounded queues (4096 events each), so a subscriber that
// stops reading costs bounded memory; what does not fit is dropped and
// counted here. go-libp2p's own emitters (identify, the host) block instead
// of dropping: see Shutdown.
type EventsDropped struct {
	// Swarm: connectedness, connection and stream events.
	Swarm uint64
	// Multipath: path events. ConnManager: trim events.
	Multipath, ConnManager uint64
	// Realm: membership events.
	Realm uint64
}

// EventsDropped returns the events dropped so far; see the type. The same
// counts are exported as realmnet_event_queue_dropped_total{queue}. Safe
// for concurrent use.
func (n *Node) EventsDropped() EventsDropped {
	d := n.bus.DroppedEvents()
	return EventsDropped{Swarm: d["swarm"], Multipath: d["multipath"], ConnManager: d["connmgr"], Realm: d["realm"]}
}

// JoinRealm joins the realm called name (see package realm): with
// realm.PSK a closed realm, else an open one. It returns at once;
// members are found (DHT, connected peers, realm.Peers, member exchange,
// mDNS), mutually authenticated, and announced as realm.EvtMemberJoined.
// Errors: realm.ErrBadName, realm.ErrWeakPSK, realm.ErrAlreadyJoined, an
// invalid limit (named), ctx's error.
func (n *Node) JoinRealm(ctx context.Context, name string, opts ...realm.Option) (*realm.Realm, error) {
	return n.realms.Join(ctx, name, opts...)
}

// Realm returns the joined realm called name, or nil.
func (n *Node) Realm(name string) *realm.Realm { return n.realms.Realm(name) }

// Realms returns the joined realms, sorted by name.
func (n *Node) Realms() []*realm.Realm { return n.realms.Realms() }

// RealmStats returns the realm service's counters: handshakes, refusals
// (by reason), rejected records and goodbyes, realm-only closes.
func (n *Node) RealmStats() realm.Stats { return n.realms.Stats() }
