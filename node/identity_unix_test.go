//go:build !windows

package node_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/node"
)

// TestIdentityFileFailsClosed proves that the identity file cannot be
// swapped for something that makes the node run with a key nobody chose,
// with a key others can read, or not start at all (issue #11 item 10):
//   - a dangling symbolic link (the secret not mounted yet, say) is refused,
//     naming the link and its target, and no key is created in its place
//     (before: a fresh key was written there, and kept once the real secret
//     appeared);
//   - a FIFO at the path is refused at once (before: New hung reading it);
//   - a key readable by group or others is refused, as ssh does (before:
//     accepted silently), and so is a directory.
func TestIdentityFileFailsClosed(t *testing.T) {
	dir := t.TempDir()
	newNode := func(path string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n, err := node.New(ctx, node.ListenAddrStrings(testkit.Loopback), node.IdentityFile(path))
		if err == nil {
			_ = n.Close()
		}
		return err
	}

	// Dangling symbolic link.
	secret := filepath.Join(dir, "mounted", "secret.key")
	link := filepath.Join(dir, "link.key")
	require.NoError(t, os.Symlink(secret, link))
	err := newNode(link)
	require.ErrorContains(t, err, link)
	require.ErrorContains(t, err, "symbolic link")
	require.ErrorContains(t, err, secret)
	_, statErr := os.Lstat(secret)
	require.ErrorIs(t, statErr, os.ErrNotExist, "a key was created at the link's target")
	target, err := os.Readlink(link)
	require.NoError(t, err)
	require.Equal(t, secret, target, "the link was replaced")

	// A link to a real key is followed.
	require.NoError(t, os.MkdirAll(filepath.Dir(secret), 0o700))
	_, err = node.CreateIdentity(secret)
	require.NoError(t, err)
	require.NoError(t, newNode(link))

	// FIFO: refused at once, not read.
	fifo := filepath.Join(dir, "fifo.key")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	done := make(chan error, 1)
	go func() { done <- newNode(fifo) }()
	select {
	case err := <-done:
		require.ErrorContains(t, err, fifo)
		require.ErrorContains(t, err, "not a regular file")
	case <-time.After(10 * time.Second):
		// Unblock the reader so the goroutine ends, then fail.
		if w, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			_ = w.Close()
		}
		<-done
		t.Fatal("New hung on a FIFO at the identity path")
	}

	// Keys readable or writable by others, and a directory.
	for _, mode := range []os.FileMode{0o644, 0o666, 0o640, 0o602} {
		path := filepath.Join(dir, "open.key")
		_ = os.Remove(path)
		_, err := node.CreateIdentity(path)
		require.NoError(t, err)
		require.NoError(t, os.Chmod(path, mode))
		err = newNode(path)
		require.ErrorIs(t, err, node.ErrIdentityPermissions, "mode %04o", mode)
		require.ErrorContains(t, err, path)
		require.ErrorContains(t, err, "chmod 600")
	}
	require.ErrorContains(t, newNode(dir), "not a regular file")
}
