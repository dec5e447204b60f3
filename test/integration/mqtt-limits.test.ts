// Limits on MQTT: a publisher over its kind's rate is throttled, then disconnected; a principal
// connecting too fast and an address failing logins too often get CONNACK 3; every refusal is audited.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, closed, connect, connectRefused, createDataset, createPrincipalWithKey, setGrants, startTestGateway, type TestGateway, uniqueId } from '../helpers.js'

let gw: TestGateway
beforeAll(async () => {
  gw = await startTestGateway({ STREAMGATE_MQTT_PUBLISH_RATE_DEVICE: '200', STREAMGATE_MQTT_CONNECT_RATE_DEVICE: '3', STREAMGATE_AUTH_FAILURES_PER_MINUTE: '5' })
})
afterAll(async () => { await gw?.stop() })

describe('MQTT limits', () => {
  it('throttles a publisher over its rate, and disconnects it when it stays far over', async () => {
    const ds = uniqueId('rate')
    await createDataset(gw, ds, { fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const svc = await createPrincipalWithKey(gw, uniqueId('svc'), 'service')
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }, { principal: svc.id, actions: ['publish'], devices: ['+'] }])
    // 400 messages at 200/s: throttled to about 2 s, all acknowledged, the client stays connected.
    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    const t0 = Date.now()
    await Promise.all(Array.from({ length: 400 }, (_, i) => c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: i }), { qos: 1 })))
    const took = Date.now() - t0
    expect(took).toBeGreaterThan(800)
    expect(c.connected).toBe(true)
    expect(gw.sg.broker.stats.throttled).toBeGreaterThan(0)
    // A flood far over the rate (QoS 0, nothing waits for acknowledgements): disconnected.
    const gone = closed(c, 10_000)
    for (let i = 0; i < 3000 && c.connected; i++) c.publish(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: i }), { qos: 0 })
    await gone
    expect(gw.sg.broker.stats.rateLimitedDisconnects).toBeGreaterThan(0)
    // Services have no limit by default.
    const s = await connect(gw.mqttUrl, svc.id, svc.key)
    await Promise.all(Array.from({ length: 600 }, (_, i) => s.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: i }), { qos: 1 })))
    expect(s.connected).toBe(true)
    await s.endAsync()
    await c.endAsync(true)
  })

  it('refuses a principal connecting faster than its rate with CONNACK 3', async () => {
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const codes: number[] = []
    for (let i = 0; i < 6; i++) {
      try {
        const c = await connect(gw.mqttUrl, dev.id, dev.key)
        codes.push(0)
        await c.endAsync(true)
      } catch (err) {
        codes.push((err as { code?: number }).code ?? -1)
      }
    }
    expect(codes.slice(0, 3)).toEqual([0, 0, 0])
    expect(codes).toContain(3)
  })

  it('refuses an address after too many failed logins, even with good credentials, and audits it', async () => {
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    for (let i = 0; i < 5; i++) expect(await connectRefused(gw.mqttUrl, dev.id, 'sg_wrong')).toBe(4)
    expect(await connectRefused(gw.mqttUrl, dev.id, dev.key)).toBe(3)
    const denied = (await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/audit?action=mqtt.connect&limit=10')).body.entries as { outcome: string, detail: string, actor: string }[]
    expect(denied.length).toBeGreaterThanOrEqual(6)
    expect(denied[0]).toMatchObject({ outcome: 'denied', actor: dev.id })
    expect(denied[0]!.detail).toMatch(/too many failed logins/)
  })
})
