package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/realmnet/realmnet/internal/natlab"
	"github.com/realmnet/realmnet/node"
)

// runMainEnv, set to "1", makes the test binary run main with its
// arguments instead of the tests (TestMainExitsWithStatus1OnError).
const runMainEnv = "REALMNET_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	// demo --nat's lab, built by a test, starts the test binary again.
	natlab.RunIfChild(labRoles())
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// execute runs the realmnet command in-process with args and returns what
// it printed on standard output and standard error, and its error.
func execute(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	command := newRootCommand()
	command.SetArgs(args)
	var out, errOut bytes.Buffer
	command.SetOut(&out)
	command.SetErr(&errOut)
	err = command.Execute()
	return out.String(), errOut.String(), err
}

// executeStatus runs the realmnet command in-process as main does
// (executeRoot) and returns what it printed on standard output and
// standard error, and its exit status.
func executeStatus(t *testing.T, args ...string) (stdout, stderr string, status int) {
	t.Helper()
	command := newRootCommand()
	command.SetArgs(args)
	var out, errOut bytes.Buffer
	command.SetOut(&out)
	command.SetErr(&errOut)
	status = executeRoot(command, &errOut)
	return out.String(), errOut.String(), status
}

// wantErrorNaming fails the test unless err is an error whose message
// contains every one of parts.
func wantErrorNaming(t *testing.T, what string, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s succeeded, want an error naming %q", what, parts)
		return
	}
	for _, part := range parts {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("%s: error %q does not name %q", what, err, part)
		}
	}
}

// decodeJSON decodes text, which must be exactly one JSON object, into a
// new T.
func decodeJSON[T any](t *testing.T, what, text string) T {
	t.Helper()
	decoder := json.NewDecoder(strings.NewReader(text))
	decoder.DisallowUnknownFields()
	var value T
	if err := decoder.Decode(&value); err != nil {
		t.Fatalf("%s printed %q, not the JSON object expected: %v", what, text, err)
	}
	if _, err := decoder.Token(); !errors.Is(err, io.EOF) {
		t.Fatalf("%s printed %q: more than one JSON value", what, text)
	}
	return value
}

// lockedBuffer is a bytes.Buffer safe for a command writing while the test
// reads.
type lockedBuffer struct {
	mu     sync.Mutex
	buffer bytes.Buffer
}

// Write appends p.
func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buffer.Write(p)
}

// String returns what was written so far.
func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buffer.String()
}

// runningCommand is a realmnet command executing in the background, as
// startCommand started it.
type runningCommand struct {
	// lines are its standard output's lines; closed when it returns.
	lines chan string
	// stderr is its standard error.
	stderr *lockedBuffer
	// cancel cancels the context given to ExecuteContext.
	cancel context.CancelFunc
	// done receives Execute's error, once.
	done chan error
}

// commandStopTimeout bounds how long a command takes to return once its
// context is cancelled: node.Close is bounded by 10 s.
const commandStopTimeout = 30 * time.Second

// startCommand executes the realmnet command with args in the background,
// with a context the test cancels (stop), as SIGINT would.
func startCommand(t *testing.T, args ...string) *runningCommand {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	reader, writer := io.Pipe()
	running := &runningCommand{
		// Enough for any output; a full channel would block the command.
		lines:  make(chan string, 1024),
		stderr: &lockedBuffer{},
		cancel: cancel,
		done:   make(chan error, 1),
	}
	command := newRootCommand()
	command.SetArgs(args)
	command.SetOut(writer)
	command.SetErr(running.stderr)
	go func() {
		err := command.ExecuteContext(ctx)
		_ = writer.Close()
		running.done <- err
	}()
	go func() {
		scanner := bufio.NewScanner(reader)
		for scanner.Scan() {
			running.lines <- scanner.Text()
		}
		close(running.lines)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-running.done:
		case <-time.After(commandStopTimeout):
			t.Errorf("%v did not return within %s of its context's end", args, commandStopTimeout)
		}
	})
	return running
}

// waitLine returns the first line of output that match accepts, failing
// the test when the command ends or within passes first.
func (running *runningCommand) waitLine(t *testing.T, within time.Duration, match func(string) bool) string {
	t.Helper()
	timeout := time.After(within)
	var seen []string
	for {
		select {
		case line, ok := <-running.lines:
			if !ok {
				err := <-running.done
				running.done <- err // for stop and the cleanup
				t.Fatalf("command returned (%v) before the line expected; output:\n%s\nstderr:\n%s",
					err, strings.Join(seen, "\n"), running.stderr.String())
			}
			if match(line) {
				return line
			}
			seen = append(seen, line)
		case <-timeout:
			t.Fatalf("no line expected within %s; output:\n%s\nstderr:\n%s",
				within, strings.Join(seen, "\n"), running.stderr.String())
		}
	}
}

// stop cancels the command's context and returns its error and the lines
// it printed after those already read.
func (running *runningCommand) stop(t *testing.T) (rest []string, err error) {
	t.Helper()
	running.cancel()
	timeout := time.After(commandStopTimeout)
	for {
		select {
		case line, ok := <-running.lines:
			if !ok {
				err := <-running.done
				running.done <- err // for the cleanup
				return rest, err
			}
			rest = append(rest, line)
		case <-timeout:
			t.Fatalf("command did not return within %s of its context's end", commandStopTimeout)
		}
	}
}

func TestVersionPrintsVersion(t *testing.T) {
	want := node.Version() + " " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
	for _, args := range [][]string{{"version"}, {"--version"}} {
		stdout, _, err := execute(t, args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if stdout != "realmnet "+want+"\n" {
			t.Errorf("%v printed %q, want %q", args, stdout, "realmnet "+want+"\n")
		}
	}
	stdout, _, err := execute(t, "version", "--json")
	if err != nil {
		t.Fatalf("version --json: %v", err)
	}
	got := decodeJSON[versionInfo](t, "version --json", stdout)
	if wantInfo := (versionInfo{node.Version(), runtime.Version(), runtime.GOOS, runtime.GOARCH}); got != wantInfo {
		t.Errorf("version --json printed %+v, want %+v", got, wantInfo)
	}
}

func TestLogLevelFlag(t *testing.T) {
	for _, level := range []string{"loud", ""} {
		_, _, err := execute(t, "--log-level", level, "version")
		wantErrorNaming(t, "--log-level "+level, err, "--log-level", level)
	}
	// error is go-log's default level: setting it changes nothing for the
	// other tests.
	if _, _, err := execute(t, "--log-level", "error", "version"); err != nil {
		t.Errorf("--log-level error: %v", err)
	}
}

func TestJSONIsRefusedByCommandsWithoutJSONOutput(t *testing.T) {
	_, _, err := execute(t, "demo", "--json", "--nodes", "2")
	wantErrorNaming(t, "demo --json", err, "--json", "demo")
}

// TestMainExitsWithStatus1OnError runs main in a child process: an error
// is printed once on standard error, nothing on standard output, and the
// exit status is 1.
func TestMainExitsWithStatus1OnError(t *testing.T) {
	identityFile := filepath.Join(t.TempDir(), "identity.key")
	if _, _, err := execute(t, "init", "--identity", identityFile); err != nil {
		t.Fatalf("init: %v", err)
	}
	command := exec.Command(os.Args[0], "init", "--identity", identityFile)
	command.Env = append(os.Environ(), runMainEnv+"=1")
	var stdout, stderr bytes.Buffer
	command.Stdout = &stdout
	command.Stderr = &stderr
	err := command.Run()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 {
		t.Fatalf("realmnet init on an existing file: %v, want exit status 1; stderr:\n%s", err, stderr.String())
	}
	if stdout.Len() != 0 {
		t.Errorf("standard output is %q, want nothing", stdout.String())
	}
	text := stderr.String()
	if !strings.HasPrefix(text, "realmnet: ") || strings.Count(text, "\n") != 1 ||
		!strings.Contains(text, identityFile) || !strings.Contains(text, "exists") {
		t.Errorf("standard error is %q, want one line naming %s and saying it exists", text, identityFile)
	}
}
