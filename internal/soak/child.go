// Package soak is realmnet's multi-process soak test (issue #11 item 12).
//
// The test (soak_test.go) runs its own binary again as child processes
// (REALMNET_SOAK_CHILD=1); each child hosts several realmnet nodes and obeys
// a line-based JSON protocol on stdin/stdout: one Request per line in, one
// Response per line out, matched by ID. Requests run concurrently; a child
// exits when its stdin ends, when told to (OpExit), or with its parent
// (Pdeathsig). This file is the child: Serve.
//
// The default `go test` run is short (10 nodes, 2 processes, 3 realms, a
// scripted churn); REALMNET_SOAK=10m runs the full soak of issue #11 (50
// nodes in 5 processes, 10 realms, random churn for the given duration).
package soak

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"

	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

// ChildEnv is the environment variable that makes the test binary a child.
const ChildEnv = "REALMNET_SOAK_CHILD"

// EchoProtocol is the realm application protocol the soak echoes on.
const EchoProtocol = "/realmnet/soak/echo/1.0.0"

// Op names a request.
type Op string

// The requests a child serves.
const (
	// OpStart starts node Node with its identity and data in Dir,
	// listening on 127.0.0.1 UDP Port (0: any); the response has its Info.
	OpStart Op = "start"
	// OpJoin joins node Node to realm Realm with PSK and Peers.
	OpJoin Op = "join"
	// OpLeave makes node Node leave realm Realm.
	OpLeave Op = "leave"
	// OpMembers reports every node's realms and their members.
	OpMembers Op = "members"
	// OpStats reports the process's goroutines and heap (after a GC when
	// GC is set) and every node's connections and resource scopes.
	OpStats Op = "stats"
	// OpEcho echoes from node Node to Peer in realm Realm, retrying until
	// one echo succeeds or Budget has passed.
	OpEcho Op = "echo"
	// OpView describes node Node's view of Peer in realm Realm (paths,
	// membership), in Response.Note: the far end of a failed echo.
	OpView Op = "view"
	// OpStockStart starts Hosts stock go-libp2p hosts (QUIC on loopback).
	OpStockStart Op = "stock-start"
	// OpStockConnect connects the stock hosts pairwise until they hold
	// Conns connection ends in all.
	OpStockConnect Op = "stock-connect"
	// OpExit closes every node and host and exits.
	OpExit Op = "exit"
)

// Request is one line from the parent.
type Request struct {
	ID     int64           `json:"id"`
	Op     Op              `json:"op"`
	Node   int             `json:"node,omitempty"`
	Dir    string          `json:"dir,omitempty"`
	Port   int             `json:"port,omitempty"`
	Realm  string          `json:"realm,omitempty"`
	PSK    []byte          `json:"psk,omitempty"`
	Peers  []peer.AddrInfo `json:"peers,omitempty"`
	Peer   peer.ID         `json:"peer,omitempty"`
	Budget time.Duration   `json:"budget,omitempty"`
	GC     bool            `json:"gc,omitempty"`
	Hosts  int             `json:"hosts,omitempty"`
	Conns  int             `json:"conns,omitempty"`
}

// Response answers the Request with the same ID; Err is empty on success.
type Response struct {
	ID      int64                        `json:"id"`
	Err     string                       `json:"err,omitempty"`
	Info    *peer.AddrInfo               `json:"info,omitempty"`
	Members map[int]map[string][]peer.ID `json:"members,omitempty"`
	Stats   *ProcStats                   `json:"stats,omitempty"`
	Echo    *EchoResult                  `json:"echo,omitempty"`
	// Note is a non-fatal remark (Leave's error: unacknowledged goodbyes).
	Note string `json:"note,omitempty"`
}

// ProcStats is one child's snapshot.
type ProcStats struct {
	Goroutines int `json:"goroutines"`
	// HeapInuse and HeapAlloc are runtime.MemStats' fields, in bytes.
	HeapInuse uint64            `json:"heapInuse"`
	HeapAlloc uint64            `json:"heapAlloc"`
	Nodes     map[int]NodeStats `json:"nodes"`
	// StockConns is the number of connection ends of the stock hosts.
	StockConns int `json:"stockConns"`
}

// NodeStats is one node's connections and resource scopes.
type NodeStats struct {
	Conns     int               `json:"conns"`
	Peers     int               `json:"peers"`
	System    network.ScopeStat `json:"system"`
	Transient network.ScopeStat `json:"transient"`
	// PeerSum is the sum of every peer scope.
	PeerSum network.ScopeStat `json:"peerSum"`
	// Realms maps each joined realm to its scope and its listed members.
	Realms map[string]RealmScope `json:"realms"`
}

// RealmScope is one realm's resource scope next to its member list.
type RealmScope struct {
	Listed     int `json:"listed"`
	Charged    int `json:"charged"`
	StreamsIn  int `json:"streamsIn"`
	StreamsOut int `json:"streamsOut"`
}

// EchoResult is the outcome of an OpEcho.
type EchoResult struct {
	OK       bool          `json:"ok"`
	Attempts int           `json:"attempts"`
	Elapsed  time.Duration `json:"elapsed"`
	LastErr  string        `json:"lastErr,omitempty"`
	// Diag, on failure, is the echoing node's view of the peer: the
	// connections the attempts used, its paths and whether it lists the
	// peer as a member.
	Diag string `json:"diag,omitempty"`
}

type childNode struct {
	n      *node.Node
	mu     sync.Mutex
	realms map[string]*realm.Realm
}

type child struct {
	mu    sync.Mutex
	nodes map[int]*childNode
	stock []host.Host

	outMu sync.Mutex
	out   *json.Encoder
}

// Serve runs a child: it reads Requests from in and writes Responses to
// out until in ends or an OpExit, and returns the exit code.
func Serve(in io.Reader, out io.Writer) int {
	c := &child{nodes: map[int]*childNode{}, out: json.NewEncoder(out)}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	var wg sync.WaitGroup
	for sc.Scan() {
		var req Request
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			fmt.Fprintf(os.Stderr, "soak child: bad request %q: %v\n", sc.Text(), err)
			return 2
		}
		if req.Op == OpExit {
			wg.Wait()
			c.closeAll()
			c.reply(Response{ID: req.ID})
			return 0
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := c.handle(req)
			resp.ID = req.ID
			c.reply(resp)
		}()
	}
	// The parent is gone: leave as a crash would.
	return 0
}

func (c *child) reply(r Response) {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if err := c.out.Encode(r); err != nil {
		fmt.Fprintf(os.Stderr, "soak child: write: %v\n", err)
		os.Exit(3)
	}
}

func (c *child) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cn := range c.nodes {
		_ = cn.n.Close()
	}
	for _, h := range c.stock {
		_ = h.Close()
	}
}

func (c *child) node(i int) (*childNode, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cn, ok := c.nodes[i]
	if !ok {
		return nil, fmt.Errorf("no node %d", i)
	}
	return cn, nil
}

func (c *child) handle(req Request) Response {
	var resp Response
	var err error
	switch req.Op {
	case OpStart:
		resp.Info, err = c.start(req)
	case OpJoin:
		err = c.join(req)
	case OpLeave:
		resp.Note, err = c.leave(req)
	case OpMembers:
		resp.Members = c.members()
	case OpStats:
		resp.Stats = c.stats(req.GC)
	case OpEcho:
		resp.Echo, err = c.echo(req)
	case OpView:
		resp.Note, err = c.view(req)
	case OpStockStart:
		err = c.stockStart(req.Hosts)
	case OpStockConnect:
		err = c.stockConnect(req.Conns)
	default:
		err = fmt.Errorf("unknown op %q", req.Op)
	}
	if err != nil {
		resp.Err = err.Error()
	}
	return resp
}

func (c *child) start(req Request) (*peer.AddrInfo, error) {
	c.mu.Lock()
	_, dup := c.nodes[req.Node]
	c.mu.Unlock()
	if dup {
		return nil, fmt.Errorf("node %d already started", req.Node)
	}
	if err := os.MkdirAll(req.Dir, 0o700); err != nil {
		return nil, err
	}
	n, err := node.New(context.Background(),
		node.ListenAddrStrings(fmt.Sprintf("/ip4/127.0.0.1/udp/%d/quic-v1", req.Port)),
		node.IdentityFile(filepath.Join(req.Dir, "key")),
		node.DataDir(filepath.Join(req.Dir, "data")),
		node.DHTMode(node.DHTClient),
	)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.nodes[req.Node] = &childNode{n: n, realms: map[string]*realm.Realm{}}
	c.mu.Unlock()
	ai := n.AddrInfo()
	return &ai, nil
}

func (c *child) join(req Request) error {
	cn, err := c.node(req.Node)
	if err != nil {
		return err
	}
	r, err := cn.n.JoinRealm(context.Background(), req.Realm,
		realm.PSK(req.PSK), realm.Peers(req.Peers...), realm.StreamHandler(EchoProtocol, echoHandler))
	if err != nil {
		return err
	}
	cn.mu.Lock()
	cn.realms[req.Realm] = r
	cn.mu.Unlock()
	return nil
}

func (c *child) leave(req Request) (string, error) {
	cn, err := c.node(req.Node)
	if err != nil {
		return "", err
	}
	cn.mu.Lock()
	r, ok := cn.realms[req.Realm]
	delete(cn.realms, req.Realm)
	cn.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("node %d is not in realm %s", req.Node, req.Realm)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The realm is left whatever the error says (unacknowledged goodbyes).
	if err := r.Leave(ctx); err != nil {
		return err.Error(), nil
	}
	return "", nil
}

func (c *child) snapshot() map[int]*childNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[int]*childNode, len(c.nodes))
	for i, cn := range c.nodes {
		m[i] = cn
	}
	return m
}

func (cn *childNode) joined() map[string]*realm.Realm {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	m := make(map[string]*realm.Realm, len(cn.realms))
	for name, r := range cn.realms {
		m[name] = r
	}
	return m
}

func (c *child) members() map[int]map[string][]peer.ID {
	out := map[int]map[string][]peer.ID{}
	for i, cn := range c.snapshot() {
		rs := map[string][]peer.ID{}
		for name, r := range cn.joined() {
			rs[name] = r.Members()
		}
		out[i] = rs
	}
	return out
}

func (c *child) stats(gc bool) *ProcStats {
	if gc {
		runtime.GC()
		debug.FreeOSMemory()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := &ProcStats{
		Goroutines: runtime.NumGoroutine(),
		HeapInuse:  ms.HeapInuse,
		HeapAlloc:  ms.HeapAlloc,
		Nodes:      map[int]NodeStats{},
	}
	for i, cn := range c.snapshot() {
		rst := cn.n.ResourceManager().Stat()
		ns := NodeStats{
			Conns:     cn.n.ConnectionCount(),
			Peers:     len(cn.n.ConnectionsMap()),
			System:    rst.Rcmgr.System,
			Transient: rst.Rcmgr.Transient,
			Realms:    map[string]RealmScope{},
		}
		for _, ps := range rst.Rcmgr.Peers {
			ns.PeerSum.NumStreamsInbound += ps.NumStreamsInbound
			ns.PeerSum.NumStreamsOutbound += ps.NumStreamsOutbound
			ns.PeerSum.NumConnsInbound += ps.NumConnsInbound
			ns.PeerSum.NumConnsOutbound += ps.NumConnsOutbound
			ns.PeerSum.Memory += ps.Memory
		}
		for name, r := range cn.joined() {
			rs := RealmScope{Listed: len(r.Members())}
			if v, ok := cn.n.ResourceManager().ViewRealm(r.ID()); ok {
				rs.Charged, rs.StreamsIn, rs.StreamsOut = v.Members, v.StreamsInbound, v.StreamsOutbound
			}
			ns.Realms[name] = rs
		}
		st.Nodes[i] = ns
	}
	c.mu.Lock()
	for _, h := range c.stock {
		st.StockConns += len(h.Network().Conns())
	}
	c.mu.Unlock()
	return st
}

func echoHandler(s network.Stream) {
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(s, s)
	_ = s.Close()
}

func (c *child) echo(req Request) (*EchoResult, error) {
	cn, err := c.node(req.Node)
	if err != nil {
		return nil, err
	}
	cn.mu.Lock()
	r, ok := cn.realms[req.Realm]
	cn.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("node %d is not in realm %s", req.Node, req.Realm)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), req.Budget)
	defer cancel()
	res := &EchoResult{}
	var used []string
	for {
		res.Attempts++
		// A stream on a path that has just gone silent hangs until its
		// deadline; a fresh attempt may take another path.
		actx, acancel := context.WithTimeout(ctx, attemptTimeout)
		connID, err := echoOnce(actx, r, req.Peer)
		acancel()
		if err == nil {
			res.OK = true
			break
		}
		used = append(used, connID)
		res.LastErr = err.Error()
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
			continue
		}
		break
	}
	res.Elapsed = time.Since(start)
	if !res.OK {
		res.Diag = fmt.Sprintf("streams on %v; member=%v; paths %s", used, slices.Contains(r.Members(), req.Peer), describePaths(cn.n, req.Peer))
	}
	return res, nil
}

func (c *child) view(req Request) (string, error) {
	cn, err := c.node(req.Node)
	if err != nil {
		return "", err
	}
	cn.mu.Lock()
	r, ok := cn.realms[req.Realm]
	cn.mu.Unlock()
	member := ok && slices.Contains(r.Members(), req.Peer)
	return fmt.Sprintf("in realm=%v member=%v paths %s", ok, member, describePaths(cn.n, req.Peer)), nil
}

// describePaths lists n's paths to p for diagnostics.
func describePaths(n *node.Node, p peer.ID) string {
	var paths []string
	for _, pi := range n.Paths(p) {
		paths = append(paths, fmt.Sprintf("%s %s→%s %s selected=%v rtt=%v last=%v ago",
			pi.ConnID, pi.Local, pi.Remote, pi.State, pi.Selected, pi.SmoothedRTT, time.Since(pi.LastHeartbeat).Round(time.Millisecond)))
	}
	return fmt.Sprint(paths)
}

// attemptTimeout bounds one echo attempt within an OpEcho's budget.
const attemptTimeout = 300 * time.Millisecond

// echoOnce echoes 64 bytes on a new realm stream to p; it returns the ID of
// the connection the stream took ("" when none was opened).
func echoOnce(ctx context.Context, r *realm.Realm, p peer.ID) (string, error) {
	s, err := r.NewStream(ctx, p, EchoProtocol)
	if err != nil {
		return "", err
	}
	connID := s.Conn().ID()
	return connID, echoOn(ctx, s)
}

func echoOn(ctx context.Context, s network.Stream) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	msg := make([]byte, 64)
	_, _ = rand.Read(msg)
	if _, err := s.Write(msg); err != nil {
		_ = s.Reset()
		return fmt.Errorf("write: %w", err)
	}
	if err := s.CloseWrite(); err != nil {
		_ = s.Reset()
		return fmt.Errorf("close write: %w", err)
	}
	got, err := io.ReadAll(s)
	if err != nil {
		_ = s.Reset()
		return fmt.Errorf("read: %w", err)
	}
	_ = s.Close()
	if string(got) != string(msg) {
		return errors.New("echo corrupted")
	}
	return nil
}

func (c *child) stockStart(n int) error {
	for range n {
		h, err := libp2p.New(
			libp2p.Transport(libp2pquic.NewTransport),
			libp2p.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1"),
			libp2p.DisableRelay(),
		)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.stock = append(c.stock, h)
		c.mu.Unlock()
	}
	return nil
}

// stockConnect connects pairs of stock hosts, in order, until they hold
// conns connection ends (each connection between two local hosts is two),
// and returns once identify has run on every end.
func (c *child) stockConnect(conns int) error {
	c.mu.Lock()
	hs := append([]host.Host(nil), c.stock...)
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	have := 0
	for i := range hs {
		for j := i + 1; j < len(hs) && have < conns; j++ {
			if err := hs[i].Connect(ctx, peer.AddrInfo{ID: hs[j].ID(), Addrs: hs[j].Addrs()}); err != nil {
				return err
			}
			have += 2
		}
	}
	if have < conns {
		return fmt.Errorf("only %d connection ends among %d hosts, %d asked", have, len(hs), conns)
	}
	// Connect waits for identify on the dialer's side only: wait for it on
	// every connection end, so that memory is measured once it settled.
	for _, h := range hs {
		ids, ok := h.(interface{ IDService() identify.IDService })
		if !ok {
			continue
		}
		for _, conn := range h.Network().Conns() {
			select {
			case <-ids.IDService().IdentifyWait(conn):
			case <-ctx.Done():
				return fmt.Errorf("identify on the stock hosts' connections: %w", ctx.Err())
			}
		}
	}
	return nil
}
