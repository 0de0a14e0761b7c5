package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/realmnet/realmnet/debugapi"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
)

// doctorSections are the headings of doctor's report, in order.
var doctorSections = []string{"\naddresses:\n", "\ndials:\n", "\ndecisions:\n", "\npool refusals:\n",
	"\nrealms:\n", "\npaths:\n", "\nhealth:\n"}

// TestDoctor: the diagnosis of a connected realm member (exit 0), of a
// peer the gater blocks and of an unknown peer (exit 1, the report
// printed, nothing on standard error), and the errors (exit 2): a PEER that
// is not a peer ID, checked before any request, no PEER, an endpoint
// nothing listens on.
func TestDoctor(t *testing.T) {
	pair := newObservedPair(t)
	a, b, url := pair.a, pair.b, pair.a.DebugURL()

	stdout, stderr, status := executeStatus(t, "doctor", "--addr", url, b.ID().String())
	if status != doctorReachable || stderr != "" {
		t.Fatalf("doctor of a connected peer: exit status %d, want %d; stderr:\n%s\nstdout:\n%s", status, doctorReachable, stderr, stdout)
	}
	if !strings.HasPrefix(stdout, "verdict: connected") {
		t.Errorf("doctor of a connected peer does not start with its verdict:\n%s", stdout)
	}
	wantInOrder(t, "doctor of a connected peer", stdout, doctorSections)
	conns := a.Connections(b.ID())
	wantLines(t, "doctor of a connected peer", stdout,
		[]string{"peer:", b.ID().String()}, []string{"known:", "yes"}, []string{"connectedness:", "Connected"},
		[]string{conns[0].RemoteMultiaddr().String(), "connection"},
		[]string{"peer_dial", "-", "allowed"},
		[]string{pair.realm, "yes", "member"},
		[]string{shortPeerID(b.ID().String()), conns[0].ID(), "direct"},
		[]string{shortPeerID(b.ID().String()), " * "},
		[]string{"closed", "-"})

	stdout, _, status = executeStatus(t, "doctor", "--json", "--addr", url, b.ID().String())
	report := decodeJSON[debugapi.DoctorReport](t, "doctor --json", stdout)
	if status != doctorReachable || !strings.HasPrefix(report.Verdict, "connected") || report.Peer != b.ID().String() ||
		len(report.Paths) == 0 || report.Health == nil || len(report.Realms) != 1 || !report.Realms[0].Member {
		t.Errorf("doctor --json of a connected peer: exit status %d, report %+v", status, report)
	}

	blocked := testnode.New(t)
	a.Host().Peerstore().AddAddrs(blocked.ID(), blocked.Addrs(), time.Hour)
	if err := a.Gater().BlockPeer(blocked.ID()); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, status = executeStatus(t, "doctor", "--addr", url, blocked.ID().String())
	if status != doctorUnreachable || stderr != "" {
		t.Errorf("doctor of a blocked peer: exit status %d, want %d; stderr:\n%s", status, doctorUnreachable, stderr)
	}
	firstLine, _, _ := strings.Cut(stdout, "\n")
	if !strings.HasPrefix(firstLine, "verdict: ") || !strings.Contains(firstLine, "blocked peer") {
		t.Errorf("doctor of a blocked peer: verdict %q does not name the blocked peer rule", firstLine)
	}
	wantInOrder(t, "doctor of a blocked peer", stdout, doctorSections)
	wantLines(t, "doctor of a blocked peer", stdout, []string{"peer_dial", "denied", "blocked peer"},
		[]string{blocked.Addrs()[0].String(), "peerstore"})

	unknown := testkit.PeerID(t)
	stdout, stderr, status = executeStatus(t, "doctor", "--addr", url, unknown.String())
	if status != doctorUnreachable || stderr != "" || !strings.HasPrefix(stdout, "verdict: unknown peer") {
		t.Errorf("doctor of an unknown peer: exit status %d, want %d; stderr:\n%s\nstdout:\n%s", status, doctorUnreachable, stderr, stdout)
	}
	wantLines(t, "doctor of an unknown peer", stdout, []string{"known:", "no"})

	closed := freeLoopbackURL(t)
	for _, test := range []struct {
		args  []string
		names []string
	}{
		{[]string{"doctor", "--addr", closed, "not-a-peer-id"}, []string{`"not-a-peer-id"`, "not a peer ID"}},
		{[]string{"doctor", "--addr", url}, []string{"arg"}},
		{[]string{"doctor", "--addr", url, "--bogus", b.ID().String()}, []string{"--bogus"}},
		{[]string{"doctor", "--addr", closed, b.ID().String()}, []string{closed, "cannot reach"}},
	} {
		stdout, stderr, status := executeStatus(t, test.args...)
		if status != doctorFailed || stdout != "" {
			t.Errorf("%v: exit status %d, want %d; stdout %q", test.args, status, doctorFailed, stdout)
		}
		if !strings.HasPrefix(stderr, "realmnet: ") || !containsAll(stderr, test.names) {
			t.Errorf("%v: standard error %q does not name %q", test.args, stderr, test.names)
		}
	}
}

// wantInOrder fails the test unless text holds each of parts, in order.
func wantInOrder(t *testing.T, what, text string, parts []string) {
	t.Helper()
	rest := text
	for _, part := range parts {
		index := strings.Index(rest, part)
		if index < 0 {
			t.Errorf("%s lacks %q after the sections before it:\n%s", what, part, text)
			return
		}
		rest = rest[index+len(part):]
	}
}

// TestDoctorExitStatusOfTheProcess runs main in a child process: 1 and the
// report for an unknown peer, with nothing on standard error; 2 and one
// line on standard error for a PEER that is not a peer ID.
func TestDoctorExitStatusOfTheProcess(t *testing.T) {
	n := testnode.New(t, node.DebugAddr("127.0.0.1:0"))
	for _, test := range []struct {
		peer       string
		status     int
		stdout     string // its prefix
		stderrPart string // "": none expected
	}{
		{testkit.PeerID(t).String(), doctorUnreachable, "verdict: unknown peer", ""},
		{"not-a-peer-id", doctorFailed, "", "not-a-peer-id"},
	} {
		command := exec.Command(os.Args[0], "doctor", "--addr", n.DebugURL(), test.peer)
		command.Env = append(os.Environ(), runMainEnv+"=1")
		var stdout, stderr bytes.Buffer
		command.Stdout, command.Stderr = &stdout, &stderr
		err := command.Run()
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) || exitErr.ExitCode() != test.status {
			t.Errorf("doctor %s: %v, want exit status %d; stderr:\n%s", test.peer, err, test.status, stderr.String())
		}
		if !strings.HasPrefix(stdout.String(), test.stdout) || (test.stdout == "" && stdout.Len() != 0) {
			t.Errorf("doctor %s: standard output %q, want it to start with %q", test.peer, stdout.String(), test.stdout)
		}
		switch text := stderr.String(); {
		case test.stderrPart == "" && text != "":
			t.Errorf("doctor %s: standard error %q, want nothing", test.peer, text)
		case test.stderrPart != "" && (strings.Count(text, "\n") != 1 || !strings.Contains(text, test.stderrPart)):
			t.Errorf("doctor %s: standard error %q, want one line naming %q", test.peer, text, test.stderrPart)
		}
	}
}
