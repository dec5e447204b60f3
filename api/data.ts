// A dataset's data: batch ingest, recent records, the query language, rejects and stats.
import { z } from 'zod'
import { DATASET_ID, isoFromUs, parseTimestampUs, planQuery, queryInputSchema, schemaColumns, StreamgateError, type Dataset, type Row } from '../gateway/index.js'
import { operation, type Operation } from './contract.js'
import type { RouteContext } from './context.js'
import type { Idempotency } from './idempotency.js'
import { requestIdentity } from './idempotency.js'
import { batchReply, isNdjson, readNdjson } from './records.js'
import { rejectSchema } from './schemas.js'

const datasetId = z.object({ id: z.string().regex(DATASET_ID, 'a dataset id: ^[a-z][a-z0-9_]{0,62}$') })
const timeParam = z.string().max(40).refine((v) => !Number.isNaN(parseTimestampUs(/^\d+(\.\d+)?$/.test(v) ? Number(v) : v)), 'expected epoch milliseconds or an ISO 8601 date-time')
const versionParam = z.coerce.number().int().min(1).optional().describe('a schema version (default: the current one)')
const toUs = (v: string | undefined): number | null => v === undefined ? null : parseTimestampUs(/^\d+(\.\d+)?$/.test(v) ? Number(v) : v)

const refusalSchema = z.object({ index: z.number().int(), reason: z.string(), detail: z.string(), field: z.string().optional() }).meta({ id: 'RecordRefusal' })
const recordsBody = z.array(z.record(z.string(), z.unknown())).describe('records: objects of the dataset\'s fields, with an optional "device"; or one per line as application/x-ndjson')
const row = z.record(z.string(), z.union([z.string(), z.number(), z.boolean(), z.null()])).meta({ id: 'Row' })

function outRow (ds: Dataset, r: Row): Record<string, unknown> {
  const out: Record<string, unknown> = { ...r, ts: isoFromUs(r.ts) }
  for (const c of schemaColumns(ds.schema)) {
    const v = r[c.name]
    if (c.kind === 'timestamp' && typeof v === 'number') out[c.name] = isoFromUs(v)
  }
  return out
}

export function dataRoutes ({ deps, management, guard }: RouteContext, idempotency: Idempotency): Operation[] {
  const limits = deps.config.limits
  return [
    operation<{ id: string }, Record<string, never>, unknown>({
      method: 'post', path: '/datasets/{id}/records', operationId: 'ingestRecords', tag: 'data', idempotent: true, rawBody: true,
      summary: 'Ingest a batch of records (publish); 202 once the accepted ones are durable',
      description: 'Each record is validated on its own, like an MQTT payload; one may name its device in "device" (default: the caller).',
      params: datasetId, body: recordsBody, bodyTypes: ['application/json', 'application/x-ndjson'],
      responses: {
        202: { description: 'Accepted records are durable; refused ones are listed', schema: z.object({ accepted: z.number().int(), rejected: z.array(refusalSchema) }) },
        413: { description: 'Too large (`payload-too-large`)' }, 422: { description: 'No record was accepted (`unprocessable`, with `rejected`)' }
      },
      async handle ({ params, req }) {
        const user = guard.grant(req, params.id, 'publish')
        let records: unknown[]
        let hash: string | undefined
        if (isNdjson(req)) {
          ({ records, hash } = await readNdjson(req, { bodyLimit: limits.httpBodyLimit, maxRecords: limits.httpMaxRecords }))
        } else {
          if (!Array.isArray(req.body)) throw new StreamgateError('SG_ERR_VALIDATION', 'send a JSON array of records (or application/x-ndjson)', { field: 'body' })
          records = req.body as unknown[]
          if (records.length > limits.httpMaxRecords) throw new StreamgateError('SG_ERR_PAYLOAD_TOO_LARGE', `more than STREAMGATE_HTTP_MAX_RECORDS=${limits.httpMaxRecords} records`, { field: 'body' })
        }
        if (records.length === 0) throw new StreamgateError('SG_ERR_VALIDATION', 'no records', { field: 'body' })
        // Read the body before the Idempotency-Key check: NDJSON's hash is known only now.
        return await idempotency.run(req, user.principal.id, requestIdentity(req, hash), async () =>
          batchReply(req, records.length, await deps.pipeline.ingestRecords(user.principal.id, params.id, records)))
      }
    }),
    operation<{ id: string }, { from?: string | undefined, to?: string | undefined, limit: number, version?: number | undefined }>({
      method: 'get', path: '/datasets/{id}/records', operationId: 'latestRecords', tag: 'data',
      summary: 'Recent records, newest first (query)',
      params: datasetId,
      query: z.object({
        from: timeParam.optional().describe('epoch ms or ISO 8601, inclusive'), to: timeParam.optional().describe('exclusive'),
        limit: z.coerce.number().int().min(1).max(limits.queryMaxRows).default(100), version: versionParam
      }),
      responses: { 200: { description: 'Records', schema: z.object({ records: z.array(row) }) } },
      async handle ({ params, query, req }) {
        guard.grant(req, params.id, 'query')
        const ds = query.version === undefined ? management.getDataset(params.id) : management.getDatasetVersion(params.id, query.version)
        const rows = await deps.query.latest(ds, { from: toUs(query.from), to: toUs(query.to), limit: query.limit })
        return { status: 200, body: { records: rows.map((r) => outRow(ds, r)) } }
      }
    }),
    operation<{ id: string }, Record<string, never>, z.input<typeof queryInputSchema>>({
      method: 'post', path: '/datasets/{id}/query', operationId: 'queryRecords', tag: 'data',
      summary: 'Run a query in the JSON query language (query)',
      params: datasetId, body: queryInputSchema,
      responses: { 200: { description: 'Rows and the cursor of the next page', schema: z.object({ rows: z.array(row), nextCursor: z.string().nullable() }) }, 503: { description: 'The store is unavailable or the query timed out' } },
      async handle ({ params, body, req }) {
        guard.grant(req, params.id, 'query')
        const ds = body.version === undefined ? management.getDataset(params.id) : management.getDatasetVersion(params.id, body.version)
        const plan = planQuery(ds, body, { maxRows: limits.queryMaxRows })
        return { status: 200, body: await deps.query.query(plan, limits.queryTimeoutMs) }
      }
    }),
    operation<{ id: string }, { limit: number }>({
      method: 'get', path: '/datasets/{id}/rejects', operationId: 'listRejects', tag: 'data',
      summary: 'Recent refusals with reason, detail, field and a payload excerpt (manage)',
      params: datasetId, query: z.object({ limit: z.coerce.number().int().min(1).max(10_000).default(100) }),
      responses: { 200: { description: 'Newest first', schema: z.object({ rejects: z.array(rejectSchema) }) } },
      async handle ({ params, query, req }) {
        guard.grant(req, params.id, 'manage')
        management.getDataset(params.id)
        await deps.rejects.flush()
        return { status: 200, body: { rejects: await deps.rejectStore.list(params.id, query.limit) } }
      }
    }),
    operation<{ id: string }, { version?: number | undefined }>({
      method: 'get', path: '/datasets/{id}/stats', operationId: 'datasetStats', tag: 'data',
      summary: 'Records stored (of the current version, or `version`), refusals by reason, the latest record\'s time (query or manage)',
      params: datasetId, query: z.object({ version: versionParam }),
      responses: { 200: { description: 'Stats', schema: z.object({ stored: z.number(), rejected: z.record(z.string(), z.number()), lastRecordAt: z.string().nullable() }) } },
      async handle ({ params, query, req }) {
        guard.grant(req, params.id, 'query', 'manage')
        const ds = query.version === undefined ? management.getDataset(params.id) : management.getDatasetVersion(params.id, query.version)
        const s = await deps.query.stats(ds)
        return { status: 200, body: { stored: s.stored, rejected: deps.rejects.counts(params.id), lastRecordAt: s.lastRecordUs === null ? null : isoFromUs(s.lastRecordUs) } }
      }
    })
  ]
}
