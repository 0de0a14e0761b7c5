package debugapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// maxResponseBytes caps a response body the Client reads: 16 MiB, far above
// what a node with thousands of peers and paths answers.
const maxResponseBytes = 16 << 20

// maxErrorBytes caps the body of an error response the Client reads.
const maxErrorBytes = 64 << 10

// Client reads a debug endpoint's JSON API (realmnet inspect, realmnet
// doctor). Its methods are safe for concurrent use; ctx bounds each request.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// NewClient returns a Client of the debug endpoint at baseURL ("http://" or
// "https://" with a host, and optionally a path prefix where the endpoint is
// mounted), sending token as "Authorization: Bearer" when it is not empty.
// It returns an error, naming baseURL, when baseURL is not such a URL.
func NewClient(baseURL, token string) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("debug endpoint URL %q: %w", baseURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("debug endpoint URL %q: the scheme must be http or https", baseURL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("debug endpoint URL %q has no host", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("debug endpoint URL %q: it must have no query, fragment or user info (pass the token separately)", redact(u))
	}
	return &Client{base: u, token: token, http: &http.Client{}}, nil
}

// Node returns GET /v1/node.
func (c *Client) Node(ctx context.Context) (NodeView, error) {
	var v NodeView
	return v, c.get(ctx, &v, nil, "v1", "node")
}

// Peers returns GET /v1/peers.
func (c *Client) Peers(ctx context.Context) ([]PeerView, error) {
	var v []PeerView
	return v, c.get(ctx, &v, nil, "v1", "peers")
}

// Paths returns GET /v1/paths: every path, or only peer's when peer is not
// empty (a peer ID in its string form).
func (c *Client) Paths(ctx context.Context, peer string) ([]PathView, error) {
	var query url.Values
	if peer != "" {
		query = url.Values{"peer": {peer}}
	}
	var v []PathView
	return v, c.get(ctx, &v, query, "v1", "paths")
}

// Pools returns GET /v1/pools.
func (c *Client) Pools(ctx context.Context) ([]PoolView, error) {
	var v []PoolView
	return v, c.get(ctx, &v, nil, "v1", "pools")
}

// Realms returns GET /v1/realms.
func (c *Client) Realms(ctx context.Context) ([]RealmView, error) {
	var v []RealmView
	return v, c.get(ctx, &v, nil, "v1", "realms")
}

// Events returns GET /v1/events: the node's recent events, oldest first.
func (c *Client) Events(ctx context.Context) ([]EventView, error) {
	var v []EventView
	return v, c.get(ctx, &v, nil, "v1", "events")
}

// Health returns GET /v1/health: peer health, best quality first.
func (c *Client) Health(ctx context.Context) ([]PeerHealthView, error) {
	var v []PeerHealthView
	return v, c.get(ctx, &v, nil, "v1", "health")
}

// Doctor returns GET /v1/doctor/{peer}: the node's diagnosis of peer (a
// peer ID in its string form). A peer that is not a peer ID gives an
// *APIError with status 400.
func (c *Client) Doctor(ctx context.Context, peer string) (DoctorReport, error) {
	var v DoctorReport
	if peer == "" {
		return v, fmt.Errorf("doctor at %s: the peer ID is empty", c.base)
	}
	return v, c.get(ctx, &v, nil, "v1", "doctor", url.PathEscape(peer))
}

// APIError is a response of the debug endpoint with a status other than 200.
type APIError struct {
	// URL is the request's URL.
	URL string
	// Status is the HTTP status code, e.g. 401, 404, 500.
	Status int
	// Message is the server's error text: the "error" of its JSON body, or
	// the body itself when it is not JSON.
	Message string
}

// Error names the URL, the status and the server's message.
func (e *APIError) Error() string {
	return fmt.Sprintf("GET %s: %d %s: %s", e.URL, e.Status, http.StatusText(e.Status), e.Message)
}

// get requests the API path elements (escaped path segments), with query,
// and decodes the JSON response into v.
func (c *Client) get(ctx context.Context, v any, query url.Values, elements ...string) error {
	u := c.base.JoinPath(elements...)
	u.RawQuery = query.Encode()
	target := u.String()
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", target, err)
	}
	request.Header.Set("Accept", "application/json")
	if c.token != "" {
		request.Header.Set("Authorization", "Bearer "+c.token)
	}
	response, err := c.http.Do(request)
	if err != nil {
		return err // a *url.Error: it names the method and the URL
	}
	defer response.Body.Close()

	if response.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(response.Body, maxErrorBytes))
		return &APIError{URL: target, Status: response.StatusCode, Message: errorMessage(body)}
	}
	body, err := io.ReadAll(io.LimitReader(response.Body, maxResponseBytes+1))
	if err != nil {
		return fmt.Errorf("GET %s: read the response: %w", target, err)
	}
	if len(body) > maxResponseBytes {
		return fmt.Errorf("GET %s: the response is larger than %d MiB", target, maxResponseBytes>>20)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s: decode the response: %w", target, err)
	}
	return nil
}

// errorMessage is the "error" of a JSON error body, or the body's text.
func errorMessage(body []byte) string {
	var e errorBody
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return e.Error
	}
	text := strings.TrimSpace(string(bytes.ToValidUTF8(body, []byte("?"))))
	if text == "" {
		return "(no message)"
	}
	return text
}

// redact returns u without its user info, query and fragment, which may hold
// secrets.
func redact(u *url.URL) string {
	r := *u
	r.User, r.RawQuery, r.Fragment = nil, "", ""
	return r.String()
}
