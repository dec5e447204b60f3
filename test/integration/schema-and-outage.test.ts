import net from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { incompatibilities, datasetSchemaSchema } from '../../gateway/index.js'
import {
  ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, type TestGateway, tmpDataDir, uniqueId, waitUntil
} from '../helpers.js'
import { ScriptedQuestdb } from '../support/scripted-questdb.js'

const schema = (s: unknown) => datasetSchemaSchema.parse(s)

describe('schema changes', () => {
  it.each([
    [{ fields: { a: 'double' } }, { fields: { a: 'double', b: 'long' } }, []],
    [{ fields: { a: 'double' } }, { tags: ['site'], fields: { a: 'double' } }, []],
    [{ fields: { a: { type: 'double', required: true } } }, { fields: { a: 'double' } }, []],
    [{ fields: { a: 'double' } }, { fields: { b: 'double' } }, ['field a is removed']],
    [{ fields: { a: 'double' } }, { fields: { a: 'long' } }, ['field a changes type from double to long']],
    [{ fields: { a: 'double' } }, { fields: { a: { type: 'double', required: true } } }, ['field a becomes required']],
    [{ fields: { a: 'double' } }, { fields: { a: 'double', b: { type: 'long', required: true } } }, ['new field b is required']],
    [{ tags: ['site'], fields: { a: 'double' } }, { fields: { a: 'double' } }, ['tag site is removed']],
    [{ timestamp: 't', fields: { a: 'double' } }, { fields: { a: 'double' } }, ['the timestamp field changes from t to (arrival time)']]
  ])('%j → %j: %j', (a, b, expected) => {
    expect(incompatibilities(schema(a), schema(b))).toEqual(expected)
  })

  describe('through the API, on the embedded store', () => {
    let gw: TestGateway
    beforeAll(async () => { gw = await startTestGateway() })
    afterAll(async () => { await gw.stop() })

    it('applies a compatible change in place (new column stored and queryable) and refuses an incompatible one', async () => {
      const ds = uniqueId('evolve')
      await createDataset(gw, ds, { fields: { temp: 'double' } })
      const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
      await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])
      const c = await connect(gw.mqttUrl, dev.id, dev.key)
      await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ temp: 1 }), { qos: 1 })
      const upd = await api(gw.httpUrl, ADMIN_KEY, 'PUT', `/v1/datasets/${ds}`, { schema: { tags: ['site'], fields: { temp: 'double', hum: 'double' } } }, { 'if-match': '*' })
      expect(upd.status).toBe(200)
      expect(upd.body.version).toBe(1)
      await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ temp: 2, hum: 50, site: 'roof' }), { qos: 1 })
      await c.endAsync()
      await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
      const r = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/query`, { select: ['temp', 'hum', 'site'] })
      expect(r.body.rows.map((x: any) => [x.temp, x.hum, x.site])).toEqual([[1, null, null], [2, 50, 'roof']])
      const bad = await api(gw.httpUrl, ADMIN_KEY, 'PUT', `/v1/datasets/${ds}`, { schema: { fields: { temp: 'long' } } }, { 'if-match': '*' })
      expect(bad.status).toBe(409)
      expect(bad.body.type).toBe('https://streamgate.dev/problems/incompatible-schema')
      expect(bad.body.problems).toEqual(['tag site is removed', 'field temp changes type from double to long', 'field hum is removed'])
      const dev2 = await createPrincipalWithKey(gw, uniqueId('dev'))
      expect((await api(gw.httpUrl, dev2.key, 'PUT', `/v1/datasets/${ds}`, { description: 'x' }, { 'if-match': '*' })).status).toBe(403)
    })
  })
})

describe('QuestDB unreachable', () => {
  let gw: TestGateway
  let ilp: ScriptedQuestdb
  beforeAll(async () => {
    ilp = new ScriptedQuestdb()
    await ilp.start()
    const dead = net.createServer()
    await new Promise<void>((resolve) => dead.listen(0, '127.0.0.1', () => resolve()))
    const deadPort = (dead.address() as net.AddressInfo).port
    await new Promise<void>((resolve) => dead.close(() => resolve()))
    gw = await startTestGateway({
      STREAMGATE_QUESTDB: ilp.ilp,
      STREAMGATE_QUESTDB_PG: `postgres://admin:quest@127.0.0.1:${deadPort}/qdb`,
      STREAMGATE_QUESTDB_TIMEOUT_MS: '1000',
      STREAMGATE_QUESTDB_RESET_MS: '5000'
    })
  })
  afterAll(async () => {
    await gw.stop(0) // QuestDB unreachable: the sink cannot drain
    await ilp.stop()
  })

  it('starts, keeps ingesting into the journal, answers queries 503 with Retry-After and shows the breakers', async () => {
    const ds = uniqueId('down')
    await createDataset(gw, ds, { fields: { temp: 'double' } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])
    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    for (let i = 0; i < 20; i++) await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ temp: i }), { qos: 1 })
    await c.endAsync()
    let last: any
    for (let i = 0; i < 5; i++) {
      last = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/query`, {})
      expect(last.status).toBe(503)
      expect(Number(last.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
    }
    expect(last.body.detail).toMatch(/circuit open/)
    expect(Number(last.headers.get('retry-after'))).toBe(5)
    await waitUntil(async () => (await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/status')).body.consumers[0].failures > 0, 10_000, 'sink failures')
    const status = await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/status')
    expect(status.body.query.breaker.state).toBe('open')
    expect(status.body.query.breaker.transitions).toEqual({ open: 1, 'half-open': 0, closed: 0 })
    const metrics = await (await fetch(`${gw.httpUrl}/metrics`)).text()
    expect(metrics).toContain('streamgate_breaker_state{breaker="query"} 2')
    expect(metrics).toContain('streamgate_breaker_transitions_total{breaker="query",to="open"} 1')
    expect(status.body.consumers[0]).toMatchObject({ name: 'questdb', checkpoint: 0 })
    expect(status.body.consumers[0].lag).toBeGreaterThanOrEqual(20)
    expect(status.body.consumers[0].lagSeconds).toBeGreaterThanOrEqual(0)
    expect(status.body.consumers[0].lastError).toMatch(/ECONNREFUSED|connect/)
    // Still ready: the journal takes what the store cannot; /readyz reports the sink's breaker.
    const ready = await api(gw.httpUrl, null, 'GET', '/readyz')
    expect(ready.status).toBe(200)
    expect(ready.body.ready).toBe(true)
    expect(['closed', 'open', 'half-open']).toContain(ready.body.checks['sink:questdb'])
    expect(ilp.requests).toBe(0) // nothing sent before the table exists
  })
})

describe('schema versions', () => {
  it('makes an incompatible change a new version: new records go to it, earlier ones stay readable, across a restart', async () => {
    const dir = tmpDataDir()
    let g = await startTestGateway({}, dir)
    try {
      // The longest id there may be: version 2's table (<id>__v2) has a name beyond 63 characters.
      const ds = uniqueId('ver').padEnd(63, 'x')
      await createDataset(g, ds, { tags: ['site'], fields: { temp: 'long' } })
      const dev = await createPrincipalWithKey(g, uniqueId('dev'))
      await setGrants(g, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])
      const c = await connect(g.mqttUrl, dev.id, dev.key)
      await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ site: 'a', temp: 20 }), { qos: 1 })
      // temp long → double is not compatible in place: refused, then made a new version.
      const etag = (await api(g.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}`)).headers.get('etag')!
      expect((await api(g.httpUrl, ADMIN_KEY, 'PUT', `/v1/datasets/${ds}`, { schema: { tags: ['site'], fields: { temp: 'double' } } }, { 'if-match': etag })).status).toBe(409)
      const v2 = await api(g.httpUrl, ADMIN_KEY, 'POST', `/v1/datasets/${ds}/versions`, { schema: { tags: ['site'], fields: { temp: 'double', note: 'string' } } })
      expect(v2.status).toBe(201)
      expect(v2.body.version).toBe(2)
      await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ site: 'b', temp: 20.5, note: 'v2' }), { qos: 1 })
      await c.endAsync()
      await g.sg.consumers[0]!.waitFor(g.sg.journal.committedSeq)
      const versions = (await api(g.httpUrl, dev.key, 'GET', `/v1/datasets/${ds}/versions`)).body.versions as { version: number, current: boolean }[]
      expect(versions.map((v) => [v.version, v.current])).toEqual([[2, true], [1, false]])
      expect((await api(g.httpUrl, dev.key, 'GET', `/v1/datasets/${ds}/records`)).body.records.map((r: { temp: number }) => r.temp)).toEqual([20.5])
      expect((await api(g.httpUrl, dev.key, 'GET', `/v1/datasets/${ds}/records?version=1`)).body.records.map((r: { temp: number }) => r.temp)).toEqual([20])
      expect((await api(g.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/query`, { version: 1, aggregate: { temp: ['sum'] } })).body.rows).toEqual([{ temp_sum: 20 }])
      expect((await api(g.httpUrl, dev.key, 'GET', `/v1/datasets/${ds}/records?version=3`)).status).toBe(404)
      await g.sg.close()
      g = await startTestGateway({}, dir)
      expect((await api(g.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/versions`)).body.versions).toHaveLength(2)
      expect((await api(g.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/stats?version=1`)).body.stored).toBe(1)
      // Deleting needs purge (both versions hold records), and purging drops both tables.
      expect((await api(g.httpUrl, ADMIN_KEY, 'DELETE', `/v1/datasets/${ds}`)).status).toBe(409)
      expect((await api(g.httpUrl, ADMIN_KEY, 'DELETE', `/v1/datasets/${ds}?purge=true`)).status).toBe(204)
      await createDataset(g, ds, { fields: { temp: 'long' } })
      expect((await api(g.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/stats`)).body.stored).toBe(0)
      // "__" in a new id is refused: it names the tables of later versions.
      const r = await api(g.httpUrl, ADMIN_KEY, 'POST', '/v1/datasets', { id: 'a__v2', schema: { fields: { x: 'long' } } })
      expect(r.status).toBe(400)
      expect(r.body.field).toBe('id')
    } finally {
      await g.stop()
    }
  })
})
