package debugapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listen starts a debug endpoint on 127.0.0.1 serving source (and token,
// when not empty), closed at the end of the test.
func listen(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	s, err := Listen(cfg)
	if err != nil {
		t.Fatalf("Listen(%q): %v", cfg.Addr, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// httpClient is an HTTP client of the test's own, whose idle connections are
// closed at the end of the test (goleak).
func httpClient(t *testing.T) *http.Client {
	transport := &http.Transport{}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport, Timeout: 30 * time.Second}
}

// response is a response read whole.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends method url with the given headers (name, value pairs).
func do(t *testing.T, c *http.Client, method, url string, header ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read the body: %v", method, url, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: body}
}

// getJSON GETs url, expects 200 and application/json, and decodes the body
// into an any.
func getJSON(t *testing.T, c *http.Client, url string) any {
	t.Helper()
	r := do(t, c, http.MethodGet, url)
	if r.status != http.StatusOK {
		t.Fatalf("GET %s: status %d, want 200; body %s", url, r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET %s: Content-Type %q, want application/json", url, ct)
	}
	var v any
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("GET %s: the body is not JSON: %v; body %s", url, err, r.body)
	}
	return v
}

// wantError checks that r is a JSON error with status and a message holding
// every one of parts.
func wantError(t *testing.T, what string, r response, status int, parts ...string) {
	t.Helper()
	if r.status != status {
		t.Errorf("%s: status %d, want %d; body %s", what, r.status, status, r.body)
	}
	var e map[string]any
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("%s: the error body is not JSON: %v; body %s", what, err, r.body)
	}
	msg, ok := e["error"].(string)
	if !ok || len(e) != 1 {
		t.Fatalf(`%s: the error body is %s, want {"error": "..."}`, what, r.body)
	}
	for _, p := range parts {
		if !strings.Contains(msg, p) {
			t.Errorf("%s: error %q does not contain %q", what, msg, p)
		}
	}
}

// The JSON shapes, field by field. A field's kind is one of the kind
// strings, an object (fields), a nullable object, or an array of objects.
type (
	fields   map[string]any
	nullable struct{ fields fields }
	arrayOf  struct{ fields fields }
)

// The kinds of a field that is not an object.
const (
	kindString   = "string"
	kindNumber   = "number"
	kindBool     = "bool"
	kindTime     = "time"      // an RFC 3339 string
	kindTimeNull = "time|null" // an RFC 3339 string or null
	kindStrings  = "[string]"  // an array of strings
)

var (
	healthFields = fields{
		"peer": kindString, "breaker": kindString, "open_until": kindTimeNull,
		"quality": kindNumber, "recent_failures": kindNumber,
	}
	nodeFields = fields{
		"id": kindString, "version": kindString, "listen_addrs": kindStrings, "addrs": kindStrings,
		"started": kindTime, "uptime_seconds": kindNumber, "peers": kindNumber, "conns": kindNumber,
		"streams": kindNumber, "reachability": kindString,
	}
	peerFields = fields{
		"id": kindString, "connectedness": kindString, "paths": kindNumber, "selected_rtt_ms": kindNumber,
		"realms": kindStrings, "pools": kindStrings, "protected": kindBool, "health": healthFields,
	}
	pathFields = fields{
		"peer": kindString, "conn_id": kindString, "local": kindString, "remote": kindString,
		"direction": kindString, "tier": kindString, "state": kindString, "selected": kindBool,
		"smoothed_rtt_ms": kindNumber, "min_rtt_ms": kindNumber, "heartbeat_rtt_ms": kindNumber,
		"loss": kindNumber, "open_streams": kindNumber, "bytes_sent": kindNumber, "bytes_received": kindNumber,
		"last_heartbeat": kindTime, "opened": kindTime,
	}
	poolFields = fields{
		"name": kindString, "size": kindNumber, "low_water": kindNumber, "high_water": kindNumber,
		"trimmed": kindNumber, "refused": kindNumber,
	}
	realmFields = fields{
		"name": kindString, "joined": kindTime,
		"members": arrayOf{fields{"peer": kindString, "since": kindTime, "paths": kindNumber}},
	}
	eventFields  = fields{"at": kindTime, "type": kindString, "peer": kindString, "text": kindString}
	doctorFields = fields{
		"peer": kindString, "known": kindBool, "connectedness": kindString,
		"addresses":     arrayOf{fields{"addr": kindString, "sources": kindStrings}},
		"dials":         arrayOf{fields{"at": kindTime, "addr": kindString, "error": kindString, "duration_ms": kindNumber}},
		"decisions":     arrayOf{fields{"at": kindTime, "stage": kindString, "hook": kindString, "outcome": kindString, "reason": kindString}},
		"pool_refusals": arrayOf{fields{"at": kindTime, "pool": kindString, "reason": kindString}},
		"realms":        arrayOf{fields{"realm": kindString, "member": kindBool, "state": kindString}},
		"paths":         arrayOf{pathFields},
		"health":        nullable{healthFields},
		"verdict":       kindString,
	}
)

// shapeChecker checks decoded JSON against fields. With full set, every
// array must have elements (so that their shape is checked too) and every
// nullable value must be present.
type shapeChecker struct {
	t    *testing.T
	full bool
}

func (c shapeChecker) object(where string, v any, want fields) {
	c.t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		c.t.Errorf("%s: %T, want a JSON object", where, v)
		return
	}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		got, ok := m[name]
		if !ok {
			c.t.Errorf("%s: no field %q (fields: %v)", where, name, slices.Sorted(maps.Keys(m)))
			continue
		}
		c.value(where+"."+name, got, want[name])
	}
	for name := range m {
		if _, ok := want[name]; !ok {
			c.t.Errorf("%s: unexpected field %q", where, name)
		}
	}
}

func (c shapeChecker) value(where string, v any, want any) {
	c.t.Helper()
	switch want := want.(type) {
	case fields:
		c.object(where, v, want)
	case nullable:
		if v == nil {
			if c.full {
				c.t.Errorf("%s: null, want an object in this data", where)
			}
			return
		}
		c.object(where, v, want.fields)
	case arrayOf:
		items, ok := v.([]any)
		if !ok {
			c.t.Errorf("%s: %T (%v), want a JSON array", where, v, v)
			return
		}
		if c.full && len(items) == 0 {
			c.t.Errorf("%s: empty, want elements in this data", where)
		}
		for i, item := range items {
			c.object(where+"["+strconv.Itoa(i)+"]", item, want.fields)
		}
	case string:
		c.kind(where, v, want)
	default:
		c.t.Fatalf("%s: bad shape %T", where, want)
	}
}

func (c shapeChecker) kind(where string, v any, kind string) {
	c.t.Helper()
	ok := false
	switch kind {
	case kindString:
		_, ok = v.(string)
	case kindNumber:
		_, ok = v.(float64)
	case kindBool:
		_, ok = v.(bool)
	case kindTime, kindTimeNull:
		if v == nil && kind == kindTimeNull {
			return
		}
		s, isString := v.(string)
		_, err := time.Parse(time.RFC3339Nano, s)
		ok = isString && err == nil
	case kindStrings:
		items, isArray := v.([]any)
		ok = isArray
		for _, item := range items {
			if _, isString := item.(string); !isString {
				ok = false
			}
		}
	}
	if !ok {
		c.t.Errorf("%s: %T (%v), want %s", where, v, v, kind)
	}
}

// TestAPIShapes checks every /v1 endpoint's JSON: its field names and JSON
// types, so that renaming a field or changing its type breaks this test.
func TestAPIShapes(t *testing.T) {
	f := newFakeSource(t)
	s := listen(t, Config{Source: f})
	c := httpClient(t)
	full := shapeChecker{t: t, full: true}

	full.object("/v1/node", getJSON(t, c, s.URL()+"/v1/node"), nodeFields)
	for _, endpoint := range []struct {
		path  string
		shape fields
		count int
	}{
		{"/v1/peers", peerFields, len(f.peers)},
		{"/v1/paths", pathFields, len(f.paths)},
		{"/v1/pools", poolFields, len(f.pools)},
		{"/v1/realms", realmFields, len(f.realms)},
		{"/v1/events", eventFields, len(f.events)},
		{"/v1/health", healthFields, len(f.health)},
	} {
		v := getJSON(t, c, s.URL()+endpoint.path)
		shapeChecker{t: t}.value(endpoint.path, v, arrayOf{endpoint.shape})
		if items, _ := v.([]any); len(items) != endpoint.count {
			t.Errorf("%s: %d items, want %d", endpoint.path, len(items), endpoint.count)
		}
	}

	full.object("/v1/doctor/carol", getJSON(t, c, s.URL()+"/v1/doctor/"+f.carol.String()), doctorFields)
	// An unknown peer: every list is [], never null.
	unknown := testPeer(t, 42)
	shapeChecker{t: t}.object("/v1/doctor/unknown", getJSON(t, c, s.URL()+"/v1/doctor/"+unknown.String()), doctorFields)
}

// TestEmptySourceGivesEmptyLists: a Source with nothing to report (nil
// slices everywhere) gives [] lists, never null.
func TestEmptySourceGivesEmptyLists(t *testing.T) {
	s := listen(t, Config{Source: &fakeSource{}})
	c := httpClient(t)
	shapeChecker{t: t}.object("/v1/node", getJSON(t, c, s.URL()+"/v1/node"), nodeFields)
	for _, path := range []string{"/v1/peers", "/v1/paths", "/v1/pools", "/v1/realms", "/v1/events", "/v1/health"} {
		if v, ok := getJSON(t, c, s.URL()+path).([]any); !ok || len(v) != 0 {
			t.Errorf("%s: %v, want []", path, v)
		}
	}
}

// TestClientRoundTrip reads every endpoint with the Client and gets the
// fake Source's data back.
func TestClientRoundTrip(t *testing.T) {
	f := newFakeSource(t)
	s := listen(t, Config{Source: f})
	client, err := NewClient(s.URL(), "")
	if err != nil {
		t.Fatalf("NewClient(%q): %v", s.URL(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	node, err := client.Node(ctx)
	if err != nil {
		t.Fatalf("Node: %v", err)
	}
	if minimum := time.Since(f.node.Started).Seconds() - 60; node.UptimeSeconds < minimum {
		t.Errorf("Node: UptimeSeconds %v, want at least %v (since Started)", node.UptimeSeconds, minimum)
	}
	wantNode := f.node
	wantNode.UptimeSeconds = node.UptimeSeconds
	same(t, "Node", node, wantNode)

	peers, err := client.Peers(ctx)
	check(t, "Peers", err)
	same(t, "Peers", peers, f.peers)

	paths, err := client.Paths(ctx, "")
	check(t, "Paths", err)
	same(t, "Paths", paths, f.paths)

	alicePaths, err := client.Paths(ctx, f.alice.String())
	check(t, "Paths(alice)", err)
	same(t, "Paths(alice)", alicePaths, f.paths[:2])

	pools, err := client.Pools(ctx)
	check(t, "Pools", err)
	same(t, "Pools", pools, f.pools)

	realms, err := client.Realms(ctx)
	check(t, "Realms", err)
	same(t, "Realms", realms, f.realms)

	events, err := client.Events(ctx)
	check(t, "Events", err)
	same(t, "Events", events, f.events)

	health, err := client.Health(ctx)
	check(t, "Health", err)
	same(t, "Health", health, f.healthSorted())

	report, err := client.Doctor(ctx, f.carol.String())
	check(t, "Doctor(carol)", err)
	same(t, "Doctor(carol)", report, f.reports[f.carol])

	unknown := testPeer(t, 42)
	report, err = client.Doctor(ctx, unknown.String())
	check(t, "Doctor(unknown)", err)
	same(t, "Doctor(unknown)", report, DoctorReport{
		Peer: unknown.String(), Connectedness: "NotConnected", Verdict: "unknown peer: no address, no dial, no realm",
		Addresses: []AddressView{}, Dials: []DialView{}, Decisions: []DecisionView{}, PoolRefusals: []RefusalView{},
		Realms: []RealmMembershipView{}, Paths: []PathView{},
	})
}

func check(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func same(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", "  ")
		w, _ := json.MarshalIndent(want, "", "  ")
		t.Errorf("%s:\ngot  %s\nwant %s", what, g, w)
	}
}

// TestEventsAndHealthOrder: events oldest first, health best quality first,
// whatever order the Source gives them in.
func TestEventsAndHealthOrder(t *testing.T) {
	f := newFakeSource(t)
	slices.Reverse(f.events)
	s := listen(t, Config{Source: f})
	client, err := NewClient(s.URL(), "")
	check(t, "NewClient", err)
	ctx := context.Background()

	events, err := client.Events(ctx)
	check(t, "Events", err)
	if !slices.IsSortedFunc(events, func(x, y EventView) int { return x.At.Compare(y.At) }) || len(events) != len(f.events) {
		t.Errorf("Events: %v, want the %d events oldest first", events, len(f.events))
	}
	health, err := client.Health(ctx)
	check(t, "Health", err)
	var qualities []float64
	for _, h := range health {
		qualities = append(qualities, h.Quality)
	}
	if want := []float64{0.98, 0.55, 0.1}; !slices.Equal(qualities, want) {
		t.Errorf("Health: qualities %v, want %v", qualities, want)
	}
}

// TestAPIErrors: a bad peer ID (400, naming it), a failed diagnosis (500
// with its text), an unknown path (404), a method other than GET (405);
// each a JSON error, and as an *APIError from the Client.
func TestAPIErrors(t *testing.T) {
	f := newFakeSource(t)
	s := listen(t, Config{Source: f})
	c := httpClient(t)
	client, err := NewClient(s.URL(), "")
	check(t, "NewClient", err)
	ctx := context.Background()

	wantError(t, "doctor of a bad peer ID", do(t, c, http.MethodGet, s.URL()+"/v1/doctor/not-a-peer-id"),
		http.StatusBadRequest, `"not-a-peer-id"`, "not a peer ID")
	wantError(t, "paths of a bad peer ID", do(t, c, http.MethodGet, s.URL()+"/v1/paths?peer=bogus"),
		http.StatusBadRequest, `"bogus"`)
	wantError(t, "failing doctor", do(t, c, http.MethodGet, s.URL()+"/v1/doctor/"+f.failing.String()),
		http.StatusInternalServerError, errDoctorFailed.Error(), f.failing.String())
	wantError(t, "unknown API path", do(t, c, http.MethodGet, s.URL()+"/v1/nodes"), http.StatusNotFound, "/v1/nodes")
	wantError(t, "doctor without a peer", do(t, c, http.MethodGet, s.URL()+"/v1/doctor/"), http.StatusNotFound)

	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		for _, path := range []string{"/v1/node", "/", "/metrics", "/debug/pprof/"} {
			r := do(t, c, method, s.URL()+path)
			wantError(t, method+" "+path, r, http.StatusMethodNotAllowed, method)
			if allow := r.header.Get("Allow"); allow != "GET, HEAD" {
				t.Errorf("%s %s: Allow %q, want \"GET, HEAD\"", method, path, allow)
			}
		}
	}
	if r := do(t, c, http.MethodHead, s.URL()+"/v1/node"); r.status != http.StatusOK || len(r.body) != 0 {
		t.Errorf("HEAD /v1/node: status %d, %d body bytes; want 200 and none", r.status, len(r.body))
	}

	_, err = client.Doctor(ctx, "not-a-peer-id")
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest || !strings.Contains(apiErr.Message, "not-a-peer-id") {
		t.Errorf("Client.Doctor(not-a-peer-id): %v, want an *APIError 400 naming the value", err)
	} else if want := s.URL() + "/v1/doctor/not-a-peer-id"; apiErr.URL != want || !strings.Contains(err.Error(), want) {
		t.Errorf("Client.Doctor(not-a-peer-id): URL %q, error %q; want URL %q in both", apiErr.URL, err, want)
	}
	_, err = client.Doctor(ctx, f.failing.String())
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusInternalServerError || !strings.Contains(err.Error(), errDoctorFailed.Error()) {
		t.Errorf("Client.Doctor(failing): %v, want an *APIError 500 with %q", err, errDoctorFailed)
	}
	if _, err := client.Doctor(ctx, ""); err == nil {
		t.Errorf("Client.Doctor(\"\"): no error")
	}
}
