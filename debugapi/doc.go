// Package debugapi owns a realmnet node's debug HTTP endpoint
// (docs/architecture.md, Observability): one HTTP handler, on its own
// ServeMux, that serves
//
//   - /metrics: the node's Prometheus families, from Config.Gatherer
//     (promhttp);
//   - /debug/pprof/: Go's profiles (net/http/pprof's handlers);
//   - /v1/...: a read-only JSON API of the node's state — node, peers,
//     paths, pools, realms, events, peer health and a per-peer diagnosis
//     (doctor) — whose shapes are the exported View and Report types;
//   - /: a live HTML page (embedded, no external assets) that reads the
//     JSON API every second.
//
// The data comes from a Source, which the node implements; debugapi imports
// nothing of realmnet but core. Listen binds and serves the handler on its
// own; Handler returns it for embedding in another server. Client reads the
// JSON API (realmnet inspect, realmnet doctor).
//
// Access: Listen binds a loopback address (127.0.0.0/8, ::1, "localhost")
// without a token; any other address requires Config.Token, which every
// request then carries (see Config.Token). The token is never logged or
// written into a response.
//
// Importing this package imports net/http/pprof, whose init registers its
// handlers on http.DefaultServeMux (Go does that, not debugapi): a program
// that serves http.DefaultServeMux on a public address serves pprof there.
// debugapi itself serves pprof only from its own ServeMux.
package debugapi
