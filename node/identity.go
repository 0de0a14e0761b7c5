package node

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/google/renameio/v2"
	"github.com/libp2p/go-libp2p/core/crypto"
)

// maxIdentityFileSize caps what LoadOrCreateIdentity reads: a marshalled
// Ed25519 key is 68 bytes, an RSA-4096 key about 2.4 KiB.
const maxIdentityFileSize = 16 << 10

// LoadOrCreateIdentity returns the private key stored at path. When the file
// does not exist it generates an Ed25519 key and writes it there atomically
// (temporary file, fsync, rename — github.com/google/renameio) with mode 0600,
// so a crash never leaves a half-written identity. The file holds the key in
// libp2p's protobuf encoding (crypto.MarshalPrivateKey).
//
// Errors name the path: the file cannot be read, is larger than 16 KiB, or
// does not hold a valid key. An existing file is never modified.
func LoadOrCreateIdentity(path string) (crypto.PrivKey, error) {
	if path == "" {
		return nil, errors.New("node: identity file path is empty")
	}
	data, err := readCapped(path, maxIdentityFileSize)
	switch {
	case err == nil:
		key, err := crypto.UnmarshalPrivateKey(data)
		if err != nil {
			return nil, fmt.Errorf("node: identity file %s does not hold a libp2p private key: %w", path, err)
		}
		return key, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("node: read identity file: %w", err)
	}

	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("node: generate identity: %w", err)
	}
	data, err = crypto.MarshalPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("node: marshal identity: %w", err)
	}
	if err := renameio.WriteFile(path, data, 0o600); err != nil {
		return nil, fmt.Errorf("node: write identity file %s: %w", path, err)
	}
	return key, nil
}

// readCapped reads a whole file that must not exceed limit bytes.
func readCapped(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than the %d bytes an identity may have", path, limit)
	}
	return data, nil
}
