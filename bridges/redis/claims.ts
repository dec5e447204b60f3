// Claims on message identities in Redis (the OriginClaims port): one key per (principal, message id),
// holding the `node:seq` of the journal entry allowed to store it, kept for STREAMGATE_DEDUP_TTL_S.
// Taken with SET NX in one pipeline per batch; a key already there is read back to tell "ours" (taken
// earlier by this entry, e.g. before a crash) from "another copy's".
import { Redis } from 'ioredis'
import type { OriginClaims } from '../../gateway/index.js'

export class RedisClaims implements OriginClaims {
  private readonly redis: Redis

  constructor (url: string, private readonly ttlS: number) {
    // Commands fail fast while Redis is away: the caller stores without claims instead of waiting.
    this.redis = new Redis(url, { enableOfflineQueue: false, maxRetriesPerRequest: 1 })
    this.redis.on('error', () => undefined) // reconnects by itself
  }

  private static key (principal: string, origin: string): string {
    return `streamgate:claim:${principal}\n${origin}`
  }

  async claim (entries: readonly { principal: string, origin: string, owner: string }[]): Promise<boolean[]> {
    const set = this.redis.pipeline()
    for (const e of entries) set.set(RedisClaims.key(e.principal, e.origin), e.owner, 'EX', this.ttlS, 'NX')
    const taken = await set.exec()
    if (taken === null) throw new Error('Redis pipeline aborted')
    const held: boolean[] = []
    const check: number[] = []
    for (let i = 0; i < entries.length; i++) {
      const [err, res] = taken[i]!
      if (err !== null) throw err
      held.push(res === 'OK')
      if (res !== 'OK') check.push(i)
    }
    if (check.length > 0) {
      const owners = await this.redis.mget(check.map((i) => RedisClaims.key(entries[i]!.principal, entries[i]!.origin)))
      for (let k = 0; k < check.length; k++) held[check[k]!] = owners[k] === entries[check[k]!]!.owner
    }
    return held
  }

  async close (): Promise<void> {
    this.redis.disconnect()
  }
}
