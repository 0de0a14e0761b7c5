package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"

	"github.com/realmnet/realmnet/node"
)

// peerIDOutput is the JSON output of `realmnet id --json` and
// `realmnet init --json`.
type peerIDOutput struct {
	// PeerID is the identity's peer ID ("12D3KooW…" for Ed25519 keys).
	PeerID string `json:"peer_id"`
}

// newIDCommand returns `realmnet id`, which prints the peer ID of an
// existing identity file.
func newIDCommand(globals *globalOptions) *cobra.Command {
	var identityFile string
	command := &cobra.Command{
		Use:   "id --identity FILE",
		Short: "Print the peer ID of the private key in FILE",
		Long: "id prints the peer ID derived from the libp2p private key stored in FILE\n" +
			"(libp2p's protobuf encoding, as realmnet init and realmnet run --identity\n" +
			"write it). It only reads FILE: when FILE does not exist, id fails and creates\n" +
			"nothing (realmnet init --identity FILE creates an identity).\n\n" +
			"With --json it prints {\"peer_id\": \"12D3KooW...\"}.",
		Args: cobra.NoArgs,
		RunE: func(command *cobra.Command, _ []string) error {
			key, err := node.LoadIdentity(identityFile)
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("--%s %s: no such file (realmnet init --%s %s creates one)",
					identityFlag, identityFile, identityFlag, identityFile)
			}
			if err != nil {
				return fmt.Errorf("--%s: %w", identityFlag, err)
			}
			return printPeerID(command.OutOrStdout(), globals, identityFile, key)
		},
	}
	command.Flags().StringVar(&identityFile, identityFlag, "", "file holding the node's private key (read only)")
	_ = command.MarkFlagRequired(identityFlag)
	return supportsJSON(command)
}

// newInitCommand returns `realmnet init`, which creates an identity file.
func newInitCommand(globals *globalOptions) *cobra.Command {
	var identityFile string
	command := &cobra.Command{
		Use:   "init --identity FILE",
		Short: "Create a new identity (private key) in FILE and print its peer ID",
		Long: "init generates an Ed25519 private key, writes it to FILE (mode 0600,\n" +
			"atomically: a crash never leaves a half-written file) and prints its peer ID.\n" +
			"Give FILE to realmnet run --identity so the node keeps its peer ID across\n" +
			"restarts.\n\n" +
			"init never replaces an identity: when FILE exists it fails, leaving FILE\n" +
			"untouched (realmnet id --identity FILE prints its peer ID). FILE's directory\n" +
			"must exist.\n\n" +
			"With --json it prints {\"peer_id\": \"12D3KooW...\"}.",
		Args: cobra.NoArgs,
		RunE: func(command *cobra.Command, _ []string) error {
			key, err := node.CreateIdentity(identityFile)
			if errors.Is(err, node.ErrIdentityExists) {
				return fmt.Errorf("--%s %s: the file already exists; init never replaces an identity "+
					"(realmnet id --%s %s prints its peer ID)", identityFlag, identityFile, identityFlag, identityFile)
			}
			if err != nil {
				return fmt.Errorf("--%s: %w", identityFlag, err)
			}
			return printPeerID(command.OutOrStdout(), globals, identityFile, key)
		},
	}
	command.Flags().StringVar(&identityFile, identityFlag, "", "file to create for the node's private key (must not exist)")
	_ = command.MarkFlagRequired(identityFlag)
	return supportsJSON(command)
}

// printPeerID prints the peer ID of key, read from or written to
// identityFile, as text or, with --json, as a peerIDOutput.
func printPeerID(out io.Writer, globals *globalOptions, identityFile string, key crypto.PrivKey) error {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return fmt.Errorf("derive peer ID from the key in %s: %w", identityFile, err)
	}
	if globals.json {
		return printJSON(out, peerIDOutput{PeerID: id.String()})
	}
	_, err = fmt.Fprintln(out, id)
	return err
}
