import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { ConfigError, configSchema, loadConfig, unknownVariables } from '../../config/index.js'

describe('config', () => {
  it('applies the documented defaults', () => {
    const c = loadConfig({})
    expect(c.bind).toBe('0.0.0.0')
    expect(c.ports).toEqual({ mqtt: 1883, ws: 8083, http: 8080, mqtts: 8883, wss: 8084, https: 8443 })
    expect(c.dataDir).toBe('./data')
    expect(c.limits.maxPayload).toBe(256 * 1024)
    expect(c.tls).toBeNull()
    expect([c.storeMemory, c.storeCache]).toEqual(['512MB', '64MB'])
    expect(Object.isFrozen(c.limits)).toBe(true)
  })

  it('fans out once written, but once durable when the journal is replicated, unless STREAMGATE_FANOUT says', () => {
    const amqp = { STREAMGATE_AMQP_URL: 'amqp://guest:guest@127.0.0.1:5672', STREAMGATE_REPLICATION: 'rabbitmq-stream' }
    expect(loadConfig({}).fanout).toBe('written')
    expect(loadConfig(amqp).fanout).toBe('durable')
    expect(loadConfig({ ...amqp, STREAMGATE_FANOUT: 'written' }).fanout).toBe('written')
    expect(loadConfig({ STREAMGATE_FANOUT: 'durable' }).fanout).toBe('durable')
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
    expect(bad({ STREAMGATE_STORE_CACHE: '1GB' })).toMatch(/STREAMGATE_STORE_CACHE \(1GB\): .*at most STREAMGATE_STORE_MEMORY \(512MB\)/)
    expect(bad({ STREAMGATE_STORE_CACHE: '1KB' })).toMatch(/STREAMGATE_STORE_CACHE \(1KB\): at least 16MB/)
    // Unset, the cache follows a smaller memory limit (a configuration valid before the setting came).
    expect(loadConfig({ STREAMGATE_STORE_MEMORY: '32MB' }).storeCache).toBe('32MB')
    expect(bad({ STREAMGATE_STORE_MEMORY: '500MiB', STREAMGATE_STORE_CACHE: '0.6GB' })).toMatch(/STREAMGATE_STORE_CACHE/)
    expect(loadConfig({ STREAMGATE_STORE_MEMORY: '500MiB', STREAMGATE_STORE_CACHE: '0.5GB' }).storeCache).toBe('0.5GB')
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
    // An empty value is no value (the default applies, as for an empty variable), never 0 (unlimited).
    fs.writeFileSync(file, JSON.stringify({ STREAMGATE_API_RATE: '', STREAMGATE_MQTT_PORT: null }))
    expect(loadConfig({ STREAMGATE_CONFIG: file }).api.ratePerPrincipal.device).toBe(100)
    fs.writeFileSync(file, JSON.stringify({ STREAMGATE_API_RATE: false }))
    expect(() => loadConfig({ STREAMGATE_CONFIG: file })).toThrow(/STREAMGATE_API_RATE/)
    fs.writeFileSync(file, JSON.stringify({ STREAMGATE_API_RATE: [5] }))
    expect(() => loadConfig({ STREAMGATE_CONFIG: file })).toThrow(/STREAMGATE_API_RATE: give a single value/)
  })

  it('documents every variable in the README', () => {
    const readme = fs.readFileSync(path.join(import.meta.dirname, '../../README.md'), 'utf8')
    const documented = new Set<string>()
    for (const row of readme.split('\n').filter((l) => l.startsWith('| `STREAMGATE_'))) {
      const cell = row.split('|')[1]!
      const names = [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!)
      const first = names[0]!
      for (const n of names) {
        // "`STREAMGATE_X_DEVICE`, `…_SERVICE`": the rest share the first one's prefix.
        documented.add(n.startsWith('…_') ? first.slice(0, first.lastIndexOf('_')) + n.slice(1) : n)
      }
    }
    const missing = Object.keys(configSchema.shape).filter((k) => !documented.has(k))
    expect(missing).toEqual([])
    const unknown = [...documented].filter((k) => !(k in configSchema.shape))
    expect(unknown).toEqual([])
  })

  it('reads YAML: the documented example, as shipped (all commented) and with every default uncommented', () => {
    const example = path.join(import.meta.dirname, '../../config/streamgate.yaml')
    const text = fs.readFileSync(example, 'utf8')
    const keys = [...text.matchAll(/^# (STREAMGATE_[A-Z0-9_]+):/gm)].map((m) => m[1]!)
    expect(keys.sort()).toEqual(Object.keys(configSchema.shape).sort())
    const defaults = loadConfig({})
    expect(loadConfig({ STREAMGATE_CONFIG: example })).toEqual(defaults)
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-yaml-'))
    try {
      const uncommented = text.replace(/^# (STREAMGATE_[A-Z0-9_]+: .+)$/gm, '$1')
      fs.writeFileSync(path.join(dir, 'all.yaml'), uncommented)
      // the same values, only the ports now count as set on purpose
      expect({ ...loadConfig({ STREAMGATE_CONFIG: path.join(dir, 'all.yaml') }), explicitPorts: null }).toEqual({ ...defaults, explicitPorts: null })
      fs.writeFileSync(path.join(dir, 'some.yaml'), 'STREAMGATE_MQTT_PORT: 1999\nSTREAMGATE_BIND: 127.0.0.1\n')
      const c = loadConfig({ STREAMGATE_CONFIG: path.join(dir, 'some.yaml'), STREAMGATE_BIND: '::1' })
      expect([c.ports.mqtt, c.bind]).toEqual([1999, '::1'])
      // An emptied value is unset (its default), not 0 (which would mean unlimited, or any port).
      fs.writeFileSync(path.join(dir, 'empty.yaml'), 'STREAMGATE_AUTH_FAILURES_PER_MINUTE:\nSTREAMGATE_MQTT_PORT:\n')
      const e = loadConfig({ STREAMGATE_CONFIG: path.join(dir, 'empty.yaml') })
      expect([e.mqttLimits.authFailuresPerMinute, e.ports.mqtt, e.explicitPorts.has('mqtt')]).toEqual([60, 1883, false])
      fs.writeFileSync(path.join(dir, 'bad.yaml'), '- a list\n')
      expect(() => loadConfig({ STREAMGATE_CONFIG: path.join(dir, 'bad.yaml') })).toThrow(/STREAMGATE_CONFIG: .* not a YAML or JSON mapping/)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it('names STREAMGATE_ variables that are not settings, with the closest setting when one is near', () => {
    expect(unknownVariables({
      STREAMGATE_MQTT_PROT: '1884', STREAMGATE_MAX_PAYLAOD: '1', STREAMGATE_SOMETHING_ELSE: 'x', STREAMGATE_MQTT_PORT: '1884',
      STREAMGATE_CONFIG: 'config/streamgate.yaml', PATH: '/bin', streamgate_lower: 'x'
    })).toEqual([
      { name: 'STREAMGATE_MAX_PAYLAOD', suggestion: 'STREAMGATE_MAX_PAYLOAD' },
      { name: 'STREAMGATE_MQTT_PROT', suggestion: 'STREAMGATE_MQTT_PORT' },
      { name: 'STREAMGATE_SOMETHING_ELSE', suggestion: null }
    ])
    expect(unknownVariables({})).toEqual([])
  })
})
