// Counts every refusal per dataset and reason, and keeps a log of the recent ones with their reasons.
// Counts are exact and served from memory; details are written in batches through a bounded queue, so
// a flood of bad input costs a counter increment once the queue is full, never unbounded memory.
import { isUtf8 } from 'node:buffer'
import type { RejectCount, RejectEntry, RejectStore } from './ports.js'

const EXCERPT_BYTES = 512
const GLOBAL = ''

/** A refusal as the data path reports it: the log entry without its time and excerpt, plus the payload. */
export type RejectInput = Omit<RejectEntry, 'at' | 'excerpt' | 'field'> & {
  readonly field?: string | undefined
  readonly payload?: Buffer | undefined
}

export interface RejectsOptions {
  /** Most entries waiting to be written; beyond it details are dropped (counts are kept). */
  readonly maxPending: number
  readonly flushMs: number
  readonly onError?: (err: Error) => void
}

export class Rejects {
  private readonly totals = new Map<string, Map<string, number>>()
  private pending: RejectEntry[] = []
  private deltas = new Map<string, Map<string, number>>()
  private timer: NodeJS.Timeout | null = null
  private flushing: Promise<void> | null = null
  droppedDetails = 0

  constructor (private readonly store: RejectStore, private readonly opts: RejectsOptions) {}

  async init (): Promise<void> {
    for (const c of await this.store.counts()) bump(this.totals, c.dataset ?? GLOBAL, c.reason, c.count)
    this.timer = setInterval(() => { void this.flush() }, this.opts.flushMs)
    this.timer.unref()
  }

  record (r: RejectInput): void {
    const key = r.dataset ?? GLOBAL
    bump(this.totals, key, r.reason, 1)
    bump(this.deltas, key, r.reason, 1)
    if (this.pending.length >= this.opts.maxPending) {
      this.droppedDetails++
      return
    }
    let excerpt = ''
    if (r.payload !== undefined) {
      const head = r.payload.subarray(0, EXCERPT_BYTES)
      // Text is shown as text (a cut multi-byte character becomes U+FFFD); bytes that are not UTF-8 as base64.
      excerpt = isUtf8(r.payload) ? head.toString('utf8') : 'base64:' + head.toString('base64')
    }
    this.pending.push({
      at: new Date().toISOString(),
      dataset: r.dataset,
      principal: r.principal,
      device: r.device,
      topic: r.topic,
      reason: r.reason,
      detail: r.detail,
      field: r.field ?? null,
      excerpt
    })
  }

  /** Reason → count for one dataset, or for refusals made before a dataset was known (null). */
  counts (dataset: string | null): Record<string, number> {
    return Object.fromEntries(this.totals.get(dataset ?? GLOBAL) ?? [])
  }

  forget (dataset: string): void {
    this.totals.delete(dataset)
    this.deltas.delete(dataset)
  }

  /** Writes what is pending. Concurrent calls share one write. */
  flush (): Promise<void> {
    if (this.flushing !== null) return this.flushing
    if (this.pending.length === 0 && this.deltas.size === 0) return Promise.resolve()
    const entries = this.pending
    const counts: RejectCount[] = []
    for (const [dataset, byReason] of this.deltas) {
      for (const [reason, count] of byReason) counts.push({ dataset: dataset === GLOBAL ? null : dataset, reason, count })
    }
    this.pending = []
    this.deltas = new Map()
    this.flushing = this.store.append(entries, counts).catch((err: Error) => {
      // Put the counts back so they are not lost; details may be dropped.
      for (const c of counts) bump(this.deltas, c.dataset ?? GLOBAL, c.reason, c.count)
      this.opts.onError?.(err)
    }).finally(() => { this.flushing = null })
    return this.flushing
  }

  async close (): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    // The first call may only join a write already in flight; the second writes what came after it.
    await this.flush()
    await this.flush()
  }
}

function bump (m: Map<string, Map<string, number>>, key: string, reason: string, n: number): void {
  let byReason = m.get(key)
  if (byReason === undefined) m.set(key, byReason = new Map())
  byReason.set(reason, (byReason.get(reason) ?? 0) + n)
}
