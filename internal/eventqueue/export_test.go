package eventqueue

import "time"

// Held returns how many events q has accepted whose Emit has not returned
// yet: what counts toward the limit.
func Held(q *Queue) int { return int(q.held.Load()) }

// WarnInterval is warnInterval, for the limiter test.
const WarnInterval = warnInterval

// WarnLimiter exposes warnLimiter.allow with a caller-supplied clock.
type WarnLimiter struct{ w warnLimiter }

// Allow is warnLimiter.allow.
func (l *WarnLimiter) Allow(now time.Duration) bool { return l.w.allow(now) }
