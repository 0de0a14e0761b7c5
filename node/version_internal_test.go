package node

import (
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestVersionFrom proves how Version reads the build info: as a dependency
// (also replaced), as the main module with a VCS stamp, and without one.
func TestVersionFrom(t *testing.T) {
	asDependency := &debug.BuildInfo{
		Main: debug.Module{Path: "example.com/app", Version: "v1.0.0"},
		Deps: []*debug.Module{{Path: modulePath, Version: "v0.3.1"}},
	}
	require.Equal(t, "v0.3.1", versionFrom(asDependency))
	asDependency.Deps[0].Replace = &debug.Module{Path: "../realmnet", Version: "v0.3.2"}
	require.Equal(t, "v0.3.2", versionFrom(asDependency))

	asMain := &debug.BuildInfo{
		Main: debug.Module{Path: modulePath, Version: "(devel)"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef0123"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	require.Equal(t, "(devel) 0123456789ab+dirty", versionFrom(asMain))
	asMain.Main.Version = "v0.4.0"
	require.Equal(t, "v0.4.0", versionFrom(asMain))
	require.Equal(t, "unknown", versionFrom(&debug.BuildInfo{Main: debug.Module{Path: "example.com/other"}}))
}
