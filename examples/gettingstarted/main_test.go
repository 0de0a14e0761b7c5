package main

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDocMatchesProgram keeps docs/getting-started.md's program and this
// one identical, so the page always shows code that compiles and runs.
func TestDocMatchesProgram(t *testing.T) {
	doc, err := os.ReadFile("../../docs/getting-started.md")
	require.NoError(t, err)
	program, err := os.ReadFile("main.go")
	require.NoError(t, err)
	start := strings.Index(string(doc), "```go\n") + len("```go\n")
	end := start + strings.Index(string(doc[start:]), "```")
	code := string(doc[start:end])
	require.True(t, strings.HasSuffix(string(program), code), "docs/getting-started.md and examples/gettingstarted/main.go differ")
}

// TestRuns runs the program: it exits through log.Fatal on any failure.
func TestRuns(t *testing.T) {
	main()
}
