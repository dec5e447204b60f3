// A load generator process (forked by bench/run.ts). It runs MQTT publishers or a subscriber, talks to
// the runner over IPC and reports its own CPU time, so the runner can tell when the generator, not the
// broker, is the bottleneck.
import mqtt, { type MqttClient } from 'mqtt'

export type LoadCommand =
  | { kind: 'subscribe', url: string, username?: string, password?: string, filter: string, qos: 0 | 1, expect: number, timeoutMs: number }
  | { kind: 'publish', url: string, clients: { username?: string, password?: string, topic: string }[], qos: 0 | 1, perClient: number, inflight: number, payload: string, ratePerClient?: number }

export type LoadReport =
  | { kind: 'ready' }
  | { kind: 'subscribed' }
  | { kind: 'subscriber-done', received: number, firstAt: number, lastAt: number, latenciesMs: number[], cpuMs: number }
  | { kind: 'publisher-done', sent: number, acked: number, startedAt: number, endedAt: number, ackLatenciesMs: number[], cpuMs: number }
  | { kind: 'error', message: string }

const now = (): number => performance.timeOrigin + performance.now()
const send = (r: LoadReport): void => { process.send?.(r) }

/** CPU time used since `since` (a process.cpuUsage() snapshot), in ms. */
function cpuMs (since: NodeJS.CpuUsage): number {
  const u = process.cpuUsage(since)
  return (u.user + u.system) / 1000
}

async function subscribe (cmd: Extract<LoadCommand, { kind: 'subscribe' }>): Promise<void> {
  const c = await mqtt.connectAsync(cmd.url, { ...(cmd.username !== undefined ? { username: cmd.username, password: cmd.password } : {}), reconnectPeriod: 0, protocolVersion: 4, clean: true })
  let received = 0
  let firstAt = 0
  let lastAt = 0
  // Latency samples: every message's send time is in the payload (`"t":<ms>`); keep one in 10.
  const latencies: number[] = []
  let finish: () => void = () => undefined
  const done = new Promise<void>((resolve) => { finish = resolve })
  c.on('message', (_topic, payload) => {
    const t = now()
    if (received === 0) firstAt = t
    received++
    lastAt = t
    if (received % 10 === 0) {
      const s = payload.toString('latin1')
      const i = s.indexOf('"t":')
      if (i >= 0) latencies.push(t - Number.parseFloat(s.slice(i + 4)))
    }
    if (received >= cmd.expect) finish()
  })
  await c.subscribeAsync(cmd.filter, { qos: cmd.qos })
  const cpu0 = process.cpuUsage()
  send({ kind: 'subscribed' })
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
  await c.endAsync(true)
  send({ kind: 'subscriber-done', received, firstAt, lastAt, latenciesMs: latencies, cpuMs: cpuMs(cpu0) })
}

/**
 * Publishes `perClient` messages keeping at most `inflight` unacknowledged (QoS 1) or unwritten (QoS 0).
 * No promise or closure per message except for the one in ten whose ack latency is sampled.
 */
function publishOne (c: MqttClient, topic: string, cmd: Extract<LoadCommand, { kind: 'publish' }>, stats: { acked: number, lat: number[] }): Promise<number> {
  const at = cmd.payload.indexOf('"t":0')
  const head = cmd.payload.slice(0, at + 4)
  const tail = cmd.payload.slice(at + 5)
  const interval = cmd.ratePerClient !== undefined ? 1000 / cmd.ratePerClient : 0
  const opts = { qos: cmd.qos }
  return new Promise((resolve) => {
    let sent = 0
    let outstanding = 0
    let pumping = false
    const start = now()
    const acked = (err?: Error): void => {
      outstanding--
      if (err === undefined || err === null) stats.acked++
      if (!pumping) pump()
    }
    const pump = (): void => {
      pumping = true
      while (sent < cmd.perClient && outstanding < cmd.inflight) {
        if (interval > 0) {
          const wait = start + sent * interval - now()
          if (wait > 1) {
            setTimeout(pump, wait)
            pumping = false
            return
          }
        }
        const t = now()
        sent++
        outstanding++
        if (cmd.qos === 1 && sent % 10 === 0) {
          c.publish(topic, head + t.toFixed(3) + tail, opts, (err) => { stats.lat.push(now() - t); acked(err) })
        } else {
          c.publish(topic, head + t.toFixed(3) + tail, opts, acked)
        }
      }
      pumping = false
      if (sent >= cmd.perClient && outstanding === 0) resolve(sent)
    }
    pump()
  })
}

async function publish (cmd: Extract<LoadCommand, { kind: 'publish' }>): Promise<void> {
  const clients = await Promise.all(cmd.clients.map((cl) => mqtt.connectAsync(cmd.url, {
    ...(cl.username !== undefined ? { username: cl.username, password: cl.password } : {}), reconnectPeriod: 0, protocolVersion: 4
  })))
  send({ kind: 'ready' })
  await new Promise<void>((resolve) => process.once('message', () => resolve()))
  const stats = { acked: 0, lat: [] as number[] }
  const cpu0 = process.cpuUsage()
  const startedAt = now()
  const sent = (await Promise.all(clients.map((c, i) => publishOne(c, cmd.clients[i]!.topic, cmd, stats)))).reduce((a, b) => a + b, 0)
  const endedAt = now()
  const used = cpuMs(cpu0)
  await Promise.all(clients.map((c) => c.endAsync()))
  send({ kind: 'publisher-done', sent, acked: stats.acked, startedAt, endedAt, ackLatenciesMs: stats.lat, cpuMs: used })
}

process.once('message', (cmd: LoadCommand) => {
  const run = cmd.kind === 'subscribe' ? subscribe(cmd) : publish(cmd)
  run.then(() => process.exit(0), (err: unknown) => {
    send({ kind: 'error', message: err instanceof Error ? err.message : String(err) })
    process.exit(1)
  })
})
