// The MQTT wire fuzzer's own process (test/hostile/mqtt-fuzz.test.ts starts it), so the gateway's
// event loop serves it like any remote client instead of sharing a thread with it. Sends mutated
// frames of valid packets (MQTT 3.1, 3.1.1 and 5) and garbage on many short TCP and WebSocket
// connections until `packets` are sent or `seconds` are up, then prints "sent <n>" and exits.
// Arguments: port wsUrl dataset device key packets seconds seed.
import net from 'node:net'
import mqttPacket from 'mqtt-packet'
import { WebSocket } from 'ws'

const [port, wsUrl, dataset, device, key, packetsArg, secondsArg, seedArg] = process.argv.slice(2) as [string, string, string, string, string, string, string, string]
const PACKETS = Number(packetsArg)
const SECONDS = Number(secondsArg)

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
  const gen = (p: Record<string, unknown>, protocolVersion = 4): Buffer => mqttPacket.generate(p as unknown as mqttPacket.Packet, { protocolVersion })
  return [
    // MQTT 5 (which Aedes refuses) still goes through the parser's property decoding first.
    gen({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, keepalive: 30, clientId: 'fz-5', username: device, password: Buffer.from(key), properties: { sessionExpiryInterval: 3600, receiveMaximum: 10, maximumPacketSize: 1 << 20, topicAliasMaximum: 5, requestResponseInformation: true, userProperties: { a: 'b', c: ['d', 'e'] }, authenticationMethod: 'x', authenticationData: Buffer.from('y') } }, 5),
    gen({ cmd: 'publish', topic: `datasets/${dataset}/${device}`, payload: Buffer.from('{"n":5}'), qos: 1, messageId: 8, retain: false, dup: false, properties: { payloadFormatIndicator: true, messageExpiryInterval: 60, topicAlias: 3, responseTopic: 'r/t', correlationData: Buffer.from('c'), userProperties: { k: 'v' }, subscriptionIdentifier: 7, contentType: 'application/json' } }, 5),
    gen({ cmd: 'subscribe', messageId: 5, subscriptions: [{ topic: `datasets/${dataset}/#`, qos: 1, nl: true, rap: true, rh: 2 }], properties: { subscriptionIdentifier: 9, userProperties: { s: 't' } } }, 5),
    gen({ cmd: 'disconnect', reasonCode: 0x8e, properties: { sessionExpiryInterval: 0, reasonString: 'bye' } }, 5),
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

const seed = Number(seedArg)
const r = rng(seed)
const packets = validPackets(dataset, device, key)
const deadline = Date.now() + SECONDS * 1000
let sent = 0
async function fuzzOne (): Promise<void> {
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
    const s = net.connect(Number(port), '127.0.0.1', () => {
      for (const f of frames) s.write(f)
      setTimeout(() => { s.destroy(); resolve() }, 5 + Math.floor(r() * 20))
    })
    s.on('error', () => resolve())
    s.on('close', () => resolve())
  })
}
await Promise.all(Array.from({ length: 16 }, async () => {
  while (sent < PACKETS && Date.now() < deadline) await fuzzOne()
}))
process.stdout.write(`sent ${sent}\n`)
process.exit(0)
