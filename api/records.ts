// POST /v1/datasets/{id}/records: batch ingest over HTTP. A JSON array (application/json) or NDJSON
// (application/x-ndjson, read as a stream, line by line). Each record is validated on its own through
// the pipeline; 202 is sent only once the accepted ones are in the journal. `Idempotency-Key` (see
// idempotency.ts) makes a retried request answer what the first one answered.
import { createHash } from 'node:crypto'
import type { Request } from 'express'
import { errorCatalogue, PROBLEM_BASE, StreamgateError } from '../gateway/index.js'
import type { Reply } from './contract.js'

export interface RecordsLimits { readonly bodyLimit: number, readonly maxRecords: number }

/** Reads NDJSON from the request stream: the records and the body's hash. */
export async function readNdjson (req: Request, limits: RecordsLimits): Promise<{ records: unknown[], hash: string }> {
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
  // A multi-byte character split between two chunks must not become U+FFFD, and ill-formed UTF-8 is
  // refused (as MQTT's invalid_utf8) rather than stored with replacement characters.
  const decoder = new TextDecoder('utf-8', { fatal: true })
  const decode = (chunk?: Buffer): string => {
    try {
      return chunk === undefined ? decoder.decode() : decoder.decode(chunk, { stream: true })
    } catch {
      throw new StreamgateError('SG_ERR_BAD_REQUEST', `request body is not valid UTF-8 (line ${line + 1})`, { field: 'body' })
    }
  }
  for await (const chunk of req as AsyncIterable<Buffer>) {
    bytes += chunk.length
    if (bytes > limits.bodyLimit) throw new StreamgateError('SG_ERR_PAYLOAD_TOO_LARGE', 'request body exceeds STREAMGATE_HTTP_BODY_LIMIT', { field: 'body' })
    hash.update(chunk)
    const text = carry + decode(chunk)
    const lines = text.split('\n')
    carry = lines.pop() ?? ''
    for (const l of lines) take(l)
  }
  take(carry + decode())
  return { records, hash: hash.digest('hex') }
}

export function isNdjson (req: Request): boolean {
  const t = req.is('application/x-ndjson')
  return t !== false && t !== null
}

/** The answer to a batch: 202 with what was refused, or 422 when nothing was accepted. */
export function batchReply (req: Request, total: number, result: { accepted: number, rejected: readonly unknown[] }): Reply {
  if (result.accepted === 0) {
    // A problem from the catalogue, with every refusal (a thrown error would carry only one).
    const e = errorCatalogue.SG_ERR_UNPROCESSABLE
    return {
      status: e.status,
      body: {
        type: PROBLEM_BASE + e.slug, title: e.title, status: e.status, code: 'SG_ERR_UNPROCESSABLE',
        detail: `all ${total} records were refused`, instance: req.originalUrl, rejected: result.rejected
      }
    }
  }
  return { status: 202, body: { accepted: result.accepted, rejected: result.rejected } }
}
