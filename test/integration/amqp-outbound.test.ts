// STREAMGATE_AMQP_OUTBOUND=none: the bridge still ingests from RabbitMQ, and no accepted record is
// published to the records exchange (no outbound journal consumer runs). The default (`records`) is
// covered by test/integration/amqp.test.ts, where every record reaches the exchange.
import amqplib from 'amqplib'
import type { MqttClient } from 'mqtt'
import { afterAll, describe, expect, it } from 'vitest'
import { AMQP, amqpUrlAs, bridgeEnv, deleteBridgeObjects, deleteRabbitUsers, rabbitUser } from '../support/rabbit.js'
import { connect, createDataset, createPrincipalWithKey, setGrants, sleep, startTestGateway, storedCount, type TestGateway, uniqueId, waitUntil } from '../helpers.js'

describe('STREAMGATE_AMQP_OUTBOUND=none', () => {
  const run = uniqueId('sgtest-out')
  let gw: TestGateway | undefined
  const clients: MqttClient[] = []
  const conns: amqplib.ChannelModel[] = []

  afterAll(async () => {
    for (const c of clients) await c.endAsync(true).catch(() => undefined)
    for (const c of conns) await c.close().catch(() => undefined)
    await gw?.stop()
    const conn = await amqplib.connect(AMQP)
    const ch = await conn.createChannel()
    await ch.deleteQueue(`${run}.out`).catch(() => undefined)
    await ch.close().catch(() => undefined)
    await deleteBridgeObjects(conn, run)
    await conn.close()
    deleteRabbitUsers()
  })

  it('ingests over MQTT and from RabbitMQ, and publishes nothing to the records exchange', async () => {
    gw = await startTestGateway({ ...bridgeEnv(run), STREAMGATE_AMQP_OUTBOUND: 'none', STREAMGATE_AMQP_CONNECTION_NAME: run })
    const g = gw
    await waitUntil(() => g.sg.amqp!.status().consuming, 20_000, 'the bridge to consume')
    expect(g.sg.consumers.map((c) => c.name)).not.toContain('amqp')
    const ds = uniqueId('out')
    await createDataset(g, ds, { fields: { count: 'long' } })
    const dev = await createPrincipalWithKey(g, uniqueId('dev'))
    await setGrants(g, ds, [{ principal: dev.id, actions: ['publish'] }])

    const admin = await amqplib.connect(AMQP)
    conns.push(admin)
    const ch = await admin.createChannel()
    await ch.assertQueue(`${run}.out`, { durable: true })
    await ch.bindQueue(`${run}.out`, `${run}.records`, `${ds}.#`)

    const m = await connect(g.mqttUrl, dev.id, dev.key)
    clients.push(m)
    for (let i = 0; i < 100; i++) await m.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ count: i }), { qos: 1 })
    rabbitUser(dev.id, 'pw-' + dev.id)
    const producer = await amqplib.connect(amqpUrlAs(dev.id, 'pw-' + dev.id))
    conns.push(producer)
    const pc = await producer.createConfirmChannel()
    for (let i = 100; i < 200; i++) pc.publish(`${run}.ingest`, `${ds}.${dev.id}`, Buffer.from(JSON.stringify({ count: i })), { userId: dev.id, messageId: `m-${i}`, persistent: true })
    await pc.waitForConfirms()

    await waitUntil(async () => await storedCount(g.sg, ds) === 200, 30_000, 'all 200 records stored')
    // With the default the records follow within milliseconds of the journal (no linger): give them a second.
    await sleep(1000)
    expect((await ch.checkQueue(`${run}.out`)).messageCount).toBe(0)
    expect(g.sg.amqp!.status().acked).toBe(100)
  })
})
