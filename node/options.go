package node

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
	"unicode"

	"github.com/benbjohnson/clock"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/realm"
	"github.com/realmnet/realmnet/resource"
	"github.com/realmnet/realmnet/swarm"
)

// Option configures a Node. Options are applied in order by New; an option
// given a bad value makes New return an error that names the value.
type Option func(*Config) error

// RetryConfig is the dial retry and per-peer backoff policy (py-libp2p's
// RetryConfig); see swarm.RetryConfig.
type RetryConfig = swarm.RetryConfig

// DefaultRetryConfig returns py-libp2p's defaults: 3 retries, 100 ms → 30 s,
// ×2, jitter 0.1.
func DefaultRetryConfig() RetryConfig { return swarm.DefaultRetryConfig() }

// DHTRole is how the node takes part in the Kademlia DHT; set it with the
// DHTMode option.
type DHTRole int

const (
	// DHTAuto answers DHT queries while its reachability is unknown or
	// public and stops when it learns it is private (kad-dht's
	// ModeAutoServer). This is the default.
	DHTAuto DHTRole = iota
	// DHTServer always answers DHT queries.
	DHTServer
	// DHTClient only queries; it never answers.
	DHTClient
)

// String returns "auto", "server" or "client".
func (m DHTRole) String() string {
	switch m {
	case DHTAuto:
		return "auto"
	case DHTServer:
		return "server"
	case DHTClient:
		return "client"
	}
	return fmt.Sprintf("DHTRole(%d)", int(m))
}

// ParseDHTRole parses "auto", "server" or "client".
func ParseDHTRole(s string) (DHTRole, error) {
	for _, m := range []DHTRole{DHTAuto, DHTServer, DHTClient} {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("node: unknown DHT mode %q (want auto, server or client)", s)
}

// DefaultListenAddr is where a node listens when no ListenAddrs option is
// given: every IPv4 interface, a port chosen by the system.
const DefaultListenAddr = "/ip4/0.0.0.0/udp/0/quic-v1"

// DefaultDHTProtocolPrefix is the DHT protocol prefix of realmnet nodes, so
// that their DHT is separate from IPFS's Amino DHT (/ipfs/kad/1.0.0).
const DefaultDHTProtocolPrefix = "/realmnet"

// Config is what the options build; New starts from DefaultConfig, applies
// every option, then resolves the result, so the order of options never
// matters (ConnLimits and RealmDefaults, say, may come in either order).
// Users may write their own options as func(*Config) error. A duration or
// a ConnLimits or Multipath field left at zero keeps its default. New reads
// a Config once; it is never shared with the running node.
type Config struct {
	// ListenAddrs are the QUIC multiaddrs to listen on (default
	// DefaultListenAddr).
	ListenAddrs []ma.Multiaddr
	// Identity is the node's private key and IdentityFile the file that
	// holds it: at most one of the two; neither gives a fresh Ed25519 key.
	Identity     crypto.PrivKey
	IdentityFile string
	// Bootstrap peers are connected to by New and fill the DHT.
	Bootstrap []peer.AddrInfo
	// BootstrapTimeout bounds New's wait for the bootstrap peers (10 s).
	BootstrapTimeout time.Duration
	// DHTMode is the DHT role (DHTAuto).
	DHTMode DHTRole
	// DHTPrivateAddrs lets the DHT keep loopback and private addresses
	// (default true).
	DHTPrivateAddrs bool
	// Swarm holds the dial policy: Retry, DialTimeout (15 s),
	// AddrDialTimeout (5 s).
	Swarm swarm.Config
	// Multipath is the path manager's configuration.
	Multipath multipath.Config
	// ConnLimits is the connection manager's configuration.
	ConnLimits connmgr.Config
	// RealmDefaults, when not nil, replaces ConnLimits.RealmDefaults.
	RealmDefaults *core.PoolLimits
	// DataDir keeps the gater's rules across restarts ("": in memory).
	DataDir string
	// RecoverGaterStore lets the node start from a damaged rule store in
	// DataDir, keeping the readable rules (default false: refused).
	RecoverGaterStore bool
	// Resources are the resource manager's limits.
	Resources resource.Config
	// Metrics receives the node's metrics (nil: none exported, unless
	// DebugAddr is set: see DebugAddr).
	Metrics prometheus.Registerer
	// DebugAddr is the debug endpoint's "host:port" (empty: none);
	// DebugToken the token it requires (required off loopback).
	DebugAddr, DebugToken string
	// HookTimeout bounds each hook call (0: hooks.DefaultTimeout, 2 s).
	HookTimeout time.Duration
	// BeforeConnect and AfterHandshake are the hooks registered at start.
	BeforeConnect  []hooks.BeforeConnectFunc
	AfterHandshake []hooks.AfterHandshakeFunc
	// FxOptions add or replace components (fx.Provide, fx.Decorate).
	FxOptions []fx.Option
	// RealmOnly turns the realm-only policy on; AuthTimeout (10 s) and
	// RealmOnlyBackoff (1 min) are its times.
	RealmOnly        bool
	AuthTimeout      time.Duration
	RealmOnlyBackoff time.Duration
	// Clock drives the timers of the connection manager, multipath and
	// realms (nil: the real clock).
	Clock clock.Clock
	// RelayService, when not nil, runs the circuit relay v2 service.
	RelayService *RelayServiceConfig
	// Relays are static relays, used while the node is not publicly
	// reachable.
	Relays []peer.AddrInfo
	// ForceReachability, when not nil, fixes the node's reachability.
	ForceReachability *network.Reachability
	// AutoNAT configures reachability measurement (AutoNAT v2).
	AutoNAT AutoNATConfig
	// HolePunch configures hole punching and the automatic upgrade.
	HolePunch HolePunchConfig
}

// DefaultConfig returns the configuration of a node built with no option.
func DefaultConfig() Config {
	return Config{
		DHTMode:          DHTAuto,
		DHTPrivateAddrs:  true,
		Swarm:            swarm.DefaultConfig(),
		Multipath:        multipath.DefaultConfig(),
		ConnLimits:       connmgr.DefaultConfig(),
		BootstrapTimeout: 10 * time.Second,
		AuthTimeout:      realm.DefaultAuthTimeout,
		RealmOnlyBackoff: realm.DefaultRealmOnlyBackoff,
		Clock:            clock.New(),
		HolePunch:        HolePunchConfig{RetryMin: DefaultHolePunchRetryMin, RetryMax: DefaultHolePunchRetryMax},
	}
}

// resolve fills defaults and combines fields that options set
// independently; New runs it once, after every option. Errors name the
// bad field and value.
func (c *Config) resolve() error {
	if len(c.ListenAddrs) == 0 {
		c.ListenAddrs = []ma.Multiaddr{ma.StringCast(DefaultListenAddr)}
	}
	if c.Identity != nil && c.IdentityFile != "" {
		return errors.New("node: Identity and IdentityFile are exclusive; give one")
	}
	if c.RealmDefaults != nil {
		c.ConnLimits.RealmDefaults = *c.RealmDefaults
	}
	limits, err := c.ConnLimits.WithDefaults()
	if err != nil {
		return err
	}
	c.ConnLimits = limits
	paths, err := c.Multipath.WithDefaults()
	if err != nil {
		return err
	}
	c.Multipath = paths
	if err := c.Swarm.Retry.Validate(); err != nil {
		return err
	}
	defaults := DefaultConfig()
	for _, d := range []struct {
		name         string
		value        *time.Duration
		defaultValue time.Duration
	}{
		{"BootstrapTimeout", &c.BootstrapTimeout, defaults.BootstrapTimeout},
		{"AuthTimeout", &c.AuthTimeout, defaults.AuthTimeout},
		{"RealmOnlyBackoff", &c.RealmOnlyBackoff, defaults.RealmOnlyBackoff},
		{"DialTimeout", &c.Swarm.DialTimeout, defaults.Swarm.DialTimeout},
		{"AddrDialTimeout", &c.Swarm.AddrDialTimeout, defaults.Swarm.AddrDialTimeout},
		{"HookTimeout", &c.HookTimeout, hooks.DefaultTimeout},
	} {
		switch {
		case *d.value < 0:
			return fmt.Errorf("node: %s must be > 0, got %s", d.name, *d.value)
		case *d.value == 0:
			*d.value = d.defaultValue
		}
	}
	if c.Clock == nil {
		c.Clock = clock.New()
	}
	return nil
}

// ListenAddrs sets the QUIC multiaddrs to listen on (go-libp2p's
// ListenAddrs), e.g. /ip4/127.0.0.1/udp/0/quic-v1 (port 0: chosen by the
// system). Default: DefaultListenAddr. Addresses that are not QUIC fail at
// start, named.
func ListenAddrs(addrs ...ma.Multiaddr) Option {
	return func(c *Config) error {
		if len(addrs) == 0 {
			return errors.New("node: ListenAddrs needs at least one address")
		}
		for i, a := range addrs {
			if a == nil {
				return fmt.Errorf("node: ListenAddrs: address %d is nil", i)
			}
			if core.IsRelayAddr(a) {
				return fmt.Errorf("node: ListenAddrs: %s is a relay address; a node accepts relayed connections by itself (see Relays)", a)
			}
		}
		c.ListenAddrs = append([]ma.Multiaddr(nil), addrs...)
		return nil
	}
}

// ListenAddrStrings is ListenAddrs with the addresses as strings
// (go-libp2p's ListenAddrStrings), e.g. "/ip4/0.0.0.0/udp/4001/quic-v1". A
// string that is not a multiaddr is an error naming it.
func ListenAddrStrings(addrs ...string) Option {
	return func(c *Config) error {
		if len(addrs) == 0 {
			return errors.New("node: ListenAddrStrings needs at least one address")
		}
		parsed := make([]ma.Multiaddr, 0, len(addrs))
		for _, s := range addrs {
			a, err := ma.NewMultiaddr(s)
			if err != nil {
				return fmt.Errorf("node: listen address %q is not a multiaddr: %w", s, err)
			}
			parsed = append(parsed, a)
		}
		c.ListenAddrs = parsed
		return nil
	}
}

// Identity sets the node's private key (its peer ID derives from it).
// Default: a fresh Ed25519 key, unless IdentityFile is given.
func Identity(key crypto.PrivKey) Option {
	return func(c *Config) error {
		if key == nil {
			return errors.New("node: Identity key is nil")
		}
		c.Identity = key
		return nil
	}
}

// IdentityFile loads the node's private key from path, creating it (mode
// 0600, written atomically) when missing; see LoadOrCreateIdentity. It is an
// error to combine it with Identity.
func IdentityFile(path string) Option {
	return func(c *Config) error {
		if path == "" {
			return errors.New("node: IdentityFile path is empty")
		}
		c.IdentityFile = path
		return nil
	}
}

// Bootstrap sets the peers the node connects to when it starts and from
// which its DHT routing table is filled. Each needs an ID and at least one
// address.
func Bootstrap(peers ...peer.AddrInfo) Option {
	return func(c *Config) error {
		for _, p := range peers {
			if p.ID == "" {
				return fmt.Errorf("node: bootstrap peer with addresses %v has no peer ID", p.Addrs)
			}
			if len(p.Addrs) == 0 {
				return fmt.Errorf("node: bootstrap peer %s has no address", p.ID)
			}
		}
		c.Bootstrap = append(c.Bootstrap, peers...)
		return nil
	}
}

// BootstrapTimeout bounds how long New waits for the bootstrap connections
// (made in parallel; failures are logged, not fatal). Default 10 s.
func BootstrapTimeout(d time.Duration) Option {
	return func(c *Config) error {
		if d <= 0 {
			return fmt.Errorf("node: BootstrapTimeout must be > 0, got %s", d)
		}
		c.BootstrapTimeout = d
		return nil
	}
}

// DHTMode sets the node's DHT role. Default DHTAuto.
func DHTMode(m DHTRole) Option {
	return func(c *Config) error {
		if m < DHTAuto || m > DHTClient {
			return fmt.Errorf("node: unknown DHT mode %d", int(m))
		}
		c.DHTMode = m
		return nil
	}
}

// DHTPrivateAddrs says whether the DHT stores and hands out loopback and
// private (RFC 1918, ULA) addresses and keeps peers reachable only there in
// its routing table. Default true, as kad-dht does for non-Amino networks,
// so that nodes on one machine or one LAN find each other. Set false for a
// DHT on the public internet: kad-dht's public filters are then used.
func DHTPrivateAddrs(allow bool) Option {
	return func(c *Config) error {
		c.DHTPrivateAddrs = allow
		return nil
	}
}

// Retry sets the dial retry and backoff policy. Default DefaultRetryConfig.
// Errors name the bad field.
func Retry(r RetryConfig) Option {
	return func(c *Config) error {
		if err := r.Validate(); err != nil {
			return err
		}
		c.Swarm.Retry = r
		return nil
	}
}

// DialTimeout bounds one whole dial to a peer (all addresses, retries
// included). Default 15 s.
func DialTimeout(d time.Duration) Option {
	return func(c *Config) error {
		if d <= 0 {
			return fmt.Errorf("node: DialTimeout must be > 0, got %s", d)
		}
		c.Swarm.DialTimeout = d
		return nil
	}
}

// AddrDialTimeout bounds the dial of one address. Default 5 s.
func AddrDialTimeout(d time.Duration) Option {
	return func(c *Config) error {
		if d <= 0 {
			return fmt.Errorf("node: AddrDialTimeout must be > 0, got %s", d)
		}
		c.Swarm.AddrDialTimeout = d
		return nil
	}
}

// Multipath sets the multipath configuration: heartbeat interval (default
// 5 s), path idle timeout (6.5 s), maximum and desired paths per peer (12,
// 2), strategy (best) and switch hysteresis (5 ms). Zero fields keep their
// defaults; an invalid field is an error naming it.
func Multipath(cfg multipath.Config) Option {
	return func(c *Config) error {
		full, err := cfg.WithDefaults()
		if err != nil {
			return err
		}
		c.Multipath = full
		return nil
	}
}

// ConnLimits sets the connection manager's configuration: global pool
// LowWater/HighWater (default 100/400), GracePeriod (20 s), SilencePeriod
// (10 s), MaxConnsPerPeer (12), the unassigned pool (32/64) and realm
// defaults (16/64; the RealmDefaults option, given before or after, wins).
// Zero fields keep their defaults; a bad field is an error naming it and
// its value.
func ConnLimits(cfg connmgr.Config) Option {
	return func(c *Config) error {
		full, err := cfg.WithDefaults()
		if err != nil {
			return err
		}
		c.ConnLimits = full
		return nil
	}
}

// RealmDefaults sets the watermarks of every realm sub-pool that has no
// limits of its own (default 16/64), whatever ConnLimits says and in
// whichever order the two are given. The error names a bad value.
func RealmDefaults(l core.PoolLimits) Option {
	return func(c *Config) error {
		check := connmgr.DefaultConfig()
		check.RealmDefaults = l
		if _, err := check.WithDefaults(); err != nil {
			return err
		}
		c.RealmDefaults = &l
		return nil
	}
}

// ResourceLimits sets the resource manager's limits: go-libp2p rcmgr's
// (resource.Config embeds its PartialLimitConfig; unset values keep the
// node's defaults — rcmgr's auto-scaled limits, with room for MaxPaths
// connections per peer and the pools' ceiling) and the realm limits. Load
// one from JSON with resource.LoadConfig. The error names a bad value.
func ResourceLimits(cfg resource.Config) Option {
	return func(c *Config) error {
		if err := cfg.Validate(); err != nil {
			return err
		}
		c.Resources = cfg
		return nil
	}
}

// Metrics exports the node's metrics to reg (docs/observability.md lists
// every family):
//
//   - go-libp2p's own, from its metrics tracers: the swarm's
//     (libp2p_swarm_*), identify's and the event bus's, under go-libp2p's
//     names so that its Grafana dashboards work; go-libp2p keeps them per
//     process, so they carry no node label;
//   - go-libp2p's resource-manager families (libp2p_rcmgr_*), same names,
//     labels and buckets, read from rcmgr's state at scrape time by the
//     resource manager (package resource) rather than by rcmgr's tracer,
//     and labelled node=<peer ID>;
//   - realmnet's (realmnet_*): the admission pipeline, pools, paths, realms,
//     gater, hooks, event queues, peer health and the realm scopes' usage,
//     each series labelled node=<peer ID>, so several nodes may share a
//     registry. They are read when reg is scraped or observed off the
//     stream path. Close unregisters them.
//
// Nothing of it runs per stream: BenchmarkStreamOpenEcho1KiBMetrics
// compares a stream echo with and without Metrics. rcmgr's own tracer,
// which go-libp2p leaves on by default, is off with or without Metrics: it
// records every resource scope event (about 13 per stream and end) with a
// formatted timestamp under a process-wide lock, about a fifth of the CPU
// time of a short stream. A go-libp2p host that registers rcmgr's own
// metrics (rcmgr.MustRegisterWith) cannot share reg with a node: the
// families' label sets differ (node). Without Metrics the node exports
// nothing (but see DebugAddr). The error names a nil registerer.
func Metrics(reg prometheus.Registerer) Option {
	return func(c *Config) error {
		if reg == nil {
			return errors.New("node: Metrics registerer is nil")
		}
		c.Metrics = reg
		return nil
	}
}

// DebugAddr serves the node's debug endpoint (package debugapi) on addr,
// "host:port" (port 0 picks a free port; Node.DebugURL tells which):
// /metrics, /debug/pprof/, the JSON API (/v1/node, /v1/peers, /v1/paths,
// /v1/pools, /v1/realms, /v1/events, /v1/health, /v1/doctor/{peer};
// docs/observability.md) and a live page at /. It binds loopback addresses
// without more; any other address (0.0.0.0, a LAN address) needs
// DebugToken too, or New fails naming the address. /metrics serves the
// Metrics registerer when it is also a prometheus.Gatherer (a
// *prometheus.Registry is); without the Metrics option the node makes a
// registry of its own for it. Realm keys, PSKs and authentication material
// appear nowhere in it. Errors name a malformed address.
func DebugAddr(addr string) Option {
	return func(c *Config) error {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("node: DebugAddr %q: want host:port: %w", addr, err)
		}
		c.DebugAddr = addr
		return nil
	}
}

// DebugToken sets the token the debug endpoint (DebugAddr) requires on
// every request, as "Authorization: Bearer <token>" or ?token=<token>; at
// least 16 bytes, without white space at its ends or control characters.
// Required when DebugAddr is not a loopback address.
func DebugToken(token string) Option {
	return func(c *Config) error {
		if len(token) < 16 {
			return fmt.Errorf("node: DebugToken of %d bytes: want at least 16", len(token))
		}
		if strings.TrimSpace(token) != token || strings.ContainsFunc(token, unicode.IsControl) {
			// A header's value is trimmed: such a token could never match.
			return errors.New("node: DebugToken has white space at an end or control characters")
		}
		c.DebugToken = token
		return nil
	}
}

// DataDir sets the directory where the node keeps state across restarts:
// the gater's block and allow rules (LevelDB, in DataDir/gater). Without it
// the rules live in memory. The directory is created when missing.
func DataDir(path string) Option {
	return func(c *Config) error {
		if path == "" {
			return errors.New("node: DataDir path is empty")
		}
		c.DataDir = path
		return nil
	}
}

// RecoverGaterStore lets New start from a damaged gater rule store in
// DataDir (gater.RecoverStore): the readable rules are kept, the loss is
// logged and reported by Gater().StoreDamage(), and the store is made
// consistent again. Without it, New refuses a damaged store with an error
// (matching gater.ErrStoreDamaged) that names the directory and how many
// rules were recorded and readable. Opt in for one start, after reading
// that error.
func RecoverGaterStore() Option {
	return func(c *Config) error {
		c.RecoverGaterStore = true
		return nil
	}
}

// BeforeConnect registers a hook run before every outbound dial (before any
// packet is sent) and for every inbound connection in the first stage of
// the swarm's admission pipeline, before the AfterHandshake hooks (the
// attempt carries the remote address, not the peer ID; the hook runs off
// go-libp2p's QUIC accept loop, so a slow hook delays only its own
// connection). The first hook to return an error rejects; see package
// hooks. More hooks can be added at run time through Node.Hooks.
func BeforeConnect(fn hooks.BeforeConnectFunc) Option {
	return func(c *Config) error {
		if fn == nil {
			return errors.New("node: BeforeConnect hook is nil")
		}
		c.BeforeConnect = append(c.BeforeConnect, fn)
		return nil
	}
}

// AfterHandshake registers a hook run once a connection's TLS handshake has
// proven the peer (both directions), in the first stage of the swarm's
// admission pipeline: after the peer rules, before anyone sees the
// connection, one connection at a time per peer (connections of different
// peers run their hooks concurrently). Handshake.ConnID is the connection's
// ID. The first hook to return an error rejects; an outbound rejection
// reaches the dialer as an error matching hooks.ErrRejected, an inbound one
// closes the connection (network.ConnGated).
func AfterHandshake(fn hooks.AfterHandshakeFunc) Option {
	return func(c *Config) error {
		if fn == nil {
			return errors.New("node: AfterHandshake hook is nil")
		}
		c.AfterHandshake = append(c.AfterHandshake, fn)
		return nil
	}
}

// HookTimeout bounds each hook call; a hook that takes longer rejects.
// Default 2 s.
func HookTimeout(d time.Duration) Option {
	return func(c *Config) error {
		if d <= 0 {
			return fmt.Errorf("node: HookTimeout must be > 0, got %s", d)
		}
		c.HookTimeout = d
		return nil
	}
}

// RealmOnly isolates the node to its realms: a peer that has been connected
// for AuthTimeout (default 10 s) in total without authenticating into a
// realm shared with this node — the time adds up across its reconnections,
// and is forgotten only after RealmOnlyBackoff without a connection — is
// disconnected, and the gater refuses it (its dials and every new
// connection, in both directions, gater.ErrPeerPolicy) for
// RealmOnlyBackoff (default 1 min). Bootstrap peers and peers with an allow
// rule (Gater().AllowPeer) are exempt, so the DHT keeps its
// infrastructure.
func RealmOnly() Option {
	return func(c *Config) error {
		c.RealmOnly = true
		return nil
	}
}

// AuthTimeout sets the realm-only policy's time to authenticate: connected
// time without authenticating, summed over a peer's reconnections (> 0;
// default realm.DefaultAuthTimeout, 10 s). It has no effect without
// RealmOnly.
func AuthTimeout(d time.Duration) Option {
	return func(c *Config) error {
		if d <= 0 {
			return fmt.Errorf("node: AuthTimeout must be > 0, got %s", d)
		}
		c.AuthTimeout = d
		return nil
	}
}

// RealmOnlyBackoff sets how long the realm-only policy refuses a peer it
// closed (> 0; default realm.DefaultRealmOnlyBackoff, 1 min).
func RealmOnlyBackoff(d time.Duration) Option {
	return func(c *Config) error {
		if d <= 0 {
			return fmt.Errorf("node: RealmOnlyBackoff must be > 0, got %s", d)
		}
		c.RealmOnlyBackoff = d
		return nil
	}
}

// Clock makes the node's policies read time from c
// (github.com/benbjohnson/clock, as go-libp2p's connection manager's
// WithClock): the connection manager's grace and silence periods, multipath's
// heartbeat schedule and idle deadlines, realms' reconnect graces, the
// realm-only policy and handshake retries. Tests pass a mock clock to move
// that time without sleeping; network I/O deadlines and dial timeouts stay in
// real time. Default: the real clock. A nil clock is an error.
func Clock(c clock.Clock) Option {
	return func(cfg *Config) error {
		if c == nil {
			return errors.New("node: Clock is nil")
		}
		cfg.Clock = c
		return nil
	}
}

// Fx adds uber/fx options to the node's application, so users can add
// components (fx.Provide, fx.Invoke) or replace the node's own
// (fx.Decorate), e.g. a different network.ResourceManager.
func Fx(opts ...fx.Option) Option {
	return func(c *Config) error {
		c.FxOptions = append(c.FxOptions, opts...)
		return nil
	}
}
