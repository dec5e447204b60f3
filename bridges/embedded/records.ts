// The embedded default store for records: one DuckDB file (records.duckdb) with a table per dataset in
// schema `data`, written by the sink thread (bin/sink-worker.ts) and queried through it. Rows reach
// DuckDB through its appender a column at a time (bench/sink-drain.ts, 1M readings from the journal:
// ~375-385k rows/s stored on 2026-11-29, against ~100k rows/s loading the same rows as CSV files).
import fs from 'node:fs/promises'
import path from 'node:path'
import { BIGINT, BOOLEAN, DOUBLE, DuckDBDataChunk, DuckDBTimestampValue, INTEGER, TIMESTAMP, VARCHAR, type DuckDBAppender, type DuckDBConnection, type DuckDBType, type DuckDBValue } from '@duckdb/node-api'
import type { Dataset, FieldType, QueryPlan, QueryResult, RecordQuery, Row, Sink, SinkEntry } from '../../gateway/index.js'
import { schemaColumns, Slots, StreamgateError, tableName } from '../../gateway/index.js'
import { compileQuery, latestPlan, q as ident, shapeRows, toStoredRows } from '../sql/compile.js'
import { DuckFile, toNumber } from './duck.js'

const SQL_TYPE: Record<FieldType | 'tag', string> = {
  double: 'DOUBLE', long: 'BIGINT', boolean: 'BOOLEAN', string: 'VARCHAR', timestamp: 'TIMESTAMP', tag: 'VARCHAR'
}

/** The DuckDB table of a table name from tableName() (one per dataset version). */
function table (name: string): string {
  return `data.${ident(name)}`
}

/** How soon a lowering of DuckDB's memory limit that failed is tried again. */
const LIMIT_RETRY_MS = 5000

const VECTOR = 2048
/** What a column holds: a row's value, or the entry's journal position (`_seq`) or the row's index in it (`_idx`). */
const VALUE = 0
const SEQ = 1
const IDX = 2

/** The DuckDB type of each column type information_schema names (the ones SQL_TYPE creates). */
const DUCK_TYPE: Record<string, DuckDBType> = { BIGINT, INTEGER, DOUBLE, BOOLEAN, VARCHAR, TIMESTAMP }

type Convert = (v: string | number | boolean | undefined) => DuckDBValue
const asIs: Convert = (v) => v ?? null
/** A row value as the appender takes it, by column type (chosen once per column); null for an absent one. */
const CONVERT: Record<string, Convert> = {
  TIMESTAMP: (v) => v === undefined || v === null ? null : new DuckDBTimestampValue(BigInt(Math.trunc(v as number))),
  BIGINT: (v) => v === undefined || v === null ? null : BigInt(v as number),
  INTEGER: asIs,
  DOUBLE: asIs,
  BOOLEAN: asIs,
  VARCHAR: asIs
}

/**
 * Appends the entries' rows to a table through DuckDB's appender, a column at a time in chunks of
 * DuckDB's vector size, written straight into one reused chunk's vectors: numbers land in typed arrays
 * copied once per chunk (no text to format or parse; ~5x less CPU than loading the same rows as CSV).
 * Runs in the writer's open transaction.
 */
function appendRows (appender: DuckDBAppender, entries: readonly SinkEntry[], cols: readonly [string, string][]): void {
  const types = cols.map(([name, t]) => {
    const type = DUCK_TYPE[t]
    if (type === undefined) throw new StreamgateError('SG_ERR_INTERNAL', `column ${name} has type ${t}, which the embedded store does not write`)
    return type
  })
  let total = 0
  for (const e of entries) total += e.rows.length
  // One chunk, reused: the appender copies what it is given.
  const chunk = DuckDBDataChunk.create(types)
  // The first row of the chunk being filled: entry `e`, its row `i`.
  let e = 0
  let i = 0
  for (let off = 0; off < total; off += VECTOR) {
    const n = Math.min(VECTOR, total - off)
    chunk.reset()
    chunk.rowCount = n
    let endE = e
    let endI = i
    for (let c = 0; c < cols.length; c++) {
      const name = cols[c]![0]
      const convert = CONVERT[cols[c]![1]]!
      const role = name === '_seq' ? SEQ : name === '_idx' ? IDX : VALUE
      const vector = chunk.getColumnVector(c)
      let ce = e
      let ci = i
      let entry = entries[ce]!
      let seq = role === SEQ ? BigInt(entry.seq) : 0n
      for (let k = 0; k < n; k++) {
        while (ci >= entry.rows.length) {
          entry = entries[++ce]!
          ci = 0
          if (role === SEQ) seq = BigInt(entry.seq)
        }
        vector.setItem(k, role === SEQ ? seq : role === IDX ? ci : convert(entry.rows[ci]![name]))
        ci++
      }
      vector.flush()
      endE = ce
      endI = ci
    }
    e = endE
    i = endI
    appender.appendDataChunk(chunk)
  }
}

export interface RecordStoreOptions {
  readonly dataDir: string
  /** DuckDB's memory_limit while queries run, e.g. 512MB (STREAMGATE_STORE_MEMORY). */
  readonly memoryLimit: string
  /**
   * DuckDB's memory_limit while no query runs (STREAMGATE_STORE_CACHE; default: memoryLimit). DuckDB
   * keeps the blocks it writes cached up to its limit: at 20k rows/s that grew ~13 MiB a minute, for
   * 40 minutes at 512MB. Lowering the limit between queries evicts them; large aggregates still get
   * memoryLimit (one grouping 12M rows into 600k groups failed at 32MB, ran at 64MB, another into 6M
   * groups needed more than 64MB).
   */
  readonly cacheLimit?: string
  /**
   * Queries run at once (STREAMGATE_QUERY_CONCURRENCY); more wait. DuckDB runs each on a thread of
   * libuv's pool (4 threads), which the store's own statements need too. Default 2.
   */
  readonly queryConcurrency?: number
  /** Longest a latest-records read may wait and run (STREAMGATE_QUERY_TIMEOUT_MS); queries bring their own. Default 10 s. */
  readonly queryTimeoutMs?: number
}

export class RecordStore implements Sink, RecordQuery {
  readonly name = 'embedded'
  private readonly tableColumns = new Map<string, [string, string][]>()
  private readonly querySlots: Slots

  /** Queries running: DuckDB's memory_limit is `limits.high` while one does, else `limits.low`. */
  private running = 0
  private limitChange: Promise<void> = Promise.resolve()
  private retry: NodeJS.Timeout | null = null
  private closing = false

  private constructor (private readonly db: DuckFile, queryConcurrency: number, private readonly queryTimeoutMs: number,
    private readonly limits: { readonly conn: DuckDBConnection, readonly high: string, readonly low: string } | null) {
    this.querySlots = new Slots(queryConcurrency)
  }

  static async open (opts: RecordStoreOptions): Promise<RecordStore> {
    await fs.mkdir(opts.dataDir, { recursive: true })
    // Earlier versions loaded rows from CSV files here.
    await fs.rm(path.join(opts.dataDir, 'tmp'), { recursive: true, force: true })
    // DuckDB checkpoints its WAL into the file once the WAL passes checkpoint_threshold (16MB by
    // default); every checkpoint has a cost of its own beside the rows it moves. At 32MB the sink
    // drains 3M batched readings ~4% faster (`ENTRIES=30000 npx tsx bench/sink-drain.ts`: 393-405k
    // against 381-385k rows/s; 64MB: 406k), for up to 32MB of WAL to replay after a crash and of rows
    // held in memory until they are checkpointed.
    const low = opts.cacheLimit ?? opts.memoryLimit
    const db = await DuckFile.open(path.join(opts.dataDir, 'records.duckdb'), low, 2, { checkpoint_threshold: '32MB' })
    await db.writer.run(`
      CREATE SCHEMA IF NOT EXISTS data;
      CREATE TABLE IF NOT EXISTS sg_checkpoint (consumer VARCHAR PRIMARY KEY, seq BIGINT NOT NULL);
    `)
    const limits = low === opts.memoryLimit ? null : { conn: await db.instance.connect(), high: opts.memoryLimit, low }
    return new RecordStore(db, opts.queryConcurrency ?? 2, opts.queryTimeoutMs ?? 10_000, limits)
  }

  // ---- Sink

  async checkpoint (): Promise<number> {
    const r = await this.db.rows('SELECT seq FROM sg_checkpoint WHERE consumer = $1', [this.name])
    return r.length === 0 ? 0 : toNumber(r[0]![0]!)
  }

  prepareDataset (ds: Dataset): Promise<void> {
    const name = tableName(ds.id, ds.version)
    return this.db.serial(async () => {
      const cols = schemaColumns(ds.schema).map((c) => `${ident(c.name)} ${SQL_TYPE[c.kind]}`)
      await this.db.writer.run(`CREATE TABLE IF NOT EXISTS ${table(name)} (_seq BIGINT NOT NULL, _idx INTEGER NOT NULL, ts TIMESTAMP NOT NULL, device VARCHAR NOT NULL${cols.map((c) => ', ' + c).join('')})`)
      // A compatible schema change adds optional columns; add any the table lacks.
      const existing = new Set((await (await this.db.writer.runAndReadAll(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'data' AND table_name = $1", [name])).getRows()).map((r) => r[0] as string))
      for (const c of schemaColumns(ds.schema)) {
        if (!existing.has(c.name)) await this.db.writer.run(`ALTER TABLE ${table(name)} ADD COLUMN ${ident(c.name)} ${SQL_TYPE[c.kind]}`)
      }
      this.tableColumns.delete(name)
    })
  }

  dropDataset (ds: Dataset): Promise<void> {
    return this.db.serial(async () => {
      for (let v = 1; v <= ds.version; v++) {
        const name = tableName(ds.id, v)
        await this.db.writer.run(`DROP TABLE IF EXISTS ${table(name)}`)
        this.tableColumns.delete(name)
      }
    })
  }

  /** Stores the rows and moves the checkpoint in one transaction, so a replay never writes a row twice. */
  write (entries: readonly SinkEntry[], lastSeq: number): Promise<void> {
    return this.db.serial(async () => {
      const byTable = new Map<string, SinkEntry[]>()
      for (const e of entries) {
        const name = tableName(e.dataset, e.version)
        let list = byTable.get(name)
        if (list === undefined) byTable.set(name, list = [])
        list.push(e)
      }
      await this.db.transaction(async () => {
        for (const [name, list] of byTable) {
          const cols = await this.columnsOf(name)
          const appender = await this.db.writer.createAppender(name, 'data')
          try {
            appendRows(appender, list, cols)
            appender.flushSync()
          } catch (err) {
            // Closing a failed appender fails too (the transaction is aborted): keep the first error.
            try { appender.closeSync() } catch { /* aborted */ }
            throw err
          }
          appender.closeSync()
        }
        await this.db.writer.run('INSERT OR REPLACE INTO sg_checkpoint VALUES ($1, $2)', [this.name, lastSeq])
      })
    })
  }

  private async columnsOf (name: string): Promise<[string, string][]> {
    let cols = this.tableColumns.get(name)
    if (cols === undefined) {
      cols = (await (await this.db.writer.runAndReadAll(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'data' AND table_name = $1 ORDER BY ordinal_position",
        [name])).getRows()) as [string, string][]
      this.tableColumns.set(name, cols)
    }
    return cols
  }

  // ---- RecordQuery

  async latest (ds: Dataset, range: { from: number | null, to: number | null, limit: number }): Promise<Row[]> {
    const { sql, params } = compileQuery(latestPlan(ds, range), 'duckdb')
    return toStoredRows(await this.limited(this.queryTimeoutMs, (conn) => conn.runAndReadAll(sql, params as DuckDBValue[]).then((r) => r.getRowObjects())), range.limit)
  }

  async query (plan: QueryPlan, timeoutMs: number): Promise<QueryResult> {
    const { sql, params } = compileQuery(plan, 'duckdb')
    return shapeRows(plan, await this.limited(timeoutMs, (conn) => conn.runAndReadAll(sql, params as DuckDBValue[]).then((r) => r.getRowObjects())))
  }

  /**
   * Runs a read in one of the query slots (STREAMGATE_QUERY_CONCURRENCY), on a connection of its own
   * so a timeout interrupts this read only; the wait for a slot counts against the timeout.
   */
  private async limited<T> (timeoutMs: number, read: (conn: DuckDBConnection) => Promise<T>): Promise<T> {
    const deadline = performance.now() + timeoutMs
    await this.querySlots.acquire(timeoutMs, () => new StreamgateError('SG_ERR_QUERY_TIMEOUT',
      `query waited STREAMGATE_QUERY_TIMEOUT_MS=${timeoutMs} for one of STREAMGATE_QUERY_CONCURRENCY=${this.querySlots.size} query slots`))
    // Every query waits for the raise: the first one's, or the one queued behind a lowering.
    await (this.running++ === 0 ? this.setLimit() : this.limitChange)
    try {
      const conn = await this.db.instance.connect()
      const timer = setTimeout(() => conn.interrupt(), Math.max(1, deadline - performance.now()))
      try {
        return await read(conn)
      } catch (err) {
        if (/interrupt/i.test((err as Error).message)) throw new StreamgateError('SG_ERR_QUERY_TIMEOUT', `query ran longer than STREAMGATE_QUERY_TIMEOUT_MS=${timeoutMs}`)
        throw err
      } finally {
        clearTimeout(timer)
        conn.closeSync()
      }
    } finally {
      if (--this.running === 0) void this.setLimit()
      this.querySlots.release()
    }
  }

  /**
   * Sets DuckDB's memory_limit for the queries running now; changes run one at a time, each reading
   * `running` when it runs, so the last one leaves the right limit. Lowering evicts cached blocks; when
   * it cannot (the sink's transaction holds more), the limit stays high until the next query ends.
   */
  private setLimit (): Promise<void> {
    const limits = this.limits
    if (limits === null || this.closing) return this.limitChange
    this.limitChange = this.limitChange
      .then(() => limits.conn.run(`SET memory_limit = '${this.running > 0 ? limits.high : limits.low}'`))
      .then(() => undefined, () => {
        // A lowering DuckDB could not make (what the sink's transaction holds does not fit): try again.
        if (this.running === 0 && !this.closing && this.retry === null) {
          this.retry = setTimeout(() => { this.retry = null; void this.setLimit() }, LIMIT_RETRY_MS).unref()
        }
      })
    return this.limitChange
  }

  async stats (ds: Dataset): Promise<{ stored: number, lastRecordUs: number | null }> {
    const r = await this.db.rows(`SELECT count(*), max(epoch_us(ts)) FROM ${table(tableName(ds.id, ds.version))}`)
    const [n, last] = r[0] ?? [0, null]
    return { stored: toNumber(n ?? 0), lastRecordUs: last === null || last === undefined ? null : toNumber(last) }
  }

  /** Bytes DuckDB holds for this file (buffer pool, its allocations), from duckdb_memory(). */
  async memoryBytes (): Promise<number> {
    const r = await this.db.rows('SELECT sum(memory_usage_bytes) FROM duckdb_memory()')
    return toNumber(r[0]?.[0] ?? 0)
  }

  async close (): Promise<void> {
    this.closing = true
    if (this.retry !== null) clearTimeout(this.retry)
    await this.limitChange
    this.limits?.conn.closeSync()
    await this.db.close()
  }
}
