// RabbitMQ slow, then flapping, between the gateway and the machine's RabbitMQ (a loopback proxy that
// first holds every byte for longer than the heartbeat and the publish timeout, then cuts every
// connection again and again), while devices publish over MQTT and a producer publishes over AMQP
// (straight to RabbitMQ, with message ids). The bridge notices, the outbound breaker opens, the journal
// holds; afterwards every acknowledged record is stored once and is on the records exchange.
// STREAMGATE_FAULT_RABBIT_FLAPS sets the number of cuts (6 here, 30 in npm run test:soak).
import amqplib from 'amqplib'
import { afterAll, describe, expect, it } from 'vitest'
import {
  ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, sleep, startTestGateway, uniqueId, waitUntil } from '../helpers.js'
import { AMQP, amqpUrlAs, deleteRabbitUsers, rabbitUser } from '../support/rabbit.js'
import { hostPort, TcpProxy } from '../support/tcp-proxy.js'

const FLAPS = Number(process.env.STREAMGATE_FAULT_RABBIT_FLAPS ?? 6)
const HEARTBEAT_S = 1
const STALL_MS = 6000

afterAll(() => deleteRabbitUsers())

describe('RabbitMQ slow and flapping', () => {
  it(`holds a ${STALL_MS / 1000} s stall and ${FLAPS} cuts: every acknowledged record stored once and published`, async () => {
    const run = uniqueId('sgflap')
    const ex = { ingest: `${run}.ingest`, records: `${run}.records` }
    const proxy = new TcpProxy(hostPort(AMQP, 5672))
    await proxy.up()
    const url = new URL(AMQP)
    url.hostname = '127.0.0.1'
    url.port = String(proxy.port)
    const gw = await startTestGateway({
      STREAMGATE_AMQP_URL: url.toString(),
      STREAMGATE_AMQP_INGEST_EXCHANGE: ex.ingest,
      STREAMGATE_AMQP_RECORDS_EXCHANGE: ex.records,
      STREAMGATE_AMQP_INGEST_QUEUE: `${run}.ingest`,
      STREAMGATE_AMQP_HEARTBEAT_S: String(HEARTBEAT_S),
      STREAMGATE_AMQP_PUBLISH_TIMEOUT_MS: '1000',
      STREAMGATE_RABBITMQ_AUTH_PORT: '0',
      STREAMGATE_QUERY_MAX_ROWS: '1000000'
    })
    const direct = await amqplib.connect(AMQP)
    let stop = false
    try {
      const ds = uniqueId('flap')
      await createDataset(gw, ds, { fields: { count: 'long' } })
      const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
      await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])
      rabbitUser(dev.id, 'pw-' + dev.id)
      const status = async (): Promise<any> => (await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/status')).body
      const amqpConsumer = (s: any): any => s.consumers.find((c: any) => c.name === 'amqp')
      await waitUntil(async () => (await status()).amqp.consuming === true, 20_000, 'the bridge to consume')

      // A consumer of the records exchange, straight on RabbitMQ.
      const out = await direct.createChannel()
      const { queue } = await out.assertQueue(`${run}.out`, { durable: true })
      await out.bindQueue(queue, ex.records, `${ds}.#`)
      const published = new Map<number, string>()
      const wrong: string[] = []
      await out.consume(queue, (msg) => {
        if (msg === null) return
        const count = JSON.parse(msg.content.toString()).count as number
        const prior = published.get(count)
        if (prior !== undefined && prior !== msg.properties.messageId) wrong.push(`record ${count}: message_id ${String(msg.properties.messageId)} after ${prior}`)
        published.set(count, msg.properties.messageId as string)
        out.ack(msg)
      })

      // Devices over MQTT: what got a PUBACK.
      const mqttAcked: number[] = []
      const m = await connect(gw.mqttUrl, dev.id, dev.key)
      const mqttLoop = (async () => {
        for (let i = 0; !stop; i++) {
          await m.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ count: i }), { qos: 1 })
          mqttAcked.push(i)
          if (i % 100 === 99) await sleep(30)
        }
      })()
      // A producer over AMQP, straight to RabbitMQ: what RabbitMQ confirmed.
      const amqpConfirmed: number[] = []
      const producer = await amqplib.connect(amqpUrlAs(dev.id, 'pw-' + dev.id))
      const pch = await producer.createConfirmChannel()
      const amqpLoop = (async () => {
        for (let i = 1_000_000; !stop; i += 100) {
          const batch: number[] = []
          for (let j = i; j < i + 100; j++) {
            pch.publish(ex.ingest, `${ds}.${dev.id}`, Buffer.from(JSON.stringify({ count: j })), { userId: dev.id, messageId: `m-${j}`, persistent: true })
            batch.push(j)
          }
          await pch.waitForConfirms()
          amqpConfirmed.push(...batch)
          await sleep(30)
        }
      })()

      // What the gateway reports while RabbitMQ misbehaves.
      const seen = { stall: new Set<string>(), states: new Set<string>(), breaker: new Set<string>() }
      const phase = { now: 'other' as 'stall' | 'other' }
      let watching = true
      const watch = (async () => {
        while (watching) {
          const s = await status()
          seen.states.add(s.amqp.state as string)
          if (phase.now === 'stall') seen.stall.add(`${s.amqp.state as string}/${amqpConsumer(s).breaker.state as string}`)
          seen.breaker.add(amqpConsumer(s).breaker.state as string)
          await sleep(100)
        }
      })()

      await sleep(2000)
      // Slow: connections stay open, nothing moves, for longer than two heartbeats and the publish timeout.
      proxy.stall()
      phase.now = 'stall'
      await sleep(STALL_MS)
      phase.now = 'other'
      proxy.resume()
      await sleep(3000)
      // Flapping: cut, and back a moment later, again and again.
      for (let k = 0; k < FLAPS; k++) {
        await proxy.down()
        await sleep(1000)
        await proxy.up()
        await sleep(2000)
      }
      stop = true
      await Promise.all([mqttLoop, amqpLoop])
      await m.endAsync()
      await producer.close()

      const acked = [...mqttAcked, ...amqpConfirmed]
      await waitUntil(async () => amqpConsumer(await status()).lag === 0 && (await status()).consumers.every((c: any) => c.lag === 0), 60_000, 'every consumer to catch up')
      await waitUntil(() => published.size >= acked.length, 60_000, `${acked.length} records on the records exchange`)
      watching = false
      await watch
      const end = await status()
      const ingestQueue = await out.checkQueue(`${run}.ingest`)
      const records = (await api(gw.httpUrl, dev.key, 'GET', `/v1/datasets/${ds}/records?limit=1000000`)).body.records as { count: number }[]
      const stored = records.map((r) => r.count)
      const unique = new Set(stored)
      const missing = acked.filter((n) => !unique.has(n)).length
      const notPublished = acked.filter((n) => !published.has(n)).length
      process.stdout.write(`  RabbitMQ slow ${STALL_MS / 1000} s and ${FLAPS} cuts: ${mqttAcked.length} MQTT acked, ${amqpConfirmed.length} AMQP confirmed, ` +
        `${stored.length} stored, ${stored.length - unique.size} duplicates stored, ${missing} missing, ${published.size} on the records exchange (${notPublished} missing), ` +
        `${end.amqp.duplicates as number} redeliveries recognised; states seen ${[...seen.states].join('/')}, breaker ${[...seen.breaker].join('/')}, during the stall ${[...seen.stall].join(' ')}\n`)

      expect([...seen.stall].some((s) => s.startsWith('disconnected/')), 'a stalled connection is dropped (heartbeat)').toBe(true)
      expect([...seen.stall].some((s) => s.endsWith('/open')), 'the outbound breaker opened during the stall').toBe(true)
      expect(seen.states.has('disconnected'), 'the bridge noticed RabbitMQ was gone').toBe(true)
      expect(seen.breaker.has('open'), 'the outbound breaker opened').toBe(true)
      expect(end.amqp.state).toBe('connected')
      expect(amqpConsumer(end).breaker.state).toBe('closed')
      expect(ingestQueue.messageCount, 'messages left in the ingest queue').toBe(0)
      expect(stored.length - unique.size, 'duplicates stored').toBe(0)
      expect(missing, 'acknowledged records not stored').toBe(0)
      expect(unique.size, 'records stored that nobody acknowledged').toBe(acked.length)
      expect(notPublished, 'acknowledged records not on the records exchange').toBe(0)
      expect(wrong).toEqual([])
      await out.deleteQueue(queue)
      await out.deleteQueue(`${run}.ingest`)
      await out.deleteExchange(ex.records)
      await out.deleteExchange(ex.ingest)
    } finally {
      stop = true
      await direct.close().catch(() => undefined)
      await gw.stop()
      await proxy.down()
    }
  }, 180_000)
})
