// Limits on the MQTT side, checked on the event loop without promises: token buckets for connects and
// publishes per principal, and a fixed-window count of failed logins per source address.

/** A token bucket refilled at `rate` a second, holding at most one second's worth. */
export class TokenBucket {
  private tokens: number
  private last: number

  constructor (readonly rate: number, now = performance.now()) {
    this.tokens = rate
    this.last = now
  }

  /**
   * Takes a token. Returns 0 when one was there, else the milliseconds until the debt is repaid (the
   * caller delays by that much, or refuses when it is too long); the token is taken either way.
   */
  /** Takes a token only when one is there (refused connects must not use up the allowance). */
  tryTake (now = performance.now()): boolean {
    this.refill(now)
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }

  private refill (now: number): void {
    this.tokens = Math.min(this.rate, this.tokens + (now - this.last) * this.rate / 1000)
    this.last = now
  }

  take (now = performance.now()): number {
    this.refill(now)
    this.tokens -= 1
    return this.tokens >= 0 ? 0 : -this.tokens * 1000 / this.rate
  }
}

/** Buckets per key, made on first use; `rate` 0 means unlimited (no bucket). */
export class Buckets {
  private readonly byKey = new Map<string, TokenBucket>()
  constructor (private readonly rateFor: (key: string) => number) {}

  get (key: string): TokenBucket | null {
    let b = this.byKey.get(key)
    if (b === undefined) {
      const rate = this.rateFor(key)
      if (rate <= 0) return null
      this.byKey.set(key, b = new TokenBucket(rate))
    }
    return b
  }

  forget (key: string): void { this.byKey.delete(key) }
}

/** Counts failures per key in fixed windows; blocked() once a key reached `max` in the current one. */
export class FailureWindow {
  private readonly counts = new Map<string, number>()
  private windowStart = Date.now()

  constructor (private readonly max: number, private readonly windowMs: number, private readonly maxKeys = 100_000) {}

  private roll (now: number): void {
    if (now - this.windowStart >= this.windowMs) {
      this.counts.clear()
      this.windowStart = now
    }
  }

  blocked (key: string, now = Date.now()): boolean {
    if (this.max <= 0) return false
    this.roll(now)
    return (this.counts.get(key) ?? 0) >= this.max
  }

  fail (key: string, now = Date.now()): void {
    if (this.max <= 0) return
    this.roll(now)
    // Bounded: a flood from many addresses cannot grow this beyond maxKeys (the window restarts).
    if (this.counts.size >= this.maxKeys && !this.counts.has(key)) this.counts.clear()
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1)
  }
}
