// Idempotency-Key for POSTs that create something (Stripe's design): a retry with the same key, from
// the same principal, for the same request answers the first answer (`Idempotent-Replayed: true`)
// instead of acting twice; the same key with another request is 409 idempotency-mismatch. Answers are
// kept 24 hours. They can hold secrets (a new API key), so the store never sees one in the clear: rows
// are found by a hash of principal and key, and the answer is sealed with AES-256-GCM under a key
// derived from the Idempotency-Key itself, which only the client holds.
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from 'node:crypto'
import { isUtf8 } from 'node:buffer'
import type { Request } from 'express'
import { type IdempotencyStore, StreamgateError } from '../gateway/index.js'
import type { Reply } from './contract.js'

const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/

interface Sealed { readonly alg: 'A256GCM', readonly iv: string, readonly tag: string, readonly data: string }

function secretFor (principal: string, key: string): Buffer {
  return Buffer.from(hkdfSync('sha256', key, principal, 'streamgate idempotency', 32))
}

function seal (secret: Buffer, reply: Reply): Sealed {
  const iv = randomBytes(12)
  const c = createCipheriv('aes-256-gcm', secret, iv)
  const data = Buffer.concat([c.update(JSON.stringify({ body: reply.body ?? null, headers: reply.headers ?? {} })), c.final()])
  return { alg: 'A256GCM', iv: iv.toString('base64'), tag: c.getAuthTag().toString('base64'), data: data.toString('base64') }
}

function open (secret: Buffer, s: Sealed): { body: unknown, headers: Record<string, string> } {
  const d = createDecipheriv('aes-256-gcm', secret, Buffer.from(s.iv, 'base64'))
  d.setAuthTag(Buffer.from(s.tag, 'base64'))
  return JSON.parse(Buffer.concat([d.update(Buffer.from(s.data, 'base64')), d.final()]).toString('utf8')) as { body: unknown, headers: Record<string, string> }
}

export interface Idempotency {
  /**
   * Runs `act` once per (principal, Idempotency-Key): without the header it just runs it. `request`
   * identifies what was asked (method, path, body hash): a different request under a used key is 409.
   */
  run (req: Request, principal: string, request: string, act: () => Promise<Reply>): Promise<Reply>
}

export function createIdempotency (store: IdempotencyStore): Idempotency {
  const inFlight = new Map<string, Promise<void>>()
  return {
    async run (req, principal, request, act) {
      const key = req.get('idempotency-key')
      if (key === undefined) return act()
      if (!IDEMPOTENCY_KEY.test(key)) throw new StreamgateError('SG_ERR_VALIDATION', 'Idempotency-Key: 1 to 255 printable ASCII characters', { field: 'Idempotency-Key' })
      const slot = createHash('sha256').update(principal).update('\n').update(key).digest('hex')
      const requestHash = createHash('sha256').update(request).digest('hex')
      const secret = secretFor(principal, key)
      // A concurrent retry waits for the first attempt, then answers from its stored response. The slot
      // is taken in the same turn as the check that found it free (no await in between).
      for (let p = inFlight.get(slot); p !== undefined; p = inFlight.get(slot)) await p
      let done: () => void = () => undefined
      inFlight.set(slot, new Promise<void>((resolve) => { done = resolve }))
      try {
        const saved = await store.getResponse(principal, slot)
        if (saved !== null) {
          if (saved.requestHash !== requestHash) throw new StreamgateError('SG_ERR_IDEMPOTENCY_MISMATCH', 'this Idempotency-Key was used with a different request', { field: 'Idempotency-Key' })
          const { body, headers } = open(secret, saved.body as Sealed)
          return { status: saved.status, body, headers: { ...headers, 'Idempotent-Replayed': 'true' } }
        }
        const reply = await act()
        // Problems caused by the request itself are answered again too; 5xx are not kept (a retry may succeed).
        if (reply.status < 500) await store.putResponse(principal, slot, { requestHash, status: reply.status, body: seal(secret, reply), createdAt: new Date().toISOString() })
        return reply
      } finally {
        inFlight.delete(slot)
        done()
      }
    }
  }
}

const BODY_HASH = Symbol('bodyHash')
type HashedRequest = Request & { [BODY_HASH]?: string }

/**
 * For express.json's `verify`: refuses ill-formed UTF-8 (the parser would store U+FFFD in its place;
 * MQTT refuses such payloads as invalid_utf8), and remembers the hash of the raw body.
 */
export function rememberBodyHash (req: Request, _res: unknown, buf: Buffer): void {
  // requireJson let only UTF-8 (declared or not) through.
  if (!isUtf8(buf)) {
    throw Object.assign(new Error('request body is not valid UTF-8'), { type: 'entity.invalid.utf8' })
  }
  (req as HashedRequest)[BODY_HASH] = createHash('sha256').update(buf).digest('hex')
}

/** What identifies a request for Idempotency-Key purposes: method, path and body (its hash). */
export function requestIdentity (req: Request, bodyHash = (req as HashedRequest)[BODY_HASH] ?? ''): string {
  return `${req.method} ${req.baseUrl}${req.path}\n${bodyHash}`
}
