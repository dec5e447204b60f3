// The write coalescer holds a client's socket corked while a commit's PUBACKs and Aedes's deliveries
// (each written in a setImmediate of its own) are written, then lets them leave together.
import net from 'node:net'
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

  it('holds again in a later cycle while an earlier one is still to be released, and leaves nothing corked', async () => {
    const { client, chunks } = await pair()
    const w = new WriteCoalescer()
    w.hold(client)
    await immediate() // the first cycle is armed: its release is queued
    w.hold(client) // a new cycle of its own
    expect(client.writableCorked).toBe(2)
    client.write('x')
    for (let i = 0; i < 4; i++) await immediate()
    expect(client.writableCorked).toBe(0)
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(Buffer.concat(chunks).toString()).toBe('x')
  })

  it('releases everything held at once on releaseAll, and skips destroyed or uncorkable streams', async () => {
    const { client } = await pair()
    const w = new WriteCoalescer()
    w.hold(client)
    w.releaseAll()
    expect(client.writableCorked).toBe(0)
    w.hold({}) // not a stream
    const gone = new net.Socket()
    gone.destroy()
    w.hold(gone)
    expect(gone.writableCorked).toBe(0)
    for (let i = 0; i < 3; i++) await immediate()
    expect(client.writableCorked).toBe(0)
  })
})
