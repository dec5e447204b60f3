// Hostile identities, topics and payloads: odd client ids and usernames, topics that try to escape a
// dataset, payloads built to break parsers. Each gets a clear refusal, other clients stay served, and
// nothing reaches data outside a grant.
import net from 'node:net'
import mqttPacket from 'mqtt-packet'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  ADMIN_KEY, api, closed, connect, connectRefused, createDataset, createPrincipalWithKey, setGrants, startTestGateway, storedCount, subackCodes, type TestGateway, uniqueId
} from '../helpers.js'

/** Sends a raw CONNECT and returns the CONNACK return code, or 'closed' when the broker hangs up first. */
function rawConnect (port: number, fields: { clientId: Buffer, username?: Buffer, password?: Buffer }): Promise<number | 'closed'> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    const parser = mqttPacket.parser({ protocolVersion: 4 })
    parser.on('packet', (p: mqttPacket.Packet) => { if (p.cmd === 'connack') { resolve(p.returnCode ?? -1); s.destroy() } })
    parser.on('error', () => { resolve('closed'); s.destroy() })
    s.on('data', (d) => parser.parse(d))
    s.on('close', () => resolve('closed'))
    s.on('error', () => resolve('closed'))
    s.on('connect', () => {
      // CONNECT built by hand: client id and username as raw bytes (NUL, invalid UTF-8).
      const str = (b: Buffer): Buffer => Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b])
      const flags = (fields.username !== undefined ? 0x80 : 0) | (fields.password !== undefined ? 0x40 : 0) | 0x02
      const body = Buffer.concat([str(Buffer.from('MQTT')), Buffer.from([4, flags, 0, 30]), str(fields.clientId),
        ...(fields.username !== undefined ? [str(fields.username)] : []), ...(fields.password !== undefined ? [str(fields.password)] : [])])
      const len: number[] = []
      let n = body.length
      do { let b = n % 128; n = Math.floor(n / 128); if (n > 0) b |= 0x80; len.push(b) } while (n > 0)
      s.write(Buffer.concat([Buffer.from([0x10, ...len]), body]))
    })
    setTimeout(() => { resolve('closed'); s.destroy() }, 5000)
  })
}

let gw: TestGateway
let ds: string
let other: string
let dev: { id: string, key: string }
let watcher: { id: string, key: string }
beforeAll(async () => {
  gw = await startTestGateway({ STREAMGATE_AUTH_FAILURES_PER_MINUTE: '0' })
  ds = uniqueId('mine')
  other = uniqueId('theirs')
  await createDataset(gw, ds, { fields: { n: 'long', s: 'string' } })
  await createDataset(gw, other, { fields: { n: 'long' } })
  dev = await createPrincipalWithKey(gw, uniqueId('dev'))
  watcher = await createPrincipalWithKey(gw, uniqueId('svc'), 'service')
  await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish', 'subscribe'] }])
  await setGrants(gw, other, [{ principal: watcher.id, actions: ['subscribe', 'publish'], devices: ['+'] }])
})
afterAll(async () => { await gw?.stop() })

describe('hostile identities', () => {
  it('accepts odd client ids without letting them reach anything, and refuses odd usernames', async () => {
    const port = gw.sg.addresses.mqtt.port
    const key = Buffer.from(dev.key)
    // Allowed characters, harmless: accepted (a client id is not an identity here).
    for (const clientId of ['+', '#', 'a/b', '$SYS']) {
      expect(await rawConnect(port, { clientId: Buffer.from(clientId), username: Buffer.from(dev.id), password: key })).toBe(0)
    }
    // NUL, ill-formed UTF-8 and 64 KiB ids: CONNACK 2 (identifier rejected).
    for (const clientId of [Buffer.from('nul\u0000id'), Buffer.from([0xc3, 0x28]), Buffer.from('x'.repeat(65_535))]) {
      expect(await rawConnect(port, { clientId, username: Buffer.from(dev.id), password: key })).toBe(2)
    }
    expect(await rawConnect(port, { clientId: Buffer.from('c1'), username: Buffer.from([0xff, 0xfe]), password: key })).not.toBe(0)
    for (const username of ['+', '#', `${dev.id}/x`, '$SYS', `${dev.id}\u0000`, 'u'.repeat(65_535)]) {
      expect(await connectRefused(gw.mqttUrl, username, dev.key)).toBe(4)
    }
    // The live-sessions listing still answers well-formed JSON.
    const clients = await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/clients')
    expect(clients.status).toBe(200)
  })
})

describe('hostile topics', () => {
  it('refuses publishes outside the grammar or the grants, and subscriptions that reach beyond a dataset', async () => {
    // A subscriber of the other dataset sees nothing of what follows.
    const w = await connect(gw.mqttUrl, watcher.id, watcher.key)
    const leaked: string[] = []
    w.on('message', (t) => leaked.push(t))
    await w.subscribeAsync(`datasets/${other}/#`, { qos: 1 })

    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    const codes = await subackCodes(c, ['#', '+/+/#', 'datasets/+/#', `datasets/+/${dev.id}`, `$share/g/datasets/${ds}/#`, '$SYS/#', `datasets/${other}/#`, `datasets/${ds}/#`])
    expect(codes).toEqual({ '#': 128, '+/+/#': 128, 'datasets/+/#': 128, [`datasets/+/${dev.id}`]: 128, [`$share/g/datasets/${ds}/#`]: 128, '$SYS/#': 128, [`datasets/${other}/#`]: 128, [`datasets/${ds}/#`]: 1 })
    await c.endAsync()

    const cases: [string, string][] = [
      ['empty levels', `datasets//${dev.id}`],
      ['another dataset', `datasets/${other}/${dev.id}`],
      ['another device', `datasets/${ds}/someone-else`],
      ['$SYS', '$SYS/broker/clients'],
      ['1,000 levels', `datasets/${ds}/${dev.id}/` + Array.from({ length: 997 }, () => 'x').join('/')],
      ['a wildcard', `datasets/${ds}/+`]
    ]
    for (const [what, topic] of cases) {
      const p = await connect(gw.mqttUrl, dev.id, dev.key)
      const gone = closed(p, 3000)
      p.publish(topic, JSON.stringify({ n: 1 }), { qos: 1 })
      await gone.catch(() => { throw new Error(`still connected after publishing to ${what}`) })
    }
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    expect(await storedCount(gw.sg, other)).toBe(0)
    expect(await storedCount(gw.sg, ds)).toBe(0)
    expect(leaked).toEqual([])
    await w.endAsync()
  })
})

describe('hostile payloads', () => {
  it('refuses payloads built to break parsers, counting each reason, and keeps the client connected', async () => {
    const before = (await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/stats`)).body as { rejected: Record<string, number>, stored: number }
    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    const topic = `datasets/${ds}/${dev.id}`
    const hostile: [string | Buffer, string][] = [
      ['['.repeat(100_000) + ']'.repeat(100_000), 'not_an_object'], // deep nesting
      ['{"s":'.repeat(20_000) + '1' + '}'.repeat(20_000), 'wrong_type'],
      ['{"n": ' + '['.repeat(10_000) + '1' + ']'.repeat(10_000) + '}', 'wrong_type'],
      ['{"n": 1e400}', 'out_of_range'], // a number beyond double: Infinity
      ['{"n": 123456789012345678901234567890}', 'out_of_range'],
      ['{"n": "NaN"}', 'wrong_type'],
      ['{"n": "Infinity"}', 'wrong_type'],
      ['{"__proto__": {"admin": true}}', 'unknown_field'],
      ['{"constructor": {"prototype": {"x": 1}}}', 'unknown_field'],
      [Buffer.from([0x7b, 0x22, 0x73, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]), 'invalid_utf8'],
      [Buffer.alloc(300 * 1024, 0x20), 'payload_too_large']
    ]
    for (const [payload] of hostile) await c.publishAsync(topic, payload, { qos: 1 })
    // Duplicate keys: JSON's last one wins, and it must still be valid.
    await c.publishAsync(topic, '{"n": "bad", "n": 7}', { qos: 1 })
    expect(c.connected).toBe(true)
    await c.endAsync()
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    const stats = (await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/stats`)).body as { rejected: Record<string, number>, stored: number }
    const expected: Record<string, number> = { ...before.rejected }
    for (const [, reason] of hostile) expected[reason] = (expected[reason] ?? 0) + 1
    expect(stats.rejected).toEqual(expected)
    expect(stats.stored - before.stored).toBe(1)
    expect(({} as Record<string, unknown>).admin).toBeUndefined() // no prototype was polluted
  })

  it('refuses a 10 MB body over MQTT and over HTTP', async () => {
    const stats = async (): Promise<{ rejected: Record<string, number>, stored: number }> => (await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/stats`)).body
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    const before = await stats()
    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    await c.publishAsync(`datasets/${ds}/${dev.id}`, Buffer.alloc(10 * 1024 * 1024, 0x61), { qos: 1 })
    expect(c.connected).toBe(true)
    await c.endAsync()
    // Refused as too large (counted, nothing stored), not merely survived.
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    const after = await stats()
    expect(after.rejected.payload_too_large ?? 0).toBe((before.rejected.payload_too_large ?? 0) + 1)
    expect(after.stored).toBe(before.stored)
    const r = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, '[' + '1,'.repeat(5 * 1024 * 1024) + '1]')
    expect(r.status).toBe(413)
    expect(r.body.type).toBe('https://streamgate.dev/problems/payload-too-large')
  })
})
