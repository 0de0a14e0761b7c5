package node_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/realmnet/realmnet/gater"
	"github.com/realmnet/realmnet/internal/testkit"
	"github.com/realmnet/realmnet/internal/testnode"
	"github.com/realmnet/realmnet/node"
)

// TestDamagedGaterStoreRefusesToStart proves issue #11 item 8 through the
// node: with one flipped byte in the gater store's LevelDB journal, New
// refuses to start, naming the directory and how many of the 21 block rules
// were lost (before: the node started with 0 of 21 rules and the blocked
// peer connected); with RecoverGaterStore it starts and reports the loss.
func TestDamagedGaterStoreRefusesToStart(t *testing.T) {
	dataDir := t.TempDir()
	n := testnode.New(t, node.DataDir(dataDir))
	for range 21 {
		require.NoError(t, n.Gater().BlockPeer(testkit.PeerID(t)))
	}
	require.NoError(t, n.Close())

	dir := filepath.Join(dataDir, "gater")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var journals []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".log") {
			journals = append(journals, e.Name())
		}
	}
	require.NotEmpty(t, journals)
	slices.Sort(journals)
	journal := filepath.Join(dir, journals[len(journals)-1])
	b, err := os.ReadFile(journal)
	require.NoError(t, err)
	b[10] ^= 0x40 // inside the first record's payload
	require.NoError(t, os.WriteFile(journal, b, 0o600))

	_, err = node.New(context.Background(), node.ListenAddrStrings(testkit.Loopback), node.DataDir(dataDir))
	require.ErrorIs(t, err, gater.ErrStoreDamaged)
	require.ErrorContains(t, err, dir)
	require.ErrorContains(t, err, "21 rules recorded")

	recovered := testnode.New(t, node.DataDir(dataDir), node.RecoverGaterStore())
	require.NotNil(t, recovered.Gater().StoreDamage(), "the loss is reported")
	require.NoError(t, recovered.Close())
	// The store is consistent again: a plain start works.
	testnode.New(t, node.DataDir(dataDir))
}
