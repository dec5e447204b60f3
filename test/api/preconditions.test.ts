// Safe retries and safe concurrent edits: If-Match on updates (412 when stale, nothing changes; 428
// when absent) and Idempotency-Key on creating POSTs (a retry answers the first answer; the stored
// answer never holds a secret in the clear).
import fs from 'node:fs'
import path from 'node:path'
import { DuckDBInstance } from '@duckdb/node-api'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, createDataset, createPrincipalWithKey, startTestGateway, type TestGateway, uniqueId } from '../helpers.js'

let gw: TestGateway
beforeAll(async () => { gw = await startTestGateway() })
afterAll(async () => { await gw?.stop() })

describe('If-Match', () => {
  it('refuses a stale write with 412 and changes nothing; refuses one without If-Match with 428', async () => {
    const ds = uniqueId('etag')
    await createDataset(gw, ds)
    const first = await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}`)
    const etag = first.headers.get('etag')!
    const ok = await api(gw.httpUrl, ADMIN_KEY, 'PUT', `/v1/datasets/${ds}`, { description: 'first writer' }, { 'if-match': etag })
    expect(ok.status).toBe(200)
    expect(ok.headers.get('etag')).not.toBe(etag)
    // A second writer still holding the first ETag loses, and the dataset keeps the first write.
    const stale = await api(gw.httpUrl, ADMIN_KEY, 'PUT', `/v1/datasets/${ds}`, { description: 'second writer' }, { 'if-match': etag })
    expect(stale.status).toBe(412)
    expect(stale.headers.get('content-type')).toMatch(/application\/problem\+json/)
    expect(stale.body).toMatchObject({ type: 'https://streamgate.dev/problems/precondition-failed', status: 412, etag: ok.headers.get('etag') })
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}`)).body.description).toBe('first writer')
    const missing = await api(gw.httpUrl, ADMIN_KEY, 'PUT', `/v1/datasets/${ds}`, { description: 'blind write' })
    expect(missing.status).toBe(428)
    expect(missing.body.type).toBe('https://streamgate.dev/problems/precondition-required')

    // Grants the same way; a concurrent pair with the same ETag: exactly one wins.
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const acc = await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/access`)
    const [a, b] = await Promise.all([
      api(gw.httpUrl, ADMIN_KEY, 'PUT', `/v1/datasets/${ds}/access`, { grants: [{ principal: dev.id, actions: ['publish'] }] }, { 'if-match': acc.headers.get('etag')! }),
      api(gw.httpUrl, ADMIN_KEY, 'PUT', `/v1/datasets/${ds}/access`, { grants: [{ principal: dev.id, actions: ['query'] }] }, { 'if-match': acc.headers.get('etag')! })
    ])
    expect([a.status, b.status].sort()).toEqual([200, 412])
    const winner = a.status === 200 ? 'publish' : 'query'
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/access`)).body.grants[0].actions).toEqual([winner])

    // Principals too.
    const p = await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/principals/${dev.id}`)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'PATCH', `/v1/principals/${dev.id}`, { description: 'x' }, { 'if-match': '"nope"' })).status).toBe(412)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'PATCH', `/v1/principals/${dev.id}`, { description: 'x' }, { 'if-match': p.headers.get('etag')! })).status).toBe(200)
  })
})

describe('Idempotency-Key', () => {
  it('answers a retried creation with the first answer, and refuses the key for another request', async () => {
    const id = uniqueId('dev')
    const key = uniqueId('idem')
    const first = await api(gw.httpUrl, ADMIN_KEY, 'POST', '/v1/principals', { id, kind: 'device' }, { 'idempotency-key': key })
    expect(first.status).toBe(201)
    const again = await api(gw.httpUrl, ADMIN_KEY, 'POST', '/v1/principals', { id, kind: 'device' }, { 'idempotency-key': key })
    expect(again.status).toBe(201)
    expect(again.body).toEqual(first.body)
    expect(again.headers.get('idempotent-replayed')).toBe('true')
    // Without the key the same request is a conflict: it really was created once.
    expect((await api(gw.httpUrl, ADMIN_KEY, 'POST', '/v1/principals', { id, kind: 'device' })).status).toBe(409)
    const other = await api(gw.httpUrl, ADMIN_KEY, 'POST', '/v1/principals', { id: uniqueId('dev'), kind: 'device' }, { 'idempotency-key': key })
    expect(other.status).toBe(409)
    expect(other.body.type).toBe('https://streamgate.dev/problems/idempotency-mismatch')
    // Keys are per principal: another caller's same key is its own.
    const admin2 = await createPrincipalWithKey(gw, uniqueId('admin'), 'admin')
    expect((await api(gw.httpUrl, admin2.key, 'POST', '/v1/principals', { id: uniqueId('dev'), kind: 'device' }, { 'idempotency-key': key })).status).toBe(201)
  })

  it('issues one API key for a retried request, and keeps no secret readable in the store', async () => {
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const key = uniqueId('idem')
    const [a, b] = await Promise.all([
      api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/principals/${dev.id}/keys`, { description: 'retried' }, { 'idempotency-key': key }),
      api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/principals/${dev.id}/keys`, { description: 'retried' }, { 'idempotency-key': key })
    ])
    expect(a.status).toBe(201)
    expect(b.body).toEqual(a.body)
    const keys = (await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/principals/${dev.id}/keys`)).body.keys as { description: string }[]
    expect(keys.filter((k) => k.description === 'retried')).toHaveLength(1)
    const secret = a.body.key as string
    // The answer is stored sealed: search (a copy of) the metadata file for the secret and the key.
    const copy = path.join(gw.dataDir, 'inspect.duckdb')
    fs.copyFileSync(path.join(gw.dataDir, 'store.duckdb'), copy)
    if (fs.existsSync(path.join(gw.dataDir, 'store.duckdb.wal'))) fs.copyFileSync(path.join(gw.dataDir, 'store.duckdb.wal'), copy + '.wal')
    const db = await DuckDBInstance.create(copy)
    const conn = await db.connect()
    const rows = (await (await conn.runAndReadAll('SELECT principal, key, doc FROM sg_idempotency')).getRows()).map((r) => r.join('\n'))
    conn.closeSync()
    db.closeSync()
    expect(rows.length).toBeGreaterThan(0)
    for (const r of rows) {
      expect(r).not.toContain(secret)
      expect(r).not.toContain(key)
    }
  })
})

