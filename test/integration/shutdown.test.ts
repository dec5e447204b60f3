// SIGTERM during QoS 1 ingestion at 5,000 msg/s: the gateway stops accepting connections, lets what
// is in flight reach the journal (and get its PUBACK), drains the sink for up to
// STREAMGATE_SHUTDOWN_TIMEOUT_MS and exits 0 within it; after a restart every acknowledged record is
// stored, exactly once.
import fs from 'node:fs'
import net from 'node:net'
import mqtt from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, createDataset, createPrincipalWithKey, setGrants, sleep, testEnv, tmpDataDir, uniqueId, waitUntil } from '../helpers.js'
import { type Child, killAll, spawnGateway, startChild, stopChild } from '../support/child.js'

afterAll(killAll)

const PUBLISHERS = 5
const RATE = 5000 // a second, all publishers together
const TIMEOUT_MS = 10_000

describe('graceful shutdown', () => {
  it(`on SIGTERM during ${RATE} msg/s QoS 1 ingestion, exits 0 within STREAMGATE_SHUTDOWN_TIMEOUT_MS and loses no acknowledged record`, async () => {
    const dataDir = tmpDataDir()
    const env = { STREAMGATE_SHUTDOWN_TIMEOUT_MS: String(TIMEOUT_MS), STREAMGATE_MQTT_PUBLISH_RATE_DEVICE: '0' }
    const clients: mqtt.MqttClient[] = []
    try {
      const first = await startChild(dataDir, env)
      const http = `http://127.0.0.1:${first.httpPort}`
      const ds = uniqueId('term')
      await createDataset({ httpUrl: http }, ds, { fields: { n: 'long' } })
      const { id: dev, key } = await createPrincipalWithKey({ httpUrl: http }, uniqueId('dev'))
      await setGrants({ httpUrl: http }, ds, [{ principal: dev, actions: ['publish', 'query'] }])

      const acked = new Set<number>()
      let sent = 0
      let unacked = 0
      const timers: NodeJS.Timeout[] = []
      for (let p = 0; p < PUBLISHERS; p++) {
        const c = await mqtt.connectAsync(`mqtt://127.0.0.1:${first.mqttPort}`, { username: dev, password: key, clientId: uniqueId('c'), reconnectPeriod: 0, protocolVersion: 4 })
        c.on('error', () => undefined)
        clients.push(c)
      }
      // Paced: every 10 ms each publisher sends what its share of RATE owes since the start (a late
      // timer catches up), without waiting for PUBACKs.
      const begun = performance.now()
      clients.forEach((c, p) => {
        let i = 0
        timers.push(setInterval(() => {
          if (!c.connected) return
          const due = Math.floor((performance.now() - begun) * RATE / PUBLISHERS / 1000)
          while (i < due) {
            const n = p * 10_000_000 + i++
            sent++
            c.publish(`datasets/${ds}/${dev}`, JSON.stringify({ n }), { qos: 1 }, (err) => { if (err === undefined || err === null) acked.add(n); else unacked++ })
          }
        }, 10))
      })
      await waitUntil(() => acked.size >= 10_000, 30_000, '10,000 acknowledged records')
      const started = performance.now()
      const rate = sent / ((started - begun) / 1000)
      expect(rate, 'publish rate before the SIGTERM').toBeGreaterThan(RATE * 0.9)
      // One SIGTERM only (a second one means "exit now", with code 1).
      const exited = new Promise<number | null>((resolve) => first.proc.once('exit', resolve))
      first.proc.kill('SIGTERM')
      const code = await exited
      const seconds = (performance.now() - started) / 1000
      for (const t of timers) clearInterval(t)
      expect(code).toBe(0)
      expect(seconds * 1000).toBeLessThan(TIMEOUT_MS)
      await waitUntil(() => clients.every((c) => !c.connected), 5000, 'the clients to see the connections close')
      for (const c of clients) c.end(true)

      const second = await startChild(dataDir, env)
      const http2 = `http://127.0.0.1:${second.httpPort}`
      await waitUntil(async () => (await api(http2, ADMIN_KEY, 'GET', '/v1/status')).body.consumers.every((c: { lag: number }) => c.lag === 0), 30_000, 'the store to catch up')
      const records = (await api(http2, key, 'GET', `/v1/datasets/${ds}/records?limit=100000`)).body.records as { n: number }[]
      const stored = records.map((r) => r.n)
      const unique = new Set(stored)
      const missing = [...acked].filter((n) => !unique.has(n)).length
      process.stdout.write(`  SIGTERM at ${Math.round(rate)} msg/s: exit 0 after ${seconds.toFixed(2)} s; ${sent} sent, ${acked.size} acknowledged (${unacked} failed when the connections closed), ${stored.length} stored, ${stored.length - unique.size} duplicates, ${missing} acknowledged but missing\n`)
      expect(stored.length - unique.size, 'duplicates').toBe(0)
      expect(missing, 'acknowledged but not stored').toBe(0)
      expect(await stopChild(second.proc, 'SIGTERM')).toBe(0)
    } finally {
      for (const c of clients) c.end(true)
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  }, 120_000)

  describe('with a sink that cannot drain (QuestDB unreachable)', () => {
    const DRAIN_MS = 3000
    let dead = 0
    const start = async (dataDir: string): Promise<{ child: Child, ds: string }> => {
      const child = await startChild(dataDir, {
        STREAMGATE_SHUTDOWN_TIMEOUT_MS: String(DRAIN_MS),
        STREAMGATE_QUESTDB: `http::addr=127.0.0.1:${dead};protocol_version=1`,
        STREAMGATE_QUESTDB_PG: `postgres://admin:quest@127.0.0.1:${dead}/qdb`,
        STREAMGATE_QUESTDB_TIMEOUT_MS: '500'
      })
      const http = `http://127.0.0.1:${child.httpPort}`
      const ds = uniqueId('drain')
      await createDataset({ httpUrl: http }, ds, { fields: { n: 'long' } })
      const { id: dev, key } = await createPrincipalWithKey({ httpUrl: http }, uniqueId('dev'))
      await setGrants({ httpUrl: http }, ds, [{ principal: dev, actions: ['publish'] }])
      const c = await mqtt.connectAsync(`mqtt://127.0.0.1:${child.mqttPort}`, { username: dev, password: key, reconnectPeriod: 0, protocolVersion: 4 })
      for (let n = 0; n < 10; n++) await c.publishAsync(`datasets/${ds}/${dev}`, JSON.stringify({ n }), { qos: 1 })
      await c.endAsync()
      // Acknowledged, journaled, and not stored: the sink has something to drain.
      await waitUntil(async () => (await api(http, ADMIN_KEY, 'GET', '/v1/status')).body.consumers.some((x: { lag: number }) => x.lag > 0), 5000, 'a sink lag')
      return { child, ds }
    }
    const refused = (port: number): Promise<string> => new Promise((resolve) => {
      const sock = net.connect(port, '127.0.0.1')
      sock.once('connect', () => { sock.destroy(); resolve('connected') })
      sock.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
    })

    beforeAll(async () => {
      // A port nothing listens on: QuestDB "unreachable".
      const probe = net.createServer()
      await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve))
      dead = (probe.address() as net.AddressInfo).port
      await new Promise((resolve) => probe.close(resolve))
    })

    it('refuses new connections while it drains, and exits 0 when STREAMGATE_SHUTDOWN_TIMEOUT_MS is up', async () => {
      const dataDir = tmpDataDir()
      try {
        const { child, ds } = await start(dataDir)
        const exited = new Promise<number | null>((resolve) => child.proc.once('exit', resolve))
        const t0 = performance.now()
        child.proc.kill('SIGTERM')
        await sleep(1000)
        expect(child.proc.exitCode, 'still draining after 1 s').toBeNull()
        expect(await refused(child.mqttPort)).toBe('ECONNREFUSED')
        expect(await refused(child.httpPort)).toBe('ECONNREFUSED')
        const code = await exited
        const ms = performance.now() - t0
        process.stdout.write(`  sink unreachable: SIGTERM to exit ${Math.round(ms)} ms (STREAMGATE_SHUTDOWN_TIMEOUT_MS=${DRAIN_MS}), code ${code}\n`)
        expect(code).toBe(0)
        expect(ms).toBeGreaterThan(DRAIN_MS - 200)
        expect(ms).toBeLessThan(DRAIN_MS + 5000)
        // What was not drained stays in the journal: the next start (here on the embedded store) stores it.
        const again = await startChild(dataDir)
        const http = `http://127.0.0.1:${again.httpPort}`
        await waitUntil(async () => (await api(http, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/stats`)).body.stored >= 10, 15_000, 'the 10 records stored after the restart')
        expect((await api(http, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/stats`)).body.stored).toBe(10)
        expect(await stopChild(again.proc, 'SIGTERM')).toBe(0)
      } finally {
        fs.rmSync(dataDir, { recursive: true, force: true })
      }
    }, 60_000)

    it('exits at once, with code 1, on a second SIGTERM', async () => {
      const dataDir = tmpDataDir()
      try {
        const { child } = await start(dataDir)
        const exited = new Promise<number | null>((resolve) => child.proc.once('exit', resolve))
        child.proc.kill('SIGTERM')
        await sleep(300)
        expect(child.proc.exitCode, 'draining').toBeNull()
        const t0 = performance.now()
        child.proc.kill('SIGTERM')
        const code = await exited
        const ms = performance.now() - t0
        process.stdout.write(`  second SIGTERM: exit ${code} after ${Math.round(ms)} ms\n`)
        expect(code).toBe(1)
        expect(ms).toBeLessThan(1000)
      } finally {
        fs.rmSync(dataDir, { recursive: true, force: true })
      }
    }, 60_000)
  })

  it('answers /readyz 200 only once every listener is bound and the journal is replayed', async () => {
    const dataDir = tmpDataDir()
    try {
      // A journal to replay: 20,000 records from a first life.
      const first = await startChild(dataDir)
      const http1 = `http://127.0.0.1:${first.httpPort}`
      const ds = uniqueId('ready')
      await createDataset({ httpUrl: http1 }, ds, { fields: { n: 'long' } })
      for (let b = 0; b < 20; b++) {
        const r = await api(http1, ADMIN_KEY, 'POST', `/v1/datasets/${ds}/records`, Array.from({ length: 1000 }, (_, i) => ({ n: b * 1000 + i })))
        expect(r.status).toBe(202)
      }
      expect(await stopChild(first.proc, 'SIGTERM')).toBe(0)

      // Fixed ports, so /readyz can be asked from the moment the process starts.
      const ports = await Promise.all([0, 1, 2].map(async () => {
        const probe = net.createServer()
        await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve))
        const port = (probe.address() as net.AddressInfo).port
        await new Promise((resolve) => probe.close(resolve))
        return port
      }))
      const [httpPort, mqttPort, wsPort] = ports as [number, number, number]
      const proc = spawnGateway(testEnv(dataDir, { STREAMGATE_HTTP_PORT: String(httpPort), STREAMGATE_MQTT_PORT: String(mqttPort), STREAMGATE_WS_PORT: String(wsPort) }))
      const seen = { refused: 0, notReady: 0 }
      const reachable = (port: number): Promise<boolean> => new Promise((resolve) => {
        const sock = net.connect(port, '127.0.0.1', () => { sock.destroy(); resolve(true) })
        sock.once('error', () => resolve(false))
      })
      let ready: { ready: boolean, checks: Record<string, unknown> } | null = null
      const deadline = Date.now() + 30_000
      while (ready === null && Date.now() < deadline) {
        const r = await fetch(`http://127.0.0.1:${httpPort}/readyz`).catch(() => null)
        if (r === null) { seen.refused++; await sleep(2); continue }
        const body = await r.json() as { ready: boolean, checks: Record<string, unknown> }
        if (r.status === 503) {
          seen.notReady++
          expect(body.ready).toBe(false)
          await sleep(2)
          continue
        }
        expect(r.status).toBe(200)
        // Ready means every listener takes connections already.
        expect(await reachable(mqttPort), 'MQTT listener when /readyz said ready').toBe(true)
        expect(await reachable(wsPort), 'WebSocket listener when /readyz said ready').toBe(true)
        ready = body
      }
      expect(ready, '/readyz answered 200 within 30 s').not.toBeNull()
      expect(Object.values(ready!.checks).every((v) => v === true), JSON.stringify(ready!.checks)).toBe(true)
      const st = (await api(`http://127.0.0.1:${httpPort}`, ADMIN_KEY, 'GET', '/v1/status')).body
      expect(st.journal.committedSeq).toBeGreaterThanOrEqual(20)
      process.stdout.write(`  /readyz before ready: ${seen.refused} refused connections, ${seen.notReady} answers 503; then 200 with ${JSON.stringify(ready!.checks)}\n`)
      expect(await stopChild(proc, 'SIGTERM')).toBe(0)
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  }, 60_000)
})
