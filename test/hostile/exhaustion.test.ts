// Resource exhaustion: many idle authenticated connections, a subscriber that never reads, a flood of
// TCP connections that never send CONNECT, a connection flood from one address (against the
// per-address limits), and slowloris clients on the HTTP and WebSocket listeners.
// Other clients stay served; the gateway's memory and connection count stay bounded.
// STREAMGATE_EXHAUST_CONNECTIONS sets the idle connections (2,000 here, 10,000 in npm run test:soak).
import { spawn } from 'node:child_process'
import net from 'node:net'
import path from 'node:path'
import mqttPacket from 'mqtt-packet'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, sleep, startTestGateway, type TestGateway, uniqueId, waitUntil } from '../helpers.js'
import { idleConnection } from '../support/mqtt-raw.js'

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

describe('resource exhaustion', () => {
  it(`holds ${IDLE} idle authenticated connections and keeps serving beside them`, async () => {
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const rssBefore = process.memoryUsage().rss
    // The clients live in a process of their own: this one holds the gateway's ends.
    const clients = spawn(process.execPath, ['--import', 'tsx', path.join(import.meta.dirname, '../support/idle-clients.ts'), String(gw.sg.addresses.mqtt.port), dev.id, dev.key, String(IDLE)], { stdio: ['ignore', 'pipe', 'inherit'] })
    try {
      let out = ''
      clients.stdout!.on('data', (d: Buffer) => { out += d.toString() })
      await waitUntil(() => /^(ready|error)/m.test(out) || clients.exitCode !== null, 120_000, `${IDLE} idle connections`)
      expect(out.trim()).toBe(`ready ${IDLE}`)
      expect(gw.sg.broker.sessions().length).toBeGreaterThanOrEqual(IDLE)
      const rssMiB = process.memoryUsage().rss / 2 ** 20
      process.stdout.write(`  exhaustion: ${IDLE} idle authenticated connections; gateway process RSS ${rssMiB.toFixed(0)} MiB (+${((process.memoryUsage().rss - rssBefore) / 2 ** 20).toFixed(0)} MiB)\n`)
      expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/status')).body.mqtt.sessions).toBeGreaterThanOrEqual(IDLE)
      const c = await connect(gw.mqttUrl, dev.id, dev.key)
      await c.endAsync()
    } finally {
      clients.kill('SIGKILL')
    }
    await waitUntil(() => gw.sg.broker.sessions().length === 0, 30_000, 'the idle sessions to be gone')
  }, 180_000)

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
    const at: number[] = []
    good.on('message', () => { received++; at.push(performance.now()) })
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
    // The stall the slow one caused the others is bounded by the drain timeout (2 s here).
    let stall = 0
    for (let i = 1; i < at.length; i++) stall = Math.max(stall, at[i]! - at[i - 1]!)
    process.stdout.write(`  slow reader: the other subscriber's longest wait between deliveries ${stall.toFixed(0)} ms (STREAMGATE_DRAIN_TIMEOUT_MS=2000)\n`)
    expect(stall).toBeLessThan(2000 + 1500)
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

/** A TCP connection from `from` (another loopback address) to the gateway; resolves once connected. */
function rawConnection (port: number, from: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress: from }, () => resolve(s))
    s.once('error', reject)
  })
}

const isOpen = (s: net.Socket): boolean => !s.destroyed && !s.readableEnded

describe('a connection flood from one address', () => {
  const MAX = 50
  const RATE = 100
  let g: TestGateway
  beforeAll(async () => {
    g = await startTestGateway({ STREAMGATE_MQTT_MAX_CONNECTIONS_PER_ADDRESS: String(MAX), STREAMGATE_MQTT_ACCEPT_RATE_PER_ADDRESS: String(RATE), STREAMGATE_CONNECT_TIMEOUT_MS: '3000' })
  })
  afterAll(async () => { await g?.stop() })

  it(`keeps at most ${MAX} connections of an address open and accepts ${RATE} a second, while other addresses are served`, async () => {
    const ds = uniqueId('flood')
    await createDataset(g, ds, { fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(g, uniqueId('dev'))
    await setGrants(g, ds, [{ principal: dev.id, actions: ['publish', 'subscribe'] }])
    // The well-behaved client, from 127.0.0.1, publishes to itself through the whole flood.
    const good = await connect(g.mqttUrl, dev.id, dev.key)
    await good.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    let received = 0
    good.on('message', () => { received++ })
    let published = 0
    let flooding = true
    const goodLoop = (async () => {
      while (flooding) {
        await good.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: published }), { qos: 1 })
        published++
        await sleep(5)
      }
    })()
    const { port } = g.sg.addresses.mqtt
    const wsPort = g.sg.addresses.ws.port
    const sockets: net.Socket[] = []
    try {
      // 1. Held connections from 127.0.0.2, over TCP and to the WebSocket listener: MAX stay open.
      const held = await Promise.all(Array.from({ length: 200 }, (_, i) => rawConnection(i % 2 === 0 ? port : wsPort, '127.0.0.2').catch(() => null)))
      sockets.push(...held.filter((s) => s !== null))
      await sleep(500)
      const openHeld = sockets.filter(isOpen).length
      const refusedAfterHeld = g.sg.broker.stats.connectionsRefusedAddress
      // 2. Churn from 127.0.0.3: connect and leave at once, as fast as it goes, for about a second.
      const started = performance.now()
      let attempts = 0
      while (performance.now() - started < 1000) {
        const batch = await Promise.all(Array.from({ length: 20 }, () => rawConnection(port, '127.0.0.3').catch(() => null)))
        for (const s of batch) s?.destroy()
        attempts += batch.length
      }
      const seconds = (performance.now() - started) / 1000
      const refusedChurn = g.sg.broker.stats.connectionsRefusedAddress - refusedAfterHeld
      const accepted = attempts - refusedChurn
      flooding = false
      await goodLoop
      await waitUntil(() => received >= published, 10_000, 'the good client to receive everything it published')
      const status = (await api(g.httpUrl, ADMIN_KEY, 'GET', '/v1/status')).body
      process.stdout.write(`  flood from one address: ${sockets.length} held connections, ${openHeld} left open (limit ${MAX}); ${attempts} connects in ${seconds.toFixed(1)} s, ${accepted} accepted (rate ${RATE}/s); ` +
        `${status.mqtt.connectionsRefusedAddress as number} closed at accept; the good client published ${published}, received ${received}\n`)
      expect(openHeld).toBe(MAX)
      expect(refusedAfterHeld).toBe(200 - MAX)
      expect(refusedChurn).toBeGreaterThan(0)
      expect(accepted).toBeLessThanOrEqual(RATE + Math.ceil(RATE * seconds) + 1)
      expect(accepted).toBeGreaterThanOrEqual(RATE)
      expect(status.mqtt.connectionsRefusedAddress).toBe(g.sg.broker.stats.connectionsRefusedAddress)
      expect(published).toBeGreaterThan(20)
      expect(received).toBe(published)
      // Closed connections free their place: the address may connect again.
      for (const s of sockets) s.destroy()
      await sleep(200)
      const again = await rawConnection(port, '127.0.0.2')
      sockets.push(again)
      await sleep(200)
      expect(isOpen(again)).toBe(true)
    } finally {
      flooding = false
      for (const s of sockets) s.destroy()
      await good.endAsync(true)
    }
  }, 60_000)
})
