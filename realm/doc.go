// Package realm owns realms: isolated groups of nodes that share a secret.
// It derives each realm's ID, authentication key and DHT rendezvous key
// (HKDF-SHA256), runs the mutual PSK handshake on one generic protocol
// (AuthProtocol), keeps each realm's authenticated members (with their
// per-pair handles, sub-pool assignment and resource-scope charge),
// discovers members (DHT provider records, member exchange of signed peer
// records, connected peers, optional mDNS), carries realm-scoped streams on
// one generic protocol (StreamProtocol) checked against membership before
// dispatch, sends and verifies signed goodbyes, and enforces the realm-only
// isolation policy through the gater.
//
// node.Node owns one Service; applications use node.JoinRealm and the
// returned *Realm. docs/realms.md has the key schedule, the handshake
// diagram and the threat model.
package realm
