package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"strings"
	"unicode"
)

// minDebugTokenBytes is the shortest debug endpoint token: node.DebugToken
// refuses shorter ones, so a shorter file is refused before anything
// starts, naming the file rather than the option.
const minDebugTokenBytes = 16

// maxTokenFileSize caps what readTokenFile reads: a token is a line of tens
// of bytes; a larger file is the wrong file (a key, a log), refused before
// its content could end up in a request header.
const maxTokenFileSize = 4 << 10

// readTokenFile returns the debug endpoint token stored in path, as
// `realmnet run --debug-token-file` and the --token-file of inspect and
// doctor read it: the file's content without its trailing newline ("\n" or
// "\r\n"). source names where path came from ("--token-file", or a config
// key and file) and starts every error, which also names path. It refuses:
//
//   - on Unix, a file that group or others may access (mode & 0o077 != 0):
//     the token guards pprof and the node's state, so it is kept like a
//     private key (chmod 600);
//   - a file larger than maxTokenFileSize, or an empty one;
//   - a token shorter than minDebugTokenBytes bytes;
//   - a token with a control character, or with white space at either end:
//     HTTP trims the Authorization header, so such a token would never
//     match.
func readTokenFile(source, path string) (string, error) {
	data, err := readPrivateFile(source, path, "token", maxTokenFileSize)
	if err != nil {
		return "", err
	}
	token := strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
	switch {
	case token == "":
		return "", fmt.Errorf("%s %s: empty; want a token of at least %d bytes", source, path, minDebugTokenBytes)
	case strings.IndexFunc(token, unicode.IsControl) >= 0:
		return "", fmt.Errorf("%s %s: the token holds a control character (one line, one token)", source, path)
	case strings.TrimSpace(token) != token:
		return "", fmt.Errorf("%s %s: the token starts or ends with white space", source, path)
	case len(token) < minDebugTokenBytes:
		return "", fmt.Errorf("%s %s: the token is %d bytes; want at least %d", source, path, len(token), minDebugTokenBytes)
	}
	return token, nil
}

// readPrivateFile returns the content of path, a secret (what: "token",
// "PSK") kept like a private key. source names where path came from and
// starts every error, which also names path. It refuses an empty name, a
// missing file, one that is not regular, on Unix one that group or others
// may access (mode & 0o077 != 0: chmod 600), and one larger than maxSize
// bytes, before reading more than maxSize+1 bytes.
func readPrivateFile(source, path, what string, maxSize int64) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("%s: empty file name", source)
	}
	file, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s %s: no such file", source, path)
		}
		return nil, fmt.Errorf("%s %s: %w", source, path, unwrapPathError(err))
	}
	defer file.Close()
	info, err := file.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", source, path, unwrapPathError(err))
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("%s %s: not a regular file", source, path)
	}
	// Windows has no such mode bits; its ACLs are out of reach here.
	if mode := info.Mode().Perm(); runtime.GOOS != "windows" && mode&0o077 != 0 {
		return nil, fmt.Errorf("%s %s: the file's mode is %#o: group or others may read it; "+
			"a %s file must be private to its owner (chmod 600 %s)", source, path, mode, what, path)
	}
	data, err := io.ReadAll(io.LimitReader(file, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", source, path, unwrapPathError(err))
	}
	if int64(len(data)) > maxSize {
		return nil, fmt.Errorf("%s %s: larger than %d bytes; not a %s file", source, path, maxSize, what)
	}
	return data, nil
}
