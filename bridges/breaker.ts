// The operator's view of an opossum breaker, shared by every bridge that has one.
import type CircuitBreaker from 'opossum'
import type { BreakerStatus } from '../gateway/index.js'

export function breakerStatus (b: CircuitBreaker, lastError: string | null): BreakerStatus {
  return { state: b.opened ? 'open' : b.halfOpen ? 'half-open' : 'closed', failures: b.stats.failures + b.stats.timeouts + b.stats.rejects, lastError }
}
