// Command hooks shows an AfterHandshake hook that admits only peers whose
// public key is on an allowlist. Three nodes run in one process: "gate"
// allows "friend" and refuses "stranger", in both directions.
//
//	go run ./examples/hooks
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/realmnet/realmnet/hooks"
	"github.com/realmnet/realmnet/node"
)

const listen = "/ip4/127.0.0.1/udp/0/quic-v1"

func main() {
	friendKey, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	allowlist := []crypto.PubKey{friendKey.GetPublic()}

	// The allowlist hook: the handshake has proven h.RemotePublicKey.
	allowOnly := func(_ context.Context, h hooks.Handshake) error {
		for _, k := range allowlist {
			if h.RemotePublicKey != nil && h.RemotePublicKey.Equals(k) {
				return nil
			}
		}
		return fmt.Errorf("peer %s is not on the allowlist", h.Peer)
	}

	gate := mustNode(node.ListenAddrStrings(listen), node.AfterHandshake(allowOnly))
	defer gate.Close()
	friend := mustNode(node.ListenAddrStrings(listen), node.Identity(friendKey))
	defer friend.Close()
	stranger := mustNode(node.ListenAddrStrings(listen))
	defer stranger.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	fmt.Println("friend → gate:  ", outcome(friend.Connect(ctx, gate.AddrInfo())))
	fmt.Println("stranger → gate:", outcome(stranger.Connect(ctx, gate.AddrInfo())))
	fmt.Println("gate → stranger:", outcome(gate.Connect(ctx, stranger.AddrInfo())))
}

func outcome(err error) string {
	var rejected *hooks.RejectedError
	switch {
	case err == nil:
		return "connected"
	case errors.As(err, &rejected):
		return fmt.Sprintf("refused by our own %s hook: %v", rejected.Stage, rejected.Reason)
	case errors.Is(err, node.ErrRefusedByPeer):
		return "refused by the peer"
	}
	return "failed: " + err.Error()
}

func mustNode(opts ...node.Option) *node.Node {
	n, err := node.New(context.Background(), opts...)
	if err != nil {
		log.Fatal(err)
	}
	return n
}
