// Command realmnet runs realmnet nodes from the command line.
//
// Subcommands:
//
//	realmnet demo [--nodes 5]     start a small network in one process, find
//	                              every node through the DHT, echo between
//	                              every pair, run two realms (blue, green)
//	                              over it, check their isolation, and print a
//	                              summary
//	realmnet demo --nat           build the NAT lab (Linux network namespaces),
//	                              run a relay, a bootstrap node and two nodes
//	                              behind NATs in it, and print their paths
//	                              before and after hole punching upgrades
//	                              their relayed path to a direct one
//	realmnet run [--config FILE]  run one long-lived node until SIGINT or
//	                              SIGTERM; its settings come from flags and a
//	                              JSON config file (flags win)
//	realmnet inspect VIEW         print a view of a running node, read from
//	                              its debug endpoint (run --debug-addr):
//	                              node, peers, paths, pools, realms, events
//	                              or health, as a table or JSON
//	realmnet doctor PEER          print a running node's diagnosis of why it
//	                              can or cannot reach PEER
//	realmnet init --identity FILE create a new identity (private key) in FILE
//	                              and print its peer ID; never replaces a file
//	realmnet id --identity FILE   print the peer ID of the key in FILE; never
//	                              creates one
//	realmnet version              print realmnet's version, the Go version,
//	                              the OS and the architecture
//	realmnet completion SHELL     print a shell completion script
//
// Every subcommand takes --log-level LEVEL (go-log's level of every logger:
// debug, info, warn, error, dpanic, panic, fatal; default: GOLOG_LOG_LEVEL,
// else error) and --json (id, init, run, version, inspect's views and
// doctor print JSON on standard output instead of text; the other commands
// refuse it).
//
// The reference of every command and flag is generated from the commands
// into docs/cli (go generate, or the hidden `realmnet gen-docs DIR`);
// a test fails when it is out of date.
//
// Logs and errors are printed to standard error; an error makes the program
// exit with status 1, except doctor's: doctor exits with 0 when the peer is
// reachable, 1 when it is not, 2 on an error.
package main

//go:generate go run . gen-docs ../../docs/cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	logging "github.com/ipfs/go-log/v2"
	"github.com/spf13/cobra"

	"github.com/realmnet/realmnet/internal/natlab"
	"github.com/realmnet/realmnet/node"
)

func main() {
	// A process of demo --nat's lab is this program again: it runs its
	// role and exits here, before the command line is parsed.
	natlab.RunIfChild(labRoles())
	os.Exit(executeRoot(newRootCommand(), os.Stderr))
}

// executeRoot runs root and returns the process's exit status: 0 on success;
// else it prints the error once on errOut, prefixed "realmnet: ", and
// returns the status an *exitStatusError carries (printing nothing when it
// has no error), else the status in the failed command's
// errorStatusAnnotation (doctor's 2), else 1.
func executeRoot(root *cobra.Command, errOut io.Writer) int {
	command, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	var statusErr *exitStatusError
	if errors.As(err, &statusErr) {
		if statusErr.err != nil {
			fmt.Fprintln(errOut, "realmnet:", statusErr.err)
		}
		return statusErr.status
	}
	fmt.Fprintln(errOut, "realmnet:", err)
	if command != nil {
		if status, convErr := strconv.Atoi(command.Annotations[errorStatusAnnotation]); convErr == nil {
			return status
		}
	}
	return 1
}

// errorStatusAnnotation marks, in cobra.Command.Annotations, a command
// whose errors (usage errors included) exit with the status it holds
// rather than 1: doctor, whose status 1 is a verdict.
const errorStatusAnnotation = "realmnet/error-status"

// exitStatusError makes realmnet exit with status, printing err (nothing
// when nil: the output already said it). doctor returns one for a verdict
// other than reachable.
type exitStatusError struct {
	status int
	err    error
}

// Error returns err's message, or says the status when err is nil.
func (e *exitStatusError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.status)
	}
	return e.err.Error()
}

// Unwrap returns err.
func (e *exitStatusError) Unwrap() error { return e.err }

// globalOptions are the root command's persistent flags, seen by every
// subcommand.
type globalOptions struct {
	// logLevel is --log-level: go-log's level of every logger, applied only
	// when the flag is given.
	logLevel string
	// json is --json: print JSON objects instead of text on standard output.
	json bool
}

// Flag names shared by several commands.
const (
	logLevelFlag = "log-level"
	jsonFlag     = "json"
	identityFlag = "identity"
)

// jsonAnnotation marks, in cobra.Command.Annotations, the commands that
// honour --json; the others refuse it rather than print text a script would
// fail to parse.
const jsonAnnotation = "realmnet/json"

// newRootCommand returns the realmnet command with all its subcommands.
func newRootCommand() *cobra.Command {
	globals := &globalOptions{}
	root := &cobra.Command{
		Use:   "realmnet",
		Short: "Run realmnet nodes",
		Long: "realmnet runs nodes of the realmnet peer-to-peer network: a demo network\n" +
			"in one process (demo) or a long-lived node (run); it shows a running node's\n" +
			"state (inspect) and why it can or cannot reach a peer (doctor), read from\n" +
			"the node's debug endpoint (run --debug-addr); it creates node identities\n" +
			"(init), prints their peer IDs (id) and prints its own version (version).\n\n" +
			"Logs and errors go to standard error; with --json, id, init, run, version,\n" +
			"inspect and doctor print JSON on standard output. An error makes realmnet\n" +
			"exit with status 1, except doctor's: doctor exits with 0 when the peer is\n" +
			"reachable, 1 when it is not and 2 on an error.",
		Version: node.Version(),
		// main prints the error once; usage is only shown for --help.
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(command *cobra.Command, _ []string) error {
			if globals.json && command.Annotations[jsonAnnotation] == "" {
				return fmt.Errorf("--%s: %s has no JSON output", jsonFlag, command.CommandPath())
			}
			if command.Flags().Changed(logLevelFlag) {
				return applyLogLevel("--"+logLevelFlag, globals.logLevel)
			}
			return nil
		},
	}
	root.SetVersionTemplate(versionLine() + "\n")
	root.PersistentFlags().StringVar(&globals.logLevel, logLevelFlag, "",
		"level of every logger: debug, info, warn, error, dpanic, panic or fatal (default: $GOLOG_LOG_LEVEL, else error)")
	root.PersistentFlags().BoolVar(&globals.json, jsonFlag, false,
		"print JSON on standard output instead of text (id, init, run, version, inspect, doctor)")
	root.AddCommand(newDemoCommand(), newRunCommand(globals), newInspectCommand(globals),
		newDoctorCommand(globals), newInitCommand(globals), newIDCommand(globals),
		newVersionCommand(globals), newGenDocsCommand())
	return root
}

// supportsJSON marks command as honouring --json and returns it.
func supportsJSON(command *cobra.Command) *cobra.Command {
	if command.Annotations == nil {
		command.Annotations = map[string]string{}
	}
	command.Annotations[jsonAnnotation] = "true"
	return command
}

// applyLogLevel sets go-log's level of every logger, existing and future,
// to level. name says where level came from ("--log-level", or a config
// key) and starts the error when level is not a level.
func applyLogLevel(name, level string) error {
	if err := checkLogLevel(name, level); err != nil {
		return err
	}
	return logging.SetLogLevel("*", level)
}

// checkLogLevel returns an error naming name and level when level is not a
// go-log level.
func checkLogLevel(name, level string) error {
	// zap parses "" as info; an empty level is a mistake here.
	if level == "" {
		return fmt.Errorf("%s: empty; want debug, info, warn, error, dpanic, panic or fatal", name)
	}
	if _, err := logging.Parse(level); err != nil {
		return fmt.Errorf("%s: %q is not a log level (want debug, info, warn, error, dpanic, panic or fatal)", name, level)
	}
	return nil
}

// printJSON writes value to out as one line of JSON.
func printJSON(out io.Writer, value any) error {
	data, err := json.Marshal(value)
	if err != nil {
		return fmt.Errorf("encode JSON output: %w", err)
	}
	_, err = out.Write(append(data, '\n'))
	return err
}
