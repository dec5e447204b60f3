import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  api, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, type TestGateway, uniqueId, waitUntil, storedCount } from '../helpers.js'

describe('batch ingest over HTTP', () => {
  let gw: TestGateway
  beforeAll(async () => { gw = await startTestGateway({ STREAMGATE_HTTP_MAX_RECORDS: '5000' }) })
  afterAll(async () => { await gw.stop() })

  async function setup (): Promise<{ ds: string, svc: { id: string, key: string }, dev: { id: string, key: string } }> {
    const ds = uniqueId('http')
    await createDataset(gw, ds)
    const svc = await createPrincipalWithKey(gw, uniqueId('svc'), 'service')
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [
      { principal: svc.id, actions: ['publish', 'query', 'subscribe'], devices: ['+'] },
      { principal: dev.id, actions: ['publish', 'query'] }
    ])
    return { ds, svc, dev }
  }

  it('accepts a JSON array, validates each record on its own, stores the good ones and delivers them to MQTT subscribers', async () => {
    const { ds, svc } = await setup()
    const sub = await connect(gw.mqttUrl, svc.id, svc.key)
    const got: string[] = []
    sub.on('message', (topic, payload) => got.push(topic + ' ' + payload.toString()))
    await sub.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    const body = [
      { device: 'd1', temp: 1, ts: 1_700_000_000_000 },
      { device: 'd2', temp: 2 },
      { device: 'd1', temp: 'hot' },
      { device: 'bad/device', temp: 3 },
      { temp: 4, colour: 'red' },
      [1, 2],
      { device: 'd1', temp: 5 }
    ]
    const r = await api(gw.httpUrl, svc.key, 'POST', `/v1/datasets/${ds}/records`, body)
    expect(r.status).toBe(202)
    expect(r.body.accepted).toBe(3)
    expect(r.body.rejected.map((x: { index: number, reason: string }) => [x.index, x.reason])).toEqual([[2, 'wrong_type'], [3, 'wrong_type'], [4, 'unknown_field'], [5, 'not_an_object']])
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    expect(await storedCount(gw.sg, ds)).toBe(3)
    const recs = await api(gw.httpUrl, svc.key, 'GET', `/v1/datasets/${ds}/records?limit=10`)
    expect(recs.body.records.map((x: { device: string, temp: number }) => `${x.device}:${x.temp}`).sort()).toEqual(['d1:1', 'd1:5', 'd2:2'])
    await waitUntil(() => got.length === 2)
    expect(got.some((g) => g.startsWith(`datasets/${ds}/d1 `))).toBe(true)
    const stats = await api(gw.httpUrl, svc.key, 'GET', `/v1/datasets/${ds}/stats`)
    expect(stats.body.rejected).toEqual({ wrong_type: 2, unknown_field: 1, not_an_object: 1 })
    await sub.endAsync()
  })

  it('accepts NDJSON and refuses a bad line with its line number', async () => {
    const { ds, dev } = await setup()
    const nd = Array.from({ length: 1000 }, (_, i) => JSON.stringify({ temp: i })).join('\n') + '\n'
    const r = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, nd, { 'content-type': 'application/x-ndjson' })
    expect(r.status).toBe(202)
    expect(r.body.accepted).toBe(1000)
    const bad = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, '{"temp":1}\n{"temp":\n', { 'content-type': 'application/x-ndjson' })
    expect(bad.status).toBe(400)
    expect(bad.body.field).toBe('body/line/2')
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    expect(await storedCount(gw.sg, ds)).toBe(1000)
  })

  it('journals large batches as entries a replay can decode (at most STREAMGATE_MAX_BATCH records each)', async () => {
    const small = await startTestGateway({ STREAMGATE_MAX_BATCH: '100' })
    try {
      const ds = uniqueId('big')
      await createDataset(small, ds)
      const dev = await createPrincipalWithKey(small, uniqueId('dev'))
      await setGrants(small, ds, [{ principal: dev.id, actions: ['publish'] }])
      const r = await api(small.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, Array.from({ length: 250 }, (_, i) => ({ temp: i })))
      expect(r.body.accepted).toBe(250)
      const reader = small.sg.journal.reader(1)
      const entries = (await reader.read(1000)).filter((e) => e.dataset === ds)
      await reader.close()
      expect(entries.map((e) => (JSON.parse(e.payload.toString()) as unknown[]).length)).toEqual([100, 100, 50])
      const compiled = small.sg.management.catalog.current(ds)!
      for (const e of entries) expect(compiled.decode(JSON.parse(e.payload.toString()), e.device, e.arrivalUs, [])).toBeNull()
    } finally {
      await small.stop()
    }
  })

  it('makes a retried request with the same Idempotency-Key a no-op', async () => {
    const { ds, dev } = await setup()
    const body = [{ temp: 1 }, { temp: 2 }, { temp: 'x' }]
    const key = uniqueId('idem')
    const first = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, body, { 'idempotency-key': key })
    const [second, third] = await Promise.all([
      api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, body, { 'idempotency-key': key }),
      api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, body, { 'idempotency-key': key })
    ])
    expect(first.status).toBe(202)
    expect(second.status).toBe(202)
    expect(second.body).toEqual(first.body)
    expect(second.headers.get('idempotent-replayed')).toBe('true')
    expect(third.body).toEqual(first.body)
    const other = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, [{ temp: 9 }], { 'idempotency-key': key })
    expect(other.status).toBe(409)
    expect(other.body.type).toBe('https://streamgate.dev/problems/idempotency-mismatch')
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    expect(await storedCount(gw.sg, ds)).toBe(2)
  })

  it('refuses without a publish grant, when nothing is valid, and on wrong content types or sizes', async () => {
    const { ds, dev } = await setup()
    const stranger = await createPrincipalWithKey(gw, uniqueId('dev'))
    const denied = await api(gw.httpUrl, stranger.key, 'POST', `/v1/datasets/${ds}/records`, [{ temp: 1 }])
    expect(denied.status).toBe(403)
    expect(denied.body.missing).toEqual({ dataset: ds, actions: ['publish'] })
    const spoof = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, [{ device: 'someone-else', temp: 1 }])
    expect(spoof.status).toBe(422)
    expect(spoof.body.rejected[0].reason).toBe('not_authorized')
    expect((await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, 'temp=1', { 'content-type': 'text/plain' })).status).toBe(415)
    expect((await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, { temp: 1 })).status).toBe(400)
    expect((await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, [])).status).toBe(400)
    const many = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, Array.from({ length: 5001 }, () => ({ temp: 1 })))
    expect(many.status).toBe(413)
  })
})
