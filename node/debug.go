package node

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/debugapi"
	"github.com/realmnet/realmnet/gater"
	"github.com/realmnet/realmnet/health"
	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/realm"
	"github.com/realmnet/realmnet/swarm"
)

// The debug endpoint (DebugAddr) serves package debugapi's handler with the
// node as its Source: every view below is read from the components when a
// request comes, except the recent events, which a recorder keeps from the
// node's bus while the endpoint runs.

// recentEvents is how many events /v1/events keeps: the last 256.
const recentEvents = 256

// debugSource is the node as debugapi.Source.
type debugSource struct {
	n       *Node
	started time.Time
	events  *eventRecorder
}

var _ debugapi.Source = (*debugSource)(nil)

// DebugURL returns the debug endpoint's base URL ("http://host:port"), or
// "" when the node has none (no DebugAddr option).
func (n *Node) DebugURL() string {
	if n.debug == nil {
		return ""
	}
	return n.debug.URL()
}

// startDebug starts the debug endpoint of cfg.DebugAddr. The error names
// the address (a non-loopback one without a token, one that cannot be
// bound).
func (n *Node) startDebug(cfg *Config) error {
	source := &debugSource{n: n, started: time.Now()}
	rec, err := newEventRecorder(n.bus, source.poolName)
	if err != nil {
		return err
	}
	source.events = rec
	gatherer, _ := cfg.Metrics.(prometheus.Gatherer)
	srv, err := debugapi.Listen(debugapi.Config{
		Addr:     cfg.DebugAddr,
		Token:    cfg.DebugToken,
		Source:   source,
		Gatherer: gatherer,
	})
	if err != nil {
		rec.close()
		return fmt.Errorf("node: debug endpoint: %w", err)
	}
	n.debug, n.debugEvents = srv, rec
	log.Infow("debug endpoint", "url", srv.URL())
	return nil
}

// stopDebug stops the debug endpoint, within ctx, and its event recorder.
func (n *Node) stopDebug(ctx context.Context) {
	if n.debug != nil {
		_ = n.debug.Shutdown(ctx)
		n.debugEvents.close()
	}
}

// Node describes the node.
func (d *debugSource) Node() debugapi.NodeView {
	n := d.n
	conns := n.swarm.Conns()
	streams := 0
	for _, c := range conns {
		streams += len(c.GetStreams())
	}
	return debugapi.NodeView{
		ID:           n.ID().String(),
		Version:      Version(),
		ListenAddrs:  addrStrings(n.swarm.ListenAddresses()),
		Addrs:        addrStrings(n.Addrs()),
		Started:      d.started,
		Peers:        len(n.swarm.Peers()),
		Conns:        len(conns),
		Streams:      streams,
		Reachability: "unknown", // AutoNAT comes with NAT traversal
	}
}

// Peers lists the connected peers.
func (d *debugSource) Peers() []debugapi.PeerView {
	n := d.n
	memberOf := d.memberships()
	var out []debugapi.PeerView
	for _, p := range n.swarm.Peers() {
		paths := n.paths.Paths(p)
		v := debugapi.PeerView{
			ID:            p.String(),
			Connectedness: n.swarm.Connectedness(p).String(),
			Paths:         len(paths),
			Realms:        memberOf[p],
			Pools:         d.poolNames(n.pools.PoolsOf(p)),
			Protected:     n.pools.IsProtected(p, ""),
			Health:        healthView(n.peerHealth(p, paths, time.Now())),
		}
		if v.Realms == nil {
			v.Realms = []string{}
		}
		for _, pi := range paths {
			if pi.Selected {
				v.SelectedRTTMs = ms(pi.SmoothedRTT)
			}
		}
		out = append(out, v)
	}
	return out
}

// memberships maps each member of a joined realm to the realms' names.
func (d *debugSource) memberships() map[peer.ID][]string {
	out := map[peer.ID][]string{}
	for _, r := range d.n.realms.Realms() {
		for _, p := range r.Members() {
			out[p] = append(out[p], r.Name())
		}
	}
	return out
}

// Paths lists every path of every connected peer.
func (d *debugSource) Paths() []debugapi.PathView {
	var out []debugapi.PathView
	for _, p := range d.n.swarm.Peers() {
		out = append(out, pathViews(p, d.n.paths.Paths(p))...)
	}
	return out
}

func pathViews(p peer.ID, paths []core.PathInfo) []debugapi.PathView {
	out := make([]debugapi.PathView, 0, len(paths))
	for _, pi := range paths {
		v := debugapi.PathView{
			Peer: p.String(), ConnID: pi.ConnID,
			Local: addrString(pi.Local), Remote: addrString(pi.Remote),
			Direction: debugapi.DirectionOutbound, Tier: debugapi.TierDirect,
			State: pi.State.String(), Selected: pi.Selected,
			SmoothedRTTMs: ms(pi.SmoothedRTT), MinRTTMs: ms(pi.MinRTT), HeartbeatRTTMs: ms(pi.HeartbeatRTT),
			Loss: pi.Loss, OpenStreams: pi.OpenStreams,
			BytesSent: pi.BytesSent, BytesReceived: pi.BytesReceived,
			LastHeartbeat: pi.LastHeartbeat, Opened: pi.Opened,
		}
		if pi.Direction == network.DirInbound {
			v.Direction = debugapi.DirectionInbound
		}
		if pi.Relayed {
			v.Tier = debugapi.TierRelayed
		}
		out = append(out, v)
	}
	return out
}

// Pools lists the pools with their fill and watermarks.
func (d *debugSource) Pools() []debugapi.PoolView {
	st := d.n.pools.Stats()
	refused := d.n.swarm.AdmissionStats().Refused
	view := func(name core.Pool, ps connmgr.PoolStats, trimmed, refusals uint64) debugapi.PoolView {
		return debugapi.PoolView{Name: name, Size: ps.Count, LowWater: ps.LowWater, HighWater: ps.HighWater, Trimmed: trimmed, Refused: refusals}
	}
	out := []debugapi.PoolView{
		view(core.PoolGlobal, st.Global,
			st.Closed[core.ReasonGlobalHighWater]+st.Closed[core.ReasonPoolCeiling]+st.Closed[core.ReasonManualTrim],
			refused[core.ReasonPoolCeiling]+refused[core.ReasonMaxConnsPerPeer]),
		view(core.PoolUnassigned, st.Unassigned, st.Closed[core.ReasonUnassignedHighWater], 0),
	}
	realmPools := make([]debugapi.PoolView, 0, len(st.Realms))
	for id, ps := range st.Realms {
		// Trims inside a realm are counted per realm (Trims), their
		// connections for all realms together (realm_high_water).
		realmPools = append(realmPools, view(d.poolName(core.RealmPool(id)), ps, ps.Trims, 0))
	}
	// A stable order: the page shows the pools as it gets them.
	slices.SortFunc(realmPools, func(a, b debugapi.PoolView) int { return strings.Compare(string(a.Name), string(b.Name)) })
	return append(out, realmPools...)
}

// poolName shows a realm's sub-pool by the realm's name ("realm:chat")
// rather than its ID, as the metrics do; other pools as they are.
func (d *debugSource) poolName(pool core.Pool) core.Pool {
	id, ok := pool.Realm()
	if !ok {
		return pool
	}
	if name := joinedRealmName(d.n.realms, id); name != "" {
		return core.Pool("realm:" + name)
	}
	return pool
}

func (d *debugSource) poolNames(pools []core.Pool) []core.Pool {
	out := make([]core.Pool, len(pools))
	for i, pool := range pools {
		out[i] = d.poolName(pool)
	}
	return out
}

// Realms lists the joined realms and their members.
func (d *debugSource) Realms() []debugapi.RealmView {
	var out []debugapi.RealmView
	for _, r := range d.n.realms.Realms() {
		v := debugapi.RealmView{Name: r.Name(), Members: []debugapi.MemberView{}, Joined: r.Joined()}
		for _, p := range r.Members() {
			if info, ok := r.Member(p); ok {
				v.Members = append(v.Members, debugapi.MemberView{Peer: p.String(), Since: info.Since, Paths: len(info.Paths)})
			}
		}
		out = append(out, v)
	}
	return out
}

// Events returns the recent events, oldest first.
func (d *debugSource) Events() []debugapi.EventView { return d.events.snapshot() }

// Health lists the health of the connected peers and of the peers backed
// off after failed dials.
func (d *debugSource) Health() []debugapi.PeerHealthView {
	n := d.n
	now := time.Now()
	backoffs := n.swarm.DialBackoffs()
	var out []debugapi.PeerHealthView
	for _, p := range n.swarm.Peers() {
		b, backedOff := backoffs[p]
		delete(backoffs, p)
		out = append(out, healthView(health.Assess(p, healthInput(n.paths.Paths(p), b, backedOff), now)))
	}
	for p, b := range backoffs {
		out = append(out, healthView(health.Assess(p, healthInput(nil, b, true), now)))
	}
	return out
}

// peerHealth is PeerHealth with p's paths already read.
func (n *Node) peerHealth(p peer.ID, paths []core.PathInfo, now time.Time) health.Health {
	b, backedOff := n.swarm.DialBackoffOf(p)
	return health.Assess(p, healthInput(paths, b, backedOff), now)
}

func healthView(h health.Health) debugapi.PeerHealthView {
	v := debugapi.PeerHealthView{Peer: h.Peer.String(), Breaker: debugapi.Breaker(h.Breaker), Quality: h.Quality, RecentFailures: h.Failures}
	if h.Breaker == health.BreakerOpen {
		until := h.OpenUntil
		v.OpenUntil = &until
	}
	return v
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func addrString(a ma.Multiaddr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

func addrStrings(as []ma.Multiaddr) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

// doctorLookupTimeout bounds the DHT lookup of a doctor diagnosis.
const doctorLookupTimeout = 5 * time.Second

// doctorMaxDials caps the addresses a diagnosis dials (one by one).
const doctorMaxDials = 8

// doctorTimeout bounds a whole diagnosis: below the debug endpoint's
// per-request write deadline (60 s), so that the report is always
// written; dials that do not fit are not made.
const doctorTimeout = 45 * time.Second

// Doctor explains reaching p: the addresses known and where from (the
// peerstore, the node's connections, the DHT), the gater's rules for p
// and for each address, the dials it makes when p is not connected (each
// address on its own, its error or its time), the pools' refusals among
// their errors, p's membership in each joined realm, p's paths and
// health, and a one-line verdict. It dials only when p is not connected
// (after the DHT lookup, which may connect it), at most doctorMaxDials
// addresses, within doctorTimeout in all; connections it makes stay open,
// as any other. Its gater checks count as gater decisions.
func (d *debugSource) Doctor(ctx context.Context, p peer.ID) (debugapi.DoctorReport, error) {
	ctx, cancel := context.WithTimeout(ctx, doctorTimeout)
	defer cancel()
	n := d.n
	rep := debugapi.DoctorReport{Peer: p.String(), Addresses: []debugapi.AddressView{}, Dials: []debugapi.DialView{},
		Decisions: []debugapi.DecisionView{}, PoolRefusals: []debugapi.RefusalView{}, Realms: []debugapi.RealmMembershipView{}}
	if p == n.ID() {
		rep.Known, rep.Connectedness = true, "self"
		rep.Verdict = "this is the node itself"
		return rep, nil
	}

	// Addresses and where they come from. kad-dht's FindPeer answers with
	// the peerstore's addresses after its lookup (which adds what it
	// learnt there), so "dht" marks only the addresses the lookup added.
	sources := map[string][]string{}
	var addrs []ma.Multiaddr // in the order first found
	add := func(a ma.Multiaddr, source string) {
		key := string(a.Bytes())
		if _, ok := sources[key]; !ok {
			addrs = append(addrs, a)
		} else if source == "dht" {
			return
		}
		if !slices.Contains(sources[key], source) {
			sources[key] = append(sources[key], source)
		}
	}
	for _, a := range n.host.Peerstore().Addrs(p) {
		add(a, "peerstore")
	}
	for _, c := range n.swarm.ConnsToPeer(p) {
		add(c.RemoteMultiaddr(), "connection")
	}
	lookupCtx, cancelLookup := context.WithTimeout(ctx, doctorLookupTimeout)
	ai, lookupErr := n.dht.FindPeer(lookupCtx, p)
	cancelLookup()
	for _, a := range ai.Addrs {
		add(a, "dht")
	}
	for _, a := range addrs {
		rep.Addresses = append(rep.Addresses, debugapi.AddressView{Addr: a.String(), Sources: sources[string(a.Bytes())]})
	}
	// Read after the lookup: kad-dht may have connected p.
	rep.Connectedness = n.swarm.Connectedness(p).String()

	// The gater's rules.
	now := time.Now()
	blocked := ""
	if err := n.gater.CheckPeerDial(p); err != nil {
		blocked = gaterRule(err)
		rep.Decisions = append(rep.Decisions, debugapi.DecisionView{At: now, Stage: "peer_dial", Outcome: "denied", Reason: blocked})
	} else {
		rep.Decisions = append(rep.Decisions, debugapi.DecisionView{At: now, Stage: "peer_dial", Outcome: "allowed"})
	}
	var addrRules []string
	for _, a := range addrs {
		if rule := n.addrRule(a); rule != "" {
			addrRules = append(addrRules, rule)
			rep.Decisions = append(rep.Decisions, debugapi.DecisionView{At: now, Stage: "addr_dial", Outcome: "denied",
				Reason: fmt.Sprintf("%s: %s", rule, a)})
		}
	}
	if blocked == "" && len(addrs) > 0 && len(addrRules) == len(addrs) {
		// Every address is blocked: the peer cannot be dialed at all.
		blocked = strings.Join(slices.Compact(addrRules), ", ")
	}

	// Realm membership.
	member := false
	for _, r := range n.realms.Realms() {
		_, ok := r.Member(p)
		state := "not a member"
		if ok {
			state, member = "member", true
		}
		rep.Realms = append(rep.Realms, debugapi.RealmMembershipView{Realm: r.Name(), Member: ok, State: state})
	}

	// Dials, when p is not connected and the gater lets it be dialed.
	var lastDialErr error
	dialed := ""
	if rep.Connectedness != network.Connected.String() && blocked == "" {
		for i, a := range addrs {
			if i == doctorMaxDials || ctx.Err() != nil {
				break
			}
			start := time.Now()
			_, err := n.swarm.DialPath(ctx, p, a)
			dv := debugapi.DialView{At: start, Addr: a.String(), DurationMs: ms(time.Since(start))}
			if err != nil {
				dv.Error, lastDialErr = err.Error(), err
				rep.Decisions = append(rep.Decisions, dialDecisions(start, err)...)
				// Only the pools' stage refuses on a pool's account, and
				// only the global pool refuses (its ceiling, the per-peer
				// cap).
				var refused *core.RefusedError
				if errors.As(err, &refused) && refused.Stage == core.StagePools {
					rep.PoolRefusals = append(rep.PoolRefusals, debugapi.RefusalView{At: start, Pool: core.PoolGlobal, Reason: refused.Reason})
				}
			} else if dialed == "" {
				dialed = a.String()
			}
			rep.Dials = append(rep.Dials, dv)
		}
		rep.Connectedness = n.swarm.Connectedness(p).String()
	}

	paths := n.paths.Paths(p)
	rep.Paths = pathViews(p, paths)
	b, backedOff := n.swarm.DialBackoffOf(p)
	rep.Known = len(addrs) > 0 || backedOff || member
	var h health.Health
	if rep.Known {
		h = health.Assess(p, healthInput(paths, b, backedOff), time.Now())
		hv := healthView(h)
		rep.Health = &hv
	}
	rep.Verdict = doctorVerdict(rep, blocked, dialed, lastDialErr, lookupErr, paths, h)
	return rep, nil
}

// addrRule names the gater rule that blocks a, or "".
func (n *Node) addrRule(a ma.Multiaddr) string {
	ip, err := manet.ToIP(a)
	if err != nil {
		return ""
	}
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return ""
	}
	addr = addr.Unmap()
	if slices.Contains(n.gater.BlockedAddrs(), addr) {
		return "blocked address " + addr.String()
	}
	for _, prefix := range n.gater.BlockedSubnets() {
		if prefix.Contains(addr) {
			return "blocked subnet " + prefix.String()
		}
	}
	return ""
}

// gaterRule names the rule behind a CheckPeerDial error.
func gaterRule(err error) string {
	switch {
	case errors.Is(err, gater.ErrPeerBlocked):
		return "blocked peer (Gater.BlockPeer)"
	case errors.Is(err, gater.ErrPeerPolicy):
		return "peer policy (realm-only: not a member of a joined realm)"
	}
	return err.Error()
}

// dialDecisions are the gater and hook decisions a dial error reports.
func dialDecisions(at time.Time, err error) []debugapi.DecisionView {
	var rejected *hooks.RejectedError
	switch {
	case errors.As(err, &rejected):
		stage := "before_connect"
		if rejected.Stage == hooks.StageAfterHandshake {
			stage = "after_handshake"
		}
		return []debugapi.DecisionView{{At: at, Stage: stage, Hook: fmt.Sprint(rejected.Hook), Outcome: "rejected", Reason: rejected.Reason.Error()}}
	case errors.Is(err, gater.ErrAddrBlocked):
		return []debugapi.DecisionView{{At: at, Stage: "addr_dial", Outcome: "denied", Reason: err.Error()}}
	case errors.Is(err, swarm.ErrGaterDisallowedConnection):
		return []debugapi.DecisionView{{At: at, Stage: "admit", Outcome: "denied", Reason: err.Error()}}
	}
	return nil
}

// doctorVerdict is the report's one line.
func doctorVerdict(rep debugapi.DoctorReport, blocked, dialed string, dialErr, lookupErr error, paths []core.PathInfo, h health.Health) string {
	for _, pi := range paths {
		if pi.Selected {
			how := "connected"
			if dialed != "" {
				how = "reachable: dialed " + dialed + " now"
			}
			return fmt.Sprintf("%s; %d path(s), selected %s at %.1f ms RTT (%s)", how, len(paths), addrString(pi.Remote), ms(pi.SmoothedRTT), pi.State)
		}
	}
	switch {
	case blocked != "":
		return "blocked by the gater: " + blocked
	case len(rep.Addresses) == 0:
		why := "no address in the peerstore or the DHT"
		if lookupErr != nil {
			why += " (DHT: " + lookupErr.Error() + ")"
		}
		if h.Breaker == health.BreakerOpen || h.Breaker == health.BreakerHalfOpen {
			return fmt.Sprintf("backed off after %d failed dial(s), breaker %s; %s", h.Failures, h.Breaker, why)
		}
		return "unknown peer: " + why
	case dialErr != nil:
		var rejected *hooks.RejectedError
		if errors.As(dialErr, &rejected) {
			return fmt.Sprintf("refused by %s hook %d: %v", rejected.Stage, rejected.Hook, rejected.Reason)
		}
		return fmt.Sprintf("unreachable: %d of %d address(es) tried, all failed (last: %s)", len(rep.Dials), len(rep.Addresses), oneLine(dialErr))
	}
	return "not connected"
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

// eventRecorder keeps the node's recent events for /v1/events: one
// subscription to the bus and the goroutine that reads it (owned by the
// recorder; close stops it).
type eventRecorder struct {
	sub  event.Subscription
	done chan struct{}
	// poolName shows a realm's pool by the realm's name.
	poolName func(core.Pool) core.Pool

	mu     sync.Mutex
	events []debugapi.EventView // a ring of recentEvents
	next   int
}

func newEventRecorder(bus event.Bus, poolName func(core.Pool) core.Pool) (*eventRecorder, error) {
	sub, err := bus.Subscribe([]any{
		new(swarm.EvtConnectionOpened), new(swarm.EvtConnectionClosed),
		new(multipath.EvtPathSelected), new(multipath.EvtPathDead),
		new(connmgr.EvtConnTrimmed),
		new(realm.EvtMemberJoined), new(realm.EvtMemberLeft),
	})
	if err != nil {
		return nil, fmt.Errorf("node: debug endpoint: subscribe to events: %w", err)
	}
	r := &eventRecorder{sub: sub, done: make(chan struct{}), poolName: poolName}
	go r.run()
	return r, nil
}

func (r *eventRecorder) run() {
	defer close(r.done)
	for evt := range r.sub.Out() {
		v := r.eventView(evt)
		r.mu.Lock()
		if len(r.events) < recentEvents {
			r.events = append(r.events, v)
		} else {
			r.events[r.next] = v
			r.next = (r.next + 1) % recentEvents
		}
		r.mu.Unlock()
	}
}

func (r *eventRecorder) close() {
	_ = r.sub.Close()
	<-r.done
}

// snapshot returns the events, oldest first.
func (r *eventRecorder) snapshot() []debugapi.EventView {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]debugapi.EventView, 0, len(r.events))
	out = append(out, r.events[r.next:]...)
	return append(out, r.events[:r.next]...)
}

// eventView describes one event; it names what the event says and never
// carries key material (the events hold none).
func (r *eventRecorder) eventView(evt any) debugapi.EventView {
	v := debugapi.EventView{At: time.Now()}
	switch e := evt.(type) {
	case swarm.EvtConnectionOpened:
		v.Type, v.Peer, v.Text = "connection_opened", e.Peer.String(), fmt.Sprintf("%s %s %s", e.ConnID, e.Direction, e.Remote)
	case swarm.EvtConnectionClosed:
		v.Type, v.Peer, v.Text = "connection_closed", e.Peer.String(), fmt.Sprintf("%s %s %s", e.ConnID, e.Direction, e.Remote)
	case multipath.EvtPathSelected:
		v.Type, v.Peer, v.Text = "path_selected", e.Peer.String(), fmt.Sprintf("%s -> %s (%s)", e.Old, e.New, e.Reason)
	case multipath.EvtPathDead:
		v.Type, v.Peer, v.Text = "path_dead", e.Peer.String(), fmt.Sprintf("%s silent for %s", e.ConnID, e.SilentFor.Round(time.Millisecond))
	case connmgr.EvtConnTrimmed:
		v.Type, v.Peer, v.Text = "connection_trimmed", e.Peer.String(), fmt.Sprintf("%s from %s (%s)", e.ConnID, r.poolName(e.Pool), e.Reason)
	case realm.EvtMemberJoined:
		v.Type, v.Peer, v.Text = "member_joined", e.Peer.String(), "realm "+e.Realm
	case realm.EvtMemberLeft:
		v.Type, v.Peer, v.Text = "member_left", e.Peer.String(), fmt.Sprintf("realm %s (%s)", e.Realm, e.Reason)
	default:
		v.Type = fmt.Sprintf("%T", evt)
	}
	return v
}
