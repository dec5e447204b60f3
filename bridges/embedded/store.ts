// The embedded default store for everything but records: one DuckDB file (store.duckdb) under
// STREAMGATE_DATA_DIR holding the metadata, the rejects log, Idempotency-Key answers and the
// checkpoints of sinks that cannot keep theirs with their data. Records live in records.duckdb
// (records.ts), written by the sink thread.
import fs from 'node:fs/promises'
import path from 'node:path'
import type { DuckDBValue } from '@duckdb/node-api'
import type {
  ApiKey, AuditEntry, AuditFilter, AuditStore, CheckpointStore, Dataset, Grant, IdempotencyStore, IdempotentResponse, MetadataSnapshot, MetadataStore, Principal,
  RejectCount, RejectEntry, RejectStore
} from '../../gateway/index.js'
import { DuckFile, toNumber } from './duck.js'
import { AUDIT_COLUMNS, auditListQuery, auditRow } from '../sql/audit.js'

const row = (r: Record<string, DuckDBValue>): AuditEntry => auditRow(r, toNumber(r.seq!))

export interface EmbeddedStoreOptions {
  readonly dataDir: string
  readonly rejectsKeep: number
  /** DuckDB's memory_limit for this file (metadata is small: default 128MB). */
  readonly memoryLimit?: string
}

export class EmbeddedStore implements MetadataStore, RejectStore, IdempotencyStore, CheckpointStore, AuditStore {
  private readonly rejectsSinceTrim = new Map<string, number>()

  private constructor (private readonly db: DuckFile, private readonly opts: EmbeddedStoreOptions) {}

  static async open (opts: EmbeddedStoreOptions): Promise<EmbeddedStore> {
    await fs.mkdir(opts.dataDir, { recursive: true })
    const db = await DuckFile.open(path.join(opts.dataDir, 'store.duckdb'), opts.memoryLimit ?? '128MB', 1)
    await db.writer.run(`
      CREATE TABLE IF NOT EXISTS sg_datasets (id VARCHAR PRIMARY KEY, doc VARCHAR NOT NULL);
      CREATE TABLE IF NOT EXISTS sg_dataset_versions (id VARCHAR NOT NULL, version INTEGER NOT NULL, doc VARCHAR NOT NULL, PRIMARY KEY (id, version));
      CREATE TABLE IF NOT EXISTS sg_principals (id VARCHAR PRIMARY KEY, doc VARCHAR NOT NULL);
      CREATE TABLE IF NOT EXISTS sg_keys (id VARCHAR PRIMARY KEY, principal VARCHAR NOT NULL, doc VARCHAR NOT NULL);
      CREATE TABLE IF NOT EXISTS sg_grants (dataset VARCHAR NOT NULL, principal VARCHAR NOT NULL, doc VARCHAR NOT NULL, PRIMARY KEY (dataset, principal));
      CREATE TABLE IF NOT EXISTS sg_checkpoints (consumer VARCHAR PRIMARY KEY, seq BIGINT NOT NULL);
      CREATE TABLE IF NOT EXISTS sg_rejects ("at" TIMESTAMP NOT NULL, dataset VARCHAR, principal VARCHAR, device VARCHAR, topic VARCHAR,
        reason VARCHAR NOT NULL, detail VARCHAR NOT NULL, field VARCHAR, excerpt VARCHAR NOT NULL);
      CREATE TABLE IF NOT EXISTS sg_idempotency (principal VARCHAR NOT NULL, key VARCHAR NOT NULL, doc VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, PRIMARY KEY (principal, key));
      CREATE TABLE IF NOT EXISTS sg_reject_counts (dataset VARCHAR NOT NULL, reason VARCHAR NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (dataset, reason));
      CREATE TABLE IF NOT EXISTS sg_audit (seq BIGINT PRIMARY KEY, "at" VARCHAR NOT NULL, actor VARCHAR, address VARCHAR, action VARCHAR NOT NULL,
        resource VARCHAR NOT NULL, outcome VARCHAR NOT NULL, before_etag VARCHAR, after_etag VARCHAR, detail VARCHAR, request_id VARCHAR,
        prev_hash VARCHAR NOT NULL, hash VARCHAR NOT NULL);
    `)
    return new EmbeddedStore(db, opts)
  }

  private serial<T> (fn: () => Promise<T>): Promise<T> {
    return this.db.serial(fn)
  }

  private transaction (fn: () => Promise<void>): Promise<void> {
    return this.db.transaction(fn)
  }

  private get writer (): DuckFile['writer'] { return this.db.writer }
  private get reader (): DuckFile['reader'] { return this.db.reader }

  // ---- MetadataStore

  async load (): Promise<MetadataSnapshot> {
    const docs = async (sql: string): Promise<unknown[]> =>
      (await (await this.reader.runAndReadAll(sql)).getRowObjects()).map((r) => JSON.parse(r.doc as string) as unknown)
    return {
      datasets: await docs('SELECT doc FROM sg_datasets ORDER BY id') as Dataset[],
      // Datasets saved before versions were kept have their current version only.
      datasetVersions: await docs('SELECT doc FROM sg_dataset_versions UNION ALL SELECT d.doc FROM sg_datasets d WHERE NOT EXISTS (SELECT 1 FROM sg_dataset_versions v WHERE v.id = d.id) ORDER BY 1') as Dataset[],
      // Principals stored before description and updatedAt existed get them here.
      principals: (await docs('SELECT doc FROM sg_principals ORDER BY id') as Principal[]).map((p) => ({ ...p, description: p.description ?? '', updatedAt: p.updatedAt ?? p.createdAt })),
      keys: await docs('SELECT doc FROM sg_keys ORDER BY id') as ApiKey[],
      grants: await docs('SELECT doc FROM sg_grants ORDER BY dataset, principal') as Grant[]
    }
  }

  saveDataset (d: Dataset): Promise<void> {
    return this.serial(() => this.transaction(async () => {
      await this.writer.run('INSERT OR REPLACE INTO sg_datasets VALUES ($1, $2)', [d.id, JSON.stringify(d)])
      await this.writer.run('INSERT OR REPLACE INTO sg_dataset_versions VALUES ($1, $2, $3)', [d.id, d.version, JSON.stringify(d)])
    }))
  }

  deleteDataset (id: string): Promise<void> {
    return this.serial(() => this.transaction(async () => {
      await this.writer.run('DELETE FROM sg_datasets WHERE id = $1', [id])
      await this.writer.run('DELETE FROM sg_dataset_versions WHERE id = $1', [id])
      await this.writer.run('DELETE FROM sg_grants WHERE dataset = $1', [id])
    }))
  }

  savePrincipal (p: Principal): Promise<void> {
    return this.serial(async () => { await this.writer.run('INSERT OR REPLACE INTO sg_principals VALUES ($1, $2)', [p.id, JSON.stringify(p)]) })
  }

  deletePrincipal (id: string): Promise<void> {
    return this.serial(() => this.transaction(async () => {
      await this.writer.run('DELETE FROM sg_principals WHERE id = $1', [id])
      await this.writer.run('DELETE FROM sg_keys WHERE principal = $1', [id])
      await this.writer.run('DELETE FROM sg_grants WHERE principal = $1', [id])
    }))
  }

  saveKey (k: ApiKey): Promise<void> {
    return this.serial(async () => { await this.writer.run('INSERT OR REPLACE INTO sg_keys VALUES ($1, $2, $3)', [k.id, k.principal, JSON.stringify(k)]) })
  }

  saveGrants (dataset: string, grants: readonly Grant[]): Promise<void> {
    return this.serial(() => this.transaction(async () => {
      await this.writer.run('DELETE FROM sg_grants WHERE dataset = $1', [dataset])
      for (const g of grants) await this.writer.run('INSERT INTO sg_grants VALUES ($1, $2, $3)', [dataset, g.principal, JSON.stringify(g)])
    }))
  }

  // ---- CheckpointStore

  async getCheckpoint (consumer: string): Promise<number> {
    return (await this.getCheckpointOrNull(consumer)) ?? 0
  }

  /** null when the consumer never stored a checkpoint. */
  async getCheckpointOrNull (consumer: string): Promise<number | null> {
    const r = await (await this.reader.runAndReadAll('SELECT seq FROM sg_checkpoints WHERE consumer = $1', [consumer])).getRows()
    return r.length === 0 ? null : toNumber(r[0]![0]!)
  }

  setCheckpoint (consumer: string, seq: number): Promise<void> {
    return this.serial(async () => { await this.writer.run('INSERT OR REPLACE INTO sg_checkpoints VALUES ($1, $2)', [consumer, seq]) })
  }

  // ---- RejectStore

  append (entries: readonly RejectEntry[], counts: readonly RejectCount[]): Promise<void> {
    return this.serial(() => this.transaction(async () => {
      if (entries.length > 0) {
        const a = await this.writer.createAppender('sg_rejects')
        for (const e of entries) {
          a.appendVarchar(e.at) // cast by DuckDB to TIMESTAMP
          for (const v of [e.dataset, e.principal, e.device, e.topic]) {
            if (v === null) a.appendNull()
            else a.appendVarchar(v)
          }
          a.appendVarchar(e.reason)
          a.appendVarchar(e.detail)
          if (e.field === null) a.appendNull()
          else a.appendVarchar(e.field)
          a.appendVarchar(e.excerpt)
          a.endRow()
        }
        a.closeSync()
      }
      for (const c of counts) {
        await this.writer.run('INSERT INTO sg_reject_counts VALUES ($1, $2, $3) ON CONFLICT (dataset, reason) DO UPDATE SET n = n + excluded.n',
          [c.dataset ?? '', c.reason, c.count])
      }
      for (const e of entries) {
        const key = e.dataset ?? ''
        this.rejectsSinceTrim.set(key, (this.rejectsSinceTrim.get(key) ?? 0) + 1)
      }
      for (const [key, n] of this.rejectsSinceTrim) {
        if (n < Math.max(100, this.opts.rejectsKeep / 10)) continue
        this.rejectsSinceTrim.set(key, 0)
        await this.writer.run(`DELETE FROM sg_rejects WHERE rowid IN (SELECT rowid FROM (SELECT rowid, row_number() OVER (ORDER BY "at" DESC) AS rn
          FROM sg_rejects WHERE coalesce(dataset, '') = $1) WHERE rn > $2)`, [key, this.opts.rejectsKeep])
      }
    }))
  }

  async counts (): Promise<RejectCount[]> {
    const rows = await (await this.reader.runAndReadAll('SELECT dataset, reason, n FROM sg_reject_counts')).getRows()
    return rows.map(([d, r, n]) => ({ dataset: d === '' ? null : d as string, reason: r as string, count: toNumber(n ?? 0) }))
  }

  async list (dataset: string, limit: number): Promise<RejectEntry[]> {
    const rows = await (await this.reader.runAndReadAll(
      `SELECT strftime("at", '%Y-%m-%dT%H:%M:%S.%gZ') AS at, dataset, principal, device, topic, reason, detail, field, excerpt
       FROM sg_rejects WHERE dataset = $1 ORDER BY "at" DESC LIMIT $2`, [dataset, limit])).getRowObjects()
    return rows as unknown as RejectEntry[]
  }

  async clearCounts (dataset: string): Promise<void> {
    await this.serial(() => this.transaction(async () => {
      await this.writer.run('DELETE FROM sg_reject_counts WHERE dataset = $1', [dataset])
      await this.writer.run('DELETE FROM sg_rejects WHERE dataset = $1', [dataset])
    }))
  }

  // ---- IdempotencyStore

  async getResponse (principal: string, key: string): Promise<IdempotentResponse | null> {
    const rows = await (await this.reader.runAndReadAll('SELECT doc FROM sg_idempotency WHERE principal = $1 AND key = $2', [principal, key])).getRows()
    return rows.length === 0 ? null : JSON.parse(rows[0]![0] as string) as IdempotentResponse
  }

  putResponse (principal: string, key: string, r: IdempotentResponse): Promise<void> {
    return this.serial(async () => {
      await this.writer.run('INSERT OR REPLACE INTO sg_idempotency VALUES ($1, $2, $3, CAST($4 AS TIMESTAMP))', [principal, key, JSON.stringify(r), r.createdAt])
    })
  }

  expireResponses (before: string): Promise<void> {
    return this.serial(async () => { await this.writer.run('DELETE FROM sg_idempotency WHERE created_at < CAST($1 AS TIMESTAMP)', [before]) })
  }

  // ---- AuditStore (append-only: nothing here updates or deletes an entry)

  appendAudit (entries: readonly AuditEntry[]): Promise<void> {
    return this.serial(() => this.transaction(async () => {
      const a = await this.writer.createAppender('sg_audit')
      for (const e of entries) {
        a.appendBigInt(BigInt(e.seq))
        a.appendVarchar(e.at)
        for (const v of [e.actor, e.address]) { if (v === null) a.appendNull(); else a.appendVarchar(v) }
        a.appendVarchar(e.action)
        a.appendVarchar(e.resource)
        a.appendVarchar(e.outcome)
        for (const v of [e.before, e.after, e.detail, e.requestId]) { if (v === null) a.appendNull(); else a.appendVarchar(v) }
        a.appendVarchar(e.prevHash)
        a.appendVarchar(e.hash)
        a.endRow()
      }
      a.closeSync()
    }))
  }

  async lastAudit (): Promise<AuditEntry | null> {
    const rows = await this.db.objects(`SELECT ${AUDIT_COLUMNS} FROM sg_audit ORDER BY seq DESC LIMIT 1`)
    return rows.length === 0 ? null : row(rows[0]!)
  }

  async listAudit (f: AuditFilter, limit: number): Promise<AuditEntry[]> {
    const { sql, params } = auditListQuery(f, limit, BigInt)
    return (await this.db.objects(sql, params)).map(row)
  }

  async auditRange (fromSeq: number, limit: number): Promise<AuditEntry[]> {
    const rows = await this.db.objects(`SELECT ${AUDIT_COLUMNS} FROM sg_audit WHERE seq >= $1 ORDER BY seq LIMIT $2`, [BigInt(fromSeq), limit])
    return rows.map(row)
  }

  /** Waits for queued writes and closes DuckDB. Idempotent. */
  close (): Promise<void> {
    return this.db.close()
  }
}
