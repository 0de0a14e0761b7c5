// Command realmnet runs realmnet nodes from the command line.
//
// Subcommands:
//
//	realmnet demo [--nodes 5]   start a small network in one process, find every
//	                            node through the DHT, echo between every pair,
//	                            run two realms (blue, green) over it, check
//	                            their isolation, and print a summary
//	realmnet run [flags]        run one long-lived node until SIGINT or SIGTERM
//	realmnet id --identity FILE print the peer ID of the key in FILE
//
// Errors are printed to standard error and make the program exit with
// status 1.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "realmnet:", err)
		os.Exit(1)
	}
}

// newRootCommand returns the realmnet command with all its subcommands.
func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "realmnet",
		Short: "Run realmnet nodes",
		Long: "realmnet runs nodes of the realmnet peer-to-peer network: a demo network\n" +
			"in one process, a long-lived node, or prints a node identity's peer ID.",
		// main prints the error once; usage is only shown for --help.
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.AddCommand(newDemoCommand(), newRunCommand(), newIDCommand())
	return root
}
