// Package gater will hold realmnet's core/connmgr.ConnectionGater: block and
// allow rules for peers, IPs and subnets, persisted through go-datastore, the
// realm-only policy, and the points where hooks run (issue "Admission
// control"). Until then the node uses go-libp2p's BasicConnectionGater with
// no rules.
package gater
