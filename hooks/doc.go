// Package hooks will hold the BeforeConnect and AfterHandshake hook types,
// their registry and the lifecycle event types (issue "Admission control").
// It is a leaf: no I/O, no imports from the rest of realmnet.
package hooks
