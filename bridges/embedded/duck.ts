// What both embedded DuckDB stores share: one instance per file, a writer connection whose statements
// run one at a time (DuckDB transactions belong to a connection), a reader connection, and close().
import { DuckDBInstance, type DuckDBConnection, type DuckDBValue } from '@duckdb/node-api'
import { StreamgateError } from '../../gateway/index.js'

export function toNumber (v: DuckDBValue): number {
  return typeof v === 'bigint' ? Number(v) : v as number
}

export class DuckFile {
  private chain: Promise<unknown> = Promise.resolve()
  private closed = false

  private constructor (readonly instance: DuckDBInstance, readonly writer: DuckDBConnection, readonly reader: DuckDBConnection) {}

  /**
   * Opens (creating) a DuckDB file; `memoryLimit` caps its buffer pool (DuckDB's default is 80% of RAM),
   * `settings` are further DuckDB settings.
   */
  static async open (file: string, memoryLimit: string, threads = 2, settings: Record<string, string> = {}): Promise<DuckFile> {
    const instance = await DuckDBInstance.create(file, { ...settings, threads: String(threads), memory_limit: memoryLimit })
    return new DuckFile(instance, await instance.connect(), await instance.connect())
  }

  /** Runs writes one at a time on the writer connection. */
  serial<T> (fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new StreamgateError('SG_ERR_UNAVAILABLE', 'store is closed'))
    const run = this.chain.then(fn, fn)
    this.chain = run.catch(() => undefined)
    return run
  }

  /** One transaction on the writer connection; call inside serial(). */
  async transaction (fn: () => Promise<void>): Promise<void> {
    await this.writer.run('BEGIN TRANSACTION')
    try {
      await fn()
      await this.writer.run('COMMIT')
    } catch (err) {
      await this.writer.run('ROLLBACK').catch(() => undefined)
      throw err
    }
  }

  async rows (sql: string, params?: DuckDBValue[]): Promise<DuckDBValue[][]> {
    return (await this.reader.runAndReadAll(sql, params)).getRows()
  }

  async objects (sql: string, params?: DuckDBValue[]): Promise<Record<string, DuckDBValue>[]> {
    return (await this.reader.runAndReadAll(sql, params)).getRowObjects()
  }

  /** Waits for queued writes and closes the file. Idempotent. */
  async close (): Promise<void> {
    if (this.closed) return
    const last = this.chain
    this.closed = true
    await last
    this.reader.closeSync()
    this.writer.closeSync()
    this.instance.closeSync()
  }
}
