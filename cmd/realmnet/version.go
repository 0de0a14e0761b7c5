package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/realmnet/realmnet/node"
)

// versionInfo is what `realmnet version` prints; its JSON form is the
// output of `realmnet version --json`.
type versionInfo struct {
	// Version is node.Version(): the module version, or "(devel)" and the
	// VCS revision for a build from a work tree.
	Version string `json:"version"`
	// GoVersion is the Go toolchain that built the binary (runtime.Version).
	GoVersion string `json:"go_version"`
	// OS and Arch are the binary's GOOS and GOARCH.
	OS   string `json:"os"`
	Arch string `json:"arch"`
}

// currentVersion returns the running binary's versionInfo.
func currentVersion() versionInfo {
	return versionInfo{Version: node.Version(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
}

// versionLine returns the text of `realmnet version`, in the form of
// `go version`: "realmnet v0.3.0 go1.26.0 linux/amd64".
func versionLine() string {
	info := currentVersion()
	return fmt.Sprintf("realmnet %s %s %s/%s", info.Version, info.GoVersion, info.OS, info.Arch)
}

// newVersionCommand returns `realmnet version`.
func newVersionCommand(globals *globalOptions) *cobra.Command {
	return supportsJSON(&cobra.Command{
		Use:   "version",
		Short: "Print realmnet's version, the Go version, the OS and the architecture",
		Long: "version prints one line: realmnet's version (the module version, or \"(devel)\"\n" +
			"followed by the VCS revision for a build from a work tree, as the Go build\n" +
			"info records it), the Go version that built the binary, and its GOOS/GOARCH.\n" +
			"realmnet --version prints the same line.\n\n" +
			"With --json it prints a JSON object instead:\n\n" +
			"    {\"version\": \"v0.3.0\", \"go_version\": \"go1.26.0\", \"os\": \"linux\", \"arch\": \"amd64\"}",
		Args: cobra.NoArgs,
		RunE: func(command *cobra.Command, _ []string) error {
			if globals.json {
				return printJSON(command.OutOrStdout(), currentVersion())
			}
			_, err := fmt.Fprintln(command.OutOrStdout(), versionLine())
			return err
		},
	})
}
