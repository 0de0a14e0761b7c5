// Command gettingstarted is the program of docs/getting-started.md (a test
// keeps the two identical): two nodes, one realm, one echo over a realm
// stream.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// 1. Start a node. New's context bounds the start; when New returns the
	//    node listens and has its bootstrap peers (none here) in its DHT.
	alice, err := node.New(ctx, node.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1"))
	if err != nil {
		log.Fatal(err)
	}
	defer alice.Close() // at most 30 s; Shutdown(ctx) takes a context
	bob, err := node.New(ctx, node.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1"))
	if err != nil {
		log.Fatal(err)
	}
	defer bob.Close()

	// 2. Join a realm. Members share a pre-shared key (at least 16 bytes);
	//    handlers are given at join so that the first members' streams find
	//    them. Bob knows where Alice is (realm.Peers); without that, members
	//    find each other through the DHT, connected peers or mDNS.
	psk := []byte("a secret of at least sixteen bytes")
	echo := func(s network.Stream) { // reached by members only
		defer s.Close()
		_, _ = io.Copy(s, s)
	}
	if _, err := alice.JoinRealm(ctx, "friends", realm.PSK(psk),
		realm.StreamHandler("/example/echo/1.0.0", echo)); err != nil {
		log.Fatal(err)
	}
	friends, err := bob.JoinRealm(ctx, "friends", realm.PSK(psk), realm.Peers(alice.AddrInfo()))
	if err != nil {
		log.Fatal(err)
	}
	if err := friends.WaitMembers(ctx, 1); err != nil { // found and authenticated in the background
		log.Fatal(err)
	}

	// 3. Talk. A realm stream reaches members only (realm.ErrNotMember for
	//    anyone else) and is charged to the realm's resource scope.
	s, err := friends.NewStream(ctx, alice.ID(), "/example/echo/1.0.0")
	if err != nil {
		log.Fatal(err)
	}
	_, _ = s.Write([]byte("hello, realm"))
	_ = s.CloseWrite()
	reply, err := io.ReadAll(s)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", reply) // hello, realm
}
