// kill -9 of the gateway process while a device publishes QoS 1: after a restart every message that
// received a PUBACK is stored, exactly once.
import fs from 'node:fs'
import net from 'node:net'
import mqtt from 'mqtt'
import { afterAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, testEnv, tmpDataDir, uniqueId, waitUntil } from '../helpers.js'
import { killAll, spawnGateway, startChild, stopChild } from '../support/child.js'

afterAll(killAll)

describe('the streamgate process', () => {
  it('prints where it listens and, on a first start only, the generated admin key; warns of a misspelt variable', async () => {
    const dataDir = tmpDataDir()
    try {
      const first = await startChild(dataDir, { STREAMGATE_ADMIN_KEY: undefined, STREAMGATE_MAX_PAYLAOD: '1024' })
      expect(first.output()).toContain('streamgate: warning: STREAMGATE_MAX_PAYLAOD is not a streamgate setting and is ignored (did you mean STREAMGATE_MAX_PAYLOAD?)')
      await waitUntil(() => first.output().includes('STREAMGATE_ADMIN_KEY='), 5000, 'the admin key to be printed')
      const key = /STREAMGATE_ADMIN_KEY=(sg_\S+)/.exec(first.output())?.[1]
      expect(key).toBeDefined()
      expect((await api(`http://127.0.0.1:${first.httpPort}`, key!, 'GET', '/v1/status')).status).toBe(200)
      expect(await stopChild(first.proc, 'SIGTERM')).toBe(0)
      const second = await startChild(dataDir, { STREAMGATE_ADMIN_KEY: undefined })
      expect(second.output()).not.toContain('STREAMGATE_ADMIN_KEY=')
      expect((await api(`http://127.0.0.1:${second.httpPort}`, key!, 'GET', '/v1/status')).status).toBe(200)
      expect(await stopChild(second.proc, 'SIGTERM')).toBe(0)
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  })

  it('falls back from a taken default MQTT port, but fails on a taken explicit one', async () => {
    // 1883 is Mosquitto's on these machines; hold it ourselves where it is free.
    const holder = net.createServer()
    await new Promise<void>((resolve) => { holder.once('error', () => resolve()); holder.listen(1883, '127.0.0.1', () => resolve()) })
    const dataDir = tmpDataDir()
    try {
      const fallback = await startChild(dataDir, { STREAMGATE_MQTT_PORT: undefined })
      expect(fallback.mqttPort).not.toBe(1883)
      expect(fallback.output()).toContain('default port 1883 is in use')
      expect(await stopChild(fallback.proc, 'SIGTERM')).toBe(0)
      const proc = spawnGateway(testEnv(dataDir, { STREAMGATE_MQTT_PORT: '1883' }))
      let err = ''
      proc.stderr!.on('data', (d: Buffer) => { err += d.toString() })
      expect(await new Promise<number | null>((resolve) => proc.once('exit', resolve))).toBe(1)
      expect(err).toMatch(/mqtt: cannot listen on 127\.0\.0\.1:1883/)
    } finally {
      holder.close()
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  })

  it('refuses to start on a bad variable, naming it', async () => {
    const proc = spawnGateway({ STREAMGATE_MQTT_PORT: 'nope' })
    let err = ''
    proc.stderr!.on('data', (d: Buffer) => { err += d.toString() })
    const code = await new Promise<number | null>((resolve) => proc.once('exit', resolve))
    expect(code).toBe(2)
    expect(err).toContain('STREAMGATE_MQTT_PORT')
  })
})

describe('crash safety', () => {
  it('keeps every acknowledged message across kill -9, exactly once', async () => {
    const dataDir = tmpDataDir()
    try {
      const first = await startChild(dataDir)
      const http = `http://127.0.0.1:${first.httpPort}`
      const ds = uniqueId('crash')
      const dev = uniqueId('dev')
      expect((await api(http, ADMIN_KEY, 'POST', '/v1/datasets', { id: ds, schema: { fields: { count: 'long', temp: 'double' } } })).status).toBe(201)
      expect((await api(http, ADMIN_KEY, 'POST', '/v1/principals', { id: dev, kind: 'device' })).status).toBe(201)
      const key = (await api(http, ADMIN_KEY, 'POST', `/v1/principals/${dev}/keys`, {})).body.key as string
      expect((await api(http, ADMIN_KEY, 'PUT', `/v1/datasets/${ds}/access`, { grants: [{ principal: dev, actions: ['publish', 'query'] }] }, { 'if-match': '*' })).status).toBe(200)

      const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${first.mqttPort}`, { username: dev, password: key, clientId: uniqueId('c'), reconnectPeriod: 0, protocolVersion: 4 })
      client.on('error', () => undefined)
      const acked = new Set<number>()
      let sent = 0
      let alive = true
      // In-flight publishes are never settled once the connection is gone (no reconnect): race them with it.
      const gone = new Promise<void>((resolve) => client.once('close', () => { alive = false; resolve() }))
      const publisher = (async () => {
        const inFlight = new Set<Promise<void>>()
        while (alive && sent < 200_000) {
          const i = sent++
          const p = client.publishAsync(`datasets/${ds}/${dev}`, JSON.stringify({ count: i, temp: i / 10 }), { qos: 1 })
            .then(() => { acked.add(i) }, () => undefined)
            .finally(() => { inFlight.delete(p) })
          inFlight.add(p)
          if (inFlight.size >= 100) await Promise.race([...inFlight, gone])
        }
      })()
      await waitUntil(() => acked.size >= 3000, 30_000, '3,000 acknowledged messages')
      first.proc.kill('SIGKILL')
      await waitUntil(() => !alive, 10_000, 'the client to see the connection drop')
      await publisher
      client.end(true)
      expect(acked.size).toBeGreaterThanOrEqual(3000)

      const second = await startChild(dataDir)
      const http2 = `http://127.0.0.1:${second.httpPort}`
      await waitUntil(async () => {
        const s = await api(http2, ADMIN_KEY, 'GET', '/v1/status')
        return s.body.consumers[0].lag === 0
      }, 30_000, 'the store to catch up with the journal')
      const stats = await api(http2, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/stats`)
      const records = await api(http2, key, 'GET', `/v1/datasets/${ds}/records?limit=100000`)
      const counts = (records.body.records as { count: number }[]).map((r) => r.count)
      const unique = new Set(counts)
      expect(unique.size, 'no duplicates').toBe(counts.length)
      expect(stats.body.stored).toBe(counts.length)
      const missing = [...acked].filter((i) => !unique.has(i))
      expect(missing, 'acknowledged but not stored').toEqual([])
      // Unacknowledged messages may or may not have made it; nothing beyond what was sent exists.
      expect(counts.every((c) => c < sent)).toBe(true)

      // A graceful stop exits 0.
      expect(await stopChild(second.proc, 'SIGTERM')).toBe(0)
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  })
})
