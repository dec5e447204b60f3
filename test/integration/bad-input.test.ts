import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  ADMIN_KEY, api, closed, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, type TestGateway,
  uniqueId, waitUntil, storedCount } from '../helpers.js'

describe('bad input over MQTT: refused with a counted reason, nothing accepted lost', () => {
  let gw: TestGateway
  const clients: MqttClient[] = []
  const track = (c: MqttClient): MqttClient => { clients.push(c); return c }
  beforeAll(async () => { gw = await startTestGateway({ STREAMGATE_MAX_PAYLOAD: '4096', STREAMGATE_MAX_TOPIC_LEVELS: '16' }) })
  afterAll(async () => {
    for (const c of clients) await c.endAsync(true).catch(() => undefined)
    await gw.stop()
  })

  it('drops bad payloads without disconnecting, counts each reason and keeps serving good traffic', async () => {
    const ds = uniqueId('bad')
    await createDataset(gw, ds, { timestamp: 'ts', tags: ['site'], fields: { temp: 'double', count: 'long', ok: 'boolean', note: 'string', level: { type: 'double', required: true } } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const good = await createPrincipalWithKey(gw, uniqueId('dev'))
    const sub = await createPrincipalWithKey(gw, uniqueId('sub'), 'service')
    await setGrants(gw, ds, [
      { principal: dev.id, actions: ['publish'] }, { principal: good.id, actions: ['publish'] }, { principal: sub.id, actions: ['subscribe'] }
    ])
    const s = track(await connect(gw.mqttUrl, sub.id, sub.key))
    const delivered: string[] = []
    s.on('message', (_t, p) => delivered.push(p.toString()))
    await s.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })

    const d = track(await connect(gw.mqttUrl, dev.id, dev.key))
    const g = track(await connect(gw.mqttUrl, good.id, good.key))
    const topic = `datasets/${ds}/${dev.id}`
    const bad: [string | Buffer, string][] = [
      ['{"level": 1, "temp": ', 'invalid_json'],
      ['{"level": 1, "temp": "warm"}', 'wrong_type'],
      ['{"level": 1, "count": 1.5}', 'wrong_type'],
      ['{"level": 1, "count": 9007199254740993}', 'out_of_range'],
      ['{"level": 1e999}', 'out_of_range'],
      ['{"level": 1, "colour": "red"}', 'unknown_field'],
      ['{"level": 1, "__proto__": {"admin": true}}', 'unknown_field'],
      ['{"temp": 1}', 'missing_field'],
      ['{"level": 1, "ts": "yesterday"}', 'bad_timestamp'],
      ['{"level": 1, "ts": -5}', 'bad_timestamp'],
      ['[]', 'empty_batch'],
      ['[{"level": 1}, 42]', 'not_an_object'],
      ['"just a string"', 'not_an_object'],
      ['{"level": 1, "site": 7}', 'wrong_type'],
      [Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), 'invalid_utf8'],
      [JSON.stringify({ level: 1, note: 'x'.repeat(5000) }), 'payload_too_large']
    ]
    for (const [payload, _reason] of bad) {
      await d.publishAsync(topic, payload, { qos: 1 }) // acknowledged (3.1.1 has no negative PUBACK), not delivered, not stored
      await g.publishAsync(`datasets/${ds}/${good.id}`, JSON.stringify({ level: 2, note: 'good' }), { qos: 1 })
    }
    expect(d.connected).toBe(true)
    await d.publishAsync(topic, JSON.stringify({ level: 3, note: 'after' }), { qos: 1 })

    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    expect(await storedCount(gw.sg, ds)).toBe(bad.length + 1)
    await waitUntil(() => delivered.length === bad.length + 1)
    expect(delivered.every((p) => p.includes('"level"'))).toBe(true)

    const expected: Record<string, number> = {}
    for (const [, reason] of bad) expected[reason] = (expected[reason] ?? 0) + 1
    const stats = await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/stats`)
    expect(stats.body.rejected).toEqual(expected)
    expect(stats.body.stored).toBe(bad.length + 1)

    const rejects = await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/rejects?limit=100`)
    expect(rejects.status).toBe(200)
    expect(rejects.body.rejects).toHaveLength(bad.length)
    const wrong = rejects.body.rejects.find((r: { detail: string }) => r.detail.includes('warm') || r.detail.startsWith('temp'))
    expect(wrong).toMatchObject({ reason: 'wrong_type', device: dev.id, principal: dev.id, topic, field: '/temp' })
    expect(rejects.body.rejects.find((r: { reason: string }) => r.reason === 'invalid_utf8').excerpt).toMatch(/^base64:/)
  })

  it('disconnects on protocol-level violations (wildcards in a publish topic, too many levels) and counts them', async () => {
    const ds = uniqueId('proto')
    await createDataset(gw, ds)
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
    const deep = `datasets/${ds}/${dev.id}/` + Array.from({ length: 97 }, (_, i) => `l${i}`).join('/')
    for (const topic of [`datasets/${ds}/${dev.id}/#`, `datasets/${ds}/+`, deep]) {
      const c = track(await connect(gw.mqttUrl, dev.id, dev.key))
      c.publish(topic, JSON.stringify({ temp: 1 }), { qos: 1 })
      await closed(c)
    }
    const status = await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/status')
    expect(status.body.rejected.wildcard_in_topic).toBeGreaterThanOrEqual(2)
    expect(status.body.rejected.topic_too_deep).toBeGreaterThanOrEqual(1)
    // the gateway still serves
    const c = track(await connect(gw.mqttUrl, dev.id, dev.key))
    await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ temp: 1 }), { qos: 1 })
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    expect(await storedCount(gw.sg, ds)).toBe(1)
  })

  it('refuses the connection when the journal quota is reached, without acknowledging', async () => {
    const small = await startTestGateway({ STREAMGATE_JOURNAL_MAX_BYTES: String(256 * 1024), STREAMGATE_JOURNAL_SEGMENT_BYTES: String(64 * 1024) })
    try {
      const ds = uniqueId('quota')
      await createDataset(small, ds)
      const dev = await createPrincipalWithKey(small, uniqueId('dev'))
      await setGrants(small, ds, [{ principal: dev.id, actions: ['publish'] }])
      // Stop the sink so nothing is freed: the quota is reached.
      await small.sg.consumers[0]!.pause()
      const c = await connect(small.mqttUrl, dev.id, dev.key)
      let acked = 0
      const payload = JSON.stringify({ note: 'x'.repeat(900) })
      const gone = closed(c, 10_000)
      for (let i = 0; i < 1000 && c.connected; i++) {
        await Promise.race([c.publishAsync(`datasets/${ds}/${dev.id}`, payload, { qos: 1 }).then(() => { acked++ }, () => undefined), gone])
      }
      expect(c.connected).toBe(false)
      expect(acked).toBeGreaterThan(100)
      expect(acked).toBeLessThan(300)
      const status = await api(small.httpUrl, ADMIN_KEY, 'GET', '/v1/status')
      expect(status.body.journal.refusedFull).toBeGreaterThanOrEqual(1)
      expect(status.body.journal.bytes).toBeLessThanOrEqual(256 * 1024)
      await c.endAsync(true)
    } finally {
      await small.stop(0) // its store is paused: nothing to wait for
    }
  })
})
