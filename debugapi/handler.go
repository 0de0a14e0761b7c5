package debugapi

import (
	"cmp"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// pprofPrefix is where net/http/pprof's handlers are served.
const pprofPrefix = "/debug/pprof/"

// Handler validates cfg and returns the debug endpoint's handler, for
// serving within another server (mount it at the root, or under a prefix
// with http.StripPrefix: the page and Client use relative paths). It returns
// an error when cfg.Source is nil. It ignores cfg.Addr: whoever serves the
// handler decides where, and whether cfg.Token must be set. The handler is
// safe for concurrent use.
func Handler(cfg Config) (http.Handler, error) {
	if cfg.Source == nil {
		return nil, errors.New("debug endpoint: Config.Source is nil; it is required")
	}
	api := &api{source: cfg.Source}
	mux := http.NewServeMux()

	mux.HandleFunc("GET /{$}", servePage)
	mux.HandleFunc("GET /page/{file}", serveAsset)

	if cfg.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	} else {
		mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "metrics are not configured (Config.Gatherer is nil)", http.StatusNotFound)
		})
	}

	mux.HandleFunc("GET "+pprofPrefix, pprof.Index)
	mux.HandleFunc("GET "+pprofPrefix+"cmdline", pprof.Cmdline)
	mux.HandleFunc("GET "+pprofPrefix+"profile", pprof.Profile)
	mux.HandleFunc("GET "+pprofPrefix+"symbol", pprof.Symbol)
	mux.HandleFunc("GET "+pprofPrefix+"trace", pprof.Trace)

	mux.HandleFunc("GET /v1/node", api.node)
	mux.HandleFunc("GET /v1/peers", api.peers)
	mux.HandleFunc("GET /v1/paths", api.paths)
	mux.HandleFunc("GET /v1/pools", api.pools)
	mux.HandleFunc("GET /v1/realms", api.realms)
	mux.HandleFunc("GET /v1/events", api.events)
	mux.HandleFunc("GET /v1/health", api.health)
	mux.HandleFunc("GET /v1/doctor/{peer}", api.doctor)
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such API path %q", r.URL.Path))
	})

	var h http.Handler = mux
	h = onlyRead(h)
	if cfg.Token != "" {
		h = requireToken(cfg.Token, h)
	} else {
		h = onlyLocal(h)
	}
	return withHeaders(h), nil
}

// onlyLocal guards an endpoint without a token, which only a loopback
// address may serve, against web pages the user's browser runs: it
// answers 403 to a request whose Host is not a loopback address or
// "localhost" (a DNS-rebinding page reaches 127.0.0.1 under its own name),
// whose Origin is not local, or that the browser marks cross-site
// (Sec-Fetch-Site), such as an <img> tag on another site naming the
// doctor or a profile.
func onlyLocal(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isLocalHost(r.Host) {
			writeError(w, http.StatusForbidden, "the debug endpoint without a token answers only requests addressed to a loopback address or localhost")
			return
		}
		if origin := r.Header.Get("Origin"); origin != "" {
			u, err := url.Parse(origin)
			if err != nil || !isLocalHost(u.Host) {
				writeError(w, http.StatusForbidden, "cross-origin requests are refused")
				return
			}
		}
		if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
			writeError(w, http.StatusForbidden, "cross-site requests are refused")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// isLocalHost reports whether hostport ("host" or "host:port", a Host
// header) names a loopback address or localhost (isLoopback).
func isLocalHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	return isLoopback(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
}

// withHeaders sets the headers every response carries: no caching (the data
// is live), no content sniffing, no referrer (a page URL may hold the token).
func withHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

// onlyRead answers 405 to any method but GET and HEAD.
func onlyRead(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed: the debug endpoint is read-only (GET, HEAD)", r.Method))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// requireToken answers 401 to a request that does not carry token, except
// for the page's static assets (assetIsPublic).
func requireToken(token string, next http.Handler) http.Handler {
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if assetIsPublic(r.URL.Path) || hasToken(r, want) {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", "Bearer")
		writeError(w, http.StatusUnauthorized, "a valid token is required: send the header \"Authorization: Bearer <token>\" or the query parameter token=<token>")
	})
}

// hasToken reports whether r carries the token whose SHA-256 is want, in its
// Authorization header or its token query parameter. Comparing the hashes
// in constant time reveals neither the token's bytes nor its length.
func hasToken(r *http.Request, want [sha256.Size]byte) bool {
	matches := func(got string) bool {
		sum := sha256.Sum256([]byte(got))
		return subtle.ConstantTimeCompare(sum[:], want[:]) == 1
	}
	if scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		if matches(strings.TrimSpace(got)) {
			return true
		}
	}
	if got := r.URL.Query().Get("token"); got != "" {
		return matches(got)
	}
	return false
}

// api serves /v1 from a Source.
type api struct {
	source Source
}

func (a *api) node(w http.ResponseWriter, r *http.Request) {
	n := a.source.Node()
	if !n.Started.IsZero() {
		n.UptimeSeconds = time.Since(n.Started).Seconds()
	}
	n.ListenAddrs = nonNil(n.ListenAddrs)
	n.Addrs = nonNil(n.Addrs)
	writeJSON(w, n)
}

func (a *api) peers(w http.ResponseWriter, r *http.Request) {
	peers := nonNil(a.source.Peers())
	for i := range peers {
		peers[i].Realms = nonNil(peers[i].Realms)
		peers[i].Pools = nonNil(peers[i].Pools)
	}
	writeJSON(w, peers)
}

func (a *api) paths(w http.ResponseWriter, r *http.Request) {
	paths := nonNil(a.source.Paths())
	if value := r.URL.Query().Get("peer"); value != "" {
		p, err := peer.Decode(value)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("query parameter peer=%q is not a peer ID: %v", value, err))
			return
		}
		paths = slices.DeleteFunc(paths, func(v PathView) bool { return v.Peer != p.String() })
	}
	writeJSON(w, paths)
}

func (a *api) pools(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, nonNil(a.source.Pools()))
}

func (a *api) realms(w http.ResponseWriter, r *http.Request) {
	realms := nonNil(a.source.Realms())
	for i := range realms {
		realms[i].Members = nonNil(realms[i].Members)
	}
	writeJSON(w, realms)
}

func (a *api) events(w http.ResponseWriter, r *http.Request) {
	events := nonNil(a.source.Events())
	slices.SortStableFunc(events, func(x, y EventView) int { return x.At.Compare(y.At) })
	writeJSON(w, events)
}

func (a *api) health(w http.ResponseWriter, r *http.Request) {
	health := nonNil(a.source.Health())
	slices.SortStableFunc(health, func(x, y PeerHealthView) int {
		return cmp.Or(cmp.Compare(y.Quality, x.Quality), strings.Compare(x.Peer, y.Peer))
	})
	writeJSON(w, health)
}

func (a *api) doctor(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		// A diagnosis looks the peer up and may dial it: not for HEAD.
		w.Header().Set("Allow", "GET")
		writeError(w, http.StatusMethodNotAllowed, "the doctor answers GET only")
		return
	}
	value := r.PathValue("peer")
	p, err := peer.Decode(value)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%q is not a peer ID: %v", value, err))
		return
	}
	report, err := a.source.Doctor(r.Context(), p)
	if err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Sprintf("doctor %s: %v", p, err))
		return
	}
	report.Addresses = nonNil(report.Addresses)
	for i := range report.Addresses {
		report.Addresses[i].Sources = nonNil(report.Addresses[i].Sources)
	}
	report.Dials = nonNil(report.Dials)
	report.Decisions = nonNil(report.Decisions)
	report.PoolRefusals = nonNil(report.PoolRefusals)
	report.Realms = nonNil(report.Realms)
	report.Paths = nonNil(report.Paths)
	writeJSON(w, report)
}

// nonNil returns s, or an empty slice when s is nil, so that JSON shows []
// and never null for a list.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// writeJSON writes v as the 200 response.
func writeJSON(w http.ResponseWriter, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Sprintf("encode the response: %v", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(body, '\n'))
}

// errorBody is the JSON of every error response.
type errorBody struct {
	Error string `json:"error"`
}

// writeError writes {"error": text} with status.
func writeError(w http.ResponseWriter, status int, text string) {
	body, _ := json.Marshal(errorBody{Error: text}) // a struct of one string always encodes
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
