// Two nodes whose PostgreSQL (metadata) and Redis (MQTT state, fan-out, rates) go away for a while,
// through loopback proxies the test cuts: what keeps working, what is refused and how, and that both
// come back by themselves.
import { Redis } from 'ioredis'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, sleep, startTestGateway, storedCount, type TestGateway, uniqueId, waitUntil } from '../helpers.js'
import { PG, type PgSchema, pgSchema } from '../support/postgres.js'
import { hostPort, TcpProxy } from '../support/tcp-proxy.js'

const REDIS = process.env.STREAMGATE_TEST_REDIS_URL_OUTAGE ?? 'redis://127.0.0.1:6379/11'

let schema: PgSchema
let a: TestGateway
let b: TestGateway
const pgProxy = new TcpProxy(hostPort(PG, 5432))
const redisProxy = new TcpProxy(hostPort(REDIS, 6379))
const clients: MqttClient[] = []

/** `url` with its host and port replaced by the proxy's. */
function through (url: string, proxy: TcpProxy): string {
  const u = new URL(url)
  u.hostname = '127.0.0.1'
  u.port = String(proxy.port)
  return u.toString()
}

beforeAll(async () => {
  const redis = new Redis(REDIS)
  await redis.flushdb()
  await redis.quit()
  schema = await pgSchema()
  await pgProxy.up()
  await redisProxy.up()
  const env = { STREAMGATE_METADATA_URL: through(schema.url, pgProxy), STREAMGATE_REDIS_URL: through(REDIS, redisProxy) }
  a = await startTestGateway({ ...env, STREAMGATE_NODE_ID: 'outage-a' })
  b = await startTestGateway({ ...env, STREAMGATE_NODE_ID: 'outage-b' })
})

afterAll(async () => {
  for (const c of clients) await c.endAsync(true).catch(() => undefined)
  await pgProxy.up().catch(() => undefined)
  await redisProxy.up().catch(() => undefined)
  await a?.stop()
  await b?.stop()
  await pgProxy.down()
  await redisProxy.down()
  await schema?.drop()
})

describe('a cluster\'s shared services going away', () => {
  it('keeps MQTT ingestion going without PostgreSQL, answers management changes 503, and catches up when it is back', async () => {
    const ds = uniqueId('pgout')
    await createDataset(a, ds, { fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(a, uniqueId('dev'))
    await setGrants(a, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])
    await waitUntil(() => b.sg.management.access.can(dev.id, 'publish', ds), 2000, 'node b to see the grant')
    const c = await connect(b.mqttUrl, dev.id, dev.key)
    clients.push(c)

    await pgProxy.down()
    for (let n = 0; n < 100; n++) await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n }), { qos: 1 })
    await waitUntil(async () => (await storedCount(b.sg, ds)) === 100, 10_000, '100 records stored while PostgreSQL is away')
    const refused = await api(a.httpUrl, ADMIN_KEY, 'POST', '/v1/principals', { id: uniqueId('p'), kind: 'device' })
    expect(refused.status).toBe(503)
    expect(refused.headers.get('content-type')).toMatch(/problem\+json/)
    expect(refused.headers.get('retry-after')).toBe('5')
    expect(refused.body.type).toMatch(/unavailable$/)

    await pgProxy.up()
    // Changes made now reach the other node once its notification connection is back.
    const later = uniqueId('dev')
    await waitUntil(async () => (await api(a.httpUrl, ADMIN_KEY, 'POST', '/v1/principals', { id: later, kind: 'device' })).status === 201, 10_000, 'management to work again')
    await waitUntil(() => b.sg.management.access.getPrincipal(later) !== undefined, 10_000, 'node b to learn of the new principal')
  })

  it('keeps acknowledging and storing without Redis, and delivers across nodes again when it is back', async () => {
    const ds = uniqueId('redisout')
    await createDataset(a, ds, { fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(a, uniqueId('dev'))
    const sub = await createPrincipalWithKey(a, uniqueId('sub'), 'service')
    await setGrants(a, ds, [{ principal: dev.id, actions: ['publish', 'query'] }, { principal: sub.id, actions: ['subscribe'] }])
    await waitUntil(() => b.sg.management.access.can(sub.id, 'subscribe', ds), 2000, 'node b to see the grants')
    const s = await connect(b.mqttUrl, sub.id, sub.key)
    clients.push(s)
    const seen = new Set<number>()
    s.on('message', (_t, p) => seen.add(JSON.parse(p.toString()).n as number))
    await s.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    const c = await connect(a.mqttUrl, dev.id, dev.key)
    clients.push(c)
    await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: 0 }), { qos: 1 })
    await waitUntil(() => seen.has(0), 5000, 'a delivery across nodes')

    await redisProxy.down()
    const t0 = Date.now()
    for (let n = 1; n <= 50; n++) await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n }), { qos: 1 })
    process.stdout.write(`  Redis away: 50 QoS 1 publishes acknowledged in ${Date.now() - t0} ms\n`)
    await waitUntil(async () => (await storedCount(a.sg, ds)) === 51, 10_000, '51 records stored while Redis is away')

    await redisProxy.up()
    await sleep(2000) // the nodes' Redis connections come back (ioredis retries)
    await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: 1000 }), { qos: 1 })
    await waitUntil(() => seen.has(1000), 15_000, 'deliveries across nodes again')
    const held = Array.from({ length: 50 }, (_, i) => i + 1).filter((n) => seen.has(n)).length
    process.stdout.write(`  of the 50 published while Redis was away, ${held} reached the subscriber on the other node afterwards\n`)
  })
})
