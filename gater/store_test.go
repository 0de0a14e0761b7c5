package gater_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ipfs/go-datastore"
	leveldb "github.com/ipfs/go-ds-leveldb"
	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/gater"
)

// storedRules is the number of rules writeBlockRules writes.
const storedRules = 21

// writeBlockRules blocks testPeer(1) and 20 addresses (192.0.2.1-20).
func writeBlockRules(t *testing.T, g *gater.Gater) {
	t.Helper()
	require.NoError(t, g.BlockPeer(testPeer(t, 1)))
	for i := 1; i < storedRules; i++ {
		require.NoError(t, g.BlockAddr(ip(t, fmt.Sprintf("192.0.2.%d", i))))
	}
}

func ruleCount(g *gater.Gater) int {
	return len(g.BlockedPeers()) + len(g.BlockedAddrs()) + len(g.BlockedSubnets())
}

// flakyStore fails writes while fail is set. It is not a
// datastore.Batching, so the gater uses go-datastore's basic batch.
type flakyStore struct {
	datastore.Datastore
	fail atomic.Bool
}

func (s *flakyStore) Put(ctx context.Context, k datastore.Key, v []byte) error {
	if s.fail.Load() {
		return errDisk
	}
	return s.Datastore.Put(ctx, k, v)
}

func (s *flakyStore) Delete(ctx context.Context, k datastore.Key) error {
	if s.fail.Load() {
		return errDisk
	}
	return s.Datastore.Delete(ctx, k)
}

// A change that could not be saved is written by the next save that
// succeeds, so the store catches up with what is in force.
func TestUnsavedChangesAreSavedLater(t *testing.T) {
	inner := newStore()
	s := &flakyStore{Datastore: inner}
	g := newGater(t, s, nil)
	p1, p2, p3 := testPeer(t, 1), testPeer(t, 2), testPeer(t, 3)
	require.NoError(t, g.BlockPeer(p3))

	s.fail.Store(true)
	require.ErrorIs(t, g.BlockPeer(p1), gater.ErrNotPersisted)
	require.ErrorIs(t, g.UnblockPeer(p3), gater.ErrNotPersisted)
	requirePeerRefused(t, g, p1)
	requirePeerAllowed(t, g, p3)

	s.fail.Store(false)
	require.NoError(t, g.BlockPeer(p2))

	g2 := newGater(t, inner, nil) // and the manifest matches: New accepts it
	requirePeerRefused(t, g2, p1)
	requirePeerRefused(t, g2, p2)
	requirePeerAllowed(t, g2, p3)
	require.Len(t, g2.BlockedPeers(), 2)
}

// Issue #11 item 8, in the datastore: rules lost behind the gater's back
// (what goleveldb's silent recovery does) were not noticed: New started
// with what was left.
func TestStoreDamageRefused(t *testing.T) {
	ctx := context.Background()
	damaged := func(t *testing.T) datastore.Batching {
		ds := newStore()
		writeBlockRules(t, newGater(t, ds, nil))
		keys := ruleKeys(t, ds)
		require.Len(t, keys, storedRules)
		require.NoError(t, ds.Delete(ctx, datastore.NewKey(keys[0])))
		return ds
	}

	t.Run("a lost rule is refused", func(t *testing.T) {
		g, err := gater.New(damaged(t), nil)
		if err == nil {
			require.Failf(t, "damaged store opened", "opened with %d of %d rules", ruleCount(g), storedRules)
		}
		require.ErrorIs(t, err, gater.ErrStoreDamaged)
		var de *gater.StoreDamagedError
		require.ErrorAs(t, err, &de)
		require.Equal(t, storedRules, de.Recorded)
		require.Equal(t, storedRules-1, de.Readable)
		require.Contains(t, err.Error(), "21 rules recorded, 20 readable")
	})

	t.Run("recovery keeps the readable rules and rewrites the manifest", func(t *testing.T) {
		ds := damaged(t)
		g, err := gater.New(ds, nil, gater.RecoverStore(true))
		require.NoError(t, err)
		require.Equal(t, storedRules-1, ruleCount(g))
		d := g.StoreDamage()
		require.NotNil(t, d, "the loss is reported")
		require.Equal(t, storedRules, d.Recorded)
		require.Equal(t, storedRules-1, d.Readable)

		g2, err := gater.New(ds, nil) // clean again
		require.NoError(t, err)
		require.Nil(t, g2.StoreDamage())
		require.Equal(t, storedRules-1, ruleCount(g2))
	})

	t.Run("an extra rule is refused", func(t *testing.T) {
		ds := newStore()
		writeBlockRules(t, newGater(t, ds, nil))
		require.NoError(t, ds.Put(ctx, datastore.NewKey(rulesPrefix+"/block/ip/198.51.100.1"), nil))
		_, err := gater.New(ds, nil)
		require.ErrorIs(t, err, gater.ErrStoreDamaged)
		require.Contains(t, err.Error(), "21 rules recorded, 22 readable")
	})

	t.Run("an unreadable key is dropped on recovery", func(t *testing.T) {
		ds := newStore()
		writeBlockRules(t, newGater(t, ds, nil))
		bad := rulesPrefix + "/block/peer/notapeerid"
		require.NoError(t, ds.Put(ctx, datastore.NewKey(bad), nil))
		_, err := gater.New(ds, nil)
		require.ErrorIs(t, err, gater.ErrStoreDamaged)
		require.Contains(t, err.Error(), bad)

		g, err := gater.New(ds, nil, gater.RecoverStore(true))
		require.NoError(t, err)
		require.Equal(t, storedRules, ruleCount(g))
		require.NotContains(t, ruleKeys(t, ds), bad)
		_, err = gater.New(ds, nil)
		require.NoError(t, err)
	})

	t.Run("a garbled manifest is refused", func(t *testing.T) {
		ds := newStore()
		writeBlockRules(t, newGater(t, ds, nil))
		require.NoError(t, ds.Put(ctx, datastore.NewKey("/realmnet/manifest/gater"), []byte("v1 21 zz")))
		_, err := gater.New(ds, nil)
		require.ErrorIs(t, err, gater.ErrStoreDamaged)
		require.Contains(t, err.Error(), "rules recorded unknown")
	})

	t.Run("a store without a manifest (earlier version) opens and gets one", func(t *testing.T) {
		ds := newStore()
		for i := 1; i <= 3; i++ {
			require.NoError(t, ds.Put(ctx, datastore.NewKey(fmt.Sprintf("%s/block/ip/192.0.2.%d", rulesPrefix, i)), nil))
		}
		g, err := gater.New(ds, nil)
		require.NoError(t, err)
		require.Len(t, g.BlockedAddrs(), 3)
		require.Nil(t, g.StoreDamage())
		// The manifest was written: a rule lost from now on is noticed.
		require.NoError(t, ds.Delete(ctx, datastore.NewKey(rulesPrefix+"/block/ip/192.0.2.1")))
		_, err = gater.New(ds, nil)
		require.ErrorIs(t, err, gater.ErrStoreDamaged)
	})
}

// newestFile returns the newest (highest-numbered) file in dir whose name
// ends in ext.
func newestFile(t *testing.T, dir, ext string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ext) {
			names = append(names, e.Name())
		}
	}
	require.NotEmpty(t, names, "no %s file in %s", ext, dir)
	slices.Sort(names) // goleveldb pads the numbers to 6 digits
	return filepath.Join(dir, names[len(names)-1])
}

// Issue #11 item 8, on disk: one flipped byte in the LevelDB journal and
// the node started with 0 of 21 block rules (go-ds-leveldb's defaults drop
// the damaged journal block, and it answers other corruption with
// leveldb.RecoverFile). Open refuses instead, naming the directory and the
// loss; RecoverStore(true) starts with what is readable and reports it.
func TestOpenDamagedLevelDB(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flushed bool // rules moved from the journal to a table file
		damage  func(t *testing.T, dir string)
	}{
		{"flipped byte in the journal", false, func(t *testing.T, dir string) {
			path := newestFile(t, dir, ".log")
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			b[10] ^= 0x40 // inside the first record's payload
			require.NoError(t, os.WriteFile(path, b, 0o600))
		}},
		{"truncated journal", false, func(t *testing.T, dir string) {
			path := newestFile(t, dir, ".log")
			info, err := os.Stat(path)
			require.NoError(t, err)
			require.NoError(t, os.Truncate(path, info.Size()-3)) // inside the last record
		}},
		{"deleted table file", true, func(t *testing.T, dir string) {
			require.NoError(t, os.Remove(newestFile(t, dir, ".ldb")))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "gater")
			g, err := gater.Open(dir, nil)
			require.NoError(t, err)
			writeBlockRules(t, g)
			require.NoError(t, g.Close())
			if tc.flushed {
				g, err := gater.Open(dir, nil) // replays the journal into a table
				require.NoError(t, err)
				require.Equal(t, storedRules, ruleCount(g))
				require.NoError(t, g.Close())
			}
			tc.damage(t, dir)

			g, err = gater.Open(dir, nil)
			if err == nil {
				n := ruleCount(g)
				_ = g.Close()
				require.Failf(t, "damaged store opened", "opened with %d of %d rules", n, storedRules)
			}
			require.ErrorIs(t, err, gater.ErrStoreDamaged)
			var de *gater.StoreDamagedError
			require.ErrorAs(t, err, &de)
			require.Equal(t, dir, de.Dir)
			require.Contains(t, err.Error(), dir, "the error names the directory")
			require.Equal(t, storedRules, de.Recorded, "%v", err)
			require.Less(t, de.Readable, storedRules, "%v", err)
			require.GreaterOrEqual(t, de.Readable, 0, "%v", err)
			require.Contains(t, err.Error(), fmt.Sprintf("%d rules recorded, %d readable", storedRules, de.Readable))
			t.Logf("refused: %v", err)

			// Refusing left the directory as it was: refused again.
			_, err = gater.Open(dir, nil)
			require.ErrorIs(t, err, gater.ErrStoreDamaged)

			g, err = gater.Open(dir, nil, gater.RecoverStore(true))
			require.NoError(t, err)
			got := g.StoreDamage()
			require.NotNil(t, got, "the loss is reported")
			require.Equal(t, storedRules, got.Recorded)
			require.Equal(t, de.Readable, got.Readable, "recovery keeps what the refusal counted as readable")
			require.Equal(t, got.Readable, ruleCount(g))
			require.NoError(t, g.Close())

			g, err = gater.Open(dir, nil) // rewritten: opens clean
			require.NoError(t, err)
			require.Nil(t, g.StoreDamage())
			require.Equal(t, de.Readable, ruleCount(g))
			require.NoError(t, g.Close())
		})
	}
}

// A LevelDB store written by the previous version (go-ds-leveldb's
// defaults, no manifest) opens with its rules, and gets a manifest.
func TestOpenLegacyLevelDB(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gater")
	ds, err := leveldb.NewDatastore(dir, nil)
	require.NoError(t, err)
	for i := 1; i <= 3; i++ {
		require.NoError(t, ds.Put(context.Background(), datastore.NewKey(fmt.Sprintf("%s/block/ip/192.0.2.%d", rulesPrefix, i)), nil))
	}
	require.NoError(t, ds.Close())

	g, err := gater.Open(dir, nil)
	require.NoError(t, err)
	require.Len(t, g.BlockedAddrs(), 3)
	require.NoError(t, g.BlockPeer(testPeer(t, 1)))
	require.NoError(t, g.Close())

	g, err = gater.Open(dir, nil)
	require.NoError(t, err)
	require.Equal(t, 4, ruleCount(g))
	require.NoError(t, g.Close())
}

// Open's other errors are not damage.
func TestOpenErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gater")
	g, err := gater.Open(dir, nil)
	require.NoError(t, err)
	defer g.Close()
	_, err = gater.Open(dir, nil) // locked by g
	require.Error(t, err)
	require.False(t, errors.Is(err, gater.ErrStoreDamaged), "%v", err)
	require.Contains(t, err.Error(), dir)
}
