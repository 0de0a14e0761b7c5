package realm

// ServiceOf returns the service r belongs to, for the tests of package
// realm_test: a node does not expose its realm service, whose Collector
// they read.
func ServiceOf(r *Realm) *Service { return r.svc }

// ReadResponse is readResponse, for the fuzz test.
var ReadResponse = readResponse

// ReadSized is readSized, for the fuzz test.
var ReadSized = readSized
