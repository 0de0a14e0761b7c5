package debugapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures the debug endpoint.
type Config struct {
	// Addr is the TCP address Listen binds, "host:port": host an IP
	// address or "localhost", port a number (0 picks a free port). An
	// empty host binds every interface. A host other than a loopback IP
	// (127.0.0.0/8, ::1) or "localhost" requires Token. Handler ignores
	// Addr.
	Addr string
	// Token, when not empty, is required on every request: as
	// "Authorization: Bearer <Token>", or as the query parameter
	// token=<Token> (what a browser opening the page uses, and what
	// go tool pprof can add to a profile's URL). Anything else gets 401,
	// except the page's script and style sheet, which hold no data.
	// Choose a long random value; it is never logged or echoed.
	Token string
	// Source supplies the JSON API's data. Required.
	Source Source
	// Gatherer supplies /metrics. Nil: /metrics answers 404.
	Gatherer prometheus.Gatherer
}

// The http.Server's timeouts. The API answers from memory, so a request that
// takes longer is a stuck client or a slow Source; pprof's profiles (and a
// doctor diagnosis that dials) take longer, hence writeTimeout per request
// (withWriteDeadline).
const (
	// readHeaderTimeout bounds reading a request's header.
	readHeaderTimeout = 10 * time.Second
	// readTimeout bounds reading a whole request (they have no body).
	readTimeout = 30 * time.Second
	// idleTimeout closes a kept-alive connection idle this long; the live
	// page asks every second, so its connection stays.
	idleTimeout = 2 * time.Minute
	// writeTimeout bounds writing a response, counted from when its
	// request's header has been read; a pprof request that asks for
	// seconds=N gets N more (up to maxProfileDuration).
	writeTimeout = time.Minute
	// maxProfileDuration caps the time withWriteDeadline grants a pprof
	// request on top of writeTimeout.
	maxProfileDuration = time.Hour
	// shutdownTimeout is how long Close lets requests in flight finish
	// before it closes their connections.
	shutdownTimeout = 2 * time.Second
)

// Server is a running debug endpoint (Listen). Its methods are safe for
// concurrent use.
type Server struct {
	listener net.Listener
	http     *http.Server
	// done is closed when the serving goroutine has returned.
	done chan struct{}
}

// Listen validates cfg, binds cfg.Addr (TCP) and serves the debug endpoint
// on it in a goroutine of its own until Close. It returns an error, before
// it binds anything, when cfg.Source is nil, when cfg.Addr is not
// "host:port" with a numeric port, or when cfg.Addr's host is not a
// loopback IP or "localhost" and cfg.Token is empty; and an error when the
// bind fails.
func Listen(cfg Config) (*Server, error) {
	if err := checkAddr(cfg.Addr, cfg.Token); err != nil {
		return nil, err
	}
	handler, err := Handler(cfg)
	if err != nil {
		return nil, err
	}
	listener, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("debug endpoint: listen on %q: %w", cfg.Addr, err)
	}
	s := &Server{
		listener: listener,
		http: &http.Server{
			Handler:           withWriteDeadline(handler),
			ReadHeaderTimeout: readHeaderTimeout,
			ReadTimeout:       readTimeout,
			IdleTimeout:       idleTimeout,
			// WriteTimeout stays 0: withWriteDeadline sets it per
			// request. (net/http/pprof refuses a profile longer than a
			// server-wide WriteTimeout.)
			MaxHeaderBytes: 64 << 10,
		},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		// Serve returns http.ErrServerClosed after Shutdown or Close;
		// any other error is the listener failing, after which there is
		// nothing to serve: Close still cleans up.
		_ = s.http.Serve(listener)
	}()
	return s, nil
}

// Addr returns the address the server listens on (port 0 resolved).
func (s *Server) Addr() net.Addr { return s.listener.Addr() }

// URL returns the server's base URL, "http://host:port", with the bound
// address (an unspecified host such as 0.0.0.0 stays as it is).
func (s *Server) URL() string { return "http://" + s.listener.Addr().String() }

// Close stops the server: it stops accepting, lets requests in flight finish
// for up to 2 s, closes the connections that remain, and waits for the
// serving goroutine to return. It returns the error of closing the
// listener, if any; calling it again returns nil.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	return s.Shutdown(ctx)
}

// Shutdown is Close with the wait for requests in flight bounded by ctx
// instead of shutdownTimeout: when ctx ends first, the connections still
// open are closed. It waits for the server's goroutine and is safe to call
// more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		err = s.http.Close()
	}
	<-s.done
	if err != nil {
		return fmt.Errorf("debug endpoint on %s: close: %w", s.listener.Addr(), err)
	}
	return nil
}

// checkAddr checks that addr is "host:port" with a numeric port and that a
// host other than loopback comes with a token.
func checkAddr(addr, token string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("debug endpoint: address %q is not host:port: %w", addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("debug endpoint: address %q: port %q is not a number from 0 to 65535", addr, port)
	}
	if token == "" && !isLoopback(host) {
		return fmt.Errorf("debug endpoint: address %q is not a loopback address: a token is required (Config.Token) to serve on it", addr)
	}
	return nil
}

// isLoopback reports whether host is "localhost" or a loopback IP address.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// withWriteDeadline sets each request's write deadline: writeTimeout, plus,
// for a pprof request with seconds=N (a CPU profile, a trace, a delta
// profile), N seconds up to maxProfileDuration; a CPU profile without it
// runs 30 s (net/http/pprof's default).
func withWriteDeadline(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		timeout := writeTimeout
		if strings.HasPrefix(r.URL.Path, pprofPrefix) {
			timeout += profileDuration(r)
		}
		// A ResponseWriter of net/http's server supports deadlines; the
		// error can only be http.ErrNotSupported for another one.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(timeout))
		next.ServeHTTP(w, r)
	})
}

// profileDuration is how long the pprof request r asks to run.
func profileDuration(r *http.Request) time.Duration {
	seconds, err := strconv.ParseFloat(r.URL.Query().Get("seconds"), 64)
	switch {
	case err == nil && seconds > 0:
		return time.Duration(min(seconds, maxProfileDuration.Seconds()) * float64(time.Second))
	case r.URL.Path == pprofPrefix+"profile":
		return 30 * time.Second
	}
	return 0
}
