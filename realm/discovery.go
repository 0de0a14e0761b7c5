package realm

import (
	"context"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
)

// findTimeout bounds one FindProviders round and one Provide.
const findTimeout = 10 * time.Second

// discover announces the realm in the DHT, looks for members there, retries
// the Peers peers that are not members yet and asks a member for the
// members it knows: Provide of the rendezvous CID (retried each round until
// it succeeds, then every ReprovideInterval) and, while the realm wants more
// members, rounds of FindProviders, Peers dials and one member exchange
// with a random member, spaced by an exponential backoff from 2 s to
// DiscoveryInterval (cenkalti/backoff, jitter 0.1). A member joining resets
// the backoff, so a realm that is growing is searched often.
func (r *Realm) discover() {
	defer r.wg.Done()
	bo := &backoff.ExponentialBackOff{
		InitialInterval:     MinDiscoveryInterval,
		RandomizationFactor: 0.1,
		Multiplier:          2,
		MaxInterval:         r.cfg.DiscoveryInterval,
	}
	bo.Reset()
	var nextProvide time.Time
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.candidates.joined:
			// A member joined: look again soon (it may know more).
			bo.Reset()
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
			timer.Reset(bo.NextBackOff())
			continue
		case <-timer.C:
		}
		if r.svc.deps.Routing != nil && !time.Now().Before(nextProvide) {
			if err := r.provide(); err != nil {
				log.Debugw("provide failed", "realm", r.name, "err", err)
			} else {
				nextProvide = time.Now().Add(r.cfg.ReprovideInterval)
			}
		}
		if r.wantsMore() {
			if r.svc.deps.Routing != nil {
				r.findProviders()
			}
			// Known peers (Peers) whose handshake failed are tried
			// again every round.
			for _, ai := range r.cfg.Peers {
				if !r.authenticated(ai.ID) {
					r.candidate(ai)
				}
			}
			// A member exchange with one member, chosen at random: the
			// exchange at a handshake misses the members its peer admits
			// later, and a member learnt there whose dial failed is not
			// offered again; this one offers them again.
			if p, ok := r.randomAuthenticatedMember(); ok {
				r.exchangeAsync(p)
			}
		}
		timer.Reset(bo.NextBackOff())
	}
}

func (r *Realm) provide() error {
	ctx, cancel := context.WithTimeout(r.ctx, findTimeout)
	defer cancel()
	return r.svc.deps.Routing.Provide(ctx, r.cid, true)
}

func (r *Realm) findProviders() {
	ctx, cancel := context.WithTimeout(r.ctx, findTimeout)
	defer cancel()
	// At most HighWater providers per round (kad-dht stops the query once it
	// has them), so a DHT answer cannot flood the realm with candidates.
	count := r.svc.deps.Backend.RealmPoolLimits(r.keys.id).HighWater
	for ai := range r.svc.deps.Routing.FindProvidersAsync(ctx, r.cid, count) {
		if ai.ID != r.svc.deps.Host.ID() && !r.authenticated(ai.ID) {
			r.candidate(ai)
		}
	}
}

// mdnsServiceName is the realm's mDNS service name: derived from the
// rendezvous key (not the realm name, which stays private to members).
func (r *Realm) mdnsServiceName() string {
	return "_realmnet-" + hex.EncodeToString(r.keys.rendezvous[:8]) + "._udp"
}

// startMDNS runs go-libp2p's mDNS service for the realm; peers it finds
// become candidates. Errors are logged (mDNS is best effort).
func (r *Realm) startMDNS() {
	svc := mdns.NewMdnsService(r.svc.deps.Host, r.mdnsServiceName(), mdnsNotifee{r})
	if err := svc.Start(); err != nil {
		log.Warnw("mDNS not started", "realm", r.name, "err", err)
		return
	}
	r.stopMDNS = svc.Close
}

type mdnsNotifee struct{ r *Realm }

// HandlePeerFound makes a peer found on the LAN a candidate member.
func (n mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) { n.r.candidate(ai) }

// wantsMore reports whether the realm looks for more members: fewer
// authenticated members than its sub-pool's HighWater.
func (r *Realm) wantsMore() bool {
	high := r.svc.deps.Backend.RealmPoolLimits(r.keys.id).HighWater
	return r.authenticatedCount() < high
}

// candidate connects to a possible member and authenticates, in the
// background (at most maxCandidateDials at once per realm).
func (r *Realm) candidate(ai peer.AddrInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.candidateLocked(ai)
}

func (r *Realm) candidateLocked(ai peer.AddrInfo) {
	p := ai.ID
	if r.left || p == r.svc.deps.Host.ID() || p == "" {
		return
	}
	if _, busy := r.candidates.trying[p]; busy || r.handshakes.pending[p] != nil || (r.membership.members[p] != nil && r.membership.members[p].authenticated) {
		return
	}
	if len(r.candidates.trying) >= maxCandidates {
		return // discovery offers it again later
	}
	r.candidates.trying[p] = struct{}{}
	r.spawnLocked(func() {
		defer func() {
			r.mu.Lock()
			delete(r.candidates.trying, p)
			r.mu.Unlock()
		}()
		select {
		case r.candidates.dials <- struct{}{}:
			defer func() { <-r.candidates.dials }()
		case <-r.ctx.Done():
			return
		}
		ctx, cancel := context.WithTimeout(r.ctx, candidateTimeout)
		defer cancel()
		if err := r.connectAndAuthenticate(ctx, ai); err != nil {
			log.Debugw("candidate not authenticated", "realm", r.name, "peer", p, "err", err)
		}
	})
}

func (r *Realm) connectAndAuthenticate(ctx context.Context, ai peer.AddrInfo) error {
	if err := r.svc.deps.Host.Connect(ctx, ai); err != nil {
		return fmt.Errorf("realm %q: connect to %s: %w", r.name, ai.ID, err)
	}
	return r.authenticate(ctx, ai.ID)
}
