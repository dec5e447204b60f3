// A fuzzer for the MQTT listeners (TCP and WebSocket): valid packets of every kind, mutated (corrupted
// lengths and flags, remaining-length overflows, truncated frames, flipped bytes, random garbage), sent
// on many short connections for a bounded count and time. The gateway must not crash, its memory must
// stay bounded, and a well-behaved client beside the fuzzer keeps publishing and receiving.
// STREAMGATE_FUZZ_PACKETS and STREAMGATE_FUZZ_SECONDS set the bounds (npm run test:soak raises them).
import net from 'node:net'
import mqttPacket from 'mqtt-packet'
import { WebSocket } from 'ws'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { api, ADMIN_KEY, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, storedCount, type TestGateway, uniqueId, waitUntil } from '../helpers.js'

const PACKETS = Number(process.env.STREAMGATE_FUZZ_PACKETS ?? 20_000)
const SECONDS = Number(process.env.STREAMGATE_FUZZ_SECONDS ?? 20)

/** A small deterministic PRNG (xorshift32), so a failure can be replayed from its seed. */
function rng (seed: number): () => number {
  let x = seed >>> 0 || 1
  return () => {
    x ^= x << 13; x >>>= 0
    x ^= x >>> 17
    x ^= x << 5; x >>>= 0
    return x / 0x1_0000_0000
  }
}

function validPackets (dataset: string, device: string, key: string): Buffer[] {
  const gen = (p: Record<string, unknown>): Buffer => mqttPacket.generate(p as unknown as mqttPacket.Packet)
  return [
    gen({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 30, clientId: 'fz', username: device, password: Buffer.from(key) }),
    gen({ cmd: 'connect', protocolId: 'MQIsdp', protocolVersion: 3, clean: false, keepalive: 0, clientId: 'fz-31', will: { topic: 'datasets/x/y', payload: Buffer.from('w'), qos: 1, retain: true } }),
    gen({ cmd: 'publish', topic: `datasets/${dataset}/${device}`, payload: Buffer.from('{"n":1}'), qos: 1, messageId: 7, retain: false, dup: false }),
    gen({ cmd: 'publish', topic: `datasets/${dataset}/${device}`, payload: Buffer.from('[{"n":1},{"n":2}]'), qos: 0, retain: true, dup: false }),
    gen({ cmd: 'publish', topic: '$SYS/broker/uptime', payload: Buffer.from('x'), qos: 2, messageId: 9, retain: false, dup: false }),
    gen({ cmd: 'subscribe', messageId: 3, subscriptions: [{ topic: '#', qos: 1 }, { topic: `datasets/${dataset}/+`, qos: 0 }, { topic: '$share/g/datasets/#', qos: 1 }] }),
    gen({ cmd: 'unsubscribe', messageId: 4, unsubscriptions: ['#'] }),
    gen({ cmd: 'puback', messageId: 7 }),
    gen({ cmd: 'pubrec', messageId: 9 }),
    gen({ cmd: 'pubrel', messageId: 9 }),
    gen({ cmd: 'pubcomp', messageId: 9 }),
    gen({ cmd: 'pingreq' }),
    gen({ cmd: 'disconnect' })
  ]
}

/** One mutation of a valid packet, or garbage. */
function mutate (r: () => number, packets: Buffer[]): Buffer {
  const base = Buffer.from(packets[Math.floor(r() * packets.length)]!)
  switch (Math.floor(r() * 9)) {
    case 0: { // flip a few bytes
      for (let i = 0; i < 1 + Math.floor(r() * 4); i++) base[Math.floor(r() * base.length)] = Math.floor(r() * 256)
      return base
    }
    case 1: return base.subarray(0, Math.floor(r() * base.length)) // truncated frame
    case 2: { // remaining length that overflows (5+ continuation bytes) or claims far more than follows
      const overflow = Buffer.from([base[0]!, 0xff, 0xff, 0xff, 0xff, 0x7f])
      return Buffer.concat([overflow, base.subarray(2)])
    }
    case 3: { base[1] = 0x7f; return base } // a length that does not match
    case 4: { base[0] = (base[0]! & 0xf0) | Math.floor(r() * 16); return base } // reserved flags
    case 5: { // corrupt a string length prefix inside
      if (base.length > 4) base.writeUInt16BE(Math.floor(r() * 0xffff), 2 + Math.floor(r() * (base.length - 4)))
      return base
    }
    case 6: return Buffer.from(Array.from({ length: 1 + Math.floor(r() * 300) }, () => Math.floor(r() * 256))) // garbage
    case 7: return Buffer.concat([base, base, base.subarray(0, 3)]) // several frames and a partial one in one write
    default: return base
  }
}

let gw: TestGateway
beforeAll(async () => {
  // Fuzz connections fail logins on purpose: no login-failure lockout for this test's address.
  gw = await startTestGateway({ STREAMGATE_AUTH_FAILURES_PER_MINUTE: '0', STREAMGATE_CONNECT_TIMEOUT_MS: '2000' })
})
afterAll(async () => { await gw?.stop() })

describe('MQTT wire fuzzing', () => {
  it(`survives ${PACKETS} mutated packets over TCP and WebSocket while a good client keeps working`, async () => {
    const ds = uniqueId('fuzz')
    await createDataset(gw, ds, { fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const svc = await createPrincipalWithKey(gw, uniqueId('svc'), 'service')
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }, { principal: svc.id, actions: ['subscribe'] }])
    const packets = validPackets(ds, dev.id, dev.key)
    const rssBefore = process.memoryUsage().rss

    // The well-behaved pair.
    const sub = await connect(gw.mqttUrl, svc.id, svc.key)
    let received = 0
    sub.on('message', () => { received++ })
    await sub.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    const pub = await connect(gw.mqttUrl, dev.id, dev.key)
    let published = 0
    let stop = false
    const good = (async () => {
      while (!stop) {
        await pub.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: published }), { qos: 1 })
        published++
      }
    })()

    const seed = Number(process.env.STREAMGATE_FUZZ_SEED ?? Date.now() % 1_000_000)
    const r = rng(seed)
    const deadline = Date.now() + SECONDS * 1000
    let sent = 0
    const wsUrl = gw.wsUrl
    const port = gw.sg.addresses.mqtt.port
    const fuzzOne = async (): Promise<void> => {
      const frames = Array.from({ length: 1 + Math.floor(r() * 8) }, () => mutate(r, packets))
      sent += frames.length
      if (r() < 0.25) {
        await new Promise<void>((resolve) => {
          const ws = new WebSocket(wsUrl, 'mqtt')
          const done = (): void => { ws.terminate(); resolve() }
          ws.on('open', () => { for (const f of frames) ws.send(f); setTimeout(done, 20) })
          ws.on('error', done)
          ws.on('close', done)
          setTimeout(done, 1000)
        })
        return
      }
      await new Promise<void>((resolve) => {
        const s = net.connect(port, '127.0.0.1', () => {
          for (const f of frames) s.write(f)
          setTimeout(() => { s.destroy(); resolve() }, 5 + Math.floor(r() * 20))
        })
        s.on('error', () => resolve())
        s.on('close', () => resolve())
      })
    }
    const workers = Array.from({ length: 16 }, async () => {
      while (sent < PACKETS && Date.now() < deadline) await fuzzOne()
    })
    await Promise.all(workers)
    stop = true
    await good
    await pub.endAsync()

    // Still serving: a new client connects, publishes, and everything the good client sent is there.
    const again = await connect(gw.mqttUrl, dev.id, dev.key)
    await again.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: -1 }), { qos: 1 })
    await again.endAsync()
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    const deadlineReceive = Date.now() + 10_000
    while (received < published + 1 && Date.now() < deadlineReceive) await new Promise((resolve) => setTimeout(resolve, 20))
    await sub.endAsync()
    const growthMiB = (process.memoryUsage().rss - rssBefore) / 2 ** 20
    process.stdout.write(`  fuzz: seed ${seed}, ${sent} packets on many connections in ${SECONDS} s at most; good client published ${published}, received ${received}; RSS +${growthMiB.toFixed(0)} MiB\n`)
    expect(sent).toBeGreaterThanOrEqual(Math.min(PACKETS, 2000))
    expect(published).toBeGreaterThan(100)
    // The good client's records are stored (the fuzzer's own valid publishes may add some: at least as many).
    expect(await storedCount(gw.sg, ds)).toBeGreaterThanOrEqual(published + 1)
    expect(received).toBeGreaterThanOrEqual(published + 1)
    expect(growthMiB).toBeLessThan(300)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', '/healthz')).status).toBe(200)
    await waitUntil(() => gw.sg.broker.sessions().length === 0, 5000, 'every fuzz session to be gone')
  }, 120_000)
})
