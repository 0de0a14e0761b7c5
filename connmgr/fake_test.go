package connmgr

import (
	"context"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/testkit"
)

// fakeConn is the shared test connection (testkit.FakeConn).
type fakeConn = testkit.FakeConn

// newFakeConn returns an open connection to p opened now.
func newFakeConn(p peer.ID, dir network.Direction) *fakeConn {
	return testkit.NewFakeConn("", p, dir)
}

// admit is AdmitConn as a yes/no, for the policy tests.
func tryAdmit(m *Manager, c core.Conn) bool { return m.AdmitConn(context.Background(), c) == nil }
