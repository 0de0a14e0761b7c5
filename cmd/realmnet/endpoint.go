package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/realmnet/realmnet/debugapi"
)

// The flags of the commands that read a node's debug endpoint (inspect,
// doctor).
const (
	addrFlag      = "addr"
	tokenFileFlag = "token-file"
	timeoutFlag   = "timeout"
	wideFlag      = "wide"
)

// defaultDebugURL is --addr's default: where `realmnet run --debug-addr
// 127.0.0.1:6060` serves, the port Go's pprof examples use.
const defaultDebugURL = "http://127.0.0.1:6060"

// debugAddrEnv names the environment variable that replaces --addr's
// default, so that a shell can point every inspect and doctor at one node.
const debugAddrEnv = "REALMNET_DEBUG_ADDR"

// endpointHelp documents, in the help of inspect and doctor, the flags
// that reach the endpoint.
const endpointHelp = `The node must run with a debug endpoint (realmnet run --debug-addr
HOST:PORT). --addr is its URL (http://HOST:PORT; a bare HOST:PORT means
http://HOST:PORT); without --addr, $` + debugAddrEnv + ` when set, else
` + defaultDebugURL + `. When the endpoint requires a token (it serves off
loopback), --token-file FILE gives it: the file given to realmnet run
--debug-token-file, which must be private to its owner (mode 0600) on Unix.

Peer IDs are shortened to 12D3KooW…XyZ12 in tables, except with --wide.
Times are relative to this machine's clock ("3s ago", "in 12s"); RTTs are
in milliseconds, byte counts in B, KiB, MiB or GiB.`

// endpointOptions are the flags of a command that reads the debug endpoint.
type endpointOptions struct {
	// addr is --addr: the endpoint's URL, or HOST:PORT.
	addr string
	// tokenFile is --token-file ("": no token).
	tokenFile string
	// timeout is --timeout: how long the command waits for its answer.
	timeout time.Duration
	// wide is --wide: full peer IDs in tables.
	wide bool
}

// addFlags declares the options' flags on flags; timeout is --timeout's
// default.
func (options *endpointOptions) addFlags(flags *pflag.FlagSet, timeout time.Duration) {
	flags.StringVar(&options.addr, addrFlag, defaultDebugURL,
		"URL of the node's debug endpoint (realmnet run --debug-addr), or HOST:PORT; $"+debugAddrEnv+", when set, replaces the default")
	flags.StringVar(&options.tokenFile, tokenFileFlag, "",
		"file holding the debug endpoint's token (realmnet run --debug-token-file), when it requires one")
	flags.DurationVar(&options.timeout, timeoutFlag, timeout, "how long to wait for the node's answer")
	flags.BoolVar(&options.wide, wideFlag, false, "print peer IDs in full in tables")
}

// endpoint is a debug endpoint to read: its client and its URL for errors.
type endpoint struct {
	client *debugapi.Client
	// url is the endpoint's base URL.
	url string
	// source names where url came from: "--addr" or "$REALMNET_DEBUG_ADDR".
	source string
	// tokenFile is where the token came from ("": none was sent).
	tokenFile string
	// timeout bounds each call.
	timeout time.Duration
}

// connect resolves the endpoint's URL (--addr, else $REALMNET_DEBUG_ADDR,
// else defaultDebugURL) and reads the token file; it sends no request.
// Errors name the flag or the environment variable and the bad value.
func (options *endpointOptions) connect(command *cobra.Command) (*endpoint, error) {
	addr, source := options.addr, "--"+addrFlag
	if env := os.Getenv(debugAddrEnv); env != "" && !command.Flags().Changed(addrFlag) {
		addr, source = env, "$"+debugAddrEnv
	}
	if addr == "" {
		return nil, fmt.Errorf("%s: empty; want the debug endpoint's URL (e.g. %s)", source, defaultDebugURL)
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	if options.timeout <= 0 {
		return nil, fmt.Errorf("--%s: %s; it must be positive", timeoutFlag, options.timeout)
	}
	token := ""
	if command.Flags().Changed(tokenFileFlag) || options.tokenFile != "" {
		var err error
		if token, err = readTokenFile("--"+tokenFileFlag, options.tokenFile); err != nil {
			return nil, err
		}
	}
	client, err := debugapi.NewClient(addr, token)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	return &endpoint{client: client, url: strings.TrimSuffix(addr, "/"), source: source,
		tokenFile: options.tokenFile, timeout: options.timeout}, nil
}

// call runs get, one request of the endpoint's client, bounded by the
// endpoint's timeout, and turns its error into one that says what to do
// (describe).
func call[T any](ctx context.Context, e *endpoint, get func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	value, err := get(ctx)
	if err != nil {
		return value, e.describe(err)
	}
	return value, nil
}

// describe turns an error of the client into one a user can act on. It
// names the endpoint's URL and says:
//
//   - for a 401, that a token is needed (--token-file), or that the one
//     sent was refused;
//   - for a timeout, how long it waited (--timeout);
//   - for a network error (nothing listening, an unknown host), that
//     the node must run with realmnet run --debug-addr.
//
// Other errors of the endpoint (*debugapi.APIError, which names the
// request's URL, its status and the server's message) are returned as they
// are.
func (e *endpoint) describe(err error) error {
	var apiErr *debugapi.APIError
	var urlErr *url.Error
	switch {
	case errors.As(err, &apiErr) && apiErr.Status == http.StatusUnauthorized && e.tokenFile == "":
		return fmt.Errorf("the debug endpoint at %s requires a token (401 Unauthorized): "+
			"give --%s FILE, the file given to realmnet run --%s", e.url, tokenFileFlag, debugTokenFileFlag)
	case errors.As(err, &apiErr) && apiErr.Status == http.StatusUnauthorized:
		return fmt.Errorf("the debug endpoint at %s refused the token in %s (401 Unauthorized): "+
			"it is not the node's (realmnet run --%s)", e.url, e.tokenFile, debugTokenFileFlag)
	case errors.As(err, &apiErr):
		return err
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("the debug endpoint at %s did not answer within %s (--%s)", e.url, e.timeout, timeoutFlag)
	case errors.Is(err, context.Canceled):
		return err
	case errors.As(err, &urlErr):
		return fmt.Errorf("cannot reach the debug endpoint at %s: %w; is the node running with "+
			"realmnet run --%s HOST:PORT, and is %s its URL?", e.url, urlErr.Err, debugAddrFlag, e.source)
	}
	return err
}

// printIndentedJSON writes value to out as indented JSON: the API's answer
// with --json. value is the client's decoding of it, whose types are the
// ones the endpoint encodes, so the fields and values are those received.
func printIndentedJSON(out io.Writer, value any) error {
	data, err := json.MarshalIndent(value, "", "  ")
	if err != nil {
		return fmt.Errorf("encode JSON output: %w", err)
	}
	_, err = out.Write(append(data, '\n'))
	return err
}
