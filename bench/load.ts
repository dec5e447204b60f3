// A load generator process (forked by bench/run.ts, several at once). It runs lean MQTT publishers, a
// subscriber or a connection storm, or an AMQP producer or consumer, talks to the runner over IPC, and
// reports its own CPU time so the runner can tell whether the generators or the broker are the bottleneck.
import amqplib from 'amqplib'
import { LeanClient } from './lean-client.js'

export interface ClientSpec { username?: string, password?: string, topic: string }

export type LoadCommand =
  | { kind: 'subscribe', port: number, username?: string, password?: string, filter: string, qos: 0 | 1, expect: number, timeoutMs: number, sampleEvery: number, sampleAfterMs?: number }
  | { kind: 'publish', port: number, clients: ClientSpec[], qos: 0 | 1, perClient: number, inflight: number, payload: string, ratePerClient?: number, sampleAfterMs?: number }
  | { kind: 'connect', port: number, clients: { username?: string, password?: string }[], concurrency: number }
  /** Persistent messages with a `message_id` each, through a confirm channel, at most `inflight` unconfirmed. */
  | { kind: 'amqp-publish', url: string, exchange: string, routingKey: string, userId?: string, count: number, inflight: number, payload: string }
  /** Consumes `expect` messages from `queue` and acks each (the reference: RabbitMQ without streamgate). */
  | { kind: 'amqp-consume', url: string, queue: string, prefetch: number, expect: number, timeoutMs: number }

export type LoadReport =
  | { kind: 'ready' }
  | { kind: 'subscribed' }
  | { kind: 'subscriber-done', received: number, firstAt: number, lastAt: number, latenciesMs: number[], cpuMs: number }
  | { kind: 'publisher-done', sent: number, acked: number, startedAt: number, endedAt: number, ackLatenciesMs: number[], cpuMs: number }
  | { kind: 'connected', connected: number, failed: number, startedAt: number, endedAt: number, cpuMs: number }
  | { kind: 'error', message: string }

const now = (): number => performance.timeOrigin + performance.now()
/** Sends a report; resolves once it is handed to the IPC channel (an exit before that would drop it). */
const send = (r: LoadReport): Promise<void> => new Promise((resolve) => { if (process.send === undefined) resolve(); else process.send(r, () => resolve()) })

/** CPU time used since `since` (a process.cpuUsage() snapshot), in ms. */
function cpuMs (since: NodeJS.CpuUsage): number {
  const u = process.cpuUsage(since)
  return (u.user + u.system) / 1000
}

const go = (): Promise<void> => new Promise((resolve) => process.once('message', () => resolve()))

/** The payload template with its `"t":0` replaced by a send time: what every publisher sends. */
function stamper (template: string): (t: number) => Buffer {
  const at = template.indexOf('"t":0')
  const head = template.slice(0, at + 4)
  const tail = template.slice(at + 5)
  return (t) => Buffer.from(head + t.toFixed(3) + tail)
}

/** The send time a stamped payload carries (NaN if none). */
function sentAtIn (payload: Buffer): number {
  const i = payload.indexOf('"t":')
  return i < 0 ? NaN : Number.parseFloat(payload.toString('latin1', i + 4, i + 24))
}

async function subscribe (cmd: Extract<LoadCommand, { kind: 'subscribe' }>): Promise<void> {
  const c = await LeanClient.connect({ port: cmd.port, clientId: `sub-${process.pid}`, ...(cmd.username !== undefined ? { username: cmd.username, password: cmd.password ?? '' } : {}) })
  let received = 0
  let firstAt = 0
  let lastAt = 0
  let firstSentAt = 0
  const latencies: number[] = []
  let finish: () => void = () => undefined
  const done = new Promise<void>((resolve) => { finish = resolve })
  c.on('message', (_topic: string, payload: Buffer) => {
    const t = now()
    if (received === 0) firstAt = t
    received++
    lastAt = t
    if (received % cmd.sampleEvery === 0) {
      const sentAt = sentAtIn(payload)
      if (!Number.isNaN(sentAt)) {
        if (firstSentAt === 0) firstSentAt = sentAt
        if (sentAt >= firstSentAt + (cmd.sampleAfterMs ?? 0)) latencies.push(t - sentAt)
      }
    }
    if (received >= cmd.expect) finish()
  })
  const granted = await c.subscribe(cmd.filter, cmd.qos)
  if (granted === 128) throw new Error(`subscription to ${cmd.filter} refused`)
  const cpu0 = process.cpuUsage()
  await send({ kind: 'subscribed' })
  const timer = setTimeout(finish, cmd.timeoutMs)
  let lastCount = -1
  // Also finish when nothing arrived for 3 s after the first message (QoS 0 may drop).
  const idle = setInterval(() => {
    if (received > 0 && received === lastCount) finish()
    lastCount = received
  }, 3000)
  await done
  clearTimeout(timer)
  clearInterval(idle)
  const used = cpuMs(cpu0)
  await c.end()
  await send({ kind: 'subscriber-done', received, firstAt, lastAt, latenciesMs: latencies, cpuMs: used })
}

/**
 * Publishes `perClient` messages per client: as fast as the window of `inflight` unacknowledged
 * messages allows, or at `ratePerClient` msgs/s. The template's `"t":0` carries the send time.
 * Messages sent in the first `sampleAfterMs` are published and counted but not sampled for latency
 * (the subscriber does the same, from the first message's send time).
 */
function publishOne (c: LeanClient, spec: ClientSpec, cmd: Extract<LoadCommand, { kind: 'publish' }>, stats: { acked: number, lat: number[] }): Promise<number> {
  const topic = Buffer.from(spec.topic)
  const stamp = stamper(cmd.payload)
  const sentAt = new Float64Array(cmd.qos === 1 ? 65536 : 0)
  return new Promise((resolve) => {
    let sent = 0
    let waiting = false
    const start = now()
    const onAck = (id: number): void => {
      stats.acked++
      if (stats.acked % 10 === 0 && sentAt[id]! >= start + (cmd.sampleAfterMs ?? 0)) stats.lat.push(now() - sentAt[id]!)
      if (waiting) pump()
    }
    const pump = (): void => {
      waiting = false
      const due = cmd.ratePerClient === undefined ? cmd.perClient : Math.min(cmd.perClient, Math.floor((now() - start) / 1000 * cmd.ratePerClient) + 1)
      // QoS 0 has no acks to pace it: at most `inflight` messages a turn, and none while the socket is backed up.
      const cap = cmd.qos === 0 ? Math.min(due, sent + cmd.inflight) : due
      if (cmd.qos === 0 && c.buffered > 4 * 1024 * 1024) {
        setTimeout(pump, 1)
        return
      }
      while (sent < cap && (cmd.qos === 0 || c.inflight < cmd.inflight)) {
        const t = now()
        const id = c.publish(topic, stamp(t), cmd.qos, cmd.qos === 1 ? onAck : undefined)
        if (cmd.qos === 1) sentAt[id] = t
        sent++
      }
      if (sent >= cmd.perClient) {
        const finish = (): void => { if (cmd.qos === 0 || c.inflight === 0) resolve(sent); else setTimeout(finish, 5) }
        if (cmd.qos === 0) void c.drain().then(finish)
        else finish()
        return
      }
      if (cmd.ratePerClient !== undefined) setTimeout(pump, 1)
      else if (cmd.qos === 1) waiting = true
      else setImmediate(pump) // QoS 0: yield so the socket drains
    }
    pump()
  })
}

async function publish (cmd: Extract<LoadCommand, { kind: 'publish' }>): Promise<void> {
  const clients = await Promise.all(cmd.clients.map((spec, i) => LeanClient.connect({
    port: cmd.port, clientId: `pub-${process.pid}-${i}`, ...(spec.username !== undefined ? { username: spec.username, password: spec.password ?? '' } : {})
  })))
  await send({ kind: 'ready' })
  await go()
  const stats = { acked: 0, lat: [] as number[] }
  const cpu0 = process.cpuUsage()
  const startedAt = now()
  const sent = (await Promise.all(clients.map((c, i) => publishOne(c, cmd.clients[i]!, cmd, stats)))).reduce((a, b) => a + b, 0)
  const endedAt = now()
  const used = cpuMs(cpu0)
  await Promise.all(clients.map((c) => c.end()))
  await send({ kind: 'publisher-done', sent, acked: cmd.qos === 0 ? sent : stats.acked, startedAt, endedAt, ackLatenciesMs: stats.lat, cpuMs: used })
}

/** Opens every connection (`concurrency` at a time) and keeps them open until told to stop. */
async function connectAll (cmd: Extract<LoadCommand, { kind: 'connect' }>): Promise<void> {
  await send({ kind: 'ready' })
  await go()
  const cpu0 = process.cpuUsage()
  const startedAt = now()
  const open: LeanClient[] = []
  let failed = 0
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < cmd.clients.length) {
      const spec = cmd.clients[next]!
      const id = next++
      try {
        open.push(await LeanClient.connect({ port: cmd.port, clientId: `conn-${process.pid}-${id}`, ...(spec.username !== undefined ? { username: spec.username, password: spec.password ?? '' } : {}) }))
      } catch {
        failed++
      }
    }
  }
  await Promise.all(Array.from({ length: cmd.concurrency }, worker))
  const endedAt = now()
  await send({ kind: 'connected', connected: open.length, failed, startedAt, endedAt, cpuMs: cpuMs(cpu0) })
  await go()
  await Promise.all(open.map((c) => c.end()))
}

/**
 * An AMQP producer as the README describes one ("RabbitMQ (AMQP 0-9-1)"): persistent messages with a `message_id`
 * and the producer's `user_id`, on a confirm channel. `publisher-done` counts RabbitMQ's confirms; its
 * latencies are publish→confirm.
 */
async function amqpPublish (cmd: Extract<LoadCommand, { kind: 'amqp-publish' }>): Promise<void> {
  const conn = await amqplib.connect(cmd.url, { noDelay: true })
  const ch = await conn.createConfirmChannel()
  const stamp = stamper(cmd.payload)
  await send({ kind: 'ready' })
  await go()
  const cpu0 = process.cpuUsage()
  const startedAt = now()
  let sent = 0
  let acked = 0
  const lat: number[] = []
  await new Promise<void>((resolve, reject) => {
    const pump = (): void => {
      while (sent < cmd.count && sent - acked < cmd.inflight) {
        const t = now()
        const i = sent++
        ch.publish(cmd.exchange, cmd.routingKey, stamp(t), {
          persistent: true, messageId: `${process.pid}-${i}`, contentType: 'application/json', ...(cmd.userId !== undefined ? { userId: cmd.userId } : {})
        }, (err) => {
          if (err !== null && err !== undefined) { reject(new Error(`RabbitMQ refused message ${i}: ${String(err)}`)); return }
          acked++
          if (acked % 10 === 0) lat.push(now() - t)
          if (acked === cmd.count) resolve()
          else pump()
        })
      }
    }
    pump()
  })
  const endedAt = now()
  const used = cpuMs(cpu0)
  await conn.close()
  await send({ kind: 'publisher-done', sent, acked, startedAt, endedAt, ackLatenciesMs: lat, cpuMs: used })
}

async function amqpConsume (cmd: Extract<LoadCommand, { kind: 'amqp-consume' }>): Promise<void> {
  const conn = await amqplib.connect(cmd.url, { noDelay: true })
  const ch = await conn.createChannel()
  await ch.prefetch(cmd.prefetch)
  let received = 0
  let firstAt = 0
  let lastAt = 0
  const latencies: number[] = []
  let finish: () => void = () => undefined
  const done = new Promise<void>((resolve) => { finish = resolve })
  await ch.consume(cmd.queue, (msg) => {
    if (msg === null) return
    const t = now()
    ch.ack(msg)
    if (received === 0) firstAt = t
    received++
    lastAt = t
    if (received % 10 === 0) {
      const sentAt = sentAtIn(msg.content)
      if (!Number.isNaN(sentAt)) latencies.push(t - sentAt)
    }
    if (received >= cmd.expect) finish()
  }, { noAck: false })
  const cpu0 = process.cpuUsage()
  await send({ kind: 'subscribed' })
  const timer = setTimeout(finish, cmd.timeoutMs)
  await done
  clearTimeout(timer)
  const used = cpuMs(cpu0)
  await conn.close()
  await send({ kind: 'subscriber-done', received, firstAt, lastAt, latenciesMs: latencies, cpuMs: used })
}

const commands: { [K in LoadCommand['kind']]: (cmd: Extract<LoadCommand, { kind: K }>) => Promise<void> } = {
  subscribe, publish, connect: connectAll, 'amqp-publish': amqpPublish, 'amqp-consume': amqpConsume
}

process.once('message', (cmd: LoadCommand) => {
  const run = (commands[cmd.kind] as (c: LoadCommand) => Promise<void>)(cmd)
  run.then(() => process.exit(0), async (err: unknown) => {
    await send({ kind: 'error', message: err instanceof Error ? err.message : String(err) })
    process.exit(1)
  })
})
