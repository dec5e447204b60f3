// Limits on the MQTT side, checked on the event loop without promises: token buckets for connects and
// publishes per principal, and a fixed-window count of failed logins per source address.

/** A token bucket refilled at `rate` a second, holding at most one second's worth. */
export class TokenBucket implements Bucket {
  private tokens: number
  private last: number

  constructor (readonly rate: number, now = performance.now()) {
    this.tokens = rate
    this.last = now
  }

  /** Takes a token only when one is there (refused connects must not use up the allowance). */
  tryTake (now = performance.now()): boolean {
    this.refill(now)
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }

  full (now = performance.now()): boolean {
    this.refill(now)
    return this.tokens >= this.rate
  }

  private refill (now: number): void {
    this.tokens = Math.min(this.rate, this.tokens + (now - this.last) * this.rate / 1000)
    this.last = now
  }

  /**
   * Takes a token. Returns 0 when one was there, else the milliseconds until the debt is repaid (the
   * caller delays by that much, or refuses when it is too long); the token is taken either way.
   */
  take (now = performance.now()): number {
    this.refill(now)
    this.tokens -= 1
    return this.tokens >= 0 ? 0 : -this.tokens * 1000 / this.rate
  }
}

/** What the broker asks of a bucket: TokenBucket (this node) or LeasedBucket (every node). */
export interface Bucket {
  readonly rate: number
  tryTake (now?: number): boolean
  take (now?: number): number
  full (now?: number): boolean
}

/**
 * A bucket whose tokens are leased from an allowance shared by every node (SharedRates), a tenth of a
 * second's worth at a time, so the principal's rate holds across nodes without a round trip per
 * message. Taking stays synchronous: a take beyond the leased tokens is debt, which the caller turns
 * into a delay (1/rate s per token owed) or a disconnect; leases granted later repay it. When the
 * shared allowance is used up by other nodes, this node's debt grows until its publisher is cut off.
 */
export class LeasedBucket implements Bucket {
  private tokens = 0
  private leasing = false
  private lastUse: number
  private readonly chunk: number

  constructor (readonly rate: number, private readonly lease: (points: number) => Promise<boolean>, now = performance.now()) {
    this.chunk = Math.max(1, Math.ceil(rate / 10))
    this.lastUse = now
    this.refill()
  }

  private refill (): void {
    if (this.leasing || this.tokens >= this.chunk) return
    this.leasing = true
    this.lease(this.chunk).then((ok) => {
      this.leasing = false
      if (!ok) return
      this.tokens += this.chunk
      this.refill()
    }, () => { this.leasing = false })
  }

  tryTake (now = performance.now()): boolean {
    this.lastUse = now
    if (this.tokens < 1) { this.refill(); return false }
    this.tokens -= 1
    this.refill()
    return true
  }

  take (now = performance.now()): number {
    // Debt is forgiven after a quiet second (the shared window has moved on): a publisher that went
    // over its rate and then stopped starts clean, as with TokenBucket's refill over time.
    if (this.tokens < 0 && now - this.lastUse >= 1000) this.tokens = 0
    this.lastUse = now
    this.tokens -= 1
    this.refill()
    return this.tokens >= 0 ? 0 : -this.tokens * 1000 / this.rate
  }

  /** Unused for a second and owing nothing (the sweep may drop it; leased tokens left go unused). */
  full (now = performance.now()): boolean {
    return now - this.lastUse >= 1000 && this.tokens >= 0 && !this.leasing
  }
}

/** Buckets per key, made on first use; `rate` 0 means unlimited (no bucket). */
export class Buckets {
  private readonly byKey = new Map<string, Bucket>()
  constructor (
    private readonly rateFor: (key: string) => number,
    private readonly make: (rate: number, key: string) => Bucket = (rate) => new TokenBucket(rate)
  ) {}

  get (key: string): Bucket | null {
    let b = this.byKey.get(key)
    if (b === undefined) {
      const rate = this.rateFor(key)
      if (rate <= 0) return null
      this.byKey.set(key, b = this.make(rate, key))
    }
    return b
  }

  forget (key: string): void { this.byKey.delete(key) }

  /** Drops the buckets that are full again (their keys have been quiet for a second or more). */
  sweep (now = performance.now()): void {
    for (const [key, b] of this.byKey) if (b.full(now)) this.byKey.delete(key)
  }
}

/**
 * Admission of new connections by source address, before any byte is read: at most `maxPerAddress`
 * open at once and `ratePerAddress` new ones a second (0: unlimited). A refused connection is closed
 * at once (MQTT has no answer before CONNECT); `release` when an admitted one closes.
 */
export class AddressGate {
  private readonly open = new Map<string, number>()
  private readonly rates: Buckets
  readonly enabled: boolean

  constructor (private readonly maxPerAddress: number, ratePerAddress: number) {
    this.rates = new Buckets(() => ratePerAddress)
    this.enabled = maxPerAddress > 0 || ratePerAddress > 0
  }

  /** Admits a new connection, or says why not. */
  admit (address: string): 'ok' | 'concurrent' | 'rate' {
    const n = this.open.get(address) ?? 0
    if (this.maxPerAddress > 0 && n >= this.maxPerAddress) return 'concurrent'
    if (this.rates.get(address)?.tryTake() === false) return 'rate'
    this.open.set(address, n + 1)
    return 'ok'
  }

  release (address: string): void {
    const n = (this.open.get(address) ?? 1) - 1
    if (n <= 0) this.open.delete(address)
    else this.open.set(address, n)
  }

  /** Forgets the rate state of addresses quiet for a second (called every second). */
  sweep (): void { this.rates.sweep() }
}

/** Counts failures per key in fixed windows; blocked() once a key reached `max` in the current one. */
export class FailureWindow {
  private readonly counts = new Map<string, number>()
  private windowStart = Date.now()

  constructor (private readonly max: number, private readonly windowMs: number, private readonly maxKeys = 100_000) {}

  private roll (now: number): void {
    // A wall clock set back starts a new window too: else a blocked key stayed blocked for the jump.
    if (now - this.windowStart >= this.windowMs || now < this.windowStart) {
      this.counts.clear()
      this.windowStart = now
    }
  }

  blocked (key: string, now = Date.now()): boolean {
    if (this.max <= 0) return false
    this.roll(now)
    return (this.counts.get(key) ?? 0) >= this.max
  }

  /** Whole seconds until the current window ends (when a block lifts). */
  secondsLeft (now = Date.now()): number {
    this.roll(now)
    return Math.max(1, Math.ceil((this.windowStart + this.windowMs - now) / 1000))
  }

  fail (key: string, now = Date.now()): void {
    if (this.max <= 0) return
    this.roll(now)
    // Bounded: a flood from many addresses cannot grow this beyond maxKeys. Past it, new keys are not
    // counted until the window ends (clearing instead would lift every block, the flooder's too).
    if (this.counts.size >= this.maxKeys && !this.counts.has(key)) return
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1)
  }
}

/**
 * At most `size` holders at once; the others wait in arrival order, each until `timeoutMs`, then get
 * `onTimeout()`'s error (the embedded store's query slots: STREAMGATE_QUERY_CONCURRENCY).
 */
export class Slots {
  private held = 0
  private readonly waiting: (() => void)[] = []

  constructor (readonly size: number) {}

  acquire (timeoutMs: number, onTimeout: () => Error): Promise<void> {
    if (this.held < this.size) {
      this.held++
      return Promise.resolve()
    }
    return new Promise<void>((resolve, reject) => {
      const take = (): void => {
        clearTimeout(timer)
        this.held++
        resolve()
      }
      const timer = setTimeout(() => {
        const i = this.waiting.indexOf(take)
        if (i >= 0) this.waiting.splice(i, 1)
        reject(onTimeout())
      }, timeoutMs)
      this.waiting.push(take)
    })
  }

  release (): void {
    this.held--
    this.waiting.shift()?.()
  }
}
