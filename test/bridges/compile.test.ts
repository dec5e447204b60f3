// The query compiler's QuestDB (and DuckDB) output, parsed: every identifier comes from the schema,
// every request value is a bound parameter, and the statement is one SELECT.
import { parse, astVisitor } from 'pgsql-ast-parser'
import { describe, expect, it } from 'vitest'
import { compileQuery, type Dialect } from '../../bridges/sql/compile.js'
import { datasetSchemaSchema, planQuery, type Dataset } from '../../gateway/index.js'

const ds: Dataset = {
  id: 'weather', description: '', version: 1, createdAt: '', updatedAt: '',
  schema: datasetSchemaSchema.parse({ timestamp: 'ts', tags: ['site'], fields: { temp: 'double', count: 'long', ok: 'boolean', note: 'string', at: 'timestamp' } })
}
const ALLOWED_IDENTS = new Set(['ts', 'device', 'site', 'temp', 'count', 'ok', 'note', 'at', '_seq', '_idx', '_node', 'bucket', 'ts_order', 'data', 'weather'])
const EVIL = `x'); DROP TABLE weather; --`

const queries: unknown[] = [
  {},
  { from: 0, to: '2030-01-01T00:00:00Z', select: ['temp', 'site'], where: [{ column: 'note', op: '=', value: EVIL }, { column: 'device', op: 'in', value: [EVIL, 'd1'] }, { column: 'temp', op: '<', value: 3 }], order: 'desc', limit: 10 },
  { bucket: '15m', groupBy: ['device', 'site'], aggregate: { temp: ['avg', 'first', 'last', 'count'], at: ['min'] }, where: [{ column: 'at', op: '>=', value: 5 }] },
  { aggregate: { count: ['sum'] } },
  { select: ['count'], cursor: Buffer.from(JSON.stringify([1700000000000000, 5, 0, EVIL])).toString('base64url') },
  { bucket: '1h', groupBy: ['site'], aggregate: { temp: ['max'] }, cursor: Buffer.from(JSON.stringify([3600000000, EVIL])).toString('base64url') }
]

function check (dialect: Dialect, body: unknown): void {
  const plan = planQuery(ds, body, { maxRows: 1000 })
  const { sql, params } = compileQuery(plan, dialect)
  expect(sql).not.toContain(EVIL.slice(0, 4))
  const stmts = parse(sql)
  expect(stmts).toHaveLength(1)
  expect(stmts[0]!.type).toBe('select')
  const idents = new Set<string>()
  const literals: unknown[] = []
  let maxParam = 0
  const v = astVisitor(() => ({
    ref: (r) => { if (r.name !== '*') idents.add(r.name) },
    tableRef: (t) => { idents.add(t.name); if (t.schema !== undefined) idents.add(t.schema) },
    constant: (c) => { literals.push((c as { value?: unknown }).value) },
    parameter: (p) => { maxParam = Math.max(maxParam, Number(p.name.slice(1))) }
  }))
  v.statement(stmts[0]!)
  for (const id of idents) expect(ALLOWED_IDENTS.has(id.replace(/^([kv]_|us__)/, '')), `${dialect}: identifier ${id} in ${sql}`).toBe(true)
  // Literals are only the compiler's own: bucket widths, limits, '' for absent tags, false for absent booleans.
  for (const l of literals) expect(typeof l === 'number' || l === '' || l === false, `${dialect}: literal ${String(l)} in ${sql}`).toBe(true)
  expect(maxParam).toBe(params.length)
  if (JSON.stringify(body).includes('DROP')) expect(params.some((p) => typeof p === 'string' && p.includes('DROP'))).toBe(true)
}

describe('query compiler', () => {
  for (const dialect of ['questdb', 'duckdb'] as const) {
    it.each(queries.map((q, i) => [i, q]))(`${dialect} query %i parses, binds every value and names only schema columns`, (_i, body) => {
      check(dialect, body)
    })
  }

  it('aligns buckets to the epoch in µs arithmetic, with the same width in both dialects', () => {
    const plan = planQuery(ds, { bucket: '7m', aggregate: { temp: ['avg'] } }, { maxRows: 10 })
    expect(compileQuery(plan, 'questdb').sql).toContain('cast("ts" AS LONG) - cast("ts" AS LONG) % 420000000 AS "k_bucket"')
    expect(compileQuery(plan, 'duckdb').sql).toContain('epoch_us("ts") - epoch_us("ts") % 420000000 AS "k_bucket"')
  })

  it('binds QuestDB timestamps as ISO strings compared with the column (which types the variable)', () => {
    const plan = planQuery(ds, { from: '2024-05-01T12:00:00.123456Z' }, { maxRows: 10 })
    const { sql, params } = compileQuery(plan, 'questdb')
    expect(sql).toContain('"ts" >= $1')
    expect(sql).not.toMatch(/cast\(\$/)
    expect(params[0]).toBe('2024-05-01T12:00:00.123456Z')
  })

  it('gives QuestDB no GROUP BY (implicit grouping), count() for booleans, inlined limits; DuckDB reads absent booleans as false', () => {
    const plan = planQuery(ds, { bucket: '1m', groupBy: ['device'], aggregate: { ok: ['count'] }, limit: 5 }, { maxRows: 10 })
    const qdb = compileQuery(plan, 'questdb').sql
    expect(qdb).not.toContain('GROUP BY')
    expect(qdb).toContain('count() AS "ok_count"')
    expect(qdb).toMatch(/LIMIT 6$/)
    const duck = compileQuery(plan, 'duckdb').sql
    expect(duck).toContain('GROUP BY "k_bucket", "k_device"')
    expect(duck).toContain('coalesce("ok", false) AS "v_ok"')
  })
})
