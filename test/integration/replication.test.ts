// The journal replicated to RabbitMQ streams (STREAMGATE_REPLICATION=rabbitmq-stream), on the
// machine's RabbitMQ: every acknowledged record is in the node's stream; while RabbitMQ cannot confirm,
// nothing is acknowledged (and nothing refused is stored); a node whose disk is lost for good is
// recovered through another node, every acknowledged record stored once.
import fs from 'node:fs'
import amqplib from 'amqplib'
import type { MqttClient } from 'mqtt'
import { afterAll, describe, expect, it } from 'vitest'
import { readReplica, streamName } from '../../bridges/index.js'
import { ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, storedCount, type TestGateway, tmpDataDir, uniqueId, waitUntil } from '../helpers.js'
import { killAll, startChild, stopChild } from '../support/child.js'
import { pgSchema } from '../support/postgres.js'
import { AMQP, bridgeEnv } from '../support/rabbit.js'
import { hostPort, TcpProxy } from '../support/tcp-proxy.js'

const gateways: TestGateway[] = []
const clients: MqttClient[] = []
const streams: string[] = []
const cleanups: (() => Promise<void>)[] = []

/** A node with replication, its own exchanges and ingest queue (other test files use RabbitMQ too). */
function replicated (nodeId: string, url = AMQP, extra: Record<string, string> = {}): Record<string, string> {
  streams.push(streamName(nodeId))
  return {
    ...bridgeEnv(uniqueId('sgrep'), url),
    STREAMGATE_REPLICATION: 'rabbitmq-stream',
    STREAMGATE_NODE_ID: nodeId,
    ...extra
  }
}

afterAll(async () => {
  for (const c of clients) await c.endAsync(true).catch(() => undefined)
  for (const g of gateways) await g.stop().catch(() => undefined)
  await killAll()
  for (const c of cleanups) await c().catch(() => undefined)
  const conn = await amqplib.connect(AMQP)
  const ch = await conn.createChannel()
  for (const s of streams) await ch.deleteQueue(s).catch(() => undefined)
  await conn.close()
})

/** A dataset of `n`s on `gw`, a device granted it, and the device connected. */
async function publisherOn (gw: TestGateway): Promise<{ ds: string, dev: { id: string, key: string }, c: MqttClient }> {
  const ds = uniqueId('rds')
  await createDataset(gw, ds, { fields: { n: 'long' } })
  const dev = await deviceOn(gw, ds)
  const c = await connect(gw.mqttUrl, dev.id, dev.key)
  clients.push(c)
  return { ds, dev, c }
}

async function deviceOn (gw: { httpUrl: string }, ds: string): Promise<{ id: string, key: string }> {
  const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
  await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])
  return dev
}

describe('the journal replicated to RabbitMQ streams', () => {
  it('puts every acknowledged record in the node\'s stream before its PUBACK', async () => {
    const node = uniqueId('rep')
    const gw = await startTestGateway(replicated(node))
    gateways.push(gw)
    const { ds, dev, c } = await publisherOn(gw)
    const t0 = performance.now()
    await Promise.all(Array.from({ length: 2000 }, (_, n) => c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n }), { qos: 1 })))
    process.stdout.write(`  2,000 QoS 1 publishes acknowledged with replication in ${(performance.now() - t0).toFixed(0)} ms\n`)
    const { entries } = await readReplica(AMQP, node, 0)
    const ns = new Set(entries.filter((e) => e.dataset === ds).flatMap((e) => [JSON.parse(e.payload.toString()).n as number]))
    expect(ns.size).toBe(2000)
    const st = await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/status')
    expect(st.body.replication).toMatchObject({ stream: streamName(node), connected: true, failures: 0 })
    expect(st.body.replication.replicated).toBeGreaterThanOrEqual(2000)
  })

  it('acknowledges nothing while RabbitMQ cannot confirm, stores nothing it refused, and goes on when it is back', async () => {
    const proxy = new TcpProxy(hostPort(AMQP, 5672))
    await proxy.up()
    cleanups.push(() => proxy.down())
    const url = new URL(AMQP)
    url.hostname = '127.0.0.1'
    url.port = String(proxy.port)
    const node = uniqueId('rep')
    const gw = await startTestGateway(replicated(node, url.toString(), { STREAMGATE_REPLICATION_TIMEOUT_MS: '1000' }))
    gateways.push(gw)
    const { ds, dev, c } = await publisherOn(gw)
    await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: 1 }), { qos: 1 })

    await proxy.down()
    // No PUBACK: the commit is refused and the publisher disconnected (it retries later).
    const closed = new Promise<string>((resolve) => c.once('close', () => resolve('closed')))
    const outcome = await Promise.race([c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: 2 }), { qos: 1 }).then(() => 'acknowledged', () => 'failed'), closed])
    expect(outcome).not.toBe('acknowledged')
    const http = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, [{ n: 3 }])
    expect(http.status).toBe(503)
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    expect(await storedCount(gw.sg, ds)).toBe(1)

    await proxy.up()
    await waitUntil(() => gw.sg.amqp!.connected, 20_000, 'RabbitMQ to be reachable again')
    const again = await connect(gw.mqttUrl, dev.id, dev.key)
    clients.push(again)
    await waitUntil(async () => await again.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: 4 }), { qos: 1 }).then(() => true, () => false), 20_000, 'a publish acknowledged again')
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    const stored = (await api(gw.httpUrl, dev.key, 'GET', `/v1/datasets/${ds}/records?limit=100`)).body.records.map((r: { n: number }) => r.n).sort()
    expect(stored).toEqual([1, 4])
    // and a recovery would find the same: the refused commits are not in the replica (or are undone there)
    const { entries } = await readReplica(AMQP, node, 0)
    expect(entries.filter((e) => e.dataset === ds).map((e) => JSON.parse(e.payload.toString()).n as number).sort()).toEqual([1, 4])
  })

  it('recovers a node lost with its disk through another node: every acknowledged record stored once', async () => {
    const schema = await pgSchema()
    cleanups.push(() => schema.drop())
    const lost = uniqueId('lost')
    const dir = tmpDataDir()
    const env = replicated(lost, AMQP, { STREAMGATE_METADATA_URL: schema.url })
    const n1 = await startChild(dir, env)
    const http1 = { httpUrl: `http://127.0.0.1:${n1.httpPort}` }
    const ds = uniqueId('rds')
    await createDataset(http1, ds, { fields: { n: 'long' } })
    const dev = await deviceOn(http1, ds)
    const c = await connect(`mqtt://127.0.0.1:${n1.mqttPort}`, dev.id, dev.key)
    c.on('error', () => undefined)
    const acked = new Set<number>()
    let sent = 0
    let alive = true
    const gone = new Promise<void>((resolve) => c.once('close', () => { alive = false; resolve() }))
    const publisher = (async () => {
      const inFlight = new Set<Promise<void>>()
      while (alive && sent < 100_000) {
        const n = sent++
        const p = c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n }), { qos: 1 }).then(() => { acked.add(n) }, () => undefined).finally(() => inFlight.delete(p))
        inFlight.add(p)
        if (inFlight.size >= 50) await Promise.race([...inFlight, gone])
      }
    })()
    await waitUntil(() => acked.size >= 3000, 30_000, '3,000 acknowledged')
    n1.proc.kill('SIGKILL')
    await stopChild(n1.proc, 'SIGKILL')
    await publisher
    c.end(true)
    // The disk is gone for good: journal, embedded store and all.
    fs.rmSync(dir, { recursive: true, force: true })

    const rescuer = uniqueId('rescuer')
    const n2 = await startTestGateway(replicated(rescuer, AMQP, { STREAMGATE_METADATA_URL: schema.url, STREAMGATE_QUERY_MAX_ROWS: '200000' }))
    gateways.push(n2)
    const r = await api(n2.httpUrl, ADMIN_KEY, 'POST', `/v1/cluster/nodes/${lost}/recover`)
    expect(r.status).toBe(200)
    expect(r.body).toMatchObject({ node: lost, skipped: 0, duplicates: 0 })
    await n2.sg.consumers[0]!.waitFor(n2.sg.journal.committedSeq, 30_000)
    const got = await api(n2.httpUrl, dev.key, 'GET', `/v1/datasets/${ds}/records?limit=200000`)
    expect(got.status, JSON.stringify(got.body)).toBe(200)
    const stored = got.body.records.map((x: { n: number }) => x.n) as number[]
    const unique = new Set(stored)
    const missing = [...acked].filter((n) => !unique.has(n))
    process.stdout.write(`  node lost after ${acked.size} acknowledged (${sent} sent): ${r.body.messages} commits, ${r.body.entries} entries recovered through another node; ${stored.length} stored, ${missing.length} acknowledged but missing, ${stored.length - unique.size} twice\n`)
    expect(missing).toEqual([])
    expect(stored.length - unique.size).toBe(0)
    // A second recovery stores nothing again.
    const again = await api(n2.httpUrl, ADMIN_KEY, 'POST', `/v1/cluster/nodes/${lost}/recover`)
    expect(again.body).toMatchObject({ recovered: 0, duplicates: r.body.recovered })
    // Recovery is refused for this node itself, and where there is no such stream.
    expect((await api(n2.httpUrl, ADMIN_KEY, 'POST', `/v1/cluster/nodes/${rescuer}/recover`)).status).toBe(409)
    expect((await api(n2.httpUrl, ADMIN_KEY, 'POST', `/v1/cluster/nodes/${uniqueId('nobody')}/recover`)).status).toBe(404)
  })
})
