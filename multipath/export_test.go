package multipath

// ForceStreamHeartbeats makes m heartbeat every path with the ping stream
// (on) or with datagrams where the connection negotiated them (off, the
// default), restarting every running heartbeat. For the fallback's tests
// and BenchmarkHeartbeatCost's stream variant only.
func ForceStreamHeartbeats(m *Manager, on bool) { m.setStreamHeartbeats(on) }

// DatagramProbesSent is the number of heartbeat datagrams m has sent.
func DatagramProbesSent(m *Manager) uint64 { return m.probes.sent.Load() }

// PathsDegraded is the number of times one of m's paths became degraded
// (a heartbeat not answered within its timeout).
func PathsDegraded(m *Manager) uint64 {
	m.metrics.mu.Lock()
	defer m.metrics.mu.Unlock()
	return m.metrics.lost
}
