package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"

	"github.com/realmnet/realmnet/core"
)

// The demo's realms. Node 0 joins both; the other nodes alternate, odd
// nodes in the first, even nodes in the second, so that with three nodes or
// more each realm has members the other realm does not have.
var demoRealmNames = []string{"blue", "green"}

const (
	// realmPSKSize is the size of the random pre-shared key each realm gets
	// for one demo run.
	realmPSKSize = 32
	// realmMemberWaitTimeout bounds the wait for every member of every
	// realm to have authenticated every other member.
	realmMemberWaitTimeout = 10 * time.Second
	// realmEchoProtocol is the echo protocol served inside every realm.
	realmEchoProtocol = protocol.ID("/realmnet/demo/realm-echo/1.0.0")
)

// demoRealm is one of the demo's realms.
type demoRealm struct {
	name string
	// members are the indexes of the nodes that joined the realm, ascending.
	members []int
	// joined holds each member's *realm.Realm, by node index.
	joined map[int]*realm.Realm
}

// id is the realm's ID: the same on every member (it is derived from the
// name and the PSK), the name of its connection sub-pool.
func (r *demoRealm) id() core.RealmID { return r.joined[r.members[0]].ID() }

// has reports whether node index is a member.
func (r *demoRealm) has(index int) bool { return slices.Contains(r.members, index) }

// isolationCheck is one attempt to open a realm stream to a node outside
// the realm.
type isolationCheck struct {
	realm          string
	sender, target int
	// err is the error NewStream returned (realm.ErrNotMember).
	err error
	// unknownRealmHellos is how many handshakes the target refused as
	// naming none of its realms during the attempt.
	unknownRealmHellos uint64
}

// realmIndexesOf returns the indexes in demoRealmNames of the realms node
// index joins.
func realmIndexesOf(index int) []int {
	switch {
	case index == 0:
		return []int{0, 1}
	case index%2 == 1:
		return []int{0}
	}
	return []int{1}
}

// joinRealms makes every node join its realms, each realm with a PSK drawn
// at random for this run, and serve the realm echo protocol in each. No
// member is given any address: the nodes authenticate the peers they are
// connected to and look for the others through the DHT (the rendezvous
// provider record) and member exchange.
func (d *demo) joinRealms(ctx context.Context) error {
	psks := make([][]byte, len(demoRealmNames))
	d.realms = make([]*demoRealm, len(demoRealmNames))
	for realmIndex, name := range demoRealmNames {
		psks[realmIndex] = make([]byte, realmPSKSize)
		rand.Read(psks[realmIndex])
		d.realms[realmIndex] = &demoRealm{name: name, joined: make(map[int]*realm.Realm)}
	}
	for index, demoNode := range d.nodes {
		for _, realmIndex := range realmIndexesOf(index) {
			dr := d.realms[realmIndex]
			joined, err := demoNode.JoinRealm(ctx, dr.name, realm.PSK(psks[realmIndex]),
				realm.StreamHandler(realmEchoProtocol, serveEcho))
			if err != nil {
				return fmt.Errorf("node %d joining realm %s: %w", index, dr.name, err)
			}
			dr.members = append(dr.members, index)
			dr.joined[index] = joined
		}
	}
	descriptions := make([]string, len(d.realms))
	for realmIndex, dr := range d.realms {
		descriptions[realmIndex] = fmt.Sprintf("%s (nodes %s)", dr.name, formatIndexes(dr.members))
	}
	d.progressf("joined realms %s, each with a random PSK", strings.Join(descriptions, " and "))
	return nil
}

// waitForRealmMembers waits, at most realmMemberWaitTimeout, until every
// member of every realm has authenticated every other member, then checks
// that no realm lists a node that did not join it.
func (d *demo) waitForRealmMembers(ctx context.Context) error {
	begin := time.Now()
	waitCtx, cancel := context.WithTimeout(ctx, realmMemberWaitTimeout)
	defer cancel()
	for _, dr := range d.realms {
		for _, index := range dr.members {
			joined := dr.joined[index]
			if err := joined.WaitMembers(waitCtx, len(dr.members)-1); err != nil {
				if ctxErr := ctx.Err(); ctxErr != nil {
					return fmt.Errorf("wait for the members of realm %s: %w", dr.name, ctxErr)
				}
				return fmt.Errorf("realm %s: node %d has members %s after %s, want nodes %s: %w",
					dr.name, index, d.describeMembers(joined), realmMemberWaitTimeout,
					formatIndexes(without(dr.members, index)), err)
			}
		}
	}
	memberships := 0
	for _, dr := range d.realms {
		for _, index := range dr.members {
			want := without(dr.members, index)
			got := d.memberIndexes(dr.joined[index])
			if !slices.Equal(got, want) {
				return fmt.Errorf("realm %s: node %d lists members %s, want nodes %s",
					dr.name, index, d.describeMembers(dr.joined[index]), formatIndexes(want))
			}
			memberships += len(got)
		}
	}
	d.progressf("realm members: every member authenticated every other member (%d memberships) in %s",
		memberships, formatDuration(time.Since(begin)))
	return nil
}

// realmEcho echoes over a realm stream between every ordered pair of
// members of each realm.
func (d *demo) realmEcho(ctx context.Context) error {
	d.realmEchoRoundTrips = nil
	for _, dr := range d.realms {
		for _, senderIndex := range dr.members {
			sender := dr.joined[senderIndex]
			for _, receiverIndex := range dr.members {
				if receiverIndex == senderIndex {
					continue
				}
				receiver := d.nodes[receiverIndex].ID()
				roundTrip, err := echoOver(ctx, func(ctx context.Context) (network.Stream, error) {
					return sender.NewStream(ctx, receiver, realmEchoProtocol)
				})
				if err != nil {
					return fmt.Errorf("realm %s: echo from node %d to node %d (%s): %w",
						dr.name, senderIndex, receiverIndex, shortID(receiver), err)
				}
				d.realmEchoRoundTrips = append(d.realmEchoRoundTrips, roundTrip)
			}
		}
	}
	d.progressf("realm echo %d/%d", len(d.realmEchoRoundTrips), len(d.realmEchoRoundTrips))
	return nil
}

// checkIsolation checks, for each realm, that a member cannot open a realm
// stream to a node outside the realm — the attempt must fail with
// realm.ErrNotMember and leave the node outside — and that every node's
// sub-pool of a realm holds only connections to the realm's members.
func (d *demo) checkIsolation(ctx context.Context) error {
	d.isolation = nil
	for realmIndex, dr := range d.realms {
		other := d.realms[1-realmIndex]
		sender, target, ok := isolationPair(dr, other, len(d.nodes))
		if !ok {
			d.progressf("isolation check of realm %s skipped: every node is a member", dr.name)
			continue
		}
		check, err := d.tryOutsider(ctx, dr, sender, target)
		if err != nil {
			return fmt.Errorf("isolation of realm %s: %w", dr.name, err)
		}
		d.isolation = append(d.isolation, check)
	}
	for _, dr := range d.realms {
		id := core.RealmID(dr.id())
		for _, index := range dr.members {
			for _, c := range d.nodes[index].RealmConnections(id) {
				if remote := c.RemotePeer(); !dr.has(d.indexOf(remote)) {
					return fmt.Errorf("isolation of realm %s: node %d's sub-pool holds a connection to %s, not a member",
						dr.name, index, d.describePeer(remote))
				}
			}
		}
	}
	d.progressf("isolation: %d refused realm streams to non-members, sub-pools hold members only", len(d.isolation))
	return nil
}

// isolationPair picks a member of r (one that is not in other when there is
// one) and a node outside r (one in other only when there is one).
func isolationPair(r, other *demoRealm, nodeCount int) (sender, target int, ok bool) {
	sender = r.members[0]
	for _, index := range r.members {
		if !other.has(index) {
			sender = index
			break
		}
	}
	for index := range nodeCount {
		if !r.has(index) {
			return sender, index, true
		}
	}
	return 0, 0, false
}

// tryOutsider opens a realm stream of r from member sender to target, a
// node outside r, and returns the check when it failed as it must.
func (d *demo) tryOutsider(ctx context.Context, r *demoRealm, sender, target int) (isolationCheck, error) {
	check := isolationCheck{realm: r.name, sender: sender, target: target}
	senderRealm := r.joined[sender]
	targetNode := d.nodes[target]
	before := targetNode.RealmStats().AuthUnknownRealm
	streamCtx, cancel := context.WithTimeout(ctx, echoTimeout)
	defer cancel()
	stream, err := senderRealm.NewStream(streamCtx, targetNode.ID(), realmEchoProtocol)
	if err == nil {
		stream.Reset()
		return check, fmt.Errorf("node %d opened a realm stream to node %d, which is not a member", sender, target)
	}
	if !errors.Is(err, realm.ErrNotMember) {
		return check, fmt.Errorf("node %d's realm stream to node %d failed with %w, want realm.ErrNotMember", sender, target, err)
	}
	if slices.Contains(senderRealm.Members(), targetNode.ID()) {
		return check, fmt.Errorf("node %d lists node %d as a member after a refused stream", sender, target)
	}
	check.err = err
	check.unknownRealmHellos = targetNode.RealmStats().AuthUnknownRealm - before
	return check, nil
}

// reportRealms prints the realms: members and sub-pools per node, the realm
// echo figures, the isolation checks and the realm service's counters.
func (d *demo) reportRealms() {
	fmt.Fprintln(d.out)
	for _, dr := range d.realms {
		fmt.Fprintf(d.out, "realm %s: ID %s, members: nodes %s\n", dr.name, dr.id(), formatIndexes(dr.members))
	}
	fmt.Fprintln(d.out)
	table := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(table, "NODE\tREALM\tMEMBERS\tSUB-POOL\tREALM CONNECTIONS")
	for index, demoNode := range d.nodes {
		pools := demoNode.ConnManager().Stats().Realms
		for _, dr := range d.realms {
			joined, ok := dr.joined[index]
			if !ok {
				continue
			}
			id := core.RealmID(joined.ID())
			fmt.Fprintf(table, "%d\t%s\t%s\t%s\t%d\n", index, dr.name, d.describeMembers(joined),
				formatPool(pools[id]), len(demoNode.RealmConnections(id)))
		}
	}
	table.Flush()
	fmt.Fprintln(d.out)

	sorted := slices.Clone(d.realmEchoRoundTrips)
	slices.Sort(sorted)
	fmt.Fprintf(d.out, "realm echo: %d exchanges of %d bytes over realm streams, round trip p50 %s, p99 %s\n",
		len(sorted), echoPayloadSize,
		formatDuration(nearestRankPercentile(sorted, 50)), formatDuration(nearestRankPercentile(sorted, 99)))
	for _, check := range d.isolation {
		fmt.Fprintf(d.out, "isolation: node %d → node %d over realm %s refused with realm.ErrNotMember "+
			"(node %d refused %d handshake(s) naming none of its realms)\n",
			check.sender, check.target, check.realm, check.target, check.unknownRealmHellos)
	}
	fmt.Fprintln(d.out)

	table = tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(table, "NODE\tAUTH OK\tUNKNOWN REALM\tREPLAYED\tBAD MAC\tBAD FRAME\tAUTH REFUSED\t"+
		"STREAMS REFUSED\tNO HANDLER\tRECORDS REJECTED\tGOODBYES REJECTED")
	for index, demoNode := range d.nodes {
		s := demoNode.RealmStats()
		fmt.Fprintf(table, "%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", index,
			s.AuthSucceeded, s.AuthUnknownRealm, s.AuthReplayed, s.AuthBadMAC, s.AuthBadFrame, s.AuthRefused,
			s.StreamsRefused, s.StreamsNoHandler, s.RecordsRejected, s.GoodbyesRejected)
	}
	table.Flush()
	fmt.Fprintln(d.out, "(a handshake refused as naming none of the responder's realms is UNKNOWN REALM at the "+
		"responder and BAD FRAME at the initiator, which only sees the stream reset)")
}

// indexOf returns the index of the node with peer ID p, or -1.
func (d *demo) indexOf(p peer.ID) int {
	return slices.IndexFunc(d.nodes, func(n *node.Node) bool { return n.ID() == p })
}

// memberIndexes returns the node indexes of r's members, ascending; a
// member that is not one of the demo's nodes is -1.
func (d *demo) memberIndexes(r *realm.Realm) []int {
	members := r.Members()
	indexes := make([]int, len(members))
	for i, p := range members {
		indexes[i] = d.indexOf(p)
	}
	slices.Sort(indexes)
	return indexes
}

// describeMembers lists r's members by node index ("1, 3"), or "none".
func (d *demo) describeMembers(r *realm.Realm) string {
	members := r.Members()
	if len(members) == 0 {
		return "none"
	}
	names := make([]string, len(members))
	for i, p := range members {
		names[i] = d.describePeer(p)
	}
	slices.SortFunc(names, func(a, b string) int {
		ai, aErr := strconv.Atoi(a)
		bi, bErr := strconv.Atoi(b)
		if aErr == nil && bErr == nil {
			return ai - bi
		}
		return strings.Compare(a, b)
	})
	return strings.Join(names, ", ")
}

// describePeer names p by its node index, or by its short ID when it is not
// one of the demo's nodes.
func (d *demo) describePeer(p peer.ID) string {
	if index := d.indexOf(p); index >= 0 {
		return strconv.Itoa(index)
	}
	return shortID(p)
}

// formatIndexes formats node indexes: "0, 1, 3", or "none".
func formatIndexes(indexes []int) string {
	if len(indexes) == 0 {
		return "none"
	}
	parts := make([]string, len(indexes))
	for i, index := range indexes {
		parts[i] = strconv.Itoa(index)
	}
	return strings.Join(parts, ", ")
}

// without returns indexes without index.
func without(indexes []int, index int) []int {
	return slices.DeleteFunc(slices.Clone(indexes), func(i int) bool { return i == index })
}
