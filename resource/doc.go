// Package resource will hold realmnet's network.ResourceManager: go-libp2p's
// rcmgr plus per-realm scopes (issue "Admission control"). Until then the
// node uses rcmgr with its default, auto-scaled limits.
package resource
