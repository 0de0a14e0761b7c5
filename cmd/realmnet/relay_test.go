package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

// writePSKFile writes key to a new file with mode perm.
func writePSKFile(t *testing.T, key string, perm os.FileMode) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "realm.psk")
	if err := os.WriteFile(file, []byte(key), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, perm); err != nil { // past the umask
		t.Fatal(err)
	}
	return file
}

// TestRunRejectsBadRelayAndRealmFlags: every relay and realm setting is
// checked before anything starts, and the error names the flag and the
// bad value.
func TestRunRejectsBadRelayAndRealmFlags(t *testing.T) {
	relayID := testkit.PeerID(t).String()
	goodKey := writePSKFile(t, "sixteen bytes at least\n", 0o600)
	shortKey := writePSKFile(t, "short key\n", 0o600)
	cases := []struct {
		args  []string
		names []string
	}{
		{[]string{"run", "--relay", "/ip4/127.0.0.1/udp/4001/quic-v1"},
			[]string{"--relay", "/ip4/127.0.0.1/udp/4001/quic-v1", "/p2p"}},
		{[]string{"run", "--relay", "/ip4/127.0.0.1/udp/4001/quic-v1/p2p/" + relayID + "/p2p-circuit"},
			[]string{"--relay", "p2p-circuit", "relay address itself"}},
		{[]string{"run", "--listen", "/ip4/127.0.0.1/udp/4001/quic-v1/p2p/" + relayID + "/p2p-circuit"},
			[]string{"--listen", "p2p-circuit", "relay address"}},
		{[]string{"run", "--reachability", "sometimes"}, []string{"--reachability", "sometimes", "public or private"}},
		{[]string{"run", "--realm", "team"}, []string{"--realm", "1 realms but 0 key files", "--psk-file"}},
		{[]string{"run", "--realm-relay"}, []string{"--realm-relay", "no realm"}},
		{[]string{"run", "--realm", "team", "--psk-file", shortKey}, []string{"--psk-file", shortKey, "9 bytes", "16"}},
		{[]string{"run", "--realm", "team", "--psk-file", "/nonexistent/realm.psk"}, []string{"--psk-file", "/nonexistent/realm.psk", "no such file"}},
		{[]string{"run", "--realm", "team", "--psk-file", goodKey, "--realm", "team", "--psk-file", goodKey},
			[]string{"--realm", `"team"`, "twice"}},
	}
	if runtime.GOOS != "windows" {
		readable := writePSKFile(t, "sixteen bytes at least\n", 0o644)
		cases = append(cases, struct {
			args  []string
			names []string
		}{[]string{"run", "--realm", "team", "--psk-file", readable}, []string{"--psk-file", readable, "0644", "chmod 600"}})
	}
	for _, test := range cases {
		stdout, _, err := execute(t, test.args...)
		wantErrorNaming(t, fmt.Sprint(test.args), err, test.names...)
		if stdout != "" {
			t.Errorf("%v printed %q", test.args, stdout)
		}
	}
}

// TestRunRealmRelay: `realmnet run --realm team --psk-file F --realm-relay`
// joins the realm and relays for its members: a private member that joins
// through it gets a reservation and circuit addresses through it.
func TestRunRealmRelay(t *testing.T) {
	const key = "the key of the team realm, 32 b"
	running := startCommand(t, "run", "--listen", "/ip4/127.0.0.3/udp/0/quic-v1", "--dht-mode", "client",
		"--realm", "team", "--psk-file", writePSKFile(t, key+"\n", 0o600), "--realm-relay")
	addrLine := running.waitLine(t, runStartTimeout, func(line string) bool { return strings.HasPrefix(line, "/") })
	running.waitLine(t, runStartTimeout, func(line string) bool { return strings.HasPrefix(line, `joined realm "team" (ID `) })
	relay, err := peer.AddrInfoFromString(addrLine)
	if err != nil {
		t.Fatalf("address line %q: %v", addrLine, err)
	}

	member := testnode.New(t, node.ListenAddrStrings("/ip4/127.0.0.2/udp/0/quic-v1"), node.ForceReachability(network.ReachabilityPrivate))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	team, err := member.JoinRealm(ctx, "team", realm.PSK([]byte(key)), realm.Peers(*relay))
	if err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for len(team.RelayAddrs()) == 0 {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("no reservation on the realm relay run started; members: %v", team.Members())
		}
	}
	if got := team.RelayAddrs()[0].String(); !strings.Contains(got, relay.ID.String()+"/p2p-circuit") {
		t.Errorf("circuit address %s does not go through %s", got, relay.ID)
	}
	if _, err := running.stop(t); err != nil {
		t.Fatalf("run: %v", err)
	}
}
