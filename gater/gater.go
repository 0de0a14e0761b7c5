// Package gater is realmnet's connection gater (go-libp2p's
// core/connmgr.ConnectionGater): block and allow rules for peers, IP
// addresses and subnets (IPv4 and IPv6), persisted through go-datastore
// (Open: LevelDB) with a manifest that makes a damaged store refuse to load
// (New, Open, RecoverStore); a peer policy predicate (the realm package's
// realm-only policy); and the points where the BeforeConnect and
// AfterHandshake hooks run.
//
// Rules: an allow rule wins over a block rule that covers the same peer or
// address (block a subnet, allow one address in it). Subnets are matched
// with a path-compressed trie (github.com/libp2p/go-cidranger), so a decision
// does not grow with the number of subnet rules, unlike go-libp2p's
// BasicConnectionGater, which scans them. Blocking also closes the existing
// connections the rule covers (go-libp2p's gater does not).
//
// Where it decides (docs/admission.md):
//   - Dials, before any packet is sent: CheckPeerDial (peer rules, peer
//     policy) and CheckAddrDial (address rules, BeforeConnect hooks) — the
//     swarm's core.DialGater.
//   - Inbound, when the QUIC transport accepts (InterceptAccept): address
//     rules, BeforeConnect hooks (the peer ID is not known yet).
//   - Every connection, once authenticated and before it is announced:
//     AdmitConn, the first stage of the swarm's admission pipeline
//     (core.AdmissionStage) — peer and address rules, the peer policy, then
//     the AfterHandshake hooks with the connection's ID. This is the one
//     place the peer rules are checked for a connection; InterceptSecured
//     leaves the decision to it, and a refusal reaches the dialer as the
//     dial's error (errors.Is(err, hooks.ErrRejected) for a hook).
package gater

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-cidranger"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/hooks"
)

var log = logging.Logger("realmnet/gater")

// Errors for refused dials; the swarm wraps them with the peer and address.
var (
	// ErrPeerBlocked: a block rule covers the peer.
	ErrPeerBlocked = errors.New("gater: peer is blocked")
	// ErrAddrBlocked: a block rule covers the address or its subnet.
	ErrAddrBlocked = errors.New("gater: address is blocked")
	// ErrPeerPolicy: the peer policy (e.g. realm-only) refuses the peer.
	ErrPeerPolicy = errors.New("gater: peer refused by policy")
)

// datastore key prefix of the rules: /realmnet/gater/<block|allow>/<kind>/<value>.
var rulesPrefix = datastore.NewKey("/realmnet/gater")

type ruleSet struct {
	peers   map[peer.ID]struct{}
	ips     map[netip.Addr]struct{}
	subnets map[netip.Prefix]struct{}
	ranger  cidranger.Ranger
}

func newRuleSet() *ruleSet {
	return &ruleSet{
		peers:   make(map[peer.ID]struct{}),
		ips:     make(map[netip.Addr]struct{}),
		subnets: make(map[netip.Prefix]struct{}),
		ranger:  cidranger.NewPCTrieRanger(),
	}
}

func (r *ruleSet) coversIP(ip netip.Addr) bool {
	if _, ok := r.ips[ip]; ok {
		return true
	}
	return r.coversBySubnet(ip)
}

// coversBySubnet reports whether one of the set's subnets contains ip.
func (r *ruleSet) coversBySubnet(ip netip.Addr) bool {
	if len(r.subnets) == 0 {
		return false
	}
	ok, err := r.ranger.Contains(net.IP(ip.AsSlice()))
	return err == nil && ok
}

// Gater implements core/connmgr.ConnectionGater. Create it with New or Open;
// it is safe for concurrent use (rule changes are applied under a lock and
// saved one batch at a time, without holding up decisions).
type Gater struct {
	ds     datastore.Datastore
	hooks  *hooks.Registry
	dir    string    // Open's directory, for the manifest file; "" for New
	closer io.Closer // the datastore Open opened; nil for New
	damage *StoreDamagedError

	mu      sync.RWMutex
	block   *ruleSet
	allow   *ruleSet
	pending map[string]bool // rule key -> present: applied, not saved yet

	persistMu sync.Mutex          // serialises saves; guards stored, digest
	stored    map[string]struct{} // rule keys saved in ds
	digest    digest              // manifest of stored

	network atomic.Pointer[network.Network]
	policy  atomic.Pointer[func(peer.ID) bool]

	// decisions counts the decisions by point and rule (Collector).
	decisions decisionCounts
}

var (
	_ connmgr.ConnectionGater = (*Gater)(nil)
	_ core.AdmissionStage     = (*Gater)(nil)
	_ core.DialGater          = (*Gater)(nil)
)

// New creates a gater whose rules persist in ds (an in-memory datastore
// keeps them for the process only) and loads the rules ds already holds;
// Open does the same for a LevelDB directory and also catches the
// corruption LevelDB itself detects. registry may be nil (no hooks).
//
// Each rule change is written in one batch with a manifest (the number of
// rules and a checksum of their keys), atomically if ds's batches are
// (go-ds-leveldb's are; go-datastore's basic batch is not). New checks the
// rules against it: rules missing, extra or garbled, a manifest that cannot
// be read or a key that is not a rule return a *StoreDamagedError
// (errors.Is(err, ErrStoreDamaged)), unless RecoverStore(true) is given. A
// store without a manifest (written by a version before it) is taken as it
// is and its manifest written; if that write fails, New logs it and the
// next saved change writes it. Other errors are the datastore's.
func New(ds datastore.Datastore, registry *hooks.Registry, opts ...Option) (*Gater, error) {
	if ds == nil {
		return nil, errors.New("gater: New: datastore is nil")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return newGater(ds, registry, o, storeInfo{})
}

func newGater(ds datastore.Datastore, registry *hooks.Registry, o options, info storeInfo) (*Gater, error) {
	g := &Gater{ds: ds, hooks: registry, block: newRuleSet(), allow: newRuleSet(),
		stored: make(map[string]struct{}), pending: make(map[string]bool), dir: info.dir}
	if err := g.load(context.Background(), o, info); err != nil {
		return nil, err
	}
	return g, nil
}

// SetNetwork gives the gater the network whose connections it closes when a
// block rule covers them.
func (g *Gater) SetNetwork(n network.Network) {
	if n == nil {
		g.network.Store(nil)
		return
	}
	g.network.Store(&n)
}

// SetPeerPolicy installs a predicate consulted for every peer dialed and
// every connection admitted, in both directions; false refuses it
// (ErrPeerPolicy). The
// realm package uses it for the realm-only policy. nil removes it.
func (g *Gater) SetPeerPolicy(allow func(p peer.ID) bool) {
	if allow == nil {
		g.policy.Store(nil)
		return
	}
	g.policy.Store(&allow)
}

func ruleKey(action, kind, value string) datastore.Key {
	return rulesPrefix.ChildString(action).ChildString(kind).ChildString(url.PathEscape(value))
}

// queryRules lists the rule keys.
var queryRules = query.Query{Prefix: rulesPrefix.String(), KeysOnly: true}

// load reads the rules into memory and checks them against the manifest
// (New's doc says what it accepts).
func (g *Gater) load(ctx context.Context, o options, info storeInfo) error {
	s, err := scan(ctx, g.ds)
	if err != nil {
		return err
	}
	for _, key := range s.rules {
		if err := addRuleKey(g.block, g.allow, key); err != nil {
			return err // scan parsed it already
		}
		g.stored[key] = struct{}{}
		g.digest.add(key)
	}
	recorded, cause := -1, error(nil)
	switch {
	case s.manifestErr != nil:
		cause = s.manifestErr
	case s.manifest != nil:
		recorded = s.manifest.count
		if *s.manifest != g.digest {
			cause = errors.New("the rules do not match their manifest (count or checksum)")
		}
	case info.side != nil:
		// The manifest key is gone but the file says one was saved.
		recorded = info.side.count
		if *info.side != g.digest {
			cause = fmt.Errorf("the manifest is missing from the store and the rules do not match %s", manifestFile)
		}
	case info.corrupt == nil && len(s.rules) > 0:
		log.Infow("gater: rule store has no manifest (written by an earlier version); writing it", "rules", len(s.rules), "dir", info.dir)
	}
	if info.corrupt != nil {
		cause = errors.Join(info.corrupt, cause)
		if info.side != nil {
			recorded = info.side.count // the newest witness
		}
	}
	if len(s.errs) > 0 {
		cause = errors.Join(append([]error{cause}, s.errs...)...)
	}
	if cause == nil {
		if s.manifest == nil && (len(s.rules) > 0 || info.side != nil) {
			if err := g.writeManifest(ctx, nil); err != nil {
				log.Warnw("gater: could not write the rule manifest; the next saved change writes it", "dir", info.dir, "error", err)
			}
		}
		return nil
	}
	damage := &StoreDamagedError{Dir: info.dir, Recorded: recorded, Readable: len(s.rules), Err: cause}
	if !o.recoverStore {
		return damage
	}
	log.Errorw("gater: RULE STORE DAMAGED, RECOVERING: keeping the readable rules; lost rules must be added again",
		"dir", info.dir, "recorded", recorded, "readable", len(s.rules), "unreadable_keys", s.unreadable, "cause", cause)
	if err := g.writeManifest(ctx, s.unreadable); err != nil {
		return fmt.Errorf("gater: recover rule store: rewrite: %w (damage: %w)", err, damage)
	}
	g.damage = damage
	return nil
}

// writeManifest writes the manifest of the stored rules, deleting the keys
// in drop in the same batch.
func (g *Gater) writeManifest(ctx context.Context, drop []string) error {
	b, err := g.batch(ctx)
	if err != nil {
		return err
	}
	for _, key := range drop {
		if err := b.Delete(ctx, datastore.NewKey(key)); err != nil {
			return err
		}
	}
	if err := b.Put(ctx, manifestKey, g.digest.encode()); err != nil {
		return err
	}
	if err := b.Commit(ctx); err != nil {
		return err
	}
	g.saveManifestFile()
	return nil
}

// addRuleKey parses a stored rule key into block or allow. The error names
// the key.
func addRuleKey(block, allow *ruleSet, key string) error {
	parts := datastore.NewKey(key).List() // realmnet gater <action> <kind> <value>
	if len(parts) != 5 {
		return fmt.Errorf("gater: rule key %q has the wrong shape", key)
	}
	value, err := url.PathUnescape(parts[4])
	if err != nil {
		return fmt.Errorf("gater: rule key %q: %w", key, err)
	}
	var set *ruleSet
	switch parts[2] {
	case "block":
		set = block
	case "allow":
		set = allow
	default:
		return fmt.Errorf("gater: rule key %q: unknown action %q", key, parts[2])
	}
	if err := addRule(set, parts[3], value); err != nil {
		return fmt.Errorf("gater: rule key %q: %w", key, err)
	}
	return nil
}

// addRule parses value for kind (peer, ip, subnet) into set.
func addRule(set *ruleSet, kind, value string) error {
	switch kind {
	case "peer":
		p, err := peer.Decode(value)
		if err != nil {
			return fmt.Errorf("peer ID %q: %w", value, err)
		}
		if err := p.Validate(); err != nil {
			return fmt.Errorf("peer ID %q: %w", value, err)
		}
		set.peers[p] = struct{}{}
	case "ip":
		ip, err := netip.ParseAddr(value)
		if err != nil {
			return err
		}
		set.ips[ip.Unmap()] = struct{}{}
	case "subnet":
		prefix, err := netip.ParsePrefix(value)
		if err != nil {
			return err
		}
		prefix = prefix.Masked()
		set.subnets[prefix] = struct{}{}
		return set.ranger.Insert(cidranger.NewBasicRangerEntry(prefixToIPNet(prefix)))
	default:
		return fmt.Errorf("unknown rule kind %q", kind)
	}
	return nil
}

func removeRule(set *ruleSet, kind, value string) error {
	switch kind {
	case "peer":
		p, err := peer.Decode(value)
		if err != nil {
			return err
		}
		delete(set.peers, p)
	case "ip":
		ip, err := netip.ParseAddr(value)
		if err != nil {
			return err
		}
		delete(set.ips, ip.Unmap())
	case "subnet":
		prefix, err := netip.ParsePrefix(value)
		if err != nil {
			return err
		}
		prefix = prefix.Masked()
		delete(set.subnets, prefix)
		_, err = set.ranger.Remove(prefixToIPNet(prefix))
		return err
	}
	return nil
}

func prefixToIPNet(p netip.Prefix) net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}

// change adds or removes one rule. The rule is parsed first (a bad one is
// neither applied nor saved), then applied in memory at once, then saved
// (persist). A save that fails leaves the change in force and pending: the
// error wraps ErrNotPersisted and the datastore's error, and the next save
// writes it too.
func (g *Gater) change(action, kind, value string, add bool) error {
	if err := addRule(newRuleSet(), kind, value); err != nil {
		return fmt.Errorf("gater: %s %s rule %q: %w", action, kind, value, err)
	}
	key := ruleKey(action, kind, value).String()
	set := g.block
	if action == "allow" {
		set = g.allow
	}
	g.mu.Lock()
	var err error
	if add {
		err = addRule(set, kind, value)
	} else {
		err = removeRule(set, kind, value)
	}
	if err != nil {
		g.mu.Unlock()
		return fmt.Errorf("gater: %s %s rule %s: %w", action, kind, value, err)
	}
	g.pending[key] = add
	g.mu.Unlock()
	if err := g.persist(context.Background()); err != nil {
		verb := "add"
		if !add {
			verb = "remove"
		}
		return fmt.Errorf("%w: %s %s %s rule %s: %w", ErrNotPersisted, verb, action, kind, value, err)
	}
	return nil
}

// persist writes the pending changes and the manifest in one batch. Writes
// are serialised by persistMu; g.mu is not held while writing, so decisions
// go on meanwhile.
func (g *Gater) persist(ctx context.Context) error {
	g.persistMu.Lock()
	defer g.persistMu.Unlock()
	g.mu.RLock()
	snap := maps.Clone(g.pending)
	g.mu.RUnlock()
	if len(snap) == 0 {
		return nil // a concurrent save wrote it
	}
	b, err := g.batch(ctx)
	if err != nil {
		return err
	}
	next := g.digest
	for key, add := range snap {
		k := datastore.NewKey(key)
		_, had := g.stored[key]
		if add {
			err = b.Put(ctx, k, nil)
			if !had {
				next.add(key)
			}
		} else {
			err = b.Delete(ctx, k)
			if had {
				next.remove(key)
			}
		}
		if err != nil {
			return err
		}
	}
	if err := b.Put(ctx, manifestKey, next.encode()); err != nil {
		return err
	}
	if err := b.Commit(ctx); err != nil {
		return err
	}
	for key, add := range snap {
		if add {
			g.stored[key] = struct{}{}
		} else {
			delete(g.stored, key)
		}
	}
	g.digest = next
	g.mu.Lock()
	for key, add := range snap {
		if cur, ok := g.pending[key]; ok && cur == add {
			delete(g.pending, key)
		}
	}
	g.mu.Unlock()
	g.saveManifestFile()
	return nil
}

// batch is ds's batch, or go-datastore's basic (non-atomic) one.
func (g *Gater) batch(ctx context.Context) (datastore.Batch, error) {
	if b, ok := g.ds.(datastore.Batching); ok {
		return b.Batch(ctx)
	}
	return datastore.NewBasicBatch(g.ds), nil
}

// saveManifestFile copies the manifest to Open's directory. The rules are
// saved already; a failure is logged (the file is a second witness, read
// only when the store lost its manifest key).
func (g *Gater) saveManifestFile() {
	if g.dir == "" {
		return
	}
	if err := writeManifestFile(g.dir, g.digest); err != nil {
		log.Warnw("gater: could not write the rule manifest file", "dir", g.dir, "error", err)
	}
}

// BlockPeer blocks p and closes its connections. The block is in force
// when it returns, even with an error wrapping ErrNotPersisted (the rule
// was not saved: the datastore's error is wrapped too); any other error
// names an invalid peer ID, and nothing changed.
func (g *Gater) BlockPeer(p peer.ID) error {
	err := g.change("block", "peer", p.String(), true)
	if err != nil && !errors.Is(err, ErrNotPersisted) {
		return err
	}
	g.closeWhere(func(c network.Conn) bool { return c.RemotePeer() == p && !g.peerAllowed(p) })
	// ClosePeer also closes the connections the network has not announced
	// (realmnet's swarm keeps redundant ones serving the peer's streams).
	if n := g.network.Load(); n != nil && !g.peerAllowed(p) {
		_ = (*n).ClosePeer(p)
	}
	return err
}

// UnblockPeer removes p's block rule. An error wrapping ErrNotPersisted
// means the rule is gone in memory but still saved.
func (g *Gater) UnblockPeer(p peer.ID) error { return g.change("block", "peer", p.String(), false) }

// AllowPeer adds an allow rule for p, which wins over block rules. An
// error wrapping ErrNotPersisted means the rule is in force but not saved;
// any other error names an invalid peer ID.
func (g *Gater) AllowPeer(p peer.ID) error { return g.change("allow", "peer", p.String(), true) }

// RemoveAllowedPeer removes p's allow rule. An error wrapping
// ErrNotPersisted means the rule is gone in memory but still saved.
func (g *Gater) RemoveAllowedPeer(p peer.ID) error {
	return g.change("allow", "peer", p.String(), false)
}

// BlockAddr blocks one IP address and closes the connections from or to it.
// The block is in force when it returns, even with an error wrapping
// ErrNotPersisted (not saved; wraps the datastore's error); any other error
// names an invalid address, and nothing changed.
func (g *Gater) BlockAddr(ip net.IP) error {
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return fmt.Errorf("gater: BlockAddr: invalid IP %v", ip)
	}
	addr = addr.Unmap()
	err := g.change("block", "ip", addr.String(), true)
	if err != nil && !errors.Is(err, ErrNotPersisted) {
		return err
	}
	g.closeWhere(func(c network.Conn) bool { return g.coveredIP(c) == addr && !g.addrAllowed(addr) })
	return err
}

// UnblockAddr removes ip's block rule. An error wrapping ErrNotPersisted
// means the rule is gone in memory but still saved; any other error names
// an invalid address.
func (g *Gater) UnblockAddr(ip net.IP) error { return g.ipRule("block", ip, false) }

// AllowAddr adds an allow rule for ip, which wins over block rules. An
// error wrapping ErrNotPersisted means the rule is in force but not saved;
// any other error names an invalid address.
func (g *Gater) AllowAddr(ip net.IP) error { return g.ipRule("allow", ip, true) }

// RemoveAllowedAddr removes ip's allow rule. An error wrapping
// ErrNotPersisted means the rule is gone in memory but still saved; any
// other error names an invalid address.
func (g *Gater) RemoveAllowedAddr(ip net.IP) error { return g.ipRule("allow", ip, false) }

func (g *Gater) ipRule(action string, ip net.IP, add bool) error {
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return fmt.Errorf("gater: invalid IP %v", ip)
	}
	return g.change(action, "ip", addr.Unmap().String(), add)
}

// BlockSubnet blocks a subnet (IPv4 or IPv6) and closes the connections it
// covers. The block is in force when it returns, even with an error
// wrapping ErrNotPersisted (not saved; wraps the datastore's error); any
// other error names an invalid subnet, and nothing changed.
func (g *Gater) BlockSubnet(subnet *net.IPNet) error {
	prefix, err := toPrefix(subnet)
	if err != nil {
		return err
	}
	err = g.change("block", "subnet", prefix.String(), true)
	if err != nil && !errors.Is(err, ErrNotPersisted) {
		return err
	}
	g.closeWhere(func(c network.Conn) bool {
		ip := g.coveredIP(c)
		return ip.IsValid() && prefix.Contains(ip) && !g.addrAllowed(ip)
	})
	return err
}

// UnblockSubnet removes a subnet's block rule. An error wrapping
// ErrNotPersisted means the rule is gone in memory but still saved; any
// other error names an invalid subnet.
func (g *Gater) UnblockSubnet(subnet *net.IPNet) error { return g.subnetRule("block", subnet, false) }

// AllowSubnet adds an allow rule for a subnet, which wins over block rules.
// An error wrapping ErrNotPersisted means the rule is in force but not
// saved; any other error names an invalid subnet.
func (g *Gater) AllowSubnet(subnet *net.IPNet) error { return g.subnetRule("allow", subnet, true) }

// RemoveAllowedSubnet removes a subnet's allow rule. An error wrapping
// ErrNotPersisted means the rule is gone in memory but still saved; any
// other error names an invalid subnet.
func (g *Gater) RemoveAllowedSubnet(subnet *net.IPNet) error {
	return g.subnetRule("allow", subnet, false)
}

func (g *Gater) subnetRule(action string, subnet *net.IPNet, add bool) error {
	prefix, err := toPrefix(subnet)
	if err != nil {
		return err
	}
	return g.change(action, "subnet", prefix.String(), add)
}

func toPrefix(subnet *net.IPNet) (netip.Prefix, error) {
	if subnet == nil {
		return netip.Prefix{}, errors.New("gater: subnet is nil")
	}
	addr, ok := netip.AddrFromSlice(subnet.IP)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("gater: invalid subnet %v", subnet)
	}
	ones, bits := subnet.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, fmt.Errorf("gater: subnet %v has a non-canonical mask", subnet)
	}
	if addr.Is4In6() {
		// Addresses are matched in their IPv4 form: an IPv4-mapped
		// subnet (::ffff:a.b.c.d/96+n) is the IPv4 subnet a.b.c.d/n.
		switch {
		case bits == 32:
			addr = addr.Unmap()
		case ones >= 96:
			addr, ones = addr.Unmap(), ones-96
		}
	}
	return netip.PrefixFrom(addr, ones).Masked(), nil
}

// BlockedPeers, BlockedAddrs and BlockedSubnets list the block rules.
func (g *Gater) BlockedPeers() []peer.ID { return listPeers(g, g.block) }

// BlockedAddrs lists the blocked IP addresses.
func (g *Gater) BlockedAddrs() []netip.Addr { return listKeys(g, g.block.ips) }

// BlockedSubnets lists the blocked subnets.
func (g *Gater) BlockedSubnets() []netip.Prefix { return listKeys(g, g.block.subnets) }

func listPeers(g *Gater, set *ruleSet) []peer.ID { return listKeys(g, set.peers) }

func listKeys[K comparable](g *Gater, m map[K]struct{}) []K {
	g.mu.RLock()
	defer g.mu.RUnlock()
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// closeWhere closes the network's connections for which match holds.
func (g *Gater) closeWhere(match func(network.Conn) bool) {
	n := g.network.Load()
	if n == nil {
		return
	}
	for _, c := range (*n).Conns() {
		if match(c) {
			log.Infow("closing connection covered by a new block rule", "peer", c.RemotePeer(), "addr", c.RemoteMultiaddr())
			_ = c.CloseWithError(network.ConnGated)
		}
	}
}

func (g *Gater) coveredIP(c network.ConnMultiaddrs) netip.Addr {
	ip, err := manet.ToIP(c.RemoteMultiaddr())
	if err != nil {
		return netip.Addr{}
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap()
}

func (g *Gater) peerAllowed(p peer.ID) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if _, ok := g.allow.peers[p]; ok {
		return true
	}
	_, blocked := g.block.peers[p]
	return !blocked
}

func (g *Gater) addrAllowed(ip netip.Addr) bool { return g.addrRule(ip) == ruleNone }

// addrRule is the rule that refuses ip: ruleBlockedAddr (a block rule for
// the address), ruleBlockedSubnet (one for a subnet containing it), or
// ruleNone when it is allowed (no block rule, or an allow rule covers it).
func (g *Gater) addrRule(ip netip.Addr) rule {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.allow.coversIP(ip) {
		return ruleNone
	}
	if _, ok := g.block.ips[ip]; ok {
		return ruleBlockedAddr
	}
	if g.block.coversBySubnet(ip) {
		return ruleBlockedSubnet
	}
	return ruleNone
}

// maRule is addrRule for a multiaddr; ruleNone when it is not an IP
// address (no IP rule applies).
func (g *Gater) maRule(a ma.Multiaddr) rule {
	ip, err := manet.ToIP(a)
	if err != nil {
		return ruleNone
	}
	addr, _ := netip.AddrFromSlice(ip)
	return g.addrRule(addr.Unmap())
}

// CheckPeerDial is InterceptPeerDial with a reason: ErrPeerBlocked or
// ErrPeerPolicy.
func (g *Gater) CheckPeerDial(p peer.ID) error {
	if !g.peerAllowed(p) {
		g.decisions.count(pointPeerDial, ruleBlockedPeer)
		return fmt.Errorf("%w: %s", ErrPeerBlocked, p)
	}
	if policy := g.policy.Load(); policy != nil && !(*policy)(p) {
		g.decisions.count(pointPeerDial, rulePeerPolicy)
		return fmt.Errorf("%w: %s", ErrPeerPolicy, p)
	}
	g.decisions.count(pointPeerDial, ruleNone)
	return nil
}

// CheckAddrDial is InterceptAddrDial with a reason: ErrAddrBlocked, or the
// BeforeConnect hooks' *hooks.RejectedError (errors.Is(err,
// hooks.ErrRejected)). No packet has been sent to the peer yet.
func (g *Gater) CheckAddrDial(p peer.ID, addr ma.Multiaddr) error {
	if rl := g.maRule(addr); rl != ruleNone {
		g.decisions.count(pointAddrDial, rl)
		return fmt.Errorf("%w: %s", ErrAddrBlocked, addr)
	}
	if g.hooks != nil {
		if err := g.hooks.RunBeforeConnect(context.Background(), hooks.ConnectAttempt{
			Direction: network.DirOutbound, Peer: p, RemoteAddr: addr,
		}); err != nil {
			g.decisions.count(pointAddrDial, ruleHook)
			return err
		}
	}
	g.decisions.count(pointAddrDial, ruleNone)
	return nil
}

// InterceptPeerDial reports whether p may be dialed (rules and policy).
func (g *Gater) InterceptPeerDial(p peer.ID) bool { return g.CheckPeerDial(p) == nil }

// InterceptAddrDial reports whether addr may be dialed for p (address rules
// and BeforeConnect hooks).
func (g *Gater) InterceptAddrDial(p peer.ID, addr ma.Multiaddr) bool {
	return g.CheckAddrDial(p, addr) == nil
}

// InterceptAccept runs for an inbound connection when the transport accepts
// it (go-libp2p's QUIC listener: after the QUIC handshake, inside its
// accept loop): the address rules only, which are a lookup. The inbound
// BeforeConnect hooks run in AdmitConn instead, off the accept loop, so
// that a slow hook delays only its own connection. A refusal closes the
// connection with network.ConnGated.
func (g *Gater) InterceptAccept(addrs network.ConnMultiaddrs) bool {
	rl := g.maRule(addrs.RemoteMultiaddr())
	g.decisions.count(pointAccept, rl)
	return rl == ruleNone
}

// InterceptSecured allows every connection: go-libp2p's QUIC transport
// calls it right after the TLS handshake, inside its accept loop, where a
// slow AfterHandshake hook would hold up every other inbound connection.
// realmnet's swarm decides instead, per connection and concurrently, in
// AdmitConn — before anyone sees the connection.
func (g *Gater) InterceptSecured(network.Direction, peer.ID, network.ConnMultiaddrs) bool {
	return true
}

// AdmitConn is the gater stage of the swarm's admission pipeline
// (core.AdmissionStage), the one check of the rules for a connection: peer
// rules, address rules, the peer policy, then, for an inbound connection,
// the BeforeConnect hooks, then the AfterHandshake hooks (in
// registration order, first rejection wins, each bounded by the registry's
// timeout and by ctx) with the connection's ID, then the rules once more (a
// block added while the hooks ran applies to this connection too). It returns nil, or a
// *core.RefusedError (code network.ConnGated) whose reason is
// core.ReasonBlocked (wrapping ErrPeerBlocked or ErrAddrBlocked),
// core.ReasonPeerPolicy (ErrPeerPolicy) or core.ReasonHookRejected (the
// hook's *hooks.RejectedError, matching hooks.ErrRejected).
func (g *Gater) AdmitConn(ctx context.Context, c core.Conn) error {
	return g.admit(ctx, pointAdmit, c, c.ID())
}

// AbortConn implements core.AdmissionStage; the gater reserves nothing.
func (g *Gater) AbortConn(core.Conn) {}

// admit is AdmitConn and InterceptUpgraded, counted as decision point pt.
func (g *Gater) admit(ctx context.Context, pt point, c network.Conn, connID string) error {
	rl, err := g.admitRule(ctx, c, connID)
	g.decisions.count(pt, rl)
	return err
}

// admitRule decides for admit: nil and ruleNone, or the refusal and the
// rule that made it.
func (g *Gater) admitRule(ctx context.Context, c network.Conn, connID string) (rule, error) {
	p := c.RemotePeer()
	refuse := func(reason core.CloseReason, err error) error {
		return &core.RefusedError{Stage: core.StageGater, Reason: reason, Code: network.ConnGated, Peer: p, Err: err}
	}
	if rl, err := g.checkRules(c, refuse); err != nil {
		return rl, err
	}
	if g.hooks == nil || g.hooks.Empty() {
		return ruleNone, nil
	}
	dir := c.Stat().Direction
	if dir == network.DirInbound {
		// The inbound BeforeConnect hooks: as the transport accepted the
		// connection (the attempt carries the addresses, not the peer),
		// but here, concurrently per connection, not in the accept loop.
		if err := g.hooks.RunBeforeConnect(ctx, hooks.ConnectAttempt{
			Direction: network.DirInbound, RemoteAddr: c.RemoteMultiaddr(), LocalAddr: c.LocalMultiaddr(),
		}); err != nil {
			log.Debugw("inbound connection rejected by a hook", "addr", c.RemoteMultiaddr(), "conn", connID, "error", err)
			return ruleHook, refuse(core.ReasonHookRejected, err)
		}
	}
	h := hooks.Handshake{Direction: dir, Peer: p, RemotePublicKey: c.RemotePublicKey(),
		RemoteAddr: c.RemoteMultiaddr(), LocalAddr: c.LocalMultiaddr(), ConnID: connID}
	if err := g.hooks.RunAfterHandshake(ctx, h); err != nil {
		log.Debugw("connection rejected by a hook", "peer", p, "conn", connID, "direction", h.Direction, "error", err)
		return ruleHook, refuse(core.ReasonHookRejected, err)
	}
	// A rule added while the hooks ran found nothing to close (the
	// connection is not announced yet): check the rules once more.
	return g.checkRules(c, refuse)
}

// checkRules checks the peer rules, the address rules and the peer policy
// for c, in that order; it returns the refusal and its rule, or ruleNone.
func (g *Gater) checkRules(c network.Conn, refuse func(core.CloseReason, error) error) (rule, error) {
	p := c.RemotePeer()
	if !g.peerAllowed(p) {
		return ruleBlockedPeer, refuse(core.ReasonBlocked, fmt.Errorf("%w: %s", ErrPeerBlocked, p))
	}
	if rl := g.maRule(c.RemoteMultiaddr()); rl != ruleNone {
		return rl, refuse(core.ReasonBlocked, fmt.Errorf("%w: %s", ErrAddrBlocked, c.RemoteMultiaddr()))
	}
	if policy := g.policy.Load(); policy != nil && !(*policy)(p) {
		return rulePeerPolicy, refuse(core.ReasonPeerPolicy, fmt.Errorf("%w: %s", ErrPeerPolicy, p))
	}
	return ruleNone, nil
}

// InterceptUpgraded runs AdmitConn's checks — rules, peer policy,
// AfterHandshake hooks — for hosts that use this gater with go-libp2p's own
// swarm (which calls it once per connection); realmnet's swarm calls
// AdmitConn instead.
func (g *Gater) InterceptUpgraded(c network.Conn) (bool, control.DisconnectReason) {
	return g.admit(context.Background(), pointUpgraded, c, c.ID()) == nil, 0
}

// String summarises the rules for logs.
func (g *Gater) String() string {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var b strings.Builder
	fmt.Fprintf(&b, "gater{block: %d peers, %d addrs, %d subnets; allow: %d peers, %d addrs, %d subnets}",
		len(g.block.peers), len(g.block.ips), len(g.block.subnets),
		len(g.allow.peers), len(g.allow.ips), len(g.allow.subnets))
	return b.String()
}

// HasAllowRule reports whether p has an explicit allow rule (AllowPeer),
// the mark of an allowlisted infrastructure peer (the realm-only policy
// exempts such peers). Safe for concurrent use.
func (g *Gater) HasAllowRule(p peer.ID) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	_, ok := g.allow.peers[p]
	return ok
}
