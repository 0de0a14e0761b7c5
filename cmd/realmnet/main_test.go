package main

import (
	"bytes"
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDemoWithThreeNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), defaultDemoTimeout)
	defer cancel()
	var output bytes.Buffer
	peerIDs, err := runDemo(ctx, &output, demoOptions{nodes: 3, multipath: true})
	if err != nil {
		t.Fatalf("runDemo: %v\noutput:\n%s", err, output.String())
	}
	if len(peerIDs) != 3 {
		t.Fatalf("runDemo returned %d peer IDs, want 3", len(peerIDs))
	}
	summary := output.String()
	for index, peerID := range peerIDs {
		if !strings.Contains(summary, shortID(peerID)) {
			t.Errorf("summary lacks node %d's short peer ID %s:\n%s", index, shortID(peerID), summary)
		}
	}
	for _, want := range []string{"p50", "DHT lookups 6/6", "6 pairs, 6 answered by other nodes", "echo 6/6",
		// Realms: node 0 in both, node 1 in blue, node 2 in green.
		"realm blue: ID ", "members: nodes 0, 1\n", "realm green: ID ", "members: nodes 0, 2\n",
		"realm echo: 4 exchanges",
		"isolation: node 1 → node 2 over realm blue refused with realm.ErrNotMember",
		"isolation: node 2 → node 1 over realm green refused with realm.ErrNotMember",
		"AUTH OK", "UNKNOWN REALM",
	} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary lacks %q:\n%s", want, summary)
		}
	}
	// Members and sub-pools, per node and realm: each sub-pool holds the
	// member's connections (two paths or more per pair with --multipath).
	for _, prefix := range [][]string{{"0", "blue", "1"}, {"0", "green", "2"}, {"1", "blue", "0"}, {"2", "green", "0"}} {
		if !hasMemberRow(summary, prefix) {
			t.Errorf("summary lacks a row %q with a non-empty sub-pool:\n%s", prefix, summary)
		}
	}
}

// hasMemberRow reports whether a line of text is a row of the realm members
// table that starts with node, realm and members, with connections in the
// realm's sub-pool: "0  blue  1  2 (16/64)  2".
func hasMemberRow(text string, prefix []string) bool {
	for line := range strings.Lines(text) {
		fields := strings.Fields(line)
		if len(fields) != len(prefix)+3 || !slices.Equal(fields[:len(prefix)], prefix) {
			continue
		}
		pool, poolErr := strconv.Atoi(fields[len(prefix)])
		conns, connsErr := strconv.Atoi(fields[len(prefix)+2])
		return poolErr == nil && connsErr == nil && pool > 0 && conns > 0
	}
	return false
}

func TestRealmMembershipAndIsolationPairs(t *testing.T) {
	for _, test := range []struct {
		nodes       int
		blue, green []int
		blueCheck   []int // sender, target; nil: skipped
		greenCheck  []int
	}{
		{2, []int{0, 1}, []int{0}, nil, []int{0, 1}},
		{3, []int{0, 1}, []int{0, 2}, []int{1, 2}, []int{2, 1}},
		{5, []int{0, 1, 3}, []int{0, 2, 4}, []int{1, 2}, []int{2, 1}},
	} {
		realms := []*demoRealm{{name: "blue"}, {name: "green"}}
		for index := range test.nodes {
			for _, realmIndex := range realmIndexesOf(index) {
				realms[realmIndex].members = append(realms[realmIndex].members, index)
			}
		}
		if !slices.Equal(realms[0].members, test.blue) || !slices.Equal(realms[1].members, test.green) {
			t.Errorf("%d nodes: blue %v, green %v; want %v, %v", test.nodes,
				realms[0].members, realms[1].members, test.blue, test.green)
		}
		for realmIndex, want := range [][]int{test.blueCheck, test.greenCheck} {
			sender, target, ok := isolationPair(realms[realmIndex], realms[1-realmIndex], test.nodes)
			switch {
			case want == nil && ok:
				t.Errorf("%d nodes, realm %s: isolation check %d → %d, want none", test.nodes, realms[realmIndex].name, sender, target)
			case want != nil && (!ok || sender != want[0] || target != want[1]):
				t.Errorf("%d nodes, realm %s: isolation check %d → %d (%v), want %d → %d", test.nodes,
					realms[realmIndex].name, sender, target, ok, want[0], want[1])
			}
		}
	}
}

func TestDemoRejectsOneNode(t *testing.T) {
	command := newRootCommand()
	command.SetArgs([]string{"demo", "--nodes", "1"})
	var output bytes.Buffer
	command.SetOut(&output)
	command.SetErr(&output)
	err := command.Execute()
	if err == nil {
		t.Fatalf("demo --nodes 1 succeeded; output:\n%s", output.String())
	}
	if !strings.Contains(err.Error(), "--nodes 1") {
		t.Errorf("error %q does not name the value 1", err)
	}
}

func TestNearestRankPercentile(t *testing.T) {
	samples := make([]time.Duration, 100)
	for index := range samples {
		samples[index] = time.Duration(index+1) * time.Millisecond
	}
	for _, test := range []struct {
		percentile float64
		want       time.Duration
	}{
		{50, 50 * time.Millisecond},
		{99, 99 * time.Millisecond},
		{100, 100 * time.Millisecond},
		{0.5, 1 * time.Millisecond},
	} {
		if got := nearestRankPercentile(samples, test.percentile); got != test.want {
			t.Errorf("p%v of 1..100 ms = %s, want %s", test.percentile, got, test.want)
		}
	}
	if got := nearestRankPercentile(samples[:3], 50); got != 2*time.Millisecond {
		t.Errorf("p50 of 1, 2, 3 ms = %s, want 2ms", got)
	}
	if got := nearestRankPercentile(nil, 50); got != 0 {
		t.Errorf("p50 of no samples = %s, want 0", got)
	}
}
