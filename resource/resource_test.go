package resource_test

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/x/rate"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/resource"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testkit.LeakOptions()...)
}

func newManager(t testing.TB, cfg resource.Config, reg prometheus.Registerer) *resource.Manager {
	t.Helper()
	m, err := resource.New(cfg, reg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, m.Close()) })
	return m
}

// requireLimitError checks that err is the refusal of realm's resource at
// limit: a *LimitError with those fields, matching
// network.ErrResourceLimitExceeded, whose message names all three.
func requireLimitError(t *testing.T, err error, realm core.RealmID, res string, limit int64) {
	t.Helper()
	require.True(t, errors.Is(err, network.ErrResourceLimitExceeded))
	var limitErr *resource.LimitError
	require.ErrorAs(t, err, &limitErr)
	require.Equal(t, resource.LimitError{Realm: realm, Resource: res, Limit: limit}, *limitErr)
	for _, want := range []string{strconv.Quote(string(realm)), res, "limit of " + strconv.FormatInt(limit, 10)} {
		require.Contains(t, err.Error(), want)
	}
}

// TestRealmStreamLimitPerDirection: each direction's stream limit is
// enforced on its own (the other direction and other realms are unaffected),
// the refusal is a *LimitError naming realm, resource and limit that matches
// network.ErrResourceLimitExceeded, a release makes room, releasing twice
// counts once, and usage returns to zero.
func TestRealmStreamLimitPerDirection(t *testing.T) {
	for _, tc := range []struct {
		dir, other network.Direction
		res        string
		limit      int
		count      func(resource.RealmStat) int
	}{
		{network.DirInbound, network.DirOutbound, "streams_inbound", 8, func(s resource.RealmStat) int { return s.StreamsInbound }},
		{network.DirOutbound, network.DirInbound, "streams_outbound", 5, func(s resource.RealmStat) int { return s.StreamsOutbound }},
	} {
		t.Run(tc.res, func(t *testing.T) {
			override := core.RealmScopeLimits{StreamsInbound: 1000, StreamsOutbound: 1000}
			if tc.dir == network.DirInbound {
				override.StreamsInbound = tc.limit
			} else {
				override.StreamsOutbound = tc.limit
			}
			m := newManager(t, resource.Config{Realms: resource.RealmConfig{
				Default: core.RealmScopeLimits{StreamsInbound: 100, StreamsOutbound: 100},
				Realm:   map[core.RealmID]core.RealmScopeLimits{"chat": override},
			}}, nil)
			var releases []func()
			for range tc.limit {
				release, err := m.ReserveRealmStream("chat", tc.dir)
				require.NoError(t, err)
				releases = append(releases, release)
			}
			st, ok := m.ViewRealm("chat")
			require.True(t, ok)
			require.Equal(t, tc.limit, tc.count(st))
			require.Zero(t, st.Members)

			_, err := m.ReserveRealmStream("chat", tc.dir)
			requireLimitError(t, err, "chat", tc.res, int64(tc.limit))
			st, _ = m.ViewRealm("chat")
			require.Equal(t, tc.limit, tc.count(st), "a refusal charges nothing")

			// The other direction, members and other realms are unaffected.
			release, err := m.ReserveRealmStream("chat", tc.other)
			require.NoError(t, err)
			release()
			release, err = m.ReserveRealmMember("chat")
			require.NoError(t, err)
			release()
			release, err = m.ReserveRealmStream("games", tc.dir)
			require.NoError(t, err)
			release()

			// Releasing one makes room for exactly one; releasing twice
			// counts once.
			releases[0]()
			releases[0]()
			st, _ = m.ViewRealm("chat")
			require.Equal(t, tc.limit-1, tc.count(st))
			releases[0], err = m.ReserveRealmStream("chat", tc.dir)
			require.NoError(t, err)
			_, err = m.ReserveRealmStream("chat", tc.dir)
			require.ErrorIs(t, err, network.ErrResourceLimitExceeded)
			for _, r := range releases {
				r()
				r()
			}
			st, ok = m.ViewRealm("chat")
			require.True(t, ok)
			require.Equal(t, resource.RealmStat{Limits: override}, st, "usage back to zero")
		})
	}
}

// TestRealmMemberLimit: ReserveRealmMember charges one member per call
// against Members, refuses the one over the limit with a "members"
// *LimitError, is independent of the stream counts, and its release
// (idempotent) makes room again.
func TestRealmMemberLimit(t *testing.T) {
	m := newManager(t, resource.Config{Realms: resource.RealmConfig{
		Default: core.RealmScopeLimits{Members: 3, StreamsInbound: 1},
	}}, nil)
	var releases []func()
	for range 3 {
		release, err := m.ReserveRealmMember("team")
		require.NoError(t, err)
		releases = append(releases, release)
	}
	st, ok := m.ViewRealm("team")
	require.True(t, ok)
	require.Equal(t, resource.RealmStat{Members: 3, Limits: core.RealmScopeLimits{Members: 3, StreamsInbound: 1}}, st)

	_, err := m.ReserveRealmMember("team")
	requireLimitError(t, err, "team", "members", 3)

	// Streams are not members, nor the reverse.
	release, err := m.ReserveRealmStream("team", network.DirInbound)
	require.NoError(t, err)
	_, err = m.ReserveRealmStream("team", network.DirInbound)
	requireLimitError(t, err, "team", "streams_inbound", 1)
	release()
	// Another realm has its own members.
	release, err = m.ReserveRealmMember("other")
	require.NoError(t, err)
	release()

	releases[1]()
	releases[1]()
	st, _ = m.ViewRealm("team")
	require.Equal(t, 2, st.Members, "a release counts once")
	releases[1], err = m.ReserveRealmMember("team")
	require.NoError(t, err)
	_, err = m.ReserveRealmMember("team")
	require.ErrorIs(t, err, network.ErrResourceLimitExceeded)
	for _, r := range releases {
		r()
	}
	st, _ = m.ViewRealm("team")
	require.Zero(t, st.Members)
	require.Equal(t, map[core.RealmID]resource.RealmStat{
		"team":  {Limits: core.RealmScopeLimits{Members: 3, StreamsInbound: 1}},
		"other": {Limits: core.RealmScopeLimits{Members: 3, StreamsInbound: 1}},
	}, m.Stat().Realms)
}

// TestZeroIsUnlimited: a zero limit in the default (and the zero Config)
// refuses nothing.
func TestZeroIsUnlimited(t *testing.T) {
	m := newManager(t, resource.Config{}, nil)
	var releases []func()
	for range 1000 {
		for _, reserve := range []func() (func(), error){
			func() (func(), error) { return m.ReserveRealmMember("x") },
			func() (func(), error) { return m.ReserveRealmStream("x", network.DirInbound) },
			func() (func(), error) { return m.ReserveRealmStream("x", network.DirOutbound) },
		} {
			r, err := reserve()
			require.NoError(t, err)
			releases = append(releases, r)
		}
	}
	st, _ := m.ViewRealm("x")
	require.Equal(t, resource.RealmStat{Members: 1000, StreamsInbound: 1000, StreamsOutbound: 1000}, st)
	for _, r := range releases {
		r()
	}
	st, _ = m.ViewRealm("x")
	require.Equal(t, resource.RealmStat{}, st)
}

// TestOverridesTakeDefaultForZeroFields: a per-realm override (from the
// config or SetRealmLimits) replaces only its non-zero fields; the zero ones
// keep the default's, and the effective limits are the ones enforced.
// SetRealmLimits refuses a negative value, naming the realm and the field.
// A realm never charged reports false and the default limits.
func TestOverridesTakeDefaultForZeroFields(t *testing.T) {
	def := core.RealmScopeLimits{Members: 5, StreamsInbound: 6, StreamsOutbound: 7}
	m := newManager(t, resource.Config{Realms: resource.RealmConfig{
		Default: def,
		Realm:   map[core.RealmID]core.RealmScopeLimits{"small": {StreamsInbound: 2}},
	}}, nil)

	st, ok := m.ViewRealm("small")
	require.False(t, ok, "never charged")
	require.Equal(t, resource.RealmStat{Limits: core.RealmScopeLimits{Members: 5, StreamsInbound: 2, StreamsOutbound: 7}}, st)
	st, ok = m.ViewRealm("plain")
	require.False(t, ok)
	require.Equal(t, def, st.Limits)
	require.Empty(t, m.Stat().Realms, "viewing charges nothing")

	// The effective limits are enforced: 2 inbound (override), 7 outbound
	// and 5 members (default).
	fill := func(realm core.RealmID, n int, reserve func(core.RealmID) (func(), error)) []func() {
		var rs []func()
		for range n {
			r, err := reserve(realm)
			require.NoError(t, err)
			rs = append(rs, r)
		}
		_, err := reserve(realm)
		require.ErrorIs(t, err, network.ErrResourceLimitExceeded)
		return rs
	}
	in := func(r core.RealmID) (func(), error) { return m.ReserveRealmStream(r, network.DirInbound) }
	out := func(r core.RealmID) (func(), error) { return m.ReserveRealmStream(r, network.DirOutbound) }
	var held []func()
	held = append(held, fill("small", 2, in)...)
	held = append(held, fill("small", 7, out)...)
	held = append(held, fill("small", 5, m.ReserveRealmMember)...)
	for _, r := range held {
		r()
	}

	require.NoError(t, m.SetRealmLimits("plain", core.RealmScopeLimits{Members: 1}))
	st, _ = m.ViewRealm("plain")
	require.Equal(t, core.RealmScopeLimits{Members: 1, StreamsInbound: 6, StreamsOutbound: 7}, st.Limits)
	r := fill("plain", 1, m.ReserveRealmMember)
	r[0]()
	// Replacing an override replaces all of it.
	require.NoError(t, m.SetRealmLimits("small", core.RealmScopeLimits{StreamsOutbound: 1}))
	st, _ = m.ViewRealm("small")
	require.Equal(t, core.RealmScopeLimits{Members: 5, StreamsInbound: 6, StreamsOutbound: 1}, st.Limits)

	for _, tc := range []struct {
		l     core.RealmScopeLimits
		field string
	}{
		{core.RealmScopeLimits{Members: -2}, "Members"},
		{core.RealmScopeLimits{StreamsInbound: -3}, "StreamsInbound"},
		{core.RealmScopeLimits{StreamsOutbound: -4}, "StreamsOutbound"},
	} {
		err := m.SetRealmLimits("bad", tc.l)
		require.ErrorContains(t, err, `"bad"`)
		require.ErrorContains(t, err, tc.field)
	}
	st, _ = m.ViewRealm("bad")
	require.Equal(t, def, st.Limits, "a refused override is not applied")
}

// TestInvalidDirection: ReserveRealmStream refuses a direction that is
// neither inbound nor outbound with an error that is not a limit error, and
// charges nothing.
func TestInvalidDirection(t *testing.T) {
	m := newManager(t, resource.Config{}, nil)
	release, err := m.ReserveRealmStream("x", network.DirUnknown)
	require.Nil(t, release)
	require.ErrorContains(t, err, "Unknown")
	require.NotErrorIs(t, err, network.ErrResourceLimitExceeded)
	_, ok := m.ViewRealm("x")
	require.False(t, ok)
}

// TestAccountingBalancesUnderConcurrency: 16 goroutines reserving and
// releasing (some twice) members and streams of both directions in two
// realms, each round trying one more than the limit so that refusals are
// certain, never hold more than a limit at once, get only limit errors, and
// leave every count at exactly zero.
func TestAccountingBalancesUnderConcurrency(t *testing.T) {
	limits := core.RealmScopeLimits{Members: 3, StreamsInbound: 4, StreamsOutbound: 5}
	m := newManager(t, resource.Config{Realms: resource.RealmConfig{Default: limits}}, nil)
	realms := []core.RealmID{"a", "b"}
	// held[realm][resource] counts what the goroutines hold (incremented
	// after a reservation, decremented before its release, so never above
	// the manager's count); peak is its maximum.
	var held, peak [2][3]atomic.Int64
	var refused atomic.Int64
	maxOf := [3]int64{int64(limits.Members), int64(limits.StreamsInbound), int64(limits.StreamsOutbound)}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			ri := g % 2
			realm := realms[ri]
			reserves := [3]func() (func(), error){
				func() (func(), error) { return m.ReserveRealmMember(realm) },
				func() (func(), error) { return m.ReserveRealmStream(realm, network.DirInbound) },
				func() (func(), error) { return m.ReserveRealmStream(realm, network.DirOutbound) },
			}
			// Each round tries to hold one more than the limit: at least
			// that last try is refused, whatever the scheduling.
			for round := range 60 {
				res := (g + round) % 3
				var mine []func()
				for range maxOf[res] + 1 {
					r, err := reserves[res]()
					if err != nil {
						if !errors.Is(err, network.ErrResourceLimitExceeded) {
							t.Error(err)
						}
						refused.Add(1)
						continue
					}
					mine = append(mine, r)
					raise(&peak[ri][res], held[ri][res].Add(1))
				}
				for i, r := range mine {
					held[ri][res].Add(-1)
					r()
					if i%2 == 0 {
						r() // idempotent, even among concurrent reservations
					}
				}
			}
		})
	}
	wg.Wait()
	require.GreaterOrEqual(t, refused.Load(), int64(16*60), "every round reached its limit")
	for ri, realm := range realms {
		for res := range 3 {
			require.LessOrEqual(t, peak[ri][res].Load(), maxOf[res], "realm %s resource %d", realm, res)
		}
		st, ok := m.ViewRealm(realm)
		require.True(t, ok)
		require.Equal(t, resource.RealmStat{Limits: limits}, st, "every count back to zero")
	}
	require.Len(t, m.Stat().Realms, 2)
}

// raise sets hi to n when n is greater.
func raise(hi *atomic.Int64, n int64) {
	for {
		p := hi.Load()
		if n <= p || hi.CompareAndSwap(p, n) {
			return
		}
	}
}

// gauge returns realmnet_realm_usage{realm, resource} from reg; false when
// the series does not exist.
func gauge(t *testing.T, reg *prometheus.Registry, realm, res string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != "realmnet_realm_usage" {
			continue
		}
		for _, mt := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["realm"] == realm && labels["resource"] == res {
				return mt.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

// TestRealmMetrics: the gauge realmnet_realm_usage{realm, resource} follows
// each realm's members, streams_inbound and streams_outbound (a refusal
// does not move it, a release brings it back to zero), and a second
// manager on the same registry is refused.
func TestRealmMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newManager(t, resource.Config{Realms: resource.RealmConfig{Default: core.RealmScopeLimits{Members: 2}}}, reg)
	_, ok := gauge(t, reg, "chat", "members")
	require.False(t, ok, "no series before a charge")

	var releases []func()
	reserve := func(r func() (func(), error)) {
		release, err := r()
		require.NoError(t, err)
		releases = append(releases, release)
	}
	reserve(func() (func(), error) { return m.ReserveRealmMember("chat") })
	reserve(func() (func(), error) { return m.ReserveRealmMember("chat") })
	_, err := m.ReserveRealmMember("chat")
	require.ErrorIs(t, err, network.ErrResourceLimitExceeded)
	for range 3 {
		reserve(func() (func(), error) { return m.ReserveRealmStream("chat", network.DirInbound) })
	}
	reserve(func() (func(), error) { return m.ReserveRealmStream("chat", network.DirOutbound) })
	reserve(func() (func(), error) { return m.ReserveRealmStream("games", network.DirOutbound) })

	for _, want := range []struct {
		realm, res string
		v          float64
	}{
		{"chat", "members", 2},
		{"chat", "streams_inbound", 3},
		{"chat", "streams_outbound", 1},
		{"games", "streams_outbound", 1},
	} {
		v, ok := gauge(t, reg, want.realm, want.res)
		require.True(t, ok, "%s %s", want.realm, want.res)
		require.Equal(t, want.v, v, "%s %s", want.realm, want.res)
	}
	for _, r := range releases {
		r()
		r()
	}
	for _, series := range [][2]string{{"chat", "members"}, {"chat", "streams_inbound"}, {"chat", "streams_outbound"}, {"games", "streams_outbound"}} {
		v, ok := gauge(t, reg, series[0], series[1])
		require.True(t, ok)
		require.Zero(t, v, "%v back to zero", series)
	}

	_, err = resource.New(resource.Config{}, reg)
	require.ErrorContains(t, err, "register metrics", "a second manager on the same registry is refused")
}

// TestLoadConfig: the JSON config — rcmgr's sections and "Realms" with
// Members, StreamsInbound and StreamsOutbound — loads, and its rcmgr limits
// are in force (GetConnLimit is the system connection limit).
func TestLoadConfig(t *testing.T) {
	cfg, err := resource.LoadConfig(strings.NewReader(`{
		"System": {"Conns": 2048, "StreamsInbound": 4096},
		"Peer": {},
		"Realms": {
			"Default": {"Members": 64, "StreamsInbound": 256, "StreamsOutbound": 128},
			"Realm": {"chat": {"StreamsInbound": 8}}
		}
	}`))
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.EqualValues(t, 2048, cfg.System.Conns)
	require.Equal(t, core.RealmScopeLimits{Members: 64, StreamsInbound: 256, StreamsOutbound: 128}, cfg.Realms.Default)
	require.Equal(t, map[core.RealmID]core.RealmScopeLimits{"chat": {StreamsInbound: 8}}, cfg.Realms.Realm)
	m := newManager(t, cfg, nil)
	require.Equal(t, 2048, m.GetConnLimit(), "rcmgr limits from the JSON are in force")
	st, _ := m.ViewRealm("chat")
	require.Equal(t, core.RealmScopeLimits{Members: 64, StreamsInbound: 8, StreamsOutbound: 128}, st.Limits)

	cfg, err = resource.LoadConfig(strings.NewReader(`{}`))
	require.NoError(t, err)
	require.Equal(t, resource.Config{}, cfg)
}

// TestGetConnLimitDefault: without a configured system limit, GetConnLimit
// is rcmgr's auto-scaled system connection limit.
func TestGetConnLimitDefault(t *testing.T) {
	m := newManager(t, resource.Config{}, nil)
	want := rcmgr.DefaultLimits.AutoScale().ToPartialLimitConfig().System.Conns
	require.EqualValues(t, want, m.GetConnLimit())
	require.Positive(t, m.GetConnLimit())
	require.Less(t, m.GetConnLimit(), math.MaxInt)
}

// TestLoadConfigErrors: LoadConfig refuses, with an error naming the
// offending field, the removed realm limits "Conns" and "Memory" (in the
// default and in an override), misspelt fields, and negative limits (the
// error names where: Realms.Default.X or Realms.Realm["id"].X); New and
// Config.Validate refuse the same negative limits. Oversized and truncated
// input are errors too.
func TestLoadConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, json string
		want       []string
	}{
		{"removed Conns in Default", `{"Realms": {"Default": {"Conns": 64}}}`, []string{`unknown field "Conns"`}},
		{"removed Memory in Default", `{"Realms": {"Default": {"Memory": 67108864}}}`, []string{`unknown field "Memory"`}},
		{"removed Conns in override", `{"Realms": {"Realm": {"chat": {"Conns": 1}}}}`, []string{`unknown field "Conns"`}},
		{"removed Memory in override", `{"Realms": {"Realm": {"chat": {"StreamsInbound": 1, "Memory": 1}}}}`, []string{`unknown field "Memory"`}},
		{"misspelt", `{"Realms": {"Default": {"Memberz": 1}}}`, []string{"Memberz"}},
		{"unknown section", `{"Realmz": {}}`, []string{"Realmz"}},
		{"negative Members in Default", `{"Realms": {"Default": {"Members": -1}}}`, []string{"Realms.Default.Members", "-1"}},
		{"negative Members in override", `{"Realms": {"Realm": {"r": {"Members": -7}}}}`, []string{`Realms.Realm["r"].Members`, "-7"}},
		{"negative StreamsInbound", `{"Realms": {"Default": {"StreamsInbound": -2}}}`, []string{"Realms.Default.StreamsInbound", "-2"}},
		{"negative StreamsOutbound", `{"Realms": {"Realm": {"r": {"StreamsOutbound": -3}}}}`, []string{`Realms.Realm["r"].StreamsOutbound`, "-3"}},
		{"truncated", `{"System": `, []string{"parse config"}},
		{"oversized", strings.Repeat(" ", 2<<20), []string{"larger than"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := resource.LoadConfig(strings.NewReader(tc.json))
			require.Error(t, err)
			require.Equal(t, resource.Config{}, cfg)
			for _, want := range tc.want {
				require.ErrorContains(t, err, want)
			}
		})
	}

	bad := resource.Config{Realms: resource.RealmConfig{Realm: map[core.RealmID]core.RealmScopeLimits{"r": {Members: -1}}}}
	require.ErrorContains(t, bad.Validate(), `Realms.Realm["r"].Members`)
	_, err := resource.New(bad, nil)
	require.ErrorContains(t, err, `Realms.Realm["r"].Members`)
	bad = resource.Config{Realms: resource.RealmConfig{Default: core.RealmScopeLimits{Members: -1}}}
	_, err = resource.New(bad, nil)
	require.ErrorContains(t, err, "Realms.Default.Members")
}

// TestRcmgrStillEnforces: rcmgr's own limits from the config are enforced
// by the manager (its stream scopes are rcmgr's).
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

// TestConnRateLimitSparesRelayedConnections: direct connections from one
// IPv4 address get go-libp2p's default rate limit (a burst of 16); relayed
// ones, which all carry their relay's IP, are neither rate limited nor
// counted per IP; Config.ConnRateLimiter replaces the limiter.
func TestConnRateLimitSparesRelayedConnections(t *testing.T) {
	direct := ma.StringCast("/ip4/203.0.113.10/udp/4001/quic-v1")
	relayed := ma.StringCast("/ip4/203.0.113.10/udp/4001/quic-v1/p2p/12D3KooWJc7wEmHxRfJYgeU8YJV3HDW94yftQWj2DT3Yv4mnXJvn/p2p-circuit")
	// open opens n connections from endpoint, keeping them open or
	// closing each at once.
	open := func(m *resource.Manager, endpoint ma.Multiaddr, n int, keep bool) (opened int, err error) {
		for range n {
			s, err := m.OpenConnection(network.DirInbound, false, endpoint)
			if err != nil {
				return opened, err
			}
			opened++
			if keep {
				t.Cleanup(s.Done)
			} else {
				s.Done()
			}
		}
		return opened, nil
	}

	m := newManager(t, resource.Config{}, nil)
	n, err := open(m, relayed, 40, true)
	require.NoError(t, err, "relayed connection %d refused", n+1)
	n, err = open(m, direct, 40, false)
	require.ErrorContains(t, err, "rate limit exceeded")
	require.Equal(t, 16, n, "go-libp2p's default burst per IPv4 address")
	n, err = open(newManager(t, resource.Config{}, nil), direct, 40, true)
	require.ErrorContains(t, err, "connections per ip limit exceeded")
	require.Equal(t, 8, n, "go-libp2p's default count per IPv4 address")

	m = newManager(t, resource.Config{ConnRateLimiter: &rate.Limiter{}}, nil)
	n, err = open(m, direct, 40, false)
	require.NoError(t, err)
	require.Equal(t, 40, n)
}
