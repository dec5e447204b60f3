// Rates counted across every node in Redis (rate-limiter-flexible): one fixed one-second window per key
// and rate. When Redis does not answer, each node counts in its own memory (the insurance limiter), so
// an outage of Redis loosens the limits to a per-node rate instead of refusing everyone.
import { Redis } from 'ioredis'
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible'
import type { SharedRates } from '../../gateway/index.js'

export class RedisRates implements SharedRates {
  private readonly redis: Redis
  private readonly limiters = new Map<number, RateLimiterRedis>()

  constructor (url: string) {
    // No offline queue: a request while disconnected fails at once and the insurance limiter answers.
    this.redis = new Redis(url, { enableOfflineQueue: false, maxRetriesPerRequest: 1 })
    this.redis.on('error', () => undefined) // reconnects by itself
  }

  private limiter (perSecond: number): RateLimiterRedis {
    let l = this.limiters.get(perSecond)
    if (l === undefined) {
      l = new RateLimiterRedis({
        storeClient: this.redis,
        keyPrefix: `streamgate:rate:${perSecond}`,
        points: perSecond,
        duration: 1,
        insuranceLimiter: new RateLimiterMemory({ points: perSecond, duration: 1 })
      })
      this.limiters.set(perSecond, l)
    }
    return l
  }

  async take (key: string, perSecond: number, points = 1): Promise<{ ok: boolean, remaining: number, msBeforeNext: number }> {
    try {
      const r = await this.limiter(perSecond).consume(key, points)
      return { ok: true, remaining: r.remainingPoints, msBeforeNext: r.msBeforeNext }
    } catch (r) {
      if (r instanceof RateLimiterRes) return { ok: false, remaining: r.remainingPoints, msBeforeNext: r.msBeforeNext }
      throw r
    }
  }

  async close (): Promise<void> {
    this.redis.disconnect()
  }
}
