package realm

import (
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/realmnet/realmnet/core"
)

// Errors returned by the realm API.
var (
	// ErrWeakPSK: PSK got fewer than MinPSKLength bytes.
	ErrWeakPSK = errors.New("realm: pre-shared key too short")
	// ErrNoKey: JoinRealm got neither PSK nor Open. A realm without a key
	// is joinable by anyone who knows its name, so it must be asked for.
	ErrNoKey = errors.New("realm: no pre-shared key given (PSK); an open realm, joinable by anyone who knows its name, must be asked for with Open")
	// ErrBadName: the realm name is empty, longer than MaxNameLength or not UTF-8.
	ErrBadName = errors.New("realm: bad realm name")
	// ErrBadProtocol: an application protocol ID is empty, too long or not UTF-8.
	ErrBadProtocol = errors.New("realm: bad protocol ID")
	// ErrAlreadyJoined: the node is already in a realm of that name.
	ErrAlreadyJoined = errors.New("realm: already joined")
	// ErrNotMember: the peer is not an authenticated member of the realm
	// (and could not be authenticated as one in time).
	ErrNotMember = errors.New("realm: peer is not a member")
	// ErrLeft: the realm was left (or the node closed).
	ErrLeft = errors.New("realm: realm left")
	// ErrAuthFailed: the peer did not complete mutual authentication for the
	// realm. The reason is deliberately not given: the peer resets the
	// stream without saying why.
	ErrAuthFailed = errors.New("realm: authentication failed")
)

// Defaults of a realm's options.
const (
	// DefaultDiscoveryInterval is the longest wait between two DHT
	// FindProviders rounds (the rounds back off from 2 s to this; ours).
	DefaultDiscoveryInterval = 60 * time.Second
	// MinDiscoveryInterval is the first wait between rounds and the
	// smallest accepted DiscoveryInterval.
	MinDiscoveryInterval = 2 * time.Second
	// DefaultReconnectGrace is how long a member stays listed without an
	// authenticated connection (DeP2P's 15 s).
	DefaultReconnectGrace = 15 * time.Second
	// DefaultReprovideInterval is how often a member re-announces itself in
	// the DHT once its provider record is stored (ours: an hour, far inside
	// kad-dht's 48 h provider-record validity, so a member that arrives in
	// a changed network is found quickly).
	DefaultReprovideInterval = time.Hour
)

// Option configures a realm at JoinRealm.
type Option func(*Config) error

// Config is a realm's configuration, built from Options.
type Config struct {
	// PSK is the pre-shared key of a closed realm.
	PSK []byte
	// Open asks for an open realm: no key, anyone who knows the name may
	// join. Exactly one of PSK and Open must be given.
	Open bool
	// PoolLimits, when set, are the realm's connection sub-pool
	// watermarks; nil keeps the node's realm defaults.
	PoolLimits *core.PoolLimits
	// ScopeLimits, when set, are the realm's resource scope limits; nil
	// keeps the node's defaults.
	ScopeLimits *core.RealmScopeLimits
	// DiscoveryInterval caps the FindProviders backoff (2 s → this).
	DiscoveryInterval time.Duration
	// ReprovideInterval is the DHT re-provide period.
	ReprovideInterval time.Duration
	// ReconnectGrace is how long a disconnected member stays a member.
	ReconnectGrace time.Duration
	// MDNS turns on LAN discovery (go-libp2p's mDNS, service name derived
	// from the rendezvous key, so the realm name is not broadcast).
	MDNS bool
	// Peers are known members (or candidates) to connect to at join.
	Peers []peer.AddrInfo
	// Handlers are stream handlers set before the first member is admitted.
	Handlers map[protocol.ID]network.StreamHandler
	// Relay makes this member a relay for the realm's members (Relay).
	Relay bool
	// Requests are the request/response limits (Requests).
	Requests RequestConfig
	// PubSub are the publish/subscribe limits (PubSub).
	PubSub PubSubConfig
}

func defaultConfig() Config {
	return Config{
		DiscoveryInterval: DefaultDiscoveryInterval,
		ReprovideInterval: DefaultReprovideInterval,
		ReconnectGrace:    DefaultReconnectGrace,
		Requests: RequestConfig{MaxRequestSize: DefaultMaxRequestSize, MaxResponseSize: DefaultMaxResponseSize,
			Timeout: DefaultRequestTimeout},
		PubSub: PubSubConfig{MaxMessageSize: DefaultMaxMessageSize, PublishRate: DefaultPublishRate,
			PublishBurst: DefaultPublishBurst},
	}
}

// PSK makes the realm closed: only holders of psk (at least MinPSKLength
// bytes, else ErrWeakPSK) can authenticate into it. The key is copied.
func PSK(psk []byte) Option {
	return func(c *Config) error {
		if len(psk) < MinPSKLength {
			return fmt.Errorf("%w: %d bytes, want at least %d", ErrWeakPSK, len(psk), MinPSKLength)
		}
		c.PSK = append([]byte(nil), psk...)
		return nil
	}
}

// PoolLimits sets the realm's connection sub-pool watermarks
// (connections, counted per path: a member with two paths counts two).
// JoinRealm returns the connection manager's error naming an invalid value.
func PoolLimits(l core.PoolLimits) Option {
	return func(c *Config) error {
		c.PoolLimits = &l
		return nil
	}
}

// ScopeLimits sets the realm's resource scope limits: members (one per
// member, whatever its paths) and application streams in and out; zero
// fields keep the node's defaults. JoinRealm returns the resource manager's
// error naming a negative value.
func ScopeLimits(l core.RealmScopeLimits) Option {
	return func(c *Config) error {
		c.ScopeLimits = &l
		return nil
	}
}

// DiscoveryInterval caps the wait between DHT discovery rounds
// (at least MinDiscoveryInterval; default DefaultDiscoveryInterval).
func DiscoveryInterval(d time.Duration) Option {
	return func(c *Config) error {
		if d < MinDiscoveryInterval {
			return fmt.Errorf("realm: DiscoveryInterval: %v is below the minimum %v", d, MinDiscoveryInterval)
		}
		c.DiscoveryInterval = d
		return nil
	}
}

// ReconnectGrace sets how long a member without an authenticated
// connection stays a member (default DefaultReconnectGrace; > 0).
func ReconnectGrace(d time.Duration) Option {
	return func(c *Config) error {
		if d <= 0 {
			return fmt.Errorf("realm: ReconnectGrace: %v, want > 0", d)
		}
		c.ReconnectGrace = d
		return nil
	}
}

// Open makes the realm open: its keys derive from its name alone, so anyone
// who knows the name can join it (for public rooms and tests). JoinRealm
// refuses a realm with neither PSK nor Open (ErrNoKey), and one with both.
func Open() Option {
	return func(c *Config) error {
		c.Open = true
		return nil
	}
}

// MDNS turns on mDNS discovery on the LAN (go-libp2p's
// p2p/discovery/mdns). The advertised service name is derived from the
// rendezvous key; peers found are authenticated like any other candidate.
func MDNS() Option {
	return func(c *Config) error {
		c.MDNS = true
		return nil
	}
}

// Peers gives known members (or candidates) that JoinRealm connects to
// and authenticates with at once. The error names an entry without a peer ID.
func Peers(peers ...peer.AddrInfo) Option {
	return func(c *Config) error {
		for i, ai := range peers {
			if ai.ID == "" {
				return fmt.Errorf("realm: Peers: entry %d has no peer ID", i)
			}
		}
		c.Peers = append(c.Peers, peers...)
		return nil
	}
}

// StreamHandler sets a stream handler for application protocol proto
// before the realm starts admitting members, so the first members' streams
// find it (Realm.SetStreamHandler after JoinRealm may be late for them).
// The error names a bad protocol ID (ErrBadProtocol) or a nil handler.
func StreamHandler(proto protocol.ID, handler network.StreamHandler) Option {
	return func(c *Config) error {
		if err := checkProtocol(string(proto)); err != nil {
			return err
		}
		if handler == nil {
			return fmt.Errorf("realm: StreamHandler %q: nil handler", proto)
		}
		if c.Handlers == nil {
			c.Handlers = make(map[protocol.ID]network.StreamHandler)
		}
		c.Handlers[proto] = handler
		return nil
	}
}
