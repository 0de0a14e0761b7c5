package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/realmnet/realmnet/internal/testkit"
)

// syncBuffer is a bytes.Buffer safe for the chat's goroutines and the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor waits until out contains want.
func waitFor(t *testing.T, out *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output lacks %q after 5 s:\n%s", want, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTwoChatsExchangeALine runs two chats in one process, the second
// given the first's address: a line typed in the second arrives in the
// first, prefixed by the second's short ID, and the second's end of input
// makes it leave with a goodbye the first prints.
func TestTwoChatsExchangeALine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	psk := []byte("a test pre-shared key of 32 byte")

	var outA, outB syncBuffer
	a, err := start(ctx, config{realm: "test", psk: psk, listen: []string{testkit.Loopback}}, &outA)
	if err != nil {
		t.Fatal(err)
	}
	b, err := start(ctx, config{realm: "test", psk: psk, listen: []string{testkit.Loopback},
		peers: []peer.AddrInfo{a.node.AddrInfo()}}, &outB)
	if err != nil {
		_ = a.close()
		t.Fatal(err)
	}
	inA, typeA := io.Pipe()
	inB, typeB := io.Pipe()
	doneA, doneB := make(chan error, 1), make(chan error, 1)
	go func() { doneA <- a.run(ctx, inA) }()
	go func() { doneB <- b.run(ctx, inB) }()
	defer func() {
		// On failure: end both chats and wait for them.
		_ = typeA.Close()
		_ = typeB.Close()
		cancel()
		<-doneA
		<-doneB
	}()

	if !strings.Contains(outA.String(), "/p2p/"+a.node.ID().String()) {
		t.Errorf("the chat does not print its addresses with /p2p:\n%s", outA.String())
	}
	idA, idB := shortID(a.node.ID()), shortID(b.node.ID())
	waitFor(t, &outA, "* "+idB+" joined")
	if err := b.realm.WaitMembers(ctx, 1); err != nil {
		t.Fatalf("b has no member: %v\n%s", err, outB.String())
	}
	// Each sees the other enter the room (its subscription arrived).
	waitFor(t, &outA, "* "+idB+" is in the room")
	waitFor(t, &outB, "* "+idA+" is in the room")
	if _, err := io.WriteString(typeB, "/who\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, &outB, "* in the room: "+idB+" (you), "+idA+"\n")

	if _, err := io.WriteString(typeB, "hello from b\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, &outA, idB+": hello from b\n")
	if _, err := io.WriteString(typeA, "hi b, \x1b[31mred\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, &outB, idA+": hi b, \uFFFD[31mred\n")

	// End of input: b leaves, a sees its goodbye.
	_ = typeB.Close()
	select {
	case err := <-doneB:
		doneB <- err // for the deferred wait
		if err != nil {
			t.Fatalf("b: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("b did not stop at the end of its input")
	}
	waitFor(t, &outB, `left realm "test"`)
	waitFor(t, &outA, "* "+idB+" left (goodbye)")
	waitFor(t, &outA, "* "+idB+" left the room")
	if strings.Contains(outB.String(), idB+": hello from b") {
		t.Errorf("b printed its own message:\n%s", outB.String())
	}
}

func TestReadPSK(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, test := range []struct {
		content, want string
	}{
		{"0123456789abcdef", "0123456789abcdef"},
		{"0123456789abcdef\n", "0123456789abcdef"},
		{"0123456789abcdef\r\n", "0123456789abcdef"},
		{"0123456789abcdef\n\n", "0123456789abcdef\n"}, // one newline only
	} {
		got, err := readPSK(write("key", test.content))
		if err != nil || string(got) != test.want {
			t.Errorf("readPSK(%q) = %q, %v; want %q", test.content, got, err, test.want)
		}
	}
	for _, test := range []struct {
		path, wantErr string
	}{
		{write("short", "fifteen bytes!!\n"), "15 bytes, want at least 16"},
		{write("empty", ""), "0 bytes, want at least 16"},
		{filepath.Join(dir, "missing"), "no such file"},
		{write("large", strings.Repeat("x", maxPSKFileSize+1)), "larger than"},
	} {
		if _, err := readPSK(test.path); err == nil || !strings.Contains(err.Error(), test.wantErr) {
			t.Errorf("readPSK(%s) error = %v, want one containing %q", filepath.Base(test.path), err, test.wantErr)
		}
	}
}

func TestFlagsConfig(t *testing.T) {
	pskFile := filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(pskFile, []byte("0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := flags{realm: "r", pskFile: pskFile, peers: stringList{
		"/ip4/127.0.0.1/udp/1/quic-v1/p2p/" + id.String(), "/ip4/127.0.0.2/udp/2/quic-v1/p2p/" + id.String(),
	}}.config()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.peers) != 1 || len(cfg.peers[0].Addrs) != 2 || cfg.listen[0] != defaultListenAddr {
		t.Errorf("config = %+v, want one peer with two addresses and the default listen address", cfg)
	}
	for _, test := range []struct {
		f       flags
		wantErr string
	}{
		{flags{pskFile: pskFile}, "--realm is required"},
		{flags{realm: "r"}, "--psk-file is required"},
		{flags{realm: "r", pskFile: pskFile, peers: stringList{"/ip4/127.0.0.1/udp/1/quic-v1"}}, "/ip4/127.0.0.1/udp/1/quic-v1"},
		{flags{realm: "r", pskFile: pskFile, listen: stringList{"nonsense"}}, "nonsense"},
	} {
		if _, err := test.f.config(); err == nil || !strings.Contains(err.Error(), test.wantErr) {
			t.Errorf("%+v: error %v, want one containing %q", test.f, err, test.wantErr)
		}
	}
}
