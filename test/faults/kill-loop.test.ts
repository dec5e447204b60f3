// kill -9 of the gateway at random points while devices publish over MQTT (QoS 1) and a service posts
// HTTP batches, again and again on the same data directory. Afterwards every acknowledged record is
// stored exactly once. STREAMGATE_FAULT_KILLS sets the number of kills (3 here, 20 in npm run test:soak).
import fs from 'node:fs'
import mqtt from 'mqtt'
import { afterAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, createDataset, createPrincipalWithKey, setGrants, tmpDataDir, uniqueId, waitUntil } from '../helpers.js'
import { type Child, killAll, startChild, stopChild } from '../support/child.js'

const KILLS = Number(process.env.STREAMGATE_FAULT_KILLS ?? 3)
const HTTP_BASE = 1_000_000_000 // HTTP records are numbered from here, MQTT ones from 0

afterAll(killAll)

/** Publishes and posts until killed; returns what was sent and what was acknowledged. */
async function ingestUntilKilled (child: Child, ds: string, dev: { id: string, key: string }, next: { mqtt: number, http: number }, killAfterAcks: number): Promise<{ acked: number[], sent: number }> {
  const acked: number[] = []
  let sent = 0
  let alive = true
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${child.mqttPort}`, { username: dev.id, password: dev.key, clientId: uniqueId('c'), reconnectPeriod: 0, protocolVersion: 4 })
  client.on('error', () => undefined)
  const gone = new Promise<void>((resolve) => client.once('close', () => { alive = false; resolve() }))
  const mqttLoop = (async () => {
    const inFlight = new Set<Promise<void>>()
    while (alive) {
      const n = next.mqtt++
      sent++
      const p = client.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n }), { qos: 1 })
        .then(() => { acked.push(n) }, () => undefined).finally(() => { inFlight.delete(p) })
      inFlight.add(p)
      if (inFlight.size >= 50) await Promise.race([...inFlight, gone])
    }
  })()
  const httpLoop = (async () => {
    while (alive) {
      const first = next.http
      next.http += 200
      sent += 200
      const records = Array.from({ length: 200 }, (_, i) => ({ device: dev.id, n: first + i }))
      const r = await api(`http://127.0.0.1:${child.httpPort}`, dev.key, 'POST', `/v1/datasets/${ds}/records`, records).catch(() => null)
      if (r?.status === 202) for (let i = 0; i < 200; i++) acked.push(first + i)
    }
  })()
  await waitUntil(() => acked.length >= killAfterAcks, 60_000, `${killAfterAcks} acknowledged records`)
  child.proc.kill('SIGKILL')
  await waitUntil(() => !alive, 10_000, 'the client to see the connection drop')
  await Promise.all([mqttLoop, httpLoop])
  client.end(true)
  return { acked, sent }
}

describe('kill -9 in a loop', () => {
  it(`keeps every acknowledged record exactly once across ${KILLS} kills during MQTT and HTTP ingestion`, async () => {
    const dataDir = tmpDataDir()
    try {
      let child = await startChild(dataDir)
      const http = (): string => `http://127.0.0.1:${child.httpPort}`
      const ds = uniqueId('kill')
      await createDataset({ httpUrl: http() }, ds, { fields: { n: 'long' } })
      const dev = await createPrincipalWithKey({ httpUrl: http() }, uniqueId('dev'))
      await setGrants({ httpUrl: http() }, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])

      const acked = new Set<number>()
      let sent = 0
      const next = { mqtt: 0, http: HTTP_BASE }
      for (let k = 0; k < KILLS; k++) {
        // A random point: somewhere between a few hundred and a few thousand acknowledgements in.
        const r = await ingestUntilKilled(child, ds, dev, next, 300 + Math.floor(Math.random() * 2500))
        for (const n of r.acked) acked.add(n)
        sent += r.sent
        child = await startChild(dataDir)
      }
      await waitUntil(async () => (await api(http(), ADMIN_KEY, 'GET', '/v1/status')).body.consumers[0].lag === 0, 60_000, 'the store to catch up')
      const records = (await api(http(), dev.key, 'GET', `/v1/datasets/${ds}/records?limit=100000`)).body.records as { n: number }[]
      const stored = records.map((x) => x.n)
      const unique = new Set(stored)
      const missing = [...acked].filter((n) => !unique.has(n))
      process.stdout.write(`  kill -9 loop: ${KILLS} kills, ${sent} records sent, ${acked.size} acknowledged, ${stored.length} stored, ${stored.length - unique.size} duplicates, ${missing.length} acknowledged but missing\n`)
      expect(stored.length - unique.size, 'duplicates').toBe(0)
      expect(missing, 'acknowledged but not stored').toEqual([])
      expect(stored.length).toBeLessThan(100_000)
      expect(await stopChild(child.proc, 'SIGTERM')).toBe(0)
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  }, 300_000)
})
