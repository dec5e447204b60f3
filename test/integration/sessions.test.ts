// Persistent sessions (clean: false) on one node: what a session reconnecting gets, and in what order.
import mqtt, { type MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, connect, createDataset, sleep, startTestGateway, type TestGateway, uniqueId, waitUntil } from '../helpers.js'

let gw: TestGateway
const clients: MqttClient[] = []

beforeAll(async () => { gw = await startTestGateway() })

afterAll(async () => {
  for (const c of clients) await c.endAsync(true).catch(() => undefined)
  await gw?.stop()
})

async function client (opts: Parameters<typeof connect>[3] = {}): Promise<MqttClient> {
  const c = await connect(gw.mqttUrl, 'admin', ADMIN_KEY, { reconnectPeriod: 0, ...opts })
  clients.push(c)
  return c
}

describe('persistent sessions', () => {
  it('sends CONNACK first when a message arrives while the session\'s subscriptions are being restored, then that message once', async () => {
    const ds = uniqueId('order')
    await createDataset(gw, ds, { fields: { n: 'long' } })
    const clientId = uniqueId('persistent')
    const first = await client({ clientId, clean: false })
    await first.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    await first.endAsync()

    // Aedes restores the subscriptions, then stores the will, then sends CONNACK: a message is
    // published and fanned out while the will is being stored, i.e. with the subscription live and no
    // CONNACK sent yet (with nodes sharing Redis the network makes that window by itself).
    const pub = await client()
    const watch = await client()
    let watched = 0
    watch.on('message', () => { watched++ })
    await watch.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    const persistence = (gw.sg.broker.aedes as unknown as { persistence: unknown }).persistence as { delWill: (c: { id: string }) => Promise<unknown> }
    const delWill = persistence.delWill.bind(persistence)
    let published = false
    persistence.delWill = async (c) => {
      if (c.id === clientId && !published) {
        published = true
        await pub.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ n: 1 }), { qos: 1 })
        await waitUntil(() => watched === 1, 5000, 'the fan-out')
        await sleep(50)
      }
      return await delWill(c)
    }

    const packets: string[] = []
    const got: number[] = []
    const second = mqtt.connect(gw.mqttUrl, { username: 'admin', password: ADMIN_KEY, clientId, clean: false, reconnectPeriod: 0, connectTimeout: 5000, protocolVersion: 4 })
    clients.push(second)
    second.on('packetreceive', (p) => packets.push(p.cmd))
    second.on('message', (_t, p) => { got.push(JSON.parse(p.toString()).n as number) })
    try {
      await new Promise((resolve, reject) => { second.once('connect', resolve); second.once('error', reject) })
      await waitUntil(() => got.length >= 1, 5000, 'the message')
      await sleep(200) // a second copy would show now
    } finally {
      persistence.delWill = delWill
    }
    expect(published).toBe(true)
    expect(packets[0]).toBe('connack')
    expect(got).toEqual([1])
  })
})
