// The API contract: every route is an Operation declared once, with the zod schemas that validate its
// path parameters, query and body and describe its answers. The Express routes are mounted from these
// declarations and the OpenAPI 3.1 document is generated from the same schemas (zod's own JSON Schema
// conversion), so the spec cannot name a route that does not exist or miss one that does.
import type { NextFunction, Request, RequestHandler, Response, Router } from 'express'
import { z } from 'zod'
import { PROBLEM_BASE, StreamgateError, errorCatalogue } from '../gateway/index.js'

export type Method = 'get' | 'post' | 'put' | 'patch' | 'delete'

export interface ResponseSpec {
  readonly description: string
  readonly schema?: z.ZodType
  /** Default application/json (application/problem+json for 4xx/5xx). */
  readonly contentType?: string
  readonly headers?: Readonly<Record<string, string>>
}

export interface Reply {
  readonly status: number
  readonly body?: unknown
  readonly headers?: Readonly<Record<string, string>>
}

export interface Context<P, Q, B> {
  readonly params: P
  readonly query: Q
  readonly body: B
  readonly req: Request
  readonly res: Response
}

export interface Operation<P = unknown, Q = unknown, B = unknown> {
  readonly method: Method
  /** OpenAPI path template under /v1, e.g. /datasets/{id} (with `root`, under /). */
  readonly path: string
  /** Served at the root (/healthz, /metrics), not under /v1. */
  readonly root?: boolean
  readonly operationId: string
  readonly summary: string
  readonly description?: string
  readonly tag: string
  /** Reachable without credentials. */
  readonly public?: boolean
  readonly params?: z.ZodType<P>
  readonly query?: z.ZodType<Q>
  readonly body?: z.ZodType<B>
  /** Media types the body may have (default application/json). */
  readonly bodyTypes?: readonly string[]
  /**
   * The handler reads the body itself (streamed NDJSON); `body` then only documents it, and an
   * `idempotent` handler applies Idempotency-Key itself once it knows the body.
   */
  readonly rawBody?: boolean
  /** Accepts Idempotency-Key (creating POSTs). */
  readonly idempotent?: boolean
  /** Requires If-Match with the resource's current ETag (412 when stale, 428 when absent). */
  readonly ifMatch?: boolean
  readonly responses: Readonly<Record<number, ResponseSpec>>
  readonly handle: (ctx: Context<P, Q, B>) => Promise<Reply> | Reply
}

/** Declares an operation; keeps the parameter types of its handler tied to its schemas. */
export function operation<P = Record<string, never>, Q = Record<string, never>, B = undefined> (o: Operation<P, Q, B>): Operation {
  return o as unknown as Operation
}

/** The problem+json body every error has (RFC 9457). */
export const problemSchema = z.object({
  type: z.string().describe(`a stable URI under ${PROBLEM_BASE}`),
  title: z.string(),
  status: z.number().int(),
  detail: z.string(),
  instance: z.string().optional(),
  code: z.enum(Object.keys(errorCatalogue) as [string, ...string[]]),
  field: z.string().optional()
}).catchall(z.unknown()).meta({ id: 'Problem' })

const COMMON_ERRORS: Record<number, ResponseSpec> = {
  400: { description: 'The request is malformed or does not match the schema (`validation`, `bad-request`)', schema: problemSchema },
  401: { description: 'No valid credentials (`unauthenticated`)', schema: problemSchema },
  403: { description: 'The credentials lack a grant (`forbidden`, naming it)', schema: problemSchema },
  429: { description: 'Over a rate limit (`rate-limited`, with Retry-After)', schema: problemSchema },
  500: { description: 'Internal error', schema: problemSchema }
}

export function expressPath (path: string): string {
  return path.replace(/\{([A-Za-z0-9_]+)\}/g, ':$1')
}

/** Parses one part of a request, turning zod's issues into SG_ERR_VALIDATION naming the field. */
export function parsePart<T> (schema: z.ZodType<T>, value: unknown, where: 'path' | 'query' | 'body' | 'header'): T {
  const r = schema.safeParse(value)
  if (r.success) return r.data
  const issues = r.error.issues.map((i) => ({ field: [where === 'body' ? '' : where, ...i.path.map(String)].filter((s) => s !== '').join('/'), message: i.message }))
  const first = issues[0]
  throw new StreamgateError('SG_ERR_VALIDATION', issues.map((i) => `${i.field || '(body)'}: ${i.message}`).join('; '), { field: first?.field ?? '', issues })
}

export interface MountOptions {
  /** Middleware ahead of each operation (authentication, limits, ...). */
  readonly before: (op: Operation) => RequestHandler[]
  /** Wraps a handler's run (Idempotency-Key), after the request has been validated. */
  readonly around?: (op: Operation, req: Request, act: () => Promise<Reply>) => Promise<Reply>
}

/** Mounts every operation on `router`. */
export function mount (router: Router, ops: readonly Operation[], opts: MountOptions): void {
  for (const op of ops) {
    const run = async (req: Request, res: Response, next: NextFunction): Promise<void> => {
      try {
        const params = op.params === undefined ? {} : parsePart(op.params, req.params, 'path')
        const query = op.query === undefined ? {} : parsePart(op.query, req.query, 'query')
        const body = op.body === undefined || op.rawBody === true ? undefined : parsePart(op.body, req.body, 'body')
        const act = async (): Promise<Reply> => await op.handle({ params, query, body, req, res })
        const reply = opts.around !== undefined ? await opts.around(op, req, act) : await act()
        if (res.headersSent) return
        for (const [k, v] of Object.entries(reply.headers ?? {})) res.setHeader(k, v)
        res.status(reply.status)
        if (reply.body === undefined) res.end()
        else {
          if (reply.status >= 400) res.type('application/problem+json')
          res.json(reply.body)
        }
      } catch (err) {
        next(err)
      }
    }
    router[op.method](expressPath(op.path), ...opts.before(op), (req, res, next) => { void run(req, res, next) })
  }
}

type Json = Record<string, unknown>

/** Converts a zod schema; named sub-schemas (`.meta({ id })`) go to components and are referenced. */
function toSchema (schema: z.ZodType, io: 'input' | 'output', components: Json): Json {
  const json = z.toJSONSchema(schema, { io, unrepresentable: 'any', target: 'draft-2020-12' }) as Json
  const defs = (json.$defs ?? {}) as Record<string, Json>
  delete json.$defs
  delete json.$schema
  const rewrite = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(rewrite)
    if (v !== null && typeof v === 'object') {
      const out: Json = {}
      for (const [k, x] of Object.entries(v)) out[k] = k === '$ref' && typeof x === 'string' ? x.replace('#/$defs/', '#/components/schemas/') : rewrite(x)
      return out
    }
    return v
  }
  for (const [id, def] of Object.entries(defs)) components[id] ??= rewrite(def)
  // A named schema at the top is referenced too, not inlined.
  const id = (z.globalRegistry.get(schema) as { id?: string } | undefined)?.id
  const body = rewrite(json) as Json
  if (id !== undefined) {
    components[id] ??= body
    return { $ref: `#/components/schemas/${id}` }
  }
  return body
}

function parameters (schema: z.ZodType | undefined, where: 'path' | 'query', components: Json): Json[] {
  if (schema === undefined) return []
  const json = toSchema(schema, 'input', components)
  const props = (json.properties ?? {}) as Record<string, Json>
  const required = new Set((json.required ?? []) as string[])
  return Object.entries(props).map(([name, s]) => ({
    name, in: where, required: where === 'path' || required.has(name),
    ...(typeof s.description === 'string' ? { description: s.description } : {}),
    schema: s
  }))
}

export interface SpecInfo { readonly title: string, readonly version: string, readonly description: string }

/** The OpenAPI 3.1 document for `ops`, served under /v1. */
export function openApiDocument (ops: readonly Operation[], info: SpecInfo): Json {
  const components: Json = {}
  const paths: Record<string, Record<string, Json>> = {}
  for (const op of ops) {
    const responses: Json = {}
    const all = { ...COMMON_ERRORS, ...op.responses }
    if (op.ifMatch === true) {
      all[412] ??= { description: 'If-Match does not match the current ETag (`precondition-failed`): nothing changed', schema: problemSchema }
      all[428] ??= { description: 'If-Match is required (`precondition-required`)', schema: problemSchema }
    }
    if (op.public === true) { delete all[401]; delete all[403] }
    for (const [status, r] of Object.entries(all)) {
      const type = r.contentType ?? (Number(status) >= 400 ? 'application/problem+json' : 'application/json')
      responses[status] = {
        description: r.description,
        ...(r.headers !== undefined ? { headers: Object.fromEntries(Object.entries(r.headers).map(([h, d]) => [h, { description: d, schema: { type: 'string' } }])) } : {}),
        ...(r.schema !== undefined ? { content: { [type]: { schema: toSchema(r.schema, 'output', components) } } } : {})
      }
    }
    const headerParams: Json[] = []
    if (op.idempotent === true) headerParams.push({ name: 'Idempotency-Key', in: 'header', required: false, description: 'Makes a retry answer the first response instead of acting twice (24 hours)', schema: { type: 'string', pattern: '^[\\x21-\\x7e]{1,255}$' } })
    if (op.ifMatch === true) headerParams.push({ name: 'If-Match', in: 'header', required: true, description: 'The ETag of the resource as last read', schema: { type: 'string' } })
    const entry: Json = {
      operationId: op.operationId,
      summary: op.summary,
      ...(op.description !== undefined ? { description: op.description } : {}),
      tags: [op.tag],
      parameters: [...parameters(op.params, 'path', components), ...parameters(op.query, 'query', components), ...headerParams],
      ...(op.body !== undefined
        ? { requestBody: { required: true, content: Object.fromEntries((op.bodyTypes ?? ['application/json']).map((t) => [t, { schema: toSchema(op.body!, 'input', components) }])) } }
        : {}),
      responses,
      ...(op.public === true ? { security: [] } : {})
    }
    const key = op.root === true ? op.path : op.path
    const item = (paths[key] ??= {})
    if (op.root === true) (item as Json).servers = [{ url: '/' }]
    item[op.method] = entry
  }
  return {
    openapi: '3.1.0',
    info,
    servers: [{ url: '/v1' }],
    security: [{ bearer: [] }, { apiKey: [] }],
    paths,
    components: {
      schemas: components,
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer', description: 'An API key, or a token from POST /v1/auth/token or the configured JWT issuer' },
        apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key' }
      }
    }
  }
}
