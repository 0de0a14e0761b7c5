package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/realmnet/realmnet/internal/testkit"
)

// runStartTimeout bounds how long `realmnet run` takes to print its
// addresses: node.New with no bootstrap peer, on a loaded 2-core machine.
const runStartTimeout = 30 * time.Second

func TestRunRejectsBadFlags(t *testing.T) {
	for _, test := range []struct {
		args  []string
		names []string // the flag and the bad value
	}{
		{[]string{"run", "--dht-mode", "banana"}, []string{"--dht-mode", "banana"}},
		{[]string{"run", "--listen", "garbage"}, []string{"--listen", "garbage"}},
		{[]string{"run", "--listen", "/ip4/127.0.0.1/tcp/0"}, []string{"--listen", "/ip4/127.0.0.1/tcp/0", "/quic-v1"}},
		{[]string{"run", "--listen", testkit.Loopback, "--listen", "/ip4/127.0.0.1/udp/0"},
			[]string{"--listen", "/ip4/127.0.0.1/udp/0"}},
		{[]string{"run", "--bootstrap", "/ip4/127.0.0.1/udp/4001/quic-v1"},
			[]string{"--bootstrap", "/ip4/127.0.0.1/udp/4001/quic-v1", "/p2p"}},
		{[]string{"run", "--bootstrap", "nonsense"}, []string{"--bootstrap", "nonsense"}},
		{[]string{"run", "--bootstrap", "/ip4/127.0.0.1/tcp/4001/p2p/" + testkit.PeerID(t).String()},
			[]string{"--bootstrap", "/ip4/127.0.0.1/tcp/4001/p2p/", "/quic-v1"}},
		{[]string{"run", "--bootstrap-timeout", "0s"}, []string{"--bootstrap-timeout", "0s"}},
		{[]string{"run", "--log-level", "loud"}, []string{"--log-level", "loud"}},
		{[]string{"run", "--config", ""}, []string{"--config"}},
		{[]string{"run", "--debug-addr", "6060"}, []string{"--debug-addr", "6060", "HOST:PORT"}},
		{[]string{"run", "--debug-addr", "127.0.0.1:99999"}, []string{"--debug-addr", "127.0.0.1:99999"}},
		{[]string{"run", "--debug-token-file", "/nonexistent/debug.token"}, []string{"--debug-token-file", "--debug-addr"}},
		{[]string{"run", "--debug-addr", "127.0.0.1:0", "--debug-token-file", "/nonexistent/debug.token"},
			[]string{"--debug-token-file", "/nonexistent/debug.token", "no such file"}},
		// Checked by node.New, whose error names the address.
		{[]string{"run", "--listen", testkit.Loopback, "--debug-addr", "0.0.0.0:0"},
			[]string{"--debug-addr", `"0.0.0.0:0"`, "loopback", "--debug-token-file"}},
	} {
		stdout, _, err := execute(t, test.args...)
		wantErrorNaming(t, fmt.Sprint(test.args), err, test.names...)
		if stdout != "" {
			t.Errorf("%v printed %q", test.args, stdout)
		}
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	missingIdentity := filepath.Join(dir, "missing", "identity.key")
	tooLarge := `{"identity": "` + strings.Repeat("a", maxConfigFileSize) + `"}`
	for index, test := range []struct {
		content string
		key     string   // the config key named; "": the file only
		names   []string // more that the error must name
	}{
		{`{"lisen": ["/ip4/127.0.0.1/udp/0/quic-v1"]}`, "", []string{`"lisen"`, "unknown key"}},
		{`{"listen": ["/ip4/127.0.0.1/tcp/0"]}`, "listen", []string{"/ip4/127.0.0.1/tcp/0", "/quic-v1"}},
		{`{"listen": []}`, "listen", nil},
		{`{"listen": "/ip4/127.0.0.1/udp/0/quic-v1"}`, "listen", []string{"array of strings"}},
		{`{"bootstrap": ["nonsense"]}`, "bootstrap", []string{"nonsense"}},
		{`{"bootstrap": ["/ip4/127.0.0.1/udp/4001/quic-v1"]}`, "bootstrap", []string{"/ip4/127.0.0.1/udp/4001/quic-v1"}},
		{`{"dht_mode": "banana"}`, "dht_mode", []string{"banana"}},
		{`{"dht_mode": 3}`, "dht_mode", []string{"string"}},
		{`{"dht_private_addrs": "yes"}`, "dht_private_addrs", []string{"true or false"}},
		{`{"bootstrap_timeout": "10"}`, "bootstrap_timeout", []string{`"10"`}},
		{`{"bootstrap_timeout": "-1s"}`, "bootstrap_timeout", []string{"-1s"}},
		{`{"log_level": "loud"}`, "log_level", []string{"loud"}},
		{`{"debug_addr": "nowhere"}`, "debug_addr", []string{"nowhere"}},
		{`{"debug_addr": 6060}`, "debug_addr", []string{"string"}},
		{`{"debug_addr": "127.0.0.1:0", "debug_token_file": "` + filepath.Join(dir, "missing.token") + `"}`,
			"debug_token_file", []string{filepath.Join(dir, "missing.token"), "no such file"}},
		{`{"identity": "` + missingIdentity + `", "listen": ["` + testkit.Loopback + `"]}`, "identity",
			[]string{missingIdentity}},
		{`listen = "/ip4/127.0.0.1/udp/0/quic-v1"`, "", []string{"not a JSON object"}},
		{`{"listen": ["/ip4/127.0.0.1/udp/0/quic-v1"],}`, "", []string{"not valid JSON", "line 1"}},
		{`{"listen": [`, "", []string{"not valid JSON"}},
		{"", "", []string{"empty"}},
		{`{} {}`, "", []string{"one object"}},
		{tooLarge, "", []string{"1 MiB"}},
	} {
		file := filepath.Join(dir, fmt.Sprintf("config-%d.json", index))
		if err := os.WriteFile(file, []byte(test.content), 0o600); err != nil {
			t.Fatal(err)
		}
		names := test.names
		if test.key != "" {
			names = append(names, fmt.Sprintf("%q in %s", test.key, file))
		} else {
			names = append(names, "--config "+file)
		}
		what := fmt.Sprintf("run --config with %.60q", test.content)
		stdout, _, err := execute(t, "run", "--config", file)
		wantErrorNaming(t, what, err, names...)
		if stdout != "" {
			t.Errorf("%s printed %q", what, stdout)
		}
	}
	if _, err := os.Lstat(filepath.Dir(missingIdentity)); !os.IsNotExist(err) {
		t.Errorf("run created %s (%v)", filepath.Dir(missingIdentity), err)
	}

	missing := filepath.Join(dir, "missing.json")
	_, _, err := execute(t, "run", "--config", missing)
	wantErrorNaming(t, "run --config with a missing file", err, "--config "+missing, "no such file")
	_, _, err = execute(t, "run", "--config", dir)
	wantErrorNaming(t, "run --config with a directory", err, "--config "+dir)
}

func TestRunFlagsOverrideConfig(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.json")
	content := `{"dht_mode": "banana", "listen": ["/ip4/127.0.0.1/tcp/0"], "log_level": "loud"}`
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	// The flags replace the bad dht_mode and log_level, so the first bad
	// setting is the file's listen.
	_, _, err := execute(t, "run", "--config", file, "--dht-mode", "server", "--log-level", "error")
	wantErrorNaming(t, "run with --dht-mode over a bad dht_mode", err, fmt.Sprintf("%q in %s", "listen", file))
	if err != nil && strings.Contains(err.Error(), "banana") {
		t.Errorf("error %q is about dht_mode, which --dht-mode overrides", err)
	}
	// A bad flag is named as the flag, not as the file's key.
	_, _, err = execute(t, "run", "--config", file, "--listen", testkit.Loopback, "--dht-mode", "potato")
	wantErrorNaming(t, "run with a bad --dht-mode over a bad dht_mode", err, "--dht-mode", "potato")
	if err != nil && strings.Contains(err.Error(), file) {
		t.Errorf("error %q names the config file, not --dht-mode", err)
	}
}

// TestRunConfigKeysMatchFlags checks that every flag of run but --config
// (and --json, --help, which are about output, not the node) has a config
// key and the reverse, and that run's help documents each key.
func TestRunConfigKeysMatchFlags(t *testing.T) {
	run, _, err := newRootCommand().Find([]string{"run"})
	if err != nil {
		t.Fatal(err)
	}
	var fromFlags []string
	collect := func(flag *pflag.Flag) {
		if flag.Name != configFlag && flag.Name != jsonFlag && flag.Name != "help" {
			fromFlags = append(fromFlags, configKey(flag.Name))
		}
	}
	run.LocalFlags().VisitAll(collect)
	run.InheritedFlags().VisitAll(collect)
	keys := configKeys()
	slices.Sort(fromFlags)
	sortedKeys := slices.Sorted(slices.Values(keys))
	if !slices.Equal(fromFlags, sortedKeys) {
		t.Errorf("run's flags give the config keys %q; runConfig has %q", fromFlags, sortedKeys)
	}
	for _, key := range keys {
		flag := "--" + strings.ReplaceAll(key, "_", "-")
		if !strings.Contains(run.Long, "\n    "+key+" ") || !strings.Contains(run.Long, " "+flag+"\n") {
			t.Errorf("run's help has no row for the config key %q (%s)", key, flag)
		}
		if !strings.Contains(run.Long, `"`+key+`":`) {
			t.Errorf("run's help has no example of the config key %q", key)
		}
	}
}

func TestRunWithConfigPrintsAddressesAndStops(t *testing.T) {
	dir := t.TempDir()
	identityFile := filepath.Join(dir, "identity.key")
	file := filepath.Join(dir, "config.json")
	content := fmt.Sprintf(`{
  "listen": [%q],
  "identity": %q,
  "dht_mode": "server",
  "dht_private_addrs": true,
  "bootstrap_timeout": "5s",
  "debug_addr": "127.0.0.1:0",
  "log_level": "error"
}`, testkit.Loopback, identityFile)
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	running := startCommand(t, "--json", "run", "--config", file)
	line := running.waitLine(t, runStartTimeout, func(string) bool { return true })
	output := decodeJSON[runOutput](t, "run --json", line)
	if !strings.HasPrefix(output.PeerID, "12D3KooW") || len(output.Addrs) == 0 {
		t.Fatalf("run --json printed %q: no peer ID or no address", line)
	}
	if !strings.HasPrefix(output.DebugURL, "http://127.0.0.1:") {
		t.Errorf("run --json printed %q: debug_url is not the endpoint on 127.0.0.1 that debug_addr asks for", line)
	}
	for _, addr := range output.Addrs {
		if !strings.HasPrefix(addr, "/ip4/127.0.0.1/udp/") || !strings.HasSuffix(addr, "/quic-v1/p2p/"+output.PeerID) {
			t.Errorf("address %q is not on 127.0.0.1 over QUIC, ending in /p2p/%s", addr, output.PeerID)
		}
	}
	if stderr := running.stderr.String(); !strings.Contains(stderr, identityFile) || !strings.Contains(stderr, output.PeerID) {
		t.Errorf("standard error does not say that %s was created for %s:\n%s", identityFile, output.PeerID, stderr)
	}
	rest, err := running.stop(t)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if len(rest) != 0 {
		t.Errorf("run --json printed more than its JSON line: %q", rest)
	}

	// The identity written by run is the one id reads.
	stdout, _, err := execute(t, "id", "--identity", identityFile)
	if err != nil {
		t.Fatalf("id: %v", err)
	}
	if got := strings.TrimSpace(stdout); got != output.PeerID {
		t.Errorf("id printed %q for the identity run created, run %q", got, output.PeerID)
	}
}

func TestRunPrintsAddressesAndStops(t *testing.T) {
	running := startCommand(t, "run", "--listen", testkit.Loopback, "--dht-mode", "server")
	header := running.waitLine(t, runStartTimeout, func(string) bool { return true })
	peerID, ok := strings.CutPrefix(header, "peer ID ")
	peerID, _, _ = strings.Cut(peerID, ",")
	if !ok || !strings.HasPrefix(peerID, "12D3KooW") {
		t.Fatalf("first line %q does not give the peer ID", header)
	}
	addr := running.waitLine(t, runStartTimeout, func(line string) bool { return strings.HasPrefix(line, "/") })
	if !strings.HasPrefix(addr, "/ip4/127.0.0.1/udp/") || !strings.HasSuffix(addr, "/quic-v1/p2p/"+peerID) {
		t.Errorf("address line %q is not on 127.0.0.1 over QUIC, ending in /p2p/%s", addr, peerID)
	}
	running.waitLine(t, runStartTimeout, func(line string) bool { return line == "running until SIGINT or SIGTERM" })
	rest, err := running.stop(t)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if !slices.Equal(rest, []string{"stopping", "stopped"}) {
		t.Errorf("run printed %q after its context ended, want stopping, stopped", rest)
	}
}

// TestRunServesTheDebugEndpoint: run --debug-addr with --debug-token-file
// prints the endpoint's URL among its start lines, and the endpoint serves
// the node to inspect with the token, and to no one without it.
func TestRunServesTheDebugEndpoint(t *testing.T) {
	tokenFile := writeTokenFile(t, "the token of run's debug endpoint")
	running := startCommand(t, "run", "--listen", testkit.Loopback, "--dht-mode", "client",
		"--debug-addr", "127.0.0.1:0", "--debug-token-file", tokenFile)
	header := running.waitLine(t, runStartTimeout, func(string) bool { return true })
	peerID, _, _ := strings.Cut(strings.TrimPrefix(header, "peer ID "), ",")
	line := running.waitLine(t, runStartTimeout, func(line string) bool { return !strings.HasPrefix(line, "/") })
	url, ok := strings.CutPrefix(line, "debug endpoint ")
	if !ok || !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("the line after the addresses is %q, want \"debug endpoint http://127.0.0.1:PORT\"", line)
	}
	running.waitLine(t, runStartTimeout, func(line string) bool { return line == "running until SIGINT or SIGTERM" })

	text := inspect(t, url, "node", "--token-file", tokenFile)
	wantLines(t, "inspect node of run's endpoint", text, []string{"id:", peerID})
	_, _, err := execute(t, "inspect", "--addr", url, "node")
	wantErrorNaming(t, "inspect node of run's endpoint without its token", err, "--token-file")

	if _, err := running.stop(t); err != nil {
		t.Fatalf("run: %v", err)
	}
}
