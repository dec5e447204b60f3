// The one path every message takes, whatever protocol brought it: resolve the dataset, check the grant,
// decode and validate against the schema, append to the journal. Acknowledgement (PUBACK, 202, AMQP
// ack) happens in the journal callback, after fdatasync.
import { isUtf8 } from 'node:buffer'
import type { AccessState } from './access.js'
import type { Catalog, Row } from './datasets.js'
import { RejectReason } from './errors.js'
import type { AppendCallback, Journal } from './journal.js'
import type { Rejects } from './rejects.js'

export interface Refusal {
  readonly reason: RejectReason
  readonly detail: string
  readonly field?: string | undefined
  /** An authorization failure (MQTT: disconnect; HTTP: 403), as opposed to bad data (dropped, counted). */
  readonly denied: boolean
}

export interface PipelineLimits { readonly maxPayload: number }

const NOT_AUTHORIZED: RejectReason = RejectReason.NOT_AUTHORIZED

/**
 * Arrival times in epoch µs, strictly increasing within the process, so two readings without their
 * own timestamp never share one.
 */
export class ArrivalClock {
  private last = 0
  now (): number {
    const t = Date.now() * 1000
    this.last = t > this.last ? t : this.last + 1
    return this.last
  }
}

export class Pipeline {
  readonly clock = new ArrivalClock()
  readonly stats = { accepted: 0, records: 0, refused: 0 }

  constructor (
    private readonly catalog: Catalog,
    private readonly access: AccessState,
    private readonly journal: Journal,
    private readonly rejects: Rejects,
    private readonly limits: PipelineLimits
  ) {}

  /**
   * Ingests one message (one record or a JSON array of them) for `device` in `dataset`. Returns null
   * when it was handed to the journal (`cb` fires when durable, or with the journal's refusal), or the
   * refusal (already counted and logged; `cb` is not called).
   */
  ingest (principal: string, dataset: string, device: string, payload: Buffer, topic: string | null, cb: AppendCallback): Refusal | null {
    const compiled = this.catalog.current(dataset)
    if (compiled === undefined) {
      // Counted globally: a dataset that does not exist must not grow the per-dataset counters.
      return this.refuse(principal, null, device, topic, payload, RejectReason.UNKNOWN_DATASET, `dataset ${dataset} does not exist`, undefined, true)
    }
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
    const rows: Row[] = []
    const bad = compiled.decode(value, device, arrivalUs, rows)
    if (bad !== null) return this.refuse(principal, dataset, device, topic, payload, bad.reason, bad.detail, bad.field)
    this.stats.accepted++
    this.stats.records += rows.length
    this.journal.append({ arrivalUs, dataset, version: compiled.version, device, principal, payload, rows }, cb)
    return null
  }

  /** Counts and logs a refusal made outside the pipeline (e.g. a topic outside the grammar). */
  refuse (principal: string | null, dataset: string | null, device: string | null, topic: string | null, payload: Buffer | undefined,
    reason: RejectReason, detail: string, field?: string, denied = false): Refusal {
    this.stats.refused++
    this.rejects.record({ dataset, principal, device, topic, reason, detail, field, payload })
    return { reason, detail, field, denied }
  }
}
