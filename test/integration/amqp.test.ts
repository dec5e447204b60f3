// The RabbitMQ bridge against the machine's RabbitMQ (127.0.0.1:5672). Exchange and queue names are
// unique per run; RabbitMQ users made for producers (so RabbitMQ itself vouches for `user_id`) are
// deleted afterwards.
import fs from 'node:fs'
import path from 'node:path'
import amqplib from 'amqplib'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { rabbitAvailable, type RabbitNode, startRabbitNode } from '../support/rabbit-node.js'
import { AMQP, amqpUrlAs, closeRabbitConnections, deleteRabbitUsers, rabbitUser } from '../support/rabbit.js'
import { hostPort, TcpProxy } from '../support/tcp-proxy.js'
import {
  ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, sleep, startTestGateway, type TestGateway, uniqueId, waitUntil, storedCount } from '../helpers.js'


describe('RabbitMQ bridge', () => {
  const run = uniqueId('sgtest')
  const ex = { ingest: `${run}.ingest`, records: `${run}.records` }
  let gw: TestGateway
  let ds: string
  const clients: MqttClient[] = []
  const conns: amqplib.ChannelModel[] = []

  beforeAll(async () => {
    gw = await startTestGateway({
      STREAMGATE_AMQP_URL: AMQP,
      STREAMGATE_AMQP_INGEST_EXCHANGE: ex.ingest,
      STREAMGATE_AMQP_RECORDS_EXCHANGE: ex.records,
      STREAMGATE_AMQP_INGEST_QUEUE: `${run}.ingest`,
      STREAMGATE_AMQP_CONNECTION_NAME: run,
      STREAMGATE_RABBITMQ_AUTH_PORT: '0'
    })
    ds = uniqueId('amqp')
    await createDataset(gw, ds, { fields: { count: 'long', temp: 'double' } })
    await waitUntil(() => gw.sg.amqp!.status().consuming, 20_000, 'the bridge to consume')
  })

  afterAll(async () => {
    for (const c of clients) await c.endAsync(true).catch(() => undefined)
    for (const c of conns) await c.close().catch(() => undefined)
    // The gateway first: a running bridge declares its queue again when it is deleted.
    await gw.stop()
    const conn = await amqplib.connect(AMQP)
    const ch = await conn.createChannel()
    await ch.deleteQueue(`${run}.ingest`).catch(() => undefined)
    await ch.deleteQueue(`${run}.out`).catch(() => undefined)
    await ch.deleteExchange(ex.ingest).catch(() => undefined)
    await ch.deleteExchange(ex.records).catch(() => undefined)
    await conn.close()
    deleteRabbitUsers()
  })

  async function producer (user: string, password: string): Promise<amqplib.ConfirmChannel> {
    const conn = await amqplib.connect(amqpUrlAs(user, password))
    conns.push(conn)
    return conn.createConfirmChannel()
  }

  it('ingests 10,000 records from a granted AMQP producer: stored and delivered to MQTT, each exactly once', async () => {
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const sub = await createPrincipalWithKey(gw, uniqueId('sub'), 'service')
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }, { principal: sub.id, actions: ['subscribe', 'query'] }])
    rabbitUser(dev.id, 'pw-' + dev.id)
    const s = await connect(gw.mqttUrl, sub.id, sub.key)
    clients.push(s)
    const seen = new Map<number, number>()
    s.on('message', (_t, p) => { const c = JSON.parse(p.toString()).count as number; seen.set(c, (seen.get(c) ?? 0) + 1) })
    await s.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })

    const ch = await producer(dev.id, 'pw-' + dev.id)
    const before = gw.sg.journal.committedSeq
    for (let i = 0; i < 10_000; i++) {
      ch.publish(ex.ingest, `${ds}.${dev.id}`, Buffer.from(JSON.stringify({ count: i, temp: i / 10 })), { userId: dev.id, contentType: 'application/json' })
    }
    await ch.waitForConfirms()
    await waitUntil(() => gw.sg.journal.committedSeq >= before + 10_000, 30_000, 'the bridge to journal 10,000 messages')
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    await waitUntil(() => seen.size === 10_000, 30_000, 'the MQTT subscriber to see every record')
    expect([...seen.values()].every((n) => n === 1)).toBe(true)
    const stats = await api(gw.httpUrl, sub.key, 'GET', `/v1/datasets/${ds}/stats`)
    expect(stats.body.stored).toBe(10_000)
  })

  it('ingests a message_id once per producer: a resend is acked as a duplicate, the same id from another producer is its own', async () => {
    const ds7 = uniqueId('amqpid')
    await createDataset(gw, ds7, { fields: { count: 'long' } })
    const a = await createPrincipalWithKey(gw, uniqueId('dev'))
    const b = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds7, [{ principal: a.id, actions: ['publish'] }, { principal: b.id, actions: ['publish'] }])
    rabbitUser(a.id, 'pw-' + a.id)
    rabbitUser(b.id, 'pw-' + b.id)
    const cha = await producer(a.id, 'pw-' + a.id)
    const chb = await producer(b.id, 'pw-' + b.id)
    const before = gw.sg.amqp!.status()
    const N = 1000
    const send = (ch: amqplib.ConfirmChannel, who: string, i: number, id?: string): void => {
      ch.publish(ex.ingest, `${ds7}.${who}`, Buffer.from(JSON.stringify({ count: i })), { userId: who, ...(id === undefined ? {} : { messageId: id }) })
    }
    for (let i = 0; i < N; i++) send(cha, a.id, i, `m-${i}`)
    for (let i = 0; i < N; i++) send(cha, a.id, i, `m-${i}`) // the producer resends all of it
    for (let i = 0; i < N; i++) send(chb, b.id, i, `m-${i}`) // same ids, another principal
    for (let i = 0; i < 10; i++) send(chb, b.id, N + i) // no message_id: ingested every time (at least once)
    for (let i = 0; i < 10; i++) send(chb, b.id, N + i)
    await Promise.all([cha.waitForConfirms(), chb.waitForConfirms()])
    // Acks, not deliveries: a copy that arrives while its original is being journaled is requeued and comes again.
    await waitUntil(() => gw.sg.amqp!.status().acked >= before.acked + 3 * N + 20, 30_000, 'the bridge to settle every message')
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    const status = gw.sg.amqp!.status()
    expect(status.duplicates - before.duplicates).toBe(N)
    expect(status.acked - before.acked).toBe(3 * N + 20)
    const stats = await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds7}/stats`)
    expect(stats.body.stored).toBe(2 * N + 20)
  })

  it('refuses every record from a producer without a grant: none stored, all in rejects, none requeued', async () => {
    const ds2 = uniqueId('amqpdeny')
    await createDataset(gw, ds2, { fields: { count: 'long' } })
    const stranger = await createPrincipalWithKey(gw, uniqueId('dev'))
    rabbitUser(stranger.id, 'pw-' + stranger.id)
    const ch = await producer(stranger.id, 'pw-' + stranger.id)
    const before = gw.sg.amqp!.status().received
    for (let i = 0; i < 10_000; i++) ch.publish(ex.ingest, `${ds2}.${stranger.id}`, Buffer.from(JSON.stringify({ count: i })), { userId: stranger.id })
    // and one without user_id, one with a bad routing key
    ch.publish(ex.ingest, `${ds2}.${stranger.id}`, Buffer.from('{"count":1}'))
    ch.publish(ex.ingest, `${ds2}`, Buffer.from('{"count":1}'), { userId: stranger.id })
    await ch.waitForConfirms()
    await waitUntil(() => gw.sg.amqp!.status().received >= before + 10_002, 30_000, 'the bridge to see every message')
    await sleep(200)
    const stats = await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds2}/stats`)
    expect(stats.body.stored).toBe(0)
    expect(stats.body.rejected).toEqual({ not_authorized: 10_000 })
    const status = await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/status')
    expect(status.body.amqp.requeued).toBe(0)
    expect(status.body.rejected.not_authorized).toBeGreaterThanOrEqual(1)
    expect(status.body.rejected.bad_topic).toBeGreaterThanOrEqual(1)
  })

  it('keeps consuming when RabbitMQ closes its channel (a channel error) or cancels its consumer (queue deleted)', async () => {
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
    rabbitUser(dev.id, 'pw-' + dev.id)
    const ch = await producer(dev.id, 'pw-' + dev.id)
    const bridge = gw.sg.amqp!
    const sendAndStore = async (label: string): Promise<void> => {
      await waitUntil(() => bridge.status().consuming && bridge.status().state === 'connected', 20_000, `the bridge to consume again after ${label}`)
      const before = bridge.status().acked
      for (let i = 0; i < 100; i++) ch.publish(ex.ingest, `${ds}.${dev.id}`, Buffer.from(JSON.stringify({ count: i })), { userId: dev.id })
      await ch.waitForConfirms()
      await waitUntil(() => bridge.status().acked >= before + 100, 20_000, `100 messages ingested after ${label}`)
    }
    await sendAndStore('the start')
    // An ack of a delivery tag RabbitMQ never gave makes it close the channel (406 PRECONDITION_FAILED)
    // and keep the connection: amqp-connection-manager alone would never open another channel.
    const raw = (bridge as unknown as { channel: amqplib.Channel }).channel
    raw.ack({ fields: { deliveryTag: 987_654_321 } } as amqplib.Message)
    await waitUntil(() => bridge.status().channelErrors === 1, 10_000, 'the channel error')
    expect(bridge.status().lastError).toMatch(/PRECONDITION_FAILED/)
    await sendAndStore('a channel error')
    // Deleting the queue cancels the consumer; the bridge declares it again and consumes.
    const admin = await amqplib.connect(AMQP)
    conns.push(admin)
    const adminCh = await admin.createChannel()
    await adminCh.deleteQueue(`${run}.ingest`)
    await waitUntil(() => bridge.status().channelErrors === 2, 10_000, 'the cancelled consumer')
    await sendAndStore('the queue\'s deletion')
  })

  it('requeues and pauses while the journal is full, then ingests everything once there is room', async () => {
    const run3 = uniqueId('sgfull')
    const small = await startTestGateway({
      STREAMGATE_AMQP_URL: AMQP,
      STREAMGATE_AMQP_INGEST_EXCHANGE: `${run3}.ingest`,
      STREAMGATE_AMQP_RECORDS_EXCHANGE: `${run3}.records`,
      STREAMGATE_AMQP_INGEST_QUEUE: `${run3}.ingest`,
      STREAMGATE_RABBITMQ_AUTH_PORT: '0',
      STREAMGATE_JOURNAL_MAX_BYTES: String(128 * 1024),
      STREAMGATE_JOURNAL_SEGMENT_BYTES: String(64 * 1024)
    })
    try {
      await waitUntil(() => small.sg.amqp!.status().consuming, 20_000, 'the bridge to consume')
      const ds6 = uniqueId('full')
      await createDataset(small, ds6, { fields: { count: 'long', note: 'string' } })
      const dev = await createPrincipalWithKey(small, uniqueId('dev'))
      await setGrants(small, ds6, [{ principal: dev.id, actions: ['publish'] }])
      rabbitUser(dev.id, 'pw-' + dev.id)
      // Nothing drains the journal for now: it fills up.
      await small.sg.consumers[0]!.pause()
      const ch = await producer(dev.id, 'pw-' + dev.id)
      const N = 1000
      for (let i = 0; i < N; i++) ch.publish(`${run3}.ingest`, `${ds6}.${dev.id}`, Buffer.from(JSON.stringify({ count: i, note: 'x'.repeat(400) })), { userId: dev.id, persistent: true })
      await ch.waitForConfirms()
      await waitUntil(() => small.sg.amqp!.status().requeued > 0, 20_000, 'a requeue on a full journal')
      const status = (await api(small.httpUrl, ADMIN_KEY, 'GET', '/v1/status')).body
      expect(status.journal.bytes).toBeLessThanOrEqual(128 * 1024)
      expect(status.amqp.rejected).toBe(0)
      // Room again: the sink drains the journal into the store.
      small.sg.consumers[0]!.resume()
      await waitUntil(async () => (await storedCount(small.sg, ds6).catch(() => 0)) === N, 60_000, 'every message ingested and stored once')
      expect(small.sg.amqp!.status().consuming).toBe(true)
      await ch.deleteQueue(`${run3}.ingest`).catch(() => undefined)
      await ch.deleteExchange(`${run3}.ingest`).catch(() => undefined)
      await ch.deleteExchange(`${run3}.records`).catch(() => undefined)
    } finally {
      await small.stop()
    }
  }, 120_000)

  it('publishes every accepted record to the records exchange, with stable message ids, across a connection cut', async () => {
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
    const conn = await amqplib.connect(AMQP)
    conns.push(conn)
    const ch = await conn.createChannel()
    const queue = `${run}.out`
    await ch.assertQueue(queue, { durable: true })
    await ch.bindQueue(queue, ex.records, `${ds}.#`)
    await ch.close()

    const m = await connect(gw.mqttUrl, dev.id, dev.key)
    clients.push(m)
    const N = 10_000
    const cutAt = 4000
    for (let i = 0; i < N; i++) {
      if (i === cutAt) {
        // The bridge's connection is closed mid-stream (only its own: other test files use RabbitMQ too).
        expect(closeRabbitConnections(run, 'streamgate test: cut')).toBe(1)
      }
      await m.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ count: 100_000 + i }), { qos: 1 })
    }
    await waitUntil(() => gw.sg.consumers[1]!.lag === 0, 60_000, 'the AMQP outbound consumer to catch up')

    const got = new Map<number, string>()
    // An expect() thrown inside amqplib's callback would not fail the test: collect, assert after.
    const wrong: string[] = []
    const reader = await amqplib.connect(AMQP)
    conns.push(reader)
    const rch = await reader.createChannel()
    await rch.consume(queue, (msg) => {
      if (msg === null) return
      const count = JSON.parse(msg.content.toString()).count as number
      const prior = got.get(count)
      // a duplicate carries the same message_id
      if (prior !== undefined && prior !== msg.properties.messageId) wrong.push(`record ${count}: message_id ${String(msg.properties.messageId)} after ${prior}`)
      if (msg.properties.headers?.dataset !== ds) wrong.push(`record ${count}: dataset header ${String(msg.properties.headers?.dataset)}`)
      if (msg.properties.deliveryMode !== 2) wrong.push(`record ${count}: not persistent`)
      got.set(count, msg.properties.messageId as string)
      rch.ack(msg)
    })
    await waitUntil(() => got.size === N, 60_000, `all ${N} records on the records exchange`)
    expect(wrong).toEqual([])
    const ids = [...got.values()]
    expect(new Set(ids).size).toBe(N)
    // <node id>:<journal position>
    const node = gw.sg.config.nodeId ?? fs.readFileSync(path.join(gw.dataDir, 'node.id'), 'utf8').trim()
    expect(ids.every((id) => new RegExp(`^${node}:\\d+$`).test(id))).toBe(true)
    // The outbound sink's batches are in the sink latency histogram beside the records sink's.
    const metrics = await (await fetch(`${gw.httpUrl}/metrics`)).text()
    const count = (sink: string): number => Number(new RegExp(`^streamgate_sink_write_duration_seconds_count\\{sink="${sink}"\\} (\\d+)`, 'm').exec(metrics)?.[1] ?? 0)
    expect(count(gw.sg.consumers[1]!.status().name)).toBeGreaterThan(0)
    expect(count('embedded')).toBeGreaterThan(0)
  })

  it('serves the RabbitMQ HTTP auth backend from principals, keys and grants', async () => {
    const addr = gw.sg.addresses.rabbitmqAuth!
    const base = `http://127.0.0.1:${addr.port}`
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const sub = await createPrincipalWithKey(gw, uniqueId('sub'), 'service')
    const ds3 = uniqueId('authz')
    await createDataset(gw, ds3, { fields: { count: 'long' } })
    await setGrants(gw, ds3, [{ principal: dev.id, actions: ['publish'] }, { principal: sub.id, actions: ['subscribe'] }])
    const ask = async (path: string, params: Record<string, string>): Promise<string> => {
      const r = await fetch(`${base}/auth/${path}`, { method: 'POST', body: new URLSearchParams(params) })
      return r.text()
    }
    expect(await ask('user', { username: dev.id, password: dev.key })).toBe('allow')
    expect(await ask('user', { username: dev.id, password: 'wrong' })).toBe('deny')
    expect(await ask('user', { username: 'admin', password: ADMIN_KEY })).toMatch(/^allow administrator/)
    expect(await ask('vhost', { username: dev.id, vhost: '/', ip: '127.0.0.1' })).toBe('allow')
    const topic = (u: string, name: string, permission: string, key: string): Promise<string> =>
      ask('topic', { username: u, vhost: '/', resource: 'topic', name, permission, routing_key: key })
    expect(await topic(dev.id, ex.ingest, 'write', `${ds3}.${dev.id}`)).toBe('allow')
    expect(await topic(dev.id, ex.ingest, 'write', `${ds3}.someone-else`)).toBe('deny')
    expect(await topic(dev.id, ex.ingest, 'write', `${ds}.${dev.id}`)).toBe('deny')
    expect(await topic(sub.id, ex.records, 'read', `${ds3}.#`)).toBe('allow')
    expect(await topic(sub.id, ex.records, 'read', `${ds3}.*`)).toBe('allow')
    expect(await topic(sub.id, ex.records, 'read', '#')).toBe('deny')
    expect(await topic(sub.id, ex.records, 'read', `*.${sub.id}`)).toBe('deny')
    expect(await topic(sub.id, ex.records, 'read', `${ds}.#`)).toBe('deny')
    expect(await topic(dev.id, ex.records, 'read', `${ds3}.#`)).toBe('deny')
    const resource = (u: string, resourceType: string, name: string, permission: string): Promise<string> =>
      ask('resource', { username: u, vhost: '/', resource: resourceType, name, permission })
    expect(await resource(dev.id, 'exchange', ex.ingest, 'write')).toBe('allow')
    expect(await resource(dev.id, 'exchange', ex.ingest, 'configure')).toBe('deny')
    expect(await resource(sub.id, 'exchange', ex.records, 'read')).toBe('allow')
    expect(await resource(sub.id, 'queue', `${sub.id}.mine`, 'configure')).toBe('allow')
    expect(await resource(sub.id, 'queue', `${dev.id}.theirs`, 'read')).toBe('deny')
    // a revoked grant takes effect on the next check
    await setGrants(gw, ds3, [{ principal: dev.id, actions: ['publish'] }])
    expect(await topic(sub.id, ex.records, 'read', `${ds3}.#`)).toBe('deny')
  })

  describe.skipIf(!rabbitAvailable() && process.env.CI === undefined)('through a RabbitMQ node that asks streamgate (rabbitmq_auth_backend_http)', () => {
    let node: RabbitNode
    const nodeConns: amqplib.ChannelModel[] = []
    const open = async (user: string, password: string): Promise<amqplib.ChannelModel> => {
      const c = await amqplib.connect(node.url(user, password))
      c.on('error', () => undefined)
      nodeConns.push(c)
      return c
    }
    beforeAll(async () => { node = await startRabbitNode(`http://127.0.0.1:${gw.sg.addresses.rabbitmqAuth!.port}`) }, 90_000)
    afterAll(async () => {
      for (const c of nodeConns) await Promise.race([c.close().catch(() => undefined), sleep(2000)])
      await node?.stop()
    }, 90_000)

    it('refuses a consumer binding to a dataset it may not subscribe to, and lets it bind with the grant; logins are API keys', async () => {
      const ds4 = uniqueId('viaauth')
      await createDataset(gw, ds4, { fields: { count: 'long' } })
      const sub = await createPrincipalWithKey(gw, uniqueId('sub'), 'service')
      // The admin declares the records exchange on this node.
      const admin = await open('admin', ADMIN_KEY)
      const ach = await admin.createChannel()
      await ach.assertExchange(ex.records, 'topic', { durable: true })
      await expect(open(sub.id, 'not-the-key')).rejects.toThrow(/ACCESS_REFUSED|403|auth/i)

      const bind = async (): Promise<void> => {
        const conn = await open(sub.id, sub.key)
        const ch = await conn.createChannel()
        ch.on('error', () => undefined)
        const { queue } = await ch.assertQueue('', { exclusive: true })
        await ch.bindQueue(queue, ex.records, `${ds4}.#`)
        await ch.close()
      }
      await expect(bind()).rejects.toThrow(/ACCESS_REFUSED|403/)
      await setGrants(gw, ds4, [{ principal: sub.id, actions: ['subscribe'] }])
      await expect(bind()).resolves.toBeUndefined()
    })

    it('delivers 10,000 MQTT records to an AMQP consumer across a 20 s RabbitMQ stop', async () => {
      const run2 = uniqueId('sgstop')
      const ex2 = { ingest: `${run2}.ingest`, records: `${run2}.records` }
      // A second gateway whose bridge uses this node (logging in as admin, checked by the first gateway).
      const gw2 = await startTestGateway({
        STREAMGATE_AMQP_URL: node.url('admin', ADMIN_KEY),
        STREAMGATE_AMQP_INGEST_EXCHANGE: ex2.ingest,
        STREAMGATE_AMQP_RECORDS_EXCHANGE: ex2.records,
        STREAMGATE_AMQP_INGEST_QUEUE: `${run2}.ingest`,
        STREAMGATE_RABBITMQ_AUTH_PORT: '0'
      })
      try {
        await waitUntil(() => gw2.sg.amqp!.status().state === 'connected', 20_000, 'the bridge to connect')
        const ds5 = uniqueId('stop')
        await createDataset(gw2, ds5, { fields: { count: 'long' } })
        const dev = await createPrincipalWithKey(gw2, uniqueId('dev'))
        await setGrants(gw2, ds5, [{ principal: dev.id, actions: ['publish'] }])
        const queue = `${run2}.out`
        const setup = await open('admin', ADMIN_KEY)
        const sch = await setup.createChannel()
        await sch.assertExchange(ex2.records, 'topic', { durable: true })
        await sch.assertQueue(queue, { durable: true })
        await sch.bindQueue(queue, ex2.records, `${ds5}.#`)
        await sch.close()

        const m = await connect(gw2.mqttUrl, dev.id, dev.key)
        const N = 10_000
        for (let i = 0; i < 3000; i++) await m.publishAsync(`datasets/${ds5}/${dev.id}`, JSON.stringify({ count: i }), { qos: 1 })
        await node.halt()
        const stopped = Date.now()
        for (let i = 3000; i < N; i++) {
          await m.publishAsync(`datasets/${ds5}/${dev.id}`, JSON.stringify({ count: i }), { qos: 1 })
          if (i % 350 === 0) await sleep(Math.max(0, 1000 - ((Date.now() - stopped) % 1000)))
        }
        if (Date.now() - stopped < 20_000) await sleep(20_000 - (Date.now() - stopped))
        expect((await api(gw2.httpUrl, ADMIN_KEY, 'GET', '/v1/status')).body.amqp.state).toBe('disconnected')
        await node.resume()
        await waitUntil(() => gw2.sg.consumers[1]!.lag === 0, 60_000, 'the outbound consumer to catch up')
        await m.endAsync()

        const got = new Map<number, string>()
        const wrong: string[] = []
        const reader = await open('admin', ADMIN_KEY)
        const rch = await reader.createChannel()
        await rch.consume(queue, (msg) => {
          if (msg === null) return
          const count = JSON.parse(msg.content.toString()).count as number
          const prior = got.get(count)
          if (prior !== undefined && prior !== msg.properties.messageId) wrong.push(`record ${count}: message_id ${String(msg.properties.messageId)} after ${prior}`)
          got.set(count, msg.properties.messageId as string)
          rch.ack(msg)
        })
        await waitUntil(() => got.size === N, 60_000, `all ${N} records after the stop`)
        expect(wrong).toEqual([])
      } finally {
        await gw2.stop()
      }
    }, 180_000)
  })
})

describe('RabbitMQ unreachable', () => {
  it('keeps MQTT ingestion going when RabbitMQ is down at start, and catches up after a 20 s outage', async () => {
    const run = uniqueId('sgout')
    const ex = { ingest: `${run}.ingest`, records: `${run}.records` }
    const proxy = new TcpProxy(hostPort(AMQP, 5672))
    await proxy.up()
    const port = proxy.port
    proxy.cut() // RabbitMQ "down" at start
    const url = new URL(AMQP)
    url.hostname = '127.0.0.1'
    url.port = String(port)
    const gw = await startTestGateway({
      STREAMGATE_AMQP_URL: url.toString(),
      STREAMGATE_AMQP_INGEST_EXCHANGE: ex.ingest,
      STREAMGATE_AMQP_RECORDS_EXCHANGE: ex.records,
      STREAMGATE_AMQP_INGEST_QUEUE: `${run}.ingest`,
      STREAMGATE_RABBITMQ_AUTH_PORT: '0'
    })
    const direct = await amqplib.connect(AMQP)
    try {
      const ds = uniqueId('outage')
      await createDataset(gw, ds, { fields: { count: 'long' } })
      const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
      await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
      // A consumer on RabbitMQ directly, waiting for the records.
      const ch = await direct.createChannel()
      await ch.assertExchange(ex.records, 'topic', { durable: true })
      const { queue } = await ch.assertQueue(`${run}.out`, { durable: true })
      await ch.bindQueue(queue, ex.records, `${ds}.#`)
      const got = new Set<number>()
      await ch.consume(queue, (msg) => { if (msg !== null) { got.add(JSON.parse(msg.content.toString()).count as number); ch.ack(msg) } })

      const m = await connect(gw.mqttUrl, dev.id, dev.key)
      for (let i = 0; i < 500; i++) await m.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ count: i }), { qos: 1 })
      // The store is not held up by RabbitMQ being down.
      await waitUntil(async () => (await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/status')).body.consumers[0].lag === 0, 10_000, 'the store to catch up')
      let status = (await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/status')).body
      expect(status.amqp.state).not.toBe('connected')
      expect(status.consumers[1].lag).toBe(500)
      proxy.restore()
      await waitUntil(() => got.size === 500, 30_000, 'records published before RabbitMQ came up')
      // A 20 s outage while publishing goes on.
      proxy.cut()
      const outageEnds = Date.now() + 20_000
      let i = 500
      while (Date.now() < outageEnds) {
        await m.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ count: i++ }), { qos: 1 })
        if (i % 100 === 0) await sleep(50)
      }
      status = (await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/status')).body
      expect(status.amqp.state).toBe('disconnected')
      expect(status.amqp.lastError).not.toBeNull()
      expect(status.consumers[1].lag).toBeGreaterThan(0)
      proxy.restore()
      await waitUntil(() => got.size === i, 60_000, `all ${i} records after the outage`)
      await m.endAsync()
      expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/status')).body.amqp.state).toBe('connected')
      await ch.deleteQueue(queue)
      await ch.deleteExchange(ex.records)
      await ch.deleteExchange(ex.ingest).catch(() => undefined)
      await ch.deleteQueue(`${run}.ingest`).catch(() => undefined)
    } finally {
      await direct.close().catch(() => undefined)
      await gw.stop()
      await proxy.down()
    }
  }, 120_000)
})
