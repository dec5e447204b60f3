// When live subscribers get a message (STREAMGATE_FANOUT) against when its publisher is acknowledged,
// on a disk made slow on purpose: every fdatasync of the journal takes SLOW_MS longer.
import type { MqttClient } from 'mqtt'
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

async function client (gw: TestGateway): Promise<MqttClient> {
  const c = await connect(gw.mqttUrl, 'admin', ADMIN_KEY, { reconnectPeriod: 0 })
  clients.push(c)
  return c
}

/** Publishes one QoS 1 message: when the subscriber got it and when the PUBACK came, in ms from the publish. */
async function timings (gw: TestGateway, retain = false): Promise<{ delivered: number, acked: number, retained: boolean, ds: string }> {
  const ds = uniqueId('fan')
  await createDataset(gw, ds, { fields: { n: 'long' } })
  const sub = await client(gw)
  let delivered = -1
  let retained = false
  const start = performance.now()
  sub.on('message', (_t, _p, packet) => { delivered = performance.now() - start; retained = packet.retain })
  await sub.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
  const pub = await client(gw)
  const t0 = performance.now()
  await pub.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: 1 }), { qos: 1, retain })
  const acked = performance.now() - t0
  await waitUntil(() => delivered >= 0, 5000, 'the delivery')
  return { delivered: delivered - (t0 - start), acked, retained, ds }
}

describe('STREAMGATE_FANOUT', () => {
  it('written (the default): subscribers get a QoS 1 message while its fdatasync runs; the PUBACK waits for it', async () => {
    const gw = await writtenGateway()
    const t = await timings(gw)
    expect(t.acked).toBeGreaterThanOrEqual(SLOW_MS - 20)
    expect(t.delivered).toBeLessThan(SLOW_MS / 2)
  })

  it('durable: subscribers get it only once it is fdatasync\'d, with its PUBACK', async () => {
    const gw = await slowDiskGateway('durable')
    const t = await timings(gw)
    expect(t.acked).toBeGreaterThanOrEqual(SLOW_MS - 20)
    expect(t.delivered).toBeGreaterThanOrEqual(SLOW_MS - 20)
  })

  it('written: records posted over HTTP reach subscribers before the 202', async () => {
    const gw = await writtenGateway()
    const ds = uniqueId('http')
    await createDataset(gw, ds, { fields: { n: 'long' } })
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

  it('clears the retain flag: subscribers get the message as not retained, and a later subscriber gets nothing', async () => {
    const gw = await writtenGateway()
    const t = await timings(gw, true)
    expect(t.retained).toBe(false)
    const late = await client(gw)
    let got = 0
    late.on('message', () => { got++ })
    await late.subscribeAsync(`datasets/${t.ds}/#`, { qos: 1 })
    await sleep(300)
    expect(got).toBe(0)
  })
})
