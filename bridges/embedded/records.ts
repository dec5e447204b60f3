// The embedded default store for records: one DuckDB file (records.duckdb) with a table per dataset in
// schema `data`, written by the sink thread (bin/sink-worker.ts) and queried through it. Rows reach
// DuckDB as CSV files that its reader parses on its own threads (measured per row, batches of 20,000:
// ~1.1 µs of JavaScript and ~4 µs of total CPU, against ~2.2/~5.5 µs for NDJSON and ~3 µs of
// JavaScript alone for the row-by-row Appender).
import fs from 'node:fs/promises'
import path from 'node:path'
import type { DuckDBValue } from '@duckdb/node-api'
import type { Dataset, FieldType, QueryPlan, QueryResult, RecordQuery, Row, Sink, SinkEntry } from '../../gateway/index.js'
import { schemaColumns, tableName } from '../../gateway/index.js'
import { compileQuery, latestPlan, shapeRows, toStoredRows } from '../sql/compile.js'
import { DuckFile, ident, toNumber } from './duck.js'
import { StreamgateError } from '../../gateway/index.js'

const SQL_TYPE: Record<FieldType | 'tag', string> = {
  double: 'DOUBLE', long: 'BIGINT', boolean: 'BOOLEAN', string: 'VARCHAR', timestamp: 'TIMESTAMP', tag: 'VARCHAR'
}

/** The DuckDB table of a table name from tableName() (one per dataset version). */
function table (name: string): string {
  return `data.${ident(name)}`
}

/**
 * Rows as CSV in the table's column order, for DuckDB's CSV reader (off the main thread). Strings are
 * always quoted (so "" stays an empty string), absent values are empty (NULL), timestamps are epoch µs.
 */
function toCsv (entries: readonly SinkEntry[], cols: readonly [string, string][]): string {
  const names = cols.map(([n]) => n)
  const parts: string[] = []
  for (const e of entries) {
    for (let i = 0; i < e.rows.length; i++) {
      const row = e.rows[i]!
      let line = ''
      for (let c = 0; c < names.length; c++) {
        const name = names[c]!
        const v = name === '_seq' ? e.seq : name === '_idx' ? i : row[name]
        if (c > 0) line += ','
        if (v === undefined || v === null) continue
        line += typeof v === 'string' ? '"' + (v.includes('"') ? v.replaceAll('"', '""') : v) + '"' : String(v)
      }
      parts.push(line)
    }
  }
  parts.push('')
  return parts.join('\n')
}

/**
 * The longest CSV line a row of these columns can make: a string of `maxString` UTF-16 units is at most
 * 3 bytes a unit in UTF-8, doubled quotes included, plus its quotes; anything else fits in 32 bytes.
 * DuckDB's CSV reader sizes its buffers from max_line_size (16 times it, per thread), so this keeps
 * them small for ordinary schemas instead of a fixed 16 MB line (a 256 MB buffer per load).
 */
function maxLineSize (cols: readonly [string, string][], maxString: number): number {
  let n = 0
  for (const [, type] of cols) n += type === 'VARCHAR' ? 3 * maxString + 3 : 33
  return Math.max(64 * 1024, n + 1)
}

function insertSql (name: string, cols: readonly [string, string][], file: string, maxString: number): string {
  const types = cols.map(([name, type]) => `'${name}': '${type === 'TIMESTAMP' ? 'BIGINT' : type}'`)
  const select = cols.map(([name, type]) => type === 'TIMESTAMP' ? `make_timestamp(${ident(name)})` : ident(name))
  const literal = "'" + file.replaceAll("'", "''") + "'"
  return `INSERT INTO ${table(name)} SELECT ${select.join(', ')} FROM read_csv(${literal}, header = false, delim = ',', quote = '"', escape = '"', ` +
    `new_line = '\\n', auto_detect = false, allow_quoted_nulls = false, max_line_size = ${maxLineSize(cols, maxString)}, columns = {${types.join(', ')}})`
}

export interface RecordStoreOptions {
  readonly dataDir: string
  /** DuckDB's memory_limit, e.g. 256MB. */
  readonly memoryLimit: string
  /** STREAMGATE_MAX_STRING: the longest string a record may hold (sizes the CSV reader's line). */
  readonly maxString: number
}

export class RecordStore implements Sink, RecordQuery {
  readonly name = 'embedded'
  private batchNo = 0
  private readonly tableColumns = new Map<string, [string, string][]>()

  private constructor (private readonly db: DuckFile, private readonly tmpDir: string, private readonly maxString: number) {}

  static async open (opts: RecordStoreOptions): Promise<RecordStore> {
    await fs.mkdir(opts.dataDir, { recursive: true })
    const tmpDir = path.join(opts.dataDir, 'tmp')
    await fs.rm(tmpDir, { recursive: true, force: true })
    await fs.mkdir(tmpDir, { recursive: true })
    const db = await DuckFile.open(path.join(opts.dataDir, 'records.duckdb'), opts.memoryLimit)
    await db.writer.run(`
      CREATE SCHEMA IF NOT EXISTS data;
      CREATE TABLE IF NOT EXISTS sg_checkpoint (consumer VARCHAR PRIMARY KEY, seq BIGINT NOT NULL);
    `)
    return new RecordStore(db, tmpDir, opts.maxString)
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
      const files: string[] = []
      try {
        const statements: string[] = []
        for (const [name, list] of byTable) {
          const cols = await this.columnsOf(name)
          const file = path.join(this.tmpDir, `batch-${++this.batchNo}.csv`)
          files.push(file)
          await fs.writeFile(file, toCsv(list, cols))
          statements.push(insertSql(name, cols, file, this.maxString))
        }
        await this.db.transaction(async () => {
          for (const sql of statements) await this.db.writer.run(sql)
          await this.db.writer.run('INSERT OR REPLACE INTO sg_checkpoint VALUES ($1, $2)', [this.name, lastSeq])
        })
      } finally {
        await Promise.all(files.map((f) => fs.rm(f, { force: true })))
      }
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
    return toStoredRows(await this.db.objects(sql, params as DuckDBValue[]), range.limit)
  }

  async query (plan: QueryPlan, timeoutMs: number): Promise<QueryResult> {
    const { sql, params } = compileQuery(plan, 'duckdb')
    // A connection of its own, so a timeout interrupts this query only.
    const conn = await this.db.instance.connect()
    const timer = setTimeout(() => conn.interrupt(), timeoutMs)
    try {
      const rows = await (await conn.runAndReadAll(sql, params as DuckDBValue[])).getRowObjects()
      return shapeRows(plan, rows)
    } catch (err) {
      if (/interrupt/i.test((err as Error).message)) throw new StreamgateError('SG_ERR_QUERY_TIMEOUT', `query ran longer than STREAMGATE_QUERY_TIMEOUT_MS=${timeoutMs}`)
      throw err
    } finally {
      clearTimeout(timer)
      conn.closeSync()
    }
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

  close (): Promise<void> {
    return this.db.close()
  }
}
