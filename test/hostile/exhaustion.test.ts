// Resource exhaustion: many idle authenticated connections, a subscriber that never reads, a flood of
// TCP connections that never send CONNECT, and slowloris clients on the HTTP and WebSocket listeners.
// Other clients stay served; the gateway's memory and connection count stay bounded.
// STREAMGATE_EXHAUST_CONNECTIONS sets the idle connections (2,000 here, 10,000 in npm run test:soak).
import net from 'node:net'
import mqttPacket from 'mqtt-packet'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, type TestGateway, uniqueId, waitUntil } from '../helpers.js'

const IDLE = Number(process.env.STREAMGATE_EXHAUST_CONNECTIONS ?? 2000)

let gw: TestGateway
beforeAll(async () => {
  gw = await startTestGateway({
    STREAMGATE_DRAIN_TIMEOUT_MS: '2000', STREAMGATE_CONNECT_TIMEOUT_MS: '2000',
    STREAMGATE_HTTP_HEADERS_TIMEOUT_MS: '2000', STREAMGATE_HTTP_REQUEST_TIMEOUT_MS: '4000',
    STREAMGATE_MQTT_CONNECT_RATE_DEVICE: '0'
  })
})
afterAll(async () => { await gw?.stop() })

/** Opens an authenticated MQTT connection over a bare socket (cheap enough for thousands) and resolves once CONNACK 0 came. */
function idleConnection (port: number, username: string, password: string, clientId: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1')
    s.once('error', reject)
    s.once('data', (d) => (d[0] === 0x20 && d[3] === 0 ? resolve(s) : reject(new Error(`CONNACK ${d[3]}`))))
    s.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 0, clientId, username, password: Buffer.from(password) }))
  })
}

describe('resource exhaustion', () => {
  it(`holds ${IDLE} idle authenticated connections and keeps serving beside them`, async () => {
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const rssBefore = process.memoryUsage().rss
    const sockets: net.Socket[] = []
    try {
      for (let i = 0; i < IDLE; i += 100) {
        sockets.push(...await Promise.all(Array.from({ length: Math.min(100, IDLE - i) }, (_, k) => idleConnection(gw.sg.addresses.mqtt.port, dev.id, dev.key, `idle-${i + k}`))))
      }
      expect(gw.sg.broker.sessions().length).toBeGreaterThanOrEqual(IDLE)
      const rssMiB = process.memoryUsage().rss / 2 ** 20
      process.stdout.write(`  exhaustion: ${sockets.length} idle authenticated connections; process RSS ${rssMiB.toFixed(0)} MiB (+${((process.memoryUsage().rss - rssBefore) / 2 ** 20).toFixed(0)} MiB, test client sockets included)\n`)
      expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/status')).body.mqtt.sessions).toBeGreaterThanOrEqual(IDLE)
      const c = await connect(gw.mqttUrl, dev.id, dev.key)
      await c.endAsync()
    } finally {
      for (const s of sockets) s.destroy()
    }
    await waitUntil(() => gw.sg.broker.sessions().length === 0, 20_000, 'the idle sessions to be gone')
  }, 120_000)

  it('disconnects a subscriber that never reads after the drain timeout, while another keeps receiving everything', async () => {
    const ds = uniqueId('slow')
    await createDataset(gw, ds, { fields: { pad: 'string' } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const svc = await createPrincipalWithKey(gw, uniqueId('svc'), 'service')
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }, { principal: svc.id, actions: ['subscribe'] }])
    // The slow one: subscribes over a bare socket, then stops reading.
    const slowId = uniqueId('slow')
    const slow = await idleConnection(gw.sg.addresses.mqtt.port, svc.id, svc.key, slowId)
    slow.write(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `datasets/${ds}/#`, qos: 0 }] }))
    await new Promise((resolve) => setTimeout(resolve, 200))
    slow.pause()
    // The good one.
    const good = await connect(gw.mqttUrl, svc.id, svc.key)
    let received = 0
    good.on('message', () => { received++ })
    await good.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    const pub = await connect(gw.mqttUrl, dev.id, dev.key)
    const N = 6000
    const pad = 'x'.repeat(4000) // ~24 MB in all: far more than the kernel's socket buffers hold
    for (let i = 0; i < N; i += 50) await Promise.all(Array.from({ length: 50 }, () => pub.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ pad }), { qos: 1 })))
    await pub.endAsync()
    // Deliveries to everyone wait while the slow socket is full, for at most the drain timeout: then
    // the gateway drops it (its side of the socket; the paused client does not notice) and goes on.
    await waitUntil(() => received === N, 30_000, 'the good subscriber to receive everything')
    await waitUntil(() => !gw.sg.broker.sessions().some((c) => c.clientId === slowId), 5_000, 'the slow subscriber to be disconnected')
    await good.endAsync()
    slow.destroy()
  }, 60_000)

  it('closes TCP connections that never send CONNECT', async () => {
    const sockets = await Promise.all(Array.from({ length: 300 }, () => new Promise<net.Socket>((resolve) => {
      const s = net.connect(gw.sg.addresses.mqtt.port, '127.0.0.1', () => resolve(s))
      s.on('error', () => undefined)
    })))
    const closedAll = Promise.all(sockets.map((s) => new Promise<void>((resolve) => s.once('close', () => resolve()))))
    await Promise.race([closedAll, new Promise((_resolve, reject) => setTimeout(() => reject(new Error('connections without CONNECT still open')), 10_000))])
  })

  it('cuts slowloris clients on the HTTP and WebSocket listeners, and keeps answering others', async () => {
    const slowloris = (port: number): Promise<number> => new Promise((resolve) => {
      const started = Date.now()
      const s = net.connect(port, '127.0.0.1', () => {
        s.write('GET /v1/datasets HTTP/1.1\r\nHost: x\r\n')
        const drip = setInterval(() => { if (!s.destroyed) s.write('X-a: b\r\n') }, 500)
        s.once('close', () => { clearInterval(drip); resolve(Date.now() - started) })
      })
      s.on('error', () => undefined)
    })
    const cuts = Promise.all([slowloris(gw.sg.addresses.http.port), slowloris(gw.sg.addresses.ws.port)])
    // Meanwhile the API answers.
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/datasets')).status).toBe(200)
    const [httpMs, wsMs] = await cuts
    expect(httpMs).toBeLessThan(6000)
    expect(wsMs).toBeLessThan(6000)
  }, 30_000)
})
