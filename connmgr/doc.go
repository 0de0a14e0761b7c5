// Package connmgr will hold realmnet's layered connection pools — global,
// per-realm and unassigned — implementing core/connmgr.ConnManager (issue
// "Layered connection pools"). Until then the node uses go-libp2p's
// BasicConnMgr with the global pool's defaults.
package connmgr
