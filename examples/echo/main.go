// Command echo embeds two realmnet nodes in one program: the second connects
// to the first over QUIC on loopback and sends a line through an echo
// protocol. It is the embedding example of the README, runnable:
//
//	go run ./examples/echo
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/realmnet/realmnet/node"
)

const echoProtocol = "/example/echo/1.0.0"

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	server, err := node.New(ctx, node.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1"))
	if err != nil {
		log.Fatal(err)
	}
	defer server.Close()
	server.SetStreamHandler(echoProtocol, func(s network.Stream) {
		defer s.Close()
		_, _ = io.Copy(s, s) // echo until the client closes its side
	})

	client, err := node.New(ctx, node.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1"), node.Bootstrap(server.AddrInfo()))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	s, err := client.NewStream(ctx, server.ID(), echoProtocol)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := s.Write([]byte("hello, realm\n")); err != nil {
		log.Fatal(err)
	}
	_ = s.CloseWrite()
	reply, err := io.ReadAll(s)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s answered: %s", server.ID(), reply)
}
