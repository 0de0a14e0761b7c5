package natlab

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"time"
)

// The test process talks to each lab process (the root, which is also the
// internet namespace's agent, and one agent per host or router) over a
// unix SOCK_SEQPACKET socket pair: one JSON request, then one JSON
// response, each a single message, with file descriptors attached where a
// request or a response carries some (SCM_RIGHTS). An agent serves one
// request at a time and runs everything it starts in its own network
// namespace; it exits, killing what it started, when its socket closes.

// op names a request.
type op string

// The requests of the lab protocol.
const (
	// opHello answers with the agent's PID.
	opHello op = "hello"
	// opSpawn starts a new agent, named Name, in a new network namespace;
	// the response has its PID and, attached, the test's end of its socket.
	opSpawn op = "spawn"
	// opRun runs Argv with Stdin; the response has its standard output.
	opRun op = "run"
	// opSysctl writes Value to the sysctl Key (dotted).
	opSysctl op = "sysctl"
	// opStart starts Role with Args; attached are its standard input and
	// output (one socket) and its standard error. The response has its ID.
	opStart op = "start"
	// opStop waits up to Grace for process ID to exit, kills it then (at
	// once when Grace is 0), reaps it and answers with its exit.
	opStop op = "stop"
	// opLinks answers with the links that are up with a carrier.
	opLinks op = "links"
)

// request is one message to an agent.
type request struct {
	Op    op            `json:"op"`
	Name  string        `json:"name,omitempty"`
	Argv  []string      `json:"argv,omitempty"`
	Stdin string        `json:"stdin,omitempty"`
	Key   string        `json:"key,omitempty"`
	Value string        `json:"value,omitempty"`
	Role  string        `json:"role,omitempty"`
	Args  []string      `json:"args,omitempty"`
	ID    int           `json:"id,omitempty"`
	Grace time.Duration `json:"grace,omitempty"`
}

// response answers a request; Err is empty on success.
type response struct {
	Err    string `json:"err,omitempty"`
	Stdout string `json:"stdout,omitempty"`
	PID    int    `json:"pid,omitempty"`
	ID     int    `json:"id,omitempty"`
	// Exit is how a stopped process ended: "" for status 0, else as
	// os.ProcessState prints it ("exit status 1", "signal: killed").
	Exit string `json:"exit,omitempty"`
	// Killed says that opStop killed the process.
	Killed bool `json:"killed,omitempty"`
	// Up names the links that are up and running (opLinks).
	Up []string `json:"up,omitempty"`
}

// Message size bounds: a message that does not fit maxMsg is an error, and
// an agent cuts command output to maxOutput.
const (
	maxMsg    = 128 << 10
	maxOutput = 64 << 10
	maxFDs    = 4
)

// errClosed is returned by calls to an agent after the lab was closed.
var errClosed = errors.New("the lab is closed")

// agent is the test's side of one lab process.
type agent struct {
	name string        // the namespace: Internet, a host or a router
	pid  int           // in the lab's PID namespace
	conn *net.UnixConn // set once; Close is safe concurrently

	mu     sync.Mutex // one request at a time
	broken error      // set when a call failed mid-way: the stream is out of step
}

// call sends req with files attached, waits for the response and returns
// it with the files attached to it. A response with Err set is returned as
// an error too. The caller closes the returned files.
func (a *agent) call(req request, files ...*os.File) (response, error) {
	resp, got, err := a.callFiles(req, files...)
	closeFiles(got)
	return resp, err
}

// callFiles is call, keeping the files of the response.
func (a *agent) callFiles(req request, files ...*os.File) (response, []*os.File, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.broken != nil {
		return response{}, nil, fmt.Errorf("%s in namespace %s: %w", req.Op, a.name, a.broken)
	}
	fail := func(err error) (response, []*os.File, error) {
		a.broken = err
		return response{}, nil, fmt.Errorf("%s in namespace %s: %w", req.Op, a.name, err)
	}
	if err := a.conn.SetDeadline(time.Now().Add(callTimeout + req.Grace)); err != nil {
		return fail(err)
	}
	if err := sendMsg(a.conn, req, files...); err != nil {
		return fail(err)
	}
	var resp response
	got, err := recvMsg(a.conn, &resp)
	if err != nil {
		return fail(err)
	}
	if resp.Err != "" {
		closeFiles(got)
		return resp, nil, fmt.Errorf("%s in namespace %s: %s", req.Op, a.name, resp.Err)
	}
	return resp, got, nil
}

// closeFiles closes every file of fs.
func closeFiles(fs []*os.File) {
	for _, f := range fs {
		_ = f.Close()
	}
}

// system is the test's side of the lab's processes.
type system struct {
	cmd    *exec.Cmd // the root: user, mount, network and PID namespaces
	log    string    // the standard error of the root and the agents
	root   *agent    // the root's agent: the internet namespace
	agents []*agent  // every agent, the root's first
}

// shutdown closes every agent's socket and kills the root. The root is the
// init process of the lab's PID namespace, so the kernel then kills every
// other process of the lab, and the root is reaped only once they are all
// gone: when shutdown returns, nothing of the lab runs.
func (s *system) shutdown() error {
	for _, a := range s.agents {
		_ = a.conn.Close()
	}
	if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill the lab's root process %d: %w", s.cmd.Process.Pid, err)
	}
	var exit *exec.ExitError
	if err := s.cmd.Wait(); err != nil && !errors.As(err, &exit) {
		return fmt.Errorf("reap the lab's root process %d: %w", s.cmd.Process.Pid, err)
	}
	return nil
}

// tools are the absolute paths of the commands the lab runs.
type tools struct {
	ip  string // iproute2's ip
	nft string // nftables' nft
}

// nftTable is the nftables table (family ip) of every router.
const nftTable = "natlab"
