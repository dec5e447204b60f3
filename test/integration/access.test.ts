import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  ADMIN_KEY, api, closed, connect, connectRefused, createDataset, createPrincipalWithKey, setGrants, sleep,
  startTestGateway, subackCodes, type TestGateway, uniqueId, waitUntil, storedCount } from '../helpers.js'

describe('authentication and per-dataset ACL over MQTT', () => {
  let gw: TestGateway
  const clients: MqttClient[] = []
  const track = (c: MqttClient): MqttClient => { clients.push(c); return c }
  beforeAll(async () => { gw = await startTestGateway() })
  afterAll(async () => {
    for (const c of clients) await c.endAsync(true).catch(() => undefined)
    await gw.stop()
  })

  it('refuses a wrong password, an unknown user, a missing password and a revoked key with CONNACK 4 or 5', async () => {
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    expect(await connectRefused(gw.mqttUrl, dev.id, 'sg_wrong')).toBe(4)
    expect(await connectRefused(gw.mqttUrl, uniqueId('nobody'), dev.key)).toBe(4)
    expect(await connectRefused(gw.mqttUrl, dev.id, '')).toBe(4)
    // another principal's key under this username
    const other = await createPrincipalWithKey(gw, uniqueId('dev'))
    expect(await connectRefused(gw.mqttUrl, dev.id, other.key)).toBe(4)
    const live = track(await connect(gw.mqttUrl, dev.id, dev.key))
    const revoked = await api(gw.httpUrl, ADMIN_KEY, 'DELETE', `/v1/principals/${dev.id}/keys/${dev.keyId}`)
    expect(revoked.status).toBe(204)
    await closed(live, 1000) // the live session goes within a second
    expect([4, 5]).toContain(await connectRefused(gw.mqttUrl, dev.id, dev.key))
    const keys = await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/principals/${dev.id}/keys`)
    expect(keys.body.keys[0].revokedAt).not.toBeNull()
    expect(JSON.stringify(keys.body)).not.toContain(dev.key)
    expect(keys.body.keys[0].hash).toBeUndefined()
  })

  it('refuses an expired key', async () => {
    const id = uniqueId('dev')
    await api(gw.httpUrl, ADMIN_KEY, 'POST', '/v1/principals', { id, kind: 'device' })
    const k = await api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/principals/${id}/keys`, { expiresAt: new Date(Date.now() + 300).toISOString() })
    expect(k.status).toBe(201)
    track(await connect(gw.mqttUrl, id, k.body.key))
    await sleep(400)
    expect(await connectRefused(gw.mqttUrl, id, k.body.key)).toBe(4)
  })

  it('disconnects a device publishing to another dataset or as another device, and stores nothing', async () => {
    const mine = uniqueId('mine')
    const theirs = uniqueId('theirs')
    await createDataset(gw, mine)
    await createDataset(gw, theirs)
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const victim = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, mine, [{ principal: dev.id, actions: ['publish'] }, { principal: victim.id, actions: ['publish'] }])
    const record = JSON.stringify({ temp: 1 })

    for (const topic of [`datasets/${theirs}/${dev.id}`, `datasets/${mine}/${victim.id}`, `datasets/nonexistent/${dev.id}`, 'elsewhere/x', '$SYS/x']) {
      const c = track(await connect(gw.mqttUrl, dev.id, dev.key))
      const acked = c.publishAsync(topic, record, { qos: 1 }).then(() => 'acked', () => 'failed')
      await closed(c)
      expect(await Promise.race([acked, sleep(200).then(() => 'no ack')]), topic).not.toBe('acked')
    }
    // the device may still publish where it is allowed
    const ok = track(await connect(gw.mqttUrl, dev.id, dev.key))
    await ok.publishAsync(`datasets/${mine}/${dev.id}`, record, { qos: 1 })
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    expect(await storedCount(gw.sg, theirs)).toBe(0)
    expect(await storedCount(gw.sg, mine)).toBe(1)
    const stats = await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${mine}/stats`)
    expect(stats.body.rejected.not_authorized).toBe(1)
  })

  it('lets a grant name the devices a gateway may publish for', async () => {
    const ds = uniqueId('fleet')
    await createDataset(gw, ds)
    const gateway = await createPrincipalWithKey(gw, uniqueId('gw'), 'service')
    const limited = await createPrincipalWithKey(gw, uniqueId('gw'), 'service')
    await setGrants(gw, ds, [{ principal: gateway.id, actions: ['publish'], devices: ['+'] }, { principal: limited.id, actions: ['publish'], devices: ['d1', 'd2'] }])
    const g = track(await connect(gw.mqttUrl, gateway.id, gateway.key))
    for (const d of ['d1', 'd2', 'sensor-77']) await g.publishAsync(`datasets/${ds}/${d}`, JSON.stringify({ temp: 1 }), { qos: 1 })
    const l = track(await connect(gw.mqttUrl, limited.id, limited.key))
    await l.publishAsync(`datasets/${ds}/d2`, JSON.stringify({ temp: 2 }), { qos: 1 })
    l.publish(`datasets/${ds}/d3`, JSON.stringify({ temp: 3 }), { qos: 1 })
    await closed(l)
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    expect(await storedCount(gw.sg, ds)).toBe(4)
  })

  it('gives SUBACK 0x80 to filters outside the grants and delivers nothing from them', async () => {
    const granted = uniqueId('granted')
    const secret = uniqueId('secret')
    await createDataset(gw, granted)
    await createDataset(gw, secret)
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const sub = await createPrincipalWithKey(gw, uniqueId('sub'), 'service')
    await setGrants(gw, granted, [{ principal: dev.id, actions: ['publish'] }, { principal: sub.id, actions: ['subscribe'] }])
    await setGrants(gw, secret, [{ principal: dev.id, actions: ['publish'] }])

    const s = track(await connect(gw.mqttUrl, sub.id, sub.key))
    const received: string[] = []
    s.on('message', (topic) => received.push(topic))
    const filters = [`datasets/${secret}/#`, '#', 'datasets/+/#', '+/+/#', '$SYS/#', `$share/g/datasets/${secret}/#`, 'datasets/#', `datasets/${granted}/#`]
    const codes = await subackCodes(s, filters)
    for (const f of filters.slice(0, -1)) expect(codes[f], f).toBe(128)
    expect(codes[`datasets/${granted}/#`]).toBe(1)

    const p = track(await connect(gw.mqttUrl, dev.id, dev.key))
    await p.publishAsync(`datasets/${secret}/${dev.id}`, JSON.stringify({ temp: 1 }), { qos: 1 })
    await p.publishAsync(`datasets/${granted}/${dev.id}`, JSON.stringify({ temp: 2 }), { qos: 1 })
    await waitUntil(() => received.length >= 1)
    await sleep(100)
    expect(received).toEqual([`datasets/${granted}/${dev.id}`])
  })

  it('stops deliveries within a second when a subscribe grant is revoked', async () => {
    const ds = uniqueId('revoke')
    await createDataset(gw, ds)
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const sub = await createPrincipalWithKey(gw, uniqueId('sub'), 'service')
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }, { principal: sub.id, actions: ['subscribe'] }])
    const s = track(await connect(gw.mqttUrl, sub.id, sub.key))
    let count = 0
    s.on('message', () => { count++ })
    await s.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    const p = track(await connect(gw.mqttUrl, dev.id, dev.key))
    await p.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ temp: 1 }), { qos: 1 })
    await waitUntil(() => count === 1)
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
    for (let i = 0; i < 5; i++) await p.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ temp: i }), { qos: 1 })
    await sleep(300)
    expect(count).toBe(1)
    // and the revoked publisher is refused on its next publish
    await setGrants(gw, ds, [])
    p.publish(`datasets/${ds}/${dev.id}`, JSON.stringify({ temp: 9 }), { qos: 1 })
    await closed(p, 1000)
  })

  it('lets admins subscribe to $SYS and anything else', async () => {
    const a = track(await connect(gw.mqttUrl, 'admin', ADMIN_KEY))
    const g = await a.subscribeAsync({ '$SYS/#': { qos: 0 }, '#': { qos: 0 } })
    expect(g.map((x) => x.qos)).toEqual([0, 0])
  })
})
