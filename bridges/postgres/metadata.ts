// Metadata shared by several gateway nodes in PostgreSQL (STREAMGATE_METADATA_URL): datasets with
// their versions, principals, keys, grants, the audit chain and Idempotency-Key answers. Documents are
// JSONB, one row per resource, as in the embedded store. Every save notifies the other nodes in the
// same transaction (NOTIFY is delivered on commit, and only then), naming the resource; they read it
// back and apply it. The audit chain is extended under an advisory lock, so entries from every node
// form one chain. Tables live in the connection's schema (its search_path), so several clusters (or
// test runs) can share a database; the notification channel is named after that schema.
import pg from 'pg'
import { GENESIS, auditHash } from '../../gateway/audit.js'
import { StreamgateError } from '../../gateway/errors.js'
import { publicDataset } from '../../gateway/datasets.js'
import { AUDIT_COLUMNS, auditListQuery, auditRow } from '../sql/audit.js'
import type {
  ApiKey, AuditEntry, AuditFilter, AuditInput, AuditStore, Dataset, Grant, IdempotencyStore, IdempotentResponse, MetadataChange, MetadataSnapshot, Principal, SharedMetadataStore
} from '../../gateway/index.js'

const INT8 = 20

export interface PgMetadataOptions {
  readonly url: string
  /** This node's id: a dataset's sinceSeq (a position in this node's journal) is kept per node. */
  readonly nodeId: string
  readonly log?: { warn: (obj: object, msg: string) => void }
}

const row = (r: Record<string, unknown>): AuditEntry => auditRow(r, Number(r.seq))

const RECONNECT_MS = 1000

/**
 * PostgreSQL unreachable (refused, reset, timed out, shutting down: SQLSTATE classes 08 and 57P) is
 * the store being unavailable, a 503 the caller may retry; anything else stays what it is.
 */
function unavailable (err: unknown): unknown {
  const e = err as { code?: string, message?: string }
  const code = typeof e.code === 'string' ? e.code : ''
  const message = e.message ?? String(err)
  if (code.startsWith('08') || code.startsWith('57P') || ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH'].includes(code) ||
    /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(message)) {
    return new StreamgateError('SG_ERR_UNAVAILABLE', `the metadata store (PostgreSQL) is unavailable: ${message}`, { retryAfter: 5 }, { cause: err })
  }
  return err
}

/**
 * A client checked out of the pool has no 'error' listener of the pool's (only idle ones do): a
 * connection lost mid-transaction would raise an unhandled 'error' and end the process, besides
 * failing the query. Listens while the client is out, and hands a broken one back to be discarded.
 */
function watchLost (client: pg.PoolClient): { release: () => void } {
  let broken: Error | undefined
  const onError = (err: Error): void => { broken = err }
  client.on('error', onError)
  return {
    release () {
      client.off('error', onError)
      client.release(broken)
    }
  }
}

export class PgMetadataStore implements SharedMetadataStore, AuditStore, IdempotencyStore {
  readonly shared = true as const
  private listener: pg.Client | null = null
  private closed = false
  private reconnectTimer: NodeJS.Timeout | null = null

  private constructor (private readonly pool: pg.Pool, private readonly opts: PgMetadataOptions, private readonly channel: string) {}

  static async open (opts: PgMetadataOptions): Promise<PgMetadataStore> {
    const pool = new pg.Pool({
      connectionString: opts.url,
      application_name: `streamgate ${opts.nodeId}`,
      max: 4,
      connectionTimeoutMillis: 5000,
      types: { getTypeParser: ((oid: number, format?: 'text' | 'binary') => oid === INT8 ? Number : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser }
    })
    pool.on('error', (err) => opts.log?.warn({ err: err.message }, 'PostgreSQL connection lost (metadata); reconnecting on next use'))
    try {
      const client = await pool.connect()
      const lost = watchLost(client)
      try {
        await client.query('BEGIN')
        // Nodes starting together must not race to create the tables.
        await client.query("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.streamgate.migrate'))")
        await client.query(`
          CREATE TABLE IF NOT EXISTS sg_datasets (id TEXT PRIMARY KEY, doc JSONB NOT NULL);
          CREATE TABLE IF NOT EXISTS sg_dataset_versions (id TEXT NOT NULL, version INTEGER NOT NULL, doc JSONB NOT NULL, PRIMARY KEY (id, version));
          CREATE TABLE IF NOT EXISTS sg_dataset_since (node TEXT NOT NULL, id TEXT NOT NULL, created_at TEXT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (node, id));
          CREATE TABLE IF NOT EXISTS sg_principals (id TEXT PRIMARY KEY, doc JSONB NOT NULL);
          CREATE TABLE IF NOT EXISTS sg_keys (id TEXT PRIMARY KEY, principal TEXT NOT NULL, doc JSONB NOT NULL);
          CREATE INDEX IF NOT EXISTS sg_keys_principal ON sg_keys (principal);
          CREATE TABLE IF NOT EXISTS sg_grants (dataset TEXT NOT NULL, principal TEXT NOT NULL, doc JSONB NOT NULL, PRIMARY KEY (dataset, principal));
          CREATE INDEX IF NOT EXISTS sg_grants_principal ON sg_grants (principal);
          CREATE TABLE IF NOT EXISTS sg_idempotency (principal TEXT NOT NULL, key TEXT NOT NULL, doc JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (principal, key));
          CREATE TABLE IF NOT EXISTS sg_audit (seq BIGINT PRIMARY KEY, "at" TEXT NOT NULL, actor TEXT, address TEXT, action TEXT NOT NULL,
            resource TEXT NOT NULL, outcome TEXT NOT NULL, before_etag TEXT, after_etag TEXT, detail TEXT, request_id TEXT,
            prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
        `)
        const schema = (await client.query('SELECT current_schema() AS s')).rows[0].s as string
        await client.query('COMMIT')
        return new PgMetadataStore(pool, opts, `sg_meta_${schema}`.slice(0, 63))
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined)
        throw err
      } finally {
        lost.release()
      }
    } catch (err) {
      await pool.end().catch(() => undefined)
      throw new Error(`PostgreSQL metadata store (STREAMGATE_METADATA_URL): ${(err as Error).message}`, { cause: err })
    }
  }

  /** Runs `fn` in a transaction that ends by notifying the other nodes of `change`. */
  private async change (change: MetadataChange | null, fn: (c: pg.PoolClient) => Promise<void>): Promise<void> {
    const client = await this.pool.connect().catch((err: unknown) => { throw unavailable(err) })
    const lost = watchLost(client)
    try {
      await client.query('BEGIN')
      await fn(client)
      if (change !== null) await client.query('SELECT pg_notify($1, $2)', [this.channel, JSON.stringify({ ...change, node: this.opts.nodeId })])
      await client.query('COMMIT')
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined)
      throw unavailable(err)
    } finally {
      lost.release()
    }
  }

  private async query (sql: string, params: unknown[] = []): Promise<pg.QueryResult> {
    return this.pool.query(sql, params).catch((err: unknown) => { throw unavailable(err) })
  }

  private async docs<T> (sql: string, params: unknown[] = []): Promise<T[]> {
    return (await this.query(sql, params)).rows.map((r: { doc: T }) => r.doc)
  }

  /** This node's sinceSeq for each dataset incarnation it knows (keyed by id and createdAt). */
  private async sinceOf (ids: readonly string[] | null): Promise<Map<string, number>> {
    const rows = (await this.query(
      `SELECT id, created_at, seq FROM sg_dataset_since WHERE node = $1${ids === null ? '' : ' AND id = ANY($2)'}`,
      ids === null ? [this.opts.nodeId] : [this.opts.nodeId, ids])).rows as { id: string, created_at: string, seq: number }[]
    return new Map(rows.map((r) => [`${r.id}\n${r.created_at}`, r.seq]))
  }

  private static withSince (d: Dataset, since: Map<string, number>): Dataset {
    return { ...d, sinceSeq: since.get(`${d.id}\n${d.createdAt}`) ?? -1 }
  }

  // ---- MetadataStore

  async load (): Promise<MetadataSnapshot> {
    const since = await this.sinceOf(null)
    const datasets = (await this.docs<Dataset>('SELECT doc FROM sg_datasets ORDER BY id')).map((d) => PgMetadataStore.withSince(d, since))
    const versions = (await this.docs<Dataset>('SELECT doc FROM sg_dataset_versions ORDER BY id, version')).map((d) => PgMetadataStore.withSince(d, since))
    return {
      datasets,
      datasetVersions: versions,
      principals: await this.docs<Principal>('SELECT doc FROM sg_principals ORDER BY id'),
      keys: await this.docs<ApiKey>('SELECT doc FROM sg_keys ORDER BY id'),
      grants: await this.docs<Grant>('SELECT doc FROM sg_grants ORDER BY dataset, principal')
    }
  }

  saveDataset (d: Dataset): Promise<void> {
    return this.change({ kind: 'dataset', id: d.id }, async (c) => {
      const doc = JSON.stringify(publicDataset(d)) // without sinceSeq: that is per node (sg_dataset_since)
      await c.query('INSERT INTO sg_datasets VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc', [d.id, doc])
      await c.query('INSERT INTO sg_dataset_versions VALUES ($1, $2, $3) ON CONFLICT (id, version) DO UPDATE SET doc = excluded.doc', [d.id, d.version, doc])
      if (d.sinceSeq !== undefined && d.sinceSeq >= 0) await this.upsertSince(c, d)
    })
  }

  private async upsertSince (c: pg.Pool | pg.PoolClient, d: Dataset): Promise<void> {
    await c.query(`INSERT INTO sg_dataset_since VALUES ($1, $2, $3, $4)
      ON CONFLICT (node, id) DO UPDATE SET created_at = excluded.created_at, seq = excluded.seq`, [this.opts.nodeId, d.id, d.createdAt, d.sinceSeq])
  }

  async saveSince (d: Dataset): Promise<void> {
    await this.upsertSince(this.pool, d).catch((err: unknown) => { throw unavailable(err) })
  }

  deleteDataset (id: string): Promise<void> {
    return this.change({ kind: 'dataset', id }, async (c) => {
      await c.query('DELETE FROM sg_datasets WHERE id = $1', [id])
      await c.query('DELETE FROM sg_dataset_versions WHERE id = $1', [id])
      await c.query('DELETE FROM sg_grants WHERE dataset = $1', [id])
    })
  }

  savePrincipal (p: Principal): Promise<void> {
    return this.change({ kind: 'principal', id: p.id }, async (c) => {
      await c.query('INSERT INTO sg_principals VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc', [p.id, JSON.stringify(p)])
    })
  }

  deletePrincipal (id: string): Promise<void> {
    return this.change({ kind: 'principal', id }, async (c) => {
      await c.query('DELETE FROM sg_principals WHERE id = $1', [id])
      await c.query('DELETE FROM sg_keys WHERE principal = $1', [id])
      await c.query('DELETE FROM sg_grants WHERE principal = $1', [id])
    })
  }

  saveKey (k: ApiKey): Promise<void> {
    return this.change({ kind: 'key', id: k.id }, async (c) => {
      await c.query('INSERT INTO sg_keys VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET principal = excluded.principal, doc = excluded.doc', [k.id, k.principal, JSON.stringify(k)])
    })
  }

  saveGrants (dataset: string, grants: readonly Grant[]): Promise<void> {
    return this.change({ kind: 'grants', id: dataset }, async (c) => {
      await c.query('DELETE FROM sg_grants WHERE dataset = $1', [dataset])
      for (const g of grants) await c.query('INSERT INTO sg_grants VALUES ($1, $2, $3)', [dataset, g.principal, JSON.stringify(g)])
    })
  }

  // ---- SharedMetadataStore: reading one resource back

  async getDataset (id: string): Promise<{ current: Dataset, versions: Dataset[] } | null> {
    const current = (await this.docs<Dataset>('SELECT doc FROM sg_datasets WHERE id = $1', [id]))[0]
    if (current === undefined) return null
    const since = await this.sinceOf([id])
    const versions = await this.docs<Dataset>('SELECT doc FROM sg_dataset_versions WHERE id = $1 ORDER BY version', [id])
    return { current: PgMetadataStore.withSince(current, since), versions: versions.map((v) => PgMetadataStore.withSince(v, since)) }
  }

  async getPrincipal (id: string): Promise<Principal | null> {
    return (await this.docs<Principal>('SELECT doc FROM sg_principals WHERE id = $1', [id]))[0] ?? null
  }

  async getKey (id: string): Promise<ApiKey | null> {
    return (await this.docs<ApiKey>('SELECT doc FROM sg_keys WHERE id = $1', [id]))[0] ?? null
  }

  getGrants (dataset: string): Promise<Grant[]> {
    return this.docs<Grant>('SELECT doc FROM sg_grants WHERE dataset = $1 ORDER BY principal', [dataset])
  }

  // ---- notifications

  async watch (onChange: (c: MetadataChange) => void, onResync: () => void): Promise<void> {
    /** Listens on a new connection; false (and a retry scheduled) when it cannot. */
    const connect = async (): Promise<boolean> => {
      // keepAlive and a query every 10 s: a connection that died silently (a host or a NAT gone) is
      // noticed, reopened and followed by a reload, instead of leaving this node deaf to changes.
      const client = new pg.Client({ connectionString: this.opts.url, application_name: `streamgate ${this.opts.nodeId} notifications`, keepAlive: true, query_timeout: 5000 })
      const lost = (err?: Error): void => {
        if (this.listener !== client) return
        this.listener = null
        client.end().catch(() => undefined)
        if (this.closed) return
        this.opts.log?.warn({ err: err?.message ?? 'connection ended' }, 'PostgreSQL notifications lost; reconnecting, then reloading the metadata')
        this.reconnectTimer = setTimeout(() => {
          this.reconnectTimer = null
          void connect().then((ok) => { if (ok) onResync() })
        }, RECONNECT_MS)
      }
      client.on('error', lost)
      client.on('end', () => lost())
      client.on('notification', (msg) => {
        if (msg.channel !== this.channel || msg.payload === undefined) return
        let c: MetadataChange & { node?: string }
        try { c = JSON.parse(msg.payload) as MetadataChange & { node?: string } } catch { return }
        if (c.node === this.opts.nodeId) return // this node applied it already
        onChange({ kind: c.kind, id: c.id } as MetadataChange)
      })
      this.listener = client
      try {
        await client.connect()
        await client.query(`LISTEN "${this.channel}"`)
        const ping = setInterval(() => {
          if (this.listener !== client) { clearInterval(ping); return }
          client.query('SELECT 1').catch((err: Error) => { clearInterval(ping); lost(err) })
        }, 10_000)
        ping.unref()
        return true
      } catch (err) {
        lost(err as Error)
        return false
      }
    }
    if (!await connect()) throw new Error('PostgreSQL metadata store: cannot listen for changes')
  }

  // ---- AuditStore: one chain for every node

  async appendAudit (entries: readonly AuditEntry[]): Promise<void> {
    await this.appendChained(entries)
  }

  /** Appends entries after the chain's last one, whichever node wrote it: seq, prevHash and hash are assigned here. */
  async appendChained (inputs: readonly (AuditInput & { readonly at: string })[]): Promise<AuditEntry[]> {
    const out: AuditEntry[] = []
    await this.change(null, async (c) => {
      await c.query("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.streamgate.audit'))")
      const last = (await c.query('SELECT seq, hash FROM sg_audit ORDER BY seq DESC LIMIT 1')).rows[0] as { seq: number, hash: string } | undefined
      let seq = last?.seq ?? 0
      let prev = last?.hash ?? GENESIS
      for (const i of inputs) {
        const base = { actor: i.actor, address: i.address, action: i.action, resource: i.resource, outcome: i.outcome, before: i.before, after: i.after, detail: i.detail, requestId: i.requestId, seq: ++seq, at: i.at }
        const e: AuditEntry = { ...base, prevHash: prev, hash: auditHash(prev, base) }
        prev = e.hash
        out.push(e)
        await c.query(`INSERT INTO sg_audit (${AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
          [e.seq, e.at, e.actor, e.address, e.action, e.resource, e.outcome, e.before, e.after, e.detail, e.requestId, e.prevHash, e.hash])
      }
    })
    return out
  }

  async lastAudit (): Promise<AuditEntry | null> {
    const r = (await this.query(`SELECT ${AUDIT_COLUMNS} FROM sg_audit ORDER BY seq DESC LIMIT 1`)).rows[0] as Record<string, unknown> | undefined
    return r === undefined ? null : row(r)
  }

  async listAudit (f: AuditFilter, limit: number): Promise<AuditEntry[]> {
    const { sql, params } = auditListQuery(f, limit, (seq) => seq)
    return (await this.query(sql, params)).rows.map(row)
  }

  async auditRange (fromSeq: number, limit: number): Promise<AuditEntry[]> {
    return (await this.query(`SELECT ${AUDIT_COLUMNS} FROM sg_audit WHERE seq >= $1 ORDER BY seq LIMIT $2`, [fromSeq, limit])).rows.map(row)
  }

  // ---- IdempotencyStore: a retried request may reach another node

  async getResponse (principal: string, key: string): Promise<IdempotentResponse | null> {
    return (await this.docs<IdempotentResponse>('SELECT doc FROM sg_idempotency WHERE principal = $1 AND key = $2', [principal, key]))[0] ?? null
  }

  async putResponse (principal: string, key: string, r: IdempotentResponse): Promise<void> {
    await this.query('INSERT INTO sg_idempotency VALUES ($1, $2, $3, $4) ON CONFLICT (principal, key) DO UPDATE SET doc = excluded.doc, created_at = excluded.created_at',
      [principal, key, JSON.stringify(r), r.createdAt])
  }

  async expireResponses (before: string): Promise<void> {
    await this.query('DELETE FROM sg_idempotency WHERE created_at < $1', [before])
  }

  async close (): Promise<void> {
    this.closed = true
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer)
    const l = this.listener
    this.listener = null
    await l?.end().catch(() => undefined)
    await this.pool.end().catch(() => undefined)
  }
}
