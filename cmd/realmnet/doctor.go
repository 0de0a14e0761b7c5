package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"

	"github.com/realmnet/realmnet/debugapi"
)

// doctorTimeout is doctor's default --timeout. The node's diagnosis of a
// peer it is not connected to looks the peer up in the DHT (up to 5 s) and
// dials up to 8 of its addresses one by one, each bounded by the node's
// per-address dial timeout (5 s by default): 45 s at worst, plus margin.
const doctorTimeout = 60 * time.Second

// Exit statuses of `realmnet doctor`, in grep's manner: 0 and 1 answer the
// question (is the peer reachable?), 2 says there is no answer.
const (
	// doctorReachable: the verdict starts with "connected" or "reachable".
	doctorReachable = 0
	// doctorUnreachable: any other verdict (blocked, unknown peer,
	// unreachable, refused, not connected).
	doctorUnreachable = 1
	// doctorFailed: no diagnosis: a usage error, a bad peer ID, the
	// endpoint unreachable or answering an error.
	doctorFailed = 2
)

// doctorLong is the help of `realmnet doctor`.
const doctorLong = `doctor asks a running node why it can or cannot reach PEER (a peer ID)
and prints the node's diagnosis (GET /v1/doctor/PEER of its debug
endpoint). When the node is not connected to PEER, it looks PEER up in the
DHT and dials its known addresses one by one to see what happens, which may
take tens of seconds (--timeout).

The first line is the verdict:

    verdict: connected; 1 path(s), selected /ip4/192.0.2.7/udp/4001/quic-v1 at 12.3 ms RTT (active)

then the peer's full ID, whether the node knows it and its connectedness,
then one section each:

    addresses       ADDR SOURCES (peerstore, connection, dht, ...)
    dials           TIME ADDR DURATION RESULT (ok, or the dial's error)
    decisions       STAGE HOOK OUTCOME REASON (gater, hooks, admission)
    pool refusals   TIME POOL REASON
    realms          REALM MEMBER STATE, for each realm the node has joined
    paths           as realmnet inspect paths
    health          BREAKER OPEN UNTIL QUALITY FAILURES

With --json it prints the report as indented JSON instead (debugapi's
DoctorReport).

` + endpointHelp + `

Exit status: 0 when the verdict starts with "connected" or "reachable"; 1
for any other verdict (the report is printed all the same); 2 when there is
no diagnosis: a usage error, PEER not a peer ID (checked before any
request), the endpoint unreachable or answering an error.`

// newDoctorCommand returns `realmnet doctor`, which prints a node's
// diagnosis of one peer.
func newDoctorCommand(globals *globalOptions) *cobra.Command {
	options := &endpointOptions{}
	command := &cobra.Command{
		Use:   "doctor [--addr URL] [--token-file FILE] PEER",
		Short: "Print a running node's diagnosis of why it can or cannot reach PEER",
		Long:  doctorLong,
		Args:  cobra.ExactArgs(1),
		Annotations: map[string]string{
			errorStatusAnnotation: fmt.Sprint(doctorFailed),
		},
		RunE: func(command *cobra.Command, args []string) error {
			p, err := peer.Decode(args[0])
			if err != nil {
				return fmt.Errorf("doctor: %q is not a peer ID: %w", args[0], err)
			}
			e, err := options.connect(command)
			if err != nil {
				return err
			}
			report, err := call(command.Context(), e, func(ctx context.Context) (debugapi.DoctorReport, error) {
				return e.client.Doctor(ctx, p.String())
			})
			if err != nil {
				return err
			}
			out := command.OutOrStdout()
			if globals.json {
				err = printIndentedJSON(out, report)
			} else {
				err = printDoctorReport(out, report, peerIDs{wide: options.wide}, time.Now())
			}
			if err != nil {
				return err
			}
			if !verdictIsReachable(report.Verdict) {
				// The report said why; main prints nothing more.
				return &exitStatusError{status: doctorUnreachable}
			}
			return nil
		},
	}
	options.addFlags(command.Flags(), doctorTimeout)
	return supportsJSON(command)
}

// verdictIsReachable reports whether a doctor verdict says the node
// reaches the peer: it is connected, or dialed it during the diagnosis.
func verdictIsReachable(verdict string) bool {
	return strings.HasPrefix(verdict, "connected") || strings.HasPrefix(verdict, "reachable")
}

// printDoctorReport prints report as text: the verdict, the peer, then one
// section each for addresses, dials, decisions, pool refusals, realms,
// paths and health.
func printDoctorReport(out io.Writer, report debugapi.DoctorReport, ids peerIDs, now time.Time) error {
	fmt.Fprintf(out, "verdict: %s\n", cell(report.Verdict))
	fmt.Fprintf(out, "peer: %s\nknown: %s\nconnectedness: %s\n", cell(report.Peer), yesNo(report.Known), cell(report.Connectedness))

	const indent = "  "
	section := func(name string) { fmt.Fprintf(out, "\n%s:\n", name) }

	section("addresses")
	addresses := newTable(out, indent, "ADDR", "SOURCES")
	for _, a := range report.Addresses {
		addresses.row(a.Addr, orNone(a.Sources))
	}
	if err := addresses.flush(); err != nil {
		return err
	}

	section("dials")
	dials := newTable(out, indent, "TIME", "ADDR", "DURATION", "RESULT")
	for _, d := range report.Dials {
		result := "ok"
		if d.Error != "" {
			result = cell(d.Error)
		}
		dials.row(formatAgo(d.At, now), d.Addr, formatElapsed(d.DurationMs), result)
	}
	if err := dials.flush(); err != nil {
		return err
	}

	section("decisions")
	decisions := newTable(out, indent, "STAGE", "HOOK", "OUTCOME", "REASON")
	for _, d := range report.Decisions {
		decisions.row(d.Stage, orDash(d.Hook), d.Outcome, orDash(cell(d.Reason)))
	}
	if err := decisions.flush(); err != nil {
		return err
	}

	section("pool refusals")
	refusals := newTable(out, indent, "TIME", "POOL", "REASON")
	for _, r := range report.PoolRefusals {
		refusals.row(formatAgo(r.At, now), string(r.Pool), string(r.Reason))
	}
	if err := refusals.flush(); err != nil {
		return err
	}

	section("realms")
	realms := newTable(out, indent, "REALM", "MEMBER", "STATE")
	for _, r := range report.Realms {
		realms.row(r.Realm, yesNo(r.Member), r.State)
	}
	if err := realms.flush(); err != nil {
		return err
	}

	section("paths")
	if err := printPaths(out, indent, report.Paths, ids); err != nil {
		return err
	}

	section("health")
	health := newTable(out, indent, "BREAKER", "OPEN UNTIL", "QUALITY", "FAILURES")
	if h := report.Health; h != nil {
		openUntil := "-"
		if h.OpenUntil != nil {
			openUntil = formatAgo(*h.OpenUntil, now)
		}
		health.row(string(h.Breaker), openUntil, formatQuality(h.Quality), fmt.Sprint(h.RecentFailures))
	}
	return health.flush()
}
