import { createRequire } from 'node:module'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, type TestGateway, uniqueId, waitUntil, storedCount } from '../helpers.js'

describe('data path: MQTT in, MQTT and MQTT-over-WebSocket out, stored once', () => {
  let gw: TestGateway
  const clients: MqttClient[] = []
  beforeAll(async () => { gw = await startTestGateway() })
  afterAll(async () => {
    for (const c of clients) await c.endAsync(true).catch(() => undefined)
    await gw.stop()
  })

  it('delivers 10,000 QoS 1 messages to an MQTT and a WebSocket subscriber and stores exactly 10,000 rows', async () => {
    const ds = uniqueId('weather')
    await createDataset(gw, ds)
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const sub = await createPrincipalWithKey(gw, uniqueId('sub'), 'service')
    await setGrants(gw, ds, [
      { principal: dev.id, actions: ['publish'] },
      { principal: sub.id, actions: ['subscribe', 'query'] }
    ])

    const tcpSub = await connect(gw.mqttUrl, sub.id, sub.key)
    const wsSub = await connect(gw.wsUrl, sub.id, sub.key)
    const pub = await connect(gw.mqttUrl, dev.id, dev.key)
    clients.push(tcpSub, wsSub, pub)
    const got = { tcp: new Set<number>(), ws: new Set<number>() }
    tcpSub.on('message', (_t, p) => { got.tcp.add(JSON.parse(p.toString()).count) })
    wsSub.on('message', (_t, p) => { got.ws.add(JSON.parse(p.toString()).count) })
    const granted = await Promise.all([tcpSub.subscribeAsync(`datasets/${ds}/#`, { qos: 1 }), wsSub.subscribeAsync(`datasets/${ds}/+`, { qos: 1 })])
    expect(granted.map((g) => g[0]?.qos)).toEqual([1, 1])

    const N = 10_000
    const topic = `datasets/${ds}/${dev.id}`
    for (let start = 0; start < N; start += 500) {
      const batch: Promise<unknown>[] = []
      for (let i = start; i < start + 500; i++) {
        batch.push(pub.publishAsync(topic, JSON.stringify({ ts: 1_700_000_000_000 + i, site: 's1', temp: 20 + (i % 10) / 10, hum: 40, count: i, ok: true }), { qos: 1 }))
      }
      await Promise.all(batch)
    }

    await waitUntil(() => got.tcp.size === N && got.ws.size === N, 30_000, 'both subscribers to receive every message')
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    const stats = await api(gw.httpUrl, sub.key, 'GET', `/v1/datasets/${ds}/stats`)
    expect(stats.status).toBe(200)
    expect(stats.body.stored).toBe(N)
    expect(await storedCount(gw.sg, ds)).toBe(N)
    expect(stats.body.lastRecordAt).toBe(new Date(1_700_000_000_000 + N - 1).toISOString().replace('Z', '000Z'))

    const recent = await api(gw.httpUrl, sub.key, 'GET', `/v1/datasets/${ds}/records?limit=3`)
    expect(recent.status).toBe(200)
    expect(recent.body.records.map((r: { count: number }) => r.count)).toEqual([N - 1, N - 2, N - 3])
    expect(recent.body.records[0]).toMatchObject({ device: dev.id, site: 's1', hum: 40, ok: true })

    const ranged = await api(gw.httpUrl, sub.key, 'GET', `/v1/datasets/${ds}/records?from=${1_700_000_000_000 + 100}&to=${1_700_000_000_000 + 110}&limit=100`)
    expect(ranged.body.records, JSON.stringify(ranged.body)).toHaveLength(10)
  })

  it('stores records without a timestamp at their arrival time, and batches as one message', async () => {
    const ds = uniqueId('batch')
    await createDataset(gw, ds)
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])
    const pub = await connect(gw.mqttUrl, dev.id, dev.key)
    clients.push(pub)
    const before = Date.now()
    const batch = Array.from({ length: 100 }, (_, i) => ({ temp: i, site: 'b' }))
    await pub.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify(batch), { qos: 1 })
    await pub.publishAsync(`datasets/${ds}/${dev.id}/extra/levels`, JSON.stringify({ temp: 1000, ts: '2024-05-01T12:00:00.123456Z' }), { qos: 1 })
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    expect(await storedCount(gw.sg, ds)).toBe(101)
    const r = await api(gw.httpUrl, dev.key, 'GET', `/v1/datasets/${ds}/records?limit=200`)
    const iso = r.body.records.find((x: { temp: number }) => x.temp === 1000)
    expect(iso.ts).toBe('2024-05-01T12:00:00.123456Z')
    const arrival = r.body.records.filter((x: { temp: number }) => x.temp < 1000)
    expect(arrival).toHaveLength(100)
    for (const x of arrival) expect(Date.parse(x.ts)).toBeGreaterThanOrEqual(before - 1)
  })

  it('acknowledges a resent message (same id: schema.messageId) without storing or delivering it again', async () => {
    const ds = uniqueId('mid')
    await createDataset(gw, ds, { messageId: 'n', fields: { n: 'long', v: 'double' } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const sub = await createPrincipalWithKey(gw, uniqueId('sub'), 'service')
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish', 'query'] }, { principal: sub.id, actions: ['subscribe'] }])
    const s = await connect(gw.mqttUrl, sub.id, sub.key)
    clients.push(s)
    const seen: number[] = []
    s.on('message', (_t, p) => seen.push(JSON.parse(p.toString()).n as number))
    await s.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    const before = gw.sg.pipeline.stats.duplicates
    for (const n of [1, 2]) {
      // sent twice on separate connections, as a device resends after reconnecting
      for (let copy = 0; copy < 2; copy++) {
        const c = await connect(gw.mqttUrl, dev.id, dev.key)
        await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n, v: copy }), { qos: 1 })
        await c.endAsync()
      }
    }
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    const rows = (await api(gw.httpUrl, dev.key, 'GET', `/v1/datasets/${ds}/records?limit=10`)).body.records as { n: number, v: number }[]
    expect(rows.map((r) => [r.n, r.v]).sort()).toEqual([[1, 0], [2, 0]]) // the first copy of each
    expect(gw.sg.pipeline.stats.duplicates - before).toBe(2)
    await waitUntil(() => seen.length >= 2, 5000, 'deliveries')
    expect(seen.sort()).toEqual([1, 2])
  })

  it('runs websocket-stream on ws 8 (CVE-2024-37890 is fixed there), not the ws 3 it pins', () => {
    const fromWsStream = createRequire(createRequire(import.meta.url).resolve('websocket-stream'))
    const version = (fromWsStream('ws/package.json') as { version: string }).version
    expect(Number(version.split('.')[0])).toBeGreaterThanOrEqual(8)
  })

  it('stores strings exactly: quotes, commas, newlines, unicode and the empty string (not null)', async () => {
    const ds = uniqueId('strings')
    await createDataset(gw, ds)
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])
    const notes = ['he said "hi", then\nleft', '', 'ünïcødé ☃ \u2028', '\\N', 'a,b', ' padded ']
    const r = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, notes.map((note, i) => ({ note, count: i, site: note })))
    expect(r.status).toBe(202)
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    const q = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/query`, { select: ['note', 'site', 'count'] })
    expect(q.body.rows.map((x: { note: string, site: string }) => [x.note, x.site])).toEqual(notes.map((n) => [n, n]))
  })

  it('answers the minimal API with problem+json and requires a key everywhere but /healthz', async () => {
    expect((await api(gw.httpUrl, null, 'GET', '/healthz')).status).toBe(200)
    for (const url of ['/v1/datasets', '/v1/status', '/v1/principals']) {
      const r = await api(gw.httpUrl, null, 'GET', url)
      expect(r.status).toBe(401)
      expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/)
      expect(r.body.type).toBe('https://streamgate.dev/problems/unauthenticated')
    }
    const bad = await api(gw.httpUrl, ADMIN_KEY, 'POST', '/v1/datasets', { id: 'Bad-Id', schema: { fields: { x: 'double' } } })
    expect(bad.status).toBe(400)
    expect(bad.body).toMatchObject({ type: 'https://streamgate.dev/problems/validation', field: 'id' })
    const dup = uniqueId('dup')
    await createDataset(gw, dup)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'POST', '/v1/datasets', { id: dup, schema: { fields: { x: 'double' } } })).status).toBe(409)
    const reserved = await api(gw.httpUrl, ADMIN_KEY, 'POST', '/v1/datasets', { id: uniqueId('r'), schema: { fields: { device: 'string' } } })
    expect(reserved.status).toBe(400)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'POST', '/v1/datasets', '{"id": ', { 'content-type': 'application/json' })).body.type).toBe('https://streamgate.dev/problems/bad-request')
    expect((await api(gw.httpUrl, ADMIN_KEY, 'POST', '/v1/datasets', 'id=x', { 'content-type': 'text/plain' })).status).toBe(415)
    for (const id of ['a+b', 'a#', 'a/b', 'a.b', '$sys', 'a\u0000b', '', 'x'.repeat(129)]) {
      const r = await api(gw.httpUrl, ADMIN_KEY, 'POST', '/v1/principals', { id, kind: 'device' })
      expect(r.status, id).toBe(400)
    }
    const list = await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/datasets')
    expect(list.body.datasets.map((d: { id: string }) => d.id)).toContain(dup)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${dup}`)).body.version).toBe(1)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'DELETE', `/v1/datasets/${dup}`)).status).toBe(204)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${dup}`)).status).toBe(404)
  })
})
