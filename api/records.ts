// POST /v1/datasets/:id/records: batch ingest over HTTP. A JSON array (application/json) or NDJSON
// (application/x-ndjson, read as a stream, line by line). Each record is validated on its own through
// the pipeline; 202 is sent only once the accepted ones are in the journal. `Idempotency-Key` makes a
// retried request a no-op that answers what the first one answered.
import { createHash } from 'node:crypto'
import type { Request, RequestHandler, Response } from 'express'
import { type IdempotencyStore, type Pipeline, StreamgateError } from '../gateway/index.js'
import { requireGrant } from './auth.js'
import type { AccessState } from '../gateway/index.js'

export interface RecordsLimits { readonly bodyLimit: number, readonly maxRecords: number }

const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/
const RAW_HASH = Symbol('rawHash')
type HashedRequest = Request & { [RAW_HASH]?: string }

/** For express.json's `verify`: remembers the hash of the raw body, for Idempotency-Key checks. */
export function rememberBodyHash (req: Request, _res: Response, buf: Buffer): void {
  (req as HashedRequest)[RAW_HASH] = createHash('sha256').update(buf).digest('hex')
}

async function readNdjson (req: Request, limits: RecordsLimits): Promise<{ records: unknown[], hash: string }> {
  const hash = createHash('sha256')
  const records: unknown[] = []
  let bytes = 0
  let carry = ''
  let line = 0
  const take = (text: string): void => {
    line++
    const t = text.trim()
    if (t.length === 0) return
    if (records.length >= limits.maxRecords) throw new StreamgateError('SG_ERR_PAYLOAD_TOO_LARGE', `more than STREAMGATE_HTTP_MAX_RECORDS=${limits.maxRecords} records`, { field: 'body' })
    try {
      records.push(JSON.parse(t))
    } catch (err) {
      throw new StreamgateError('SG_ERR_BAD_REQUEST', `line ${line} is not valid JSON: ${(err as Error).message}`, { field: `body/line/${line}` })
    }
  }
  for await (const chunk of req as AsyncIterable<Buffer>) {
    bytes += chunk.length
    if (bytes > limits.bodyLimit) throw new StreamgateError('SG_ERR_PAYLOAD_TOO_LARGE', 'request body exceeds STREAMGATE_HTTP_BODY_LIMIT', { field: 'body' })
    hash.update(chunk)
    const text = carry + chunk.toString('utf8')
    const lines = text.split('\n')
    carry = lines.pop() ?? ''
    for (const l of lines) take(l)
  }
  take(carry)
  return { records, hash: hash.digest('hex') }
}

export function ingestRoute (pipeline: Pipeline, access: AccessState, idempotency: IdempotencyStore, limits: RecordsLimits): RequestHandler {
  const inFlight = new Map<string, Promise<void>>()
  return async (req, res) => {
    const id = req.params.id as string
    const user = requireGrant(req, access, id, 'publish')
    const key = req.get('idempotency-key')
    if (key !== undefined && !IDEMPOTENCY_KEY.test(key)) throw new StreamgateError('SG_ERR_VALIDATION', 'Idempotency-Key: 1 to 255 printable ASCII characters', { field: 'Idempotency-Key' })

    let records: unknown[]
    let hash: string
    if (req.is('application/x-ndjson') !== false && req.is('application/x-ndjson') !== null) {
      ({ records, hash } = await readNdjson(req, limits))
    } else {
      if (!Array.isArray(req.body)) throw new StreamgateError('SG_ERR_VALIDATION', 'send a JSON array of records (or application/x-ndjson)', { field: 'body' })
      records = req.body as unknown[]
      hash = (req as HashedRequest)[RAW_HASH] ?? ''
      if (records.length > limits.maxRecords) throw new StreamgateError('SG_ERR_PAYLOAD_TOO_LARGE', `more than STREAMGATE_HTTP_MAX_RECORDS=${limits.maxRecords} records`, { field: 'body' })
    }
    if (records.length === 0) throw new StreamgateError('SG_ERR_VALIDATION', 'no records', { field: 'body' })
    const requestHash = `${id}:${hash}`

    const slot = key === undefined ? null : `${user.principal.id}\n${key}`
    if (slot !== null) {
      // A concurrent retry waits for the first attempt, then answers from its stored response.
      while (inFlight.has(slot)) await inFlight.get(slot)
      const saved = await idempotency.getResponse(user.principal.id, key!)
      if (saved !== null) {
        if (saved.requestHash !== requestHash) throw new StreamgateError('SG_ERR_IDEMPOTENCY_MISMATCH', 'this Idempotency-Key was used with a different request', { field: 'Idempotency-Key' })
        res.status(saved.status).set('Idempotent-Replayed', 'true')
        if (saved.status >= 400) res.type('application/problem+json')
        res.json(saved.body)
        return
      }
    }
    let done: () => void = () => undefined
    if (slot !== null) inFlight.set(slot, new Promise<void>((resolve) => { done = resolve }))
    try {
      const result = await pipeline.ingestRecords(user.principal.id, id, records)
      let status: number
      let body: unknown
      if (result.accepted === 0) {
        status = 422
        body = {
          type: 'https://streamgate.dev/problems/unprocessable', title: 'No record was accepted', status, code: 'SG_ERR_UNPROCESSABLE',
          detail: `all ${records.length} records were refused`, instance: req.originalUrl, rejected: result.rejected
        }
      } else {
        status = 202
        body = { accepted: result.accepted, rejected: result.rejected }
      }
      if (slot !== null) await idempotency.putResponse(user.principal.id, key!, { requestHash, status, body, createdAt: new Date().toISOString() })
      res.status(status)
      if (status >= 400) res.type('application/problem+json')
      res.json(body)
    } finally {
      if (slot !== null) {
        inFlight.delete(slot)
        done()
      }
    }
  }
}
