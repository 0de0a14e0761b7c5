package main

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// cliDocsDir is the generated CLI reference, relative to this package.
const cliDocsDir = "../../docs/cli"

// TestCLIDocsAreUpToDate fails when docs/cli is not what gen-docs writes
// for the commands as they are: regenerate it with
// `go generate ./cmd/realmnet`.
func TestCLIDocsAreUpToDate(t *testing.T) {
	generated := t.TempDir()
	if _, _, err := execute(t, "gen-docs", generated); err != nil {
		t.Fatalf("gen-docs: %v", err)
	}
	want := readDir(t, generated)
	got := readDir(t, cliDocsDir)
	if len(want) == 0 {
		t.Fatal("gen-docs wrote nothing")
	}
	const fix = "; run `go generate ./cmd/realmnet`"
	for _, name := range slices.Sorted(maps.Keys(want)) {
		content, ok := got[name]
		switch {
		case !ok:
			t.Errorf("docs/cli lacks %s%s", name, fix)
		case !bytes.Equal(content, want[name]):
			t.Errorf("docs/cli/%s is out of date%s", name, fix)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[name]; !ok {
			t.Errorf("docs/cli/%s documents no command%s", name, fix)
		}
	}
}

// TestGenDocsIsStable checks that the reference does not depend on whether
// the command tree was executed before (help and completion commands) nor
// on the day: two runs write the same files.
func TestGenDocsIsStable(t *testing.T) {
	first, second := t.TempDir(), t.TempDir()
	if err := writeCLIDocs(newRootCommand(), first); err != nil {
		t.Fatal(err)
	}
	if _, _, err := execute(t, "gen-docs", second); err != nil {
		t.Fatal(err)
	}
	a, b := readDir(t, first), readDir(t, second)
	if len(a) != len(b) {
		t.Fatalf("two runs wrote %d and %d files", len(a), len(b))
	}
	for name, content := range a {
		if !bytes.Equal(content, b[name]) {
			t.Errorf("two runs wrote different %s", name)
		}
		if bytes.Contains(content, []byte("Auto generated")) {
			t.Errorf("%s has a generation date", name)
		}
	}
}

// readDir returns the content of every file in dir by name.
func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	files := make(map[string][]byte, len(entries))
	for _, entry := range entries {
		content, err := os.ReadFile(filepath.Join(dir, entry.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[entry.Name()] = content
	}
	return files
}
