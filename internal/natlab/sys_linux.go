package natlab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// findTools returns the absolute paths of ip and nft: from PATH, else from
// /usr/sbin or /sbin (which an unprivileged user's PATH often lacks).
func findTools() (tools, error) {
	var ts tools
	for _, tool := range []struct {
		name, pkg string
		path      *string
	}{
		{"ip", "iproute2", &ts.ip},
		{"nft", "nftables", &ts.nft},
	} {
		p, ok := lookTool(tool.name)
		if !ok {
			return tools{}, fmt.Errorf("%w: %s is not on PATH, nor in /usr/sbin or /sbin (install Debian's %s package: apt-get install %s)",
				ErrUnavailable, tool.name, tool.pkg, tool.pkg)
		}
		*tool.path = p
	}
	return ts, nil
}

// lookTool finds the named executable.
func lookTool(name string) (string, bool) {
	if p, err := exec.LookPath(name); err == nil && filepath.IsAbs(p) {
		return p, true
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}

// filePair returns the two ends of a new unix socket pair of type typ
// (SOCK_STREAM or SOCK_SEQPACKET), close-on-exec.
func filePair(typ int) (a, b *os.File, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, typ|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "natlab-socket"), os.NewFile(uintptr(fds[1]), "natlab-socket"), nil
}

// connPair is filePair with the first end as a connection, which has
// deadlines.
func connPair(typ int) (*net.UnixConn, *os.File, error) {
	a, b, err := filePair(typ)
	if err != nil {
		return nil, nil, err
	}
	c, err := fileConn(a)
	if err != nil {
		_ = b.Close()
		return nil, nil, err
	}
	return c, b, nil
}

// fileConn turns a unix socket file into a connection and closes the file.
func fileConn(f *os.File) (*net.UnixConn, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("use socket %d: %w", f.Fd(), err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		_ = c.Close()
		return nil, fmt.Errorf("socket %d is a %T, not a unix socket", f.Fd(), c)
	}
	return uc, nil
}

// streamPair returns a stream socket pair: the test's end of a process's
// standard input and output, and the process's end.
func streamPair() (net.Conn, *os.File, error) { return connPair(syscall.SOCK_STREAM) }

// sendMsg sends v as one JSON message on c, with files attached.
func sendMsg(c *net.UnixConn, v any, files ...*os.File) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode message: %w", err)
	}
	if len(b) > maxMsg {
		return fmt.Errorf("message of %d bytes exceeds %d", len(b), maxMsg)
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = syscall.UnixRights(fds...)
	}
	n, oobn, err := c.WriteMsgUnix(b, oob, nil)
	runtime.KeepAlive(files)
	if err != nil {
		return fmt.Errorf("send message: %w", err)
	}
	if n != len(b) || oobn != len(oob) {
		return fmt.Errorf("send message: wrote %d of %d bytes, %d of %d control bytes", n, len(b), oobn, len(oob))
	}
	return nil
}

// recvMsg receives one JSON message from c into v, and returns the files
// attached to it. It returns io.EOF when the peer closed its end.
func recvMsg(c *net.UnixConn, v any) ([]*os.File, error) {
	buf := make([]byte, maxMsg)
	oob := make([]byte, syscall.CmsgSpace(maxFDs*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, fmt.Errorf("receive message: %w", err)
	}
	files := parseRights(oob[:oobn])
	switch {
	case n == 0 && oobn == 0:
		return nil, io.EOF // a seqpacket socket reads nothing at its end
	case flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0:
		closeFiles(files)
		return nil, fmt.Errorf("receive message: truncated (flags %#x)", flags)
	}
	if err := json.Unmarshal(buf[:n], v); err != nil {
		closeFiles(files)
		return nil, fmt.Errorf("decode message: %w", err)
	}
	return files, nil
}

// parseRights returns the files of the SCM_RIGHTS control messages of oob
// (received close-on-exec: Go's ReadMsgUnix asks for it on Linux).
func parseRights(oob []byte) []*os.File {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var files []*os.File
	for i := range msgs {
		fds, err := syscall.ParseUnixRights(&msgs[i])
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "natlab-fd"))
		}
	}
	return files
}

// childCmd returns the command that runs the running program again as role
// in the namespace name: RunIfChild picks the role from the environment
// and the arguments from after the first "--". In a test binary a
// "-test.run=^$" comes first: a binary whose TestMain forgot RunIfChild
// runs no test and exits, which its parent reports. Another program gets
// no flag of the lab's (it has no -test flags); one that forgot RunIfChild
// sees only "--" and the role's arguments.
func childCmd(role, name string, args []string) *exec.Cmd {
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{os.Args[0]}
	if testing.Testing() {
		cmd.Args = append(cmd.Args, "-test.run=^$")
	}
	cmd.Args = append(append(cmd.Args, "--"), args...)
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, childEnv+"=") || strings.HasPrefix(kv, nameEnv+"=")
	})
	cmd.Env = append(cmd.Env, childEnv+"="+role, nameEnv+"="+name)
	// Under -race, a process sleeps 1 s at exit by default, which every
	// Proc.Close would wait for.
	if gorace := os.Getenv("GORACE"); !strings.Contains(gorace, "atexit_sleep_ms") {
		cmd.Env = append(cmd.Env, "GORACE="+strings.TrimSpace(gorace+" atexit_sleep_ms=0"))
	}
	return cmd
}

// The probes that tell whether this machine can build the lab: a bridge
// (kept, for the internet segment) and a veth pair; an nftables NAT chain
// with conntrack state and a fully random masquerade.
const (
	probeLinks = "link add br0 type bridge\nlink add natlab0 type veth peer name natlab1\nlink del natlab0\n"
	probeNAT   = `table ip natlab_probe {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ct state established,related accept
		oifname "br0" masquerade fully-random
	}
}
delete table ip natlab_probe
`
)

// start starts the lab's root process and checks that it can build the
// lab. Errors that say this machine cannot wrap ErrUnavailable.
func (l *Lab) start() error {
	logPath := filepath.Join(l.dir, "lab.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("create the lab's log: %w", err)
	}
	defer logf.Close()
	mine, theirs, err := connPair(syscall.SOCK_SEQPACKET)
	if err != nil {
		return err
	}
	cmd := childCmd(agentRole, Internet, nil)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{theirs} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWNET | syscall.CLONE_NEWPID,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		Pdeathsig:   syscall.SIGKILL,
		// A process group of its own: a terminal's Ctrl-C (SIGINT to the
		// foreground group) reaches the program, which removes the lab,
		// and not the lab's processes, which would die under its feet.
		Setpgid: true,
	}
	err = cmd.Start()
	_ = theirs.Close() // the root's now: its exit ends the socket
	if err != nil {
		_ = mine.Close()
		return fmt.Errorf("%w: cannot start a process in new user, mount, network and PID namespaces: %v "+
			"(are unprivileged user namespaces enabled? see the sysctls user.max_user_namespaces, "+
			"kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns)", ErrUnavailable, err)
	}
	root := &agent{name: Internet, conn: mine}
	l.sys = &system{cmd: cmd, log: logPath, root: root, agents: []*agent{root}}
	resp, err := root.call(request{Op: opHello})
	if err != nil {
		return fmt.Errorf("the lab's root process did not answer (%v): does the program call natlab.RunIfChild first (a test package in its TestMain, a command in main)?", err)
	}
	root.pid = resp.PID
	if _, err := l.exec(Internet, probeLinks, "ip", "-batch", "-"); err != nil {
		return fmt.Errorf("%w: cannot make a bridge and a veth pair in a user namespace: %v", ErrUnavailable, err)
	}
	if _, err := l.exec(Internet, probeNAT, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("%w: nftables cannot NAT in a user namespace: %v", ErrUnavailable, err)
	}
	return nil
}

// routerRules returns a router's nftables ruleset. The forward chain drops
// the blackholed pairs, then lets through the replies of established flows
// and the LAN's new flows to the internet, and drops the rest; the input
// chain lets in the LAN and replies, and counts and drops the rest (the
// unsolicited packets to the router's public address, for which conntrack
// has no mapping: they are never confirmed, so they cannot take a port that
// a LAN host's flow needs later).
func routerRules(nat NAT) string {
	masq := "masquerade"
	if nat == Symmetric {
		masq = "masquerade fully-random"
	}
	return fmt.Sprintf(`table ip %s {
	set blackhole {
		type ipv4_addr . ipv4_addr
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ip saddr . ip daddr @blackhole counter drop comment "blackhole"
		ct state established,related accept
		iifname "lan" oifname "wan" accept
	}
	chain input {
		type filter hook input priority filter; policy drop;
		iifname { "lo", "lan" } accept
		ct state established,related accept
		counter drop comment "unsolicited"
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan" %s
	}
}
`, nftTable, masq)
}

// gateway is the internet segment's address (the internet namespace's):
// the default route of the public hosts and the routers.
const gateway = "203.0.113.1"

// build makes one namespace per member, wires them as the package
// documentation says and waits until every link is up. The namespaces are
// configured concurrently where the order allows: the internet first, then
// the public hosts and the routers (a router makes its hosts' links), then
// the NATed hosts.
func (l *Lab) build(members []*member) error {
	for _, m := range members {
		resp, files, err := l.sys.root.callFiles(request{Op: opSpawn, Name: m.name})
		if err != nil {
			return err
		}
		if len(files) != 1 {
			closeFiles(files)
			return fmt.Errorf("spawn %s: the root sent %d sockets, not 1", m.name, len(files))
		}
		c, err := fileConn(files[0])
		if err != nil {
			return fmt.Errorf("spawn %s: %w", m.name, err)
		}
		m.ns = &agent{name: m.name, pid: resp.PID, conn: c}
		l.sys.agents = append(l.sys.agents, m.ns)
	}

	// The internet: a bridge, with a veth to each public host and router.
	links := map[*agent][]string{}
	inet := []string{"link set lo up", "addr add " + gateway + "/24 dev br0", "link set br0 up"}
	var upper, lower []*member
	for i, m := range members {
		if m.kind == kindNATed {
			lower = append(lower, m)
			continue
		}
		upper = append(upper, m)
		peer := "eth0"
		if m.kind == kindRouter {
			peer = "wan"
		}
		v := fmt.Sprintf("v%d", i)
		inet = append(inet,
			fmt.Sprintf("link add %s type veth peer name %s netns %d", v, peer, m.ns.pid),
			"link set "+v+" master br0", "link set "+v+" up")
		links[l.sys.root] = append(links[l.sys.root], v)
	}
	if len(upper) > 0 {
		links[l.sys.root] = append(links[l.sys.root], "br0") // a bridge is up once a port is
	}
	if err := l.batch(Internet, inet); err != nil {
		return err
	}

	for _, m := range members {
		links[m.ns] = []string{"eth0"}
	}
	configure := func(m *member) error {
		cmds := []string{"link set lo up"}
		switch m.kind {
		case kindPublic:
			cmds = append(cmds, fmt.Sprintf("addr add %s/24 dev eth0", m.addr), "link set eth0 up", "route add default via "+gateway)
		case kindNATed:
			cmds = append(cmds, fmt.Sprintf("addr add %s/24 dev eth0", m.addr), "link set eth0 up", "route add default via "+m.up.lan.Addr().String())
		case kindRouter:
			cmds = append(cmds,
				fmt.Sprintf("addr add %s/24 dev wan", m.addr), "link set wan up", "route add default via "+gateway,
				"link add lan type bridge", "addr add "+m.lan.String()+" dev lan", "link set lan up")
			for i, h := range members {
				if h.up != m {
					continue
				}
				v := fmt.Sprintf("h%d", i)
				cmds = append(cmds,
					fmt.Sprintf("link add %s type veth peer name eth0 netns %d", v, h.ns.pid),
					"link set "+v+" master lan", "link set "+v+" up")
			}
		}
		if err := l.batch(m.name, cmds); err != nil {
			return err
		}
		if m.kind != kindRouter {
			return nil
		}
		if _, err := m.ns.call(request{Op: opSysctl, Key: "net.ipv4.ip_forward", Value: "1"}); err != nil {
			return err
		}
		_, err := l.exec(m.name, routerRules(m.nat), "nft", "-f", "-")
		return err
	}
	for _, m := range members {
		if m.kind != kindRouter {
			continue
		}
		links[m.ns] = []string{"wan"}
		for i, h := range members {
			if h.up == m {
				links[m.ns] = append(links[m.ns], fmt.Sprintf("h%d", i))
			}
		}
		if len(links[m.ns]) > 1 {
			links[m.ns] = append(links[m.ns], "lan") // a bridge is up once a port is
		}
	}
	if err := concurrently(upper, configure); err != nil {
		return err
	}
	if err := concurrently(lower, configure); err != nil {
		return err
	}
	return waitLinks(links)
}

// concurrently runs f on every member, each in its own goroutine, and
// returns when all have returned, with their errors.
func concurrently(ms []*member, f func(*member) error) error {
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() { errs[i] = f(m) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// batch runs ip commands, one per line, in the named namespace.
func (l *Lab) batch(name string, cmds []string) error {
	_, err := l.exec(name, strings.Join(cmds, "\n")+"\n", "ip", "-batch", "-")
	return err
}

// linkPoll is the interval of waitLinks' polls; linkWait bounds the wait.
const (
	linkPoll = 2 * time.Millisecond
	linkWait = 30 * time.Second
)

// waitLinks waits until every link that links names, by namespace, is up
// and running (has its carrier). A veth's carrier comes on, and its queue
// starts, only after both ends are up, asynchronously; a packet sent before
// is lost.
func waitLinks(links map[*agent][]string) error {
	deadline := time.Now().Add(linkWait)
	for a, want := range links {
		for {
			resp, err := a.call(request{Op: opLinks})
			if err != nil {
				return err
			}
			var down []string
			for _, w := range want {
				if !slices.Contains(resp.Up, w) {
					down = append(down, w)
				}
			}
			if len(down) == 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("in namespace %s, links %q were not up and running within %v (up: %q)", a.name, down, linkWait, resp.Up)
			}
			time.Sleep(linkPoll)
		}
	}
	return nil
}

// runTimeout bounds one command that an agent runs.
const runTimeout = 30 * time.Second

// server is an agent: it serves the lab protocol in its namespace.
type server struct {
	name  string
	next  int            // the last process ID given
	procs map[int]*child // started and not yet stopped
}

// child is a process that an agent started for the test.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once err is set
	err  error         // cmd.Wait's
}

// serveAgent is the body of the lab's root and agents: it serves requests
// from the socket at fd 3 until the socket closes, then kills and reaps
// what it started. It returns the process's exit status.
func serveAgent() int {
	s := &server{name: os.Getenv(nameEnv), procs: map[int]*child{}}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "natlab: agent of %s: %s\n", s.name, fmt.Sprintf(format, args...))
	}
	conn, err := fileConn(os.NewFile(3, "natlab-control"))
	if err != nil {
		logf("%v", err)
		return 1
	}
	defer s.killAll()
	for {
		var req request
		files, err := recvMsg(conn, &req)
		if errors.Is(err, io.EOF) {
			return 0
		}
		if err != nil {
			logf("%v", err)
			return 1
		}
		resp, out := s.handle(req, files)
		closeFiles(files)
		err = sendMsg(conn, resp, out...)
		closeFiles(out)
		if err != nil {
			logf("answer %s: %v", req.Op, err)
			return 1
		}
	}
}

// handle serves one request; it returns the response and the files to
// attach to it.
func (s *server) handle(req request, files []*os.File) (response, []*os.File) {
	fail := func(format string, args ...any) (response, []*os.File) {
		return response{Err: fmt.Sprintf(format, args...)}, nil
	}
	switch req.Op {
	case opHello:
		return response{PID: os.Getpid()}, nil
	case opSpawn:
		ours, theirs, err := filePair(syscall.SOCK_SEQPACKET)
		if err != nil {
			return fail("%v", err)
		}
		cmd := childCmd(agentRole, req.Name, nil)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		cmd.ExtraFiles = []*os.File{theirs}
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
		err = cmd.Start()
		_ = theirs.Close()
		if err != nil {
			_ = ours.Close()
			return fail("start the agent of %s in a new network namespace: %v", req.Name, err)
		}
		go func() { _ = cmd.Wait() }() // reaps the agent when the lab ends it
		return response{PID: cmd.Process.Pid}, []*os.File{ours}
	case opRun:
		return s.run(req.Argv, req.Stdin), nil
	case opSysctl:
		path := "/proc/sys/" + strings.ReplaceAll(req.Key, ".", "/")
		if err := os.WriteFile(path, []byte(req.Value), 0); err != nil {
			return fail("set sysctl %s=%s: %v", req.Key, req.Value, err)
		}
		return response{}, nil
	case opStart:
		if len(files) != 2 {
			return fail("start %s: got %d files, want 2 (standard input and output, standard error)", req.Role, len(files))
		}
		cmd := childCmd(req.Role, s.name, req.Args)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = files[0], files[0], files[1]
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return fail("start role %s: %v", req.Role, err)
		}
		c := &child{cmd: cmd, done: make(chan struct{})}
		go func() {
			c.err = cmd.Wait()
			close(c.done)
		}()
		s.next++
		s.procs[s.next] = c
		return response{ID: s.next}, nil
	case opLinks:
		ifs, err := net.Interfaces()
		if err != nil {
			return fail("list links: %v", err)
		}
		var resp response
		for _, i := range ifs {
			if i.Flags&(net.FlagUp|net.FlagRunning) == net.FlagUp|net.FlagRunning {
				resp.Up = append(resp.Up, i.Name)
			}
		}
		return resp, nil
	case opStop:
		c := s.procs[req.ID]
		if c == nil {
			return fail("no process %d", req.ID)
		}
		delete(s.procs, req.ID)
		return c.stop(req.Grace), nil
	}
	return fail("unknown request %q", req.Op)
}

// run runs argv with stdin and answers with its standard output, or with
// the command, its exit and its standard error when it fails.
func (s *server) run(argv []string, stdin string) response {
	if len(argv) == 0 {
		return response{Err: "run: no command"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr capped
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := fmt.Sprintf("%q failed: %v: %s", argv, err, strings.TrimSpace(stderr.String()))
		if stdin != "" {
			msg += "\nits input was:\n" + numbered(stdin)
		}
		return response{Err: msg}
	}
	return response{Stdout: stdout.String()}
}

// numbered returns text with line numbers, for errors such as ip -batch's,
// which name the failed line by number.
func numbered(text string) string {
	var b strings.Builder
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		fmt.Fprintf(&b, "%4d  %s\n", i+1, line)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// capped is a buffer that keeps the first maxOutput bytes written to it.
type capped struct {
	mu  sync.Mutex
	buf bytes.Buffer
	cut bool
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := maxOutput - c.buf.Len(); len(p) > room {
		c.buf.Write(p[:max(room, 0)])
		c.cut = true
	} else {
		c.buf.Write(p)
	}
	return len(p), nil
}

func (c *capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cut {
		return c.buf.String() + "…(cut)"
	}
	return c.buf.String()
}

// stop waits up to grace for the process to exit, kills it then (at once
// when grace is 0), reaps it and reports how it ended.
func (c *child) stop(grace time.Duration) response {
	var resp response
	if grace <= 0 {
		_ = c.cmd.Process.Kill()
	} else {
		timer := time.NewTimer(grace)
		select {
		case <-c.done:
		case <-timer.C:
			resp.Killed = c.cmd.Process.Kill() == nil
		}
		timer.Stop()
	}
	<-c.done
	if c.err != nil {
		resp.Exit = c.err.Error()
	}
	return resp
}

// killAll kills and reaps every process the agent started.
func (s *server) killAll() {
	for id, c := range s.procs {
		_ = c.cmd.Process.Kill()
		<-c.done
		delete(s.procs, id)
	}
}
