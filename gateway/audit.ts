// The audit log: every management change (who, what, the resource's ETag before and after, from where)
// and every denied access, append-only and hash-chained: each entry's hash covers the previous entry's
// hash and its own fields, so changing, removing or reordering any stored entry breaks every later link
// (verify() finds the first one).
import { createHash } from 'node:crypto'
import { z } from 'zod'

export const auditOutcomes = ['ok', 'denied'] as const

export interface AuditInput {
  /** The principal who acted (null: unauthenticated). `system` for the gateway's own changes. */
  readonly actor: string | null
  /** Source address of the request or connection. */
  readonly address: string | null
  /** e.g. `dataset.create`, `key.revoke`, `access.denied`. */
  readonly action: string
  /** e.g. `datasets/weather`, `principals/sensor-1/keys/key_1a2b`. */
  readonly resource: string
  readonly outcome: typeof auditOutcomes[number]
  /** The resource's ETag before and after the change (null: did not exist / no longer exists). */
  readonly before: string | null
  readonly after: string | null
  readonly detail: string | null
  readonly requestId: string | null
}

export interface AuditEntry extends AuditInput {
  readonly seq: number
  readonly at: string
  readonly prevHash: string
  readonly hash: string
}

export const auditEntrySchema = z.object({
  seq: z.number().int(),
  at: z.string(),
  actor: z.string().nullable(),
  address: z.string().nullable(),
  action: z.string(),
  resource: z.string(),
  outcome: z.enum(auditOutcomes),
  before: z.string().nullable(),
  after: z.string().nullable(),
  detail: z.string().nullable(),
  requestId: z.string().nullable(),
  prevHash: z.string(),
  hash: z.string()
}).meta({ id: 'AuditEntry' })

export interface AuditFilter {
  readonly actor?: string
  readonly action?: string
  /** Entries whose resource starts with this. */
  readonly resource?: string
  readonly outcome?: typeof auditOutcomes[number]
  /** ISO 8601 bounds on `at`: [since, until). */
  readonly since?: string
  readonly until?: string
  /** Keyset cursor: entries with a smaller seq. */
  readonly beforeSeq?: number
}

export interface AuditStore {
  appendAudit (entries: readonly AuditEntry[]): Promise<void>
  lastAudit (): Promise<AuditEntry | null>
  /** Newest first. */
  listAudit (filter: AuditFilter, limit: number): Promise<AuditEntry[]>
  /** Oldest first, from `fromSeq`. */
  auditRange (fromSeq: number, limit: number): Promise<AuditEntry[]>
  /**
   * A store several gateways append to (PostgreSQL): it places the entries after the chain's last one,
   * whoever wrote it, assigning seq, prevHash and hash (the ones given are this node's provisional ones).
   */
  appendChained? (entries: readonly AuditEntry[]): Promise<AuditEntry[]>
}

export const GENESIS = '0'.repeat(64)

export function auditHash (prevHash: string, e: Omit<AuditEntry, 'hash' | 'prevHash'>): string {
  return createHash('sha256')
    .update(prevHash)
    .update('\n')
    .update(JSON.stringify([e.seq, e.at, e.actor, e.address, e.action, e.resource, e.outcome, e.before, e.after, e.detail, e.requestId]))
    .digest('hex')
}

export interface VerifyReport {
  readonly ok: boolean
  readonly checked: number
  readonly lastSeq: number
  readonly firstBroken: { readonly seq: number, readonly reason: string } | null
}

export interface AuditLogOptions {
  /** Most denials waiting to be written; beyond it they are counted, then summarized in one entry. */
  readonly maxPending?: number
  /**
   * Denials recorded one by one per actor, address and action in a minute; beyond that they are
   * counted and summarized in one entry when the minute ends (a client repeating a refused request
   * cannot grow the log without bound). Default 20.
   */
  readonly denialsPerMinute?: number
  readonly onError?: (err: Error) => void
}

export class AuditLog {
  private seq: number
  private lastHash: string
  private pending: AuditEntry[] = []
  private writing: Promise<void> | null = null
  private durableSeq: number
  private droppedDenials = 0
  private closed = false
  private readonly denials = new Map<string, { n: number, sample: AuditInput }>()
  private denialWindow = Date.now()
  private denialTimer: NodeJS.Timeout | null = null
  private closing = false
  private unkeyedDenials = 0
  /** With a shared store: the last entry this log stored, as the store chained it. */
  private lastStored: AuditEntry | null = null

  private constructor (private readonly store: AuditStore, last: AuditEntry | null, private readonly opts: AuditLogOptions) {
    this.seq = last?.seq ?? 0
    this.durableSeq = this.seq
    this.lastHash = last?.hash ?? GENESIS
  }

  static async open (store: AuditStore, opts: AuditLogOptions = {}): Promise<AuditLog> {
    return new AuditLog(store, await store.lastAudit(), opts)
  }

  /** The chain position is fixed at once (call order); the entry is written shortly after. With a shared store (appendChained) the seq returned is this node's own count, not the chain's. */
  record (input: AuditInput): AuditEntry {
    if (input.outcome === 'denied' && !this.admitDenial(input)) return this.chain(input, false)
    if (input.outcome === 'denied' && this.pending.length >= (this.opts.maxPending ?? 10_000)) {
      // A flood of denials (a brute force) must not grow memory: count them, summarize later.
      this.droppedDenials++
      return this.chain(input, false)
    }
    if (this.droppedDenials > 0) {
      const n = this.droppedDenials
      this.droppedDenials = 0
      this.chain({ actor: 'system', address: null, action: 'audit.denials_summarized', resource: 'audit', outcome: 'ok', before: null, after: null, detail: `${n} denied accesses were not recorded one by one (audit queue full)`, requestId: null }, true)
    }
    return this.chain(input, true)
  }

  /** Counts a denial in this minute's window; false once its actor, address and action are over the limit. */
  private admitDenial (input: AuditInput): boolean {
    if (Date.now() - this.denialWindow >= 60_000) this.endDenialWindow()
    // The window's summaries are written when it ends, even if no denial follows.
    if (this.denialTimer === null && !this.closing) {
      this.denialTimer = setTimeout(() => { this.denialTimer = null; this.endDenialWindow() }, Math.max(0, this.denialWindow + 60_000 - Date.now()))
      this.denialTimer.unref()
    }
    const key = `${input.actor ?? ''}\n${input.address ?? ''}\n${input.action}`
    let d = this.denials.get(key)
    if (d === undefined) {
      // Bounded: beyond 10,000 distinct sources a minute, new ones are only counted (one summary).
      if (this.denials.size >= 10_000) {
        this.unkeyedDenials++
        return false
      }
      this.denials.set(key, d = { n: 0, sample: input })
    }
    d.n++
    return d.n <= (this.opts.denialsPerMinute ?? 20)
  }

  /** Summarizes the window's denials that were counted rather than recorded, and starts a new window. */
  private endDenialWindow (): void {
    const from = new Date(this.denialWindow).toISOString()
    for (const { n, sample } of this.denials.values()) {
      const over = n - (this.opts.denialsPerMinute ?? 20)
      if (over > 0) this.chain({ ...sample, detail: `${over} more denials like this one in the minute from ${from} were counted, not recorded one by one`, requestId: null }, true)
    }
    if (this.unkeyedDenials > 0) {
      this.chain({ actor: 'system', address: null, action: 'audit.denials_summarized', resource: 'audit', outcome: 'ok', before: null, after: null, detail: `${this.unkeyedDenials} denied accesses from beyond 10,000 distinct sources in the minute from ${from} were counted, not recorded one by one`, requestId: null }, true)
      this.unkeyedDenials = 0
    }
    this.denials.clear()
    this.denialWindow = Date.now()
    if (this.denialTimer !== null) {
      clearTimeout(this.denialTimer)
      this.denialTimer = null
    }
  }

  private chain (input: AuditInput, keep: boolean): AuditEntry {
    if (!keep) return { ...input, seq: this.seq, at: new Date().toISOString(), prevHash: this.lastHash, hash: this.lastHash }
    const base = { ...input, seq: ++this.seq, at: new Date().toISOString() }
    const entry: AuditEntry = { ...base, prevHash: this.lastHash, hash: auditHash(this.lastHash, base) }
    this.lastHash = entry.hash
    this.pending.push(entry)
    this.schedule()
    return entry
  }

  /** Records and waits until the entry is stored (management changes). */
  async append (input: AuditInput): Promise<AuditEntry> {
    const e = this.record(input)
    await this.flush(e.seq)
    return e
  }

  private schedule (): void {
    if (this.writing !== null || this.closed) return
    this.writing = (async () => {
      // Let a burst of records join one write.
      await new Promise<void>((resolve) => setImmediate(resolve))
      while (this.pending.length > 0) {
        // Take the batch out: entries recorded while it is written wait for the next round.
        const batch = this.pending
        this.pending = []
        try {
          if (this.store.appendChained !== undefined) this.lastStored = (await this.store.appendChained(batch)).at(-1) ?? this.lastStored
          else await this.store.appendAudit(batch)
          this.durableSeq = batch.at(-1)!.seq
        } catch (err) {
          this.pending = batch.concat(this.pending)
          this.opts.onError?.(err as Error)
          await new Promise((resolve) => setTimeout(resolve, 500))
          if (this.closed) return
        }
      }
    })().finally(() => {
      this.writing = null
      if (this.pending.length > 0 && !this.closed) this.schedule()
    })
  }

  /** Resolves once every entry up to `seq` (default: all recorded) is stored. */
  async flush (seq = this.seq): Promise<void> {
    while (this.durableSeq < seq) {
      if (this.writing === null) this.schedule()
      await this.writing
      if (this.closed && this.durableSeq < seq) throw new Error('audit log closed before the entry was stored')
    }
  }

  list (filter: AuditFilter, limit: number): Promise<AuditEntry[]> {
    return this.flush().then(() => this.store.listAudit(filter, limit))
  }

  /** Recomputes the chain from the first entry and reports the first link that does not hold. */
  async verify (batch = 5000): Promise<VerifyReport> {
    await this.flush()
    let prev = GENESIS
    let expected = 1
    let checked = 0
    for (;;) {
      const rows = await this.store.auditRange(expected, batch)
      if (rows.length === 0) break
      for (const e of rows) {
        if (e.seq !== expected) return { ok: false, checked, lastSeq: expected - 1, firstBroken: { seq: expected, reason: `entry ${expected} is missing (next stored is ${e.seq})` } }
        if (e.prevHash !== prev) return { ok: false, checked, lastSeq: e.seq, firstBroken: { seq: e.seq, reason: 'prevHash does not match the previous entry\'s hash' } }
        const { hash, prevHash: _p, ...rest } = e
        if (auditHash(prev, rest) !== hash) return { ok: false, checked, lastSeq: e.seq, firstBroken: { seq: e.seq, reason: 'hash does not match the entry\'s fields' } }
        prev = hash
        expected++
        checked++
      }
    }
    // Entries removed from the end leave a chain that holds: compare with what this log wrote last.
    if (this.store.appendChained !== undefined) {
      // Shared: other nodes append too; this log's seq numbers are its own, the store's are lastStored's.
      const last = this.lastStored
      if (last !== null && expected - 1 < last.seq) return { ok: false, checked, lastSeq: expected - 1, firstBroken: { seq: expected, reason: `entries ${expected}..${last.seq} are missing` } }
      return { ok: true, checked, lastSeq: expected - 1, firstBroken: null }
    }
    if (expected - 1 < this.durableSeq) return { ok: false, checked, lastSeq: expected - 1, firstBroken: { seq: expected, reason: `entries ${expected}..${this.durableSeq} are missing` } }
    if (expected - 1 === this.durableSeq && prev !== this.lastHash && this.pending.length === 0) return { ok: false, checked, lastSeq: expected - 1, firstBroken: { seq: expected - 1, reason: 'the last entry differs from the one this gateway wrote' } }
    return { ok: true, checked, lastSeq: expected - 1, firstBroken: null }
  }

  async close (): Promise<void> {
    if (this.closed || this.closing) return
    this.closing = true
    // What the current minute counted is summarized now rather than lost (no new window starts after).
    this.endDenialWindow()
    await this.flush().catch(() => undefined)
    this.closed = true
  }
}
