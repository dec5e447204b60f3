// The write coalescer holds a client's socket corked while a commit's PUBACKs and Aedes's deliveries
// (each written in a setImmediate of its own) are written, then lets them leave together.
import net from 'node:net'
import { PassThrough } from 'node:stream'
import { afterEach, describe, expect, it } from 'vitest'
import { WriteCoalescer } from '../../gateway/broker.js'

const immediate = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

let closers: (() => void)[] = []
afterEach(() => { for (const c of closers) c(); closers = [] })

async function pair (): Promise<{ client: net.Socket, chunks: Buffer[] }> {
  const chunks: Buffer[] = []
  const server = net.createServer((s) => s.on('data', (d: Buffer) => chunks.push(d)))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
  client.setNoDelay(true)
  await new Promise((resolve) => client.once('connect', resolve))
  closers.push(() => { client.destroy(); server.close() })
  return { client, chunks }
}

describe('WriteCoalescer', () => {
  it('holds writes made in setImmediates queued after the hold, and lets them leave in one write', async () => {
    const { client, chunks } = await pair()
    const w = new WriteCoalescer()
    w.hold(client)
    w.hold(client) // once per cycle
    for (let i = 0; i < 100; i++) setImmediate(() => client.write(Buffer.alloc(10, i)))
    await immediate()
    expect(client.writableCorked).toBe(1)
    expect(client.writableLength).toBe(1000)
    await immediate()
    expect(client.writableCorked).toBe(0)
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(Buffer.concat(chunks).length).toBe(1000)
    expect(chunks.length).toBe(1)
  })

  it('releases in the turn after the hold, right after the writes queued with it, not a turn later', async () => {
    const { client, chunks } = await pair()
    const w = new WriteCoalescer()
    // As a commit's fan-out: the hold, then Aedes' write of the delivery in a setImmediate, from one callback.
    const corked = await new Promise<number>((resolve) => setImmediate(() => {
      w.hold(client)
      for (let i = 0; i < 10; i++) setImmediate(() => client.write(Buffer.alloc(10, i)))
      process.nextTick(() => setImmediate(() => resolve(client.writableCorked)))
    }))
    expect(corked).toBe(0)
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(Buffer.concat(chunks).length).toBe(100)
    expect(chunks.length).toBe(1)
  })

  it('flushes within a few turns a socket held again every turn (steady load), instead of keeping it corked', async () => {
    const { client, chunks } = await pair()
    const w = new WriteCoalescer()
    // Every turn for 200 turns: a hold, then a write queued after it (as Aedes delivers).
    let corkedTurns = 0
    let longest = 0
    for (let turn = 0; turn < 200; turn++) {
      w.hold(client)
      setImmediate(() => client.write(Buffer.alloc(100, turn & 0xff)))
      await immediate()
      if (client.writableCorked > 0) longest = Math.max(longest, ++corkedTurns)
      else corkedTurns = 0
      expect(client.writableCorked).toBeLessThanOrEqual(1) // corked once at most
    }
    for (let i = 0; i < 6; i++) await immediate()
    expect(client.writableCorked).toBe(0)
    expect(w.holding).toBe(0)
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(Buffer.concat(chunks).length).toBe(200 * 100)
    // Released every few turns (a cycle, and one carry), so writes still leave in groups.
    expect(longest).toBeLessThanOrEqual(4)
    expect(chunks.length).toBeLessThan(200)
  })

  it('does not carry a socket with CARRY_BYTES waiting into another cycle', async () => {
    const { client } = await pair()
    const w = new WriteCoalescer()
    w.hold(client)
    setImmediate(() => client.write(Buffer.alloc(70 * 1024)))
    await immediate() // armed, written
    w.hold(client) // held again after the arm
    await immediate() // released: 70 KiB waiting, so not carried
    expect(client.writableCorked).toBe(0)
    expect(w.holding).toBe(0)
  })

  it('releases every held socket on releaseAll, armed cycles included, so a shutdown loses no PUBACK', async () => {
    const { client, chunks } = await pair()
    const w = new WriteCoalescer()
    w.hold(client)
    client.write('puback')
    await immediate() // the cycle is armed; its release is queued for the next turn
    w.releaseAll()
    expect(client.writableCorked).toBe(0)
    client.destroySoon() // as a closing broker ends the connection
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(Buffer.concat(chunks).toString()).toBe('puback')
    for (let i = 0; i < 3; i++) await immediate()
    expect(w.holding).toBe(0)
  })

  it('skips streams that are not sockets (MQTT over WebSocket) and destroyed sockets', async () => {
    const w = new WriteCoalescer()
    const ws = new PassThrough()
    w.hold(ws)
    expect(ws.writableCorked).toBe(0)
    w.hold({})
    const gone = new net.Socket()
    gone.destroy()
    w.hold(gone)
    expect(gone.writableCorked).toBe(0)
    expect(w.holding).toBe(0)
  })
})
