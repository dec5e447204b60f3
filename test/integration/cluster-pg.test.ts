// Nodes sharing their metadata in the machine's PostgreSQL (STREAMGATE_METADATA_URL), in a schema of
// their own: what is made through one node's API works on the others at once, a revocation on one
// disconnects sessions on another within a second, the audit log is one chain, and a node that lost
// its notifications catches up when they are back.
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, sleep, startTestGateway, storedCount, type TestGateway, uniqueId, waitUntil } from '../helpers.js'
import { type PgSchema, pgSchema } from '../support/postgres.js'

let schema: PgSchema
let a: TestGateway
let b: TestGateway
const clients: MqttClient[] = []
const SCHEMA = { fields: { n: 'long' } }

beforeAll(async () => {
  schema = await pgSchema()
  a = await startTestGateway({ STREAMGATE_METADATA_URL: schema.url, STREAMGATE_NODE_ID: 'node-a' })
  b = await startTestGateway({ STREAMGATE_METADATA_URL: schema.url, STREAMGATE_NODE_ID: 'node-b' })
})

afterAll(async () => {
  for (const c of clients) await c.endAsync(true).catch(() => undefined)
  await a?.stop()
  await b?.stop()
  await schema?.drop()
})

async function device (gw: TestGateway, id: string, key: string): Promise<MqttClient> {
  const c = await connect(gw.mqttUrl, id, key, { reconnectPeriod: 0 })
  clients.push(c)
  return c
}

describe('nodes sharing metadata in PostgreSQL', () => {
  it('serves a dataset, device, key and grant made on one node from the other at once', async () => {
    const ds = uniqueId('shared')
    await createDataset(a, ds, SCHEMA)
    const dev = await createPrincipalWithKey(a, uniqueId('dev'))
    await setGrants(a, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])
    // Node b learns of it from the notification (well under a second).
    await waitUntil(() => b.sg.management.access.can(dev.id, 'publish', ds), 1000, 'node b to see the grant')
    const c = await device(b, dev.id, dev.key)
    for (let n = 0; n < 100; n++) await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n }), { qos: 1 })
    await waitUntil(async () => (await storedCount(b.sg, ds)) === 100, 10_000, 'node b to store 100 records')
    const got = await api(b.httpUrl, dev.key, 'GET', `/v1/datasets/${ds}`)
    expect(got.status).toBe(200)
    // A node started later loads it all from PostgreSQL.
    const late = await startTestGateway({ STREAMGATE_METADATA_URL: schema.url, STREAMGATE_NODE_ID: 'node-late' })
    try {
      expect(late.sg.management.access.can(dev.id, 'publish', ds)).toBe(true)
      const c2 = await device(late, dev.id, dev.key)
      await c2.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: 100 }), { qos: 1 })
      await waitUntil(async () => (await storedCount(late.sg, ds)) === 1, 10_000, 'the late node to store its record')
    } finally {
      await late.stop()
    }
  })

  it('lets no grant in on the other node before its dataset: a publish the grant allows finds the dataset there', async () => {
    // Node b makes a new dataset's tables slowly; its grants, announced after it, must wait for it.
    const sink = b.sg.consumers[0] as unknown as { prepareDataset: (d: unknown) => Promise<void> }
    const prepare = sink.prepareDataset.bind(sink)
    sink.prepareDataset = async (d) => { await sleep(500); await prepare(d) }
    try {
      const ds = uniqueId('ordered')
      await createDataset(a, ds, SCHEMA)
      const dev = await createPrincipalWithKey(a, uniqueId('dev'))
      await setGrants(a, ds, [{ principal: dev.id, actions: ['publish'] }])
      await waitUntil(() => b.sg.management.access.can(dev.id, 'publish', ds), 5000, 'node b to see the grant')
      expect(b.sg.management.catalog.get(ds)).toBeDefined()
    } finally {
      sink.prepareDataset = prepare
    }
  })

  it('disconnects a device on one node within a second of its key being revoked on the other', async () => {
    const ds = uniqueId('revoke')
    await createDataset(b, ds, SCHEMA)
    const dev = await createPrincipalWithKey(b, uniqueId('dev'))
    await setGrants(b, ds, [{ principal: dev.id, actions: ['publish'] }])
    await waitUntil(() => a.sg.management.access.can(dev.id, 'publish', ds), 1000, 'node a to see the grant')
    const c = await device(a, dev.id, dev.key)
    const closed = new Promise<number>((resolve) => c.once('close', () => resolve(Date.now())))
    const t0 = Date.now()
    const r = await api(b.httpUrl, ADMIN_KEY, 'DELETE', `/v1/principals/${dev.id}/keys/${dev.keyId}`)
    expect(r.status).toBe(204)
    const ms = (await closed) - t0
    process.stdout.write(`  revocation through node b closed the session on node a after ${ms} ms\n`)
    expect(ms).toBeLessThan(1000)
    // and the key no longer connects there
    await expect(connect(a.mqttUrl, dev.id, dev.key, { reconnectPeriod: 0 })).rejects.toThrow()
  })

  it('follows a disabled principal, a removed grant and a deleted dataset on the other node', async () => {
    const ds = uniqueId('follow')
    await createDataset(a, ds, SCHEMA)
    const dev = await createPrincipalWithKey(a, uniqueId('dev'))
    const other = await createPrincipalWithKey(a, uniqueId('dev'))
    await setGrants(a, ds, [{ principal: dev.id, actions: ['publish'] }, { principal: other.id, actions: ['publish'] }])
    await waitUntil(() => b.sg.management.access.can(other.id, 'publish', ds), 1000, 'node b to see the grants')
    const c = await device(b, dev.id, dev.key)
    const closed = new Promise<void>((resolve) => c.once('close', () => resolve()))
    const etag = (await api(a.httpUrl, ADMIN_KEY, 'GET', `/v1/principals/${dev.id}`)).headers.get('etag')!
    expect((await api(a.httpUrl, ADMIN_KEY, 'PATCH', `/v1/principals/${dev.id}`, { disabled: true }, { 'if-match': etag })).status).toBe(200)
    await closed
    expect(b.sg.management.access.getPrincipal(dev.id)?.disabled).toBe(true)

    expect((await api(a.httpUrl, ADMIN_KEY, 'DELETE', `/v1/datasets/${ds}/access/${other.id}`)).status).toBe(204)
    await waitUntil(() => !b.sg.management.access.can(other.id, 'publish', ds), 1000, 'node b to drop the grant')

    expect((await api(a.httpUrl, ADMIN_KEY, 'DELETE', `/v1/datasets/${ds}?purge=true`)).status).toBe(204)
    await waitUntil(() => b.sg.management.catalog.get(ds) === undefined, 1000, 'node b to drop the dataset')
    expect((await api(b.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}`)).status).toBe(404)
    // Made again through node b, with another schema: node a takes the new one.
    await createDataset(b, ds, { fields: { m: 'double' } })
    await waitUntil(() => a.sg.management.catalog.get(ds)?.schema.fields.m !== undefined, 1000, 'node a to see the new dataset')
  })

  it('keeps one audit chain for every node, and answers a retried Idempotency-Key on another node', async () => {
    const p1 = uniqueId('aud')
    const p2 = uniqueId('aud')
    // Concurrent changes through both nodes.
    await Promise.all([
      api(a.httpUrl, ADMIN_KEY, 'POST', '/v1/principals', { id: p1, kind: 'device' }),
      api(b.httpUrl, ADMIN_KEY, 'POST', '/v1/principals', { id: p2, kind: 'device' })
    ])
    for (const gw of [a, b]) {
      const v = await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/audit/verify')
      expect(v.body).toMatchObject({ ok: true, firstBroken: null })
      const list = await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/audit?action=principal.create&limit=100')
      const resources = (list.body.entries as { resource: string }[]).map((e) => e.resource)
      expect(resources).toEqual(expect.arrayContaining([`principals/${p1}`, `principals/${p2}`]))
    }
    const rows = (await schema.query(`SELECT seq FROM "${schema.name}".sg_audit ORDER BY seq`)).rows.map((r) => Number(r.seq))
    expect(rows).toEqual(rows.map((_, i) => i + 1))

    const id = uniqueId('idem')
    const first = await api(a.httpUrl, ADMIN_KEY, 'POST', '/v1/principals', { id, kind: 'device' }, { 'idempotency-key': id })
    expect(first.status).toBe(201)
    const again = await api(b.httpUrl, ADMIN_KEY, 'POST', '/v1/principals', { id, kind: 'device' }, { 'idempotency-key': id })
    expect(again.status).toBe(201)
    expect(again.body).toEqual(first.body)
  })

  it('catches up with changes made while its notifications were cut', async () => {
    const ds = uniqueId('cut')
    await createDataset(a, ds, SCHEMA)
    const dev = await createPrincipalWithKey(a, uniqueId('dev'))
    // End node b's listening connection from the server side, then change a grant at once.
    const killed = await schema.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'streamgate node-b notifications'")
    expect(killed.rowCount).toBe(1)
    await setGrants(a, ds, [{ principal: dev.id, actions: ['publish'] }])
    await waitUntil(() => b.sg.management.access.can(dev.id, 'publish', ds), 5000, 'node b to reload after reconnecting')
  })
})
