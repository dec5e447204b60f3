// QuestDB as a journal consumer: rows go over ILP/HTTP through one Sender (not safe for concurrent use;
// the consumer calls write() one batch at a time), DDL over PGWire. Tables are created from the dataset
// schema before the first write, so ILP never creates or widens a column.
//
// Exactly once: every row carries `_node` (the gateway node whose journal it came from), `_seq` (its
// position in that journal) and `_idx` (index in its entry), and the table's DEDUP UPSERT KEYS(ts,
// _node, _seq, _idx) make a replayed row overwrite itself, while rows of several nodes sharing the
// table never do (their journals number entries alike). Tables made before `_node` existed get the
// column and the keys on the next start (their old rows have no `_node`). The checkpoint is kept
// in the embedded store and advanced after a successful flush; a crash in between replays the batch.
//
// Failures: flush() runs inside an opossum breaker with a timeout. 4xx answers (bad data) are permanent:
// the batch is bisected until the refused rows are isolated, those go to the rejects log with QuestDB's
// message, the rest is written. 5xx, timeouts and refused connections are transient: the write fails,
// the consumer re-reads the batch from the journal (the Sender's buffer is gone after a failed flush)
// and retries with backoff while the breaker is open.
import { Sender } from '@questdb/nodejs-client'
import type CircuitBreaker from 'opossum'
import { breakerStatus, createBreaker } from '../breaker.js'
import type {
  BreakerStatus, CheckpointStore, Dataset, FieldType, RejectReason, Row, Sink, SinkEntry
} from '../../gateway/index.js'
import { RejectReason as Reasons, replicaIdentity, schemaColumns, tableName } from '../../gateway/index.js'
import { q } from '../sql/compile.js'

export interface SqlExecutor {
  query (sql: string, params?: unknown[]): Promise<{ rows: Record<string, unknown>[] }>
  close (): Promise<void>
}

export interface StoreRefusal {
  readonly dataset: string
  readonly device: string
  readonly seq: number
  readonly idx: number
  readonly reason: RejectReason
  readonly detail: string
  readonly row: Row
}

export interface QuestdbSinkOptions {
  /** A @questdb/nodejs-client configuration string (STREAMGATE_QUESTDB). */
  readonly ilp: string
  readonly sql: SqlExecutor
  readonly checkpoints: CheckpointStore
  readonly onRefused: (refusals: readonly StoreRefusal[]) => void
  /** Longest a flush may take before it counts as failed. */
  readonly timeoutMs: number
  /** How long the breaker stays open before letting one flush through. */
  readonly resetMs: number
  /** This gateway node's id (STREAMGATE_NODE_ID): written as `_node` on every row. */
  readonly nodeId: string
  readonly log?: { warn: (obj: object, msg: string) => void, info: (obj: object, msg: string) => void }
}

// Written unquoted, as QuestDB's docs write them (fixed names, none a keyword); schema columns are quoted.
const DEDUP_KEYS: readonly string[] = ['ts', '_node', '_seq', '_idx']

type Kind = FieldType | 'tag'
const QDB_TYPE: Record<Kind, string> = { double: 'DOUBLE', long: 'LONG', boolean: 'BOOLEAN', string: 'VARCHAR', timestamp: 'TIMESTAMP', tag: 'SYMBOL' }

/**
 * The client configuration we run with: the operator's string, with flushing ours (auto_flush=off) and
 * protocol_version=1 where the operator set none (auto-detection fails on QuestDB 8.x). The default
 * (undici) transport is kept: `stdlib_http=on` fails fast but throws away QuestDB's error body, which the
 * rejects log needs. A flush that stays pending is cut by our breaker's timeout and its Sender dropped.
 * With undici, `retry_timeout` also bounds each request (the client aborts it then), so it must not be 0.
 */
export function senderConfig (conf: string): string {
  const sep = conf.indexOf('::')
  if (sep <= 0) throw new Error('STREAMGATE_QUESTDB: expected <protocol>::addr=host:port;...')
  const schema = conf.slice(0, sep)
  if (schema !== 'http' && schema !== 'https') throw new Error('STREAMGATE_QUESTDB: only http:: and https:: (ILP over HTTP) are supported')
  const opts = new Map<string, string>()
  for (const part of conf.slice(sep + 2).split(';')) {
    if (part.trim() === '') continue
    const eq = part.indexOf('=')
    if (eq <= 0) throw new Error(`STREAMGATE_QUESTDB: bad option ${JSON.stringify(part)}`)
    opts.set(part.slice(0, eq).trim(), part.slice(eq + 1))
  }
  if (!opts.has('addr')) throw new Error('STREAMGATE_QUESTDB: addr is required')
  opts.set('auto_flush', 'off')
  if (!opts.has('protocol_version')) opts.set('protocol_version', '1')
  if (opts.get('retry_timeout') === '0') throw new Error('STREAMGATE_QUESTDB: retry_timeout=0 aborts every request with the default transport; give it milliseconds (default 10000)')
  return `${schema}::${[...opts].map(([k, v]) => `${k}=${v}`).join(';')};`
}

/** The HTTP status in the client's error ("HTTP request failed, statusCode=400, error=..."), if any. */
export function statusOf (err: unknown): number | null {
  const m = /statusCode=(\d{3})/.exec((err as Error)?.message ?? '')
  return m === null ? null : Number(m[1])
}

/** 4xx that mean "this data is refused" (not auth or config problems, which an operator can fix). */
function isPermanent (err: unknown): boolean {
  const s = statusOf(err)
  return s === 400 || s === 413 || s === 415 || s === 422
}

function serverMessage (err: unknown): string {
  const msg = (err as Error)?.message ?? String(err)
  const i = msg.indexOf('error=')
  if (i < 0) return msg
  const body = msg.slice(i + 6)
  try {
    const parsed = JSON.parse(body) as { message?: string }
    return typeof parsed.message === 'string' ? parsed.message : body
  } catch {
    return body
  }
}

interface Unit { readonly entry: SinkEntry, readonly table: string, readonly idx: number, readonly row: Row }

export class QuestdbSink implements Sink {
  readonly name = 'questdb'
  private sender: Sender | null = null
  private readonly columns = new Map<string, { name: string, kind: Kind }[]>()
  private readonly pendingDdl = new Set<string>()
  private readonly breakerImpl: CircuitBreaker<[Sender], boolean>
  private lastError: string | null = null
  private closed = false
  readonly conf: string
  private readonly clientLog = (level: 'error' | 'warn' | 'info' | 'debug', message: string | Error): void => {
    if (level === 'error' || level === 'warn') this.opts.log?.warn({ sink: this.name, client: String(message) }, 'questdb client')
  }

  constructor (private readonly opts: QuestdbSinkOptions) {
    this.conf = senderConfig(opts.ilp)
    this.breakerImpl = createBreaker((sender: Sender) => sender.flush(), {
      timeout: opts.timeoutMs,
      resetTimeout: opts.resetMs,
      rollingCountTimeout: 30_000,
      // Bad data is the data's fault, not QuestDB's: it does not open the breaker.
      errorFilter: (err: unknown) => isPermanent(err)
    })
    this.breakerImpl.on('open', () => opts.log?.warn({ sink: this.name }, 'questdb breaker open'))
    this.breakerImpl.on('close', () => opts.log?.info({ sink: this.name }, 'questdb breaker closed'))
  }

  breaker (): BreakerStatus {
    return breakerStatus(this.breakerImpl, this.lastError)
  }

  get isOpen (): boolean { return this.breakerImpl.opened }

  checkpoint (): Promise<number> {
    return this.opts.checkpoints.getCheckpoint(this.name)
  }

  /**
   * Remembers the schema and creates the table. QuestDB being down does not fail this (nor the start,
   * nor creating a dataset): the table is then created before the dataset's first write.
   */
  async prepareDataset (ds: Dataset): Promise<void> {
    const name = tableName(ds.id, ds.version)
    this.columns.set(name, schemaColumns(ds.schema))
    this.pendingDdl.add(name)
    try {
      await this.ensureTable(name)
    } catch (err) {
      this.opts.log?.warn({ dataset: ds.id, table: name, err: (err as Error).message }, 'questdb: table not created yet; will retry before the first write')
    }
  }

  /**
   * CREATE TABLE IF NOT EXISTS from the schema. A table that exists already (made by an older
   * streamgate, or before a compatible schema change) is read back with table_columns(): only the
   * missing columns are added, one statement each (a WAL table takes one change a statement), and the
   * DEDUP keys are set only where they differ. No `ADD COLUMN IF NOT EXISTS` for a column that is
   * there: on WAL tables before QuestDB 8.3.2 it fails ("statements containing multiple transactions",
   * questdb#5369). A column whose type differs is left alone and logged: rows QuestDB then refuses go
   * to the rejects log with its message.
   */
  private async ensureTable (id: string): Promise<void> {
    const cols = this.columns.get(id)
    if (cols === undefined || !this.pendingDdl.has(id)) return
    const wanted: [string, string][] = [['ts', 'TIMESTAMP'], ['device', 'SYMBOL'], ...cols.map((c): [string, string] => [c.name, QDB_TYPE[c.kind]]), ['_node', 'SYMBOL'], ['_seq', 'LONG'], ['_idx', 'INT']]
    await this.opts.sql.query(`CREATE TABLE IF NOT EXISTS ${q(id)} (${wanted.map(([n, t]) => `${q(n)} ${t}`).join(', ')}) TIMESTAMP(ts) PARTITION BY DAY WAL DEDUP UPSERT KEYS(${DEDUP_KEYS.join(', ')})`)
    // q() has checked the name: [a-z0-9_] only, safe inside the string literal. QuestDB's names are case-insensitive.
    const have = new Map<string, { type: string, upsertKey: boolean }>()
    for (const r of (await this.opts.sql.query(`SELECT "column", "type", "upsertKey" FROM table_columns('${id}')`)).rows) {
      have.set(String(r.column).toLowerCase(), { type: String(r.type), upsertKey: r.upsertKey === true })
    }
    for (const [name, type] of wanted) {
      const c = have.get(name)
      if (c === undefined) {
        // table_columns() shows a WAL table as applied: a column added a moment ago may not show yet.
        await this.opts.sql.query(`ALTER TABLE ${q(id)} ADD COLUMN ${q(name)} ${type}`).catch((err: Error) => { if (!/already exists/i.test(err.message)) throw err })
      } else if (c.type !== type) this.opts.log?.warn({ dataset: id, column: name, type: c.type, schema: type }, 'questdb: column type differs from the schema')
    }
    const keys = [...have].filter(([, c]) => c.upsertKey).map(([n]) => n).sort()
    if (keys.join() !== [...DEDUP_KEYS].sort().join()) await this.opts.sql.query(`ALTER TABLE ${q(id)} DEDUP ENABLE UPSERT KEYS(${DEDUP_KEYS.join(', ')})`)
    this.pendingDdl.delete(id)
  }

  async dropDataset (ds: Dataset): Promise<void> {
    for (let v = 1; v <= ds.version; v++) {
      const name = tableName(ds.id, v)
      this.columns.delete(name)
      this.pendingDdl.delete(name)
      await this.opts.sql.query(`DROP TABLE IF EXISTS ${q(name)}`)
    }
  }

  async write (entries: readonly SinkEntry[], lastSeq: number): Promise<void> {
    const units: Unit[] = []
    for (const entry of entries) {
      const name = tableName(entry.dataset, entry.version)
      if (!this.columns.has(name)) continue // dataset deleted since
      if (this.pendingDdl.has(name)) await this.ensureTable(name)
      for (let i = 0; i < entry.rows.length; i++) units.push({ entry, table: name, idx: i, row: entry.rows[i]! })
    }
    await this.send(units)
    await this.opts.checkpoints.setCheckpoint(this.name, lastSeq)
  }

  /** Sends units; on a permanent refusal bisects until the refused rows are isolated and reported. */
  private async send (units: readonly Unit[]): Promise<void> {
    if (units.length === 0) return
    try {
      await this.flush(units)
    } catch (err) {
      if (!isPermanent(err)) throw err
      if (units.length === 1) {
        const u = units[0]!
        this.opts.onRefused([{ dataset: u.entry.dataset, device: u.row.device, seq: u.entry.seq, idx: u.idx, reason: Reasons.STORE_REFUSED, detail: 'QuestDB refused the row: ' + serverMessage(err), row: u.row }])
        return
      }
      const mid = units.length >> 1
      await this.send(units.slice(0, mid))
      await this.send(units.slice(mid))
    }
  }

  private async flush (units: readonly Unit[]): Promise<void> {
    if (this.closed) throw new Error('questdb sink is closed')
    const sender = this.sender ??= await Sender.fromConfig(this.conf, { log: this.clientLog })
    sender.reset()
    for (const u of units) {
      const cols = this.columns.get(u.table)!
      const row = u.row
      // An entry recovered from a lost node's replica keeps that node's identity: its rows replace any
      // that node had stored already (DEDUP keys), so recovering twice or too far back writes nothing twice.
      const as = replicaIdentity(u.entry.origin)
      sender.table(u.table).symbol('device', row.device).symbol('_node', as?.node ?? this.opts.nodeId)
      for (const c of cols) if (c.kind === 'tag' && row[c.name] !== undefined) sender.symbol(c.name, row[c.name])
      for (const c of cols) {
        const v = row[c.name]
        if (v === undefined) continue
        switch (c.kind) {
          case 'tag': break
          case 'double': sender.floatColumn(c.name, v as number); break
          case 'long': sender.intColumn(c.name, v as number); break
          case 'boolean': sender.booleanColumn(c.name, v as boolean); break
          case 'string': sender.stringColumn(c.name, v as string); break
          case 'timestamp': sender.timestampColumn(c.name, v as number, 'us'); break
        }
      }
      sender.intColumn('_seq', as?.seq ?? u.entry.seq).intColumn('_idx', u.idx)
      await sender.at(row.ts, 'us')
    }
    try {
      await this.breakerImpl.fire(sender)
      this.lastError = null
    } catch (err) {
      this.lastError = (err as Error).message
      if (!isPermanent(err)) {
        // A timed-out flush may still be in flight on this Sender: never reuse it.
        this.sender = null
        sender.reset()
        sender.close().catch(() => undefined)
      }
      throw err
    }
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.breakerImpl.shutdown()
    this.sender?.reset()
    await this.sender?.close().catch(() => undefined)
    this.sender = null
  }
}
