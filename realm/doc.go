// Package realm will hold realms: IDs and keys, mutual PSK authentication,
// discovery, member exchange and realm-scoped streams (issue "Realms").
package realm
