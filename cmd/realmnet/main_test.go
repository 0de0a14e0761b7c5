package main

import (
	"bytes"
	"context"
	"path/filepath"
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
	for _, want := range []string{"p50", "DHT lookups 6/6", "6 pairs, 6 answered by other nodes", "echo 6/6"} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary lacks %q:\n%s", want, summary)
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
			listenAddrs: []string{"/ip4/127.0.0.1/udp/0/quic-v1"},
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
