package node

import (
	"runtime/debug"
	"sync"
)

// modulePath is realmnet's module path, looked up in the build info.
const modulePath = "github.com/realmnet/realmnet"

// Version returns realmnet's version as the Go build info records it: the
// module version when realmnet is a dependency (e.g. "v0.3.0"), or, when
// realmnet is the main module (its own commands), the version Go stamped
// ("v0.3.0", a pseudo-version, or "(devel)") followed by the VCS revision
// and "+dirty" when the build info has them. Never empty: "unknown" when
// the binary carries no build info. Safe for concurrent use.
func Version() string { return versionOnce() }

var versionOnce = sync.OnceValue(func() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	return versionFrom(info)
})

// versionFrom is Version for the given build info.
func versionFrom(info *debug.BuildInfo) string {
	if info.Main.Path != modulePath {
		for _, dep := range info.Deps {
			if dep.Path == modulePath {
				if dep.Replace != nil && dep.Replace.Version != "" {
					return dep.Replace.Version
				}
				return dep.Version
			}
		}
		return "unknown"
	}
	version := info.Main.Version
	if version == "" {
		version = "(devel)"
	}
	var revision, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if revision != "" && (version == "(devel)" || version == "") {
		if len(revision) > 12 {
			revision = revision[:12]
		}
		version += " " + revision
		if modified == "true" {
			version += "+dirty"
		}
	}
	return version
}

// UserAgent returns what identify reports for realmnet nodes:
// "realmnet/" and Version (go-libp2p's agent strings have the same shape,
// e.g. "kubo/0.30.0").
func UserAgent() string { return "realmnet/" + Version() }
