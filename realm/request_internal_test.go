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

// refusedStream is a stream whose peer refused the request by its length
// and closed its end while the body was being sent: the body's Write
// fails, the answer is there to read.
type refusedStream struct {
	answeredStream
	writes int
}

func (s *refusedStream) Write(b []byte) (int, error) {
	s.writes++
	if s.writes > 1 {
		return 0, errors.New("write on canceled stream 5")
	}
	return s.sent.Write(b)
}

// TestRequestRefusedWhileSending: a request over the handler's
// MaxRequestSize, refused by its length while its body was still being
// sent, fails with the handler's answer (RemoteRequestTooLarge), not with
// the write's error.
func TestRequestRefusedWhileSending(t *testing.T) {
	msg := "request too large"
	str := &refusedStream{answeredStream: answeredStream{response: bytes.NewReader(append([]byte{byte(RemoteRequestTooLarge), byte(len(msg))}, msg...))}}
	big := bytes.Repeat([]byte("a"), 2*coalesceLimit) // prefix and body in two writes
	_, err := new(Realm).exchangeRequest(str, big, RequestConfig{MaxResponseSize: 16})
	var remote *RemoteError
	require.ErrorAs(t, err, &remote)
	require.Equal(t, RemoteRequestTooLarge, remote.Code)
	require.Equal(t, msg, remote.Message)
}
