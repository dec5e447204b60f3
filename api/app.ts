// The management API (Express 5). Routes come from the operation declarations (contract.ts), which
// also give /v1/openapi.json; /docs browses it. Around them: request logs with ids and redacted
// credentials (pino-http), security headers (helmet), compression, CORS only for configured origins,
// rate limits per address and per principal, request timing for /metrics, problem+json errors.
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import cors from 'cors'
import compression from 'compression'
import express, { type RequestHandler } from 'express'
import helmet from 'helmet'
import { pinoHttp } from 'pino-http'
import type { Logger } from 'pino'
// The path only: importing swagger-ui-dist's index would load the whole browser bundle into the gateway.
import swaggerUiPath from 'swagger-ui-dist/absolute-path.js'
import type { AuditLog, SharedRates } from '../gateway/index.js'
import { createAuthenticator, createGuard, userOf } from './auth.js'
import type { ApiDeps, RouteContext } from './context.js'
import { mount, type Operation, openApiDocument } from './contract.js'
import { dataRoutes } from './data.js'
import { datasetRoutes } from './datasets.js'
import { createIdempotency, rememberBodyHash, requestIdentity } from './idempotency.js'
import { perAddress, perPrincipal } from './limits.js'
import type { Metrics } from './metrics.js'
import { operateRoutes } from './operate.js'
import { principalRoutes } from './principals.js'
import { notFound, problemHandler, requireJson } from './problem.js'

export type { ApiDeps, RecoveryResult } from './context.js'

export interface ApiParts extends ApiDeps {
  readonly audit: AuditLog
  readonly metrics: Metrics
  readonly logger: Logger
  /** Where the console's browser connects for MQTT over WebSocket (this node's bound port). */
  readonly consoleConfig?: () => { ws: { port: number, path: string } }
  /** Rates counted across every node (Redis); this node's memory when absent. */
  readonly rates?: SharedRates
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

/** Every operation the API serves, in one list (the OpenAPI document and the routes come from it). */
export function operations (parts: ApiParts): Operation[] {
  const guard = createGuard(parts.management)
  const ctx: RouteContext = { deps: parts, management: parts.management, guard }
  const idempotency = createIdempotency(parts.idempotency)
  return [
    ...datasetRoutes(ctx),
    ...dataRoutes(ctx, idempotency),
    ...principalRoutes(ctx),
    ...operateRoutes(ctx, parts.audit, parts.metrics)
  ]
}

export function createApi (parts: ApiParts): express.Express {
  const { config, management } = parts
  const ops = operations(parts)
  const spec = openApiDocument(ops, {
    title: 'streamgate management API',
    version: '1',
    description: 'Datasets, principals and keys, grants, queries, audit, status. Errors are RFC 9457 problem+json with a stable `type`.'
  })
  const idempotency = createIdempotency(parts.idempotency)
  const auth = createAuthenticator(parts.tokens, management, config.api.authFailuresPerMinute)
  const app = express()
  app.disable('x-powered-by')
  app.set('etag', false)
  app.set('query parser', 'simple')

  app.use(pinoHttp({
    logger: parts.logger,
    genReqId: (req, res) => {
      const given = req.headers['x-request-id']
      const id = typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID()
      res.setHeader('X-Request-Id', id)
      return id
    },
    // Keys and tokens never reach the logs.
    // Idempotency-Key too: it is the key that opens a stored answer (which may hold a new API key).
    redact: { paths: ['req.headers.authorization', 'req.headers["x-api-key"]', 'req.headers["idempotency-key"]', 'req.headers.cookie', 'res.headers["set-cookie"]'], censor: '[redacted]' },
    customLogLevel: (_req, res, err) => err !== undefined || res.statusCode >= 500 ? 'error' : res.statusCode >= 400 ? 'warn' : 'debug',
    autoLogging: { ignore: (req) => req.url === '/metrics' || req.url === '/healthz' || req.url === '/readyz' }
  }))
  app.use(helmet())
  if (config.api.corsOrigins.length > 0) app.use(cors({ origin: [...config.api.corsOrigins], exposedHeaders: ['ETag', 'Location', 'RateLimit', 'RateLimit-Policy', 'Retry-After', 'X-Request-Id', 'Idempotent-Replayed'] }))
  app.use(compression())
  app.use((req, res, next) => {
    const started = process.hrtime.bigint()
    res.on('finish', () => {
      const route = (res.locals.route as string | undefined) ?? 'unmatched'
      parts.metrics.httpDuration.observe({ method: req.method, route, status: String(res.statusCode) }, Number(process.hrtime.bigint() - started) / 1e9)
    })
    next()
  })

  // Health, readiness and metrics are not rate limited: probes and scrapers must always get through.
  const routeLabel = (op: Operation): RequestHandler => (_req, res, next) => { res.locals.route = (op.root === true ? '' : '/v1') + op.path; next() }
  mount(app, ops.filter((op) => op.root === true), { before: (op) => [routeLabel(op)] })

  app.get('/v1/openapi.json', (_req, res) => { res.locals.route = '/v1/openapi.json'; res.json(spec) })
  app.get('/docs', (_req, res) => {
    res.locals.route = '/docs'
    res.type('html').send('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>streamgate API</title>' +
      '<link rel="stylesheet" href="/docs/swagger-ui.css"></head><body><div id="swagger-ui"></div>' +
      '<script src="/docs/swagger-ui-bundle.js"></script><script src="/docs/init.js"></script></body></html>')
  })
  app.get('/docs/init.js', (_req, res) => { res.type('js').send("window.ui = SwaggerUIBundle({ url: '/v1/openapi.json', dom_id: '#swagger-ui' })") })
  mountConsole(app, parts)
  app.use('/docs', express.static(swaggerUiPath(), { index: false }))

  const v1 = express.Router()
  v1.use(perAddress(config.api.ratePerAddress, parts.rates))
  const limitPrincipal = perPrincipal(config.api.ratePerPrincipal, parts.rates)
  // Bodies are read only once the caller is known: an unauthenticated client cannot make the gateway parse megabytes.
  const body = [requireJson, express.json({ limit: config.limits.httpBodyLimit, strict: true, verify: rememberBodyHash })]
  mount(v1, ops.filter((op) => op.root !== true), {
    before: (op) => op.public === true ? [routeLabel(op), ...body] : [routeLabel(op), auth.required, limitPrincipal, ...body],
    // Idempotency-Key for creating POSTs (ops that read their own body apply it themselves).
    around: (op, req, act) => op.idempotent === true && op.rawBody !== true ? idempotency.run(req, userOf(req).principal.id, requestIdentity(req), act) : act()
  })
  app.use('/v1', v1)
  app.use(notFound)
  app.use(problemHandler(parts.log))
  return app
}

/** The console's files, beside the compiled code (dist/console) or the source (console/). */
function consoleDir (): string | null {
  for (const dir of [fileURLToPath(new URL('../console', import.meta.url)), fileURLToPath(new URL('../../console', import.meta.url))]) {
    if (fs.existsSync(path.join(dir, 'index.html'))) return dir
  }
  return null
}

/**
 * The admin console at /console: static files, mqtt.js for the browser, and where MQTT over WebSocket
 * listens. Its pages may open WebSockets to that port (CSP connect-src); everything else as helmet sets.
 */
function mountConsole (app: express.Express, parts: ApiParts): void {
  const dir = consoleDir()
  if (dir === null) return
  const mqttDist = path.join(path.dirname(createRequire(import.meta.url).resolve('mqtt/package.json')), 'dist')
  app.use('/console', (_req, res, next) => {
    res.locals.route = '/console'
    res.setHeader('Content-Security-Policy', "default-src 'self'; connect-src 'self' ws: wss:; worker-src 'self' blob:; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'")
    next()
  })
  // Express matches /console/ here too (non-strict routing): redirect the bare path only.
  app.get('/console', (req, res, next) => { if (req.originalUrl === '/console') res.redirect(301, '/console/'); else next() })
  app.get('/console/config.json', (_req, res) => { res.json(parts.consoleConfig?.() ?? { ws: { port: parts.config.ports.ws, path: '/mqtt' } }) })
  app.get('/console/vendor/mqtt.esm.js', (_req, res) => { res.type('js').sendFile(path.join(mqttDist, 'mqtt.esm.js')) })
  // A missing file falls through to the not-found problem (404), not send's error (a 500 here).
  app.use('/console', express.static(dir, { index: 'index.html' }))
}
