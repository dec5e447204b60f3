// Queries against QuestDB over PGWire (the `pg` client), behind an opossum breaker: while it is open,
// queries fail fast with 503 and Retry-After instead of piling up on a database that is down.
import pg from 'pg'
import type CircuitBreaker from 'opossum'
import { breakerStatus, createBreaker } from '../breaker.js'
import type { BreakerStatus, Dataset, QueryPlan, QueryResult, RecordQuery, Row } from '../../gateway/index.js'
import { StreamgateError, tableName } from '../../gateway/index.js'
import { compileQuery, latestPlan, q, shapeRows, toStoredRows } from '../sql/compile.js'
import type { SqlExecutor } from './sink.js'

const INT8 = 20

/**
 * A pg pool for QuestDB. LONG (int8) values come back as numbers (our LONGs are within ±2^53: µs
 * timestamps, journal positions, counts); TIMESTAMPs are always selected as LONG µs, never as Dates.
 */
export function createPgExecutor (url: string, timeoutMs: number): SqlExecutor & { pool: pg.Pool } {
  const pool = new pg.Pool({
    connectionString: url,
    max: 4,
    query_timeout: timeoutMs,
    connectionTimeoutMillis: Math.min(timeoutMs, 5000),
    types: { getTypeParser: ((oid: number, format?: 'text' | 'binary') => oid === INT8 ? Number : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser }
  })
  pool.on('error', () => undefined) // idle client errors (QuestDB restarting) are retried on next use
  return {
    pool,
    async query (sql, params = []) {
      const r = await pool.query(sql, params)
      return { rows: r.rows as Record<string, unknown>[] }
    },
    async close () { await pool.end() }
  }
}

export interface QuestdbQueryOptions { readonly timeoutMs: number, readonly resetMs: number }

export class QuestdbQuery implements RecordQuery {
  private readonly breakerImpl: CircuitBreaker<[string, unknown[]], { rows: Record<string, unknown>[] }>
  private lastError: string | null = null

  constructor (private readonly sql: SqlExecutor, private readonly opts: QuestdbQueryOptions) {
    this.breakerImpl = createBreaker((text: string, params: unknown[]) => sql.query(text, params), {
      timeout: opts.timeoutMs,
      resetTimeout: opts.resetMs,
      // A query QuestDB rejects (SQL error with a code) says nothing about QuestDB's health.
      errorFilter: (err: unknown) => typeof (err as { code?: unknown })?.code === 'string' && /^[0-9A-Z]{5}$/.test((err as { code: string }).code)
    })
  }

  breaker (): BreakerStatus {
    return breakerStatus(this.breakerImpl, this.lastError)
  }

  private async run (text: string, params: unknown[]): Promise<Record<string, unknown>[]> {
    try {
      const r = await this.breakerImpl.fire(text, params)
      return r.rows
    } catch (err) {
      this.lastError = (err as Error).message
      if (this.breakerImpl.opened) {
        throw new StreamgateError('SG_ERR_UNAVAILABLE', 'QuestDB is unavailable (circuit open); retry later', { retryAfter: Math.ceil(this.opts.resetMs / 1000) }, { cause: err })
      }
      if (/timed out/i.test((err as Error).message)) throw new StreamgateError('SG_ERR_QUERY_TIMEOUT', `query ran longer than ${this.opts.timeoutMs} ms`, { retryAfter: 1 }, { cause: err })
      throw new StreamgateError('SG_ERR_UNAVAILABLE', 'QuestDB query failed: ' + (err as Error).message, { retryAfter: 1 }, { cause: err })
    }
  }

  async query (plan: QueryPlan): Promise<QueryResult> {
    const { sql, params } = compileQuery(plan, 'questdb')
    return shapeRows(plan, await this.run(sql, params))
  }

  async latest (ds: Dataset, range: { from: number | null, to: number | null, limit: number }): Promise<Row[]> {
    const { sql, params } = compileQuery(latestPlan(ds, range), 'questdb')
    return toStoredRows(await this.run(sql, params), range.limit)
  }

  async stats (ds: Dataset): Promise<{ stored: number, lastRecordUs: number | null }> {
    const rows = await this.run(`SELECT count() AS "n", max(cast("ts" AS LONG)) AS "last" FROM ${q(tableName(ds.id, ds.version))}`, [])
    const r = rows[0] ?? {}
    return { stored: Number(r.n ?? 0), lastRecordUs: r.last === null || r.last === undefined ? null : Number(r.last) }
  }
}
