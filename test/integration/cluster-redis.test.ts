// Several nodes sharing MQTT state through the machine's Redis (STREAMGATE_REDIS_URL): fan-out across
// nodes (each message once), large messages, persistent sessions that move to another node, and
// subscriptions that survive a node's restart (the known Aedes-on-Redis trouble spots). The nodes share
// the admin key; datasets are created on each (shared metadata is another step).
import { Redis } from 'ioredis'
import mqtt, { type MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, connect, createDataset, sleep, startTestGateway, type TestGateway, uniqueId, waitUntil } from '../helpers.js'
import { hostPort, TcpProxy } from '../support/tcp-proxy.js'

// A database of its own (pub/sub channels are server-wide: topics are unique per run).
const REDIS = process.env.STREAMGATE_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379/7'
const env = { STREAMGATE_REDIS_URL: REDIS, STREAMGATE_MAX_STRING: '300000' }
const SCHEMA = { fields: { n: 'long', note: 'string' } }

let a: TestGateway
let b: TestGateway
const clients: MqttClient[] = []

async function datasetOn (gws: TestGateway[], id: string): Promise<void> {
  for (const gw of gws) await createDataset(gw, id, SCHEMA)
}

async function client (gw: TestGateway, opts: Parameters<typeof connect>[3] = {}): Promise<MqttClient> {
  const c = await connect(gw.mqttUrl, 'admin', ADMIN_KEY, { reconnectPeriod: 0, ...opts })
  clients.push(c)
  return c
}

beforeAll(async () => {
  const redis = new Redis(REDIS)
  await redis.flushdb()
  await redis.quit()
  a = await startTestGateway(env)
  b = await startTestGateway(env)
})

afterAll(async () => {
  for (const c of clients) await c.endAsync(true).catch(() => undefined)
  await a?.stop()
  await b?.stop()
})

describe('nodes sharing Redis', () => {
  it('delivers 1,000 QoS 1 messages published on one node to subscribers on both, each exactly once', async () => {
    const ds = uniqueId('fan')
    await datasetOn([a, b], ds)
    const onA = new Map<number, number>()
    const onB = new Map<number, number>()
    const subA = await client(a)
    const subB = await client(b)
    subA.on('message', (_t, p) => { const n = JSON.parse(p.toString()).n as number; onA.set(n, (onA.get(n) ?? 0) + 1) })
    subB.on('message', (_t, p) => { const n = JSON.parse(p.toString()).n as number; onB.set(n, (onB.get(n) ?? 0) + 1) })
    await subA.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    await subB.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    const pub = await client(a)
    for (let i = 0; i < 1000; i++) await pub.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: i }), { qos: 1 })
    await waitUntil(() => onA.size === 1000 && onB.size === 1000, 15_000, 'both subscribers to receive all 1,000')
    await sleep(300) // a late duplicate would show now
    expect([...onA.values()].every((k) => k === 1)).toBe(true)
    expect([...onB.values()].every((k) => k === 1)).toBe(true)
  })

  it('carries a 200 KiB message across nodes intact', async () => {
    const ds = uniqueId('big')
    await datasetOn([a, b], ds)
    const note = 'x'.repeat(200 * 1024)
    const sub = await client(b)
    let got: string | null = null
    sub.on('message', (_t, p) => { got = p.toString() })
    await sub.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    const pub = await client(a)
    const payload = JSON.stringify({ n: 1, note })
    await pub.publishAsync(`datasets/${ds}/d1`, payload, { qos: 1 })
    await waitUntil(() => got !== null, 10_000, 'the large message')
    expect(got).toBe(payload)
  })

  it('keeps a persistent session across nodes: messages queued while offline arrive on the other node, without subscribing again', async () => {
    const ds = uniqueId('sess')
    await datasetOn([a, b], ds)
    const clientId = uniqueId('persistent')
    const first = await connect(a.mqttUrl, 'admin', ADMIN_KEY, { clientId, clean: false, reconnectPeriod: 0 })
    await first.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    await first.endAsync()
    const pub = await client(b)
    for (let i = 0; i < 10; i++) await pub.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: i }), { qos: 1 })
    const got: number[] = []
    // Listening before CONNACK: the queued messages may come in the same read as the CONNACK, and
    // mqtt.js emits them before a connectAsync() continuation could attach a handler.
    const second = mqtt.connect(b.mqttUrl, { username: 'admin', password: ADMIN_KEY, clientId, clean: false, reconnectPeriod: 0, protocolVersion: 4 })
    clients.push(second)
    second.on('message', (_t, p) => { got.push(JSON.parse(p.toString()).n as number) })
    await new Promise((resolve, reject) => { second.once('connect', resolve); second.once('error', reject) })
    await waitUntil(() => got.length >= 10, 10_000, 'the 10 queued messages')
    // live messages from the other node too
    await (await client(a)).publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: 10 }), { qos: 1 })
    await waitUntil(() => got.length >= 11, 10_000, 'a live message')
    await sleep(300)
    expect(got.sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
  })

  it('lists the nodes in GET /v1/cluster, with their sessions, until one leaves', async () => {
    const c = await client(b)
    const list = async (gw: TestGateway): Promise<{ id: string, sessions: number, addresses: Record<string, number | null> }[]> =>
      (await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/cluster')).body.nodes
    const fromA = await list(a)
    expect(fromA).toHaveLength(2)
    expect(fromA[0]!.addresses.http).toBe(a.sg.addresses.http.port) // this node first
    const nodeB = fromA.find((n) => n.addresses.http === b.sg.addresses.http.port)!
    await waitUntil(async () => ((await list(a)).find((n) => n.id === nodeB.id)?.sessions ?? 0) >= 1, 5000, 'node B\'s session count to reach node A')
    expect((await list(b))[0]!.id).toBe(nodeB.id)
    await c.endAsync()
  })

  it('keeps subscriptions of persistent sessions when a node restarts', async () => {
    const ds = uniqueId('restart')
    await datasetOn([a, b], ds)
    const clientId = uniqueId('survivor')
    const first = await connect(a.mqttUrl, 'admin', ADMIN_KEY, { clientId, clean: false, reconnectPeriod: 0 })
    await first.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    await first.endAsync()
    // Node A goes away for good (it leaves the cluster list); a new node takes its place on the same Redis.
    const oldA = (await api(a.httpUrl, ADMIN_KEY, 'GET', '/v1/cluster')).body.nodes[0].id as string
    await a.stop()
    expect((await api(b.httpUrl, ADMIN_KEY, 'GET', '/v1/cluster')).body.nodes.map((n: { id: string }) => n.id)).not.toContain(oldA)
    a = await startTestGateway(env)
    await datasetOn([a], ds)
    const got: number[] = []
    const back = await client(a, { clientId, clean: false })
    back.on('message', (_t, p) => { got.push(JSON.parse(p.toString()).n as number) })
    await (await client(b)).publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: 42 }), { qos: 1 })
    await waitUntil(() => got.length >= 1, 10_000, 'a message through the restored subscription')
    expect(got).toEqual([42])
  })

  it('stops within seconds when Redis stops answering', async () => {
    const proxy = new TcpProxy(hostPort(REDIS, 6379))
    await proxy.up()
    const url = new URL(REDIS)
    url.hostname = '127.0.0.1'
    url.port = String(proxy.port)
    const g = await startTestGateway({ ...env, STREAMGATE_REDIS_URL: url.toString() })
    try {
      const ds = uniqueId('hang')
      await datasetOn([g], ds)
      const c = await client(g)
      await c.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: 1 }), { qos: 1 })
      proxy.stall() // connections stay open, nothing comes back
      const started = performance.now()
      await g.stop()
      const ms = performance.now() - started
      expect(ms).toBeLessThan(10_000)
    } finally {
      await proxy.down()
    }
  }, 30_000)
})
