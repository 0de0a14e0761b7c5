package swarm

import (
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/libp2p/go-libp2p/core/network"
	libp2pswarm "github.com/libp2p/go-libp2p/p2p/net/swarm"

	"github.com/realmnet/realmnet/core"
)

// RetryConfig says how often and how patiently a failed dial to a peer is
// retried, and how long the peer is then backed off. The shape and the
// defaults are py-libp2p's RetryConfig (libp2p/network/config.py).
//
// One DialPeer call makes up to 1+MaxRetries attempts; each attempt dials all
// of the peer's addresses (happy eyeballs). Between attempts it waits an
// exponentially growing delay: InitialDelay, ×Multiplier each time, capped at
// MaxDelay, randomised by ±Jitter (a fraction: 0.1 is ±10 %). Only failures
// that may pass (timeouts, unreachable networks) are retried; a peer ID
// mismatch, a gater or resource-manager refusal is returned at once. After a
// call has failed, the peer is backed off for the next delay of the same
// sequence: DialPeer returns ErrDialBackoff until then. A successful
// connection resets the sequence.
type RetryConfig struct {
	// MaxRetries is the number of retries after the first attempt (≥ 0).
	MaxRetries int
	// InitialDelay is the first delay between attempts (> 0).
	InitialDelay time.Duration
	// MaxDelay caps every delay (≥ InitialDelay).
	MaxDelay time.Duration
	// Multiplier is the growth factor of the delay (≥ 1).
	Multiplier float64
	// Jitter is the randomisation factor of each delay, in [0, 1).
	Jitter float64
}

// DefaultRetryConfig returns py-libp2p's RetryConfig defaults: 3 retries,
// 100 ms initial delay, 30 s cap, ×2.0, jitter 0.1.
func DefaultRetryConfig() RetryConfig {
	return RetryConfig{
		MaxRetries:   3,
		InitialDelay: 100 * time.Millisecond,
		MaxDelay:     30 * time.Second,
		Multiplier:   2.0,
		Jitter:       0.1,
	}
}

// Validate returns an error naming the first field that is out of range.
func (c RetryConfig) Validate() error {
	switch {
	case c.MaxRetries < 0:
		return fmt.Errorf("swarm: RetryConfig.MaxRetries must be >= 0, got %d", c.MaxRetries)
	case c.InitialDelay <= 0:
		return fmt.Errorf("swarm: RetryConfig.InitialDelay must be > 0, got %s", c.InitialDelay)
	case c.MaxDelay < c.InitialDelay:
		return fmt.Errorf("swarm: RetryConfig.MaxDelay (%s) must be >= InitialDelay (%s)", c.MaxDelay, c.InitialDelay)
	case c.Multiplier < 1:
		return fmt.Errorf("swarm: RetryConfig.Multiplier must be >= 1, got %g", c.Multiplier)
	case c.Jitter < 0 || c.Jitter >= 1:
		return fmt.Errorf("swarm: RetryConfig.Jitter must be in [0, 1), got %g", c.Jitter)
	}
	return nil
}

// newBackOff returns a fresh cenkalti/backoff exponential sequence for c.
func (c RetryConfig) newBackOff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = c.InitialDelay
	b.MaxInterval = c.MaxDelay
	b.Multiplier = c.Multiplier
	b.RandomizationFactor = c.Jitter
	b.Reset()
	return b
}

// Config holds the swarm's tunables. The zero value of a field means its
// default; DefaultConfig returns them all.
type Config struct {
	// DialTimeout bounds one whole DialPeer call, retries included, when the
	// caller's context has no earlier deadline and sets no
	// network.WithDialPeerTimeout. Default 15 s (go-libp2p's
	// swarm.DefaultDialTimeout is 15 s too).
	DialTimeout time.Duration
	// AddrDialTimeout bounds the dial of one address (QUIC and TLS handshake).
	// Default 5 s (go-libp2p's local-transport dial timeout).
	AddrDialTimeout time.Duration
	// Retry is the retry and per-peer backoff policy; see RetryConfig.
	Retry RetryConfig
	// DialRanker orders and staggers the addresses of one attempt (happy
	// eyeballs, RFC 8305). Default: go-libp2p's swarm.DefaultDialRanker
	// (30 ms between private QUIC addresses, 250 ms between public ones).
	DialRanker network.DialRanker
	// PathSelector picks the connection for each new stream. Default:
	// NewestPathSelector. The multipath package supplies the real one.
	PathSelector core.PathSelector
	// MetricsTracer receives go-libp2p's swarm metrics events (connections
	// opened and closed, handshake latency, dial errors and outcomes), so
	// that go-libp2p's libp2p_swarm_* families and their Grafana dashboard
	// work unchanged: libp2pswarm.NewMetricsTracer. nil (the default)
	// records nothing.
	MetricsTracer libp2pswarm.MetricsTracer
}

// DefaultConfig returns the default swarm configuration.
func DefaultConfig() Config {
	return Config{
		DialTimeout:     15 * time.Second,
		AddrDialTimeout: 5 * time.Second,
		Retry:           DefaultRetryConfig(),
		DialRanker:      libp2pswarm.DefaultDialRanker,
		PathSelector:    NewestPathSelector{},
	}
}

// withDefaults fills zero fields from DefaultConfig and validates the result.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if c.DialTimeout == 0 {
		c.DialTimeout = d.DialTimeout
	}
	if c.AddrDialTimeout == 0 {
		c.AddrDialTimeout = d.AddrDialTimeout
	}
	if c.Retry == (RetryConfig{}) {
		c.Retry = d.Retry
	}
	if c.DialRanker == nil {
		c.DialRanker = d.DialRanker
	}
	if c.PathSelector == nil {
		c.PathSelector = d.PathSelector
	}
	switch {
	case c.DialTimeout < 0:
		return c, fmt.Errorf("swarm: Config.DialTimeout must be > 0, got %s", c.DialTimeout)
	case c.AddrDialTimeout < 0:
		return c, fmt.Errorf("swarm: Config.AddrDialTimeout must be > 0, got %s", c.AddrDialTimeout)
	}
	return c, c.Retry.Validate()
}
