package main

import (
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"

	"github.com/realmnet/realmnet/node"
)

// newIDCommand returns `realmnet id`, which prints the peer ID of an
// identity file.
func newIDCommand() *cobra.Command {
	var identityFile string
	command := &cobra.Command{
		Use:   "id --identity FILE",
		Short: "Print the peer ID of the private key in FILE",
		Long: "id prints the peer ID derived from the libp2p private key stored in FILE.\n\n" +
			"When FILE does not exist, a new Ed25519 key is generated and written there\n" +
			"(mode 0600, atomically), exactly as `realmnet run --identity FILE` would do,\n" +
			"and the new key's peer ID is printed. An existing file is never modified.",
		Args: cobra.NoArgs,
		RunE: func(command *cobra.Command, _ []string) error {
			key, err := node.LoadOrCreateIdentity(identityFile)
			if err != nil {
				return err
			}
			id, err := peer.IDFromPrivateKey(key)
			if err != nil {
				return fmt.Errorf("derive peer ID from the key in %s: %w", identityFile, err)
			}
			_, err = fmt.Fprintln(command.OutOrStdout(), id)
			return err
		},
	}
	command.Flags().StringVar(&identityFile, "identity", "", "file holding the node's private key (created when missing)")
	_ = command.MarkFlagRequired("identity")
	return command
}
