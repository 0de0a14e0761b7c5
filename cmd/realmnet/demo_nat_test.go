package main

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/realmnet/realmnet/internal/natlab"
)

// setBuildNATLab replaces buildNATLab for the test.
func setBuildNATLab(t *testing.T, build func(natlab.Topology) (*natlab.Lab, error)) {
	t.Helper()
	saved := buildNATLab
	buildNATLab = build
	t.Cleanup(func() { buildNATLab = saved })
}

// TestDemoNATWhereTheLabCannotBeBuilt: on a machine where the lab cannot
// be built, demo --nat exits with status 1 and says why (natlab's
// reason) and what the lab needs, on standard error; it prints no table.
func TestDemoNATWhereTheLabCannotBeBuilt(t *testing.T) {
	const reason = "nft is not on PATH, nor in /usr/sbin or /sbin (simulated)"
	setBuildNATLab(t, func(natlab.Topology) (*natlab.Lab, error) {
		return nil, fmt.Errorf("natlab: %w: %s", natlab.ErrUnavailable, reason)
	})
	stdout, stderr, status := executeStatus(t, "demo", "--nat")
	if status != 1 {
		t.Errorf("demo --nat exited with status %d, want 1; standard error:\n%s", status, stderr)
	}
	for _, want := range []string{
		"realmnet: demo --nat cannot run on this machine: natlab: the NAT lab cannot run here: " + reason + "\n",
		"Linux", "unprivileged user namespaces", "iproute2's ip", "nftables' nft", "apt-get install iproute2 nftables",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("standard error lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stdout, "PEER") || strings.Contains(stdout, "paths") {
		t.Errorf("demo --nat printed a table without a lab:\n%s", stdout)
	}
}

// TestDemoNATRefusesNodesAndMultipath: --nat runs its own four nodes, so
// --nodes and --multipath are refused by name, before the lab is built.
func TestDemoNATRefusesNodesAndMultipath(t *testing.T) {
	setBuildNATLab(t, func(natlab.Topology) (*natlab.Lab, error) {
		t.Error("demo --nat built the lab despite a flag it refuses")
		return nil, errors.New("not built")
	})
	for _, args := range [][]string{{"--nodes", "3"}, {"--multipath"}} {
		_, _, err := execute(t, append([]string{"demo", "--nat"}, args...)...)
		wantErrorNaming(t, "demo --nat "+strings.Join(args, " "), err, args[0], "--nat")
	}
}

// natDemoTimeout is the --timeout of TestDemoNATInTheLab. On a two-core
// machine the demo gets to its relayed path in about 1 s (5 s under
// -race); the direct path has opened 10 ms to 5 s later.
const natDemoTimeout = 60 * time.Second

// TestDemoNATInTheLab runs demo --nat in the NAT lab (skipped where the lab
// cannot be built, unless REALMNET_REQUIRE_NATLAB is set). The demo must
// get as far as the relayed path: the table of the four nodes, a's circuit
// address through the relay, and the first paths table, where b's path to
// a is relayed (outbound, through a /p2p-circuit address) and so is a's to
// b (inbound). Then either the upgrade happened, and the demo succeeded,
// printed a table where b's path to a is direct, to a's NAT mapping (its
// router's address, port 4001 preserved), and the time it took; or it did
// not, and the demo failed on the timeout of the wait for the direct path
// only, after printing the last table.
func TestDemoNATInTheLab(t *testing.T) {
	stdout, _, err := execute(t, "demo", "--nat", "--timeout", natDemoTimeout.String())
	skipWithoutNATLab(t, err)
	if err != nil {
		t.Fatalf("demo --nat: %v\noutput:\n%s", err, stdout)
	}
	t.Logf("demo --nat:\n%s", stdout)

	for host, addr := range map[string]string{"relay": "203.0.113.10", "bootstrap": "203.0.113.11", "a": "10.0.1.10", "b": "10.0.2.10"} {
		row := regexp.MustCompile(`(?m)^` + host + ` +12D3KooW\S+ +/ip4/` + regexp.QuoteMeta(addr) + `/udp/4001/quic-v1 `)
		if !row.MatchString(stdout) {
			t.Errorf("the table of nodes has no row for %s at %s", host, addr)
		}
	}
	if !regexp.MustCompile(`(?m)^a reserved a slot on the relay: /ip4/203\.0\.113\.10/udp/4001/quic-v1/p2p/12D3KooW\S+/p2p-circuit$`).MatchString(stdout) {
		t.Errorf("the output has no line with a's circuit address through the relay")
	}
	wantRelayedTable(t, stdout)
	wantPath(t, stdout, "paths once the direct path opened:", "b → a", "direct", "", "/ip4/203.0.113.100/udp/4001/quic-v1")
	m := upgradedLine.FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("the output does not say how long the upgrade took")
	}
	// Generous: the NAT lab's trials upgrade within 0.25 s; a first
	// attempt lost to the peer's DCUtR not being served yet is retried
	// as soon as identify announces it.
	if ms, _ := strconv.Atoi(m[1]); ms > 5000 {
		t.Errorf("the upgrade took %d ms; want 5 s at most", ms)
	}
}

// natGiveUpTimeout is the --timeout of TestDemoNATGivesUp, which it spends
// whole: the demo must reach its relayed path before it ends, which takes
// about 1 s on a two-core machine, 5 s under -race.
const natGiveUpTimeout = 10 * time.Second

// TestDemoNATGivesUp runs demo --nat in a lab where b's router drops
// every packet between b and a's public address (a blackhole), so that no
// direct path can open: the demo prints the relayed paths, waits until
// --timeout, prints the paths again and exits with status 1, saying that
// hole punching did not upgrade the relayed path.
func TestDemoNATGivesUp(t *testing.T) {
	setBuildNATLab(t, func(topo natlab.Topology) (*natlab.Lab, error) {
		lab, err := natlab.Build(topo)
		if err == nil {
			t.Cleanup(func() { _ = lab.Close() }) // if Blackhole fails the test; else the demo's Close
			lab.Blackhole(t, "r2", lab.Addr("b"), lab.Addr("r1"))
		}
		return lab, err
	})
	stdout, _, err := execute(t, "demo", "--nat", "--timeout", natGiveUpTimeout.String())
	skipWithoutNATLab(t, err)
	t.Logf("demo --nat with a blackhole:\n%s", stdout)
	want := "the demo did not finish within --timeout " + natGiveUpTimeout.String() + ": " + errNoDirectPath.Error() + " (context deadline exceeded)"
	if err == nil || err.Error() != want {
		t.Fatalf("demo --nat with a blackhole: %v, want %q", err, want)
	}
	wantRelayedTable(t, stdout)
	wantGaveUp(t, stdout)
}

// skipWithoutNATLab skips the test when err says that the NAT lab cannot
// be built here, or fails it when REALMNET_REQUIRE_NATLAB is set, as
// natlab.New does.
func skipWithoutNATLab(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, natlab.ErrUnavailable) {
		return
	}
	if os.Getenv(natlab.RequireEnv) != "" {
		t.Fatalf("%v; %s is set, so the NAT lab tests must run", err, natlab.RequireEnv)
	}
	t.Skipf("%v; skipping (set %s=1 to fail instead)", err, natlab.RequireEnv)
}

// upgradedLine is the demo's last line after an upgrade.
var upgradedLine = regexp.MustCompile(`(?m)^upgraded to a direct path in (\d+) ms \(from the opening of b's relayed connection to a to the opening of the direct one\)$`)

// wantRelayedTable fails the test unless the output's first paths table
// has b's relayed path to a, outbound through a /p2p-circuit address, and
// a's to b, inbound.
func wantRelayedTable(t *testing.T, output string) {
	t.Helper()
	const relayed = "paths when b connected to a through the relay:"
	wantPath(t, output, relayed, "b → a", "relayed", "outbound", "/p2p-circuit")
	wantPath(t, output, relayed, "a → b", "relayed", "inbound", "/p2p-circuit")
}

// wantGaveUp fails the test unless the output ends with the paths table of
// a demo that gave up, where b's path to a is still relayed and none is
// direct, and says nothing of an upgrade.
func wantGaveUp(t *testing.T, output string) {
	t.Helper()
	const gaveUp = "paths when the demo gave up:"
	wantPath(t, output, gaveUp, "b → a", "relayed", "outbound", "/p2p-circuit")
	if rows, _ := pathsTable(output, gaveUp, "b → a"); slices.ContainsFunc(rows, func(fields []string) bool { return fields[3] == "direct" }) {
		t.Errorf("the demo gave up with a direct path: %q", rows)
	}
	if upgradedLine.MatchString(output) {
		t.Errorf("the demo gave up, but says it upgraded")
	}
}

// wantPath fails the test unless the table of side ("b → a") after the
// line heading in output has a path of tier, in direction dir (any when
// ""), whose remote address ends with remote (for "/p2p-circuit") or
// starts with it (for an IP address).
func wantPath(t *testing.T, output, heading, side, tier, dir, remote string) {
	t.Helper()
	rows, ok := pathsTable(output, heading, side)
	if !ok {
		t.Errorf("the output has no table of %s's paths after %q", side, heading)
		return
	}
	for _, fields := range rows {
		// PEER CONN STATE TIER DIR SEL ...: the first six cells have no
		// spaces, and REMOTE, the last, has none either.
		end := fields[len(fields)-1]
		if fields[3] == tier && (dir == "" || fields[4] == dir) && (strings.HasSuffix(end, remote) || strings.HasPrefix(end, remote)) {
			return
		}
	}
	t.Errorf("after %q, %s has no %s %s path to %s…: %q", heading, side, tier, dir, remote, rows)
}

// pathsTable returns the fields of the rows of the paths table of side
// ("b → a (ID):" and the table, indented) that follows the line heading.
func pathsTable(output, heading, side string) ([][]string, bool) {
	_, rest, ok := strings.Cut(output, "\n"+heading+"\n")
	if !ok {
		return nil, false
	}
	_, rest, ok = strings.Cut(rest, side+" (")
	if !ok {
		return nil, false
	}
	lines := strings.Split(rest, "\n")[1:]
	if len(lines) == 0 {
		return nil, false
	}
	if header := strings.Fields(lines[0]); len(header) < 4 || header[3] != "TIER" {
		return nil, false
	}
	var rows [][]string
	for _, line := range lines[1:] {
		fields := strings.Fields(line)
		if !strings.HasPrefix(line, "  ") || len(fields) < 7 {
			break
		}
		rows = append(rows, fields)
	}
	return rows, len(rows) > 0
}
