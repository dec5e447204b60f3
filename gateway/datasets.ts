// Datasets and their schemas. A schema is compiled once per version into a validator that turns a
// parsed payload into flat rows (`ts` in epoch microseconds, `device`, tags, fields).
import { z } from 'zod'
import { RecordRejection, RejectReason } from './errors.js'
import { DATASET_ID } from './topics.js'

export const COLUMN_NAME = /^[a-z_][a-z0-9_]{0,62}$/
/** Column names the gateway owns in every dataset table. */
export const RESERVED_COLUMNS: ReadonlySet<string> = new Set(['ts', 'device', '_node', '_seq', '_idx'])

export const fieldTypes = ['double', 'long', 'boolean', 'string', 'timestamp'] as const
export type FieldType = typeof fieldTypes[number]

const columnName = z.string().regex(COLUMN_NAME, 'must match ^[a-z_][a-z0-9_]{0,62}$')
const fieldType = z.enum(fieldTypes)
const fieldSpecSchema = z.union([
  fieldType,
  z.strictObject({ type: fieldType, required: z.boolean().default(false) })
])

export const datasetSchemaSchema = z.strictObject({
  timestamp: columnName.optional().describe('payload field holding the reading time (epoch ms or ISO 8601); absent: arrival time'),
  messageId: columnName.optional().describe('a tag or a string or long field identifying each message: a message whose id its principal sent before is acknowledged and not stored again (a resend after a reconnect, a restart or the loss of a node); for an array, the first record\'s id. Absent: every message is new'),
  tags: z.array(columnName).max(32).default([]),
  fields: z.record(columnName, fieldSpecSchema)
}).superRefine((s, ctx) => {
  if (s.messageId !== undefined) {
    const spec = s.fields[s.messageId]
    const kind = spec === undefined ? (s.tags.includes(s.messageId) ? 'string' : undefined) : fieldSpec(spec).type
    if (kind !== 'string' && kind !== 'long') ctx.addIssue({ code: 'custom', path: ['messageId'], message: `${s.messageId} must be a tag, or a string or long field of the schema` })
  }
  const seen = new Set<string>()
  const names = [...s.tags.map((t) => ['tags', t] as const), ...Object.keys(s.fields).map((f) => ['fields', f] as const)]
  if (Object.keys(s.fields).length === 0) ctx.addIssue({ code: 'custom', path: ['fields'], message: 'needs at least one field' })
  if (Object.keys(s.fields).length > 256) ctx.addIssue({ code: 'custom', path: ['fields'], message: 'at most 256 fields' })
  for (const [where, name] of names) {
    if (RESERVED_COLUMNS.has(name)) ctx.addIssue({ code: 'custom', path: [where, name], message: `${name} is reserved` })
    // Names an object inherits (__proto__, constructor, ...) would read through to Object.prototype.
    if (name in Object.prototype) ctx.addIssue({ code: 'custom', path: [where, name], message: `${name} is reserved (an Object.prototype property)` })
    if (name === s.timestamp) ctx.addIssue({ code: 'custom', path: [where, name], message: `${name} is the timestamp field` })
    if (seen.has(name)) ctx.addIssue({ code: 'custom', path: [where, name], message: `${name} is declared twice` })
    seen.add(name)
  }
})

export type DatasetSchemaInput = z.input<typeof datasetSchemaSchema>
export type DatasetSchema = z.output<typeof datasetSchemaSchema>

export const datasetInputSchema = z.strictObject({
  id: z.string().regex(DATASET_ID, 'must match ^[a-z][a-z0-9_]{0,62}$').refine((id) => !id.includes('__'), 'must not contain "__" (it names the tables of later schema versions)'),
  description: z.string().max(1024).default(''),
  schema: datasetSchemaSchema
})

export interface Dataset {
  readonly id: string
  /**
   * The journal position when this dataset was created: entries of the same id at or below it belong
   * to an earlier dataset of that id (deleted since) and are never stored in this one. 0 for datasets
   * created before this was recorded.
   */
  readonly sinceSeq?: number
  readonly description: string
  readonly schema: DatasetSchema
  readonly version: number
  readonly createdAt: string
  readonly updatedAt: string
}

export type ColumnKind = 'tag' | FieldType
export interface Column { readonly name: string, readonly kind: ColumnKind, readonly required: boolean }

/** A stored row: `ts` (epoch µs) and `device` always, then tag and field columns by name. */
export type Row = Record<string, string | number | boolean> & { ts: number, device: string }

const ISO_8601 = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:?\d{2})$/
// TIMESTAMP range QuestDB and DuckDB both store: 1970-01-01 up to 2261-12-31 (µs since epoch, 64-bit).
const MAX_TS_US = 9_214_646_400_000_000

/** Epoch microseconds from epoch milliseconds (a JSON number) or an ISO 8601 string; NaN when invalid. */
export function parseTimestampUs (v: unknown): number {
  if (typeof v === 'number') {
    const us = Math.round(v * 1000)
    return Number.isFinite(us) && us >= 0 && us <= MAX_TS_US ? us : NaN
  }
  if (typeof v !== 'string' || v.length > 40) return NaN
  const m = ISO_8601.exec(v)
  if (m === null) return NaN
  const frac = m[7]
  const ms = Date.parse(frac === undefined ? v : v.replace('.' + frac, ''))
  if (!Number.isFinite(ms)) return NaN
  const fracUs = frac === undefined ? 0 : Math.floor(Number((frac + '000000').slice(0, 6)))
  const us = ms * 1000 + fracUs
  return us >= 0 && us <= MAX_TS_US ? us : NaN
}

/** ISO 8601 with microseconds, from epoch µs. */
export function isoFromUs (us: number): string {
  const ms = Math.floor(us / 1000)
  return new Date(ms).toISOString().slice(0, -1) + String(us - ms * 1000).padStart(3, '0') + 'Z'
}

export interface SchemaLimits { readonly maxBatch: number, readonly maxString: number }

/**
 * A schema version compiled for the hot path: one Map lookup per payload key, no closures or regexes
 * created per message.
 */
/** A field's spec in its long form: `"double"` is `{ type: "double", required: false }`. */
export function fieldSpec (spec: DatasetSchema['fields'][string]): { readonly type: FieldType, readonly required: boolean } {
  return typeof spec === 'string' ? { type: spec, required: false } : spec
}

/** A schema's columns other than `ts` and `device`: tags first, then fields, in declaration order. */
export function schemaColumns (schema: DatasetSchema): Column[] {
  const cols: Column[] = schema.tags.map((t) => ({ name: t, kind: 'tag' as const, required: false }))
  for (const [name, spec] of Object.entries(schema.fields)) {
    const f = fieldSpec(spec)
    cols.push({ name, kind: f.type, required: f.required })
  }
  return cols
}

/** What a dataset has taken in (read by /metrics). */
export interface DatasetStats {
  /** What reached the pipeline for this dataset, accepted or not: MQTT and AMQP messages, HTTP batch records. */
  received: number
  /** Accepted into the journal: messages (HTTP batches: journal entries) and the records in them. */
  messages: number
  records: number
}

export class CompiledSchema {
  readonly columns: readonly Column[]
  /** Entries of this dataset id at or below this journal position belong to an earlier dataset. */
  readonly sinceSeq: number
  /** Shared by every version of the dataset; the pipeline counts here (no lookup per message). */
  stats: DatasetStats = { received: 0, messages: 0, records: 0 }
  private readonly byKey: Map<string, Column>
  private readonly required: readonly Column[]
  private readonly tsKey: string | undefined
  /** The payload field identifying a message (schema.messageId), if any. */
  private readonly idKey: string | undefined

  /** Most records one message (and so one journal entry) may hold. */
  get maxBatch (): number { return this.limits.maxBatch }

  constructor (readonly dataset: string, readonly version: number, schema: DatasetSchema, private readonly limits: SchemaLimits, sinceSeq = 0) {
    this.sinceSeq = sinceSeq
    const cols = schemaColumns(schema)
    this.columns = cols
    this.byKey = new Map(cols.map((c) => [c.name, c]))
    this.required = cols.filter((c) => c.required)
    this.tsKey = schema.timestamp
    this.idKey = schema.messageId
  }

  /**
   * The message's id (schema.messageId) of a payload decode() accepted: the first record's, with the
   * record count for an array (a resent batch is the same batch); undefined without one.
   */
  messageIdOf (value: unknown): string | undefined {
    if (this.idKey === undefined) return undefined
    const first = Array.isArray(value) ? value[0] as Record<string, unknown> : value as Record<string, unknown>
    const v = first[this.idKey]
    if (typeof v !== 'string' && typeof v !== 'number') return undefined
    return `${this.dataset}/${String(v)}${Array.isArray(value) ? `#${value.length}` : ''}`
  }

  /**
   * Validates a parsed payload (one object or an array of them) and appends its rows to `out` (with
   * `out` null it only validates: the gateway's hot path, which journals the payload as received).
   * All or nothing: on the first bad record it returns the rejection and `out` must be discarded.
   */
  decode (value: unknown, device: string, arrivalUs: number, out: Row[] | null): RecordRejection | null {
    if (Array.isArray(value)) {
      if (value.length === 0) return new RecordRejection(RejectReason.EMPTY_BATCH, 'empty array')
      if (value.length > this.limits.maxBatch) {
        return new RecordRejection(RejectReason.BATCH_TOO_LARGE, `batch of ${value.length} records exceeds STREAMGATE_MAX_BATCH=${this.limits.maxBatch}`)
      }
      for (let i = 0; i < value.length; i++) {
        const r = this.decodeOne(value[i], device, arrivalUs, out, i)
        if (r !== null) return r
      }
      return null
    }
    return this.decodeOne(value, device, arrivalUs, out, -1)
  }

  private decodeOne (value: unknown, device: string, arrivalUs: number, out: Row[] | null, index: number): RecordRejection | null {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      return new RecordRejection(RejectReason.NOT_AN_OBJECT, `record${at(index)} is not a JSON object`, at(index) || '/')
    }
    const obj = value as Record<string, unknown>
    const row = out === null ? null : { ts: arrivalUs, device } as Row
    // for-in over a JSON.parse result sees only its own keys, without allocating a key array.
    for (const key in obj) {
      const v = obj[key]
      if (key === this.tsKey) {
        if (v === null) continue
        const us = parseTimestampUs(v)
        if (Number.isNaN(us)) return new RecordRejection(RejectReason.BAD_TIMESTAMP, `${key}: expected epoch milliseconds or an ISO 8601 date-time between 1970 and 2261`, `${at(index)}/${key}`)
        if (row !== null) row.ts = us
        continue
      }
      const col = this.byKey.get(key)
      if (col === undefined) return new RecordRejection(RejectReason.UNKNOWN_FIELD, `${key}: not in the schema of ${this.dataset} v${this.version}`, `${at(index)}/${key}`)
      if (v === null) continue
      const r = this.checkValue(col, v, index)
      if (r !== null) return r
      if (row !== null) row[key] = col.kind === 'timestamp' ? parseTimestampUs(v) : v as string | number | boolean
    }
    for (const c of this.required) {
      // null counts as absent
      if (!Object.hasOwn(obj, c.name) || obj[c.name] === null) return new RecordRejection(RejectReason.MISSING_FIELD, `${c.name}: required`, `${at(index)}/${c.name}`)
    }
    if (row !== null) out!.push(row)
    return null
  }

  private checkValue (col: Column, v: unknown, index: number): RecordRejection | null {
    switch (col.kind) {
      case 'double':
        if (typeof v !== 'number') return wrongType(col, v, fieldPath(index, col.name))
        if (!Number.isFinite(v)) return new RecordRejection(RejectReason.OUT_OF_RANGE, `${col.name}: not a finite number`, fieldPath(index, col.name))
        return null
      case 'long':
        if (typeof v === 'number' && !Number.isFinite(v)) return new RecordRejection(RejectReason.OUT_OF_RANGE, `${col.name}: not a finite number`, fieldPath(index, col.name))
        if (typeof v !== 'number' || !Number.isInteger(v)) return wrongType(col, v, fieldPath(index, col.name))
        if (!Number.isSafeInteger(v)) return new RecordRejection(RejectReason.OUT_OF_RANGE, `${col.name}: integer beyond ±2^53-1 loses precision in JSON`, fieldPath(index, col.name))
        return null
      case 'boolean':
        return typeof v === 'boolean' ? null : wrongType(col, v, fieldPath(index, col.name))
      case 'tag':
      case 'string':
        if (typeof v !== 'string') return wrongType(col, v, fieldPath(index, col.name))
        if (v.length > this.limits.maxString) return new RecordRejection(RejectReason.STRING_TOO_LONG, `${col.name}: longer than STREAMGATE_MAX_STRING=${this.limits.maxString}`, fieldPath(index, col.name))
        return null
      case 'timestamp':
        return Number.isNaN(parseTimestampUs(v)) ? new RecordRejection(RejectReason.BAD_TIMESTAMP, `${col.name}: expected epoch milliseconds or an ISO 8601 date-time`, fieldPath(index, col.name)) : null
    }
  }
}

/** `/3` for the fourth record of a batch, '' for a lone record: built only when refusing. */
function at (index: number): string {
  return index < 0 ? '' : `/${index}`
}

function fieldPath (index: number, name: string): string {
  return `${at(index)}/${name}`
}

function wrongType (col: Column, v: unknown, path: string): RecordRejection {
  const got = Array.isArray(v) ? 'array' : v === null ? 'null' : typeof v
  return new RecordRejection(RejectReason.WRONG_TYPE, `${col.name}: expected ${col.kind === 'tag' ? 'string (tag)' : col.kind}, got ${got}`, path)
}

/** A dataset as the API shows it (without the journal position it was created at). */
export function publicDataset (d: Dataset): Omit<Dataset, 'sinceSeq'> {
  const { sinceSeq: _s, ...rest } = d
  return rest
}

/** The table that stores a dataset's records under one schema version: `<id>`, then `<id>__v<n>`. */
export function tableName (id: string, version: number): string {
  return version === 1 ? id : `${id}__v${version}`
}

/** Live datasets by id, each with its compiled schema versions. */
export class Catalog {
  private readonly datasets = new Map<string, { dataset: Dataset, current: CompiledSchema, versions: Map<number, CompiledSchema>, history: Map<number, Dataset>, stats: DatasetStats }>()
  /** Counts changes (a version put, a dataset removed or restored): what was decoded under an older count may decode differently now. */
  changes = 0

  constructor (private readonly limits: SchemaLimits) {}

  /** Makes `dataset` the current version (and keeps the earlier ones for entries accepted under them). */
  put (dataset: Dataset): void {
    const compiled = new CompiledSchema(dataset.id, dataset.version, dataset.schema, this.limits, dataset.sinceSeq ?? 0)
    const prior = this.datasets.get(dataset.id)
    const versions = prior?.versions ?? new Map<number, CompiledSchema>()
    const history = prior?.history ?? new Map<number, Dataset>()
    const stats = prior?.stats ?? { received: 0, messages: 0, records: 0 }
    compiled.stats = stats
    versions.set(dataset.version, compiled)
    history.set(dataset.version, dataset)
    this.datasets.set(dataset.id, { dataset, current: compiled, versions, history, stats })
    this.changes++
  }

  /** An earlier version, known so that journal entries accepted under it still decode (load order: oldest first, current last). */
  putVersion (dataset: Dataset): void {
    const entry = this.datasets.get(dataset.id)
    if (entry === undefined) return this.put(dataset)
    if (dataset.version >= entry.dataset.version) return this.put(dataset)
    const compiled = new CompiledSchema(dataset.id, dataset.version, dataset.schema, this.limits, dataset.sinceSeq ?? 0)
    compiled.stats = entry.stats
    entry.versions.set(dataset.version, compiled)
    entry.history.set(dataset.version, dataset)
    this.changes++
  }

  /** The dataset as it was under `version` (its schema then), or undefined. */
  datasetVersion (id: string, version: number): Dataset | undefined {
    return this.datasets.get(id)?.history.get(version)
  }

  /** Every version known, newest first. */
  versionsOf (id: string): Dataset[] {
    return [...(this.datasets.get(id)?.history.values() ?? [])].sort((a, b) => b.version - a.version)
  }

  stats (id: string): DatasetStats | undefined {
    return this.datasets.get(id)?.stats
  }

  delete (id: string): boolean {
    this.changes++
    return this.datasets.delete(id)
  }

  /** Removes a dataset, returning what restore() puts back unchanged. */
  take (id: string): unknown {
    const entry = this.datasets.get(id)
    this.datasets.delete(id)
    this.changes++
    return entry
  }

  restore (id: string, taken: unknown): void {
    if (taken !== undefined) this.datasets.set(id, taken as NonNullable<ReturnType<typeof this.datasets.get>>)
    this.changes++
  }

  get (id: string): Dataset | undefined {
    return this.datasets.get(id)?.dataset
  }

  current (id: string): CompiledSchema | undefined {
    return this.datasets.get(id)?.current
  }

  version (id: string, version: number): CompiledSchema | undefined {
    return this.datasets.get(id)?.versions.get(version)
  }

  list (): Dataset[] {
    return [...this.datasets.values()].map((d) => d.dataset).sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
  }
}
