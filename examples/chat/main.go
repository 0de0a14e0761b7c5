// Command chat is a terminal chat inside a realm, between processes: every
// line typed is published on the realm's topic "chat" (publish/subscribe
// inside the realm: only members — nodes that hold the realm's pre-shared
// key — are in the room, can send or read).
//
// Make a key (at least 16 bytes; a trailing newline is ignored) and share
// it with the members only:
//
//	head -c 32 /dev/urandom | base64 > chat.psk
//
// In a first terminal:
//
//	go run ./examples/chat --realm friends --psk-file chat.psk
//
// It prints its addresses, e.g. /ip4/127.0.0.1/udp/41234/quic-v1/p2p/12D3KooW…
// In a second terminal, give one of them to --peer:
//
//	go run ./examples/chat --realm friends --psk-file chat.psk --peer /ip4/127.0.0.1/udp/41234/quic-v1/p2p/12D3KooW…
//
// Both print "* …xxxxxx joined" once they have authenticated each other,
// and "* …xxxxxx is in the room" once its subscription reached them; then
// each line typed in one terminal appears in the other, prefixed by the
// sender's short peer ID. "/who" lists who is in the room. A third process
// needs only one member's address: member exchange and the DHT introduce
// it to the others. On one LAN, --mdns with --listen
// /ip4/0.0.0.0/udp/0/quic-v1 finds members without --peer. Ctrl-D (end of
// input) or Ctrl-C leaves the realm — the other members print
// "* …xxxxxx left (goodbye)" — and exits.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

const (
	// chatTopic is the chat room: a topic of the realm.
	chatTopic = "chat"
	// maxMessageSize caps one message (one line), in bytes.
	maxMessageSize = 4096
	// maxPSKFileSize caps the PSK file read.
	maxPSKFileSize = 64 << 10
	// sendTimeout bounds the publication of one message.
	sendTimeout = 5 * time.Second
	// roomCheck is how often the chat looks at who is in the room.
	roomCheck = 200 * time.Millisecond
	// leaveTimeout bounds the goodbyes sent when leaving.
	leaveTimeout = 2 * time.Second
	// defaultListenAddr is where the chat listens without --listen.
	defaultListenAddr = "/ip4/127.0.0.1/udp/0/quic-v1"
)

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ", ") }

func (l *stringList) Set(value string) error {
	*l = append(*l, value)
	return nil
}

// flags are the command line.
type flags struct {
	realm   string
	pskFile string
	listen  stringList
	peers   stringList
	mdns    bool
}

// config is what the chat runs with.
type config struct {
	realm  string
	psk    []byte
	listen []string
	peers  []peer.AddrInfo
	mdns   bool
}

func main() {
	var f flags
	flag.StringVar(&f.realm, "realm", "", "name of the realm to chat in (required)")
	flag.StringVar(&f.pskFile, "psk-file", "", "file holding the realm's pre-shared key, at least 16 bytes (required)")
	flag.Var(&f.listen, "listen", "QUIC multiaddr to listen on (repeatable; default "+defaultListenAddr+")")
	flag.Var(&f.peers, "peer", "multiaddr of a member, ending in /p2p/<peer ID> (repeatable)")
	flag.BoolVar(&f.mdns, "mdns", false, "find members on the LAN with mDNS")
	flag.Parse()
	if flag.NArg() > 0 {
		fail(fmt.Errorf("unexpected arguments %q", flag.Args()))
	}
	cfg, err := f.config()
	if err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := start(ctx, cfg, os.Stdout)
	if err != nil {
		fail(err)
	}
	if err := c.run(ctx, os.Stdin); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "chat:", err)
	os.Exit(1)
}

// config checks the flags, reads the PSK file and parses the peers.
// Errors name the flag and the bad value.
func (f flags) config() (config, error) {
	cfg := config{realm: f.realm, listen: f.listen, mdns: f.mdns}
	if f.realm == "" {
		return cfg, errors.New("--realm is required")
	}
	if f.pskFile == "" {
		return cfg, errors.New("--psk-file is required")
	}
	psk, err := readPSK(f.pskFile)
	if err != nil {
		return cfg, err
	}
	cfg.psk = psk
	if len(cfg.listen) == 0 {
		cfg.listen = []string{defaultListenAddr}
	}
	for _, addr := range cfg.listen {
		if _, err := ma.NewMultiaddr(addr); err != nil {
			return cfg, fmt.Errorf("--listen %q is not a multiaddr: %w", addr, err)
		}
	}
	cfg.peers, err = parsePeers(f.peers)
	return cfg, err
}

// readPSK reads a pre-shared key file: its bytes, without one trailing
// newline ("\n" or "\r\n"), at least realm.MinPSKLength of them.
func readPSK(path string) ([]byte, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--psk-file: %w", err)
	}
	defer file.Close()
	psk, err := io.ReadAll(io.LimitReader(file, maxPSKFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("--psk-file %s: %w", path, err)
	}
	if len(psk) > maxPSKFileSize {
		return nil, fmt.Errorf("--psk-file %s: larger than %d bytes; is it the right file?", path, maxPSKFileSize)
	}
	if trimmed, ok := strings.CutSuffix(string(psk), "\n"); ok {
		psk = []byte(strings.TrimSuffix(trimmed, "\r"))
	}
	if len(psk) < realm.MinPSKLength {
		return nil, fmt.Errorf("--psk-file %s: the key is %d bytes, want at least %d "+
			"(e.g. head -c 32 /dev/urandom | base64 > %s)", path, len(psk), realm.MinPSKLength, path)
	}
	return psk, nil
}

// parsePeers parses multiaddrs ending in /p2p/<peer ID>, merging the
// addresses of one peer.
func parsePeers(values []string) ([]peer.AddrInfo, error) {
	addrs := make([]ma.Multiaddr, 0, len(values))
	for _, value := range values {
		if _, err := peer.AddrInfoFromString(value); err != nil {
			return nil, fmt.Errorf("--peer %q is not a multiaddr ending in /p2p/<peer ID>: %w", value, err)
		}
		addrs = append(addrs, ma.StringCast(value))
	}
	return peer.AddrInfosFromP2pAddrs(addrs...)
}

// chat is one running chat: a node, in one realm, in its chat room.
type chat struct {
	node     *node.Node
	realm    *realm.Realm
	room     *realm.Topic
	messages *realm.Subscription
	out      *printer
	sub      event.Subscription
	// events ends when sub's channel is closed, receiving when the
	// room's subscription ends, watching when stopWatching is closed.
	events, receiving, watching sync.WaitGroup
	stopWatching                chan struct{}
}

// printer serializes the lines printed by the chat's goroutines.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// start starts a node, joins the realm and prints the node's addresses;
// run then chats until the input ends or ctx is done.
func start(ctx context.Context, cfg config, out io.Writer) (*chat, error) {
	n, err := node.New(ctx, node.ListenAddrStrings(cfg.listen...))
	if err != nil {
		return nil, err
	}
	c := &chat{node: n, out: &printer{w: out}}
	opts := []realm.Option{realm.PSK(cfg.psk)}
	if len(cfg.peers) > 0 {
		opts = append(opts, realm.Peers(cfg.peers...))
	}
	if cfg.mdns {
		opts = append(opts, realm.MDNS())
	}
	// Subscribe (on the host's bus, which carries every realm's member
	// events) before joining: JoinRealm starts admitting members before
	// it returns.
	if c.sub, err = n.Host().EventBus().Subscribe([]any{new(realm.EvtMemberJoined), new(realm.EvtMemberLeft)}); err != nil {
		_ = n.Close()
		return nil, fmt.Errorf("subscribe to member events: %w", err)
	}
	c.realm, err = n.JoinRealm(ctx, cfg.realm, opts...)
	if err != nil {
		_ = c.sub.Close()
		_ = n.Close()
		return nil, fmt.Errorf("join realm %q: %w", cfg.realm, err)
	}
	c.events.Add(1)
	go c.printEvents()
	if c.room, err = c.realm.Join(chatTopic); err == nil {
		c.messages, err = c.room.Subscribe()
	}
	if err != nil {
		_ = c.close()
		return nil, fmt.Errorf("join the chat room: %w", err)
	}
	c.receiving.Add(1)
	go c.receive()
	c.stopWatching = make(chan struct{})
	c.watching.Add(1)
	go c.watchRoom()

	ai := n.AddrInfo()
	addrs, err := peer.AddrInfoToP2pAddrs(&ai)
	if err != nil {
		_ = c.close()
		return nil, err
	}
	c.out.printf("peer %s in realm %q (realm ID %s); other members can use --peer with:", n.ID(), cfg.realm, c.realm.ID())
	for _, addr := range addrs {
		c.out.printf("  %s", addr)
	}
	// A member may have authenticated before the subscription existed.
	for _, p := range c.realm.Members() {
		c.out.printf("* %s is a member", shortID(p))
	}
	c.out.printf("type a line and press Enter to send it to the room, /who to see who is in it; Ctrl-D or Ctrl-C leaves")
	return c, nil
}

// run sends every line of in to every member until in ends or ctx is done,
// then leaves the realm and closes the node.
func (c *chat) run(ctx context.Context, in io.Reader) error {
	lines := make(chan string)
	done := make(chan struct{})
	defer close(done)
	go func() {
		defer close(lines)
		reader := bufio.NewReader(in)
		for {
			line, err := reader.ReadString('\n')
			if line != "" {
				select {
				case lines <- strings.TrimRight(line, "\r\n"):
				case <-done:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return c.close()
		case line, ok := <-lines:
			if !ok {
				return c.close()
			}
			c.send(ctx, line)
		}
	}
}

// send publishes line in the room; "/who" prints who is in it.
func (c *chat) send(ctx context.Context, line string) {
	switch {
	case strings.TrimSpace(line) == "":
		return
	case strings.TrimSpace(line) == "/who":
		c.printWho()
		return
	case len(line) > maxMessageSize:
		c.out.printf("! not sent: the line is %d bytes, the limit is %d", len(line), maxMessageSize)
		return
	}
	if len(c.room.Peers()) == 0 {
		c.out.printf("! not sent: nobody else is in the room yet")
		return
	}
	ctx, cancel := context.WithTimeout(ctx, sendTimeout)
	defer cancel()
	if err := c.room.Publish(ctx, []byte(line)); err != nil {
		c.out.printf("! not sent: %v", err)
	}
}

// printWho prints who is in the room.
func (c *chat) printWho() {
	peers := c.room.Peers()
	names := make([]string, 0, len(peers)+1)
	names = append(names, shortID(c.node.ID())+" (you)")
	for _, p := range peers {
		names = append(names, shortID(p))
	}
	c.out.printf("* in the room: %s", strings.Join(names, ", "))
}

// receive prints the room's messages until the subscription ends. Only
// members reach the room, and the sender is the message's signer, never
// something the message says. Its own messages are not printed again.
func (c *chat) receive() {
	defer c.receiving.Done()
	for {
		msg, err := c.messages.Next(context.Background())
		if err != nil {
			return
		}
		if msg.From == c.node.ID() {
			continue
		}
		from := shortID(msg.From)
		for line := range strings.Lines(string(msg.Data)) {
			c.out.printf("%s: %s", from, printable(strings.TrimRight(line, "\r\n")))
		}
	}
}

// watchRoom prints who enters the room (whose subscription reached this
// node) and who leaves it, until stopWatching is closed.
func (c *chat) watchRoom() {
	defer c.watching.Done()
	tick := time.NewTicker(roomCheck)
	defer tick.Stop()
	in := map[peer.ID]bool{}
	for {
		select {
		case <-tick.C:
		case <-c.stopWatching:
			return
		}
		now := map[peer.ID]bool{}
		for _, p := range c.room.Peers() {
			now[p] = true
			if !in[p] {
				c.out.printf("* %s is in the room", shortID(p))
			}
		}
		for p := range in {
			if !now[p] {
				c.out.printf("* %s left the room", shortID(p))
			}
		}
		in = now
	}
}

// printEvents prints members joining and leaving until the subscription
// closes.
func (c *chat) printEvents() {
	defer c.events.Done()
	for e := range c.sub.Out() {
		switch e := e.(type) {
		case realm.EvtMemberJoined:
			if e.Realm == c.realm.Name() {
				c.out.printf("* %s joined", shortID(e.Peer))
			}
		case realm.EvtMemberLeft:
			if e.Realm == c.realm.Name() && e.Reason != realm.ReasonLocalLeave {
				c.out.printf("* %s left (%s)", shortID(e.Peer), e.Reason)
			}
		}
	}
}

// close leaves the realm (goodbyes for at most leaveTimeout) and closes the
// node.
func (c *chat) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
	defer cancel()
	if c.stopWatching != nil {
		close(c.stopWatching)
		c.watching.Wait()
	}
	// Leave closes the room: the subscription ends.
	leaveErr := c.realm.Leave(ctx)
	c.receiving.Wait()
	_ = c.sub.Close()
	c.events.Wait()
	c.out.printf("left realm %q", c.realm.Name())
	if err := c.node.Close(); err != nil {
		return err
	}
	if leaveErr != nil {
		// Some member did not acknowledge the goodbye in time; it will
		// notice when the connection closes.
		c.out.printf("! %v", leaveErr)
	}
	return nil
}

// shortID is the last six characters of a peer ID.
func shortID(p peer.ID) string {
	s := p.String()
	return "…" + s[max(0, len(s)-6):]
}

// printable replaces control characters, so a member cannot send terminal
// escape sequences.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r != '\t' && unicode.IsControl(r) {
			return unicode.ReplacementChar
		}
		return r
	}, s)
}
