// When live subscribers get a message (STREAMGATE_FANOUT) against when its publisher is acknowledged,
// on a disk made slow on purpose: every fdatasync of the journal takes SLOW_MS longer.
import net from 'node:net'
import type { MqttClient } from 'mqtt'
import mqttPacket from 'mqtt-packet'
import { afterAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, connect, createDataset, sleep, startTestGateway, type TestGateway, uniqueId, waitUntil } from '../helpers.js'

const SLOW_MS = 400
const gateways: TestGateway[] = []
const clients: MqttClient[] = []

afterAll(async () => {
  for (const c of clients) await c.endAsync(true).catch(() => undefined)
  for (const g of gateways) await g.stop()
})

async function slowDiskGateway (fanout: 'written' | 'durable'): Promise<TestGateway> {
  const gw = await startTestGateway({ STREAMGATE_FANOUT: fanout })
  gateways.push(gw)
  const syncer = (gw.sg.journal as unknown as { syncer: { fdatasync: (fd: number, cb: (err: Error | null) => void) => void } }).syncer
  const sync = syncer.fdatasync.bind(syncer)
  syncer.fdatasync = (fd, cb) => { setTimeout(() => sync(fd, cb), SLOW_MS) }
  return gw
}

let written: TestGateway | undefined
const writtenGateway = async (): Promise<TestGateway> => (written ??= await slowDiskGateway('written'))

/** A new dataset on the slow-disk gateway that fans out once written. */
async function writtenDataset (prefix: string): Promise<{ gw: TestGateway, ds: string }> {
  const gw = await writtenGateway()
  const ds = uniqueId(prefix)
  await createDataset(gw, ds, { fields: { n: 'long' } })
  return { gw, ds }
}

async function client (gw: TestGateway): Promise<MqttClient> {
  const c = await connect(gw.mqttUrl, 'admin', ADMIN_KEY, { reconnectPeriod: 0 })
  clients.push(c)
  return c
}

/** Publishes one QoS 1 message: when the subscriber got it and when the PUBACK came, in ms from the publish, and how many copies it got. */
async function timings (gw: TestGateway): Promise<{ delivered: number, acked: number, copies: number }> {
  const ds = uniqueId('fan')
  await createDataset(gw, ds, { fields: { n: 'long' } })
  const sub = await client(gw)
  let delivered = -1
  let copies = 0
  const start = performance.now()
  sub.on('message', () => { if (copies++ === 0) delivered = performance.now() - start })
  await sub.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
  const pub = await client(gw)
  const t0 = performance.now()
  await pub.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: 1 }), { qos: 1 })
  const acked = performance.now() - t0
  await waitUntil(() => delivered >= 0, 5000, 'the delivery')
  await sleep(200) // a second copy (Aedes' own publish of the packet) would show now
  return { delivered: delivered - (t0 - start), acked, copies }
}

describe('STREAMGATE_FANOUT', () => {
  it('written (the default): subscribers get a QoS 1 message while its fdatasync runs; the PUBACK waits for it', async () => {
    const gw = await writtenGateway()
    const t = await timings(gw)
    expect(t.acked).toBeGreaterThanOrEqual(SLOW_MS - 20)
    expect(t.delivered).toBeLessThan(SLOW_MS / 2)
    expect(t.copies).toBe(1)
  })

  it('durable: subscribers get it only once it is fdatasync\'d, with its PUBACK', async () => {
    const gw = await slowDiskGateway('durable')
    const t = await timings(gw)
    expect(t.acked).toBeGreaterThanOrEqual(SLOW_MS - 20)
    expect(t.delivered).toBeGreaterThanOrEqual(SLOW_MS - 20)
    expect(t.copies).toBe(1)
  })

  it('written: records posted over HTTP reach subscribers before the 202', async () => {
    const { gw, ds } = await writtenDataset('http')
    const sub = await client(gw)
    let delivered = -1
    const t0 = performance.now()
    sub.on('message', () => { if (delivered < 0) delivered = performance.now() - t0 })
    await sub.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    const t1 = performance.now()
    const r = await api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/datasets/${ds}/records`, [{ n: 1 }, { n: 2 }])
    const answered = performance.now() - t1
    expect(r.status).toBe(202)
    expect(answered).toBeGreaterThanOrEqual(SLOW_MS - 20)
    await waitUntil(() => delivered >= 0, 5000, 'the delivery')
    expect(delivered - (t1 - t0)).toBeLessThan(SLOW_MS / 2)
  })

  it('clears the retain flag: subscribers get QoS 0 and QoS 1 messages as not retained, and a later subscriber gets nothing', async () => {
    const { gw, ds } = await writtenDataset('retain')
    const sub = await client(gw)
    const flags: boolean[] = []
    sub.on('message', (_t, _p, packet) => { flags.push(packet.retain) })
    await sub.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    const pub = await client(gw)
    await pub.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: 0 }), { qos: 0, retain: true })
    await pub.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: 1 }), { qos: 1, retain: true })
    await waitUntil(() => flags.length === 2, 5000, 'both deliveries')
    expect(flags).toEqual([false, false])
    const late = await client(gw)
    let got = 0
    late.on('message', () => { got++ })
    await late.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    await sleep(300)
    expect(got).toBe(0)
  })

  it('acknowledges QoS 1 PUBLISHes in the order they came, a refused one and a plain topic\'s after an earlier one still being made durable', async () => {
    const { gw, ds } = await writtenDataset('order')
    const sub = await client(gw)
    const plain: { qos: number, payload: string }[] = []
    sub.on('message', (t, payload, p) => { if (t === `plain/${ds}`) plain.push({ qos: p.qos, payload: payload.toString() }) })
    await sub.subscribeAsync(`plain/${ds}`, { qos: 1 })
    const pub = await client(gw)
    const acks: number[] = []
    pub.on('packetreceive', (p) => { if (p.cmd === 'puback') acks.push(p.messageId!) })
    const sent: number[] = []
    pub.on('packetsend', (p) => { if (p.cmd === 'publish') sent.push(p.messageId!) })
    await Promise.all([
      pub.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: 1 }), { qos: 1 }), // journaled: waits SLOW_MS
      pub.publishAsync(`datasets/${ds}/d1`, '{"n": "not a number"}', { qos: 1 }), // refused at once
      pub.publishAsync(`plain/${ds}`, 'not stored', { qos: 1 }), // an admin's plain topic: not journaled
      pub.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: 3 }), { qos: 1 })
    ])
    expect(sent).toHaveLength(4)
    expect(acks).toEqual(sent)
    // The plain topic's message still reaches its subscriber, at QoS 1.
    await waitUntil(() => plain.length === 1, 5000, 'the plain topic\'s delivery')
    expect(plain).toEqual([{ qos: 1, payload: 'not stored' }])
  })

  it('journals and delivers a QoS 2 message sent again (its PUBREC lost) once', async () => {
    const { gw, ds } = await writtenDataset('qos2')
    const sub = await client(gw)
    let copies = 0
    sub.on('message', () => { copies++ })
    await sub.subscribeAsync(`datasets/${ds}/#`, { qos: 2 })
    // A raw client, to send the same PUBLISH twice.
    const socket = net.connect(Number(new URL(gw.mqttUrl).port), '127.0.0.1')
    const parser = mqttPacket.parser({ protocolVersion: 4 })
    const seen: string[] = []
    socket.on('data', (b) => parser.parse(b))
    parser.on('packet', (p) => seen.push(p.cmd))
    const send = (p: mqttPacket.Packet): void => { socket.write(mqttPacket.generate(p)) }
    send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: uniqueId('raw'), keepalive: 30, username: 'admin', password: Buffer.from(ADMIN_KEY) })
    await waitUntil(() => seen.includes('connack'), 5000, 'CONNACK')
    const publish = { cmd: 'publish' as const, topic: `datasets/${ds}/d1`, payload: Buffer.from('{"n":2}'), qos: 2 as const, messageId: 7, retain: false, dup: false }
    send(publish)
    await waitUntil(() => seen.filter((c) => c === 'pubrec').length === 1, 5000, 'the first PUBREC')
    send({ ...publish, dup: true })
    await waitUntil(() => seen.filter((c) => c === 'pubrec').length === 2, 5000, 'the second PUBREC')
    send({ cmd: 'pubrel', messageId: 7 })
    await waitUntil(() => seen.includes('pubcomp'), 5000, 'PUBCOMP')
    await waitUntil(() => copies >= 1, 5000, 'the delivery')
    await sleep(300)
    socket.destroy()
    expect(copies).toBe(1)
    await waitUntil(async () => (await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/stats`)).body.stored >= 1, 10_000, 'the row')
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/stats`)).body.stored).toBe(1)
  })
})
