import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { ConfigError, loadConfig } from '../../config/index.js'

describe('config', () => {
  it('applies the documented defaults', () => {
    const c = loadConfig({})
    expect(c.bind).toBe('0.0.0.0')
    expect(c.ports).toEqual({ mqtt: 1883, ws: 8083, http: 8080, mqtts: 8883, wss: 8084 })
    expect(c.dataDir).toBe('./data')
    expect(c.limits.maxPayload).toBe(256 * 1024)
    expect(c.tls).toBeNull()
    expect(Object.isFrozen(c.limits)).toBe(true)
  })

  it('names the variable and what is allowed when a value is bad', () => {
    const bad = (env: Record<string, string>): string => {
      try {
        loadConfig(env)
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError)
        return (err as Error).message
      }
      throw new Error('accepted')
    }
    expect(bad({ STREAMGATE_MQTT_PORT: '70000' })).toMatch(/STREAMGATE_MQTT_PORT.*65535/)
    expect(bad({ STREAMGATE_MAX_PAYLOAD: 'lots' })).toMatch(/STREAMGATE_MAX_PAYLOAD/)
    expect(bad({ STREAMGATE_LOG_LEVEL: 'loud' })).toMatch(/STREAMGATE_LOG_LEVEL.*info/)
    expect(bad({ STREAMGATE_ADMIN_KEY: 'short' })).toMatch(/STREAMGATE_ADMIN_KEY.*16/)
    expect(bad({ STREAMGATE_TLS_CERT: '/x.pem' })).toMatch(/STREAMGATE_TLS_KEY/)
  })

  it('reads a JSON file named by STREAMGATE_CONFIG; variables win', () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'sg-cfg-')), 'c.json')
    fs.writeFileSync(file, JSON.stringify({ STREAMGATE_MQTT_PORT: 1999, STREAMGATE_HTTP_PORT: 9999 }))
    const c = loadConfig({ STREAMGATE_CONFIG: file, STREAMGATE_HTTP_PORT: '0' })
    expect(c.ports.mqtt).toBe(1999)
    expect(c.ports.http).toBe(0)
    expect(() => loadConfig({ STREAMGATE_CONFIG: file + '.missing' })).toThrow(/STREAMGATE_CONFIG/)
    fs.writeFileSync(file, JSON.stringify({ STREAMGATE_MQTT_PROT: 1999 }))
    expect(() => loadConfig({ STREAMGATE_CONFIG: file })).toThrow(/STREAMGATE_MQTT_PROT: not a streamgate setting/)
  })
})
