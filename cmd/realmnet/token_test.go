package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestReadTokenFile: the token without its trailing newline; a file group
// or others may access, a short token, an empty file, white space at the
// ends, a control character, a file too large, a missing file and a
// directory are refused with an error naming the file.
func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		t.Helper()
		file := filepath.Join(dir, name)
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		// Chmod, unlike WriteFile, is not masked by the umask.
		if err := os.Chmod(file, mode); err != nil {
			t.Fatal(err)
		}
		return file
	}
	const token = "0123456789abcdef-token"
	for _, content := range []string{token, token + "\n", token + "\r\n"} {
		file := write("good", content, 0o600)
		got, err := readTokenFile("--token-file", file)
		if err != nil || got != token {
			t.Errorf("readTokenFile of %q = %q, %v; want %q", content, got, err, token)
		}
	}
	if got, err := readTokenFile("--token-file", write("owner-only", token, 0o400)); err != nil || got != token {
		t.Errorf("readTokenFile of a 0400 file = %q, %v; want %q", got, err, token)
	}

	for _, test := range []struct {
		name, content string
		mode          os.FileMode
		names         []string
		unixOnly      bool
	}{
		{"group-readable", token, 0o640, []string{"0640", "chmod 600"}, true},
		{"world-readable", token, 0o604, []string{"0604"}, true},
		{"group-writable", token, 0o620, []string{"0620"}, true},
		{"short", "fifteen bytes!!\n", 0o600, []string{"15 bytes", "16"}, false},
		{"empty", "", 0o600, []string{"empty"}, false},
		{"newline-only", "\n", 0o600, []string{"empty"}, false},
		{"spaces", " " + token + "\n", 0o600, []string{"white space"}, false},
		{"two-lines", token + "\n" + token + "\n", 0o600, []string{"control character"}, false},
		{"large", strings.Repeat("a", maxTokenFileSize+1), 0o600, []string{"larger than"}, false},
	} {
		if test.unixOnly && runtime.GOOS == "windows" {
			continue
		}
		file := write(test.name, test.content, test.mode)
		got, err := readTokenFile("--token-file", file)
		wantErrorNaming(t, "readTokenFile of "+test.name, err, append([]string{"--token-file", file}, test.names...)...)
		if got != "" {
			t.Errorf("readTokenFile of %s returned %q with its error", test.name, got)
		}
	}
	missing := filepath.Join(dir, "missing")
	_, err := readTokenFile(`"debug_token_file" in config.json`, missing)
	wantErrorNaming(t, "readTokenFile of a missing file", err, `"debug_token_file" in config.json`, missing, "no such file")
	_, err = readTokenFile("--token-file", dir)
	wantErrorNaming(t, "readTokenFile of a directory", err, dir, "not a regular file")
	_, err = readTokenFile("--token-file", "")
	wantErrorNaming(t, "readTokenFile of no file", err, "--token-file", "empty file name")
}
