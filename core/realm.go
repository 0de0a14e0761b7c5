package core

// RealmID identifies a realm below the realm package: 16 bytes of
// HKDF-SHA256 output, hex-encoded (32 characters; see docs/realms.md for the
// key schedule). It names the realm's connection sub-pool (RealmPool), its
// resource scope and its metrics label. It is never sent on the wire, and
// knowing it gives no key. The zero value names no realm.
type RealmID string

// String returns the hex form.
func (id RealmID) String() string { return string(id) }
