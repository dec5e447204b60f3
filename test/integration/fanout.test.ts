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
const sockets: net.Socket[] = []

afterAll(async () => {
  for (const c of clients) await c.endAsync(true).catch(() => undefined)
  for (const s of sockets) s.destroy()
  for (const g of gateways) await g.stop()
})

/** A gateway whose every fdatasync takes SLOW_MS longer (or fails then, with `failing`). */
async function slowDiskGateway (fanout: 'written' | 'durable', env: Record<string, string> = {}, failing = false): Promise<TestGateway> {
  const gw = await startTestGateway({ STREAMGATE_FANOUT: fanout, ...env })
  gateways.push(gw)
  const syncer = (gw.sg.journal as unknown as { syncer: { fdatasync: (fd: number, cb: (err: Error | null) => void) => void } }).syncer
  const sync = syncer.fdatasync.bind(syncer)
  syncer.fdatasync = (fd, cb) => { setTimeout(() => failing ? cb(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' })) : sync(fd, cb), SLOW_MS) }
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

/**
 * Three QoS 1 PUBLISHes of one raw client: two in one write (one socket read, which Aedes handles as a
 * batch: it reads the client's next packets once the batch is handled), the third 50 ms later. When
 * the subscriber got the third, in ms from its write, when the first was acknowledged, and the
 * PUBACKs' packet identifiers in the order they came.
 */
async function publishesAfterABatch (gw: TestGateway): Promise<{ deliveredThird: number, ackedFirst: number, acks: number[] }> {
  const ds = uniqueId('next')
  await createDataset(gw, ds, { fields: { n: 'long' } })
  const sub = await client(gw)
  let third = -1
  sub.on('message', (_t, payload) => { if (JSON.parse(payload.toString()).n === 3) third = performance.now() })
  await sub.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
  const socket = net.connect(Number(new URL(gw.mqttUrl).port), '127.0.0.1')
  sockets.push(socket)
  const parser = mqttPacket.parser({ protocolVersion: 4 })
  const acks: number[] = []
  let connacked = false
  let ackedFirst = -1
  const t0 = performance.now()
  socket.on('data', (b) => parser.parse(b))
  parser.on('packet', (p) => {
    if (p.cmd === 'connack') connacked = true
    if (p.cmd === 'puback') {
      acks.push(p.messageId!)
      if (p.messageId === 1) ackedFirst = performance.now() - t0
    }
  })
  socket.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: uniqueId('raw'), keepalive: 30, username: 'admin', password: Buffer.from(ADMIN_KEY) }))
  await waitUntil(() => connacked, 5000, 'CONNACK')
  const publish = (n: number): Buffer => mqttPacket.generate({ cmd: 'publish', topic: `datasets/${ds}/d1`, payload: Buffer.from(JSON.stringify({ n })), qos: 1, messageId: n, retain: false, dup: false })
  const written = performance.now()
  socket.write(Buffer.concat([publish(1), publish(2)]))
  await sleep(50)
  const t3 = performance.now()
  socket.write(publish(3))
  await waitUntil(() => third >= 0, 5000, 'the third delivery')
  await waitUntil(() => acks.length === 3, 5000, 'three PUBACKs')
  return { deliveredThird: third - t3, ackedFirst: ackedFirst - (written - t0), acks }
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

  it('reads a publisher\'s next packets while its earlier PUBLISHes wait for the disk, and acknowledges them in order', async () => {
    const t = await publishesAfterABatch(await writtenGateway())
    expect(t.deliveredThird).toBeLessThan(SLOW_MS / 2)
    expect(t.ackedFirst).toBeGreaterThanOrEqual(SLOW_MS - 20)
    expect(t.acks).toEqual([1, 2, 3])
  })

  it('STREAMGATE_MQTT_MAX_UNACKED=0: reads a publisher\'s next packets only once its earlier PUBLISHes are durable', async () => {
    const t = await publishesAfterABatch(await slowDiskGateway('written', { STREAMGATE_MQTT_MAX_UNACKED: '0' }))
    expect(t.deliveredThird).toBeGreaterThanOrEqual(SLOW_MS - 50 - 20)
    expect(t.acks).toEqual([1, 2, 3])
  })

  it('disconnects a publisher whose earlier PUBLISH fails at the disk after its next one was read, acknowledging neither', async () => {
    const gw = await slowDiskGateway('written', {}, true)
    const ds = uniqueId('fail')
    await createDataset(gw, ds, { fields: { n: 'long' } })
    const sub = await client(gw)
    const got: string[] = []
    sub.on('message', (_t, payload) => { got.push(payload.toString()) })
    await sub.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    const pub = await client(gw)
    const acks: number[] = []
    pub.on('packetreceive', (p) => { if (p.cmd === 'puback') acks.push(p.messageId!) })
    const closed = new Promise<number>((resolve) => { const t0 = performance.now(); pub.stream.once('close', () => resolve(performance.now() - t0)) })
    void pub.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: 1 }), { qos: 1 }).catch(() => undefined)
    await waitUntil(() => got.length === 1, 5000, 'the first delivery')
    void pub.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: 2 }), { qos: 1 }).catch(() => undefined)
    await waitUntil(() => got.length === 2, 5000, 'the second delivery, read before the first fdatasync returned')
    expect(await closed).toBeGreaterThanOrEqual(SLOW_MS / 2)
    await sleep(100)
    expect(acks).toEqual([])
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
