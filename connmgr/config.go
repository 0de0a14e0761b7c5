package connmgr

import (
	"fmt"
	"time"

	"github.com/realmnet/realmnet/core"
)

// Defaults of the global pool (DESIGN.md: the DeP2P desktop preset and
// go-libp2p's silence period), of the unassigned pool and of realms.
const (
	DefaultLowWater        = 100
	DefaultHighWater       = 400
	DefaultGracePeriod     = 20 * time.Second
	DefaultSilencePeriod   = 10 * time.Second
	DefaultMaxConnsPerPeer = 12
	// DefaultUnassignedLowWater and DefaultUnassignedHighWater bound the
	// connections to peers in no shared realm (capped at the global
	// watermarks when those are lower).
	DefaultUnassignedLowWater  = 32
	DefaultUnassignedHighWater = 64
	// DefaultRealmLowWater and DefaultRealmHighWater apply to a realm
	// without SetRealmLimits (capped at the global watermarks).
	DefaultRealmLowWater  = 16
	DefaultRealmHighWater = 64
	// DefaultRealmWeight is added to a peer's score for each realm it is
	// an authenticated member of.
	DefaultRealmWeight = 10
	// DefaultDecayResolution is how often decaying tags are visited
	// (go-libp2p's DecayerCfg default).
	DefaultDecayResolution = time.Minute
	// CeilingPercent: the global count may exceed HighWater by this many
	// percent before a trim runs at once (go-libp2p's count can overshoot
	// for a whole silence period); past it even connections in their grace
	// period may be closed.
	CeilingPercent = 10
)

// Config holds the manager's tunables. Zero fields take the defaults.
type Config struct {
	// LowWater and HighWater are the global pool's watermarks (every
	// connection, several per peer).
	LowWater, HighWater int
	// GracePeriod protects a new connection from ordinary trims (> 0).
	GracePeriod time.Duration
	// SilencePeriod is the period of the background trim check and the
	// least time between two ordinary trims (> 0).
	SilencePeriod time.Duration
	// MaxConnsPerPeer caps the connections of one peer; a connection
	// beyond it is refused (≥ 1).
	MaxConnsPerPeer int
	// Unassigned holds the watermarks of the connections to peers in no
	// realm (DHT, infrastructure, not yet authenticated); trimmed first.
	Unassigned core.PoolLimits
	// RealmDefaults apply to realms without SetRealmLimits. A realm's
	// sub-pool is trimmed inside itself above its HighWater, and a global
	// trim never takes it below its LowWater (a reservation).
	RealmDefaults core.PoolLimits
	// RealmWeight is added to a peer's score per realm it is in (≥ 0).
	RealmWeight int
	// DecayResolution is how often decaying tags are visited (> 0).
	DecayResolution time.Duration
}

// DefaultConfig returns the defaults: global 100/400, grace 20 s, silence
// 10 s, 12 connections per peer, unassigned 32/64, realms 16/64, realm
// weight 10, decay resolution 1 min.
func DefaultConfig() Config {
	return Config{
		LowWater:        DefaultLowWater,
		HighWater:       DefaultHighWater,
		GracePeriod:     DefaultGracePeriod,
		SilencePeriod:   DefaultSilencePeriod,
		MaxConnsPerPeer: DefaultMaxConnsPerPeer,
		Unassigned:      core.PoolLimits{LowWater: DefaultUnassignedLowWater, HighWater: DefaultUnassignedHighWater},
		RealmDefaults:   core.PoolLimits{LowWater: DefaultRealmLowWater, HighWater: DefaultRealmHighWater},
		RealmWeight:     DefaultRealmWeight,
		DecayResolution: DefaultDecayResolution,
	}
}

// WithDefaults fills zero fields and validates; the error names the first
// bad field and its value. Unset unassigned and realm watermarks default to
// 32/64 and 16/64, capped at the global watermarks.
func (c Config) WithDefaults() (Config, error) {
	d := DefaultConfig()
	if c.LowWater == 0 && c.HighWater == 0 {
		c.LowWater, c.HighWater = d.LowWater, d.HighWater
	}
	if c.GracePeriod == 0 {
		c.GracePeriod = d.GracePeriod
	}
	if c.SilencePeriod == 0 {
		c.SilencePeriod = d.SilencePeriod
	}
	if c.MaxConnsPerPeer == 0 {
		c.MaxConnsPerPeer = d.MaxConnsPerPeer
	}
	if c.Unassigned == (core.PoolLimits{}) {
		c.Unassigned = core.PoolLimits{LowWater: min(d.Unassigned.LowWater, c.LowWater), HighWater: min(d.Unassigned.HighWater, c.HighWater)}
	}
	if c.RealmDefaults == (core.PoolLimits{}) {
		c.RealmDefaults = core.PoolLimits{LowWater: min(d.RealmDefaults.LowWater, c.LowWater), HighWater: min(d.RealmDefaults.HighWater, c.HighWater)}
	}
	if c.RealmWeight == 0 {
		c.RealmWeight = d.RealmWeight
	}
	if c.DecayResolution == 0 {
		c.DecayResolution = d.DecayResolution
	}
	return c, c.validate()
}

func (c Config) validate() error {
	if err := checkLimits("Config", core.PoolLimits{LowWater: c.LowWater, HighWater: c.HighWater}); err != nil {
		return err
	}
	switch {
	case c.GracePeriod < 0:
		return fmt.Errorf("connmgr: Config.GracePeriod must be > 0, got %s", c.GracePeriod)
	case c.SilencePeriod < 0:
		return fmt.Errorf("connmgr: Config.SilencePeriod must be > 0, got %s", c.SilencePeriod)
	case c.MaxConnsPerPeer < 0:
		return fmt.Errorf("connmgr: Config.MaxConnsPerPeer must be >= 1, got %d", c.MaxConnsPerPeer)
	case c.RealmWeight < 0:
		return fmt.Errorf("connmgr: Config.RealmWeight must be >= 0, got %d", c.RealmWeight)
	case c.DecayResolution < 0:
		return fmt.Errorf("connmgr: Config.DecayResolution must be > 0, got %s", c.DecayResolution)
	}
	if err := checkLimits("Config.Unassigned", c.Unassigned); err != nil {
		return err
	}
	return checkLimits("Config.RealmDefaults", c.RealmDefaults)
}

// checkLimits validates one pair of watermarks; what names them in errors.
func checkLimits(what string, l core.PoolLimits) error {
	switch {
	case l.LowWater < 0:
		return fmt.Errorf("connmgr: %s.LowWater must be >= 0, got %d", what, l.LowWater)
	case l.HighWater <= 0:
		return fmt.Errorf("connmgr: %s.HighWater must be > 0, got %d", what, l.HighWater)
	case l.LowWater > l.HighWater:
		return fmt.Errorf("connmgr: %s.LowWater (%d) must not exceed HighWater (%d)", what, l.LowWater, l.HighWater)
	}
	return nil
}

// ceiling is HighWater + CeilingPercent %.
func (c Config) ceiling() int {
	return c.HighWater + max(1, c.HighWater*CeilingPercent/100)
}
