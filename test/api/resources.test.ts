// The management API's resources as an admin and a dataset manager use them, beyond the contract
// walk: keyset pages followed to the end, key expiry, the manage role's reach, compression, the
// browsable docs, and an audit entry for every kind of change.
import http from 'node:http'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, type ApiResponse, connect, createDataset, createPrincipalWithKey, sleep, startTestGateway, type TestGateway, uniqueId, waitUntil } from '../helpers.js'

let gw: TestGateway
beforeAll(async () => { gw = await startTestGateway() })
afterAll(async () => { await gw?.stop() })

/** Every item of a listing, page after page through `next`. */
async function allPages<T> (path: string, field: string, limit: number): Promise<{ items: T[], pages: number }> {
  const items: T[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const sep = path.includes('?') ? '&' : '?'
    const r: ApiResponse<any> = await api(gw.httpUrl, ADMIN_KEY, 'GET', `${path}${sep}limit=${limit}${cursor !== null ? `&cursor=${encodeURIComponent(cursor)}` : ''}`)
    expect(r.status).toBe(200)
    expect(r.body[field].length).toBeLessThanOrEqual(limit)
    items.push(...r.body[field])
    cursor = r.body.next
    pages++
  } while (cursor !== null && pages < 100)
  return { items, pages }
}

describe('management API resources', () => {
  it('pages datasets and principals by keyset cursor, each item once, with filters', async () => {
    const prefix = uniqueId('pg').replace(/-/g, '_') + '_'
    const ids = Array.from({ length: 7 }, (_, i) => `${prefix}${i}`)
    for (const id of ids) await createDataset(gw, id, { fields: { n: 'long' } })
    const ds = await allPages<{ id: string }>(`/v1/datasets?prefix=${prefix}`, 'datasets', 3)
    expect(ds.items.map((d) => d.id)).toEqual(ids)
    expect(ds.pages).toBe(3)

    const services = []
    for (let i = 0; i < 5; i++) services.push((await createPrincipalWithKey(gw, uniqueId('svc'), 'service')).id)
    const ps = await allPages<{ id: string, kind: string }>('/v1/principals?kind=service', 'principals', 2)
    expect(ps.items.every((p) => p.kind === 'service')).toBe(true)
    expect(new Set(ps.items.map((p) => p.id)).size).toBe(ps.items.length)
    for (const id of services) expect(ps.items.map((p) => p.id)).toContain(id)
  })

  it('stops taking a key at its expiresAt', async () => {
    const p = await createPrincipalWithKey(gw, uniqueId('exp'))
    const r = await api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/principals/${p.id}/keys`, { description: 'short-lived', expiresAt: new Date(Date.now() + 1500).toISOString() })
    expect(r.status).toBe(201)
    const key = r.body.key as string
    expect((await api(gw.httpUrl, key, 'GET', '/v1/datasets')).status).toBe(200)
    await sleep(1700)
    const after = await api(gw.httpUrl, key, 'GET', '/v1/datasets')
    expect(after.status).toBe(401)
    expect(after.body.type).toBe('https://streamgate.dev/problems/unauthenticated')
  })

  it('lets a manager change its own dataset\'s schema and access, and nothing else, naming the missing grant', async () => {
    const mine = uniqueId('mine')
    const other = uniqueId('other')
    await createDataset(gw, mine, { fields: { n: 'long' } })
    await createDataset(gw, other, { fields: { n: 'long' } })
    const mgr = await createPrincipalWithKey(gw, uniqueId('mgr'), 'service')
    expect((await api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/datasets/${mine}/access`, { principal: mgr.id, actions: ['manage'] })).status).toBe(201)
    const access = await api(gw.httpUrl, mgr.key, 'GET', `/v1/datasets/${mine}/access`)
    expect(access.status).toBe(200)
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    expect((await api(gw.httpUrl, mgr.key, 'POST', `/v1/datasets/${mine}/access`, { principal: dev.id, actions: ['publish'] })).status).toBe(201)
    expect((await api(gw.httpUrl, mgr.key, 'POST', `/v1/datasets/${mine}/versions`, { schema: { fields: { n: 'long', m: 'double' } } })).status).toBe(201)
    for (const [method, path, body] of [
      ['GET', `/v1/datasets/${other}/access`, undefined],
      ['POST', `/v1/datasets/${other}/access`, { principal: dev.id, actions: ['publish'] }],
      ['POST', `/v1/datasets/${other}/versions`, { schema: { fields: { n: 'long', m: 'double' } } }]
    ] as const) {
      const r = await api(gw.httpUrl, mgr.key, method, path, body)
      expect(r.status, `${method} ${path}`).toBe(403)
      expect(r.body.missing).toBeDefined()
      expect(r.body.detail).toMatch(/manage/)
    }
    const create = await api(gw.httpUrl, mgr.key, 'POST', '/v1/datasets', { id: uniqueId('nope'), schema: { fields: { n: 'long' } } })
    expect(create.status).toBe(403)
    expect(create.body.missing).toBe('admin')
  })

  it('compresses answers for clients that accept gzip', async () => {
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      http.get(`${gw.httpUrl}/v1/openapi.json`, { headers: { 'accept-encoding': 'gzip' } }, resolve).on('error', reject)
    })
    res.resume()
    expect(res.statusCode).toBe(200)
    expect(res.headers['content-encoding']).toBe('gzip')
  })

  it('serves browsable docs of the OpenAPI document at /docs', async () => {
    const page = await fetch(`${gw.httpUrl}/docs`)
    expect(page.status).toBe(200)
    expect(page.headers.get('content-type')).toMatch(/text\/html/)
    const html = await page.text()
    expect(html).toContain('swagger-ui')
    for (const asset of ['/docs/swagger-ui-bundle.js', '/docs/init.js']) {
      expect(html).toContain(asset)
      expect((await fetch(`${gw.httpUrl}${asset}`)).status, asset).toBe(200)
    }
    expect(await (await fetch(`${gw.httpUrl}/docs/init.js`)).text()).toContain('/v1/openapi.json')
  })

  it('serves the console, and answers a file it does not have with the not-found problem', async () => {
    expect((await fetch(`${gw.httpUrl}/console/`)).status).toBe(200)
    const missing = await fetch(`${gw.httpUrl}/console/nope.js`)
    expect(missing.status).toBe(404)
    expect((await missing.json() as { type: string }).type).toBe('https://streamgate.dev/problems/not-found')
  })

  it('audits every kind of change: versions, rotations, kicks, principal and dataset deletes with purge', async () => {
    const ds = uniqueId('aud')
    await createDataset(gw, ds, { fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    expect((await api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/datasets/${ds}/versions`, { schema: { fields: { n: 'double' } } })).status).toBe(201)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/principals/${dev.id}/keys/${dev.keyId}/rotate`, { graceSeconds: 0 })).status).toBe(201)
    const fresh = (await api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/principals/${dev.id}/keys`, {})).body.key as string
    const c = await connect(gw.mqttUrl, dev.id, fresh, { clientId: uniqueId('kick'), reconnectPeriod: 0 })
    expect((await api(gw.httpUrl, ADMIN_KEY, 'DELETE', `/v1/clients/${c.options.clientId!}`)).status).toBe(204)
    c.end(true)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/datasets/${ds}/records`, [{ device: 'd', n: 1.5 }])).status).toBe(202)
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    const principal = await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/principals/${dev.id}`)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'DELETE', `/v1/principals/${dev.id}`, undefined, { 'if-match': principal.headers.get('etag')! })).status).toBe(204)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'DELETE', `/v1/datasets/${ds}?purge=true`)).status).toBe(204)
    const seen = async (action: string, resource: string): Promise<boolean> => {
      const r = await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/audit?action=${action}&limit=100`)
      return (r.body.entries as { resource: string, actor: string }[]).some((e) => e.resource.startsWith(resource) && e.actor === 'admin')
    }
    for (const [action, resource] of [
      ['dataset.version', `datasets/${ds}`],
      ['key.rotate', `principals/${dev.id}/keys/${dev.keyId}`],
      ['client.kick', 'clients/'],
      ['principal.delete', `principals/${dev.id}`],
      ['dataset.purge', `datasets/${ds}`]
    ] as const) {
      await waitUntil(() => seen(action, resource), 3000, `${action} on ${resource} in the audit log`)
    }
  })
})
