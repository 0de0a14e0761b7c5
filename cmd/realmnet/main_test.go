package main

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/realmnet/realmnet/internal/testkit"
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

func TestIDPrintsTheSameIDTwice(t *testing.T) {
	identityFile := filepath.Join(t.TempDir(), "identity.key")
	printID := func() string {
		t.Helper()
		command := newRootCommand()
		command.SetArgs([]string{"id", "--identity", identityFile})
		var output bytes.Buffer
		command.SetOut(&output)
		command.SetErr(&output)
		if err := command.Execute(); err != nil {
			t.Fatalf("id --identity %s: %v", identityFile, err)
		}
		return strings.TrimSpace(output.String())
	}
	first := printID()
	if first == "" {
		t.Fatal("id printed nothing")
	}
	if second := printID(); second != first {
		t.Errorf("id printed %q, then %q for the same file", first, second)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, test := range []struct {
		args     []string
		badValue string
	}{
		{[]string{"run", "--dht-mode", "banana"}, "banana"},
		{[]string{"run", "--listen", "garbage"}, "garbage"},
		{[]string{"run", "--bootstrap", "/ip4/127.0.0.1/udp/4001/quic-v1"}, "/ip4/127.0.0.1/udp/4001/quic-v1"},
		{[]string{"run", "--bootstrap", "nonsense"}, "nonsense"},
	} {
		command := newRootCommand()
		command.SetArgs(test.args)
		var output bytes.Buffer
		command.SetOut(&output)
		command.SetErr(&output)
		err := command.Execute()
		if err == nil {
			t.Errorf("%v succeeded; output:\n%s", test.args, output.String())
			continue
		}
		if !strings.Contains(err.Error(), test.badValue) {
			t.Errorf("%v: error %q does not name %q", test.args, err, test.badValue)
		}
	}
}

func TestRunPrintsAddressesAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var output bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- runNode(ctx, &output, runFlags{
			listenAddrs: []string{testkit.Loopback},
			dhtMode:     "server",
		})
	}()
	// runNode starts the node even when its context is already done, prints
	// the addresses, then stops; output is read only once it has returned.
	time.Sleep(500 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("runNode: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("runNode did not return after its context was cancelled")
	}
	text := output.String()
	if !strings.Contains(text, "/ip4/127.0.0.1/udp/") || !strings.Contains(text, "/quic-v1/p2p/12D3KooW") {
		t.Errorf("output lacks a /p2p address:\n%s", text)
	}
	if !strings.HasSuffix(text, "stopped\n") {
		t.Errorf("output does not end with \"stopped\":\n%s", text)
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
