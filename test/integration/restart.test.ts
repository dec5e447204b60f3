import fs from 'node:fs'
import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import { startStreamgate } from '../../bin/app.js'
import { loadConfig } from '../../config/index.js'
import { api, connect, testEnv, tmpDataDir, uniqueId, storedCount } from '../helpers.js'

describe('restart', () => {
  it('generates the admin key once, and keeps datasets, principals, keys, grants and records across restarts', async () => {
    const dataDir = tmpDataDir()
    const env = { ...testEnv(dataDir), STREAMGATE_ADMIN_KEY: undefined }
    const log = pino({ level: 'silent' })
    try {
      const a = await startStreamgate(loadConfig(env), { log })
      const adminKey = a.generatedAdminKey
      expect(adminKey).toMatch(/^sg_[A-Za-z0-9_-]{43}$/)
      const http = `http://127.0.0.1:${a.addresses.http.port}`
      const ds = uniqueId('keep')
      const dev = uniqueId('dev')
      expect((await api(http, adminKey, 'POST', '/v1/datasets', { id: ds, schema: { fields: { temp: 'double' } } })).status).toBe(201)
      expect((await api(http, adminKey, 'POST', '/v1/principals', { id: dev, kind: 'device' })).status).toBe(201)
      const key = (await api(http, adminKey, 'POST', `/v1/principals/${dev}/keys`, { description: 'field unit' })).body.key as string
      expect((await api(http, adminKey, 'PUT', `/v1/datasets/${ds}/access`, { grants: [{ principal: dev, actions: ['publish', 'query'] }] }, { 'if-match': '*' })).status).toBe(200)
      // publish over MQTT-over-WebSocket (ws 8 forced under websocket-stream)
      const c = await connect(`ws://127.0.0.1:${a.addresses.ws.port}/mqtt`, dev, key)
      for (let i = 0; i < 10; i++) await c.publishAsync(`datasets/${ds}/${dev}`, JSON.stringify({ temp: i }), { qos: 1 })
      await c.endAsync()
      await a.close()

      const b = await startStreamgate(loadConfig(env), { log })
      try {
        expect(b.generatedAdminKey).toBeNull()
        const http2 = `http://127.0.0.1:${b.addresses.http.port}`
        expect((await api(http2, adminKey, 'GET', `/v1/datasets/${ds}`)).status).toBe(200)
        const stats = await api(http2, key, 'GET', `/v1/datasets/${ds}/stats`)
        expect(stats.body.stored).toBe(10)
        const c2 = await connect(`mqtt://127.0.0.1:${b.addresses.mqtt.port}`, dev, key)
        await c2.publishAsync(`datasets/${ds}/${dev}`, JSON.stringify({ temp: 99 }), { qos: 1 })
        await c2.endAsync()
        await b.consumers[0]!.waitFor(b.journal.committedSeq)
        expect(await storedCount(b, ds)).toBe(11)
      } finally {
        await b.close()
      }
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  })
})
