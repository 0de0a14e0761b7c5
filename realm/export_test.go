package realm

import pubsub "github.com/libp2p/go-libp2p-pubsub"

// ServiceOf returns the service r belongs to, for the tests of package
// realm_test: a node does not expose its realm service, whose Collector
// they read.
func ServiceOf(r *Realm) *Service { return r.svc }

// ReadResponse is readResponse, for the fuzz test.
var ReadResponse = readResponse

// ReadSized is readSized, for the fuzz test.
var ReadSized = readSized

// RouterOf returns the node's gossipsub router (nil before the first Join).
func RouterOf(r *Realm) *pubsub.PubSub {
	r.svc.pubsubMu.Lock()
	defer r.svc.pubsubMu.Unlock()
	return r.svc.pubsub
}

// WireTopic is the gossipsub topic of the realm's topic name.
func WireTopic(r *Realm, name string) string { return r.keys.wireTopic(name) }
