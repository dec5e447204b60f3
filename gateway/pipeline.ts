// The one path every message takes, whatever protocol brought it: resolve the dataset, check the grant,
// decode and validate against the schema, append to the journal. Acknowledgement (PUBACK, 202, AMQP
// ack) happens in the journal callback, after fdatasync.
import { isUtf8 } from 'node:buffer'
import type { AccessState } from './access.js'
import type { Catalog } from './datasets.js'
import { RejectReason, StreamgateError } from './errors.js'
import { type AppendCallback, type Journal, type JournalRecord, MAX_ORIGIN } from './journal.js'
import type { RecentOrigins } from './origins.js'
import type { Rejects } from './rejects.js'
import { isPrincipalId } from './topics.js'

export interface Refusal {
  readonly reason: RejectReason
  readonly detail: string
  readonly field?: string | undefined
  /** An authorization failure (MQTT: disconnect; HTTP: 403), as opposed to bad data (dropped, counted). */
  readonly denied: boolean
}

/** Not refused: the message's id was ingested already (acknowledge it; store and deliver nothing). */
export interface Duplicate { readonly duplicate: true, readonly denied: false }

/**
 * When live subscribers get a message (STREAMGATE_FANOUT): `written`, once the journal's write has
 * returned (it survives a crash of the gateway, and its fdatasync runs meanwhile); `durable`, once it
 * is fdatasync'd, with its acknowledgement. Acknowledgements always wait for the fdatasync.
 */
export type FanoutWhen = 'written' | 'durable'

export interface PipelineLimits { readonly maxPayload: number, readonly fanout?: FanoutWhen }

const DUPLICATE: Duplicate = { duplicate: true, denied: false }

export interface RecordRefusal { readonly index: number, readonly reason: RejectReason, readonly detail: string, readonly field?: string }
export interface BatchResult { readonly accepted: number, readonly rejected: readonly RecordRefusal[] }

const NOT_AUTHORIZED: RejectReason = RejectReason.NOT_AUTHORIZED

/**
 * Arrival times in epoch µs, strictly increasing within the process, so two readings without their
 * own timestamp never share one.
 */
export class ArrivalClock {
  private last = 0
  /** Arrival times from now on are later than `us` (the journal's last, after a restart). */
  advanceTo (us: number): void {
    if (us > this.last) this.last = us
  }

  now (): number {
    const t = Date.now() * 1000
    this.last = t > this.last ? t : this.last + 1
    return this.last
  }
}

/** Delivers records accepted outside MQTT (HTTP, AMQP) to MQTT subscribers. */
export type Fanout = (dataset: string, device: string, payload: Buffer) => void

export class Pipeline {
  readonly clock = new ArrivalClock()
  private fanout: Fanout | null = null
  readonly stats = { accepted: 0, records: 0, refused: 0, duplicates: 0 }

  constructor (
    private readonly catalog: Catalog,
    private readonly access: AccessState,
    private readonly journal: Journal,
    private readonly rejects: Rejects,
    private readonly limits: PipelineLimits,
    /** Message ids ingested lately (datasets with a messageId field): a resend is recognised. */
    private readonly origins?: RecentOrigins
  ) {}

  /**
   * Ingests one message (one record or a JSON array of them) for `device` in `dataset`. Returns null
   * when it was handed to the journal (`cb` fires when durable, or with the journal's refusal), or the
   * refusal (already counted and logged; `cb` is not called). `deliver` (the live fan-out) is called
   * when STREAMGATE_FANOUT says, never for a message the journal refuses, and before `cb`.
   */
  ingest (principal: string, dataset: string, device: string, payload: Buffer, topic: string | null, cb: AppendCallback, origin?: string, deliver?: () => void): Refusal | Duplicate | null {
    const compiled = this.catalog.current(dataset)
    if (compiled === undefined) {
      // Counted globally: a dataset that does not exist must not grow the per-dataset counters.
      return this.refuse(principal, null, device, topic, payload, RejectReason.UNKNOWN_DATASET, `dataset ${dataset} does not exist`, undefined, true)
    }
    compiled.stats.received++
    if (!this.access.canPublish(principal, dataset, device)) {
      return this.refuse(principal, dataset, device, topic, payload, NOT_AUTHORIZED, `${principal} may not publish to ${dataset} as device ${device}`, undefined, true)
    }
    if (payload.length > this.limits.maxPayload) {
      return this.refuse(principal, dataset, device, topic, payload, RejectReason.PAYLOAD_TOO_LARGE, `payload of ${payload.length} bytes exceeds STREAMGATE_MAX_PAYLOAD=${this.limits.maxPayload}`)
    }
    if (!isUtf8(payload)) {
      return this.refuse(principal, dataset, device, topic, payload, RejectReason.INVALID_UTF8, 'payload is not valid UTF-8')
    }
    let value: unknown
    try {
      value = JSON.parse(payload.toString('utf8'))
    } catch (err) {
      return this.refuse(principal, dataset, device, topic, payload, RejectReason.INVALID_JSON, (err as Error).message)
    }
    const arrivalUs = this.clock.now()
    // Validation only: the journal keeps the payload as received, and sinks decode it into rows.
    const bad = compiled.decode(value, device, arrivalUs, null)
    if (bad !== null) return this.refuse(principal, dataset, device, topic, payload, bad.reason, bad.detail, bad.field)
    let done = cb
    if (origin === undefined) {
      // The dataset's own message id: a resend of a message ingested already is acknowledged only.
      const id = compiled.messageIdOf(value)
      if (id !== undefined && Buffer.byteLength(id) <= MAX_ORIGIN) {
        origin = id
        const origins = this.origins
        const claim = origins?.begin(principal, id)
        if (claim === 'done') {
          this.stats.duplicates++
          return DUPLICATE
        }
        // 'pending' (being journaled now, e.g. resent on a new connection at once): journaled again;
        // with several nodes the store keeps one copy (claims), on one node both are stored.
        if (claim === 'new') done = (err) => { if (err === null) origins!.commit(principal, id); else origins!.abort(principal, id); cb(err) }
      }
    }
    const n = Array.isArray(value) ? value.length : 1
    this.stats.accepted++
    this.stats.records += n
    compiled.stats.messages++
    compiled.stats.records += n
    this.append({ origin, arrivalUs, dataset, version: compiled.version, device, principal, payload }, done, deliver)
    return null
  }

  /** Appends to the journal, calling `deliver` when STREAMGATE_FANOUT says (before `cb`). */
  private append (record: JournalRecord, cb: AppendCallback, deliver: (() => void) | undefined): void {
    if (deliver === undefined) this.journal.append(record, cb)
    else if (this.limits.fanout === 'durable') this.journal.append(record, (err) => { if (err === null) deliver(); cb(err) })
    else this.journal.append(record, cb, deliver)
  }

  setFanout (fanout: Fanout): void {
    this.fanout = fanout
  }

  /** The live fan-out of a message that came in outside MQTT (AMQP): for ingest()'s `deliver`. */
  deliverer (dataset: string, device: string, payload: Buffer): () => void {
    return () => this.fanout?.(dataset, device, payload)
  }

  /**
   * Ingests a batch of records given one by one (HTTP): each is validated on its own; the accepted ones
   * are appended grouped by device, one journal entry per device. Resolves once they are durable.
   * A record names its device in `device` (default: the principal's own id).
   */
  async ingestRecords (principal: string, dataset: string, records: readonly unknown[]): Promise<BatchResult> {
    const compiled = this.catalog.current(dataset)
    if (compiled === undefined) throw new StreamgateError('SG_ERR_NOT_FOUND', `dataset ${dataset} does not exist`)
    compiled.stats.received += records.length
    const rejected: RecordRefusal[] = []
    const byDevice = new Map<string, unknown[]>()
    // One arrival time for the request: a replay decodes each entry's payload with its entry's arrival
    // time, so live and replayed rows must agree. Rows stay distinct by (_seq, _idx).
    const arrivalUs = this.clock.now()
    for (let i = 0; i < records.length; i++) {
      const rec = records[i]
      let device = principal
      let body = rec
      if (rec !== null && typeof rec === 'object' && !Array.isArray(rec) && Object.hasOwn(rec, 'device')) {
        const { device: d, ...rest } = rec as Record<string, unknown>
        if (typeof d !== 'string' || !isPrincipalId(d)) {
          rejected.push(this.recordRefusal(i, principal, dataset, null, RejectReason.WRONG_TYPE, 'device: expected a device id (^[A-Za-z0-9_][A-Za-z0-9_:@-]{0,127}$)', '/device', rec))
          continue
        }
        device = d
        body = rest
      }
      if (Array.isArray(body)) {
        rejected.push(this.recordRefusal(i, principal, dataset, device, RejectReason.NOT_AN_OBJECT, `record /${i} is not a JSON object`, '', rec))
        continue
      }
      if (!this.access.canPublish(principal, dataset, device)) {
        rejected.push(this.recordRefusal(i, principal, dataset, device, NOT_AUTHORIZED, `${principal} may not publish to ${dataset} as device ${device}`, '/device', rec))
        continue
      }
      const bad = compiled.decode(body, device, arrivalUs, null)
      if (bad !== null) {
        rejected.push(this.recordRefusal(i, principal, dataset, device, bad.reason, bad.detail, bad.field, rec))
        continue
      }
      let group = byDevice.get(device)
      if (group === undefined) byDevice.set(device, group = [])
      group.push(body)
    }
    const appends: Promise<void>[] = []
    let accepted = 0
    for (const [device, group] of byDevice) {
      accepted += group.length
      // Entries of at most maxBatch records: a sink decodes each entry's payload as one message.
      for (let from = 0; from < group.length; from += compiled.maxBatch) {
        const payload = Buffer.from(JSON.stringify(group.slice(from, from + compiled.maxBatch)))
        appends.push(new Promise<void>((resolve, reject) => {
          this.append({ arrivalUs, dataset, version: compiled.version, device, principal, payload },
            (err) => { if (err !== null) reject(err); else resolve() }, this.deliverer(dataset, device, payload))
        }))
      }
    }
    await Promise.all(appends)
    this.stats.accepted += appends.length
    this.stats.records += accepted
    compiled.stats.messages += appends.length
    compiled.stats.records += accepted
    return { accepted, rejected }
  }

  private recordRefusal (index: number, principal: string, dataset: string, device: string | null, reason: RejectReason, detail: string, field: string | undefined, rec: unknown): RecordRefusal {
    this.stats.refused++
    let payload: Buffer | undefined
    try { payload = Buffer.from(JSON.stringify(rec) ?? 'undefined') } catch { payload = undefined }
    this.rejects.record({ dataset, principal, device, topic: null, reason, detail, field: field === undefined ? `/${index}` : `/${index}${field}`, payload })
    return { index, reason, detail, ...(field !== undefined ? { field } : {}) }
  }

  /** Counts and logs a refusal made outside the pipeline (e.g. a topic outside the grammar). */
  refuse (principal: string | null, dataset: string | null, device: string | null, topic: string | null, payload: Buffer | undefined,
    reason: RejectReason, detail: string, field?: string, denied = false): Refusal {
    this.stats.refused++
    this.rejects.record({ dataset, principal, device, topic, reason, detail, field, payload })
    return { reason, detail, field, denied }
  }
}
