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
					r.candidate(ai, sourceKnown)
				}
			}
			// A member exchange with one member, chosen at random: the
			// exchange at a handshake misses the members its peer admits
			// later, and a member learnt there whose dial failed is not
			// offered again; this one offers them again, and the peers an
			// earlier exchange named but did not dial (at most
			// maxDialsPerExchange are dialed per exchange).
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
			r.candidate(ai, sourceKnown)
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
func (n mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) { n.r.candidate(ai, sourceKnown) }

// wantsMore reports whether the realm looks for more members: fewer
// authenticated members than its sub-pool's HighWater.
func (r *Realm) wantsMore() bool {
	high := r.svc.deps.Backend.RealmPoolLimits(r.keys.id).HighWater
	return r.authenticatedCount() < high
}

// candidate connects to a possible member and authenticates, in the
// background; it reports whether it started. Each source has its own
// slots and dials (maxCandidates and maxCandidateDials; for exchange
// candidates maxExchangeCandidates and maxExchangeDials), and an exchange
// candidate that failed waits for its backoff (candidates.go).
func (r *Realm) candidate(ai peer.AddrInfo, src candidateSource) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.candidateLocked(ai, src)
}

func (r *Realm) candidateLocked(ai peer.AddrInfo, src candidateSource) bool {
	p := ai.ID
	if r.left || p == r.svc.deps.Host.ID() || p == "" {
		return false
	}
	if _, busy := r.candidates.trying[p]; busy || r.handshakes.pending[p] != nil || (r.membership.members[p] != nil && r.membership.members[p].authenticated) {
		return false
	}
	dials := r.candidates.dials
	switch src {
	case sourceExchange:
		if r.candidates.exchangeTrying >= maxExchangeCandidates {
			return false // a later exchange names it again
		}
		if f, ok := r.candidates.failed.Peek(p); ok && r.svc.deps.Clock.Now().Before(f.until) {
			return false
		}
		r.candidates.exchangeTrying++
		dials = r.candidates.exchangeDials
	default:
		if len(r.candidates.trying)-r.candidates.exchangeTrying >= maxCandidates {
			return false // discovery offers it again later
		}
	}
	if len(ai.Addrs) > maxCandidateAddrs {
		ai.Addrs = ai.Addrs[:maxCandidateAddrs]
	}
	r.candidates.trying[p] = src
	r.spawnLocked(func() {
		defer func() {
			r.mu.Lock()
			delete(r.candidates.trying, p)
			if src == sourceExchange {
				r.candidates.exchangeTrying--
			}
			r.mu.Unlock()
		}()
		select {
		case dials <- struct{}{}:
			defer func() { <-dials }()
		case <-r.ctx.Done():
			return
		}
		ctx, cancel := context.WithTimeout(r.ctx, candidateTimeout)
		defer cancel()
		err := r.connectAndAuthenticate(ctx, ai)
		if err != nil {
			log.Debugw("candidate not authenticated", "realm", r.name, "peer", p, "err", err)
		}
		if src == sourceExchange && err != nil && r.ctx.Err() == nil {
			f, _ := r.candidates.failed.Peek(p)
			f.failures++
			f.until = r.svc.deps.Clock.Now().Add(retryAfter(f.failures))
			r.candidates.failed.Add(p, f)
		}
	})
	return true
}

// connectAndAuthenticate connects to ai — its addresses go with the dial
// (go-libp2p's Host.Connect keeps them for peerstore.TempAddrTTL, 2 min)
// — and authenticates.
func (r *Realm) connectAndAuthenticate(ctx context.Context, ai peer.AddrInfo) error {
	if err := r.svc.deps.Host.Connect(ctx, ai); err != nil {
		return fmt.Errorf("realm %q: connect to %s: %w", r.name, ai.ID, err)
	}
	return r.authenticate(ctx, ai.ID)
}
