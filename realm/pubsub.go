package realm

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"unicode/utf8"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"
)

// Publish/subscribe inside a realm, on go-libp2p-pubsub's gossipsub: one
// router per node, shared by every realm, created by the first Join.
//
//   - The wire topic is "/realmnet/topic/" followed by the hex of
//     HMAC-SHA256(topic key, topic name), the topic key derived from the
//     realm's secret (keys.topics): a peer without the realm's key learns
//     neither the realm nor the topic from it.
//   - The router's peer filter admits, for a realm's topic, only the
//     realm's authenticated members: no one else enters the topic's mesh,
//     is sent gossip, or is answered IWANT.
//   - Messages are signed by their author (pubsub's StrictSign) and
//     validated when received: the author, and the member that forwarded
//     them, must be members right then, and the data within the realm's
//     MaxMessageSize.

// Defaults and bounds of PubSubConfig.
const (
	// DefaultMaxMessageSize caps a message's data, 64 KiB.
	DefaultMaxMessageSize = 64 << 10
	// MaxMessageLimit is the largest MaxMessageSize, 1 MiB (the router's
	// own limit, go-libp2p-pubsub's default).
	MaxMessageLimit = 1 << 20
	// DefaultPublishRate is the messages per second a realm publishes,
	// with a burst of DefaultPublishBurst; more wait in Publish.
	DefaultPublishRate  = 100
	DefaultPublishBurst = 100
	// MaxTopicNameLength is the longest topic name, in bytes.
	MaxTopicNameLength = 256
)

var (
	// ErrBadTopic: a topic name is empty, too long or not UTF-8.
	ErrBadTopic = errors.New("realm: bad topic name")
	// ErrTopicJoined: the realm has already joined the topic.
	ErrTopicJoined = errors.New("realm: topic already joined")
	// ErrTopicClosed: the topic (or its realm) was closed.
	ErrTopicClosed = errors.New("realm: topic closed")
	// ErrMessageTooLarge: a message is over the realm's MaxMessageSize.
	ErrMessageTooLarge = errors.New("realm: message too large")
)

// PubSubConfig are a realm's publish/subscribe limits (see PubSub). Zero
// fields take the defaults.
type PubSubConfig struct {
	// MaxMessageSize caps a message's data, bytes (default 64 KiB, at
	// most MaxMessageLimit): larger ones are refused by Publish and
	// rejected when received.
	MaxMessageSize int
	// PublishRate (messages per second) and PublishBurst bound what this
	// node publishes in the realm, over all its topics (default 100 and
	// 100): Publish waits for its turn, within its context.
	PublishRate  float64
	PublishBurst int
}

func (c PubSubConfig) withDefaults() (PubSubConfig, error) {
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.PublishRate == 0 {
		c.PublishRate = DefaultPublishRate
	}
	if c.PublishBurst == 0 {
		c.PublishBurst = DefaultPublishBurst
	}
	switch {
	case c.MaxMessageSize < 0 || c.MaxMessageSize > MaxMessageLimit:
		return c, fmt.Errorf("realm: PubSubConfig.MaxMessageSize must be in [1, %d], got %d", MaxMessageLimit, c.MaxMessageSize)
	case c.PublishRate < 0:
		return c, fmt.Errorf("realm: PubSubConfig.PublishRate must be > 0, got %g", c.PublishRate)
	case c.PublishBurst < 0:
		return c, fmt.Errorf("realm: PubSubConfig.PublishBurst must be >= 1, got %d", c.PublishBurst)
	}
	return c, nil
}

// PubSub sets the realm's publish/subscribe limits (see PubSubConfig).
// Errors name a value out of range.
func PubSub(cfg PubSubConfig) Option {
	return func(c *Config) error {
		cfg, err := cfg.withDefaults()
		if err != nil {
			return err
		}
		c.PubSub = cfg
		return nil
	}
}

// validateQueueSize is the router's validation queue, in messages: every
// realm and topic of the node shares it.
const validateQueueSize = 1024

// wireTopic is the gossipsub topic of the realm's topic name.
func (k *keys) wireTopic(name string) string {
	mac := hmac.New(sha256.New, k.topics[:])
	mac.Write([]byte(name))
	return "/realmnet/topic/" + hex.EncodeToString(mac.Sum(nil))
}

// router returns the node's gossipsub router, creating it on first use.
func (s *Service) router() (*pubsub.PubSub, error) {
	s.pubsubMu.Lock()
	defer s.pubsubMu.Unlock()
	if s.pubsub != nil {
		return s.pubsub, nil
	}
	if s.ctx.Err() != nil {
		return nil, ErrLeft // the service is closing
	}
	h := s.deps.Host
	if s.deps.InternalBus != nil {
		h = internalBusHost{Host: h, bus: s.deps.InternalBus}
	}
	ps, err := pubsub.NewGossipSub(s.ctx, h,
		pubsub.WithPeerFilter(s.topicPeerFilter),
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		pubsub.WithMaxMessageSize(MaxMessageLimit+4<<10), // data plus the message's envelope
		// go-libp2p-pubsub drops a received message when its validation
		// queue (32 by default, shared by every topic of the router) is
		// full: under load a burst of messages from many members
		// overflowed it (a CI run lost two of twenty). The realm's
		// validator is cheap and runs inline.
		pubsub.WithValidateQueueSize(validateQueueSize),
	)
	if err != nil {
		return nil, fmt.Errorf("realm: start gossipsub: %w", err)
	}
	s.pubsub = ps
	return ps, nil
}

// internalBusHost is the host with the bus of the node's own components
// (realmwire.Deps.InternalBus), for the gossipsub router.
type internalBusHost struct {
	host.Host
	bus event.Bus
}

// EventBus returns the internal bus.
func (h internalBusHost) EventBus() event.Bus { return h.bus }

// topicPeerFilter is the router's peer filter: for a realm's topic, only
// its authenticated members (and no one for any other topic).
func (s *Service) topicPeerFilter(p peer.ID, topic string) bool {
	s.pubsubMu.Lock()
	r := s.topicRealms[topic]
	s.pubsubMu.Unlock()
	return r != nil && r.isMember(p)
}

// Topic is a realm's publish/subscribe topic (Realm.Join). Its methods
// are safe for concurrent use.
type Topic struct {
	realm *Realm
	name  string
	wire  string
	topic *pubsub.Topic

	// release gives back the topic's charge to the realm's scope.
	release func()

	mu     sync.Mutex
	subs   map[*Subscription]struct{}
	closed bool
}

// Message is a message received on a topic.
type Message struct {
	// From is the member that published it (this node for its own).
	From peer.ID
	// Topic is the topic's name.
	Topic string
	// Data is the message, at most MaxMessageSize bytes.
	Data []byte
}

// Join joins the topic name in the realm (name: 1 to 256 bytes of UTF-8).
// Publish and Subscribe then reach the realm's members that joined it too.
// The topic holds one of the realm's outbound streams (ScopeLimits) until
// it is closed. Errors: ErrBadTopic, ErrTopicJoined (join once, subscribe
// many times), ErrLeft, a *resource.LimitError, or the router's.
func (r *Realm) Join(name string) (*Topic, error) {
	if name == "" || len(name) > MaxTopicNameLength || !utf8.ValidString(name) {
		return nil, fmt.Errorf("%w: %q (1 to %d bytes of UTF-8)", ErrBadTopic, name, MaxTopicNameLength)
	}
	ps, err := r.svc.router()
	if err != nil {
		return nil, err
	}
	wire := r.keys.wireTopic(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.left {
		return nil, ErrLeft
	}
	if _, ok := r.topics[name]; ok {
		return nil, fmt.Errorf("realm %q: %w: %q", r.name, ErrTopicJoined, name)
	}
	// A joined topic holds one of the realm's outbound streams, a
	// subscription one of its inbound streams: the realm's ScopeLimits
	// bound them, as they bound its streams.
	release, err := r.svc.deps.Backend.ReserveRealmStream(r.keys.id, network.DirOutbound)
	if err != nil {
		return nil, fmt.Errorf("realm %q: topic %q: %w", r.name, name, err)
	}
	if err := ps.RegisterTopicValidator(wire, r.validateMessage, pubsub.WithValidatorInline(true)); err != nil {
		release()
		return nil, fmt.Errorf("realm %q: topic %q: %w", r.name, name, err)
	}
	t, err := ps.Join(wire)
	if err != nil {
		release()
		_ = ps.UnregisterTopicValidator(wire)
		return nil, fmt.Errorf("realm %q: topic %q: %w", r.name, name, err)
	}
	r.svc.pubsubMu.Lock()
	r.svc.topicRealms[wire] = r
	r.svc.pubsubMu.Unlock()
	topic := &Topic{realm: r, name: name, wire: wire, topic: t, subs: make(map[*Subscription]struct{}), release: release}
	r.topics[name] = topic
	return topic, nil
}

// validateMessage is the wire topic's validator: the author and the
// forwarding peer must be members of the realm now, and the data within
// MaxMessageSize.
func (r *Realm) validateMessage(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	self := r.svc.deps.Host.ID()
	author := msg.GetFrom() // the signer: StrictSign checked the signature
	switch {
	case len(msg.GetData()) > r.cfg.PubSub.MaxMessageSize:
		return pubsub.ValidationReject
	case author != self && !r.isMember(author):
		return pubsub.ValidationReject
	case from != self && !r.isMember(from):
		return pubsub.ValidationReject
	}
	return pubsub.ValidationAccept
}

// Name returns the topic's name.
func (t *Topic) Name() string { return t.name }

// Publish sends data to the topic's members. It waits for the realm's
// publish rate (PubSubConfig) within ctx. Errors: ErrMessageTooLarge,
// ErrTopicClosed, ctx's error, or the router's.
func (t *Topic) Publish(ctx context.Context, data []byte) error {
	r := t.realm
	if len(data) > r.cfg.PubSub.MaxMessageSize {
		return fmt.Errorf("realm %q: topic %q: %w: %d bytes, MaxMessageSize is %d", r.name, t.name, ErrMessageTooLarge, len(data), r.cfg.PubSub.MaxMessageSize)
	}
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return fmt.Errorf("realm %q: topic %q: %w", r.name, t.name, ErrTopicClosed)
	}
	if err := r.publishRate.Wait(ctx); err != nil {
		return fmt.Errorf("realm %q: topic %q: waiting for the publish rate: %w", r.name, t.name, err)
	}
	if err := t.topic.Publish(ctx, data); err != nil {
		return fmt.Errorf("realm %q: topic %q: %w", r.name, t.name, err)
	}
	return nil
}

// Peers returns the members this node exchanges the topic's messages with
// directly (the router's peers that joined the topic, members only).
func (t *Topic) Peers() []peer.ID {
	return t.topic.ListPeers()
}

// Subscription delivers a topic's messages (Topic.Subscribe). Its methods
// are safe for concurrent use.
type Subscription struct {
	topic   *Topic
	sub     *pubsub.Subscription
	release func() // the subscription's charge to the realm's scope
	once    sync.Once
}

// Subscribe returns a new subscription to the topic; each receives every
// message, this node's own included, and holds one of the realm's inbound
// streams (ScopeLimits) until it is cancelled. Errors: ErrTopicClosed, a
// *resource.LimitError, or the router's.
func (t *Topic) Subscribe() (*Subscription, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, fmt.Errorf("realm %q: topic %q: %w", t.realm.name, t.name, ErrTopicClosed)
	}
	release, err := t.realm.svc.deps.Backend.ReserveRealmStream(t.realm.keys.id, network.DirInbound)
	if err != nil {
		return nil, fmt.Errorf("realm %q: topic %q: %w", t.realm.name, t.name, err)
	}
	sub, err := t.topic.Subscribe()
	if err != nil {
		release()
		return nil, fmt.Errorf("realm %q: topic %q: %w", t.realm.name, t.name, err)
	}
	s := &Subscription{topic: t, sub: sub, release: release}
	t.subs[s] = struct{}{}
	return s, nil
}

// Next returns the next message. Errors: ErrTopicClosed once the
// subscription, its topic or its realm is closed, or ctx's error.
func (s *Subscription) Next(ctx context.Context) (*Message, error) {
	m, err := s.sub.Next(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("realm %q: topic %q: %w", s.topic.realm.name, s.topic.name, ErrTopicClosed)
	}
	return &Message{From: m.GetFrom(), Topic: s.topic.name, Data: m.GetData()}, nil
}

// Cancel ends the subscription; Next then returns ErrTopicClosed.
func (s *Subscription) Cancel() {
	s.once.Do(func() {
		s.sub.Cancel()
		s.release()
		s.topic.mu.Lock()
		delete(s.topic.subs, s)
		s.topic.mu.Unlock()
	})
}

// Close leaves the topic: its subscriptions end, and this node leaves the
// topic's mesh. A second call does nothing.
func (t *Topic) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	subs := make([]*Subscription, 0, len(t.subs))
	for s := range t.subs {
		subs = append(subs, s)
	}
	t.mu.Unlock()
	for _, s := range subs {
		s.Cancel()
	}
	r := t.realm
	r.mu.Lock()
	if r.topics[t.name] == t {
		delete(r.topics, t.name)
	}
	r.mu.Unlock()
	err := t.topic.Close()
	t.release()
	r.svc.pubsubMu.Lock()
	if r.svc.topicRealms[t.wire] == r {
		delete(r.svc.topicRealms, t.wire)
	}
	ps := r.svc.pubsub
	r.svc.pubsubMu.Unlock()
	_ = ps.UnregisterTopicValidator(t.wire)
	if err != nil {
		return fmt.Errorf("realm %q: topic %q: %w", r.name, t.name, err)
	}
	return nil
}

// closeTopics closes the realm's topics (Leave).
func (r *Realm) closeTopics() {
	r.mu.Lock()
	topics := make([]*Topic, 0, len(r.topics))
	for _, t := range r.topics {
		topics = append(topics, t)
	}
	r.mu.Unlock()
	for _, t := range topics {
		_ = t.Close()
	}
}

// newPublishRate is the realm's publish rate limiter.
func newPublishRate(c PubSubConfig) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(c.PublishRate), c.PublishBurst)
}
