// Recently ingested messages by their id at the origin (an AMQP message_id), per principal: a message
// RabbitMQ redelivers after a crash (journaled, but its ack never reached RabbitMQ), or a producer
// sends again, is acknowledged without being ingested twice. Bounded: the oldest ids are forgotten
// first. Filled at start from the journal's last segments, so it holds across a restart.

export class RecentOrigins {
  /** In insertion order: the oldest first. */
  private readonly seen = new Set<string>()
  /**
   * One iterator over `seen` for its whole life, standing at the oldest id. A fresh `keys().next()`
   * per forgetting walked past every id deleted from the Set's front since its last rehash (up to
   * ~100 µs a message once 100,000 were held); a Set iterator skips deleted entries and visits
   * later additions (ECMAScript's live iteration), so this one only ever steps over what it passed.
   * Every id it has passed is forgotten; ids remembered again move behind it, to the end.
   */
  private oldest: SetIterator<string>
  private readonly pending = new Set<string>()

  constructor (private readonly max = 100_000) {
    this.oldest = this.seen.values()
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

  private remember (k: string): void {
    this.seen.delete(k)
    this.seen.add(k)
    while (this.seen.size > this.max) {
      let next = this.oldest.next()
      // Never exhausted while an id is ahead of it; a new one would start at the oldest again.
      if (next.done === true) next = (this.oldest = this.seen.values()).next()
      this.seen.delete(next.value as string)
    }
  }
}
