// Recently ingested messages by their id at the origin (an AMQP message_id), per principal: a message
// RabbitMQ redelivers after a crash (journaled, but its ack never reached RabbitMQ), or a producer
// sends again, is acknowledged without being ingested twice. Bounded: the oldest ids are forgotten
// first. Filled at start from the journal's last segments, so it holds across a restart.

export class RecentOrigins {
  /**
   * The ids remembered, by the ring slot of their latest remembering. (Forgetting the oldest through
   * a Set's `keys().next()` walks past every entry deleted from its front since its last rehash: up to
   * ~100 µs a message once 100,000 were held.)
   */
  private readonly seen = new Map<string, number>()
  /** The last `max` ids remembered, oldest at `next` once full. */
  private readonly ring: (string | undefined)[]
  private next = 0
  private readonly pending = new Set<string>()

  constructor (private readonly max = 100_000) {
    this.ring = new Array<string | undefined>(max).fill(undefined)
  }

  private static key (principal: string, origin: string): string {
    return principal + '\n' + origin
  }

  /**
   * Claims an id for ingestion: 'new' (claimed: commit or abort it), 'done' (ingested already) or
   * 'pending' (being ingested now: it may still fail, so a copy must not be acknowledged yet).
   */
  begin (principal: string, origin: string): 'new' | 'done' | 'pending' {
    const k = RecentOrigins.key(principal, origin)
    if (this.seen.has(k)) return 'done'
    if (this.pending.has(k)) return 'pending'
    this.pending.add(k)
    return 'new'
  }

  /** The message is durable: remember its id. */
  commit (principal: string, origin: string): void {
    const k = RecentOrigins.key(principal, origin)
    this.pending.delete(k)
    this.remember(k)
  }

  /** The message was not ingested (refused, journal full): it may come again. */
  abort (principal: string, origin: string): void {
    this.pending.delete(RecentOrigins.key(principal, origin))
  }

  add (principal: string, origin: string): void {
    this.remember(RecentOrigins.key(principal, origin))
  }

  /** How many ids are remembered. */
  get size (): number { return this.seen.size }

  /** Remembers `k` as the newest; the id remembered `max` rememberings ago is forgotten, unless remembered again since. */
  private remember (k: string): void {
    const slot = this.next
    const oldest = this.ring[slot]
    if (oldest !== undefined && this.seen.get(oldest) === slot) this.seen.delete(oldest)
    this.ring[slot] = k
    this.seen.set(k, slot)
    this.next = slot + 1 === this.max ? 0 : slot + 1
  }
}
