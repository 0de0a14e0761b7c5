// Command request shows request/response inside a realm: a member serves a
// protocol with Realm.SetRequestHandler, another asks with Realm.Request;
// the handler's errors come back typed (*realm.RemoteError), and a node
// outside the realm is refused (realm.ErrNotMember).
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

// sumProtocol adds the numbers of a request ("1 2 3") and answers the sum.
const sumProtocol = "/example/sum/1.0.0"

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	listen := node.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1")
	server, err := node.New(ctx, listen)
	if err != nil {
		log.Fatal(err)
	}
	defer server.Close()
	client, err := node.New(ctx, listen)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	psk := []byte("a secret of at least sixteen bytes")
	served, err := server.JoinRealm(ctx, "calc", realm.PSK(psk))
	if err != nil {
		log.Fatal(err)
	}
	// Only members reach the handler; from is the authenticated member.
	err = served.SetRequestHandler(sumProtocol, func(_ context.Context, from peer.ID, req []byte) ([]byte, error) {
		sum := 0
		for _, field := range strings.Fields(string(req)) {
			n, err := strconv.Atoi(field)
			if err != nil {
				return nil, fmt.Errorf("%q is not a number", field) // goes back as a *realm.RemoteError
			}
			sum += n
		}
		return []byte(strconv.Itoa(sum)), nil
	})
	if err != nil {
		log.Fatal(err)
	}
	calc, err := client.JoinRealm(ctx, "calc", realm.PSK(psk), realm.Peers(server.AddrInfo()))
	if err != nil {
		log.Fatal(err)
	}
	if err := calc.WaitMembers(ctx, 1); err != nil {
		log.Fatal(err)
	}

	resp, err := calc.Request(ctx, server.ID(), sumProtocol, []byte("1 2 3 4"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("1 2 3 4 → %s\n", resp) // 10

	_, err = calc.Request(ctx, server.ID(), sumProtocol, []byte("1 two 3"))
	var remote *realm.RemoteError
	if !errors.As(err, &remote) {
		log.Fatalf("want a remote error, got %v", err)
	}
	fmt.Printf("1 two 3 → the server says: %s\n", remote.Message) // "two" is not a number

	// A node outside the realm (another key) is no member.
	outsider, err := node.New(ctx, listen)
	if err != nil {
		log.Fatal(err)
	}
	defer outsider.Close()
	other, err := outsider.JoinRealm(ctx, "calc", realm.PSK([]byte("another secret, another realm")))
	if err != nil {
		log.Fatal(err)
	}
	if err := outsider.Connect(ctx, server.AddrInfo()); err != nil {
		log.Fatal(err)
	}
	_, err = other.Request(ctx, server.ID(), sumProtocol, []byte("1 1"))
	fmt.Printf("an outsider asks → %v\n", errors.Is(err, realm.ErrNotMember)) // true
}
