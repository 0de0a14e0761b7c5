package debugapi

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// countingSource counts the diagnoses it runs.
type countingSource struct {
	*fakeSource
	doctors atomic.Int64
}

func (c *countingSource) Doctor(ctx context.Context, p peer.ID) (DoctorReport, error) {
	c.doctors.Add(1)
	return c.fakeSource.Doctor(ctx, p)
}

// TestEndpointWithoutTokenServesOnlyLocalPages: without a token the
// endpoint refuses (403) what a web page in the user's browser could send
// it — a request addressed to another host name (DNS rebinding), from a
// foreign origin, or marked cross-site (an <img> naming the doctor or a
// profile) — and serves local ones; the doctor runs on GET only.
func TestEndpointWithoutTokenServesOnlyLocalPages(t *testing.T) {
	f := newFakeSource(t)
	source := &countingSource{fakeSource: f}
	s := listen(t, Config{Source: source})
	c := httpClient(t)
	doctorURL := s.URL() + "/v1/doctor/" + f.alice.String()

	request := func(method, url, host string, header ...string) int {
		t.Helper()
		req, err := http.NewRequest(method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if host != "" {
			req.Host = host
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		what   string
		host   string
		header []string
		want   int
	}{
		{"plain", "", nil, http.StatusOK},
		{"localhost", "localhost:6060", nil, http.StatusOK},
		{"::1", "[::1]:6060", nil, http.StatusOK},
		{"same-origin page", "", []string{"Sec-Fetch-Site", "same-origin", "Origin", "http://127.0.0.1:6060"}, http.StatusOK},
		{"rebinding host name", "attacker.example:6060", nil, http.StatusForbidden},
		{"foreign origin", "", []string{"Origin", "http://attacker.example"}, http.StatusForbidden},
		{"cross-site", "", []string{"Sec-Fetch-Site", "cross-site"}, http.StatusForbidden},
	} {
		for _, url := range []string{s.URL() + "/v1/node", s.URL() + "/debug/pprof/"} {
			if got := request(http.MethodGet, url, tc.host, tc.header...); got != tc.want {
				t.Errorf("%s: GET %s: status %d, want %d", tc.what, url, got, tc.want)
			}
		}
	}
	if n := source.doctors.Load(); n != 0 {
		t.Fatalf("%d diagnoses before any doctor request", n)
	}
	if got := request(http.MethodGet, doctorURL, "", "Sec-Fetch-Site", "cross-site"); got != http.StatusForbidden {
		t.Errorf("cross-site doctor: status %d, want 403", got)
	}
	if got := request(http.MethodHead, doctorURL, ""); got != http.StatusMethodNotAllowed {
		t.Errorf("HEAD doctor: status %d, want 405", got)
	}
	if n := source.doctors.Load(); n != 0 {
		t.Errorf("a refused or HEAD request ran %d diagnoses", n)
	}
	if got := request(http.MethodGet, doctorURL, ""); got != http.StatusOK {
		t.Errorf("GET doctor: status %d, want 200", got)
	}
	if n := source.doctors.Load(); n != 1 {
		t.Errorf("GET doctor ran %d diagnoses, want 1", n)
	}
}
