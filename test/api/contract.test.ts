// The API contract: the OpenAPI document is valid OpenAPI 3.1, names every route the gateway serves,
// and every answer the gateway gives in these tests matches it (status and body, validated with ajv).
// Each resource is exercised through a client typed by the generated test/generated/api.d.ts.
import fs from 'node:fs'
import { Validator } from '@seriousme/openapi-schema-validator'
import { Ajv2020 } from 'ajv/dist/2020.js'
import type { Express } from 'express'
import mqtt from 'mqtt'
import createClient, { type Middleware } from 'openapi-fetch'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { paths } from '../generated/api.js'
import { ADMIN_KEY, startTestGateway, type TestGateway, uniqueId } from '../helpers.js'
import { GENERATED, typesFor } from '../support/openapi-types.js'

type Json = Record<string, any>

/** Routes Express serves: [METHOD, path in OpenAPI form]. */
function expressRoutes (app: Express): string[] {
  const out: string[] = []
  const walk = (stack: Json[], prefix: string): void => {
    for (const layer of stack) {
      if (layer.route !== undefined) {
        for (const m of Object.keys(layer.route.methods as Json)) out.push(`${m.toUpperCase()} ${(prefix + String(layer.route.path)).replace(/:([A-Za-z0-9_]+)/g, '{$1}')}`)
      } else if (Array.isArray(layer.handle?.stack)) {
        walk(layer.handle.stack as Json[], prefix + String(layer.rawPath ?? ''))
      }
    }
  }
  walk((app as unknown as { router: { stack: Json[] } }).router.stack, '')
  return out.sort()
}

function specRoutes (spec: Json): string[] {
  const out: string[] = []
  for (const [p, item] of Object.entries(spec.paths as Json)) {
    const root = Array.isArray(item.servers) && item.servers[0]?.url === '/'
    for (const m of ['get', 'post', 'put', 'patch', 'delete']) if (item[m] !== undefined) out.push(`${m.toUpperCase()} ${root ? '' : '/v1'}${p}`)
  }
  return out.sort()
}

/** Validates answers against the spec: the status must be documented and the body must match. */
class ResponseChecker {
  private readonly ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: true })
  readonly seen = new Set<string>()
  readonly failures: string[] = []
  /** Requests with a JSON body the gateway accepted (2xx), by "METHOD template": for the request-side check. */
  readonly accepted = new Map<string, { url: string, body: unknown, op: Json }>()

  constructor (private readonly spec: Json) {}

  operationFor (method: string, path: string): { template: string, op: Json } | null {
    for (const [template, item] of Object.entries(this.spec.paths as Json)) {
      const root = Array.isArray(item.servers) && item.servers[0]?.url === '/'
      const full = (root ? '' : '/v1') + template
      const re = new RegExp('^' + full.replace(/[.]/g, '\\.').replace(/\{[^}]+\}/g, '[^/]+') + '$')
      if (re.test(path) && item[method] !== undefined) return { template: full, op: item[method] as Json }
    }
    return null
  }

  check (method: string, url: string, status: number, headers: Headers, body: unknown): void {
    const contentType = headers.get('content-type')
    const path = new URL(url).pathname
    const found = this.operationFor(method.toLowerCase(), path)
    if (found === null) { this.failures.push(`${method} ${path}: not in the spec`); return }
    this.seen.add(`${method.toUpperCase()} ${found.template} ${status}`)
    const response = (found.op.responses as Json)[String(status)]
    if (response === undefined) { this.failures.push(`${method} ${found.template}: status ${status} is not documented`); return }
    // Every header the answer documents (ETag for If-Match above all) is sent.
    for (const name of Object.keys((response.headers ?? {}) as Json)) {
      if (!headers.has(name)) this.failures.push(`${method} ${found.template} ${status}: no ${name} header, documented`)
    }
    if (response.content === undefined) return
    const [type, media] = Object.entries(response.content as Json)[0] as [string, Json]
    if (contentType !== null && !contentType.startsWith(type.split(';')[0]!)) this.failures.push(`${method} ${found.template} ${status}: content-type ${contentType}, documented ${type}`)
    if (!type.includes('json')) return
    const validate = this.ajv.compile({ ...media.schema, components: this.spec.components })
    if (!validate(body)) this.failures.push(`${method} ${found.template} ${status}: ${this.ajv.errorsText(validate.errors)} in ${JSON.stringify(body).slice(0, 300)}`)
  }
}

let gw: TestGateway
let spec: Json
let checker: ResponseChecker

beforeAll(async () => {
  gw = await startTestGateway()
  spec = await (await fetch(`${gw.httpUrl}/v1/openapi.json`)).json() as Json
  checker = new ResponseChecker(spec)
})
afterAll(async () => { await gw?.stop() })

const sent = new WeakMap<Request, string>()

function client (key: string | null): ReturnType<typeof createClient<paths>> {
  const c = createClient<paths>({ baseUrl: `${gw.httpUrl}/v1`, headers: key === null ? {} : { authorization: `Bearer ${key}` } })
  const check: Middleware = {
    async onRequest ({ request }) {
      const text = await request.clone().text()
      if (text.length > 0) sent.set(request, text)
      return undefined
    },
    async onResponse ({ request, response }) {
      const raw = sent.get(request)
      if (raw !== undefined && response.status >= 200 && response.status < 300) {
        const found = checker.operationFor(request.method.toLowerCase(), new URL(request.url).pathname)
        if (found !== null) checker.accepted.set(`${request.method} ${found.template}`, { url: request.url, body: JSON.parse(raw), op: found.op })
      }
      const text = await response.clone().text()
      let body: unknown = text
      try { body = text.length > 0 ? JSON.parse(text) : undefined } catch { /* not JSON */ }
      checker.check(request.method, request.url, response.status, response.headers, body)
      return undefined
    }
  }
  c.use(check)
  return c
}

describe('OpenAPI contract', () => {
  it('is a valid OpenAPI 3.1 document', async () => {
    const v = new Validator()
    const r = await v.validate(spec)
    expect(r.errors ?? []).toEqual([])
    expect(r.valid).toBe(true)
    expect(v.version).toBe('3.1')
  })

  it('names every route the gateway serves, and no route it does not', () => {
    const docs = ['GET /docs', 'GET /docs/init.js', 'GET /v1/openapi.json', // the document and its browser
      'GET /console', 'GET /console/config.json', 'GET /console/vendor/mqtt.esm.js'] // the console (test/e2e)
    const served = expressRoutes(gw.sg.api).filter((r) => !docs.includes(r))
    expect(served).toEqual(specRoutes(spec))
    expect(served.length).toBeGreaterThan(30)
  })

  it('has up-to-date generated client types (npm run openapi:types)', async () => {
    expect(await typesFor(spec)).toBe(fs.readFileSync(GENERATED, 'utf8'))
  })

  it('answers every resource as documented, through the generated client', async () => {
    const admin = client(ADMIN_KEY)
    const ds = uniqueId('contract')
    const dev = uniqueId('dev')

    // datasets
    const created = await admin.POST('/datasets', { body: { id: ds, schema: { timestamp: 'ts', tags: ['site'], fields: { temp: 'double', n: 'long' } } } })
    expect(created.response.status).toBe(201)
    expect(created.response.headers.get('etag')).toMatch(/^"[\w-]+"$/)
    expect((await admin.GET('/datasets', { params: { query: { limit: 5, prefix: 'contract' } } })).data?.datasets.some((d) => d.id === ds)).toBe(true)
    const got = await admin.GET('/datasets/{id}', { params: { path: { id: ds } } })
    const etag = got.response.headers.get('etag')!
    const updated = await admin.PUT('/datasets/{id}', { params: { path: { id: ds }, header: { 'If-Match': etag } }, body: { description: 'contract test' } })
    expect(updated.response.status).toBe(200)
    const check = await admin.POST('/datasets/{id}/compatibility', { params: { path: { id: ds } }, body: { schema: { timestamp: 'ts', tags: ['site'], fields: { temp: 'long' } } } })
    expect(check.data).toEqual({ compatible: false, problems: ['field temp changes type from double to long', 'field n is removed'] })
    const v2 = await admin.POST('/datasets/{id}/versions', { params: { path: { id: ds } }, body: { schema: { timestamp: 'ts', tags: ['site'], fields: { temp: 'double', n: 'long', note: 'string' } } } })
    expect(v2.data?.version).toBe(2)
    expect((await admin.GET('/datasets/{id}/versions', { params: { path: { id: ds } } })).data?.versions.map((v) => [v.version, v.current])).toEqual([[2, true], [1, false]])

    // principals and keys
    expect((await admin.POST('/principals', { body: { id: dev, kind: 'device' } })).response.status).toBe(201)
    expect((await admin.GET('/principals', { params: { query: { kind: 'device', limit: 1000 } } })).data?.principals.some((p) => p.id === dev)).toBe(true)
    const p = await admin.GET('/principals/{id}', { params: { path: { id: dev } } })
    const patched = await admin.PATCH('/principals/{id}', { params: { path: { id: dev }, header: { 'If-Match': p.response.headers.get('etag')! } }, body: { description: 'a sensor' } })
    expect(patched.data?.description).toBe('a sensor')
    const issued = await admin.POST('/principals/{id}/keys', { params: { path: { id: dev } }, body: { description: 'first' } })
    expect(issued.response.status).toBe(201)
    const keyId = issued.data!.id
    expect((await admin.GET('/principals/{id}/keys', { params: { path: { id: dev } } })).data?.keys.map((k) => k.id)).toEqual([keyId])
    expect((await admin.GET('/principals/{id}/keys/{keyId}', { params: { path: { id: dev, keyId } } })).response.status).toBe(200)
    const rotated = await admin.POST('/principals/{id}/keys/{keyId}/rotate', { params: { path: { id: dev, keyId } }, body: { graceSeconds: 0 } })
    expect(rotated.response.status).toBe(201)
    const key = rotated.data!.key

    // access
    expect((await admin.POST('/datasets/{id}/access', { params: { path: { id: ds } }, body: { principal: dev, actions: ['publish', 'query'] } })).response.status).toBe(201)
    const access = await admin.GET('/datasets/{id}/access', { params: { path: { id: ds } } })
    expect(access.data?.grants).toHaveLength(1)
    const put = await admin.PUT('/datasets/{id}/access', { params: { path: { id: ds }, header: { 'If-Match': access.response.headers.get('etag')! } }, body: { grants: [{ principal: dev, actions: ['publish', 'query', 'subscribe'] }] } })
    expect(put.data?.grants[0]?.actions).toContain('subscribe')
    expect((await admin.GET('/principals/{id}/access', { params: { path: { id: dev } } })).data?.grants).toHaveLength(1)

    // data, as the device itself
    const device = client(key)
    const ingest = await device.POST('/datasets/{id}/records', { params: { path: { id: ds } }, body: [{ ts: 1_767_225_600_000, site: 'roof', temp: 21.5, n: 1 }, { temp: 'hot' }] })
    expect(ingest.response.status).toBe(202)
    expect(ingest.data?.accepted).toBe(1)
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    expect((await device.GET('/datasets/{id}/records', { params: { path: { id: ds }, query: { limit: 10 } } })).data?.records).toHaveLength(1)
    expect((await device.POST('/datasets/{id}/query', { params: { path: { id: ds } }, body: { aggregate: { temp: ['avg'] } } })).data?.rows).toHaveLength(1)
    expect((await device.GET('/datasets/{id}/stats', { params: { path: { id: ds } } })).data?.stored).toBe(1)
    expect((await admin.GET('/datasets/{id}/rejects', { params: { path: { id: ds }, query: { limit: 10 } } })).data?.rejects[0]?.reason).toBe('wrong_type')
    expect((await device.GET('/datasets/{id}/rejects', { params: { path: { id: ds }, query: { limit: 10 } } })).response.status).toBe(403)

    // tokens: a key exchanged for a short-lived token that works as a credential
    const token = await device.POST('/auth/token')
    expect(token.response.status).toBe(201)
    expect((await client(token.data!.token).GET('/datasets/{id}/stats', { params: { path: { id: ds } } })).response.status).toBe(200)

    // live sessions
    const c = await mqtt.connectAsync(gw.mqttUrl, { username: dev, password: key, clientId: uniqueId('c'), reconnectPeriod: 0, protocolVersion: 4 })
    try {
      const clients = await admin.GET('/clients', { params: { query: { principal: dev } } })
      expect(clients.data?.clients.map((x) => x.clientId)).toEqual([c.options.clientId])
      const gone = new Promise<void>((resolve) => c.once('close', () => resolve()))
      expect((await admin.DELETE('/clients/{clientId}', { params: { path: { clientId: c.options.clientId! } } })).response.status).toBe(204)
      await gone
    } finally {
      await c.endAsync(true)
    }

    // operations
    expect((await admin.GET('/status')).response.status).toBe(200)
    expect((await admin.GET('/cluster')).data?.nodes.map((n) => n.sessions)).toHaveLength(1)
    // without STREAMGATE_REPLICATION there is nothing to recover from (test/integration/replication.test.ts recovers)
    expect((await admin.POST('/cluster/nodes/{id}/recover', { params: { path: { id: 'lost-node' } } })).response.status).toBe(409)
    const audit = await admin.GET('/audit', { params: { query: { resource: `datasets/${ds}`, limit: 100 } } })
    expect(audit.data?.entries.map((e) => e.action)).toEqual(expect.arrayContaining(['dataset.create', 'dataset.update', 'access.grant', 'access.set']))
    expect((await admin.GET('/audit/verify')).data?.ok).toBe(true)

    // teardown through the API: revoke, delete the principal, refuse then purge the dataset
    expect((await admin.DELETE('/principals/{id}/keys/{keyId}', { params: { path: { id: dev, keyId: rotated.data!.id } } })).response.status).toBe(204)
    expect((await admin.DELETE('/datasets/{id}/access/{principal}', { params: { path: { id: ds, principal: dev } } })).response.status).toBe(204)
    expect((await admin.DELETE('/principals/{id}', { params: { path: { id: dev } } })).response.status).toBe(204)
    expect((await admin.DELETE('/datasets/{id}', { params: { path: { id: ds }, query: { purge: 'false' } } })).response.status).toBe(409)
    expect((await admin.DELETE('/datasets/{id}', { params: { path: { id: ds }, query: { purge: 'true' } } })).response.status).toBe(204)

    // health, readiness and metrics, outside /v1
    for (const path of ['/healthz', '/readyz', '/metrics']) {
      const r = await fetch(gw.httpUrl + path)
      const text = await r.text()
      checker.check('GET', gw.httpUrl + path, r.status, r.headers, r.headers.get('content-type')?.includes('json') === true ? JSON.parse(text) : text)
    }
    expect(checker.failures).toEqual([])
    // every operation was called at least once
    const called = new Set([...checker.seen].map((s) => s.split(' ').slice(0, 2).join(' ')))
    expect(specRoutes(spec).filter((r) => !called.has(r))).toEqual([])
  })

  it('validates requests as the document describes them: what it accepts fits the spec, and what the spec refuses is refused', async () => {
    // Runs on the bodies the walk above sent and the gateway accepted.
    expect(checker.accepted.size).toBeGreaterThan(10)
    const ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: true })
    const disagreements: string[] = []
    let mutations = 0
    const resolve = (schema: Json): Json => {
      let sch = schema
      while (typeof sch.$ref === 'string') sch = (spec.components.schemas as Json)[(sch.$ref as string).split('/').pop()!] as Json
      return sch
    }
    for (const [name, { url, body, op }] of checker.accepted) {
      const media = op.requestBody?.content?.['application/json']
      if (media === undefined) continue
      const validate = ajv.compile({ ...media.schema, components: spec.components })
      if (!validate(body)) { disagreements.push(`${name}: accepted a body the spec refuses (${ajv.errorsText(validate.errors)})`); continue }
      const schema = resolve(media.schema as Json)
      if (schema.type !== 'object' || typeof body !== 'object' || body === null || Array.isArray(body)) continue
      const variants: [string, Json][] = []
      for (const prop of Object.keys((schema.properties ?? {}) as Json)) {
        // A value of a type the spec refuses for this property.
        const wrong = [12345, 'not-this', true, [], { a: 1 }, null].find((v) => !validate({ ...body, [prop]: v }))
        if (wrong !== undefined) variants.push([`${prop} = ${JSON.stringify(wrong)}`, { ...body, [prop]: wrong }])
      }
      for (const prop of (schema.required ?? []) as string[]) {
        const { [prop]: _gone, ...rest } = body as Json
        variants.push([`without ${prop}`, rest])
      }
      if (schema.additionalProperties === false) variants.push(['an unknown property', { ...body, notInTheSpec: 1 }])
      for (const [what, variant] of variants) {
        if (validate(variant)) continue
        mutations++
        const r = await fetch(url, { method: name.split(' ')[0]!, headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json', 'if-match': '*' }, body: JSON.stringify(variant) })
        const problem = await r.json().catch(() => null) as { type?: string } | null
        if (r.status !== 400 || problem?.type !== 'https://streamgate.dev/problems/validation') disagreements.push(`${name} with ${what}: the spec refuses it, the gateway answered ${r.status} ${problem?.type ?? ''}`)
      }
    }
    process.stdout.write(`  request validation against the spec: ${checker.accepted.size} accepted requests checked, ${mutations} refused variants sent\n`)
    expect(disagreements).toEqual([])
    expect(mutations).toBeGreaterThan(30)
  })
})
