package realm

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"
	"github.com/realmnet/realmnet/core"
	"golang.org/x/crypto/hkdf"
)

// MinPSKLength is the shortest pre-shared key PSK accepts, in bytes
// (128 bits, the security level of the HKDF-SHA256 outputs' use as MAC keys).
const MinPSKLength = 16

// MaxNameLength is the longest realm name JoinRealm accepts, in bytes.
const MaxNameLength = 256

// Salts of the key schedule, one per purpose; the realm name is the HKDF info.
// Changing any of them changes every realm's identity (hence the version).
const (
	saltID         = "realmnet/realm/id/v1"
	saltAuth       = "realmnet/realm/auth/v1"
	saltRendezvous = "realmnet/realm/rendezvous/v1"
	saltTopics     = "realmnet/realm/topics/v1"
	openRealmLabel = "realmnet/realm/open/v1"
)

// keys is a realm's key schedule (see docs/realms.md):
//
//	secret     = PSK, or SHA-256("realmnet/realm/open/v1" ‖ name) for an open realm
//	id         = HKDF-SHA256(secret, salt "realmnet/realm/id/v1",         info name)[:16]
//	auth       = HKDF-SHA256(secret, salt "realmnet/realm/auth/v1",       info name)[:32]
//	rendezvous = HKDF-SHA256(secret, salt "realmnet/realm/rendezvous/v1", info name)[:32]
//	topics     = HKDF-SHA256(secret, salt "realmnet/realm/topics/v1",     info name)[:32]
//
// Each output comes from its own HKDF extraction (RFC 5869) with its own salt,
// so learning one (the ID from metrics, the rendezvous CID from the DHT)
// tells nothing about the auth key.
type keys struct {
	id         core.RealmID
	idBytes    [16]byte
	auth       [32]byte
	rendezvous [32]byte
	topics     [32]byte
}

func deriveKeys(name string, psk []byte) keys {
	secret := psk
	if len(psk) == 0 {
		sum := sha256.Sum256(append([]byte(openRealmLabel), name...))
		secret = sum[:]
	}
	var k keys
	expand(secret, saltID, name, k.idBytes[:])
	expand(secret, saltAuth, name, k.auth[:])
	expand(secret, saltRendezvous, name, k.rendezvous[:])
	expand(secret, saltTopics, name, k.topics[:])
	k.id = core.RealmID(hex.EncodeToString(k.idBytes[:]))
	return k
}

func expand(secret []byte, salt, info string, out []byte) {
	r := hkdf.New(sha256.New, secret, []byte(salt), []byte(info))
	if _, err := io.ReadFull(r, out); err != nil {
		// HKDF-SHA256 yields up to 255×32 bytes; 32 cannot fail.
		panic(fmt.Sprintf("realm: hkdf: %v", err))
	}
}

// rendezvousCID is the content ID members provide in the DHT: a raw CIDv1
// over the SHA-256 multihash of the rendezvous key.
func (k *keys) rendezvousCID() cid.Cid {
	sum, err := mh.Sum(k.rendezvous[:], mh.SHA2_256, -1)
	if err != nil {
		panic(fmt.Sprintf("realm: multihash: %v", err))
	}
	return cid.NewCidV1(cid.Raw, sum)
}

// mac computes HMAC-SHA256(auth key, label ‖ fields…); a peer ID field is
// length-prefixed so no two field lists encode alike.
type macBuilder struct{ h hash.Hash }

func newMAC(key *[32]byte, label string) macBuilder {
	m := macBuilder{h: hmac.New(sha256.New, key[:])}
	m.h.Write([]byte(label))
	return m
}

func (m macBuilder) bytes(b []byte) macBuilder { m.h.Write(b); return m }

func (m macBuilder) peer(p peer.ID) macBuilder {
	var n [binary.MaxVarintLen64]byte
	m.h.Write(n[:binary.PutUvarint(n[:], uint64(len(p)))])
	m.h.Write([]byte(p))
	return m
}

func (m macBuilder) sum() (out [32]byte) {
	m.h.Sum(out[:0])
	return out
}

// helloTag is the tag of a hello from initiator to responder:
// HMAC(auth, "tag" ‖ initiator ‖ responder ‖ nonce_i).
func (k *keys) helloTag(initiator, responder peer.ID, nonceI *[32]byte) [32]byte {
	return newMAC(&k.auth, "tag").peer(initiator).peer(responder).bytes(nonceI[:]).sum()
}

// transcriptMAC is MAC_r (label "resp") or MAC_i (label "init"): both bind the
// realm ID, the TLS-authenticated initiator and responder IDs and both nonces.
func (k *keys) transcriptMAC(label string, initiator, responder peer.ID, nonceI, nonceR *[32]byte) [32]byte {
	return newMAC(&k.auth, label).bytes(k.idBytes[:]).peer(initiator).peer(responder).bytes(nonceI[:]).bytes(nonceR[:]).sum()
}

// handle is the per-pair realm handle carried by realm streams:
// HMAC(auth key, "handle" ‖ lower ID ‖ higher ID)[:16]. Both members derive
// the same value, so simultaneous handshakes converge on one handle; a
// non-member cannot compute it, and it differs for every pair and realm.
func (k *keys) handle(a, b peer.ID) (h handle) {
	if b < a {
		a, b = b, a
	}
	sum := newMAC(&k.auth, "handle").peer(a).peer(b).sum()
	copy(h[:], sum[:])
	return h
}

// handle is a realm handle (16 bytes).
type handle [16]byte

func validateName(name string) error {
	return checkText(ErrBadName, "realm name", name, MaxNameLength)
}
