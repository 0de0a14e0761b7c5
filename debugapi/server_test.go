package debugapi

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// testToken is the token of the access tests.
const testToken = "0123456789abcdef-test-token"

// TestListenRefusesNonLoopbackWithoutToken: an address that is not
// loopback needs a token, and Listen says so before it binds anything (a
// bind to 0.0.0.0:0 would succeed).
func TestListenRefusesNonLoopbackWithoutToken(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "192.0.2.1:0", ":0", "[::]:0", "example.com:0", "10.1.2.3:8080", "localhost.evil.example:0"} {
		s, err := Listen(Config{Addr: addr, Source: newFakeSource(t)})
		if err == nil {
			s.Close()
			t.Errorf("Listen(%q) without a token: no error, want one", addr)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, strconv.Quote(addr)) || !strings.Contains(msg, "token is required") {
			t.Errorf("Listen(%q) without a token: %q, want an error naming the address and saying a token is required", addr, msg)
		}
	}
}

// TestListenRefusesBadConfig: an address that is not host:port, a port that
// is not a number, no Source.
func TestListenRefusesBadConfig(t *testing.T) {
	for _, addr := range []string{"", "127.0.0.1", "localhost", "127.0.0.1:http", "127.0.0.1:65536", "127.0.0.1:-1", "[::1:0"} {
		s, err := Listen(Config{Addr: addr, Source: newFakeSource(t)})
		if err == nil {
			s.Close()
			t.Errorf("Listen(%q): no error, want one", addr)
			continue
		}
		if !strings.Contains(err.Error(), strconv.Quote(addr)) {
			t.Errorf("Listen(%q): %q, want an error naming the address", addr, err)
		}
	}
	if _, err := Listen(Config{Addr: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), "Source") {
		t.Errorf("Listen without a Source: %v, want an error naming Config.Source", err)
	}
	if _, err := Handler(Config{}); err == nil || !strings.Contains(err.Error(), "Source") {
		t.Errorf("Handler without a Source: %v, want an error naming Config.Source", err)
	}
}

// TestListenLoopback: loopback addresses need no token.
func TestListenLoopback(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "localhost:0", "LOCALHOST:0", "127.0.0.2:0"} {
		t.Run(addr, func(t *testing.T) {
			if strings.Contains(addr, "::1") {
				l, err := net.Listen("tcp", addr)
				if err != nil {
					t.Skipf("no IPv6 loopback here: %v", err)
				}
				l.Close()
			}
			s := listen(t, Config{Addr: addr, Source: newFakeSource(t)})
			if !strings.HasPrefix(s.URL(), "http://") || !strings.HasSuffix(s.URL(), s.Addr().String()) {
				t.Errorf("URL %q, want http:// and the address %s", s.URL(), s.Addr())
			}
			if r := do(t, httpClient(t), http.MethodGet, s.URL()+"/v1/node"); r.status != http.StatusOK {
				t.Errorf("GET /v1/node: status %d, want 200", r.status)
			}
		})
	}
}

// TestTokenRequired: with a token, every route but the page's static
// assets answers 401 without it or with a wrong one, and 200 with it in the
// Authorization header or the token query parameter. The token never
// appears in a response.
func TestTokenRequired(t *testing.T) {
	registry := prometheus.NewRegistry()
	s := listen(t, Config{Source: newFakeSource(t), Token: testToken, Gatherer: registry})
	c := httpClient(t)

	for _, path := range []string{"/", "/metrics", "/debug/pprof/", "/v1/node", "/v1/doctor/not-a-peer-id", "/v1/nope", "/nope"} {
		for _, refused := range []struct {
			what   string
			query  string
			header []string
		}{
			{what: "no token"},
			{what: "a wrong header", header: []string{"Authorization", "Bearer wrong"}},
			{what: "a longer header", header: []string{"Authorization", "Bearer " + testToken + "x"}},
			{what: "a prefix of it", header: []string{"Authorization", "Bearer " + testToken[:10]}},
			{what: "another scheme", header: []string{"Authorization", "Basic " + testToken}},
			{what: "no scheme", header: []string{"Authorization", testToken}},
			{what: "a wrong query", query: "token=wrong"},
			{what: "an empty query", query: "token="},
		} {
			u := s.URL() + path
			if refused.query != "" {
				u += "?" + refused.query
			}
			r := do(t, c, http.MethodGet, u, refused.header...)
			wantError(t, "GET "+path+" with "+refused.what, r, http.StatusUnauthorized, "token")
			if got := r.header.Get("WWW-Authenticate"); got != "Bearer" {
				t.Errorf("GET %s with %s: WWW-Authenticate %q, want Bearer", path, refused.what, got)
			}
			if strings.Contains(string(r.body), testToken) {
				t.Errorf("GET %s with %s: the response holds the token", path, refused.what)
			}
		}
	}

	for _, path := range []string{"/", "/metrics", "/debug/pprof/", "/v1/node", "/v1/peers"} {
		for _, accepted := range []struct {
			what   string
			query  string
			header []string
		}{
			{what: "the header", header: []string{"Authorization", "Bearer " + testToken}},
			{what: "a lowercase scheme", header: []string{"Authorization", "bearer " + testToken}},
			{what: "the query", query: "token=" + url.QueryEscape(testToken)},
			{what: "the query and a wrong header", query: "token=" + testToken, header: []string{"Authorization", "Bearer wrong"}},
		} {
			u := s.URL() + path
			if accepted.query != "" {
				u += "?" + accepted.query
			}
			r := do(t, c, http.MethodGet, u, accepted.header...)
			if r.status != http.StatusOK {
				t.Errorf("GET %s with %s: status %d, want 200; body %.200s", path, accepted.what, r.status, r.body)
			}
			if strings.Contains(string(r.body), testToken) {
				t.Errorf("GET %s with %s: the response holds the token", path, accepted.what)
			}
		}
	}

	// The page's script and style sheet carry no data and are public.
	for _, path := range []string{"/page/app.js", "/page/style.css"} {
		if r := do(t, c, http.MethodGet, s.URL()+path); r.status != http.StatusOK {
			t.Errorf("GET %s without the token: status %d, want 200", path, r.status)
		}
	}
	if r := do(t, c, http.MethodGet, s.URL()+"/page/index.html"); r.status != http.StatusUnauthorized {
		t.Errorf("GET /page/index.html without the token: status %d, want 401", r.status)
	}

	ctx := context.Background()
	good, err := NewClient(s.URL(), testToken)
	check(t, "NewClient", err)
	if _, err := good.Node(ctx); err != nil {
		t.Errorf("Client with the token: %v", err)
	}
	bad, err := NewClient(s.URL(), "wrong")
	check(t, "NewClient", err)
	var apiErr *APIError
	if _, err := bad.Node(ctx); !errors.As(err, &apiErr) || apiErr.Status != http.StatusUnauthorized {
		t.Errorf("Client with a wrong token: %v, want an *APIError 401", err)
	}
}

// TestTokenOnAllInterfaces: with a token, Listen binds 0.0.0.0 (tested
// through 127.0.0.1 only).
func TestTokenOnAllInterfaces(t *testing.T) {
	s := listen(t, Config{Addr: "0.0.0.0:0", Source: newFakeSource(t), Token: testToken})
	port := s.Addr().(*net.TCPAddr).Port
	base := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	c := httpClient(t)
	if r := do(t, c, http.MethodGet, base+"/v1/node"); r.status != http.StatusUnauthorized {
		t.Errorf("GET /v1/node without the token: status %d, want 401", r.status)
	}
	if r := do(t, c, http.MethodGet, base+"/v1/node", "Authorization", "Bearer "+testToken); r.status != http.StatusOK {
		t.Errorf("GET /v1/node with the token: status %d, want 200", r.status)
	}
}

// TestMetrics: /metrics serves the Gatherer's families; without one, 404.
func TestMetrics(t *testing.T) {
	registry := prometheus.NewRegistry()
	counter := prometheus.NewCounter(prometheus.CounterOpts{Name: "realmnet_test_things_total", Help: "Things counted by the test."})
	registry.MustRegister(counter)
	counter.Add(3)
	s := listen(t, Config{Source: newFakeSource(t), Gatherer: registry})
	c := httpClient(t)

	r := do(t, c, http.MethodGet, s.URL()+"/metrics")
	if r.status != http.StatusOK {
		t.Fatalf("GET /metrics: status %d, want 200", r.status)
	}
	for _, want := range []string{"# HELP realmnet_test_things_total Things counted by the test.", "realmnet_test_things_total 3"} {
		if !strings.Contains(string(r.body), want) {
			t.Errorf("GET /metrics: no line %q in\n%s", want, r.body)
		}
	}

	none := listen(t, Config{Source: newFakeSource(t)})
	if r := do(t, c, http.MethodGet, none.URL()+"/metrics"); r.status != http.StatusNotFound {
		t.Errorf("GET /metrics without a Gatherer: status %d, want 404", r.status)
	}
}

// TestPprof: pprof's index and a profile answer on the endpoint's own mux.
func TestPprof(t *testing.T) {
	s := listen(t, Config{Source: newFakeSource(t)})
	c := httpClient(t)
	r := do(t, c, http.MethodGet, s.URL()+"/debug/pprof/")
	if r.status != http.StatusOK || !strings.Contains(string(r.body), "goroutine") {
		t.Errorf("GET /debug/pprof/: status %d, want 200 and a list of profiles; body %.300s", r.status, r.body)
	}
	r = do(t, c, http.MethodGet, s.URL()+"/debug/pprof/goroutine?debug=1")
	if r.status != http.StatusOK || !strings.Contains(string(r.body), "goroutine profile") {
		t.Errorf("GET /debug/pprof/goroutine?debug=1: status %d, want 200 and a profile; body %.300s", r.status, r.body)
	}
}

// TestProfileDuration: pprof requests get their seconds (capped) on top
// of the write timeout; a CPU profile without seconds runs 30 s.
func TestProfileDuration(t *testing.T) {
	for _, tc := range []struct {
		target string
		want   time.Duration
	}{
		{"/debug/pprof/profile", 30 * time.Second},
		{"/debug/pprof/profile?seconds=5", 5 * time.Second},
		{"/debug/pprof/trace?seconds=0.5", 500 * time.Millisecond},
		{"/debug/pprof/trace", 0},
		{"/debug/pprof/heap?seconds=10", 10 * time.Second},
		{"/debug/pprof/profile?seconds=1e12", maxProfileDuration},
		{"/debug/pprof/profile?seconds=-3", 30 * time.Second},
		{"/debug/pprof/profile?seconds=NaN", 30 * time.Second},
	} {
		r, err := http.NewRequest(http.MethodGet, "http://localhost"+tc.target, nil)
		check(t, tc.target, err)
		if got := profileDuration(r); got != tc.want {
			t.Errorf("profileDuration(%s) = %v, want %v", tc.target, got, tc.want)
		}
	}
}

// TestPageHeaders: the page is HTML under a Content-Security-Policy of its
// own origin; its assets have their types.
func TestPageHeaders(t *testing.T) {
	s := listen(t, Config{Source: newFakeSource(t)})
	c := httpClient(t)
	for _, tc := range []struct{ path, contentType, contains string }{
		{"/", "text/html; charset=utf-8", `<script src="page/app.js"`},
		{"/page/app.js", "text/javascript; charset=utf-8", "textContent"},
		{"/page/style.css", "text/css; charset=utf-8", ".badge"},
	} {
		r := do(t, c, http.MethodGet, s.URL()+tc.path)
		if r.status != http.StatusOK {
			t.Errorf("GET %s: status %d, want 200", tc.path, r.status)
			continue
		}
		if got := r.header.Get("Content-Type"); got != tc.contentType {
			t.Errorf("GET %s: Content-Type %q, want %q", tc.path, got, tc.contentType)
		}
		if got := r.header.Get("Content-Security-Policy"); got != "default-src 'self'" {
			t.Errorf("GET %s: Content-Security-Policy %q, want default-src 'self'", tc.path, got)
		}
		if !strings.Contains(string(r.body), tc.contains) {
			t.Errorf("GET %s: the body has no %q", tc.path, tc.contains)
		}
	}
	for _, path := range []string{"/page/", "/page/index.html", "/page/nope.js", "/index.html"} {
		if r := do(t, c, http.MethodGet, s.URL()+path); r.status != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", path, r.status)
		}
	}
}

// TestClose: Close stops serving, and a second Close is harmless.
func TestClose(t *testing.T) {
	s, err := Listen(Config{Addr: "127.0.0.1:0", Source: newFakeSource(t)})
	check(t, "Listen", err)
	addr := s.Addr().String()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if conn, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		conn.Close()
		t.Errorf("dial %s after Close: connected, want refused", addr)
	}
}

// TestNewClientRefusesBadURLs: the base URL must be http(s) with a host,
// and the error names it.
func TestNewClientRefusesBadURLs(t *testing.T) {
	for _, base := range []string{"", "localhost:8080", "ftp://127.0.0.1:1", "http://", "http:///v1", "127.0.0.1:5001", "://x"} {
		if _, err := NewClient(base, ""); err == nil {
			t.Errorf("NewClient(%q): no error, want one", base)
		} else if !strings.Contains(err.Error(), strconv.Quote(base)) {
			t.Errorf("NewClient(%q): %q, want an error naming the URL", base, err)
		}
	}
	// A URL with a token in it is refused without repeating the token.
	if _, err := NewClient("http://127.0.0.1:1/?token="+testToken, ""); err == nil || strings.Contains(err.Error(), testToken) {
		t.Errorf("NewClient with a token in the URL: %v, want an error without the token", err)
	}
	for _, base := range []string{"http://127.0.0.1:5001", "https://node.example:443/debug/realmnet/", "http://[::1]:1"} {
		if _, err := NewClient(base, ""); err != nil {
			t.Errorf("NewClient(%q): %v", base, err)
		}
	}
}

// TestHandlerUnderPrefix: the handler mounted under a prefix serves the
// page and the API there, and the Client reads it through the prefix.
func TestHandlerUnderPrefix(t *testing.T) {
	f := newFakeSource(t)
	h, err := Handler(Config{Source: f})
	check(t, "Handler", err)
	mux := http.NewServeMux()
	mux.Handle("/debug/realmnet/", http.StripPrefix("/debug/realmnet", h))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(t, "listen", err)
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = server.Serve(l)
	}()
	t.Cleanup(func() {
		server.Close()
		<-done
	})

	base := "http://" + l.Addr().String() + "/debug/realmnet/"
	client, err := NewClient(base, "")
	check(t, "NewClient", err)
	peers, err := client.Peers(context.Background())
	check(t, "Peers", err)
	same(t, "Peers", peers, f.peers)
	if r := do(t, httpClient(t), http.MethodGet, base); r.status != http.StatusOK {
		t.Errorf("GET %s: status %d, want 200", base, r.status)
	}
}
