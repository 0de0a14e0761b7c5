package node

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/libp2p/go-libp2p/core/crypto"
)

// maxIdentityFileSize caps what LoadIdentity reads: a marshalled Ed25519
// key is 68 bytes, an RSA-4096 key about 2.4 KiB.
const maxIdentityFileSize = 16 << 10

// ErrIdentityExists is returned by CreateIdentity when the file is already
// there: an identity is never overwritten.
var ErrIdentityExists = errors.New("node: identity file already exists")

// LoadIdentity returns the private key stored at path, in libp2p's protobuf
// encoding (crypto.MarshalPrivateKey). It never creates or modifies a file.
//
// The file must be a regular file (a symbolic link to one is followed), so
// that a FIFO or a device at the path cannot hang or feed the node; and,
// except on Windows (whose permissions are ACLs, not mode bits), it must not
// be readable or writable by group or others, as ssh requires of private
// keys: a key others can read is not secret any more. Errors name the path:
// the file does not exist (matches fs.ErrNotExist; a dangling symbolic link
// says so and does not match, so that LoadOrCreateIdentity never puts a new
// key in place of a missing secret), is not a regular file, is readable by
// others (ErrIdentityPermissions), cannot be read, is larger than 16 KiB, or
// does not hold a valid key.
func LoadIdentity(path string) (crypto.PrivKey, error) {
	if path == "" {
		return nil, errors.New("node: identity file path is empty")
	}
	if err := checkIdentityFile(path); err != nil {
		return nil, err
	}
	data, err := readCapped(path, maxIdentityFileSize)
	if err != nil {
		return nil, fmt.Errorf("node: read identity file %s: %w", path, err)
	}
	key, err := crypto.UnmarshalPrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("node: identity file %s does not hold a libp2p private key: %w", path, err)
	}
	return key, nil
}

// ErrIdentityPermissions is returned by LoadIdentity for a key file that
// group or others may read or write (mode bits 077; not checked on Windows).
var ErrIdentityPermissions = errors.New("node: identity file is accessible by others")

// checkIdentityFile refuses what LoadIdentity must not read; see there.
func checkIdentityFile(path string) error {
	link, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("node: read identity file %s: %w", path, err)
	}
	info, err := os.Stat(path)
	if err != nil {
		if link.Mode()&fs.ModeSymlink != 0 && errors.Is(err, fs.ErrNotExist) {
			target, _ := os.Readlink(path)
			return fmt.Errorf("node: identity file %s is a symbolic link to %s, which does not exist; refusing to create a key in its place", path, target)
		}
		return fmt.Errorf("node: read identity file %s: %w", path, err)
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("node: identity file %s is not a regular file (%s)", path, info.Mode().Type())
	}
	if runtime.GOOS != "windows" && info.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o, want 0600 or stricter (chmod 600 %s)", ErrIdentityPermissions, path, info.Mode().Perm(), path)
	}
	return nil
}

// CreateIdentity generates an Ed25519 key and writes it at path atomically,
// with mode 0600: the key goes to a temporary file in the same directory,
// is flushed to disk (fsync), then linked to path — which fails if path
// exists — and the temporary name is removed, so neither a crash nor a
// concurrent CreateIdentity ever leaves a half-written or replaced
// identity. Where the file system has no hard links, the temporary file is
// renamed instead (atomic on every platform Go supports, but then a file
// created at path meanwhile by someone else is replaced). Only the standard
// library is used, so this works on Linux, macOS and Windows alike.
//
// Errors name path (never the temporary name): ErrIdentityExists when path
// exists; a missing directory or a denied write otherwise.
func CreateIdentity(path string) (crypto.PrivKey, error) {
	if path == "" {
		return nil, errors.New("node: identity file path is empty")
	}
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("node: generate identity: %w", err)
	}
	data, err := crypto.MarshalPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("node: marshal identity: %w", err)
	}
	if err := writeNewFileAtomic(path, data); err != nil {
		return nil, err
	}
	return key, nil
}

// LoadOrCreateIdentity returns the private key stored at path (LoadIdentity)
// or, when the file does not exist, creates one there (CreateIdentity). If
// another process creates the file between the two steps, its key is
// loaded. An existing file is never modified; errors name the path.
func LoadOrCreateIdentity(path string) (crypto.PrivKey, error) {
	key, err := LoadIdentity(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	key, err = CreateIdentity(path)
	if errors.Is(err, ErrIdentityExists) {
		return LoadIdentity(path)
	}
	return key, err
}

// writeNewFileAtomic writes data to a new file at path with mode 0600; see
// CreateIdentity. Errors name path and say why, never the temporary name.
func writeNewFileAtomic(path string, data []byte) (err error) {
	fail := func(what string, err error) error {
		var pathErr *fs.PathError
		if errors.As(err, &pathErr) {
			err = pathErr.Err // the temporary name means nothing to the user
		}
		return fmt.Errorf("node: write identity file %s: %s: %w", path, what, err)
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%w: %s", ErrIdentityExists, path)
	}
	dir := filepath.Dir(path)
	if info, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fail("directory "+dir+" does not exist", fs.ErrNotExist)
		}
		return fail("directory "+dir, err)
	} else if !info.IsDir() {
		return fail(dir+" is not a directory", fs.ErrInvalid)
	}
	// os.CreateTemp creates the file with mode 0600.
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fail("create a file in "+dir, err)
	}
	tmpName := tmp.Name()
	defer func() {
		// Whatever happened, the temporary name goes: after a successful
		// link the file lives on at path.
		_ = os.Remove(tmpName)
	}()
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return fail("write", err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fail("flush to disk", err)
	}
	if err := tmp.Close(); err != nil {
		return fail("close", err)
	}
	if err := os.Link(tmpName, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s", ErrIdentityExists, path)
		}
		// No hard links here (some network and FAT file systems).
		if err := os.Rename(tmpName, path); err != nil {
			return fail("rename into place", err)
		}
	}
	syncDir(dir)
	return nil
}

// syncDir flushes a directory entry to disk where the platform allows it
// (POSIX; Windows cannot open a directory for syncing, and NTFS journals
// the rename itself). Best effort: the key is already on disk.
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	_ = d.Sync()
	_ = d.Close()
}

// readCapped reads a whole file that must not exceed limit bytes.
// The file is checked again once open: a FIFO swapped in after
// checkIdentityFile would make Open block, but a device or a directory is
// still refused here.
func readCapped(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if info, err := f.Stat(); err != nil {
		return nil, err
	} else if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file (%s)", info.Mode().Type())
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("larger than the %d bytes an identity may have", limit)
	}
	return data, nil
}
