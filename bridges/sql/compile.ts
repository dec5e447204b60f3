// Compiles a validated QueryPlan to SQL for DuckDB (embedded store) or QuestDB (over PGWire). Both get
// the same shape, so the same query gives the same answer on either store:
//   - every value is a bound parameter ($n); identifiers come from the schema and are double-quoted;
//   - buckets are computed as epoch-µs arithmetic (ts - ts % width), aligned to the Unix epoch in both;
//   - NULL semantics are spelled out: range comparisons skip absent values, `!=` matches them;
//   - first/last are the values of the earliest/latest row of the group by ts.
// The SQL stays inside what PostgreSQL's grammar accepts (no SAMPLE BY), so tests parse it.
import type { Dataset, PlanColumn, PlanFilter, QueryPlan, QueryResult, Row } from '../../gateway/index.js'
import { encodeCursor, isoFromUs, queryColumns, StreamgateError, tableName } from '../../gateway/index.js'

export type Dialect = 'duckdb' | 'questdb'

export interface CompiledSql { readonly sql: string, readonly params: unknown[] }

// Column names are at most 63 characters and dataset ids too; a later version's table adds `__v<n>`
// (QuestDB's names are limited by its file system only; the ILP client's max_name_len is 127).
const IDENT = /^[a-z_][a-z0-9_]{0,126}$/
/** Raw-mode timestamp columns are selected as epoch µs under this prefix and renamed back. */
const US_PREFIX = 'us__'

export function q (name: string): string {
  if (!IDENT.test(name)) throw new StreamgateError('SG_ERR_INTERNAL', `refusing identifier ${JSON.stringify(name)}`)
  return `"${name}"`
}

class Builder {
  readonly params: unknown[] = []
  constructor (readonly dialect: Dialect) {}

  param (v: unknown): string {
    this.params.push(v)
    return `$${this.params.length}`
  }

  /**
   * A timestamp parameter given in epoch µs. QuestDB: an ISO string compared directly with the column,
   * which types the bind variable as TIMESTAMP (inside cast() an untyped variable becomes DOUBLE).
   */
  tsParam (us: number): string {
    return this.dialect === 'duckdb' ? `make_timestamp(${this.param(BigInt(us))}::BIGINT)` : this.param(isoFromUs(us))
  }

  /**
   * A column as queries read it. QuestDB cannot store a NULL BOOLEAN (an absent one is false), so
   * DuckDB reads absent booleans as false too: the same answer on both stores.
   */
  col (c: PlanColumn): string {
    return c.type === 'boolean' && this.dialect === 'duckdb' ? `coalesce(${q(c.name)}, false)` : q(c.name)
  }

  /** A timestamp column as epoch µs. */
  us (expr: string): string {
    return this.dialect === 'duckdb' ? `epoch_us(${expr})` : `cast(${expr} AS LONG)`
  }

  value (col: PlanColumn, v: string | number | boolean): string {
    return col.type === 'timestamp' ? this.tsParam(v as number) : this.param(v)
  }

  table (dataset: string): string {
    return this.dialect === 'duckdb' ? `data.${q(dataset)}` : q(dataset)
  }
}

function filterSql (b: Builder, f: PlanFilter): string {
  const c = b.col(f.column)
  switch (f.op) {
    case 'in': return `${c} IN (${f.values.map((v) => b.value(f.column, v)).join(', ')})`
    case '=': return `${c} = ${b.value(f.column, f.values[0]!)}`
    case '!=': return `(${c} <> ${b.value(f.column, f.values[0]!)} OR ${c} IS NULL)`
    default: return `(${c} IS NOT NULL AND ${c} ${f.op} ${b.value(f.column, f.values[0]!)})`
  }
}

/** k1 > v1 OR (k1 = v1 AND (k2 > v2 OR ...)): keyset pagination without row-value comparison. */
function after (keys: readonly string[], values: readonly string[], op: '>' | '<'): string {
  let sql = `${keys.at(-1)} ${op} ${values.at(-1)}`
  for (let i = keys.length - 2; i >= 0; i--) sql = `(${keys[i]} ${op} ${values[i]} OR (${keys[i]} = ${values[i]} AND ${sql}))`
  return sql
}

export function compileQuery (plan: QueryPlan, dialect: Dialect): CompiledSql {
  const b = new Builder(dialect)
  const where: string[] = []
  if (plan.fromUs !== null) where.push(`"ts" >= ${b.tsParam(plan.fromUs)}`)
  if (plan.toUs !== null) where.push(`"ts" < ${b.tsParam(plan.toUs)}`)
  for (const f of plan.where) where.push(filterSql(b, f))
  const dir = plan.order === 'asc' ? 'ASC' : 'DESC'
  const cmp = plan.order === 'asc' ? '>' : '<'
  const table = b.table(tableName(plan.dataset.id, plan.dataset.version))

  if (plan.mode === 'raw') {
    // A row is (ts, _seq, _idx) in one node's store; QuestDB, shared by several nodes, adds _node.
    const shared = dialect === 'questdb'
    if (plan.after !== null) {
      const [ts, seq, idx, node] = plan.after as [number, number, number, string]
      where.push(shared
        ? after(['"ts"', '"_seq"', '"_idx"', '"_node"'], [b.tsParam(ts), b.param(seq), b.param(idx), b.param(node)], cmp)
        : after(['"ts"', '"_seq"', '"_idx"'], [b.tsParam(ts), b.param(seq), b.param(idx)], cmp))
    }
    // Timestamps leave as epoch µs under names of their own, so ORDER BY "ts" stays on the designated
    // timestamp (QuestDB then reads in time order instead of sorting the whole table).
    const select = plan.columns.map((c) => c.type === 'timestamp' ? `${b.us(q(c.name))} AS ${q(US_PREFIX + c.name)}` : `${b.col(c)} AS ${q(c.name)}`)
    const sql = `SELECT ${select.join(', ')}, "_seq", "_idx"${shared ? ', "_node"' : ''} FROM ${table}` +
      (where.length > 0 ? ` WHERE ${where.join(' AND ')}` : '') +
      ` ORDER BY "ts" ${dir}, "_seq" ${dir}, "_idx" ${dir}${shared ? `, "_node" ${dir}` : ''} LIMIT ${plan.limit + 1}`
    return { sql, params: b.params }
  }

  // Aggregates: an inner select computes the bucket and the inputs under names of their own (so no
  // alias shadows a column in WHERE), the outer one groups. Subqueries are aliased (PostgreSQL needs it).
  const inner: string[] = []
  const keys: string[] = []
  const outKeys: string[] = []
  if (plan.bucketUs !== null) {
    inner.push(`${b.us('"ts"')} - ${b.us('"ts"')} % ${plan.bucketUs} AS "k_bucket"`)
    keys.push('"k_bucket"')
    outKeys.push('"k_bucket" AS "bucket"')
  }
  for (const g of plan.groupBy) {
    // Absent tags group as '' (reported as null), so keyset comparisons never meet a NULL. QuestDB
    // symbols are cast to STRING first: coalesce wants one type.
    const key = dialect === 'questdb' ? `cast(${q(g.name)} AS STRING)` : q(g.name)
    inner.push(`coalesce(${key}, '') AS ${q('k_' + g.name)}`)
    keys.push(q('k_' + g.name))
    outKeys.push(`${q('k_' + g.name)} AS ${q(g.name)}`)
  }
  const inputs = new Set<string>()
  for (const a of plan.aggregates) {
    if (inputs.has(a.column.name)) continue
    inputs.add(a.column.name)
    inner.push(`${a.column.type === 'timestamp' ? b.us(q(a.column.name)) : b.col(a.column)} AS ${q('v_' + a.column.name)}`)
  }
  if (dialect === 'duckdb') inner.push('"ts" AS "v_ts_order"')
  const aggs = plan.aggregates.map((a) => {
    const v = q('v_' + a.column.name)
    switch (a.fn) {
      // QuestDB has no count(BOOLEAN); its booleans are never NULL, so count() is the same number.
      case 'count': return `${a.column.type === 'boolean' && dialect === 'questdb' ? 'count()' : `count(${v})`} AS ${q(a.alias)}`
      case 'first': return `${dialect === 'duckdb' ? `arg_min_null(${v}, "v_ts_order")` : `first(${v})`} AS ${q(a.alias)}`
      case 'last': return `${dialect === 'duckdb' ? `arg_max_null(${v}, "v_ts_order")` : `last(${v})`} AS ${q(a.alias)}`
      default: return `${a.fn}(${v}) AS ${q(a.alias)}`
    }
  })
  const innerSql = `SELECT ${inner.join(', ')} FROM ${table}` + (where.length > 0 ? ` WHERE ${where.join(' AND ')}` : '')
  // QuestDB groups by the non-aggregated columns implicitly, and checks explicit GROUP BY keys against
  // the select list's names (which are renamed here), so only DuckDB gets the clause.
  let sql = `SELECT ${[...outKeys, ...aggs].join(', ')} FROM (${innerSql}) AS "grp"` + (keys.length > 0 && dialect === 'duckdb' ? ` GROUP BY ${keys.join(', ')}` : '')
  const outNames = [...(plan.bucketUs !== null ? ['"bucket"'] : []), ...plan.groupBy.map((g) => q(g.name))]
  if (keys.length > 0 && plan.after !== null) {
    const values = plan.after.map((v) => b.param(v))
    sql = `SELECT * FROM (${sql}) AS "page" WHERE ${after(outNames, values, cmp)}`
  }
  if (keys.length > 0) sql += ` ORDER BY ${outNames.map((k) => `${k} ${dir}`).join(', ')}`
  // The limit is a validated integer, inlined: some QuestDB 8.2 releases leave an untyped LIMIT $n undefined.
  sql += ` LIMIT ${plan.limit + 1}`
  return { sql: sql.replace(/\s+/g, ' ').trim(), params: b.params }
}

type Cell = string | number | boolean | null

/** The plan behind GET /v1/datasets/:id/records: every column, newest first. */
export function latestPlan (ds: Dataset, range: { from: number | null, to: number | null, limit: number }): QueryPlan {
  return { dataset: ds, fromUs: range.from, toUs: range.to, mode: 'raw', columns: queryColumns(ds), where: [], bucketUs: null, aggregates: [], groupBy: [], order: 'desc', limit: range.limit, after: null }
}

/** Raw rows as stored rows (epoch µs timestamps, absent values left out). */
export function toStoredRows (rows: readonly Record<string, unknown>[], limit: number): Row[] {
  return rows.slice(0, limit).map((r) => {
    const out: Record<string, string | number | boolean> = {}
    for (const [k, v] of Object.entries(unalias(r))) {
      if (k === '_seq' || k === '_idx' || k === '_node' || v === null || v === undefined || (typeof v === 'number' && Number.isNaN(v))) continue
      out[k] = typeof v === 'bigint' ? Number(v) : v as string | number | boolean
    }
    return out as Row
  })
}

/** A raw-mode row as the store returned it, with timestamp columns under their own names again (epoch µs). */
export function unalias (row: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(row)) out[k.startsWith(US_PREFIX) ? k.slice(US_PREFIX.length) : k] = v
  return out
}

function cell (v: unknown): Cell {
  if (v === null || v === undefined) return null
  if (typeof v === 'bigint') return Number(v)
  if (typeof v === 'number') return Number.isNaN(v) ? null : v
  if (typeof v === 'string' || typeof v === 'boolean') return v
  return String(v)
}

/** Turns the store's rows into the API's: ISO timestamps, numbers, nulls; and the next page's cursor. */
export function shapeRows (plan: QueryPlan, rows: readonly Record<string, unknown>[], numeric: (v: unknown) => unknown = (v) => v): QueryResult {
  const more = rows.length > plan.limit
  const page = more ? rows.slice(0, plan.limit) : rows
  const tsCols = new Set<string>()
  if (plan.mode === 'raw') {
    for (const c of plan.columns) if (c.type === 'timestamp') tsCols.add(c.name)
  } else {
    if (plan.bucketUs !== null) tsCols.add('bucket')
    for (const a of plan.aggregates) if (a.column.type === 'timestamp' && a.fn !== 'count') tsCols.add(a.alias)
  }
  const longs = new Set<string>()
  for (const a of plan.aggregates) if (a.fn === 'count' || (a.fn === 'sum' && a.column.type === 'long')) longs.add(a.alias)
  const out = page.map((r) => {
    const o: Record<string, Cell> = {}
    for (const [key, raw] of Object.entries(r)) {
      if (key === '_seq' || key === '_idx' || key === '_node') continue
      const k = key.startsWith(US_PREFIX) ? key.slice(US_PREFIX.length) : key
      let v = cell(numeric(raw))
      if (tsCols.has(k) && typeof v === 'number') v = isoFromUs(v)
      else if (longs.has(k) && typeof v === 'string') v = Number(v)
      else if (plan.groupBy.some((g) => g.name === k) && v === '') v = null
      o[k] = v
    }
    return o
  })
  let nextCursor: string | null = null
  const last = page.at(-1)
  if (more && last !== undefined) {
    const n = (v: unknown): number => Number(numeric(v))
    if (plan.mode === 'raw') nextCursor = encodeCursor([n(last[US_PREFIX + 'ts']), n(last._seq), n(last._idx), String(last._node ?? '')])
    else nextCursor = encodeCursor([...(plan.bucketUs !== null ? [n(last.bucket)] : []), ...plan.groupBy.map((g) => String(last[g.name] ?? ''))])
  }
  return { rows: out, nextCursor }
}
