package gater

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ipfs/go-datastore"
	dsleveldb "github.com/ipfs/go-ds-leveldb"
	"github.com/syndtr/goleveldb/leveldb"
	lderrors "github.com/syndtr/goleveldb/leveldb/errors"
	"github.com/syndtr/goleveldb/leveldb/opt"

	"github.com/realmnet/realmnet/hooks"
)

// Errors of the rule store.
var (
	// ErrNotPersisted: a rule change is in force (in memory: the peer or
	// address is refused or admitted from now on, and a block closed the
	// connections it covers) but could not be written to the datastore, so
	// it is lost at the next start unless a later change is saved (each
	// save also writes every change still pending). The error wraps the
	// datastore's.
	ErrNotPersisted = errors.New("gater: rule is in force but not persisted")
	// ErrStoreDamaged: the rule store lost or garbled rules; the error is a
	// *StoreDamagedError.
	ErrStoreDamaged = errors.New("gater: rule store is damaged")
)

// StoreDamagedError is returned by New and Open when the stored rules do
// not match the manifest written with them (rules lost, truncated or
// garbled), when a rule key cannot be read, or (Open) when LevelDB reports
// corruption. errors.Is(err, ErrStoreDamaged) holds; Unwrap gives the cause.
// With RecoverStore(true) the gater starts anyway and Gater.StoreDamage
// returns this error.
type StoreDamagedError struct {
	// Dir is the LevelDB directory (Open); empty for New.
	Dir string
	// Recorded is the number of rules the manifest records; -1 when the
	// manifest itself was lost or cannot be read.
	Recorded int
	// Readable is the number of rules that could be read.
	Readable int
	// Err is the cause: LevelDB's corruption error, the checksum mismatch,
	// the unreadable key.
	Err error
}

func (e *StoreDamagedError) Error() string {
	var b strings.Builder
	b.WriteString("gater: rule store")
	if e.Dir != "" {
		fmt.Fprintf(&b, " in %s", e.Dir)
	}
	b.WriteString(" is damaged: ")
	if e.Recorded < 0 {
		b.WriteString("rules recorded unknown (no readable manifest)")
	} else {
		fmt.Fprintf(&b, "%d rules recorded", e.Recorded)
	}
	if e.Readable < 0 {
		b.WriteString(", rules readable unknown")
	} else {
		fmt.Fprintf(&b, ", %d readable", e.Readable)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Is makes errors.Is(err, ErrStoreDamaged) hold.
func (e *StoreDamagedError) Is(target error) bool { return target == ErrStoreDamaged }

// Unwrap returns the cause.
func (e *StoreDamagedError) Unwrap() error { return e.Err }

// Option configures New and Open.
type Option func(*options)

type options struct {
	recoverStore bool
}

// RecoverStore(true) lets New and Open start from a damaged rule store
// (default false: they refuse with a *StoreDamagedError). On recovery the
// readable rules are kept, unreadable keys are deleted, the loss is logged
// at error level (and returned by Gater.StoreDamage), and the manifest is
// rewritten to match what was kept, so the next start is clean. Opt in for
// one start after reading the refusal; rules that were lost must be added
// again.
func RecoverStore(enabled bool) Option {
	return func(o *options) { o.recoverStore = enabled }
}

// manifestKey holds the manifest, outside rulesPrefix so that a previous
// version (which reads every key under the prefix as a rule) ignores it.
var manifestKey = datastore.NewKey("/realmnet/manifest/gater")

// manifestFile is a copy of the manifest next to the LevelDB files (Open
// only), written after each saved change: it survives the loss of the whole
// LevelDB content, including the manifest key. goleveldb ignores files
// whose names it does not know.
const manifestFile = "realmnet-gater.manifest"

// digest is the manifest: the number of stored rules and the XOR of the
// SHA-256 of their keys. XOR makes it order-independent and updatable per
// change in O(1) (a SHA-256 over the sorted keys would cost O(n log n) per
// change with 10,000 subnet rules). It detects lost, truncated or garbled
// rules; it is no defence against someone who can write the directory.
type digest struct {
	count int
	sum   [sha256.Size]byte
}

func (d *digest) toggle(key string) {
	h := sha256.Sum256([]byte(key))
	for i := range d.sum {
		d.sum[i] ^= h[i]
	}
}

func (d *digest) add(key string)    { d.count++; d.toggle(key) }
func (d *digest) remove(key string) { d.count--; d.toggle(key) }

const manifestVersion = "v1"

func (d digest) encode() []byte {
	return fmt.Appendf(nil, "%s %d %s", manifestVersion, d.count, hex.EncodeToString(d.sum[:]))
}

func parseDigest(b []byte) (digest, error) {
	var d digest
	f := strings.Fields(string(b))
	if len(f) != 3 || f[0] != manifestVersion {
		return d, fmt.Errorf("manifest %q: unknown format", b)
	}
	n, err := strconv.Atoi(f[1])
	if err != nil || n < 0 {
		return d, fmt.Errorf("manifest %q: bad rule count", b)
	}
	sum, err := hex.DecodeString(f[2])
	if err != nil || len(sum) != sha256.Size {
		return d, fmt.Errorf("manifest %q: bad checksum", b)
	}
	d.count = n
	copy(d.sum[:], sum)
	return d, nil
}

// strictOptions make goleveldb report corruption instead of dropping what
// it cannot read: by default (and so in go-ds-leveldb) a damaged journal
// block is skipped silently, and go-ds-leveldb answers any corruption on
// open with leveldb.RecoverFile, which keeps whatever tables remain.
var strictOptions = opt.Options{Strict: opt.StrictAll}

// Open opens (creating it if needed) the LevelDB rule store in dir
// (github.com/ipfs/go-ds-leveldb) and returns a gater over it, as New does;
// Close closes the store. Unlike a store opened with go-ds-leveldb's
// defaults, a damaged one is refused: corruption LevelDB detects (a damaged
// or truncated journal, a missing or damaged table file) and rules missing
// according to the manifest return a *StoreDamagedError naming dir, with the
// number of rules recorded and readable, unless RecoverStore(true) is given.
// Other errors: the directory cannot be created, the store is locked by
// another process, the recovery's rewrite fails.
//
// Limits: a store rolled back to an earlier consistent state (the journal
// cut exactly at a record boundary, an old copy of the directory) looks
// intact; a directory removed as a whole is a new, empty store.
func Open(dir string, registry *hooks.Registry, opts ...Option) (*Gater, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("gater: create rule store directory: %w", err)
	}
	side, sideErr := readManifestFile(dir)
	if sideErr != nil {
		if !o.recoverStore {
			return nil, &StoreDamagedError{Dir: dir, Recorded: -1, Readable: -1, Err: sideErr}
		}
		log.Errorw("gater: rule manifest file unreadable; recovering without it", "dir", dir, "error", sideErr)
	}
	// Probe with strict options first: go-ds-leveldb would recover silently.
	var corrupt error
	db, err := leveldb.OpenFile(dir, &strictOptions)
	switch {
	case err == nil:
		if err := db.Close(); err != nil {
			return nil, fmt.Errorf("gater: open rule store in %s: %w", dir, err)
		}
	case lderrors.IsCorrupted(err):
		corrupt = fmt.Errorf("LevelDB reports corruption: %w", err)
		if !o.recoverStore {
			return nil, inspect(dir, side, corrupt)
		}
	default:
		return nil, fmt.Errorf("gater: open rule store in %s: %w", dir, err)
	}
	var dsOpts *dsleveldb.Options
	if corrupt == nil {
		strict := dsleveldb.Options(strictOptions)
		dsOpts = &strict
	} // else: go-ds-leveldb's defaults, which recover what they can
	ds, err := dsleveldb.NewDatastore(dir, dsOpts)
	if err != nil {
		return nil, fmt.Errorf("gater: open rule store in %s: %w", dir, err)
	}
	g, err := newGater(ds, registry, o, storeInfo{dir: dir, side: side, corrupt: corrupt})
	if err != nil {
		_ = ds.Close()
		return nil, err
	}
	g.closer = ds
	return g, nil
}

// storeInfo is what Open knows about the store beyond the datastore.
type storeInfo struct {
	dir     string  // "" for New
	side    *digest // the manifest file, if any
	corrupt error   // LevelDB's corruption error, recovered from
}

// inspect builds the refusal for a store LevelDB reports corrupt: it
// recovers a scratch copy of dir (dir itself is left as it is) to count the
// readable rules and find the manifest.
func inspect(dir string, side *digest, cause error) error {
	damage := &StoreDamagedError{Dir: dir, Recorded: -1, Readable: -1, Err: cause}
	if side != nil {
		damage.Recorded = side.count
	}
	tmp, err := os.MkdirTemp("", "realmnet-gater-inspect-")
	if err != nil {
		return damage
	}
	defer os.RemoveAll(tmp)
	if err := copyFiles(dir, tmp); err != nil {
		return damage
	}
	ds, err := dsleveldb.NewDatastore(tmp, nil) // recovers the copy
	if err != nil {
		return damage
	}
	defer ds.Close()
	s, err := scan(context.Background(), ds)
	if err != nil {
		return damage
	}
	damage.Readable = len(s.rules)
	if damage.Recorded < 0 && s.manifest != nil {
		damage.Recorded = s.manifest.count
	}
	return damage
}

// copyFiles copies dir's regular files (not LOCK) into dst.
func copyFiles(dir, dst string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || e.Name() == "LOCK" {
			continue
		}
		if err := copyFile(filepath.Join(dir, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}

// readManifestFile reads dir's manifest file: nil if there is none, an
// error if it cannot be parsed.
func readManifestFile(dir string) (*digest, error) {
	b, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", manifestFile, err)
	}
	d, err := parseDigest(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", manifestFile, err)
	}
	return &d, nil
}

// writeManifestFile replaces dir's manifest file (write and rename).
func writeManifestFile(dir string, d digest) error {
	path := filepath.Join(dir, manifestFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, d.encode(), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Close closes the datastore Open opened; for a gater made by New it does
// nothing (the caller owns the datastore). Rule changes after Close are in
// force but fail with ErrNotPersisted.
func (g *Gater) Close() error {
	if g.closer == nil {
		return nil
	}
	return g.closer.Close()
}

// StoreDamage returns the damage New or Open found and recovered from
// (RecoverStore(true)), or nil if the store was intact.
func (g *Gater) StoreDamage() *StoreDamagedError { return g.damage }

// scanned is the content of a rule store.
type scanned struct {
	rules       []string // keys of the readable rules
	unreadable  []string // keys under rulesPrefix that are not rules
	errs        []error  // why, one per unreadable key
	manifest    *digest  // nil if there is none
	manifestErr error    // the manifest cannot be read
}

// scan reads the rule keys and the manifest. The error is the datastore's.
func scan(ctx context.Context, ds datastore.Datastore) (*scanned, error) {
	s := &scanned{}
	b, err := ds.Get(ctx, manifestKey)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("gater: read rule manifest: %w", err)
	default:
		d, err := parseDigest(b)
		if err != nil {
			s.manifestErr = err
		} else {
			s.manifest = &d
		}
	}
	res, err := ds.Query(ctx, queryRules)
	if err != nil {
		return nil, fmt.Errorf("gater: read rules: %w", err)
	}
	defer res.Close()
	for r := range res.Next() {
		if r.Error != nil {
			return nil, fmt.Errorf("gater: read rules: %w", r.Error)
		}
		if err := addRuleKey(newRuleSet(), newRuleSet(), r.Key); err != nil {
			s.unreadable = append(s.unreadable, r.Key)
			s.errs = append(s.errs, err)
			continue
		}
		s.rules = append(s.rules, r.Key)
	}
	return s, nil
}
