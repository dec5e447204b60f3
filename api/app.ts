// The management API (Express 5). Every route but /healthz requires a key.
import express, { type Request, type Response, type Router } from 'express'
import type { Config } from '../config/index.js'
import {
  type ApiKey, type BreakerStatus, type Broker, type Dataset, type IdempotencyStore, type Journal, isoFromUs, type Pipeline, type Management, parseTimestampUs, planQuery, type RecordQuery, schemaColumns,
  type JournalConsumer, type Rejects, type RejectStore, type Row, StreamgateError
} from '../gateway/index.js'
import { createAuthenticator, requireAdmin, requireGrant, userOf } from './auth.js'
import { notFound, problemHandler, requireJson } from './problem.js'
import { ingestRoute, rememberBodyHash } from './records.js'

export interface ApiDeps {
  readonly config: Config
  readonly management: Management
  readonly query: RecordQuery
  readonly rejects: Rejects
  readonly rejectStore: RejectStore
  readonly journal: Journal
  readonly consumers: readonly JournalConsumer[]
  readonly broker: Broker
  readonly pipeline: Pipeline
  readonly idempotency: IdempotencyStore
  readonly queryBreaker?: () => BreakerStatus
  readonly amqpStatus?: () => unknown
  /** Memory of the parts that are not this thread's heap (the sink thread, its store). */
  readonly memory?: () => Record<string, unknown>
  readonly log: { error: (obj: object, msg: string) => void }
}

function publicKey (k: ApiKey): Omit<ApiKey, 'hash'> {
  const { hash: _hash, ...rest } = k
  return rest
}

function param (req: Request, name: string): string {
  const v = req.params[name]
  if (typeof v !== 'string') throw new StreamgateError('SG_ERR_BAD_REQUEST', `missing path parameter ${name}`)
  return v
}

function timeParam (req: Request, name: string): number | null {
  const v = req.query[name]
  if (v === undefined) return null
  if (typeof v !== 'string') throw new StreamgateError('SG_ERR_VALIDATION', `${name}: give one value`, { field: name })
  const us = parseTimestampUs(/^\d+(\.\d+)?$/.test(v) ? Number(v) : v)
  if (Number.isNaN(us)) throw new StreamgateError('SG_ERR_VALIDATION', `${name}: expected epoch milliseconds or an ISO 8601 date-time`, { field: name })
  return us
}

function intParam (req: Request, name: string, dflt: number, max: number): number {
  const v = req.query[name]
  if (v === undefined) return dflt
  const n = typeof v === 'string' && /^\d{1,9}$/.test(v) ? Number(v) : NaN
  if (!Number.isInteger(n) || n < 1 || n > max) throw new StreamgateError('SG_ERR_VALIDATION', `${name}: an integer from 1 to ${max}`, { field: name })
  return n
}

function outRow (ds: Dataset, row: Row): Record<string, unknown> {
  const out: Record<string, unknown> = { ...row, ts: isoFromUs(row.ts) }
  for (const c of schemaColumns(ds.schema)) {
    const v = row[c.name]
    if (c.kind === 'timestamp' && typeof v === 'number') out[c.name] = isoFromUs(v)
  }
  return out
}

export function createApi (deps: ApiDeps): express.Express {
  const { management, config } = deps
  const access = management.access
  const app = express()
  app.disable('x-powered-by')
  app.set('etag', false)
  app.set('query parser', 'simple')

  app.get('/healthz', (_req, res) => {
    const ok = deps.journal.healthy
    res.status(ok ? 200 : 503).json({ status: ok ? 'ok' : 'failing', journal: ok ? 'ok' : 'failed' })
  })

  const v1: Router = express.Router()
  v1.use(createAuthenticator(access))
  v1.use(requireJson)
  v1.use(express.json({ limit: config.limits.httpBodyLimit, strict: true, verify: rememberBodyHash }))

  // ---- datasets
  v1.post('/datasets', async (req, res) => {
    requireAdmin(req)
    const d = await management.createDataset(req.body)
    res.status(201).location(`/v1/datasets/${d.id}`).json(d)
  })
  v1.get('/datasets', (req, res) => {
    const u = userOf(req)
    const all = management.catalog.list()
    const visible = u.principal.kind === 'admin' ? all : all.filter((d) => access.grantedDatasets(u.principal.id).includes(d.id))
    res.json({ datasets: visible })
  })
  v1.get('/datasets/:id', (req, res) => {
    const id = param(req, 'id')
    requireGrant(req, access, id, 'publish', 'subscribe', 'query', 'manage')
    res.json(management.getDataset(id))
  })
  v1.put('/datasets/:id', async (req, res) => {
    const id = param(req, 'id')
    requireGrant(req, access, id, 'manage')
    res.json(await management.updateDataset(id, req.body))
  })
  v1.delete('/datasets/:id', async (req, res) => {
    requireAdmin(req)
    await management.deleteDataset(param(req, 'id'))
    res.status(204).end()
  })

  // ---- grants
  v1.get('/datasets/:id/access', (req, res) => {
    const id = param(req, 'id')
    requireGrant(req, access, id, 'manage')
    management.getDataset(id)
    res.json({ grants: access.datasetGrants(id) })
  })
  v1.put('/datasets/:id/access', async (req, res) => {
    const id = param(req, 'id')
    requireGrant(req, access, id, 'manage')
    res.json({ grants: await management.setGrants(id, req.body) })
  })

  // ---- records, rejects, stats
  v1.post('/datasets/:id/records', ingestRoute(deps.pipeline, access, deps.idempotency, { bodyLimit: config.limits.httpBodyLimit, maxRecords: config.limits.httpMaxRecords }))
  v1.get('/datasets/:id/records', async (req, res) => {
    const id = param(req, 'id')
    requireGrant(req, access, id, 'query')
    const ds = management.getDataset(id)
    const rows = await deps.query.latest(ds, { from: timeParam(req, 'from'), to: timeParam(req, 'to'), limit: intParam(req, 'limit', 100, config.limits.queryMaxRows) })
    res.json({ records: rows.map((r) => outRow(ds, r)) })
  })
  v1.post('/datasets/:id/query', async (req, res) => {
    const id = param(req, 'id')
    requireGrant(req, access, id, 'query')
    const plan = planQuery(management.getDataset(id), req.body, { maxRows: config.limits.queryMaxRows })
    res.json(await deps.query.query(plan, config.limits.queryTimeoutMs))
  })
  v1.get('/datasets/:id/rejects', async (req, res) => {
    const id = param(req, 'id')
    requireGrant(req, access, id, 'manage')
    management.getDataset(id)
    await deps.rejects.flush()
    res.json({ rejects: await deps.rejectStore.list(id, intParam(req, 'limit', 100, 10_000)) })
  })
  v1.get('/datasets/:id/stats', async (req, res) => {
    const id = param(req, 'id')
    requireGrant(req, access, id, 'query', 'manage')
    const ds = management.getDataset(id)
    const s = await deps.query.stats(ds)
    res.json({ stored: s.stored, rejected: deps.rejects.counts(id), lastRecordAt: s.lastRecordUs === null ? null : isoFromUs(s.lastRecordUs) })
  })

  // ---- principals and keys
  v1.post('/principals', async (req, res) => {
    requireAdmin(req)
    const p = await management.createPrincipal(req.body)
    res.status(201).location(`/v1/principals/${p.id}`).json(p)
  })
  v1.get('/principals', (req, res) => {
    requireAdmin(req)
    res.json({ principals: access.listPrincipals() })
  })
  v1.get('/principals/:id', (req, res) => {
    requireAdmin(req)
    res.json(management.getPrincipal(param(req, 'id')))
  })
  v1.post('/principals/:id/keys', async (req, res) => {
    requireAdmin(req)
    const { key, secret } = await management.issueKey(param(req, 'id'), req.body ?? {})
    res.status(201).set('Cache-Control', 'no-store').json({ ...publicKey(key), key: secret })
  })
  v1.get('/principals/:id/keys', (req, res) => {
    requireAdmin(req)
    const id = param(req, 'id')
    management.getPrincipal(id)
    res.json({ keys: access.keysOf(id).map(publicKey) })
  })
  v1.delete('/principals/:id/keys/:keyId', async (req, res) => {
    requireAdmin(req)
    await management.revokeKey(param(req, 'id'), param(req, 'keyId'))
    res.status(204).end()
  })

  // ---- status
  v1.get('/status', (req, res: Response) => {
    requireAdmin(req)
    res.json({
      journal: { committedSeq: deps.journal.committedSeq, bytes: deps.journal.bytes, healthy: deps.journal.healthy, ...deps.journal.stats },
      consumers: deps.consumers.map((c) => c.status()),
      ...(deps.queryBreaker !== undefined ? { query: { breaker: deps.queryBreaker() } } : {}),
      ...(deps.amqpStatus !== undefined ? { amqp: deps.amqpStatus() } : {}),
      mqtt: { sessions: deps.broker.sessions().length, ...deps.broker.stats },
      memory: { ...process.memoryUsage(), ...deps.memory?.() },
      rejected: deps.rejects.counts(null)
    })
  })

  app.use('/v1', v1)
  app.use(notFound)
  app.use(problemHandler(deps.log))
  return app
}
