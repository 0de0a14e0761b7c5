package realm

import (
	"bytes"
	"errors"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/stretchr/testify/require"
)

// answeredStream is a stream whose peer answered and closed its end (a
// STOP_SENDING) before the requester's CloseWrite: CloseWrite fails,
// the response is there to read. Only the methods exchangeRequest calls
// are implemented.
type answeredStream struct {
	network.Stream
	sent     bytes.Buffer
	response *bytes.Reader
}

func (s *answeredStream) Write(b []byte) (int, error) { return s.sent.Write(b) }
func (s *answeredStream) Read(b []byte) (int, error)  { return s.response.Read(b) }
func (s *answeredStream) CloseWrite() error {
	return errors.New("close called for canceled stream 3")
}

// TestRequestAnsweredBeforeCloseWrite: a handler reads a request by its
// length, so it may answer and close before the requester's CloseWrite;
// the request then succeeds with the response (it failed with "send:
// close called for canceled stream" in a benchmark run).
func TestRequestAnsweredBeforeCloseWrite(t *testing.T) {
	str := &answeredStream{response: bytes.NewReader([]byte{byte(RemoteOK), 3, 'y', 'e', 's'})}
	resp, err := new(Realm).exchangeRequest(str, []byte("ok?"), RequestConfig{MaxResponseSize: 16})
	require.NoError(t, err)
	require.Equal(t, "yes", string(resp))
	require.Equal(t, []byte{3, 'o', 'k', '?'}, str.sent.Bytes(), "the request as sent: length prefix and body")
}
