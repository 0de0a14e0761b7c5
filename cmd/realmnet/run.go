package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/realmnet/realmnet/node"
	"github.com/realmnet/realmnet/realm"
)

// The flags of `realmnet run`; each but --config is also a config key
// (configKey).
const (
	configFlag           = "config"
	listenFlag           = "listen"
	bootstrapFlag        = "bootstrap"
	dhtModeFlag          = "dht-mode"
	dhtPrivateAddrsFlag  = "dht-private-addrs"
	bootstrapTimeoutFlag = "bootstrap-timeout"
	debugAddrFlag        = "debug-addr"
	debugTokenFileFlag   = "debug-token-file"
	dataDirFlag          = "data-dir"
	relayServiceFlag     = "relay-service"
	relayFlag            = "relay"
	reachabilityFlag     = "reachability"
	realmFlag            = "realm"
	pskFileFlag          = "psk-file"
	realmRelayFlag       = "realm-relay"
)

// maxPSKFileSize caps what a --psk-file is read for: a key is tens of
// bytes.
const maxPSKFileSize = 4 << 10

// runSettings are the settings of `realmnet run`: its flags' values, with
// the config file's values for the flags not given on the command line.
type runSettings struct {
	// listen are the QUIC multiaddrs to listen on.
	listen []string
	// identity is the private key's file ("": a fresh key).
	identity string
	// bootstrap are multiaddrs ending in /p2p/<peer ID>.
	bootstrap []string
	// dhtMode is auto, server or client.
	dhtMode string
	// dhtPrivateAddrs is node.DHTPrivateAddrs.
	dhtPrivateAddrs bool
	// bootstrapTimeout is node.BootstrapTimeout.
	bootstrapTimeout time.Duration
	// debugAddr is node.DebugAddr's host:port ("": no debug endpoint).
	debugAddr string
	// debugTokenFile is the file holding node.DebugToken ("": none).
	debugTokenFile string
	// dataDir is node.DataDir ("": state in memory).
	dataDir string
	// relayService runs the public relay service (node.RelayService).
	relayService bool
	// relays are static relays (node.Relays), multiaddrs ending in
	// /p2p/<peer ID>.
	relays []string
	// reachability is node.ForceReachability's value: "", public or
	// private.
	reachability string
	// realms are the realms to join, pskFiles their key files (one per
	// realm, in the same order).
	realms, pskFiles []string
	// realmRelay makes the node a relay for the members of its realms
	// (realm.Relay).
	realmRelay bool
	// logLevel is the config file's log_level, applied by runNode; "" when
	// the file has none or --log-level overrides it (the root command
	// applied the flag already).
	logLevel string
	// sources name, by flag name, the settings that came from the config
	// file: `"listen" in FILE`. Errors about the others name the flag.
	sources map[string]string
}

// defaultRunSettings returns the defaults of run's flags, which are node's.
func defaultRunSettings() runSettings {
	defaults := node.DefaultConfig()
	return runSettings{
		listen:           []string{node.DefaultListenAddr},
		dhtMode:          node.DHTAuto.String(),
		dhtPrivateAddrs:  defaults.DHTPrivateAddrs,
		bootstrapTimeout: defaults.BootstrapTimeout,
	}
}

// source returns what errors about the setting of flag name: "--flag", or
// the config key and file it came from.
func (settings *runSettings) source(flag string) string {
	if source, ok := settings.sources[flag]; ok {
		return source
	}
	return "--" + flag
}

// runOutput is the JSON line `realmnet run --json` prints once the node is
// up.
type runOutput struct {
	// PeerID is the node's peer ID.
	PeerID string `json:"peer_id"`
	// Addrs are the node's addresses, each ending in /p2p/<peer ID>.
	Addrs []string `json:"addrs"`
	// DebugURL is the debug endpoint's base URL (--debug-addr); absent
	// when the node has none.
	DebugURL string `json:"debug_url,omitempty"`
	// Realms are the IDs of the realms joined (--realm), in order; absent
	// without one. A realm's ID, unlike its name, reveals nothing.
	Realms []string `json:"realms,omitempty"`
}

// runLong is the help of `realmnet run`, the reference of its config file.
const runLong = `run starts one realmnet node, prints its peer ID and addresses (one per
line, each ending in /p2p/<peer ID>, ready to be given to another node's
--bootstrap), and runs until it receives SIGINT or SIGTERM; it then closes
the node and exits with status 0. With --json it prints one line instead:

    {"peer_id": "12D3KooW...", "addrs": ["/ip4/192.0.2.7/udp/4001/quic-v1/p2p/12D3KooW..."]}

With --debug-addr HOST:PORT the node serves its debug endpoint there: the
JSON API that realmnet inspect and realmnet doctor read, /metrics, pprof and
a live page at /. run then prints the endpoint's URL after the addresses
("debug endpoint http://127.0.0.1:6060"; "debug_url" with --json). Port 0
picks a free port. A loopback address (127.0.0.1, ::1, localhost) needs no
token; any other address needs --debug-token-file FILE, or run fails naming
the address. FILE holds the token (at least 16 bytes, one line; a trailing
newline is dropped) and, on Unix, must be private to its owner (chmod 600):
run refuses a file group or others may access. Clients send the token from
the same file (realmnet inspect --token-file FILE).

realmnet speaks QUIC only: every --listen, --bootstrap and --relay multiaddr
must contain /quic-v1. A node accepts relayed connections by itself: a
/p2p-circuit address is refused as --listen.

Relays and realms. --relay-service makes the node a circuit relay v2 relay
for anyone (run it on a publicly reachable node). --relay ADDR (repeatable;
ending in /p2p/<peer ID>, not itself a relay address) names a static relay:
while the node is not publicly reachable it reserves a slot there and
advertises its /p2p-circuit addresses. --reachability public|private fixes
the node's reachability instead of leaving it unknown. --realm NAME
--psk-file FILE (both repeatable, paired by position) joins realm NAME with
the key in FILE: the file's bytes, without one trailing newline, at least
16 of them, mode 0600. --realm-relay makes the node a relay for the members
of its realms and nobody else; members behind NAT find it through the realm.
run prints a line per realm joined ("joined realm "team" (ID 3f2a...)";
"realms" with --json, IDs only). --data-dir DIR keeps the node's state (the
gater's rules) across runs.

Without --identity the node gets a fresh key, hence a new peer ID, on every
run. With --identity FILE the key is read from FILE (realmnet init creates
one); when FILE does not exist a new key is written there and a line on
standard error says so.

Every setting is checked before anything starts or is written; an error
names the flag, or the config key and file, and the bad value.

--config FILE reads settings from FILE, a JSON object of at most 1 MiB. Its
keys are the flags' names with "_" for "-"; a flag given on the command line
overrides the file's value (a --listen or --bootstrap flag replaces the
file's whole list). Unknown keys are refused. Relative paths are relative to
the working directory, not to the file.

    key                 JSON value                   flag
    listen              array of strings             --listen
    identity            string                       --identity
    bootstrap           array of strings             --bootstrap
    dht_mode            string                       --dht-mode
    dht_private_addrs   true or false                --dht-private-addrs
    bootstrap_timeout   string, a Go duration        --bootstrap-timeout
    debug_addr          string, host:port            --debug-addr
    debug_token_file    string                       --debug-token-file
    log_level           string                       --log-level
    data_dir            string                       --data-dir
    relay_service       true or false                --relay-service
    relay               array of strings             --relay
    reachability        string: public or private    --reachability
    realm               array of strings             --realm
    psk_file            array of strings             --psk-file
    realm_relay         true or false                --realm-relay

For example:

    {
      "listen": ["/ip4/0.0.0.0/udp/4001/quic-v1", "/ip6/::/udp/4001/quic-v1"],
      "identity": "/var/lib/realmnet/identity.key",
      "bootstrap": ["/ip4/192.0.2.1/udp/4001/quic-v1/p2p/12D3KooW..."],
      "dht_mode": "server",
      "dht_private_addrs": false,
      "bootstrap_timeout": "20s",
      "debug_addr": "127.0.0.1:6060",
      "debug_token_file": "/etc/realmnet/debug.token",
      "log_level": "info",
      "data_dir": "/var/lib/realmnet",
      "relay_service": false,
      "relay": ["/ip4/198.51.100.9/udp/4001/quic-v1/p2p/12D3KooW..."],
      "reachability": "private",
      "realm": ["team"],
      "psk_file": ["/etc/realmnet/team.psk"],
      "realm_relay": false
    }`

// newRunCommand returns `realmnet run`, which runs one node until it is
// interrupted.
func newRunCommand(globals *globalOptions) *cobra.Command {
	flags := defaultRunSettings()
	var configFile string
	command := &cobra.Command{
		Use:   "run [--config FILE] [flags]",
		Short: "Run one realmnet node until SIGINT or SIGTERM",
		Long:  runLong,
		Args:  cobra.NoArgs,
		RunE: func(command *cobra.Command, _ []string) error {
			settings := flags
			settings.listen = slices.Clone(flags.listen)
			settings.bootstrap = slices.Clone(flags.bootstrap)
			settings.relays = slices.Clone(flags.relays)
			settings.realms = slices.Clone(flags.realms)
			settings.pskFiles = slices.Clone(flags.pskFiles)
			if command.Flags().Changed(configFlag) && configFile == "" {
				return fmt.Errorf("--%s: empty file name", configFlag)
			}
			if configFile != "" {
				config, err := loadRunConfig(configFile)
				if err != nil {
					return err
				}
				if err := settings.applyConfig(command.Flags(), config, configFile); err != nil {
					return err
				}
			}
			ctx, stop := signal.NotifyContext(command.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runNode(ctx, command.OutOrStdout(), command.ErrOrStderr(), settings, globals.json)
		},
	}
	command.Flags().StringVar(&configFile, configFlag, "",
		"JSON file of settings, one key per flag (see above); flags given override it")
	command.Flags().StringArrayVar(&flags.listen, listenFlag, flags.listen,
		"QUIC multiaddr to listen on, containing /quic-v1 (repeatable)")
	command.Flags().StringVar(&flags.identity, identityFlag, flags.identity,
		"file holding the node's private key, created when missing (default: a fresh key each run)")
	command.Flags().StringArrayVar(&flags.bootstrap, bootstrapFlag, flags.bootstrap,
		"QUIC multiaddr of a bootstrap peer, ending in /p2p/<peer ID> (repeatable)")
	command.Flags().StringVar(&flags.dhtMode, dhtModeFlag, flags.dhtMode,
		"DHT role: auto, server or client")
	command.Flags().BoolVar(&flags.dhtPrivateAddrs, dhtPrivateAddrsFlag, flags.dhtPrivateAddrs,
		"let the DHT keep loopback and private (RFC 1918, ULA) addresses; --dht-private-addrs=false on the public internet")
	command.Flags().DurationVar(&flags.bootstrapTimeout, bootstrapTimeoutFlag, flags.bootstrapTimeout,
		"how long startup waits for the bootstrap peers (failures are logged, not fatal)")
	command.Flags().StringVar(&flags.debugAddr, debugAddrFlag, flags.debugAddr,
		"serve the debug endpoint (JSON API for inspect and doctor, /metrics, pprof) on HOST:PORT; off loopback it needs --debug-token-file (default: none)")
	command.Flags().StringVar(&flags.debugTokenFile, debugTokenFileFlag, flags.debugTokenFile,
		"file holding the token the debug endpoint requires: one line of at least 16 bytes, mode 0600")
	command.Flags().StringVar(&flags.dataDir, dataDirFlag, flags.dataDir,
		"directory for the node's state (the gater's rules); default: in memory")
	command.Flags().BoolVar(&flags.relayService, relayServiceFlag, flags.relayService,
		"relay connections for other peers (circuit relay v2); run it on a publicly reachable node")
	command.Flags().StringArrayVar(&flags.relays, relayFlag, flags.relays,
		"QUIC multiaddr of a static relay, ending in /p2p/<peer ID>, used while the node is not publicly reachable (repeatable)")
	command.Flags().StringVar(&flags.reachability, reachabilityFlag, flags.reachability,
		"fix the node's reachability: public or private (default: unknown until measured)")
	command.Flags().StringArrayVar(&flags.realms, realmFlag, flags.realms,
		"join the realm NAME; each --realm takes the key of the --psk-file in the same position (repeatable)")
	command.Flags().StringArrayVar(&flags.pskFiles, pskFileFlag, flags.pskFiles,
		"file holding a realm's pre-shared key: at least 16 bytes, mode 0600; a trailing newline is dropped (repeatable)")
	command.Flags().BoolVar(&flags.realmRelay, realmRelayFlag, flags.realmRelay,
		"relay for the members of the --realm realms, and nobody else")
	return supportsJSON(command)
}

// applyConfig sets the settings config has a value for, except those whose
// flag the command line gave (flagSet.Changed), and records their source.
// A bootstrap_timeout that is not a duration is an error naming its key.
func (settings *runSettings) applyConfig(flagSet *pflag.FlagSet, config runConfig, file string) error {
	settings.sources = map[string]string{}
	// use reports whether the config's value for flag applies, and records
	// its source when it does.
	use := func(flag string, present bool) bool {
		if !present || flagSet.Changed(flag) {
			return false
		}
		settings.sources[flag] = fmt.Sprintf("%q in %s", configKey(flag), file)
		return true
	}
	if use(listenFlag, config.Listen != nil) {
		settings.listen = config.Listen
	}
	if use(identityFlag, config.Identity != nil) {
		settings.identity = *config.Identity
	}
	if use(bootstrapFlag, config.Bootstrap != nil) {
		settings.bootstrap = config.Bootstrap
	}
	if use(dhtModeFlag, config.DHTMode != nil) {
		settings.dhtMode = *config.DHTMode
	}
	if use(dhtPrivateAddrsFlag, config.DHTPrivateAddrs != nil) {
		settings.dhtPrivateAddrs = *config.DHTPrivateAddrs
	}
	if use(bootstrapTimeoutFlag, config.BootstrapTimeout != nil) {
		timeout, err := time.ParseDuration(*config.BootstrapTimeout)
		if err != nil {
			return fmt.Errorf("%s: %q is not a duration (e.g. \"10s\")",
				settings.source(bootstrapTimeoutFlag), *config.BootstrapTimeout)
		}
		settings.bootstrapTimeout = timeout
	}
	if use(debugAddrFlag, config.DebugAddr != nil) {
		settings.debugAddr = *config.DebugAddr
	}
	if use(debugTokenFileFlag, config.DebugTokenFile != nil) {
		settings.debugTokenFile = *config.DebugTokenFile
	}
	if use(logLevelFlag, config.LogLevel != nil) {
		settings.logLevel = *config.LogLevel
	}
	if use(dataDirFlag, config.DataDir != nil) {
		settings.dataDir = *config.DataDir
	}
	if use(relayServiceFlag, config.RelayService != nil) {
		settings.relayService = *config.RelayService
	}
	if use(relayFlag, config.Relay != nil) {
		settings.relays = config.Relay
	}
	if use(reachabilityFlag, config.Reachability != nil) {
		settings.reachability = *config.Reachability
	}
	if use(realmFlag, config.Realm != nil) {
		settings.realms = config.Realm
	}
	if use(pskFileFlag, config.PSKFile != nil) {
		settings.pskFiles = config.PSKFile
	}
	if use(realmRelayFlag, config.RealmRelay != nil) {
		settings.realmRelay = *config.RealmRelay
	}
	return nil
}

// runNode checks settings, starts a node configured by them, prints its
// addresses to out (as a runOutput with asJSON), and closes it when ctx is
// done. Notices, such as a new identity file, go to errOut.
func runNode(ctx context.Context, out, errOut io.Writer, settings runSettings, asJSON bool) error {
	options, err := settings.nodeOptions()
	if err != nil {
		return err
	}
	joins, err := settings.realmJoins()
	if err != nil {
		return err
	}
	if settings.logLevel != "" {
		if err := applyLogLevel(settings.source(logLevelFlag), settings.logLevel); err != nil {
			return err
		}
	}
	if settings.identity != "" {
		key, err := settings.loadOrCreateIdentity(errOut)
		if err != nil {
			return err
		}
		options = append(options, node.Identity(key))
	}
	runningNode, err := node.New(ctx, options...)
	if err != nil {
		return settings.describeNodeError(err)
	}
	defer runningNode.Close()
	realmIDs := make([]string, 0, len(joins))
	for _, join := range joins {
		joined, err := runningNode.JoinRealm(ctx, join.name, join.opts...)
		if err != nil {
			return fmt.Errorf("%s: join realm %q: %w", settings.source(realmFlag), join.name, err)
		}
		realmIDs = append(realmIDs, string(joined.ID()))
	}

	addrInfo := runningNode.AddrInfo()
	addrs, err := peer.AddrInfoToP2pAddrs(&addrInfo)
	if err != nil {
		return fmt.Errorf("format the node's addresses: %w", err)
	}
	if asJSON {
		output := runOutput{PeerID: runningNode.ID().String(), Addrs: make([]string, 0, len(addrs)),
			DebugURL: runningNode.DebugURL(), Realms: realmIDs}
		for _, addr := range addrs {
			output.Addrs = append(output.Addrs, addr.String())
		}
		if err := printJSON(out, output); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(out, "peer ID %s, listening on:\n", runningNode.ID())
		for _, addr := range addrs {
			fmt.Fprintln(out, addr)
		}
		if debugURL := runningNode.DebugURL(); debugURL != "" {
			fmt.Fprintln(out, "debug endpoint", debugURL)
		}
		for i, join := range joins {
			fmt.Fprintf(out, "joined realm %q (ID %s)\n", join.name, realmIDs[i])
		}
		fmt.Fprintln(out, "running until SIGINT or SIGTERM")
	}

	<-ctx.Done()
	if !asJSON {
		fmt.Fprintln(out, "stopping")
	}
	if err := runningNode.Close(); err != nil {
		return fmt.Errorf("close node: %w", err)
	}
	if !asJSON {
		fmt.Fprintln(out, "stopped")
	}
	return nil
}

// nodeOptions checks the settings, except the identity file, which is
// read later, and turns them into node options. Errors name the flag or
// config key (settings.source) and the bad value.
func (settings *runSettings) nodeOptions() ([]node.Option, error) {
	if len(settings.listen) == 0 {
		return nil, fmt.Errorf("%s: no address; give at least one QUIC multiaddr (e.g. %s)",
			settings.source(listenFlag), node.DefaultListenAddr)
	}
	for _, listenAddr := range settings.listen {
		if err := checkQUICAddr(listenAddr); err != nil {
			return nil, fmt.Errorf("%s: %q %w", settings.source(listenFlag), listenAddr, err)
		}
		if strings.Contains(listenAddr, "/p2p-circuit") {
			return nil, fmt.Errorf("%s: %q is a relay address; the node accepts relayed connections by itself (give relays with --%s)",
				settings.source(listenFlag), listenAddr, relayFlag)
		}
	}
	options := []node.Option{node.ListenAddrStrings(settings.listen...)}
	if len(settings.bootstrap) > 0 {
		peers, err := parseBootstrapPeers(settings.source(bootstrapFlag), settings.bootstrap)
		if err != nil {
			return nil, err
		}
		options = append(options, node.Bootstrap(peers...))
	}
	dhtRole, err := node.ParseDHTRole(settings.dhtMode)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", settings.source(dhtModeFlag), err)
	}
	if settings.bootstrapTimeout <= 0 {
		return nil, fmt.Errorf("%s: %s; it must be positive", settings.source(bootstrapTimeoutFlag), settings.bootstrapTimeout)
	}
	if settings.logLevel != "" {
		if err := checkLogLevel(settings.source(logLevelFlag), settings.logLevel); err != nil {
			return nil, err
		}
	}
	debugOptions, err := settings.debugOptions()
	if err != nil {
		return nil, err
	}
	options = append(options, debugOptions...)
	relayOptions, err := settings.relayOptions()
	if err != nil {
		return nil, err
	}
	options = append(options, relayOptions...)
	if settings.dataDir != "" {
		options = append(options, node.DataDir(settings.dataDir))
	}
	return append(options,
		node.DHTMode(dhtRole),
		node.DHTPrivateAddrs(settings.dhtPrivateAddrs),
		node.BootstrapTimeout(settings.bootstrapTimeout),
	), nil
}

// relayOptions checks the relay settings and turns them into
// node.RelayService, node.Relays and node.ForceReachability. A relay must
// be a QUIC multiaddr ending in /p2p/<peer ID> that is not itself a relay
// address.
func (settings *runSettings) relayOptions() ([]node.Option, error) {
	var options []node.Option
	if settings.relayService {
		options = append(options, node.RelayService(node.RelayServiceConfig{}))
	}
	if len(settings.relays) > 0 {
		source := settings.source(relayFlag)
		for _, value := range settings.relays {
			if strings.Contains(value, "/p2p-circuit") {
				return nil, fmt.Errorf("%s: %q is a relay address itself; a relay must be reachable directly", source, value)
			}
		}
		relays, err := parseBootstrapPeers(source, settings.relays)
		if err != nil {
			return nil, err
		}
		options = append(options, node.Relays(relays...))
	}
	switch settings.reachability {
	case "":
	case "public":
		options = append(options, node.ForceReachability(network.ReachabilityPublic))
	case "private":
		options = append(options, node.ForceReachability(network.ReachabilityPrivate))
	default:
		return nil, fmt.Errorf("%s: %q; want public or private", settings.source(reachabilityFlag), settings.reachability)
	}
	return options, nil
}

// realmJoin is one realm run joins.
type realmJoin struct {
	name string
	opts []realm.Option
}

// realmJoins checks the realm settings — one --psk-file per --realm, each
// a private file of at least realm.MinPSKLength bytes — and returns the
// joins, with realm.Relay on each when --realm-relay is set.
func (settings *runSettings) realmJoins() ([]realmJoin, error) {
	if len(settings.realms) != len(settings.pskFiles) {
		return nil, fmt.Errorf("%s: %d realms but %d key files (%s); give one --%s per --%s, in the same order",
			settings.source(realmFlag), len(settings.realms), len(settings.pskFiles), settings.source(pskFileFlag), pskFileFlag, realmFlag)
	}
	if settings.realmRelay && len(settings.realms) == 0 {
		return nil, fmt.Errorf("%s: no realm to relay for; give --%s NAME --%s FILE", settings.source(realmRelayFlag), realmFlag, pskFileFlag)
	}
	joins := make([]realmJoin, 0, len(settings.realms))
	for i, name := range settings.realms {
		if slices.Contains(settings.realms[:i], name) {
			return nil, fmt.Errorf("%s: realm %q is given twice", settings.source(realmFlag), name)
		}
		data, err := readPrivateFile(settings.source(pskFileFlag), settings.pskFiles[i], "PSK", maxPSKFileSize)
		if err != nil {
			return nil, err
		}
		psk := bytes.TrimSuffix(bytes.TrimSuffix(data, []byte("\n")), []byte("\r"))
		if len(psk) < realm.MinPSKLength {
			return nil, fmt.Errorf("%s %s: the key of realm %q is %d bytes; want at least %d",
				settings.source(pskFileFlag), settings.pskFiles[i], name, len(psk), realm.MinPSKLength)
		}
		opts := []realm.Option{realm.PSK(psk)}
		if settings.realmRelay {
			opts = append(opts, realm.Relay())
		}
		joins = append(joins, realmJoin{name: name, opts: opts})
	}
	return joins, nil
}

// debugOptions checks the debug endpoint's settings and turns them into
// node.DebugAddr and node.DebugToken, reading the token file
// (readTokenFile). A token file without an address is refused: it would
// protect nothing. Whether the address needs a token (it is not loopback)
// is node.New's check, whose error names the address.
func (settings *runSettings) debugOptions() ([]node.Option, error) {
	if settings.debugAddr == "" {
		if settings.debugTokenFile != "" {
			return nil, fmt.Errorf("%s: no debug endpoint to protect; give --%s HOST:PORT too",
				settings.source(debugTokenFileFlag), debugAddrFlag)
		}
		return nil, nil
	}
	_, port, err := net.SplitHostPort(settings.debugAddr)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %q is not HOST:PORT with a port from 0 to 65535 (e.g. 127.0.0.1:6060)",
			settings.source(debugAddrFlag), settings.debugAddr)
	}
	options := []node.Option{node.DebugAddr(settings.debugAddr)}
	if settings.debugTokenFile != "" {
		token, err := readTokenFile(settings.source(debugTokenFileFlag), settings.debugTokenFile)
		if err != nil {
			return nil, err
		}
		options = append(options, node.DebugToken(token))
	}
	return options, nil
}

// describeNodeError prefixes an error of node.New about the debug endpoint
// (one that names its address: not loopback without a token, cannot be
// bound) with the flag or config key it came from, and, when the endpoint
// needs a token, says which flag gives it. Other errors are returned as
// they are.
func (settings *runSettings) describeNodeError(err error) error {
	if settings.debugAddr == "" || !strings.Contains(err.Error(), strconv.Quote(settings.debugAddr)) {
		return err
	}
	if settings.debugTokenFile == "" && strings.Contains(err.Error(), "token is required") {
		return fmt.Errorf("%s: %w; give one with --%s FILE", settings.source(debugAddrFlag), err, debugTokenFileFlag)
	}
	return fmt.Errorf("%s: %w", settings.source(debugAddrFlag), err)
}

// loadOrCreateIdentity returns the key in settings.identity, creating the
// file when it does not exist and saying so on errOut. Errors name the
// flag or config key and the path.
func (settings *runSettings) loadOrCreateIdentity(errOut io.Writer) (crypto.PrivKey, error) {
	source := settings.source(identityFlag)
	key, err := node.LoadIdentity(settings.identity)
	if errors.Is(err, fs.ErrNotExist) {
		key, err = node.CreateIdentity(settings.identity)
		switch {
		case errors.Is(err, node.ErrIdentityExists):
			// Created by someone else in between: use theirs.
			key, err = node.LoadIdentity(settings.identity)
		case err == nil:
			id, idErr := peer.IDFromPrivateKey(key)
			if idErr != nil {
				return nil, fmt.Errorf("%s: derive peer ID from the key in %s: %w", source, settings.identity, idErr)
			}
			fmt.Fprintf(errOut, "realmnet: %s: %s did not exist; created a new identity there, peer ID %s\n",
				source, settings.identity, id)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	return key, nil
}

// checkQUICAddr returns an error, to follow the address in a message, when
// value is not a multiaddr or not a QUIC one.
func checkQUICAddr(value string) error {
	addr, err := ma.NewMultiaddr(value)
	if err != nil {
		return fmt.Errorf("is not a multiaddr: %w", err)
	}
	for _, protocol := range addr.Protocols() {
		if protocol.Code == ma.P_QUIC_V1 {
			return nil
		}
	}
	return errors.New("is not a QUIC multiaddr: realmnet speaks QUIC only, so it must contain /quic-v1 " +
		"(e.g. /ip4/0.0.0.0/udp/4001/quic-v1)")
}

// parseBootstrapPeers parses QUIC multiaddrs ending in /p2p/<peer ID> and
// merges the addresses of the same peer into one AddrInfo. source names
// where the addresses came from ("--bootstrap", or a config key) in errors.
func parseBootstrapPeers(source string, addrs []string) ([]peer.AddrInfo, error) {
	parsed := make([]ma.Multiaddr, 0, len(addrs))
	for _, value := range addrs {
		if err := checkQUICAddr(value); err != nil {
			return nil, fmt.Errorf("%s: %q %w", source, value, err)
		}
		// AddrInfoFromString checks both the multiaddr and its /p2p part.
		if _, err := peer.AddrInfoFromString(value); err != nil {
			return nil, fmt.Errorf("%s: %q is not a multiaddr ending in /p2p/<peer ID>: %w", source, value, err)
		}
		addr, err := ma.NewMultiaddr(value)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a multiaddr: %w", source, value, err)
		}
		parsed = append(parsed, addr)
	}
	peers, err := peer.AddrInfosFromP2pAddrs(parsed...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	return peers, nil
}
