// The query language (POST /v1/datasets/:id/query): a small JSON document, validated against the
// dataset's schema into a QueryPlan. Stores compile plans to their own SQL with bound parameters;
// identifiers in a plan come only from the schema, never from the request.
import { z } from 'zod'
import type { Dataset, FieldType } from './datasets.js'
import { parseTimestampUs, schemaColumns } from './datasets.js'
import { StreamgateError } from './errors.js'

export const aggregateFns = ['avg', 'min', 'max', 'sum', 'count', 'first', 'last'] as const
export type AggregateFn = typeof aggregateFns[number]
export const whereOps = ['=', '!=', '<', '<=', '>', '>=', 'in'] as const
export type WhereOp = typeof whereOps[number]

/** What each column type allows (QuestDB's first()/last() do not take booleans). */
const ALLOWED_FNS: Record<ColumnType, readonly AggregateFn[]> = {
  double: aggregateFns,
  long: aggregateFns,
  timestamp: ['min', 'max', 'count', 'first', 'last'],
  string: ['count', 'first', 'last'],
  symbol: ['count', 'first', 'last'],
  boolean: ['count']
}

/** Column types as the query language sees them: tags and `device` are symbols. */
export type ColumnType = FieldType | 'symbol'

export interface PlanColumn { readonly name: string, readonly type: ColumnType }

export interface PlanFilter { readonly column: PlanColumn, readonly op: WhereOp, readonly values: readonly (string | number | boolean)[] }

export interface PlanAggregate { readonly column: PlanColumn, readonly fn: AggregateFn, readonly alias: string }

export interface QueryPlan {
  readonly dataset: Dataset
  readonly fromUs: number | null
  readonly toUs: number | null
  readonly mode: 'raw' | 'aggregate'
  /** raw: the columns returned, always starting with ts */
  readonly columns: readonly PlanColumn[]
  readonly where: readonly PlanFilter[]
  readonly bucketUs: number | null
  readonly aggregates: readonly PlanAggregate[]
  readonly groupBy: readonly PlanColumn[]
  readonly order: 'asc' | 'desc'
  readonly limit: number
  /** Keyset position after which the page starts: raw [ts, _seq, _idx, _node]; aggregate [bucket?, ...groups]. */
  readonly after: readonly (string | number)[] | null
}

export interface QueryResult {
  readonly rows: Record<string, string | number | boolean | null>[]
  readonly nextCursor: string | null
}

const TS_VALUE = z.union([z.number(), z.string().max(40)])
const BUCKET = /^([1-9]\d{0,5})(s|m|h|d)$/
const UNIT_US = { s: 1_000_000, m: 60_000_000, h: 3_600_000_000, d: 86_400_000_000 } as const

export const queryInputSchema = z.strictObject({
  from: TS_VALUE.optional(),
  to: TS_VALUE.optional(),
  select: z.array(z.string().max(64)).min(1).max(300).optional(),
  where: z.array(z.strictObject({
    column: z.string().max(64),
    op: z.enum(whereOps),
    value: z.union([z.string().max(4096), z.number(), z.boolean(), z.array(z.union([z.string().max(4096), z.number(), z.boolean()])).min(1).max(1000)])
  })).max(32).optional(),
  bucket: z.string().regex(BUCKET, 'a count and a unit: 10s, 1m, 1h, 1d').optional(),
  aggregate: z.record(z.string().max(64), z.array(z.enum(aggregateFns)).min(1).max(7)).optional(),
  groupBy: z.array(z.string().max(64)).max(8).optional(),
  order: z.enum(['asc', 'desc']).default('asc'),
  limit: z.number().int().min(1).optional(),
  cursor: z.string().max(2048).optional(),
  version: z.number().int().min(1).optional().describe('the schema version whose records to read (default: the current one)')
})

export type QueryInput = z.input<typeof queryInputSchema>

/** Every column a query can name, in table order: ts, device, tags (symbols), fields. */
export function queryColumns (ds: Dataset): PlanColumn[] {
  return [{ name: 'ts', type: 'timestamp' }, { name: 'device', type: 'symbol' },
    ...schemaColumns(ds.schema).map((c) => ({ name: c.name, type: c.kind === 'tag' ? 'symbol' as const : c.kind }))]
}

function bad (detail: string, field: string): never {
  throw new StreamgateError('SG_ERR_VALIDATION', detail, { field })
}

function coerce (col: PlanColumn, v: unknown, field: string): string | number | boolean {
  switch (col.type) {
    case 'timestamp': {
      const us = parseTimestampUs(v)
      if (Number.isNaN(us)) bad(`${col.name}: expected epoch milliseconds or an ISO 8601 date-time`, field)
      return us
    }
    case 'double':
      if (typeof v !== 'number' || !Number.isFinite(v)) bad(`${col.name}: expected a number`, field)
      return v as number
    case 'long':
      if (typeof v !== 'number' || !Number.isSafeInteger(v)) bad(`${col.name}: expected an integer`, field)
      return v as number
    case 'boolean':
      if (typeof v !== 'boolean') bad(`${col.name}: expected true or false`, field)
      return v as boolean
    case 'string':
    case 'symbol':
      if (typeof v !== 'string') bad(`${col.name}: expected a string`, field)
      return v as string
  }
}

/** Validates a query against the dataset's schema. Throws SG_ERR_VALIDATION naming the bad field. */
export function planQuery (ds: Dataset, input: unknown, limits: { maxRows: number }): QueryPlan {
  const parsed = queryInputSchema.safeParse(input)
  if (!parsed.success) {
    const i = parsed.error.issues[0]!
    bad(`${i.path.map(String).join('/') || '(body)'}: ${i.message}`, i.path.map(String).join('/'))
  }
  const q = parsed.data
  const cols = new Map(queryColumns(ds).map((c) => [c.name, c]))
  const col = (name: string, field: string): PlanColumn => cols.get(name) ?? bad(`${name}: not a column of ${ds.id}`, field)

  const fromUs = q.from === undefined ? null : parseTimestampUs(q.from)
  const toUs = q.to === undefined ? null : parseTimestampUs(q.to)
  if (Number.isNaN(fromUs)) bad('from: expected epoch milliseconds or an ISO 8601 date-time', 'from')
  if (Number.isNaN(toUs)) bad('to: expected epoch milliseconds or an ISO 8601 date-time', 'to')
  if (fromUs !== null && toUs !== null && fromUs > toUs) bad('from is after to', 'from')

  const where: PlanFilter[] = (q.where ?? []).map((w, i) => {
    const c = col(w.column, `where/${i}/column`)
    if (w.op === 'in') {
      if (!Array.isArray(w.value)) bad('in: value must be an array', `where/${i}/value`)
      return { column: c, op: w.op, values: (w.value as unknown[]).map((v, j) => coerce(c, v, `where/${i}/value/${j}`)) }
    }
    if (Array.isArray(w.value)) bad(`${w.op}: value must be a single value`, `where/${i}/value`)
    if (c.type === 'boolean' && w.op !== '=' && w.op !== '!=') bad(`${c.name}: booleans compare with = or != only`, `where/${i}/op`)
    return { column: c, op: w.op, values: [coerce(c, w.value, `where/${i}/value`)] }
  })

  const limit = q.limit ?? Math.min(1000, limits.maxRows)
  if (limit > limits.maxRows) bad(`limit: at most STREAMGATE_QUERY_MAX_ROWS=${limits.maxRows}`, 'limit')

  const aggregating = q.aggregate !== undefined
  if (!aggregating && (q.bucket !== undefined || q.groupBy !== undefined)) bad('bucket and groupBy need aggregate', q.bucket !== undefined ? 'bucket' : 'groupBy')
  if (aggregating && q.select !== undefined) bad('select is for raw queries; with aggregate the columns are the buckets, groups and aggregates', 'select')

  let columns: PlanColumn[] = []
  const aggregates: PlanAggregate[] = []
  const groupBy: PlanColumn[] = []
  let bucketUs: number | null = null
  if (!aggregating) {
    const names = q.select ?? [...cols.keys()]
    columns = [cols.get('ts')!, ...names.filter((n) => n !== 'ts').map((n, i) => col(n, `select/${i}`))]
    if (new Set(columns.map((c) => c.name)).size !== columns.length) bad('select names a column twice', 'select')
  } else {
    for (const [i, g] of (q.groupBy ?? []).entries()) {
      const c = col(g, `groupBy/${i}`)
      if (c.type !== 'symbol') bad(`${g}: only device and tags can be grouped by`, `groupBy/${i}`)
      if (groupBy.some((x) => x.name === c.name)) bad(`${g}: listed twice`, `groupBy/${i}`)
      groupBy.push(c)
    }
    for (const [name, fns] of Object.entries(q.aggregate!)) {
      const c = col(name, `aggregate/${name}`)
      for (const fn of new Set(fns)) {
        if (!ALLOWED_FNS[c.type].includes(fn)) bad(`${fn} does not apply to ${c.name} (${c.type})`, `aggregate/${name}`)
        aggregates.push({ column: c, fn, alias: `${c.name}_${fn}` })
      }
    }
    if (aggregates.length === 0) bad('aggregate names no function', 'aggregate')
    if (aggregates.length > 64) bad('at most 64 aggregates', 'aggregate')
    const outNames = new Set<string>(['bucket', ...groupBy.map((g) => g.name)])
    for (const a of aggregates) if (outNames.has(a.alias)) bad(`${a.alias} collides with a group column`, 'aggregate')
    if (q.bucket !== undefined) {
      const m = BUCKET.exec(q.bucket)!
      bucketUs = Number(m[1]) * UNIT_US[m[2] as keyof typeof UNIT_US]
      if (bucketUs > 366 * UNIT_US.d) bad('bucket: at most 366d', 'bucket')
    }
  }

  const keyTypes: ('number' | 'string')[] = !aggregating ? ['number', 'number', 'number', 'string'] : [...(bucketUs !== null ? ['number' as const] : []), ...groupBy.map(() => 'string' as const)]
  const after = q.cursor === undefined ? null : decodeCursor(q.cursor, keyTypes)
  return { dataset: ds, fromUs, toUs, mode: aggregating ? 'aggregate' : 'raw', columns, where, bucketUs, aggregates, groupBy, order: q.order, limit, after }
}

/** Cursors are opaque to clients: base64url of the JSON key of the last row returned. */
export function encodeCursor (key: readonly (string | number)[]): string {
  return Buffer.from(JSON.stringify(key)).toString('base64url')
}

function decodeCursor (cursor: string, types: readonly ('number' | 'string')[]): (string | number)[] {
  let key: unknown
  try {
    key = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'))
  } catch {
    bad('cursor: not a cursor this query returned', 'cursor')
  }
  if (!Array.isArray(key) || key.length !== types.length || key.some((v, i) => typeof v !== types[i] || (typeof v === 'number' && !Number.isSafeInteger(v)) || (typeof v === 'string' && v.length > 4096))) {
    bad('cursor: not a cursor this query returned', 'cursor')
  }
  return key as (string | number)[]
}
