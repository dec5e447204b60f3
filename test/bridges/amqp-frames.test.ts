// amqplib writes every frame its channels queue (each publish, each ack) to the socket with a write of
// its own. connectAmqp corks the socket for each pass of amqplib's multiplexer, so a burst leaves in a
// few writev calls. Counted on the socket, against the machine's RabbitMQ, beside a plain amqplib
// connection that shows what the count is without it.
import type { Socket } from 'node:net'
import amqplib from 'amqplib'
import type { ChannelWrapper } from 'amqp-connection-manager'
import { afterAll, describe, expect, it } from 'vitest'
import { coalesceFrames, connectAmqp } from '../../bridges/amqp/bridge.js'
import { uniqueId } from '../helpers.js'
import { AMQP } from '../support/rabbit.js'

const BURST = 200

/** Counts the socket's system-call-level writes (one _write or _writev each). */
function countWrites (socket: Socket): { n: number } {
  const count = { n: 0 }
  const s = socket as unknown as { _write: (...a: unknown[]) => void, _writev: (...a: unknown[]) => void }
  const write = s._write
  const writev = s._writev
  s._write = function (...a: unknown[]) { count.n++; return write.apply(this, a) }
  s._writev = function (...a: unknown[]) { count.n++; return writev.apply(this, a) }
  return count
}

const socketOf = (model: amqplib.ChannelModel): Socket => (model.connection as unknown as { stream: Socket }).stream

describe('AMQP frames leave in few writes', () => {
  const exchange = uniqueId('sgtest-frames')
  const cleanup: (() => Promise<unknown>)[] = []
  afterAll(async () => {
    for (const c of cleanup.reverse()) await c().catch(() => undefined)
  })

  it(`${BURST} confirmed publishes through connectAmqp: a handful of writes; through plain amqplib, about one each`, async () => {
    const manager = connectAmqp(AMQP, exchange, 15)
    cleanup.push(() => manager.close())
    const socket = await new Promise<Socket>((resolve) => manager.once('connect', ({ connection }: { connection: amqplib.ChannelModel }) => resolve(socketOf(connection))))
    const ch: ChannelWrapper = manager.createChannel({ confirm: true, setup: (c: amqplib.ConfirmChannel) => c.assertExchange(exchange, 'topic', { durable: false }) })
    await ch.waitForConnect()
    cleanup.push(async () => {
      const conn = await amqplib.connect(AMQP)
      const c = await conn.createChannel()
      await c.deleteExchange(exchange)
      await conn.close()
    })
    const corked = countWrites(socket)
    await Promise.all(Array.from({ length: BURST }, (_, i) => ch.publish(exchange, 'k', Buffer.from(String(i)))))
    expect(corked.n).toBeGreaterThan(0)
    expect(corked.n).toBeLessThan(BURST / 10)

    // The same burst on a plain amqplib connection: the measure sees one write per frame.
    const plain = await amqplib.connect(AMQP, { noDelay: true })
    cleanup.push(() => plain.close())
    const pc = await plain.createConfirmChannel()
    const uncorked = countWrites(socketOf(plain))
    for (let i = 0; i < BURST; i++) pc.publish(exchange, 'k', Buffer.from(String(i)))
    await pc.waitForConfirms()
    expect(uncorked.n).toBeGreaterThanOrEqual(BURST / 2)
  })

  it('leaves a connection it does not recognise as it is', () => {
    expect(coalesceFrames(undefined)).toBe(false)
    expect(coalesceFrames({ muxer: {} })).toBe(false)
  })
})
