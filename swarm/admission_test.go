package swarm_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/swarm"
)

// The tests of the admission pipeline (Params.Admission, SetAdmission): real
// swarms on QUIC over loopback, with fake stages that record their calls and
// refuse, block or find connections redundant on demand.

const (
	// reasonTest is the reason of the fake stages' refusals.
	reasonTest core.CloseReason = "test_refusal"
	// codeTest and codeRedundant are the codes the fake stages ask the
	// swarm to close refused and redundant connections with.
	codeTest      network.ConnErrorCode = 0x7e57
	codeRedundant network.ConnErrorCode = 0x7e58
	// quietPeriod bounds the waits that prove an absence (no event, no
	// call). Whatever the swarm does for a connection it has in hand —
	// announce it (events queued synchronously, delivered at once by the
	// event queue), call a stage — takes microseconds on loopback once
	// the step before it is observed, so 200 ms is far more than needed.
	// No wait can prove that nothing ever happens. The only other bounded
	// waits in this file outlive one of the swarm's own timers
	// (RedundantQuiet + 500 ms, to prove a connection is NOT closed by
	// it); everything that must happen is waited for, not slept on.
	quietPeriod = 200 * time.Millisecond
	// within bounds every wait for something that must happen: generous,
	// so that a slow CI machine under -race does not fail the tests.
	within = 5 * time.Second
)

var (
	errTestRefusal = errors.New("refused by the test stage")
	errBlocked     = errors.New("peer blocked by the test gater")
)

// callLog is the ordered record of the calls of several fake stages.
type callLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *callLog) add(s string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.calls = append(l.calls, s)
	l.mu.Unlock()
}

func (l *callLog) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.calls...)
}

func (l *callLog) reset() {
	l.mu.Lock()
	l.calls = nil
	l.mu.Unlock()
}

// fakeStage is a core.AdmissionStage that records its calls. decide, when
// set, gives the verdict for c (nil admits); n is the 1-based number of
// AdmitConn calls for c's peer so far, c's included. decide may block (it
// is given the stage's context). The stage counts the AdmitConn calls that
// start while another one of the same peer is in progress (overlaps): the
// swarm promises there are none.
type fakeStage struct {
	name    string
	log     *callLog
	decide  func(ctx context.Context, c core.Conn, n int) error
	entered chan core.Conn // each connection as its AdmitConn starts

	mu       sync.Mutex
	admits   []core.Conn
	aborts   []core.Conn
	calls    map[peer.ID]int
	inside   map[peer.ID]int
	overlaps int
}

var _ core.AdmissionStage = (*fakeStage)(nil)

func newFakeStage(name string, log *callLog, decide func(ctx context.Context, c core.Conn, n int) error) *fakeStage {
	return &fakeStage{name: name, log: log, decide: decide, entered: make(chan core.Conn, 256),
		calls: make(map[peer.ID]int), inside: make(map[peer.ID]int)}
}

func (s *fakeStage) AdmitConn(ctx context.Context, c core.Conn) error {
	p := c.RemotePeer()
	s.mu.Lock()
	s.admits = append(s.admits, c)
	s.calls[p]++
	n := s.calls[p]
	if s.inside[p] > 0 {
		s.overlaps++
	}
	s.inside[p]++
	s.mu.Unlock()
	s.log.add(s.name + " admit " + c.ID())
	select {
	case s.entered <- c:
	default:
	}
	var err error
	if s.decide != nil {
		err = s.decide(ctx, c, n)
	}
	s.mu.Lock()
	s.inside[p]--
	s.mu.Unlock()
	return err
}

func (s *fakeStage) AbortConn(c core.Conn) {
	s.mu.Lock()
	s.aborts = append(s.aborts, c)
	s.mu.Unlock()
	s.log.add(s.name + " abort " + c.ID())
}

func (s *fakeStage) admitted() []core.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]core.Conn(nil), s.admits...)
}

func (s *fakeStage) aborted() []core.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]core.Conn(nil), s.aborts...)
}

func (s *fakeStage) callsFor(p peer.ID) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[p]
}

func (s *fakeStage) overlapping() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.overlaps
}

// nextEntry returns the next connection whose AdmitConn started.
func (s *fakeStage) nextEntry(t *testing.T) core.Conn {
	t.Helper()
	select {
	case c := <-s.entered:
		return c
	case <-time.After(within):
		t.Fatalf("stage %s: no AdmitConn call within %s", s.name, within)
		return nil
	}
}

// refusal is a fake stage's *core.RefusedError for c.
func refusal(stage core.Stage, reason core.CloseReason, code network.ConnErrorCode, c core.Conn, err error) *core.RefusedError {
	return &core.RefusedError{Stage: stage, Reason: reason, Code: code, Peer: c.RemotePeer(), Err: err}
}

// requireNoEvent proves, as far as a bounded wait can (see quietPeriod),
// that sub receives nothing.
func requireNoEvent(t *testing.T, sub event.Subscription) {
	t.Helper()
	timer := time.NewTimer(quietPeriod)
	defer timer.Stop()
	select {
	case e := <-sub.Out():
		t.Fatalf("unexpected event %T: %+v", e, e)
	case <-timer.C:
	}
}

// connEvents subscribes to the events an announced connection produces.
func connEvents(t *testing.T, s *testSwarm) event.Subscription {
	t.Helper()
	return testkit.Subscribe(t, s.bus, []any{new(swarm.EvtConnectionOpened), new(swarm.EvtConnectionClosed),
		new(event.EvtPeerConnectednessChanged)})
}

// quicCloseError waits until c's QUIC connection is closed and returns the
// application error it was closed with (Remote says by whom).
func quicCloseError(t *testing.T, c network.Conn) *quic.ApplicationError {
	t.Helper()
	var qc *quic.Conn
	require.True(t, c.As(&qc), "a swarm connection reaches its *quic.Conn")
	select {
	case <-qc.Context().Done():
	case <-time.After(within):
		t.Fatalf("connection %s not closed within %s", c.ID(), within)
	}
	var appErr *quic.ApplicationError
	require.ErrorAs(t, context.Cause(qc.Context()), &appErr)
	return appErr
}

// connectedTo returns how many Connected notifications n saw for c.
func connectedTo(n *countingNotifiee, c network.Conn) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.connected[c]
}

// disconnectedFrom returns how many Disconnected notifications n saw for c.
func disconnectedFrom(n *countingNotifiee, c network.Conn) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.disconnected[c]
}

// connAt returns s's announced connection to p whose local address is addr.
func connAt(s *testSwarm, p peer.ID, addr ma.Multiaddr) network.Conn {
	for _, c := range s.ConnsToPeer(p) {
		if c.LocalMultiaddr().Equal(addr) {
			return c
		}
	}
	return nil
}

// TestAdmissionRefusedDialIsNeverAnnounced: a stage of the dialer refuses
// the connection. DialPeer fails with an error that reaches both
// core.ErrRefused and the stage's own error; the connection was closed with
// the refusal's code and never announced (no notification, no event, not
// in Conns); the refusal is counted under its reason; and a later admitted
// connection is the first one the bus hears of.
func TestAdmissionRefusedDialIsNeverAnnounced(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	learn(a, b)
	var refuse atomic.Bool
	refuse.Store(true)
	stage := newFakeStage("pools", nil, func(_ context.Context, c core.Conn, _ int) error {
		if refuse.Load() {
			return refusal(core.StagePools, reasonTest, codeTest, c, errTestRefusal)
		}
		return nil
	})
	a.SetAdmission(stage)
	notes := newCountingNotifiee()
	a.Notify(notes)
	sub := connEvents(t, a)
	ctx := testkit.Context(t, 20*time.Second)

	_, err := a.DialPeer(ctx, b.LocalPeer())
	require.ErrorIs(t, err, core.ErrRefused)
	require.ErrorIs(t, err, errTestRefusal)
	require.NotErrorIs(t, err, swarm.ErrGaterDisallowedConnection, "only the gater stage's refusals are gater errors")
	var refused *core.RefusedError
	require.ErrorAs(t, err, &refused)
	require.Equal(t, core.StagePools, refused.Stage)
	require.Equal(t, reasonTest, refused.Reason)
	require.Equal(t, b.LocalPeer(), refused.Peer)

	admits := stage.admitted()
	require.Len(t, admits, 1, "a refusal by a stage other than the gater is not retried")
	rc := admits[0]
	require.Equal(t, network.DirOutbound, rc.Stat().Direction)
	require.True(t, rc.IsClosed(), "the refused connection is closed before DialPeer returns")
	appErr := quicCloseError(t, rc)
	require.False(t, appErr.Remote)
	require.EqualValues(t, codeTest, appErr.ErrorCode, "closed with the refusal's code")

	n, connected, disconnected := notes.counts()
	require.Equal(t, []int{0, 0, 0}, []int{n, connected, disconnected}, "no Connected, no Disconnected")
	require.Empty(t, a.ConnsToPeer(b.LocalPeer()))
	require.Empty(t, a.Conns())
	require.Empty(t, a.Peers())
	require.Equal(t, network.NotConnected, a.Connectedness(b.LocalPeer()))
	stats := a.AdmissionStats()
	require.Zero(t, stats.Admitted)
	require.Equal(t, map[core.CloseReason]uint64{reasonTest: 1}, stats.Refused)
	require.Empty(t, stage.aborted(), "the refusing stage gets no AbortConn")
	// No EvtConnectionOpened/Closed, no connectedness change.
	requireNoEvent(t, sub)

	// Once the stage admits, a connection goes through (DialPath: a
	// refusal by a pools stage backs the peer off for DialPeer) and it is
	// the first connection the bus hears of.
	refuse.Store(false)
	c, err := a.DialPath(ctx, b.LocalPeer(), b.ListenAddresses()[0])
	require.NoError(t, err)
	require.NotSame(t, rc, c)
	opened := testkit.WaitEvent(t, sub, within, func(swarm.EvtConnectionOpened) bool { return true })
	require.Equal(t, c.ID(), opened.ConnID)
	require.Equal(t, 1, connectedTo(notes, c))
	stats = a.AdmissionStats()
	require.EqualValues(t, 1, stats.Admitted)
	require.Equal(t, map[core.CloseReason]uint64{reasonTest: 1}, stats.Refused)
}

// TestAdmissionRefusedInboundIsNeverAnnounced: the listener's stage refuses
// an inbound connection: the listener never announces it, the dialer sees
// its connection closed by the peer with the refusal's code, and the
// listener's lock on the peer does not outlive the refusal (the next
// connection, admitted, is announced normally).
func TestAdmissionRefusedInboundIsNeverAnnounced(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	learn(a, b)
	var refuse atomic.Bool
	refuse.Store(true)
	stage := newFakeStage("pools", nil, func(_ context.Context, c core.Conn, _ int) error {
		if refuse.Load() && c.Stat().Direction == network.DirInbound {
			return refusal(core.StagePools, reasonTest, codeTest, c, errTestRefusal)
		}
		return nil
	})
	b.SetAdmission(stage)
	notes := newCountingNotifiee()
	b.Notify(notes)
	sub := connEvents(t, b)
	ctx := testkit.Context(t, 20*time.Second)

	// The dialer has no stage: it has its connection before the
	// listener's refusal reaches it.
	c, err := a.DialPeer(ctx, b.LocalPeer())
	require.NoError(t, err)
	rc := stage.nextEntry(t)
	require.Equal(t, network.DirInbound, rc.Stat().Direction)
	require.Equal(t, a.LocalPeer(), rc.RemotePeer())
	// The refusal is counted, then the connection closed.
	require.Eventually(t, func() bool { return b.AdmissionStats().Refused[reasonTest] == 1 && rc.IsClosed() },
		within, 5*time.Millisecond)

	appErr := quicCloseError(t, c)
	require.True(t, appErr.Remote, "the listener closed it")
	require.EqualValues(t, codeTest, appErr.ErrorCode)
	require.Eventually(t, func() bool { return len(a.ConnsToPeer(b.LocalPeer())) == 0 }, within, 5*time.Millisecond,
		"the dialer notices the close")

	n, connected, disconnected := notes.counts()
	require.Equal(t, []int{0, 0, 0}, []int{n, connected, disconnected})
	require.Empty(t, b.ConnsToPeer(a.LocalPeer()))
	require.Empty(t, b.Conns())
	require.Equal(t, network.NotConnected, b.Connectedness(a.LocalPeer()))
	require.Zero(t, b.AdmissionStats().Admitted)
	requireNoEvent(t, sub)

	refuse.Store(false)
	c2, err := a.DialPath(ctx, b.LocalPeer(), b.ListenAddresses()[0])
	require.NoError(t, err)
	require.NotSame(t, c, c2)
	opened := testkit.WaitEvent(t, sub, within, func(swarm.EvtConnectionOpened) bool { return true })
	require.Equal(t, network.DirInbound, opened.Direction)
	conns := b.ConnsToPeer(a.LocalPeer())
	require.Len(t, conns, 1)
	require.Equal(t, conns[0].ID(), opened.ConnID, "the first connection announced is the admitted one")
	require.Equal(t, 1, connectedTo(notes, conns[0]))
	require.EqualValues(t, 1, b.AdmissionStats().Admitted)
}

// TestAdmissionPlainErrorRefuses: a stage that refuses with an error that is
// not a *core.RefusedError refuses all the same: the connection is closed
// with network.ConnGarbageCollected and never announced, the stage's error
// reaches the caller, and the refusal is counted under "other".
func TestAdmissionPlainErrorRefuses(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	stage := newFakeStage("hooks", nil, func(context.Context, core.Conn, int) error { return errTestRefusal })
	a.SetAdmission(stage)
	notes := newCountingNotifiee()
	a.Notify(notes)
	ctx := testkit.Context(t, 20*time.Second)

	_, err := a.DialPath(ctx, b.LocalPeer(), b.ListenAddresses()[0])
	require.ErrorIs(t, err, errTestRefusal)
	require.Contains(t, err.Error(), b.ListenAddresses()[0].String(), "the error names the address")
	admits := stage.admitted()
	require.Len(t, admits, 1)
	appErr := quicCloseError(t, admits[0])
	require.EqualValues(t, network.ConnGarbageCollected, appErr.ErrorCode)
	_, connected, _ := notes.counts()
	require.Zero(t, connected)
	require.Empty(t, a.Conns())
	require.Equal(t, map[core.CloseReason]uint64{"other": 1}, a.AdmissionStats().Refused)
}

// TestAdmissionAbortsEarlierStagesLatestFirst: stages A, B, C; C refuses:
// B then A get AbortConn for that connection, C none. When every stage
// admits, nobody gets AbortConn, not even when the connection later closes
// (the stages learn of that through their notifiees).
func TestAdmissionAbortsEarlierStagesLatestFirst(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	learn(a, b)
	log := &callLog{}
	var refuse atomic.Bool
	refuse.Store(true)
	stageA := newFakeStage("A", log, nil)
	stageB := newFakeStage("B", log, nil)
	stageC := newFakeStage("C", log, func(_ context.Context, c core.Conn, _ int) error {
		if refuse.Load() {
			return refusal(core.StagePools, reasonTest, codeTest, c, errTestRefusal)
		}
		return nil
	})
	a.SetAdmission(stageA, stageB, stageC)
	notes := newCountingNotifiee()
	a.Notify(notes)
	ctx := testkit.Context(t, 20*time.Second)

	_, err := a.DialPeer(ctx, b.LocalPeer())
	require.ErrorIs(t, err, core.ErrRefused)
	admits := stageA.admitted()
	require.Len(t, admits, 1)
	id := admits[0].ID()
	require.Equal(t, []string{"A admit " + id, "B admit " + id, "C admit " + id, "B abort " + id, "A abort " + id},
		log.snapshot(), "the stages that admitted are aborted, latest first, before DialPeer returns")
	for _, s := range []*fakeStage{stageA, stageB} {
		require.Len(t, s.aborted(), 1)
		require.Same(t, admits[0], s.aborted()[0], "AbortConn gets the connection AdmitConn got")
	}
	require.Empty(t, stageC.aborted())

	// Every stage admits: no AbortConn, in order A, B, C.
	refuse.Store(false)
	log.reset()
	c, err := a.DialPath(ctx, b.LocalPeer(), b.ListenAddresses()[0])
	require.NoError(t, err)
	require.Equal(t, []string{"A admit " + c.ID(), "B admit " + c.ID(), "C admit " + c.ID()}, log.snapshot())
	require.Same(t, c, stageC.admitted()[1])

	require.NoError(t, c.Close())
	require.Eventually(t, func() bool { return disconnectedFrom(notes, c) == 1 }, within, 5*time.Millisecond)
	require.Equal(t, []string{"A admit " + c.ID(), "B admit " + c.ID(), "C admit " + c.ID()}, log.snapshot(),
		"closing an admitted connection aborts nothing")
}

// TestAdmissionClosedConnIsAborted: a stage closes the connection it is
// admitting (a trim chose it) and admits it: the swarm does not announce
// it, aborts every stage latest first, and the dial fails with
// swarm.ErrConnClosed.
func TestAdmissionClosedConnIsAborted(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	log := &callLog{}
	stageA := newFakeStage("A", log, nil)
	stageB := newFakeStage("B", log, func(_ context.Context, c core.Conn, _ int) error {
		_ = c.CloseWithError(network.ConnGarbageCollected)
		return nil
	})
	a.SetAdmission(stageA, stageB)
	notes := newCountingNotifiee()
	a.Notify(notes)
	sub := connEvents(t, a)
	ctx := testkit.Context(t, 20*time.Second)

	_, err := a.DialPath(ctx, b.LocalPeer(), b.ListenAddresses()[0])
	require.ErrorIs(t, err, swarm.ErrConnClosed)
	id := stageA.admitted()[0].ID()
	require.Equal(t, []string{"A admit " + id, "B admit " + id, "B abort " + id, "A abort " + id}, log.snapshot())
	_, connected, disconnected := notes.counts()
	require.Zero(t, connected)
	require.Zero(t, disconnected)
	require.Empty(t, a.Conns())
	require.Zero(t, a.AdmissionStats().Admitted)
	requireNoEvent(t, sub)
}

// TestAdmissionAbortedWhenSwarmClosesDuringAdmission: the swarm closes
// while a connection is in the pipeline; the stage's context ends; the
// stage admits after all, and the swarm aborts every stage (latest first)
// instead of announcing the connection. Close returns.
func TestAdmissionAbortedWhenSwarmClosesDuringAdmission(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	learn(a, b)
	log := &callLog{}
	stageA := newFakeStage("A", log, nil)
	stageB := newFakeStage("B", log, func(ctx context.Context, _ core.Conn, _ int) error {
		<-ctx.Done() // bounded: DialTimeout, or Close
		return nil
	})
	a.SetAdmission(stageA, stageB)
	notes := newCountingNotifiee()
	a.Notify(notes)

	dialed := make(chan error, 1)
	go func() {
		_, err := a.DialPeer(context.Background(), b.LocalPeer())
		dialed <- err
	}()
	c := stageB.nextEntry(t)
	require.NoError(t, a.Close())
	select {
	case err := <-dialed:
		require.Error(t, err)
	case <-time.After(within):
		t.Fatal("DialPeer did not return after Close")
	}
	require.Equal(t, []string{"A admit " + c.ID(), "B admit " + c.ID(), "B abort " + c.ID(), "A abort " + c.ID()}, log.snapshot())
	require.True(t, c.IsClosed())
	_, connected, _ := notes.counts()
	require.Zero(t, connected)
	require.Zero(t, a.AdmissionStats().Admitted)
}

// TestAdmissionConnmgrPoolFull: the connection manager as the dialer's only
// stage. Its refusals reach the caller as connmgr.ErrPoolFull and
// core.ErrRefused — the per-peer limit through DialPath, the pool ceiling
// through DialPeer (regression: the swarm's pool-ceiling refusal had no
// sentinel error) — and the refused connection is neither announced nor
// counted in the pools.
func TestAdmissionConnmgrPoolFull(t *testing.T) {
	newManager := func(t *testing.T) *connmgr.Manager {
		// Ceiling: HighWater 2 + 10 % (at least 1) = 3 connections.
		m, err := connmgr.New(connmgr.Config{LowWater: 1, HighWater: 2, MaxConnsPerPeer: 1}, nil)
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, m.Close()) })
		return m
	}

	t.Run("MaxConnsPerPeer", func(t *testing.T) {
		m := newManager(t)
		a := newSwarm(t, swarm.Config{})
		b := newSwarm(t, swarm.Config{}, "/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.2/udp/0/quic-v1")
		a.SetAdmission(m)
		a.Notify(m.Notifee())
		notes := newCountingNotifiee()
		a.Notify(notes)
		ctx := testkit.Context(t, 20*time.Second)
		addrs := b.ListenAddresses()
		require.Len(t, addrs, 2)

		c1, err := a.DialPath(ctx, b.LocalPeer(), addrs[0])
		require.NoError(t, err)
		_, err = a.DialPath(ctx, b.LocalPeer(), addrs[1])
		require.ErrorIs(t, err, connmgr.ErrPoolFull)
		require.ErrorIs(t, err, core.ErrRefused)
		var refused *core.RefusedError
		require.ErrorAs(t, err, &refused)
		require.Equal(t, core.StagePools, refused.Stage)
		require.Equal(t, core.ReasonMaxConnsPerPeer, refused.Reason)
		require.Contains(t, err.Error(), addrs[1].String())

		require.Equal(t, []network.Conn{c1}, a.ConnsToPeer(b.LocalPeer()))
		require.Equal(t, []network.Conn{c1}, m.Connections(b.LocalPeer()))
		_, connected, _ := notes.counts()
		require.Equal(t, 1, connected)
		stats := a.AdmissionStats()
		require.EqualValues(t, 1, stats.Admitted)
		require.Equal(t, map[core.CloseReason]uint64{core.ReasonMaxConnsPerPeer: 1}, stats.Refused)
	})

	t.Run("Ceiling", func(t *testing.T) {
		m := newManager(t)
		a := newSwarm(t, swarm.Config{})
		a.SetAdmission(m)
		a.Notify(m.Notifee())
		notes := newCountingNotifiee()
		a.Notify(notes)
		ctx := testkit.Context(t, 20*time.Second)

		var kept []network.Conn
		for range 3 {
			p := newSwarm(t, swarm.Config{})
			learn(a, p)
			// Worth more than the newcomer: the trim at the ceiling
			// refuses the newcomer rather than close one of them.
			m.TagPeer(p.LocalPeer(), "keep", 100)
			c, err := a.DialPeer(ctx, p.LocalPeer())
			require.NoError(t, err)
			kept = append(kept, c)
		}
		require.Equal(t, 3, m.ConnectionCount())

		p4 := newSwarm(t, swarm.Config{})
		learn(a, p4)
		_, err := a.DialPeer(ctx, p4.LocalPeer())
		require.ErrorIs(t, err, connmgr.ErrPoolFull)
		require.ErrorIs(t, err, core.ErrRefused)
		var refused *core.RefusedError
		require.ErrorAs(t, err, &refused)
		require.Equal(t, core.StagePools, refused.Stage)
		require.Equal(t, core.ReasonPoolCeiling, refused.Reason)
		require.Equal(t, p4.LocalPeer(), refused.Peer)

		require.Empty(t, a.ConnsToPeer(p4.LocalPeer()))
		require.Empty(t, m.Connections(p4.LocalPeer()))
		require.Equal(t, 3, m.ConnectionCount())
		for _, c := range kept {
			require.False(t, c.IsClosed(), "nothing was trimmed for the newcomer")
		}
		_, connected, disconnected := notes.counts()
		require.Equal(t, []int{3, 0}, []int{connected, disconnected})
		require.Equal(t, map[core.CloseReason]uint64{core.ReasonPoolCeiling: 1}, a.AdmissionStats().Refused)
	})
}

// TestAdmissionSerialisedPerPeer: a stage blocks the first connection of
// peer B. A second connection of B, established meanwhile, waits: its
// AdmitConn is not called until the first one's has returned; a connection
// of another peer C is admitted meanwhile. Released, both of B's
// connections are admitted, in order.
func TestAdmissionSerialisedPerPeer(t *testing.T) {
	// The admission of a DialPath is bounded by AddrDialTimeout: keep it
	// far away from the test's own pace.
	a := newSwarm(t, swarm.Config{AddrDialTimeout: 30 * time.Second})
	b := newSwarm(t, swarm.Config{}, "/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.2/udp/0/quic-v1")
	c := newSwarm(t, swarm.Config{})
	learn(a, c)
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseAll := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseAll) // before the swarms close, should the test fail
	stage := newFakeStage("serial", nil, func(ctx context.Context, conn core.Conn, n int) error {
		if conn.RemotePeer() == b.LocalPeer() && n == 1 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	a.SetAdmission(stage)
	ctx := testkit.Context(t, 30*time.Second)
	addrs := b.ListenAddresses()
	require.Len(t, addrs, 2)

	type result struct {
		conn network.Conn
		err  error
	}
	dialPath := func(addr ma.Multiaddr) <-chan result {
		ch := make(chan result, 1)
		go func() {
			conn, err := a.DialPath(ctx, b.LocalPeer(), addr)
			ch <- result{conn, err}
		}()
		return ch
	}
	first := dialPath(addrs[0])
	blocked := stage.nextEntry(t)
	require.Equal(t, b.LocalPeer(), blocked.RemotePeer())
	second := dialPath(addrs[1])
	// B has both connections: the second one's handshake is over on B's
	// side, hence on ours (the client finishes first).
	require.Eventually(t, func() bool { return len(b.ConnsToPeer(a.LocalPeer())) == 2 }, within, 5*time.Millisecond)

	// Another peer is admitted while B's admission is blocked.
	cc, err := a.DialPeer(ctx, c.LocalPeer())
	require.NoError(t, err)
	require.Equal(t, []network.Conn{cc}, a.ConnsToPeer(c.LocalPeer()))
	require.Equal(t, c.LocalPeer(), stage.nextEntry(t).RemotePeer())

	// B's second connection waits for the first: no AdmitConn call for it
	// (a bounded wait, see quietPeriod).
	select {
	case conn := <-stage.entered:
		t.Fatalf("AdmitConn called for %s (peer %s) while the first connection of peer B is being admitted", conn.ID(), conn.RemotePeer())
	case <-time.After(quietPeriod):
	}
	require.Equal(t, 1, stage.callsFor(b.LocalPeer()))
	require.Empty(t, a.ConnsToPeer(b.LocalPeer()))
	select {
	case r := <-second:
		t.Fatalf("the second DialPath returned (%v, %v) while the first connection is being admitted", r.conn, r.err)
	default:
	}

	releaseAll()
	var r1, r2 result
	for _, wait := range []struct {
		ch  <-chan result
		out *result
	}{{first, &r1}, {second, &r2}} {
		select {
		case *wait.out = <-wait.ch:
		case <-time.After(within):
			t.Fatal("DialPath did not return after the release")
		}
		require.NoError(t, wait.out.err)
	}
	require.Same(t, blocked, r1.conn)
	require.Equal(t, 2, stage.callsFor(b.LocalPeer()))
	require.Zero(t, stage.overlapping(), "AdmitConn calls of one peer never overlap")
	require.Equal(t, []network.Conn{r1.conn, r2.conn}, a.ConnsToPeer(b.LocalPeer()), "admitted in order")
}

// TestAdmissionGaterRefusalIsNotBackedOff: a refusal by the gater stage
// surfaces as swarm.ErrGaterDisallowedConnection (and core.ErrRefused, and
// the gater's own error), is not retried, and does not back the peer off:
// once the gater allows again, the next DialPeer dials at once.
func TestAdmissionGaterRefusalIsNotBackedOff(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	learn(a, b)
	var block atomic.Bool
	block.Store(true)
	stage := newFakeStage("gater", nil, func(_ context.Context, c core.Conn, _ int) error {
		if block.Load() {
			return refusal(core.StageGater, core.ReasonBlocked, network.ConnGated, c, errBlocked)
		}
		return nil
	})
	a.SetAdmission(stage)
	notes := newCountingNotifiee()
	a.Notify(notes)
	sub := connEvents(t, a)
	ctx := testkit.Context(t, 20*time.Second)

	_, err := a.DialPeer(ctx, b.LocalPeer())
	require.ErrorIs(t, err, swarm.ErrGaterDisallowedConnection)
	require.ErrorIs(t, err, core.ErrRefused)
	require.ErrorIs(t, err, errBlocked)
	require.NotErrorIs(t, err, swarm.ErrDialBackoff)
	var refused *core.RefusedError
	require.ErrorAs(t, err, &refused)
	require.Equal(t, core.StageGater, refused.Stage)
	require.Len(t, stage.admitted(), 1, "a gater refusal is not retried")
	appErr := quicCloseError(t, stage.admitted()[0])
	require.EqualValues(t, network.ConnGated, appErr.ErrorCode)
	_, connected, _ := notes.counts()
	require.Zero(t, connected)
	require.Empty(t, a.ConnsToPeer(b.LocalPeer()))
	require.Equal(t, map[core.CloseReason]uint64{core.ReasonBlocked: 1}, a.AdmissionStats().Refused)
	requireNoEvent(t, sub)

	// Still blocked: refused again, at the stage (not by a backoff).
	_, err = a.DialPeer(ctx, b.LocalPeer())
	require.ErrorIs(t, err, swarm.ErrGaterDisallowedConnection)
	require.NotErrorIs(t, err, swarm.ErrDialBackoff)
	require.Len(t, stage.admitted(), 2)

	block.Store(false)
	c, err := a.DialPeer(ctx, b.LocalPeer())
	require.NoError(t, err, "a gater refusal does not back the peer off")
	require.Equal(t, []network.Conn{c}, a.ConnsToPeer(b.LocalPeer()))
	require.Equal(t, 1, connectedTo(notes, c))
}

// redundantStage is the dialer's fake paths stage of the redundancy tests:
// a connection of a peer that has an earlier, open connection (the first
// one the stage admitted) is redundant with it. A connection admitted when
// that survivor is closed (reinstatement) is admitted.
func redundantStage(beforeVerdict func(survivor core.Conn)) *fakeStage {
	var mu sync.Mutex
	survivors := make(map[peer.ID]core.Conn)
	return newFakeStage("paths", nil, func(_ context.Context, c core.Conn, _ int) error {
		mu.Lock()
		survivor := survivors[c.RemotePeer()]
		if survivor == nil {
			survivors[c.RemotePeer()] = c
		}
		mu.Unlock()
		if survivor == nil || survivor.IsClosed() {
			return nil
		}
		if beforeVerdict != nil {
			beforeVerdict(survivor)
		}
		return &core.RefusedError{Stage: core.StagePaths, Reason: core.ReasonPathRedundant, Code: codeRedundant,
			Peer: c.RemotePeer(), Survivor: survivor, Err: fmt.Errorf("redundant with %s", survivor.ID())}
	})
}

// TestAdmissionRedundantReturnsSurvivorAndClosesQuietly: the dialer's paths
// stage finds the second connection redundant with the first. DialPath
// returns the first connection (the same pointer); the redundant one is
// never announced, serves the peer's streams while it lasts, and is closed
// with the stage's code RedundantQuiet after it was last used — not before
// (it waits at least half of it from DialPath's return), well within 5 s.
func TestAdmissionRedundantReturnsSurvivorAndClosesQuietly(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{}, "/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.2/udp/0/quic-v1")
	a.SetStreamHandler(echoHandler)
	stage := redundantStage(nil)
	a.SetAdmission(stage)
	notes := newCountingNotifiee()
	a.Notify(notes)
	sub := testkit.Subscribe(t, a.bus, new(swarm.EvtConnectionOpened))
	ctx := testkit.Context(t, 20*time.Second)
	addrs := b.ListenAddresses()
	require.Len(t, addrs, 2)

	first, err := a.DialPath(ctx, b.LocalPeer(), addrs[0])
	require.NoError(t, err)
	got, err := a.DialPath(ctx, b.LocalPeer(), addrs[1])
	returned := time.Now()
	require.NoError(t, err)
	require.Same(t, first, got, "the survivor is returned instead of an error")
	admits := stage.admitted()
	require.Len(t, admits, 2)
	redundant := admits[1]
	require.NotSame(t, first, redundant)
	require.True(t, redundant.RemoteMultiaddr().Equal(addrs[1]))
	require.False(t, redundant.IsClosed(), "kept open for the peer's streams")

	require.Equal(t, []network.Conn{first}, a.ConnsToPeer(b.LocalPeer()))
	require.Len(t, a.Conns(), 1)
	require.Equal(t, 1, connectedTo(notes, first))
	require.Zero(t, connectedTo(notes, redundant))
	stats := a.AdmissionStats()
	require.EqualValues(t, 1, stats.Admitted)
	require.Equal(t, map[core.CloseReason]uint64{core.ReasonPathRedundant: 1}, stats.Refused)
	opened := testkit.WaitEvent(t, sub, within, func(swarm.EvtConnectionOpened) bool { return true })
	require.Equal(t, first.ID(), opened.ConnID)

	// The address pair is served: another DialPath to it returns the
	// survivor without dialing.
	again, err := a.DialPath(ctx, b.LocalPeer(), addrs[1])
	require.NoError(t, err)
	require.Same(t, first, again)
	require.Len(t, stage.admitted(), 2, "no new dial")

	// The peer (which has no paths stage and announced both) opens a
	// stream on its end of the redundant connection: served.
	var peerEnd network.Conn
	require.Eventually(t, func() bool { peerEnd = connAt(b, a.LocalPeer(), addrs[1]); return peerEnd != nil },
		within, 5*time.Millisecond)
	s, err := peerEnd.NewStream(ctx)
	require.NoError(t, err)
	echo(t, s, 4<<10)

	require.Eventually(t, redundant.IsClosed, within, 5*time.Millisecond, "closed after RedundantQuiet")
	quiet := time.Since(returned)
	require.GreaterOrEqual(t, quiet, swarm.RedundantQuiet/2, "closed before its quiet period")
	appErr := quicCloseError(t, redundant)
	require.False(t, appErr.Remote)
	require.EqualValues(t, codeRedundant, appErr.ErrorCode)
	require.Eventually(t, func() bool { return len(b.ConnsToPeer(a.LocalPeer())) == 1 }, within, 5*time.Millisecond,
		"the peer sees the redundant connection go")

	require.False(t, first.IsClosed())
	require.Equal(t, []network.Conn{first}, a.ConnsToPeer(b.LocalPeer()))
	_, connected, disconnected := notes.counts()
	require.Equal(t, []int{1, 0}, []int{connected, disconnected}, "no Disconnected for a connection never announced")
	require.Empty(t, stage.aborted())
	require.EqualValues(t, 1, a.AdmissionStats().Admitted)
}

// redundantPair sets up the redundancy tests: a dialer a whose paths stage
// is redundantStage(beforeVerdict), a peer b listening on two addresses
// (with an echo handler), and a's two DialPath calls, one to each address;
// the second connection is redundant with the first.
type redundantPair struct {
	a, b      *testSwarm
	stage     *fakeStage
	notes     *countingNotifiee
	sub       event.Subscription // a's EvtConnectionOpened
	first     network.Conn       // the survivor
	returned  network.Conn       // what the second DialPath returned
	redundant core.Conn          // the second connection
	ctx       context.Context
}

func newRedundantPair(t *testing.T, beforeVerdict func(survivor core.Conn)) *redundantPair {
	t.Helper()
	r := &redundantPair{
		a:     newSwarm(t, swarm.Config{}),
		b:     newSwarm(t, swarm.Config{}, "/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.2/udp/0/quic-v1"),
		stage: redundantStage(beforeVerdict),
		notes: newCountingNotifiee(),
		ctx:   testkit.Context(t, 20*time.Second),
	}
	r.b.SetStreamHandler(echoHandler)
	r.a.SetAdmission(r.stage)
	r.a.Notify(r.notes)
	r.sub = testkit.Subscribe(t, r.a.bus, new(swarm.EvtConnectionOpened))
	addrs := r.b.ListenAddresses()
	require.Len(t, addrs, 2)
	var err error
	r.first, err = r.a.DialPath(r.ctx, r.b.LocalPeer(), addrs[0])
	require.NoError(t, err)
	r.returned, err = r.a.DialPath(r.ctx, r.b.LocalPeer(), addrs[1])
	require.NoError(t, err)
	admits := r.stage.admitted()
	// The second connection is judged again when its survivor closed
	// while it was being filed (TestAdmissionRedundantWithSurvivorClosedMeanwhile).
	require.GreaterOrEqual(t, len(admits), 2)
	r.redundant = admits[1]
	return r
}

// reinstated reports whether the redundant connection is p's only
// announced connection.
func (r *redundantPair) reinstated() bool {
	cs := r.a.ConnsToPeer(r.b.LocalPeer())
	return len(cs) == 1 && cs[0] == r.redundant
}

// TestAdmissionRedundantReinstatedWhenSurvivorCloses: the survivor is
// closed within RedundantQuiet: the redundant connection is admitted again
// and announced (ConnsToPeer, Connected, EvtConnectionOpened), carries
// streams, and the idle watcher leaves it alone past RedundantQuiet.
func TestAdmissionRedundantReinstatedWhenSurvivorCloses(t *testing.T) {
	r := newRedundantPair(t, nil)
	require.Same(t, r.first, r.returned)
	require.NoError(t, r.first.Close())

	require.Eventually(t, r.reinstated, within, 5*time.Millisecond, "reinstated")
	require.False(t, r.redundant.IsClosed())
	require.Eventually(t, func() bool { return connectedTo(r.notes, r.redundant) == 1 }, within, 5*time.Millisecond)
	require.Eventually(t, func() bool { return disconnectedFrom(r.notes, r.first) == 1 }, within, 5*time.Millisecond)
	testkit.WaitEvent(t, r.sub, within, func(e swarm.EvtConnectionOpened) bool { return e.ConnID == r.redundant.ID() })
	require.Equal(t, 3, r.stage.callsFor(r.b.LocalPeer()), "the reinstatement ran the stage again")
	require.Equal(t, map[core.CloseReason]uint64{core.ReasonPathRedundant: 1}, r.a.AdmissionStats().Refused)

	s, err := r.redundant.NewStream(r.ctx)
	require.NoError(t, err)
	echo(t, s, 4<<10)
	s, err = r.a.NewStream(r.ctx, r.b.LocalPeer())
	require.NoError(t, err)
	require.Same(t, r.redundant, s.Conn(), "the reinstated connection carries new streams")
	echo(t, s, 4<<10)

	// A bounded wait (absence): the idle watcher of the redundant
	// connection must not close it once it is announced.
	require.Never(t, r.redundant.IsClosed, swarm.RedundantQuiet+500*time.Millisecond, 20*time.Millisecond)
	require.True(t, r.reinstated())
	require.Empty(t, r.stage.aborted())
}

// TestAdmissionReinstatedCountsAsAdmitted: AdmissionStats.Admitted "counts
// the connections announced"; a reinstated connection is announced.
func TestAdmissionReinstatedCountsAsAdmitted(t *testing.T) {
	r := newRedundantPair(t, nil)
	require.EqualValues(t, 1, r.a.AdmissionStats().Admitted)
	require.NoError(t, r.first.Close())
	require.Eventually(t, func() bool { return connectedTo(r.notes, r.redundant) == 1 }, within, 5*time.Millisecond)
	require.EqualValues(t, 2, r.a.AdmissionStats().Admitted, "two connections were announced")
}

// TestAdmissionRedundantWithSurvivorClosedMeanwhile: the survivor closes
// right after the paths stage named it (the peer's close arrives between
// the stage's check and the swarm filing the connection as redundant). The
// survivor's close finds no redundant connection to reinstate; the
// connection must be reinstated all the same, as when the survivor closes a
// moment later, and not closed as redundant with a connection that is gone.
func TestAdmissionRedundantWithSurvivorClosedMeanwhile(t *testing.T) {
	// The stage checked that the survivor is open; it closes now.
	r := newRedundantPair(t, func(survivor core.Conn) { _ = survivor.Close() })
	require.True(t, r.first.IsClosed())
	// Either outcome ends the wait: reinstated, or closed as redundant.
	require.Eventually(t, func() bool { return r.reinstated() || r.redundant.IsClosed() }, within, 5*time.Millisecond)
	require.True(t, r.reinstated(), "the redundant connection %s was closed after its survivor %s, never announced (DialPath returned %s, closed: %v)",
		r.redundant.ID(), r.first.ID(), r.returned.ID(), r.returned.IsClosed())
	require.Equal(t, 1, connectedTo(r.notes, r.redundant))
	s, err := r.a.NewStream(r.ctx, r.b.LocalPeer())
	require.NoError(t, err)
	echo(t, s, 1024)
}

// TestAdmissionRedundantDialPeerReturnsSurvivor: when the path selector
// finds no usable connection, DialPeer dials — but not an address a
// connection already uses: it gets that connection back instead of a
// second connection on the same pair of addresses (which the paths stage
// would only find redundant).
func TestAdmissionRedundantDialPeerReturnsSurvivor(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	learn(a, b)
	stage := redundantStage(nil)
	a.SetAdmission(stage)
	notes := newCountingNotifiee()
	a.Notify(notes)
	ctx := testkit.Context(t, 20*time.Second)

	first, err := a.DialPeer(ctx, b.LocalPeer())
	require.NoError(t, err)
	a.SetPathSelector(swarm.PathSelectorFunc(func(peer.ID, []network.Conn) network.Conn { return nil }))
	got, err := a.DialPeer(ctx, b.LocalPeer())
	require.NoError(t, err)
	require.Same(t, first, got)
	require.Len(t, stage.admitted(), 1, "DialPeer dialed a second connection to an address in use")
	require.Equal(t, []network.Conn{first}, a.ConnsToPeer(b.LocalPeer()))
	_, connected, _ := notes.counts()
	require.Equal(t, 1, connected)
	require.Empty(t, a.AdmissionStats().Refused)
}

// TestAdmissionRedundantInboundIsLeftToThePeer: a redundant connection the
// peer dialed stays unannounced but open past RedundantQuiet (it is the
// peer's to close; the swarm closes it only after RedundantIdleTimeout) and
// serves the peer's streams.
func TestAdmissionRedundantInboundIsLeftToThePeer(t *testing.T) {
	a := newSwarm(t, swarm.Config{}, "/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.2/udp/0/quic-v1")
	b := newSwarm(t, swarm.Config{})
	a.SetStreamHandler(echoHandler)
	stage := redundantStage(nil)
	a.SetAdmission(stage)
	notes := newCountingNotifiee()
	a.Notify(notes)
	ctx := testkit.Context(t, 20*time.Second)
	addrs := a.ListenAddresses()
	require.Len(t, addrs, 2)

	// b (no stage) dials both of a's addresses and announces both.
	_, err := b.DialPath(ctx, a.LocalPeer(), addrs[0])
	require.NoError(t, err)
	second, err := b.DialPath(ctx, a.LocalPeer(), addrs[1])
	require.NoError(t, err)
	require.Eventually(t, func() bool { return a.AdmissionStats().Refused[core.ReasonPathRedundant] == 1 },
		within, 5*time.Millisecond)
	admits := stage.admitted()
	require.Len(t, admits, 2)
	first, redundant := admits[0], admits[1]
	require.Equal(t, network.DirInbound, redundant.Stat().Direction)
	require.Equal(t, []network.Conn{first}, a.ConnsToPeer(b.LocalPeer()))
	require.Zero(t, connectedTo(notes, redundant))

	s, err := second.NewStream(ctx)
	require.NoError(t, err)
	echo(t, s, 4<<10)
	// A bounded wait (absence): RedundantQuiet is for connections we
	// dialed; this one is left open much longer.
	require.Never(t, redundant.IsClosed, swarm.RedundantQuiet+500*time.Millisecond, 20*time.Millisecond)
	require.Less(t, swarm.RedundantQuiet+500*time.Millisecond, swarm.RedundantIdleTimeout)
	require.Equal(t, []network.Conn{first}, a.ConnsToPeer(b.LocalPeer()))
	_, connected, disconnected := notes.counts()
	require.Equal(t, []int{1, 0}, []int{connected, disconnected})
}

// TestAdmissionDialPathReusesConnection: DialPath to an address a
// connection already goes to returns that connection without dialing (the
// stages see one connection on each end; one Connected).
func TestAdmissionDialPathReusesConnection(t *testing.T) {
	a := newSwarm(t, swarm.Config{})
	b := newSwarm(t, swarm.Config{})
	stageA := newFakeStage("a", nil, nil)
	stageB := newFakeStage("b", nil, nil)
	a.SetAdmission(stageA)
	b.SetAdmission(stageB)
	notes := newCountingNotifiee()
	a.Notify(notes)
	ctx := testkit.Context(t, 20*time.Second)
	addr := b.ListenAddresses()[0]

	c1, err := a.DialPath(ctx, b.LocalPeer(), addr)
	require.NoError(t, err)
	c2, err := a.DialPath(ctx, b.LocalPeer(), addr)
	require.NoError(t, err)
	require.Same(t, c1, c2)
	withID := addr.Encapsulate(ma.StringCast("/p2p/" + b.LocalPeer().String()))
	c3, err := a.DialPath(ctx, b.LocalPeer(), withID)
	require.NoError(t, err)
	require.Same(t, c1, c3)
	c4, err := a.DialPeer(ctx, b.LocalPeer())
	require.NoError(t, err)
	require.Same(t, c1, c4)

	require.Equal(t, 1, stageA.callsFor(b.LocalPeer()), "one connection dialed")
	require.Equal(t, []network.Conn{c1}, a.ConnsToPeer(b.LocalPeer()))
	_, connected, _ := notes.counts()
	require.Equal(t, 1, connected)
	require.Eventually(t, func() bool { return len(b.ConnsToPeer(a.LocalPeer())) == 1 }, within, 5*time.Millisecond)
	require.Equal(t, 1, stageB.callsFor(a.LocalPeer()))
}

// TestAdmissionConcurrentDialPathOneConnection: N concurrent DialPath calls
// to one fresh address share one dial: every caller gets the same
// connection, both ends have exactly one.
func TestAdmissionConcurrentDialPathOneConnection(t *testing.T) {
	const callers = 16
	a := newSwarm(t, swarm.Config{AddrDialTimeout: 30 * time.Second})
	b := newSwarm(t, swarm.Config{})
	learn(a, b)
	var started sync.WaitGroup
	started.Add(callers)
	allStarted := make(chan struct{})
	go func() { started.Wait(); close(allStarted) }()
	// The first admission holds until every caller is under way, so that
	// the callers overlap the dial.
	stageA := newFakeStage("a", nil, func(ctx context.Context, _ core.Conn, _ int) error {
		select {
		case <-allStarted:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	stageB := newFakeStage("b", nil, nil)
	a.SetAdmission(stageA)
	b.SetAdmission(stageB)
	notesA, notesB := newCountingNotifiee(), newCountingNotifiee()
	a.Notify(notesA)
	b.Notify(notesB)
	ctx := testkit.Context(t, 30*time.Second)
	addr := b.ListenAddresses()[0]

	conns := make([]network.Conn, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			started.Done()
			conns[i], errs[i] = a.DialPath(ctx, b.LocalPeer(), addr)
		})
	}
	wg.Wait()
	for i := range callers {
		require.NoError(t, errs[i], "caller %d", i)
		require.Same(t, conns[0], conns[i], "caller %d got another connection", i)
	}
	require.Equal(t, 1, stageA.callsFor(b.LocalPeer()), "one connection dialed")
	require.Equal(t, []network.Conn{conns[0]}, a.ConnsToPeer(b.LocalPeer()))
	_, connected, _ := notesA.counts()
	require.Equal(t, 1, connected)
	require.Eventually(t, func() bool { return len(b.ConnsToPeer(a.LocalPeer())) == 1 }, within, 5*time.Millisecond)
	require.Equal(t, 1, stageB.callsFor(a.LocalPeer()))
	_, connected, _ = notesB.counts()
	require.Equal(t, 1, connected)
}

// newSwarmWithDials is newSwarm (one loopback QUIC listener) with a dial
// gater (Params.Dials).
func newSwarmWithDials(t *testing.T, dials core.DialGater) *testSwarm {
	t.Helper()
	return newSwarmWith(t, func(p *swarm.Params) { p.Dials = dials })
}

// slowDialGater is a core.DialGater whose first CheckAddrDial blocks until
// released (a slow BeforeConnect hook); it allows everything.
type slowDialGater struct {
	calls   atomic.Int32
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func newSlowDialGater() *slowDialGater {
	return &slowDialGater{entered: make(chan struct{}), release: make(chan struct{})}
}

func (g *slowDialGater) CheckPeerDial(peer.ID) error { return nil }

func (g *slowDialGater) CheckAddrDial(peer.ID, ma.Multiaddr) error {
	if g.calls.Add(1) == 1 {
		close(g.entered)
		<-g.release
	}
	return nil
}

func (g *slowDialGater) releaseAll() { g.once.Do(func() { close(g.release) }) }

// TestAdmissionDialPeerDoesNotRedialAnAddressInUse: DialPeer starts while
// the peer has no connection; while its attempt is held up before it dials
// (a slow dial gater, in dialableAddrs), DialPath connects to the peer's
// only address. DialPeer's attempt then dials the same address again: a
// second connection on the same pair of addresses, made by this node alone
// — which addrDial promises never happens ("so this node never makes two
// connections on the same pair of addresses itself").
func TestAdmissionDialPeerDoesNotRedialAnAddressInUse(t *testing.T) {
	gater := newSlowDialGater()
	a := newSwarmWithDials(t, gater)
	t.Cleanup(gater.releaseAll) // before a closes: Close waits for the dial
	b := newSwarm(t, swarm.Config{})
	learn(a, b)
	stage := newFakeStage("a", nil, nil)
	a.SetAdmission(stage)
	ctx := testkit.Context(t, 20*time.Second)
	addr := b.ListenAddresses()[0]

	type result struct {
		conn network.Conn
		err  error
	}
	dialed := make(chan result, 1)
	go func() {
		c, err := a.DialPeer(ctx, b.LocalPeer())
		dialed <- result{c, err}
	}()
	select {
	case <-gater.entered:
	case <-time.After(within):
		t.Fatal("DialPeer did not reach the dial gater")
	}
	c1, err := a.DialPath(ctx, b.LocalPeer(), addr)
	require.NoError(t, err)
	gater.releaseAll()
	var r result
	select {
	case r = <-dialed:
	case <-time.After(within):
		t.Fatal("DialPeer did not return")
	}
	require.NoError(t, r.err)
	require.Equal(t, 1, stage.callsFor(b.LocalPeer()), "connections made to %s: %d", addr, stage.callsFor(b.LocalPeer()))
	require.Same(t, c1, r.conn)
	require.Equal(t, []network.Conn{c1}, a.ConnsToPeer(b.LocalPeer()))
}
