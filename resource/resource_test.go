package resource_test

import (
	"strings"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/resource"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"))
}

func newManager(t *testing.T, cfg resource.Config, reg prometheus.Registerer) *resource.Manager {
	t.Helper()
	m, err := resource.New(cfg, reg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, m.Close()) })
	return m
}

func TestRealmStreamLimit(t *testing.T) {
	m := newManager(t, resource.Config{Realms: resource.RealmConfig{
		Default: resource.RealmLimits{StreamsInbound: 100},
		Realm:   map[resource.RealmID]resource.RealmLimits{"chat": {StreamsInbound: 8}},
	}}, nil)
	var releases []func()
	for range 8 {
		release, err := m.ReserveRealmStream("chat", network.DirInbound)
		require.NoError(t, err)
		releases = append(releases, release)
	}
	_, err := m.ReserveRealmStream("chat", network.DirInbound)
	require.ErrorIs(t, err, network.ErrResourceLimitExceeded)
	for _, want := range []string{`"chat"`, "streams_inbound", "8"} {
		require.Contains(t, err.Error(), want)
	}
	var limitErr *resource.LimitError
	require.ErrorAs(t, err, &limitErr)
	require.Equal(t, resource.LimitError{Realm: "chat", Resource: "streams_inbound", Limit: 8}, *limitErr)

	// Other realms and the other direction are unaffected.
	release, err := m.ReserveRealmStream("games", network.DirInbound)
	require.NoError(t, err)
	release()
	release, err = m.ReserveRealmStream("chat", network.DirOutbound)
	require.NoError(t, err)
	release()

	// Releasing one makes room; releasing twice counts once.
	releases[0]()
	releases[0]()
	release, err = m.ReserveRealmStream("chat", network.DirInbound)
	require.NoError(t, err)
	release()
	for _, r := range releases[1:] {
		r()
	}
	st, ok := m.ViewRealm("chat")
	require.True(t, ok)
	require.Zero(t, st.StreamsInbound)
	require.Equal(t, 8, st.Limits.StreamsInbound)
}

func TestAccountingBalancesUnderConcurrency(t *testing.T) {
	m := newManager(t, resource.Config{Realms: resource.RealmConfig{Default: resource.RealmLimits{Conns: 50, StreamsOutbound: 64, Memory: 1 << 20}}}, nil)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			realm := resource.RealmID([]string{"a", "b"}[g%2])
			for range 200 {
				if r, err := m.ReserveRealmStream(realm, network.DirOutbound); err == nil {
					r()
				}
				if r, err := m.ReserveRealmConn(realm); err == nil {
					r()
				}
				if r, err := m.ReserveRealmMemory(realm, 4096); err == nil {
					r()
				}
			}
		})
	}
	wg.Wait()
	for _, realm := range []resource.RealmID{"a", "b"} {
		st, ok := m.ViewRealm(realm)
		require.True(t, ok)
		require.Zero(t, st.Conns)
		require.Zero(t, st.StreamsOutbound)
		require.Zero(t, st.Memory)
	}
	require.Len(t, m.Stat().Realms, 2)
}

func TestMemoryAndConnLimits(t *testing.T) {
	m := newManager(t, resource.Config{Realms: resource.RealmConfig{Default: resource.RealmLimits{Conns: 1, Memory: 1000}}}, nil)
	r1, err := m.ReserveRealmConn("x")
	require.NoError(t, err)
	_, err = m.ReserveRealmConn("x")
	require.ErrorIs(t, err, network.ErrResourceLimitExceeded)
	r1()
	_, err = m.ReserveRealmMemory("x", 1001)
	require.ErrorContains(t, err, "memory limit of 1000")
	_, err = m.ReserveRealmMemory("x", -1)
	require.ErrorContains(t, err, "-1")
	_, err = m.ReserveRealmStream("x", network.DirUnknown)
	require.ErrorContains(t, err, "Unknown")
	require.ErrorContains(t, m.SetRealmLimits("x", resource.RealmLimits{Conns: -2}), "-2")
	require.NoError(t, m.SetRealmLimits("x", resource.RealmLimits{Conns: 3}))
	st, _ := m.ViewRealm("x")
	require.Equal(t, 3, st.Limits.Conns)
	require.Equal(t, int64(1000), st.Limits.Memory, "unset override fields take the default")
}

func TestLoadConfig(t *testing.T) {
	cfg, err := resource.LoadConfig(strings.NewReader(`{
		"System": {"Conns": 2048, "StreamsInbound": 4096},
		"Peer": {},
		"Realms": {
			"Default": {"Conns": 64, "StreamsInbound": 256, "StreamsOutbound": 256, "Memory": 67108864},
			"Realm": {"chat": {"StreamsInbound": 8}}
		}
	}`))
	require.NoError(t, err)
	require.EqualValues(t, 2048, cfg.System.Conns)
	require.Equal(t, 64, cfg.Realms.Default.Conns)
	require.Equal(t, 8, cfg.Realms.Realm["chat"].StreamsInbound)
	m := newManager(t, cfg, nil)
	require.Equal(t, 2048, m.GetConnLimit(), "rcmgr limits from the JSON are in force")

	_, err = resource.LoadConfig(strings.NewReader(`{"Realms": {"Default": {"Connz": 1}}}`))
	require.ErrorContains(t, err, "Connz", "misspelt fields are errors")
	_, err = resource.LoadConfig(strings.NewReader(`{"Realms": {"Realm": {"r": {"Conns": -1}}}}`))
	require.ErrorContains(t, err, `Realms.Realm["r"].Conns`)
	_, err = resource.LoadConfig(strings.NewReader(strings.Repeat(" ", 2<<20)))
	require.ErrorContains(t, err, "larger than")
	_, err = resource.LoadConfig(strings.NewReader(`{"System": `))
	require.Error(t, err)
}

func TestRealmMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newManager(t, resource.Config{}, reg)
	release, err := m.ReserveRealmStream("chat", network.DirInbound)
	require.NoError(t, err)
	metrics, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, metrics, 1)
	require.Equal(t, "realmnet_realm_usage", metrics[0].GetName())
	require.Equal(t, 1.0, metrics[0].GetMetric()[0].GetGauge().GetValue())
	release()
	metrics, err = reg.Gather()
	require.NoError(t, err)
	require.Equal(t, 0.0, metrics[0].GetMetric()[0].GetGauge().GetValue())
	_, err = resource.New(resource.Config{}, reg)
	require.ErrorContains(t, err, "register metrics", "a second manager on the same registry is refused")
}

func TestRcmgrStillEnforces(t *testing.T) {
	cfg, err := resource.LoadConfig(strings.NewReader(`{"System": {"StreamsOutbound": 2, "Streams": 2}}`))
	require.NoError(t, err)
	m := newManager(t, cfg, nil)
	var scopes []network.StreamManagementScope
	for range 2 {
		s, err := m.OpenStream("", network.DirOutbound)
		require.NoError(t, err)
		scopes = append(scopes, s)
	}
	_, err = m.OpenStream("", network.DirOutbound)
	require.ErrorIs(t, err, network.ErrResourceLimitExceeded)
	for _, s := range scopes {
		s.Done()
	}
	require.Zero(t, m.Stat().Rcmgr.System.NumStreamsOutbound)
}
