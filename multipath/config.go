package multipath

import (
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/realmnet/realmnet/core"
)

// Strategy names how the path for each new stream is chosen.
type Strategy string

const (
	// StrategyBest sends every stream over one selected path, chosen like
	// iroh's BiasedRttPathSelector: degraded paths last; direct before
	// relayed (a new direct path takes over from a relayed one at once,
	// before its first heartbeat answer: iroh's automatic upgrade); then
	// healthy before validating, then lowest RTT with a 3 ms bias towards
	// IPv6; within a tier it switches only when the candidate is at least
	// SwitchHysteresis better, across tiers at once. The default.
	StrategyBest Strategy = "best"
	// StrategyRoundRobin spreads streams over the usable paths in turn
	// (py-libp2p's round_robin).
	StrategyRoundRobin Strategy = "round_robin"
	// StrategyLeastLoaded picks the usable path with the fewest open streams
	// (py-libp2p's least_loaded).
	StrategyLeastLoaded Strategy = "least_loaded"
	// StrategyCustom calls the SelectFunc given with it.
	StrategyCustom Strategy = "custom"
)

// ParseStrategy parses "best", "round_robin" or "least_loaded".
func ParseStrategy(s string) (Strategy, error) {
	switch st := Strategy(s); st {
	case StrategyBest, StrategyRoundRobin, StrategyLeastLoaded:
		return st, nil
	}
	return "", fmt.Errorf("multipath: unknown strategy %q (want best, round_robin or least_loaded)", s)
}

// SelectFunc is a user-supplied strategy. It gets the peer's usable paths,
// in the order StrategyBest ranks them (never empty, never dead), and returns
// the index of the path for the next stream; an index out of range means the
// first. It runs on the stream-open path: keep it fast, do not block, do not
// call the Manager.
type SelectFunc func(p peer.ID, paths []core.PathInfo) int

// Default values; their sources are in DESIGN.md and docs/multipath.md.
const (
	// DefaultHeartbeatInterval is the idle heartbeat period of every path
	// (seed design; iroh's HEARTBEAT_INTERVAL is 5 s too).
	DefaultHeartbeatInterval = 5 * time.Second
	// DefaultPathIdleTimeout is how long a path may go without a heartbeat
	// answer before it is dead (seed design; old iroh and tailscale use
	// 6.5 s, iroh today 15 s).
	DefaultPathIdleTimeout = 6500 * time.Millisecond
	// DefaultMaxPaths is the hard cap of paths per peer, inbound included
	// (seed design; iroh today allows 8).
	DefaultMaxPaths = 12
	// DefaultDesiredPaths is how many paths the manager opens per peer: the
	// selected one plus a warm standby.
	DefaultDesiredPaths = 2
	// DefaultSwitchHysteresis is how much better (lower RTT) a path of the
	// same tier must be before StrategyBest switches to it.
	DefaultSwitchHysteresis = 5 * time.Millisecond
	// IPv6Bias is subtracted from an IPv6 path's RTT when StrategyBest
	// compares paths (iroh's IPV6_RTT_ADVANTAGE, 3 ms).
	IPv6Bias = 3 * time.Millisecond
	// MinBusyProbeInterval is the floor of the fast probe period of a path
	// that carries streams: it is probed every max(4×SRTT, 200 ms).
	MinBusyProbeInterval = 200 * time.Millisecond
)

// RelayedPathsPolicy says what becomes of a peer's relayed paths once a
// direct path to it is confirmed (see Config.RelayedPaths).
type RelayedPathsPolicy string

const (
	// RelayedPathsKeep keeps relayed paths open as warm backups, as iroh
	// and tailscale keep their relay: heartbeated at the idle interval
	// (about 1 KiB of the circuit per 2 minutes), never selected while a
	// direct path is healthy, selected at once when none is — a failover
	// without a new relay dial. The relay's own limits still end a
	// circuit (go-libp2p's default: 2 minutes, 128 KiB). The default.
	RelayedPathsKeep RelayedPathsPolicy = "keep"
	// RelayedPathsClose closes a peer's relayed paths once a direct path
	// has answered UpgradeConfirmations heartbeats, each as soon as it
	// carries no stream (streams opened on it before the upgrade end
	// undisturbed), with ErrorCodeRelayedPathReplaced: it frees the
	// relay's slot and data; a failover then has to dial the relay again.
	RelayedPathsClose RelayedPathsPolicy = "close"
)

// UpgradeConfirmations is how many heartbeat answers confirm a direct path
// that replaced a relayed one, for RelayedPathsClose: about 15 s at the
// idle interval, less when the path is busy.
const UpgradeConfirmations = 3

// ParseRelayedPathsPolicy parses "keep" or "close".
func ParseRelayedPathsPolicy(s string) (RelayedPathsPolicy, error) {
	switch p := RelayedPathsPolicy(s); p {
	case RelayedPathsKeep, RelayedPathsClose:
		return p, nil
	}
	return "", fmt.Errorf("multipath: unknown relayed paths policy %q (want keep or close)", s)
}

// Config holds the multipath tunables. Zero fields take the defaults.
type Config struct {
	// HeartbeatInterval is the heartbeat period of an idle path (> 0).
	HeartbeatInterval time.Duration
	// PathIdleTimeout is how long a path may stay without a heartbeat
	// answer before it is dead, taken out of selection and closed (> 0; it
	// may be shorter than HeartbeatInterval, then idle paths die between
	// heartbeats unless they carry streams).
	PathIdleTimeout time.Duration
	// MaxPaths caps the paths per peer, inbound included (≥ 1).
	MaxPaths int
	// DesiredPaths is how many paths the manager dials per peer when the
	// peer has enough distinct addresses (1 ≤ DesiredPaths ≤ MaxPaths).
	DesiredPaths int
	// Strategy is the node-wide default strategy.
	Strategy Strategy
	// Select is required with StrategyCustom and ignored otherwise.
	Select SelectFunc
	// SwitchHysteresis is StrategyBest's switching margin (≥ 0).
	SwitchHysteresis time.Duration
	// RelayedPaths says what becomes of a peer's relayed paths once a
	// direct path to it is confirmed: RelayedPathsKeep (the default) or
	// RelayedPathsClose.
	RelayedPaths RelayedPathsPolicy
}

// DefaultConfig returns the defaults: 5 s heartbeat, 6.5 s path idle
// timeout, 12 paths at most, 2 desired, strategy best, 5 ms hysteresis,
// relayed paths kept as backups.
func DefaultConfig() Config {
	return Config{
		HeartbeatInterval: DefaultHeartbeatInterval,
		PathIdleTimeout:   DefaultPathIdleTimeout,
		MaxPaths:          DefaultMaxPaths,
		DesiredPaths:      DefaultDesiredPaths,
		Strategy:          StrategyBest,
		SwitchHysteresis:  DefaultSwitchHysteresis,
		RelayedPaths:      RelayedPathsKeep,
	}
}

// WithDefaults fills the zero fields from DefaultConfig and validates the
// result; the error names the first bad field and its value.
func (c Config) WithDefaults() (Config, error) {
	d := DefaultConfig()
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = d.HeartbeatInterval
	}
	if c.PathIdleTimeout == 0 {
		c.PathIdleTimeout = d.PathIdleTimeout
	}
	if c.MaxPaths == 0 {
		c.MaxPaths = d.MaxPaths
	}
	if c.DesiredPaths == 0 {
		c.DesiredPaths = min(d.DesiredPaths, c.MaxPaths)
	}
	if c.Strategy == "" {
		c.Strategy = d.Strategy
	}
	if c.SwitchHysteresis == 0 {
		c.SwitchHysteresis = d.SwitchHysteresis
	}
	if c.RelayedPaths == "" {
		c.RelayedPaths = d.RelayedPaths
	}
	return c, c.validate()
}

func (c Config) validate() error {
	switch {
	case c.HeartbeatInterval < 0:
		return fmt.Errorf("multipath: Config.HeartbeatInterval must be > 0, got %s", c.HeartbeatInterval)
	case c.PathIdleTimeout < 0:
		return fmt.Errorf("multipath: Config.PathIdleTimeout must be > 0, got %s", c.PathIdleTimeout)
	case c.MaxPaths < 0:
		return fmt.Errorf("multipath: Config.MaxPaths must be >= 1, got %d", c.MaxPaths)
	case c.DesiredPaths < 0 || c.DesiredPaths > c.MaxPaths:
		return fmt.Errorf("multipath: Config.DesiredPaths must be in [1, MaxPaths=%d], got %d", c.MaxPaths, c.DesiredPaths)
	case c.SwitchHysteresis < 0:
		return fmt.Errorf("multipath: Config.SwitchHysteresis must be >= 0, got %s", c.SwitchHysteresis)
	case c.RelayedPaths != RelayedPathsKeep && c.RelayedPaths != RelayedPathsClose:
		return fmt.Errorf("multipath: Config.RelayedPaths must be %q or %q, got %q", RelayedPathsKeep, RelayedPathsClose, c.RelayedPaths)
	}
	return checkStrategy(c.Strategy, c.Select)
}

func checkStrategy(s Strategy, f SelectFunc) error {
	switch s {
	case StrategyBest, StrategyRoundRobin, StrategyLeastLoaded:
		return nil
	case StrategyCustom:
		if f == nil {
			return fmt.Errorf("multipath: strategy %q needs a SelectFunc", s)
		}
		return nil
	}
	return fmt.Errorf("multipath: unknown strategy %q", s)
}
