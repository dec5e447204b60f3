// The operator's view of an opossum breaker, shared by every bridge that has one: its state, its
// failures, and how often it changed state (counted as it happens, so /metrics misses no open and
// close between two scrapes).
import CircuitBreaker from 'opossum'
import type { BreakerStatus } from '../gateway/index.js'

const transitions = new WeakMap<CircuitBreaker, { open: number, 'half-open': number, closed: number }>()

/**
 * An opossum breaker around `action` whose state changes are counted from its first moment (for
 * breakerStatus): every bridge's breaker is made here. Opens when more than half of at least 3 calls in the
 * rolling window failed, unless `options` say otherwise.
 */
export function createBreaker<TI extends unknown[], TR> (action: (...args: TI) => Promise<TR>, options: CircuitBreaker.Options<TI>): CircuitBreaker<TI, TR> {
  const b = new CircuitBreaker(action, { errorThresholdPercentage: 50, volumeThreshold: 3, ...options })
  const t = { open: 0, 'half-open': 0, closed: 0 }
  transitions.set(b, t)
  b.on('open', () => { t.open++ })
  b.on('halfOpen', () => { t['half-open']++ })
  b.on('close', () => { t.closed++ })
  return b
}

export function breakerStatus (b: CircuitBreaker, lastError: string | null): BreakerStatus {
  return {
    state: b.opened ? 'open' : b.halfOpen ? 'half-open' : 'closed',
    failures: b.stats.failures + b.stats.timeouts + b.stats.rejects,
    lastError,
    transitions: { ...(transitions.get(b) ?? { open: 0, 'half-open': 0, closed: 0 }) }
  }
}
