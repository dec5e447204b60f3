// Limits per principal counted across nodes (rate-limiter-flexible on the machine's Redis): API
// requests, MQTT connects and MQTT publishes of one principal spread over two nodes add up to one
// allowance, where each node counting alone would let twice as much through.
import { Redis } from 'ioredis'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { api, connect, createDataset, createPrincipalWithKey, setGrants, sleep, startTestGateway, type TestGateway, uniqueId, waitUntil } from '../helpers.js'
import { type PgSchema, pgSchema } from '../support/postgres.js'

const REDIS = process.env.STREAMGATE_TEST_REDIS_URL_LIMITS ?? 'redis://127.0.0.1:6379/9'
const env = (): Record<string, string> => ({
  STREAMGATE_REDIS_URL: REDIS,
  STREAMGATE_METADATA_URL: schema.url,
  STREAMGATE_API_RATE: '20',
  STREAMGATE_MQTT_CONNECT_RATE_DEVICE: '5',
  STREAMGATE_MQTT_PUBLISH_RATE_DEVICE: '100'
})

let schema: PgSchema
let a: TestGateway
let b: TestGateway
const clients: MqttClient[] = []

beforeAll(async () => {
  const redis = new Redis(REDIS)
  await redis.flushdb()
  await redis.quit()
  schema = await pgSchema()
  a = await startTestGateway(env())
  b = await startTestGateway(env())
})

afterAll(async () => {
  for (const c of clients) await c.endAsync(true).catch(() => undefined)
  await a?.stop()
  await b?.stop()
  await schema?.drop()
})

describe('limits across nodes', () => {
  it('counts one principal\'s API requests on both nodes against one rate', async () => {
    const svc = await createPrincipalWithKey(a, uniqueId('svc'), 'service')
    await waitUntil(() => b.sg.management.access.getPrincipal(svc.id) !== undefined, 1000, 'node b to know the principal')
    // The first request opens the one-second window; the next 99 follow within it, alternating nodes.
    const t0 = Date.now()
    const first = await api(a.httpUrl, svc.key, 'GET', '/v1/datasets')
    expect(first.status).toBe(200)
    const rest = await Promise.all(Array.from({ length: 99 }, (_, i) => api((i % 2 === 0 ? b : a).httpUrl, svc.key, 'GET', '/v1/datasets')))
    // One allowance of 20 per one-second window, whichever node answers; two nodes counting alone
    // would allow 40 per window. On a loaded machine the burst may reach into a second window.
    const windows = Math.ceil((Date.now() - t0) / 1000)
    const ok = 1 + rest.filter((r) => r.status === 200).length
    const limited = rest.filter((r) => r.status === 429)
    process.stdout.write(`  API: ${ok} of 100 requests over two nodes answered in ${windows} one-second window(s) (rate 20 a second per principal)\n`)
    if (windows === 1) expect(ok).toBe(20)
    else expect(ok).toBeLessThanOrEqual(20 * windows)
    expect(limited.length).toBe(100 - ok)
    expect(limited[0]!.headers.get('content-type')).toMatch(/problem\+json/)
  })

  it('counts one device\'s MQTT connects on both nodes against one rate', async () => {
    const dev = await createPrincipalWithKey(a, uniqueId('dev'))
    await waitUntil(() => b.sg.management.access.getPrincipal(dev.id) !== undefined, 1000, 'node b to know the device')
    let accepted = 0
    let refused = 0
    const t0 = Date.now()
    for (let i = 0; i < 12; i++) {
      const gw = i % 2 === 0 ? a : b
      try {
        const c = await connect(gw.mqttUrl, dev.id, dev.key)
        accepted++
        await c.endAsync(true)
      } catch {
        refused++
      }
    }
    process.stdout.write(`  MQTT connects: ${accepted} accepted, ${refused} refused with CONNACK 3 over two nodes in ${Date.now() - t0} ms (rate 5 a second)\n`)
    if (Date.now() - t0 < 900) expect(accepted).toBe(5)
    else expect(accepted).toBeLessThanOrEqual(10)
    expect(refused).toBeGreaterThan(0)
  })

  it('holds one device publishing through both nodes to its rate in total', async () => {
    const ds = uniqueId('rate')
    await createDataset(a, ds, { fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(a, uniqueId('dev'))
    await setGrants(a, ds, [{ principal: dev.id, actions: ['publish'] }])
    await waitUntil(() => b.sg.management.access.can(dev.id, 'publish', ds), 1000, 'node b to know the grant')
    await sleep(1100) // a fresh connect window
    const pubs = [await connect(a.mqttUrl, dev.id, dev.key), await connect(b.mqttUrl, dev.id, dev.key, { clientId: uniqueId('c2') })] as MqttClient[]
    clients.push(...pubs)
    let acked = 0
    const until = Date.now() + 3000
    await Promise.all(pubs.map(async (c: MqttClient) => {
      const inFlight = new Set<Promise<unknown>>()
      let n = 0
      while (Date.now() < until && c.connected) {
        const p = c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: n++ }), { qos: 1 }).then(() => { acked++ }, () => undefined).finally(() => inFlight.delete(p))
        inFlight.add(p)
        if (inFlight.size >= 10) await Promise.race(inFlight)
      }
      await Promise.all(inFlight)
    }))
    const rate = acked / 3
    process.stdout.write(`  MQTT publishes: ${acked} acknowledged in 3 s over two nodes, ${rate.toFixed(0)} a second (rate 100 a second; each node alone would allow 100)\n`)
    expect(rate).toBeGreaterThan(30) // leases are granted (a loaded machine publishes slower)
    expect(rate).toBeLessThan(150)
  })
})
