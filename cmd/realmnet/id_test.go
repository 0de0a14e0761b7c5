package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestInitCreatesAnIdentityThatIDReads(t *testing.T) {
	identityFile := filepath.Join(t.TempDir(), "identity.key")
	created, _, err := execute(t, "init", "--identity", identityFile)
	if err != nil {
		t.Fatalf("init --identity %s: %v", identityFile, err)
	}
	peerID := strings.TrimSpace(created)
	if !strings.HasPrefix(peerID, "12D3KooW") || strings.Count(created, "\n") != 1 {
		t.Fatalf("init printed %q, want one Ed25519 peer ID", created)
	}
	info, err := os.Stat(identityFile)
	if err != nil {
		t.Fatalf("init did not create %s: %v", identityFile, err)
	}
	// Windows has no Unix permissions to check.
	if mode := info.Mode().Perm(); mode != 0o600 && runtime.GOOS != "windows" {
		t.Errorf("%s has mode %v, want 0600", identityFile, mode)
	}
	for range 2 {
		read, _, err := execute(t, "id", "--identity", identityFile)
		if err != nil {
			t.Fatalf("id --identity %s: %v", identityFile, err)
		}
		if read != created {
			t.Errorf("id printed %q, init %q", read, created)
		}
	}
	read, _, err := execute(t, "--json", "id", "--identity", identityFile)
	if err != nil {
		t.Fatalf("--json id: %v", err)
	}
	if got := decodeJSON[peerIDOutput](t, "--json id", read); got.PeerID != peerID {
		t.Errorf("--json id printed peer ID %q, want %q", got.PeerID, peerID)
	}

	other := filepath.Join(t.TempDir(), "other.key")
	created, _, err = execute(t, "init", "--identity", other, "--json")
	if err != nil {
		t.Fatalf("init --json: %v", err)
	}
	if got := decodeJSON[peerIDOutput](t, "init --json", created); !strings.HasPrefix(got.PeerID, "12D3KooW") {
		t.Errorf("init --json printed peer ID %q", got.PeerID)
	}
}

func TestInitRefusesAnExistingFile(t *testing.T) {
	identityFile := filepath.Join(t.TempDir(), "identity.key")
	if _, _, err := execute(t, "init", "--identity", identityFile); err != nil {
		t.Fatalf("init: %v", err)
	}
	before, err := os.ReadFile(identityFile)
	if err != nil {
		t.Fatal(err)
	}
	stdout, _, err := execute(t, "init", "--identity", identityFile)
	wantErrorNaming(t, "init on an existing file", err, "--identity", identityFile, "exists")
	if stdout != "" {
		t.Errorf("init on an existing file printed %q", stdout)
	}
	after, err := os.ReadFile(identityFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("init on an existing file changed it")
	}
}

func TestInitInAMissingDirectoryNamesThePath(t *testing.T) {
	dir := t.TempDir()
	identityFile := filepath.Join(dir, "missing", "identity.key")
	_, _, err := execute(t, "init", "--identity", identityFile)
	wantErrorNaming(t, "init in a missing directory", err, "--identity", identityFile)
	if err != nil && strings.Contains(err.Error(), ".tmp") {
		t.Errorf("error %q names a temporary file", err)
	}
	assertEmptyDir(t, dir)
}

func TestIDOnAMissingFileCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	for _, identityFile := range []string{
		filepath.Join(dir, "mistyped.key"),
		filepath.Join(dir, "missing", "identity.key"),
		"/nonexistent/dir/key",
	} {
		stdout, _, err := execute(t, "id", "--identity", identityFile)
		wantErrorNaming(t, "id --identity "+identityFile, err, "--identity", identityFile)
		if err != nil && strings.Contains(err.Error(), ".tmp") {
			t.Errorf("error %q names a temporary file", err)
		}
		if stdout != "" {
			t.Errorf("id --identity %s printed %q", identityFile, stdout)
		}
		if _, err := os.Lstat(identityFile); !os.IsNotExist(err) {
			t.Errorf("id --identity %s: the file exists afterwards (%v)", identityFile, err)
		}
	}
	assertEmptyDir(t, dir)
	if _, err := os.Lstat("/nonexistent"); !os.IsNotExist(err) {
		t.Errorf("/nonexistent exists after id (%v)", err)
	}
}

func TestIDOnAFileThatIsNoKeyNamesIt(t *testing.T) {
	identityFile := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(identityFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := execute(t, "id", "--identity", identityFile)
	wantErrorNaming(t, "id on a file that holds no key", err, "--identity", identityFile)
}

// assertEmptyDir fails the test when dir holds any file, listing them.
func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if path != dir {
			found = append(found, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) > 0 {
		t.Errorf("%s should be empty; it holds %q", dir, found)
	}
}
