package main

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/debugapi"
)

// The tables of realmnet inspect and realmnet doctor: text/tabwriter
// columns, two spaces apart, with human units. Each printer takes now, the
// time relative times are measured from, so that tests can fix it.

// table is a tabwriter table whose lines start with indent.
type table struct {
	w      *tabwriter.Writer
	indent string
	header []string
	rows   int
}

// newTable returns a table of the columns header, printed to out.
func newTable(out io.Writer, indent string, header ...string) *table {
	return &table{w: tabwriter.NewWriter(out, 0, 0, 2, ' ', 0), indent: indent, header: header}
}

// row adds a row; the header goes first, before the first row. Every cell
// goes through cell: data from the node (addresses, errors a remote peer
// may have chosen) never breaks the table or reaches the terminal as
// control characters.
func (t *table) row(cells ...string) {
	if t.rows == 0 {
		fmt.Fprintln(t.w, t.indent+strings.Join(t.header, "\t"))
	}
	t.rows++
	for i, c := range cells {
		cells[i] = cell(c)
	}
	fmt.Fprintln(t.w, t.indent+strings.Join(cells, "\t"))
}

// flush prints the table; a table without rows prints "(none)".
func (t *table) flush() error {
	if t.rows == 0 {
		fmt.Fprintln(t.w, t.indent+"(none)")
	}
	return t.w.Flush()
}

// peerIDs shortens peer IDs for tables, unless wide.
type peerIDs struct{ wide bool }

// show returns id, shortened unless wide; "-" for none.
func (p peerIDs) show(id string) string {
	switch {
	case id == "":
		return "-"
	case p.wide:
		return id
	}
	return shortPeerID(id)
}

// shortPeerID shortens a peer ID to its first 8 and last 5 characters,
// "12D3KooW…XyZ12": the prefix says it is a peer ID (and which key type),
// the suffix tells peers apart. IDs of 14 characters or fewer are kept.
func shortPeerID(id string) string {
	if len(id) <= 14 {
		return id
	}
	return id[:8] + "…" + id[len(id)-5:]
}

// formatRTT formats a round-trip time in milliseconds, one decimal; "-"
// when not measured (0).
func formatRTT(ms float64) string {
	if ms <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f ms", ms)
}

// formatElapsed formats how long something took, given in milliseconds:
// "3.3 ms" below a second, "5.0 s" from a second on.
func formatElapsed(ms float64) string {
	if ms >= 1000 {
		return fmt.Sprintf("%.1f s", ms/1000)
	}
	return fmt.Sprintf("%.1f ms", ms)
}

// formatLoss formats a loss fraction in [0, 1] as a percentage.
func formatLoss(loss float64) string { return fmt.Sprintf("%.1f%%", 100*loss) }

// formatQuality formats a quality score in [0, 1].
func formatQuality(quality float64) string { return fmt.Sprintf("%.2f", quality) }

// formatBytes formats a byte count in B, KiB, MiB or GiB, one decimal.
func formatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	value, suffix := float64(n)/unit, "KiB"
	for _, next := range []string{"MiB", "GiB"} {
		if value < unit {
			break
		}
		value, suffix = value/unit, next
	}
	return fmt.Sprintf("%.1f %s", value, suffix)
}

// formatAgo formats t relative to now: "3s ago", "4m12s ago", or "in 12s"
// for a time to come; "-" for the zero time.
func formatAgo(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	if d := now.Sub(t); d < 0 {
		return "in " + formatAge(-d)
	}
	return formatAge(now.Sub(t)) + " ago"
}

// formatAge formats d in its two largest units, rounded down: "0s",
// "12s", "4m12s", "3h04m", "2d03h".
func formatAge(d time.Duration) string {
	seconds := int64(d / time.Second)
	switch {
	case seconds < 60:
		return fmt.Sprintf("%ds", seconds)
	case seconds < 3600:
		return fmt.Sprintf("%dm%02ds", seconds/60, seconds%60)
	case seconds < 86400:
		return fmt.Sprintf("%dh%02dm", seconds/3600, seconds%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", seconds/86400, seconds%86400/3600)
}

// fillBarWidth is the number of cells of a pool's fill bar.
const fillBarWidth = 10

// fillBar draws size against high water, "[#####.....]", one '#' per tenth
// rounded down (a pool at or above its high water is full); all dots when
// the pool has no high water.
func fillBar(size, high int) string {
	filled := 0
	if high > 0 {
		filled = min(max(size, 0)*fillBarWidth/high, fillBarWidth)
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat(".", fillBarWidth-filled) + "]"
}

// orNone joins values with ", ", or returns "-" when there are none.
func orNone(values []string) string {
	if len(values) == 0 {
		return "-"
	}
	return strings.Join(values, ", ")
}

// yesNo formats a boolean.
func yesNo(value bool) string {
	if value {
		return "yes"
	}
	return "no"
}

// printNode prints the node's view as "key: value" lines.
func printNode(out io.Writer, view debugapi.NodeView) error {
	w := tabwriter.NewWriter(out, 0, 0, 1, ' ', 0)
	line := func(key, value string) { fmt.Fprintf(w, "%s:\t%s\n", key, value) }
	line("id", view.ID)
	line("version", view.Version)
	line("uptime", formatAge(time.Duration(view.UptimeSeconds*float64(time.Second))))
	line("peers", fmt.Sprint(view.Peers))
	line("connections", fmt.Sprint(view.Conns))
	line("streams", fmt.Sprint(view.Streams))
	line("reachability", view.Reachability)
	// addrs prints one address a line, the key on the first.
	addrs := func(key string, values []string) {
		if len(values) == 0 {
			line(key, "-")
		}
		for index, value := range values {
			if index == 0 {
				line(key, value)
			} else {
				fmt.Fprintf(w, "\t%s\n", value)
			}
		}
	}
	addrs("listen addrs", view.ListenAddrs)
	addrs("addrs", view.Addrs)
	return w.Flush()
}

// printPeers prints the peers table, by peer ID.
func printPeers(out io.Writer, peers []debugapi.PeerView, ids peerIDs) error {
	peers = slices.SortedFunc(slices.Values(peers), func(x, y debugapi.PeerView) int { return strings.Compare(x.ID, y.ID) })
	t := newTable(out, "", "PEER", "CONNECTEDNESS", "PATHS", "RTT", "REALMS", "POOLS", "BREAKER", "QUALITY")
	for _, p := range peers {
		pools := make([]string, 0, len(p.Pools))
		for _, pool := range p.Pools {
			pools = append(pools, string(pool))
		}
		t.row(ids.show(p.ID), p.Connectedness, fmt.Sprint(p.Paths), formatRTT(p.SelectedRTTMs),
			orNone(p.Realms), orNone(pools), string(p.Health.Breaker), formatQuality(p.Health.Quality))
	}
	return t.flush()
}

// printPaths prints the paths table, by peer, the selected path first, then
// by opening time; SEL is "*" on the path carrying the peer's new streams,
// "-" on the others.
func printPaths(out io.Writer, indent string, paths []debugapi.PathView, ids peerIDs) error {
	paths = slices.SortedFunc(slices.Values(paths), func(x, y debugapi.PathView) int {
		return cmp.Or(strings.Compare(x.Peer, y.Peer), compareTrueFirst(x.Selected, y.Selected),
			x.Opened.Compare(y.Opened), strings.Compare(x.ConnID, y.ConnID))
	})
	t := newTable(out, indent, "PEER", "CONN", "STATE", "TIER", "DIR", "SEL", "SRTT", "LOSS", "STREAMS", "SENT", "RECEIVED", "REMOTE")
	for _, p := range paths {
		selected := "-"
		if p.Selected {
			selected = "*"
		}
		t.row(ids.show(p.Peer), p.ConnID, p.State, string(p.Tier), string(p.Direction), selected,
			formatRTT(p.SmoothedRTTMs), formatLoss(p.Loss), fmt.Sprint(p.OpenStreams),
			formatBytes(p.BytesSent), formatBytes(p.BytesReceived), p.Remote)
	}
	return t.flush()
}

// compareTrueFirst orders true before false.
func compareTrueFirst(x, y bool) int {
	switch {
	case x == y:
		return 0
	case x:
		return -1
	}
	return 1
}

// poolOrder orders pools: global, unassigned, then the realms' by name.
func poolOrder(x, y debugapi.PoolView) int {
	rank := func(pool core.Pool) int {
		switch pool {
		case core.PoolGlobal:
			return 0
		case core.PoolUnassigned:
			return 1
		}
		return 2
	}
	return cmp.Or(cmp.Compare(rank(x.Name), rank(y.Name)), strings.Compare(string(x.Name), string(y.Name)))
}

// printPools prints the pools table: global, unassigned, then the realms'.
func printPools(out io.Writer, pools []debugapi.PoolView) error {
	pools = slices.SortedFunc(slices.Values(pools), poolOrder)
	t := newTable(out, "", "POOL", "SIZE", "LOW", "HIGH", "FILL", "TRIMMED", "REFUSED")
	for _, p := range pools {
		t.row(string(p.Name), fmt.Sprint(p.Size), fmt.Sprint(p.LowWater), fmt.Sprint(p.HighWater),
			fillBar(p.Size, p.HighWater), fmt.Sprint(p.Trimmed), fmt.Sprint(p.Refused))
	}
	return t.flush()
}

// printRealms prints one row per member of each realm, by realm name; a
// realm without members has one row with "-".
func printRealms(out io.Writer, realms []debugapi.RealmView, ids peerIDs, now time.Time) error {
	realms = slices.SortedFunc(slices.Values(realms), func(x, y debugapi.RealmView) int { return strings.Compare(x.Name, y.Name) })
	t := newTable(out, "", "REALM", "MEMBER", "SINCE", "PATHS")
	for _, r := range realms {
		if len(r.Members) == 0 {
			t.row(r.Name, "-", "-", "-")
		}
		members := slices.SortedFunc(slices.Values(r.Members), func(x, y debugapi.MemberView) int { return strings.Compare(x.Peer, y.Peer) })
		for _, m := range members {
			t.row(r.Name, ids.show(m.Peer), formatAgo(m.Since, now), fmt.Sprint(m.Paths))
		}
	}
	return t.flush()
}

// printEvents prints the events, oldest first (the API's order).
func printEvents(out io.Writer, events []debugapi.EventView, ids peerIDs, now time.Time) error {
	t := newTable(out, "", "TIME", "TYPE", "PEER", "TEXT")
	for _, e := range events {
		t.row(formatAgo(e.At, now), e.Type, ids.show(e.Peer), cell(e.Text))
	}
	return t.flush()
}

// printHealth prints the peers' health, best quality first (the API's
// order).
func printHealth(out io.Writer, indent string, health []debugapi.PeerHealthView, ids peerIDs, now time.Time) error {
	t := newTable(out, indent, "PEER", "BREAKER", "OPEN UNTIL", "QUALITY", "FAILURES")
	for _, h := range health {
		openUntil := "-"
		if h.OpenUntil != nil {
			openUntil = formatAgo(*h.OpenUntil, now)
		}
		t.row(ids.show(h.Peer), string(h.Breaker), openUntil, formatQuality(h.Quality), fmt.Sprint(h.RecentFailures))
	}
	return t.flush()
}

// orDash returns value, or "-" when it is empty.
func orDash(value string) string {
	if value == "" {
		return "-"
	}
	return value
}

// cell makes text fit one table cell: the lines of a multi-line text (a
// dial error lists one line per address) joined with "; ", tabs, which
// would split the cell, turned into spaces, and white space at the ends
// dropped.
func cell(text string) string {
	lines := strings.FieldsFunc(text, func(r rune) bool { return r == '\n' || r == '\r' })
	text = strings.TrimSpace(strings.ReplaceAll(strings.Join(lines, "; "), "\t", " "))
	// Other control characters (terminal escape sequences in an address
	// or an error a remote peer chose) are shown escaped, never sent to
	// the terminal.
	if strings.ContainsFunc(text, unicode.IsControl) {
		q := strconv.Quote(text)
		text = q[1 : len(q)-1]
	}
	return text
}
