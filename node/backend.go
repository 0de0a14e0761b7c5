package node

import (
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/realmnet/realmnet/connmgr"
	"github.com/realmnet/realmnet/core"
	"github.com/realmnet/realmnet/gater"
	"github.com/realmnet/realmnet/internal/realmwire"
	"github.com/realmnet/realmnet/multipath"
	"github.com/realmnet/realmnet/resource"
)

// realmBackend is how the realm service reaches the node's lower layers
// (realmwire.Backend): the connection manager's realm sub-pools, the resource
// manager's realm scopes, the gater's peer policy and multipath's paths.
type realmBackend struct {
	pools     *connmgr.Manager
	resources *resource.Manager
	gater     *gater.Gater
	paths     *multipath.Manager
}

var _ realmwire.Backend = (*realmBackend)(nil)

func (b *realmBackend) RealmPoolDefaults() core.PoolLimits { return b.pools.Config().RealmDefaults }

// SetRealmLimits sets both limits of a realm; the pool limits are checked
// first, so an invalid value leaves both unchanged.
func (b *realmBackend) SetRealmLimits(id core.RealmID, pool core.PoolLimits, scope core.RealmScopeLimits) error {
	if err := (resource.Config{Realms: resource.RealmConfig{Default: scope}}).Validate(); err != nil {
		return err
	}
	if err := b.pools.SetRealmLimits(id, pool); err != nil {
		return err
	}
	if err := b.resources.SetRealmLimits(id, scope); err != nil {
		return fmt.Errorf("node: realm %s: %w", id, err)
	}
	return nil
}

func (b *realmBackend) RealmPoolLimits(id core.RealmID) core.PoolLimits {
	return b.pools.RealmLimitsOf(id)
}

func (b *realmBackend) AssignRealm(p peer.ID, id core.RealmID) { b.pools.AssignRealm(p, id) }

func (b *realmBackend) UnassignRealm(p peer.ID, id core.RealmID) { b.pools.UnassignRealm(p, id) }

func (b *realmBackend) ReserveRealmMember(id core.RealmID) (func(), error) {
	return b.resources.ReserveRealmMember(id)
}

func (b *realmBackend) ReserveRealmStream(id core.RealmID, dir network.Direction) (func(), error) {
	return b.resources.ReserveRealmStream(id, dir)
}

func (b *realmBackend) SetPeerPolicy(allow func(peer.ID) bool) { b.gater.SetPeerPolicy(allow) }

func (b *realmBackend) Paths(p peer.ID) []core.PathInfo { return b.paths.Paths(p) }

// errNilBackendPart guards newRealmBackend's arguments.
var errNilBackendPart = errors.New("node: realm backend needs the pools, resources, gater and paths")

func newRealmBackend(pools *connmgr.Manager, rm *resource.Manager, g *gater.Gater, paths *multipath.Manager) (*realmBackend, error) {
	if pools == nil || rm == nil || g == nil || paths == nil {
		return nil, errNilBackendPart
	}
	return &realmBackend{pools: pools, resources: rm, gater: g, paths: paths}, nil
}
