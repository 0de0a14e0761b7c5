// Package natlab owns realmnet's NAT lab: a small internet of Linux network
// namespaces, built inside an unprivileged user namespace, with public
// hosts (a relay, a bootstrap) and sites whose hosts sit behind NAT routers
// (nftables), plus the processes that run in those namespaces. Two kinds
// of program use it: the integration tests (node's NAT tests), through New
// and Lab.Start, which tie the lab to a test; and `realmnet demo --nat`,
// through Build, Lab.StartRole and Lab.Close, which return errors instead.
//
// # The lab
//
// New and Build start one process in new user, mount, network and PID
// namespaces (the lab's root, uid 0 mapped to the caller's own uid, so
// nothing needs the host's root) and, through it, one process per lab
// namespace. Nothing touches the host's network: the lab has no link out,
// and it vanishes with its root process, which New's test cleanup or
// Lab.Close kills and reaps (the kernel then ends every process of the
// lab's PID namespace), and which also dies with the process that built
// the lab. The root has a process group of its own, so a terminal's
// Ctrl-C reaches that process, which removes the lab, and not the lab.
//
// The addresses are documentation and private ranges only:
//
//	internet   203.0.113.0/24, a bridge in the "internet" namespace, 203.0.113.1
//	public     Topology.Public[i]: 203.0.113.(10+i), default route via .1
//	router     Topology.Sites[k].Router: WAN 203.0.113.(100+k), LAN 10.0.(k+1).1/24
//	NATed host Topology.Sites[k].Hosts[j]: 10.0.(k+1).(10+j), default route via the router
//
// Each router forwards its LAN to the internet and nothing back but
// conntrack's replies (established and related flows): an unsolicited
// packet from the internet is dropped, which is the precondition of hole
// punching. The NAT kind decides the mapping: EndpointIndependent keeps the
// host's source port and uses one mapping for every destination;
// Symmetric picks a new random port for every destination.
//
// # Processes in the lab
//
// A Go process cannot move itself into another network namespace (setns
// changes one OS thread, and goroutines move between threads), so the lab
// runs its processes by starting the running program again: the test
// binary, or the command that called Build. That program must call
// RunIfChild first — a test package in its TestMain, a command at the top
// of main, before it parses its flags — with the roles that it starts.
//
//	func TestMain(m *testing.M) {
//		natlab.RunIfChild(map[string]natlab.Role{"node": nodeRole})
//		goleak.VerifyTestMain(m)
//	}
//
//	func TestHolePunch(t *testing.T) {
//		lab := natlab.New(t, natlab.Topology{
//			Public: []string{"relay"},
//			Sites: []natlab.Site{
//				{Router: "r1", NAT: natlab.EndpointIndependent, Hosts: []string{"a"}},
//				{Router: "r2", NAT: natlab.EndpointIndependent, Hosts: []string{"b"}},
//			},
//		})
//		relay := lab.Start(t, "relay", "node", "-relay")
//		a := lab.Start(t, "a", "node")
//		...
//	}
//
// A command does the same with errors instead of a test:
//
//	func main() {
//		natlab.RunIfChild(map[string]natlab.Role{"node": nodeRole})
//		...
//		lab, err := natlab.Build(topo)
//		if errors.Is(err, natlab.ErrUnavailable) { ... explain, exit ... }
//		defer lab.Close()
//		relay, err := lab.StartRole("relay", "node", "-relay")
//		...
//	}
//
// A role that runs go-libp2p calls DeclareInternetPublic first: the lab's
// internet is a documentation range, which go-libp2p otherwise treats as
// unroutable.
//
// Lab.Start and Lab.StartRole run a role in a host's namespace; its
// standard input and output are the caller's Proc, a line-based link. At
// the end of a test every process that Start started is stopped and
// reaped, and New's t.Cleanup removes the lab; Lab.Close does both for a
// lab that Build built. Either way no goroutine of the calling process
// outlives the lab. Lab.Blackhole kills a path mid-test (a router drops a
// pair of addresses' traffic); Lab.Exec runs ip or nft in a namespace, to
// inspect or change it.
//
// Every namespace is served by a process of its own, the program again. On
// a two-core machine New takes about 0.2 s for a lab of five namespaces and
// 0.8 s for thirteen, twice that under -race, where the test binary starts
// slower; Start takes about 15 ms (70 ms under -race).
//
// Where the lab cannot be built (not Linux, no user namespaces, no ip or
// nft, no nftables NAT in a user namespace) Build returns an error that
// wraps ErrUnavailable and says which; New skips the test with that
// message, or fails it when the environment variable
// REALMNET_REQUIRE_NATLAB is set.
package natlab

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	manet "github.com/multiformats/go-multiaddr/net"
)

// RequireEnv, when set to anything but the empty string, makes New fail the
// test where the lab cannot be built; unset, New skips it. CI sets it to 1.
const RequireEnv = "REALMNET_REQUIRE_NATLAB"

// Internet is the name of the internet segment's namespace, for Lab.Exec:
// it holds the bridge that connects the public hosts and the routers, with
// the address 203.0.113.1. It is not a valid host or router name.
const Internet = "internet"

// DeclareInternetPublic makes go-multiaddr, and so go-libp2p, count the
// lab's internet (203.0.113.0/24, a documentation range that
// manet.Unroutable4 lists) as public in this process: relay reservations
// then carry lab addresses, and autorelay advertises circuit addresses
// through a lab relay. It changes a global of go-multiaddr for the whole
// process, so call it only in a role (a lab process), before the role
// starts anything; never in the program that builds the lab. Later calls
// do nothing.
func DeclareInternetPublic() {
	internet := net.IPv4(203, 0, 113, 1)
	manet.Unroutable4 = slices.DeleteFunc(manet.Unroutable4, func(n *net.IPNet) bool { return n.Contains(internet) })
}

// NAT is how a site's router maps its LAN's outgoing flows to its public
// address. Filtering is the same for both kinds: conntrack lets in only
// the replies of flows that the LAN started (address- and port-dependent
// filtering).
type NAT string

// The NAT kinds.
const (
	// EndpointIndependent is a port-preserving masquerade: a LAN host's
	// flow leaves with the host's own source port, and every destination
	// sees the same public address and port for one socket. Only when two
	// LAN hosts use the same port towards the same destination does the
	// second get another port.
	EndpointIndependent NAT = "endpoint-independent"
	// Symmetric maps address- and port-dependently: every new destination
	// (address and port) of a socket gets a new random public port
	// (nftables' masquerade fully-random).
	Symmetric NAT = "symmetric"
)

// Topology describes a lab: its public hosts and its NATed sites. Every
// name is unique in the lab, made of letters, digits, '.', '_' and '-', and
// is not Internet.
type Topology struct {
	// Public names the hosts on the internet segment, with public
	// addresses; at most 90.
	Public []string
	// Sites are the NATed networks; at most 150.
	Sites []Site
}

// Site is a router and the private LAN behind it.
type Site struct {
	// Router names the site's router.
	Router string
	// NAT is the router's kind of NAT.
	NAT NAT
	// Hosts names the hosts on the LAN; at most 240.
	Hosts []string
}

// Role is the body of a process that Lab.Start or Lab.StartRole runs in a
// lab namespace. It gets the arguments given to Start and the link to the
// caller's Proc: it reads lines from in and writes lines to out. It must
// return when in ends (the caller closed the Proc); its process then exits
// with status 0, or 1 when it returns an error (printed to its standard
// error, which Proc.Close's error quotes). While a role runs, os.Stdout is
// its standard error, so stray prints cannot corrupt the link.
type Role func(args []string, in io.Reader, out io.Writer) error

// Process environment of the lab's children.
const (
	// childEnv names the role a re-executed program runs.
	childEnv = "NATLAB_CHILD"
	// nameEnv names the namespace a lab process runs in, for its logs.
	nameEnv = "NATLAB_NAME"
	// agentRole is the role of the lab's own processes: the root and one
	// agent per namespace.
	agentRole = "natlab/agent"
)

// RunIfChild returns at once in the program itself. In a process that the
// lab started, it runs that process's role, registered in roles by name
// (or the lab's own), and exits. Call it first, before anything else runs
// (flag parsing, a command line parser), with every role that the program
// starts: a test package in its TestMain, a command in main. A role's
// arguments are those after the first "--" of the process's arguments
// (the lab puts them there, after a test binary's -test flags).
func RunIfChild(roles map[string]Role) {
	role, ok := os.LookupEnv(childEnv)
	if !ok {
		return
	}
	_ = os.Unsetenv(childEnv) // not inherited by what the role runs
	if role == agentRole {
		os.Exit(serveAgent())
	}
	os.Exit(runRole(role, roles))
}

// runRole runs one registered role on the standard input and output and
// returns the process's exit status.
func runRole(name string, roles map[string]Role) int {
	fn := roles[name]
	if fn == nil {
		known := make([]string, 0, len(roles))
		for k := range roles {
			known = append(known, k)
		}
		slices.Sort(known)
		fmt.Fprintf(os.Stderr, "natlab: this program has no role %q: it passes natlab.RunIfChild the roles %q\n", name, known)
		return 2
	}
	// The arguments follow the first "--" (after a test binary's flags).
	var args []string
	if i := slices.Index(os.Args, "--"); i >= 0 {
		args = os.Args[i+1:]
	}
	out := os.Stdout
	os.Stdout = os.Stderr
	if err := fn(args, os.Stdin, out); err != nil {
		fmt.Fprintf(os.Stderr, "natlab: role %q on %s: %v\n", name, os.Getenv(nameEnv), err)
		return 1
	}
	return 0
}

// Lab is a running NAT lab, built by New (for a test) or Build (for a
// program). Its methods are safe for concurrent use, but those that take a
// testing.TB fail the test on error, so, like t.Fatal, call them from the
// goroutine running the test.
type Lab struct {
	dir    string             // logs: the test's temporary directory, or Build's own
	ownDir bool               // Build made dir: Close removes it
	tools  tools              // absolute paths of ip and nft
	nodes  map[string]*member // hosts and routers by name
	sys    *system            // the lab's processes; nil until started

	closed atomic.Bool
	mu     sync.Mutex
	procs  map[*Proc]bool // started and not yet stopped
	seq    int            // numbers the log files of Start
}

// kind is what a lab member is.
type kind int

const (
	kindPublic kind = iota // a host on the internet segment
	kindRouter             // a site's router
	kindNATed              // a host behind a router
)

// member is one host or router of the lab.
type member struct {
	name string
	kind kind
	addr netip.Addr   // public hosts and NATed hosts: their address; routers: the WAN address
	lan  netip.Prefix // routers: the LAN, with the router's own address
	nat  NAT          // routers: the kind of NAT
	up   *member      // NATed hosts: their router
	ns   *agent       // the process that serves the member's namespace
}

// validName is the shape of a host or router name: it names log files.
var validName = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// plan checks topo and assigns every member its addresses, in the order of
// the package documentation. It returns the members in build order: public
// hosts, then each router followed by its hosts.
func plan(topo Topology) ([]*member, error) {
	if len(topo.Public) > 90 {
		return nil, fmt.Errorf("%d public hosts; at most 90 fit 203.0.113.10-99", len(topo.Public))
	}
	if len(topo.Sites) > 150 {
		return nil, fmt.Errorf("%d sites; at most 150 fit 203.0.113.100-249", len(topo.Sites))
	}
	seen := map[string]bool{}
	check := func(what, name string) error {
		switch {
		case !validName.MatchString(name):
			return fmt.Errorf("%s name %q: use letters, digits, '.', '_' and '-'", what, name)
		case name == Internet:
			return fmt.Errorf("%s name %q is reserved for the internet segment", what, name)
		case seen[name]:
			return fmt.Errorf("name %q is used twice", name)
		}
		seen[name] = true
		return nil
	}
	var out []*member
	for i, name := range topo.Public {
		if err := check("public host", name); err != nil {
			return nil, err
		}
		out = append(out, &member{name: name, kind: kindPublic, addr: netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + i)})})
	}
	for k, s := range topo.Sites {
		if err := check("router", s.Router); err != nil {
			return nil, err
		}
		if s.NAT != EndpointIndependent && s.NAT != Symmetric {
			return nil, fmt.Errorf("router %s: NAT %q is neither %q nor %q", s.Router, s.NAT, EndpointIndependent, Symmetric)
		}
		if len(s.Hosts) > 240 {
			return nil, fmt.Errorf("router %s: %d hosts; at most 240 fit its /24", s.Router, len(s.Hosts))
		}
		r := &member{
			name: s.Router, kind: kindRouter, nat: s.NAT,
			addr: netip.AddrFrom4([4]byte{203, 0, 113, byte(100 + k)}),
			lan:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(k + 1), 1}), 24),
		}
		out = append(out, r)
		for j, name := range s.Hosts {
			if err := check("host", name); err != nil {
				return nil, err
			}
			out = append(out, &member{name: name, kind: kindNATed, up: r, addr: netip.AddrFrom4([4]byte{10, 0, byte(k + 1), byte(10 + j)})})
		}
	}
	return out, nil
}

// ErrUnavailable is wrapped by the errors of Build that mean this machine
// cannot build the lab, as opposed to a bug of the lab or of its caller:
// the system is not Linux, unprivileged user namespaces are disabled, ip
// (iproute2) or nft (nftables) is missing, or nftables cannot NAT inside a
// user namespace. Match it with errors.Is; the error's message says which
// and how to fix it.
var ErrUnavailable = errors.New("the NAT lab cannot run here")

// errUnavailable is ErrUnavailable under the name the package's tests use.
var errUnavailable = ErrUnavailable

// unavailable skips the test because err says the lab cannot be built
// here, or fails it when RequireEnv is set.
func unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("natlab: %v; %s is set, so the NAT lab tests must run", err, RequireEnv)
	} else {
		t.Skipf("natlab: %v; skipping (set %s=1 to fail instead)", err, RequireEnv)
	}
}

// New builds the lab that topo describes and returns it once every link is
// up. The lab is removed at the end of the test (t.Cleanup): every process
// it started is killed and reaped.
//
// New skips the test, or fails it when REALMNET_REQUIRE_NATLAB is set,
// where the lab cannot be built: on systems other than Linux, without
// unprivileged user namespaces, without iproute2's ip or nftables' nft, or
// where nftables cannot NAT inside a user namespace; the message says
// which. It fails the test when topo is invalid, when the test package's
// TestMain does not call RunIfChild, or when a step of the build fails (the
// message has the command and its output). It is Build for a test.
func New(t testing.TB, topo Topology) *Lab {
	t.Helper()
	l, err := build(topo, t.TempDir())
	switch {
	case errors.Is(err, ErrUnavailable):
		unavailable(t, err)
	case err != nil:
		t.Fatalf("natlab: %v", err)
	}
	t.Cleanup(func() { l.close(t) })
	return l
}

// Build builds the lab that topo describes and returns it once every link
// is up, for a program rather than a test: New without a testing.TB. The
// logs (the lab's and every process's standard error) go to a new
// temporary directory. The caller must call Close, which stops every
// process and removes the lab and its logs. Building takes about 0.2 s for
// five namespaces on a two-core machine (see the package documentation).
//
// Errors, each starting "natlab: ": an invalid topo; errors.Is(err,
// ErrUnavailable) where this machine cannot build the lab (the message says
// why: not Linux, no unprivileged user namespaces, no ip or nft, no
// nftables NAT in a user namespace); a program that does not call
// RunIfChild first; a failed step of the build (with the command, its
// output and the lab's log). On error nothing of the lab is left running.
// Build may be called concurrently, for separate labs.
func Build(topo Topology) (*Lab, error) {
	dir, err := os.MkdirTemp("", "natlab-")
	if err != nil {
		return nil, fmt.Errorf("natlab: a directory for the lab's logs: %w", err)
	}
	l, err := build(topo, dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("natlab: %w", err)
	}
	l.ownDir = true
	return l, nil
}

// build builds the lab of topo, with its logs in dir; see New and Build.
// An error that says this machine cannot build the lab wraps
// ErrUnavailable; any other says which step failed and, once the root
// started, has the end of the lab's log. On error the lab is removed.
func build(topo Topology, dir string) (*Lab, error) {
	members, err := plan(topo)
	if err != nil {
		return nil, fmt.Errorf("invalid topology: %w", err)
	}
	l := &Lab{dir: dir, nodes: map[string]*member{}, procs: map[*Proc]bool{}}
	for _, m := range members {
		l.nodes[m.name] = m
	}
	if l.tools, err = findTools(); err != nil {
		return nil, err
	}
	fail := func(step string, err error) (*Lab, error) {
		if !errors.Is(err, ErrUnavailable) {
			err = fmt.Errorf("%s: %w", step, err)
			if l.sys != nil {
				if s := logTail(l.sys.log); s != "" {
					err = fmt.Errorf("%w\nthe lab's log (%s):\n%s", err, l.sys.log, s)
				}
			}
		}
		if _, rmErr := l.remove(); rmErr != nil {
			err = errors.Join(err, rmErr)
		}
		return nil, err
	}
	if err := l.start(); err != nil {
		return fail("start the lab", err)
	}
	if err := l.build(members); err != nil {
		return fail("build the lab", err)
	}
	return l, nil
}

// lookup returns the named host or router, or nil.
func (l *Lab) lookup(name string) *member { return l.nodes[name] }

// Addr returns the address of the named host or router: a public host's
// public address, a NATed host's private LAN address, a router's public
// (WAN) address, which is also its hosts' address as the internet sees
// them. It panics when the lab has no such host or router.
func (l *Lab) Addr(name string) netip.Addr {
	m := l.lookup(name)
	if m == nil {
		panic(fmt.Sprintf("natlab: Addr(%q): the lab has no host or router of that name", name))
	}
	return m.addr
}

// namespace returns the agent of the named namespace: a host, a router or
// Internet.
func (l *Lab) namespace(name string) (*agent, error) {
	if name == Internet {
		return l.sys.root, nil
	}
	if m := l.lookup(name); m != nil {
		return m.ns, nil
	}
	return nil, fmt.Errorf("the lab has no namespace %q (hosts, routers and %q)", name, Internet)
}

// Exec runs argv in the named namespace (a host, a router or Internet) and
// returns its standard output; "ip" and "nft" run the tools New found. It
// fails the test when the command cannot run or exits non-zero, with its
// standard error. It is for inspecting the lab (nft list ruleset, ip
// route) and for changes that the lab has no method for.
func (l *Lab) Exec(t testing.TB, name string, argv ...string) string {
	t.Helper()
	out, err := l.exec(name, "", argv...)
	if err != nil {
		t.Fatalf("natlab: %v", err)
	}
	return out
}

// exec runs argv with stdin in the named namespace.
func (l *Lab) exec(name, stdin string, argv ...string) (string, error) {
	a, err := l.namespace(name)
	if err != nil {
		return "", err
	}
	if len(argv) == 0 {
		return "", fmt.Errorf("exec in %s: no command", name)
	}
	argv = slices.Clone(argv)
	switch argv[0] {
	case "ip":
		argv[0] = l.tools.ip
	case "nft":
		argv[0] = l.tools.nft
	}
	resp, err := a.call(request{Op: opRun, Argv: argv, Stdin: stdin})
	if err != nil {
		return "", err
	}
	return resp.Stdout, nil
}

// Blackhole makes router drop every packet that it would forward between
// the addresses a and b, in both directions, until restore is called: a
// path that dies without a word. The addresses are as the router sees them:
// its own hosts' private addresses, and public addresses (a public host,
// another router's WAN address for the hosts behind it). The router's NAT
// mappings (conntrack entries) of those flows live on while packets keep
// coming, as they would on a real path that loses everything. It fails the test when router is not one of the
// lab's routers or the rule cannot be changed; so does restore, which may
// be called more than once.
func (l *Lab) Blackhole(t testing.TB, router string, a, b netip.Addr) (restore func()) {
	t.Helper()
	if m := l.lookup(router); m == nil || m.kind != kindRouter {
		t.Fatalf("natlab: Blackhole: %q is not a router of the lab", router)
	}
	if !a.Is4() || !b.Is4() {
		t.Fatalf("natlab: Blackhole on %s: %v and %v must be IPv4 addresses", router, a, b)
	}
	elems := fmt.Sprintf("{ %s . %s, %s . %s }", a, b, b, a)
	if _, err := l.exec(router, "", "nft", "add", "element", "ip", nftTable, "blackhole", elems); err != nil {
		t.Fatalf("natlab: Blackhole: %v", err)
	}
	var once sync.Once
	return func() {
		t.Helper()
		once.Do(func() {
			if _, err := l.exec(router, "", "nft", "delete", "element", "ip", nftTable, "blackhole", elems); err != nil {
				t.Fatalf("natlab: Blackhole's restore: %v", err)
			}
		})
	}
}

// Start runs role (registered with RunIfChild) in the named namespace,
// usually a host's, with args, and returns the link to it. The process is
// the test binary again, as the namespace's root user (with every
// capability inside the lab, none outside); its standard error goes to a
// file in the test's temporary directory. At the end of t (t.Cleanup),
// unless the test closed or killed it, it is closed as by Proc.Close, and a
// failure is reported with t.Errorf and its standard error. Start fails the
// test when the process cannot be started (see StartRole).
func (l *Lab) Start(t testing.TB, name, role string, args ...string) *Proc {
	t.Helper()
	p, err := l.StartRole(name, role, args...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		if p.stopped.Load() {
			return // the test closed or killed it, and saw the result
		}
		if err := p.Close(); err != nil {
			t.Errorf("%v", err)
		} else if t.Failed() {
			t.Logf("natlab: %s's standard error:\n%s", p, p.stderrTail())
		}
	})
	return p
}

// StartRole runs role (registered with RunIfChild) in the named namespace,
// usually a host's, with args, and returns the link to it once the process
// has started (about 15 ms; it may not have read its arguments yet). The
// process is the running program again, as the namespace's root user (with
// every capability inside the lab, none outside); its standard error goes
// to a file in the lab's log directory, whose end Proc.Recv's and
// Proc.Close's errors quote. The caller stops it with Proc.Close or
// Proc.Kill; Lab.Close kills whatever is still running.
//
// Errors, each starting "natlab: start role": the lab has no namespace
// name; role is one of the lab's own (named natlab/...); the lab is closed;
// the process cannot be started (its agent's error). StartRole is safe for
// concurrent use.
func (l *Lab) StartRole(name, role string, args ...string) (*Proc, error) {
	p, err := l.startProc(name, role, args)
	if err != nil {
		return nil, fmt.Errorf("natlab: start role %q on %s: %w", role, name, err)
	}
	return p, nil
}

// logTail returns the end of the named file, at most 8 KiB, for error
// messages; "" when it is empty or missing.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	const max = 8 << 10
	if len(b) > max {
		b = append([]byte("…"), b[len(b)-max:]...)
	}
	return strings.TrimRight(string(b), "\n")
}

// stopGrace is how long Proc.Close waits for a process to exit after its
// standard input closed, before it kills it.
const stopGrace = 10 * time.Second

// callTimeout bounds one request to a lab process (a command, a start, a
// stop beyond its grace): generous, for a busy two-core machine.
const callTimeout = 60 * time.Second
