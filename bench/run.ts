// The benchmark runner: `npm run bench` (3 runs per workload), `npm run bench -- --quick` (one short run
// of each, under a minute), `--soak` (adds the 10-minute memory run), `--only=streamgate,aedes`,
// `--workloads=qos1-flood,latency-20k`; `--cluster` runs bench/cluster.ts instead (one node against
// two), `--durability` bench/durability.ts (the journal against RabbitMQ queues); `--replication`
// runs streamgate with STREAMGATE_REPLICATION=rabbitmq-stream. Starts each system under test as its own process on loopback
// (streamgate on the embedded default, bare Aedes, Mosquitto when it is on the PATH), drives it with
// load generator processes (bench/load.ts), and reports msgs/s, latency, broker CPU and RSS, with the
// streamgate/Aedes and streamgate/Mosquitto ratios from the same run. For streamgate it checks that the
// rows stored equal the messages acknowledged. With BENCH_AMQP_URL, streamgate runs with its RabbitMQ
// bridge and `amqp-ingest` measures ingestion over AMQP against RabbitMQ alone (the same producers, a
// plain consumer); QuestDB is used when STREAMGATE_QUESTDB is set (the environment is passed on).
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import amqplib from 'amqplib'
import { ADMIN_KEY, buildIfStale, describeThreads, failures, forkLoad, freePort, http, median, next, now, pct, procStats, root, runMain, stopProc, threadTimes, track, waitForLine } from './common.js'
import type { ClientSpec, LoadCommand, LoadReport } from './load.js'
import { NODE_OPTIONS } from '../bin/node-options.js'
import { checkMachine, describeMachine } from './machine.js'

const argv = process.argv.slice(2)
const quick = argv.includes('--quick')
const soak = argv.includes('--soak')
const replication = argv.includes('--replication')
/** --soak-seconds=N shortens (or lengthens) the soak for experiments; the target is stated for 600. */
const soakSeconds = Number(argv.find((a) => a.startsWith('--soak-seconds='))?.slice(15) ?? 600)
const listArg = (name: string): Set<string> => new Set(argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3).split(',') ?? [])
const only = listArg('only')
const onlyWorkloads = listArg('workloads')
const RUNS = quick ? 1 : 3
const PUBLISHERS = 10
const GENERATORS = 2
const READING = '{"site":"site-0001","temp":21.53,"hum":48.27,"pressure":1013.25,"t":0}'
const BATCH = '[' + Array.from({ length: 100 }, (_, i) => i === 0 ? READING : READING.replace('"t":0', `"t":${i}`)).join(',') + ']'

/**
 * BENCH_AMQP_URL: the RabbitMQ of the AMQP workload (`--replication` uses the local one without it).
 * Its user publishes: streamgate gets a principal of that name, as RabbitMQ vouches for `user_id`.
 */
const amqpUrl = process.env.BENCH_AMQP_URL ?? (replication ? 'amqp://guest:guest@127.0.0.1:5672' : undefined)
const amqpUser = amqpUrl === undefined ? '' : decodeURIComponent(new URL(amqpUrl).username) || 'guest'
/** Exchanges and queues the run declares are named after it, and deleted at its end. */
const amqpPrefix = `bench-${process.pid}`
const AMQP_PREFETCH = 200 // STREAMGATE_AMQP_PREFETCH's default, for the reference consumer too

type SystemName = 'streamgate' | 'aedes' | 'mosquitto' | 'rabbitmq'
const MQTT_SYSTEMS: SystemName[] = ['streamgate', 'aedes', 'mosquitto']

interface Plan {
  pubs: ClientSpec[], sub: { username?: string, password?: string }, filter: string, conns: { username?: string, password?: string }[],
  /** Where an AMQP producer sends the dataset's readings; `queue`: the reference's, drained by a plain consumer. */
  amqp?: { exchange: string, routingKey: string, userId: string, queue?: string }
}

interface Sut {
  readonly name: SystemName
  /** The process whose CPU and RSS are reported (null: not on this machine). */
  readonly pid: number | null
  /** MQTT (0: none). */
  readonly port: number
  prepare (dataset: string): Promise<Plan>
  /** streamgate: rows stored for the dataset once the sink has caught up (waits while it makes progress). */
  stored? (dataset: string, expect: number): Promise<{ stored: number, at: number }>
  /** streamgate with BENCH_AMQP_URL: the bridge's counts of inbound messages acked and rejected so far. */
  amqpCounts? (): Promise<{ acked: number, rejected: number }>
  http? (): string
  stop (): Promise<void>
}

const CONN_PRINCIPALS = 100

/** BENCH_NODE_ARGS, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof", profiles the Node.js systems under test (streamgate, bare Aedes). */
const nodeArgs = (): string[] => (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter((a) => a !== '')

/** What the runner sets for streamgate itself, over the environment it passes on. */
function streamgateEnv (dataDir = ''): Record<string, string> {
  return {
    STREAMGATE_BIND: '127.0.0.1', STREAMGATE_MQTT_PORT: '0', STREAMGATE_WS_PORT: '0', STREAMGATE_HTTP_PORT: '0',
    STREAMGATE_DATA_DIR: dataDir, STREAMGATE_ADMIN_KEY: ADMIN_KEY, STREAMGATE_LOG_LEVEL: 'warn',
    // Provisioning makes ~220 API requests at once; the API limits are not what is measured.
    STREAMGATE_API_RATE: '0', STREAMGATE_API_RATE_PER_ADDRESS: '0',
    ...(amqpUrl !== undefined
      ? {
          STREAMGATE_AMQP_URL: amqpUrl, STREAMGATE_RABBITMQ_AUTH_PORT: '0',
          STREAMGATE_AMQP_INGEST_EXCHANGE: `${amqpPrefix}.ingest`, STREAMGATE_AMQP_RECORDS_EXCHANGE: `${amqpPrefix}.records`, STREAMGATE_AMQP_INGEST_QUEUE: `${amqpPrefix}.ingest`
        }
      : {}),
    // --replication: the journal replicated to a RabbitMQ stream before each acknowledgement.
    ...(replication ? { STREAMGATE_REPLICATION: 'rabbitmq-stream', STREAMGATE_NODE_ID: amqpPrefix } : {})
  }
}

async function startStreamgate (): Promise<Sut> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-bench-'))
  // As `npm start` runs it (bin/node-options.ts); BENCH_NODE_ARGS come after, so they can override.
  const proc = track(spawn(process.execPath, [...NODE_OPTIONS, ...nodeArgs(), path.join(root, 'dist/bin/streamgate.js')], {
    env: { ...process.env, ...streamgateEnv(dataDir) },
    stdio: ['ignore', 'pipe', 'pipe']
  }), 'streamgate')
  const m = await waitForLine(proc, /mqtt [^:]+:(\d+).*http http:\/\/[^:]+:(\d+)/, 'streamgate')
  const api = `http://127.0.0.1:${m[2]}`
  const keys: Record<string, string> = {}
  const ids = [...Array.from({ length: PUBLISHERS }, (_, i) => `pub${i}`), 'sub', ...Array.from({ length: CONN_PRINCIPALS }, (_, i) => `conn${i}`)]
  for (const id of ids) {
    await http(api, 'POST', '/v1/principals', { id, kind: id === 'sub' ? 'service' : 'device' })
    keys[id] = (await http<{ key: string }>(api, 'POST', `/v1/principals/${id}/keys`, {})).key
  }
  // The AMQP producer: RabbitMQ vouches for its user_id, streamgate's grants decide what it may publish.
  if (amqpUrl !== undefined) await http(api, 'POST', '/v1/principals', { id: amqpUser, kind: 'device' })
  return {
    name: 'streamgate',
    pid: proc.pid!,
    port: Number(m[1]),
    http: () => api,
    async prepare (dataset) {
      await http(api, 'POST', '/v1/datasets', { id: dataset, schema: { tags: ['site'], fields: { temp: 'double', hum: 'double', pressure: 'double', t: 'double' } } })
      await http(api, 'PUT', `/v1/datasets/${dataset}/access`, {
        grants: [
          ...Array.from({ length: PUBLISHERS }, (_, i) => ({ principal: `pub${i}`, actions: ['publish'] })), { principal: 'sub', actions: ['subscribe', 'publish'], devices: ['+'] },
          ...(amqpUrl !== undefined ? [{ principal: amqpUser, actions: ['publish'] }] : [])
        ]
      })
      return {
        pubs: Array.from({ length: PUBLISHERS }, (_, i) => ({ username: `pub${i}`, password: keys[`pub${i}`]!, topic: `datasets/${dataset}/pub${i}` })),
        sub: { username: 'sub', password: keys.sub! },
        filter: `datasets/${dataset}/#`,
        conns: Array.from({ length: CONN_PRINCIPALS }, (_, i) => ({ username: `conn${i}`, password: keys[`conn${i}`]! })),
        ...(amqpUrl !== undefined ? { amqp: { exchange: `${amqpPrefix}.ingest`, routingKey: `${dataset}.${amqpUser}`, userId: amqpUser } } : {})
      }
    },
    async amqpCounts () {
      const st = await http<{ amqp?: { acked: number, rejected: number } }>(api, 'GET', '/v1/status')
      if (st.amqp === undefined) throw new Error('streamgate reports no AMQP bridge in /v1/status')
      return { acked: st.amqp.acked, rejected: st.amqp.rejected }
    },
    async stored (dataset, expect) {
      // The store may trail ingestion (the journal holds the difference), and so may the other
      // consumers (with BENCH_AMQP_URL, the records exchange): wait until every one has caught up, so
      // no run starts behind the previous one's backlog. `at` is when the store had it all.
      let at: number | null = null
      const { stored } = await whileProgressing(async () => {
        const { stored } = await http<{ stored: number }>(api, 'GET', `/v1/datasets/${dataset}/stats`)
        const st = await http<{ consumers: { lag: number }[] }>(api, 'GET', '/v1/status')
        if (at === null && stored >= expect) at = now()
        return { stored, lag: st.consumers.reduce((a, c) => a + c.lag, 0) }
      }, (v) => `${v.stored}/${v.lag}`, (v) => at !== null && v.lag === 0, 50)
      return { stored, at: at ?? now() }
    },
    async stop () {
      await stopProc(proc)
      fs.rmSync(dataDir, { recursive: true, force: true })
      if (amqpUrl !== undefined) {
        // Its ingest queue, and with --replication its journal's stream (a queue too).
        const queues = [`${amqpPrefix}.ingest`, ...(replication ? [`streamgate.journal.${amqpPrefix}`] : [])]
        await deleteAmqpObjects(queues, [`${amqpPrefix}.ingest`, `${amqpPrefix}.records`])
      }
    }
  }
}

/** Deletes what a run declared in RabbitMQ (a queue or exchange already gone is fine). */
async function deleteAmqpObjects (queues: string[], exchanges: string[]): Promise<void> {
  const conn = await amqplib.connect(amqpUrl!)
  try {
    for (const name of queues) {
      const ch = await conn.createChannel()
      await ch.deleteQueue(name).catch(() => undefined)
      await ch.close().catch(() => undefined)
    }
    for (const name of exchanges) {
      const ch = await conn.createChannel()
      await ch.deleteExchange(name).catch(() => undefined)
      await ch.close().catch(() => undefined)
    }
  } finally {
    await conn.close()
  }
}

/** RabbitMQ's own process, when it runs here: its CPU and RSS are reported for the reference. */
function rabbitPid (): number | null {
  const host = new URL(amqpUrl!).hostname
  if (host !== '127.0.0.1' && host !== 'localhost') return null
  try {
    const out = execFileSync('rabbitmqctl', ['eval', 'list_to_integer(os:getpid()).'], { encoding: 'utf8', timeout: 30_000, stdio: ['ignore', 'pipe', 'ignore'] })
    const pid = Number(out.trim())
    return Number.isInteger(pid) && pid > 0 ? pid : null
  } catch {
    return null
  }
}

/**
 * The reference for `amqp-ingest`: RabbitMQ alone, the same producers publishing to a durable queue
 * of the run's own, drained by a plain consumer that acks each message (prefetch as streamgate's).
 */
async function startRabbitReference (): Promise<Sut | null> {
  if (amqpUrl === undefined) return null
  const exchange = `${amqpPrefix}.ref`
  const queues: string[] = []
  const conn = await amqplib.connect(amqpUrl)
  const ch = await conn.createChannel()
  await ch.assertExchange(exchange, 'topic', { durable: true })
  return {
    name: 'rabbitmq',
    pid: rabbitPid(),
    port: 0,
    async prepare (dataset) {
      const queue = `${exchange}.${dataset}`
      await ch.assertQueue(queue, { durable: true })
      await ch.bindQueue(queue, exchange, `${dataset}.#`)
      queues.push(queue)
      return { pubs: [], sub: {}, filter: '', conns: [], amqp: { exchange, routingKey: `${dataset}.${amqpUser}`, userId: amqpUser, queue } }
    },
    async stop () {
      await conn.close().catch(() => undefined)
      await deleteAmqpObjects(queues, [exchange])
    }
  }
}

function anonymous (name: 'aedes' | 'mosquitto', proc: ChildProcess, port: number, cleanup = (): void => undefined): Sut {
  return {
    name,
    pid: proc.pid!,
    port,
    async prepare (dataset) {
      return { pubs: Array.from({ length: PUBLISHERS }, (_, i) => ({ topic: `datasets/${dataset}/pub${i}` })), sub: {}, filter: `datasets/${dataset}/#`, conns: [{}] }
    },
    async stop () { await stopProc(proc); cleanup() }
  }
}

async function startAedes (): Promise<Sut> {
  const proc = track(spawn(process.execPath, [...nodeArgs(), '--import', 'tsx', path.join(root, 'bench/aedes-server.ts')], { stdio: ['ignore', 'pipe', 'pipe'] }), 'aedes')
  const m = await waitForLine(proc, /READY (\d+)/, 'aedes')
  return anonymous('aedes', proc, Number(m[1]))
}

async function startMosquitto (): Promise<Sut | null> {
  try { execFileSync('which', ['mosquitto'], { stdio: 'ignore' }) } catch { return null }
  const port = await freePort()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-bench-mosq-'))
  const conf = path.join(dir, 'mosquitto.conf')
  fs.writeFileSync(conf, [
    `listener ${port} 127.0.0.1`, 'allow_anonymous true', 'set_tcp_nodelay true',
    'max_inflight_messages 0', 'max_queued_messages 0', 'max_queued_bytes 0', 'persistence false', 'log_type error'
  ].join('\n') + '\n')
  const proc = track(spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] }), 'mosquitto')
  for (let i = 0; i < 100; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true) })
      s.on('error', () => resolve(false))
    })
    if (up) break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return anonymous('mosquitto', proc, port, () => fs.rmSync(dir, { recursive: true, force: true }))
}

interface RunResult {
  /** The workload's headline rate: msgs/s routed (floods, latency), acknowledged (ingest), readings/s (batch), connects/s. */
  rate: number
  unit: string
  sent: number
  acked: number
  received: number
  stored: number | null
  /** streamgate: rows stored per second, from the first publish to the store catching up. */
  storedRate: number | null
  latencyMs: Latency | null
  ackLatencyMs: Latency | null
  brokerCpuPct: number
  brokerRssMiB: number
  generatorCpuPct: number
  /** Which round of the workload (its runs alternate between systems round by round); set by main. */
  round?: number
}

let datasetNo = 0

interface PubWorkload { qos: 0 | 1, perPublisher: number, subscriber: boolean, ratePerSecond?: number, payload: string, readingsPerMessage: number, sampleEvery: number,
  /** Fixed-rate runs: messages sent in the run's first ms are delivered and counted but not sampled for latency. */
  sampleAfterMs?: number
  /** The unmeasured warm-up: nothing printed. */
  warmUp?: boolean }

/**
 * Reads `read()` every `everyMs` until `done` holds, or until it made no progress (`progress` gave
 * the same key) for 60 s; returns the last reading.
 */
async function whileProgressing<T> (read: () => Promise<T>, progress: (v: T) => string, done: (v: T) => boolean, everyMs: number): Promise<T> {
  let last = ''
  let deadline = Date.now() + 60_000
  for (;;) {
    const v = await read()
    const key = progress(v)
    if (key !== last) {
      last = key
      deadline = Date.now() + 60_000
    }
    if (done(v) || Date.now() > deadline) return v
    await new Promise((resolve) => setTimeout(resolve, everyMs))
  }
}

/**
 * Forks a generator per command and starts them together once every one is ready. `sub`, subscribed
 * already, reports beside them. `before` and `wallStart`: the system's CPU and the clock at the start.
 */
async function startGenerators (sut: Sut, commands: LoadCommand[], sub: ChildProcess | null): Promise<{
  before: ReturnType<typeof procStats>, threadsBefore: ReturnType<typeof threadTimes>, wallStart: number,
  published: Promise<Extract<LoadReport, { kind: 'publisher-done' }>[]>, subscribed: Promise<Extract<LoadReport, { kind: 'subscriber-done' }>> | null
}> {
  const gens = commands.map((cmd) => {
    const p = forkLoad()
    p.send(cmd)
    return p
  })
  await Promise.all(gens.map((p) => next(p, 'ready')))
  const before = procStats(sut.pid)
  const threadsBefore = threadTimes(sut.pid)
  const wallStart = now()
  const published = Promise.all(gens.map((p) => next(p, 'publisher-done')))
  const subscribed = sub !== null ? next(sub, 'subscriber-done') : null
  for (const p of gens) p.send('go')
  return { before, threadsBefore, wallStart, published, subscribed }
}

async function pubRun (sut: Sut, w: PubWorkload): Promise<RunResult> {
  const dataset = `bench_${Date.now().toString(36)}_${++datasetNo}`
  const plan = await sut.prepare(dataset)
  const total = PUBLISHERS * w.perPublisher
  let sub: ChildProcess | null = null
  if (w.subscriber) {
    sub = forkLoad()
    // The subscriber waits as long as the publishing can take (a fixed-rate run: its duration) plus slack.
    const timeoutMs = 180_000 + (w.ratePerSecond !== undefined ? total / w.ratePerSecond * 1000 : 0)
    sub.send({ kind: 'subscribe', port: sut.port, ...plan.sub, filter: plan.filter, qos: w.qos, expect: total, timeoutMs, sampleEvery: w.sampleEvery, sampleAfterMs: w.sampleAfterMs ?? 0 } satisfies LoadCommand)
    await next(sub, 'subscribed')
  }
  const per = PUBLISHERS / GENERATORS
  const { before, threadsBefore, wallStart, published, subscribed } = await startGenerators(sut, Array.from({ length: GENERATORS }, (_, g) => ({
    kind: 'publish', port: sut.port, clients: plan.pubs.slice(g * per, (g + 1) * per), qos: w.qos, perClient: w.perPublisher, inflight: 100, payload: w.payload, sampleAfterMs: w.sampleAfterMs ?? 0,
    ...(w.ratePerSecond !== undefined ? { ratePerClient: w.ratePerSecond / PUBLISHERS } : {})
  })), sub)
  const pubs = await published
  const s = subscribed !== null ? await subscribed : null
  const after = procStats(sut.pid)
  const wall = now() - wallStart
  // BENCH_THREADS=1: where the system's CPU went, thread by thread, and how long each waited for a CPU.
  if (process.env.BENCH_THREADS === '1' && sut.pid !== null && w.warmUp !== true) {
    process.stdout.write(`${sut.name.padEnd(10)} threads, ms a second (CPU / waiting for a CPU): ${describeThreads(sut.pid, threadsBefore, threadTimes(sut.pid), wall)}\n`)
  }
  const startedAt = Math.min(...pubs.map((p) => p.startedAt))
  const endedAt = Math.max(...pubs.map((p) => p.endedAt))
  const acked = pubs.reduce((a, p) => a + p.acked, 0)
  const sent = pubs.reduce((a, p) => a + p.sent, 0)
  let stored: number | null = null
  let storedRate: number | null = null
  if (sut.stored !== undefined) {
    const r = await sut.stored(dataset, (w.qos === 1 ? acked : sent) * w.readingsPerMessage)
    stored = r.stored
    storedRate = Math.round(r.stored / ((r.at - startedAt) / 1000))
  }
  // BENCH_LATENCY_DUMP=<dir>: each run's publish→subscriber samples in arrival order (those sampled:
  // a fixed-rate run's first second is not), to see when a tail happens.
  if (process.env.BENCH_LATENCY_DUMP !== undefined && s !== null) {
    fs.mkdirSync(process.env.BENCH_LATENCY_DUMP, { recursive: true })
    fs.writeFileSync(path.join(process.env.BENCH_LATENCY_DUMP, `latency-${sut.name}-${dataset}.json`), JSON.stringify(s.latenciesMs))
  }
  const lat = [...(s?.latenciesMs ?? [])].sort((a, b) => a - b)
  const ackLat = pubs.flatMap((p) => p.ackLatenciesMs).sort((a, b) => a - b)
  const rate = s !== null ? s.received / (Math.max(1, s.lastAt - startedAt) / 1000) : acked / (Math.max(1, endedAt - startedAt) / 1000)
  return {
    rate: Math.round(rate * w.readingsPerMessage),
    unit: w.readingsPerMessage > 1 ? 'readings/s' : 'msgs/s',
    sent,
    acked,
    received: s?.received ?? 0,
    stored,
    storedRate,
    latencyMs: percentiles(lat),
    ackLatencyMs: w.qos === 1 ? percentiles(ackLat) : null,
    brokerCpuPct: Math.round((after.cpuMs - before.cpuMs) / wall * 100),
    brokerRssMiB: Math.round(after.rssMiB),
    generatorCpuPct: Math.round((pubs.reduce((a, p) => a + p.cpuMs, 0) + (s?.cpuMs ?? 0)) / wall * 100)
  }
}

/** N authenticated connections (streamgate) or anonymous ones, opened as fast as they are accepted. */
async function connectRun (sut: Sut, n: number): Promise<RunResult> {
  const plan = await sut.prepare(`bench_${Date.now().toString(36)}_${++datasetNo}`)
  const before = procStats(sut.pid)
  const gens: ChildProcess[] = []
  for (let g = 0; g < GENERATORS; g++) {
    const p = forkLoad()
    gens.push(p)
    const clients = Array.from({ length: n / GENERATORS }, (_, i) => plan.conns[(g * n / GENERATORS + i) % plan.conns.length]!)
    p.send({ kind: 'connect', port: sut.port, clients, concurrency: 100 } satisfies LoadCommand)
  }
  await Promise.all(gens.map((p) => next(p, 'ready')))
  const wallStart = now()
  const done = gens.map((p) => next(p, 'connected'))
  for (const p of gens) p.send('go')
  const rs = await Promise.all(done)
  const wall = now() - wallStart
  const after = procStats(sut.pid)
  const connected = rs.reduce((a, r) => a + r.connected, 0)
  const failed = rs.reduce((a, r) => a + r.failed, 0)
  const elapsed = Math.max(...rs.map((r) => r.endedAt)) - Math.min(...rs.map((r) => r.startedAt))
  for (const p of gens) p.send('stop')
  await Promise.all(gens.map((p) => new Promise((resolve) => p.once('exit', resolve))))
  if (failed > 0) process.stdout.write(`  ${sut.name}: ${failed} connections failed\n`)
  return {
    rate: Math.round(connected / (elapsed / 1000)), unit: 'connects/s', sent: n, acked: connected, received: 0, stored: null, storedRate: null,
    latencyMs: null, ackLatencyMs: null, brokerCpuPct: Math.round((after.cpuMs - before.cpuMs) / wall * 100), brokerRssMiB: Math.round(after.rssMiB),
    generatorCpuPct: Math.round(rs.reduce((a, r) => a + r.cpuMs, 0) / wall * 100)
  }
}

/** streamgate only: batches of 1,000 readings over HTTP, 4 requests in flight. */
async function httpRun (sut: Sut, total: number): Promise<RunResult | null> {
  if (sut.http === undefined) return null
  const dataset = `bench_${Date.now().toString(36)}_${++datasetNo}`
  await sut.prepare(dataset)
  const api = sut.http()
  const body = '[' + Array.from({ length: 1000 }, () => READING.replace('"t":0', '"device":"pub0","t":0')).join(',') + ']'
  const before = procStats(sut.pid)
  const startedAt = now()
  let sent = 0
  let accepted = 0
  await Promise.all(Array.from({ length: 4 }, async () => {
    while (sent < total) {
      sent += 1000
      const r = await http<{ accepted: number }>(api, 'POST', `/v1/datasets/${dataset}/records`, body)
      accepted += r.accepted
    }
  }))
  const endedAt = now()
  const after = procStats(sut.pid)
  const st = await sut.stored!(dataset, accepted)
  return {
    rate: Math.round(accepted / ((endedAt - startedAt) / 1000)), unit: 'readings/s', sent, acked: accepted, received: 0, stored: st.stored,
    storedRate: Math.round(st.stored / ((st.at - startedAt) / 1000)), latencyMs: null, ackLatencyMs: null,
    brokerCpuPct: Math.round((after.cpuMs - before.cpuMs) / (endedAt - startedAt) * 100), brokerRssMiB: Math.round(after.rssMiB), generatorCpuPct: 0
  }
}

/**
 * Readings over AMQP: 2 producer processes, persistent messages with a message_id on confirm channels,
 * 500 unconfirmed each. The rate is messages taken off RabbitMQ and acked by the consumer (streamgate's
 * bridge, once journaled; or the reference's plain consumer) per second from the first publish; the
 * ack-latency column is publish→RabbitMQ's confirm.
 */
async function amqpRun (sut: Sut, total: number): Promise<RunResult | null> {
  const dataset = `bench_${Date.now().toString(36)}_${++datasetNo}`
  const plan = await sut.prepare(dataset)
  const target = plan.amqp
  if (target === undefined) return null
  let consumer: ChildProcess | null = null
  if (target.queue !== undefined) {
    consumer = forkLoad()
    consumer.send({ kind: 'amqp-consume', url: amqpUrl!, queue: target.queue, prefetch: AMQP_PREFETCH, expect: total, timeoutMs: 300_000 } satisfies LoadCommand)
    await next(consumer, 'subscribed')
  }
  const counts0 = await sut.amqpCounts?.()
  const { before, wallStart, published, subscribed: consumed } = await startGenerators(sut, Array.from({ length: GENERATORS }, () => ({
    kind: 'amqp-publish', url: amqpUrl!, exchange: target.exchange, routingKey: target.routingKey, userId: target.userId, count: total / GENERATORS, inflight: 500, payload: READING
  })), consumer)
  const pubs = await published
  const startedAt = Math.min(...pubs.map((p) => p.startedAt))
  const confirmed = pubs.reduce((a, p) => a + p.acked, 0)
  let taken: number
  let lastAt: number
  let consumerCpuMs = 0
  if (consumed !== null) {
    const s = await consumed
    taken = s.received
    lastAt = s.lastAt
    consumerCpuMs = s.cpuMs
  } else {
    // streamgate's bridge: its counts, until every confirmed message is acked (or one is rejected).
    const c = await whileProgressing(sut.amqpCounts!, (c) => String(c.acked), (c) => c.acked - counts0!.acked >= confirmed || c.rejected !== counts0!.rejected, 20)
    lastAt = now()
    taken = c.acked - counts0!.acked
    if (c.rejected !== counts0!.rejected) failures.push(`amqp-ingest: streamgate rejected ${c.rejected - counts0!.rejected} bench messages`)
  }
  const after = procStats(sut.pid)
  const wall = now() - wallStart
  let stored: number | null = null
  let storedRate: number | null = null
  if (sut.stored !== undefined) {
    const r = await sut.stored(dataset, taken)
    stored = r.stored
    storedRate = Math.round(r.stored / ((r.at - startedAt) / 1000))
  }
  const ackLat = pubs.flatMap((p) => p.ackLatenciesMs).sort((a, b) => a - b)
  return {
    rate: Math.round(taken / (Math.max(1, lastAt - startedAt) / 1000)),
    unit: 'msgs/s',
    sent: pubs.reduce((a, p) => a + p.sent, 0),
    acked: taken,
    received: 0,
    stored,
    storedRate,
    latencyMs: null,
    ackLatencyMs: percentiles(ackLat),
    brokerCpuPct: Math.round((after.cpuMs - before.cpuMs) / wall * 100),
    brokerRssMiB: Math.round(after.rssMiB),
    generatorCpuPct: Math.round((pubs.reduce((a, p) => a + p.cpuMs, 0) + consumerCpuMs) / wall * 100)
  }
}

/** Percentiles of one run, in ms. */
interface Latency { p50: number, p99: number, p999: number }
const percentiles = (sorted: number[]): Latency | null =>
  sorted.length > 0 ? { p50: pct(sorted, 0.5), p99: pct(sorted, 0.99), p999: pct(sorted, 0.999) } : null
/**
 * `full`: left out of --quick, which must stay under a minute. `systems`: the MQTT brokers unless
 * given. `fixedRate`: every system delivers the same rate, so the "vs" columns compare the pub→sub p99
 * (round by round) instead of the rates.
 */
interface Workload { name: string, run: (sut: Sut) => Promise<RunResult | null>, runs: number, systems?: SystemName[], full?: boolean, fixedRate?: boolean }

const q = (n: number, quickN: number): number => quick ? quickN : n
/**
 * Latency is measured in steady state: every run starts fresh generator and subscriber processes, and
 * their first fraction of a second (JIT, connections, the pacing catching up) put every system's whole-run
 * p99 in the first ~2% of the messages (bare Aedes: p99 45 ms in the first 5% of a 20k run, 1-4 ms after).
 */
const LATENCY_WARM_MS = Number(process.env.BENCH_LATENCY_WARM_MS ?? q(1000, 500))
if (!Number.isFinite(LATENCY_WARM_MS) || LATENCY_WARM_MS < 0) {
  // NaN would leave every sample out, and the latency columns empty without a word.
  throw new Error(`BENCH_LATENCY_WARM_MS=${process.env.BENCH_LATENCY_WARM_MS}: give milliseconds (0 or more)`)
}
const allWorkloads: Workload[] = [
  { name: 'qos1-flood', runs: RUNS, run: (s) => pubRun(s, { qos: 1, perPublisher: q(10_000, 2000), subscriber: true, payload: READING, readingsPerMessage: 1, sampleEvery: 10 }) },
  { name: 'qos0-flood', runs: RUNS, run: (s) => pubRun(s, { qos: 0, perPublisher: q(10_000, 2000), subscriber: true, payload: READING, readingsPerMessage: 1, sampleEvery: 10 }) },
  { name: 'qos1-ingest', runs: RUNS, run: (s) => pubRun(s, { qos: 1, perPublisher: q(10_000, 2000), subscriber: false, payload: READING, readingsPerMessage: 1, sampleEvery: 10 }) },
  { name: 'latency-5k', runs: RUNS, full: true, fixedRate: true, run: (s) => pubRun(s, { qos: 1, perPublisher: q(5000, 1000), ratePerSecond: 5000, subscriber: true, payload: READING, readingsPerMessage: 1, sampleEvery: 1, sampleAfterMs: LATENCY_WARM_MS }) },
  { name: 'latency-20k', runs: RUNS, fixedRate: true, run: (s) => pubRun(s, { qos: 1, perPublisher: q(20_000, 4000), ratePerSecond: 20_000, subscriber: true, payload: READING, readingsPerMessage: 1, sampleEvery: 1, sampleAfterMs: LATENCY_WARM_MS }) },
  { name: 'batch-100', runs: RUNS, run: (s) => pubRun(s, { qos: 1, perPublisher: q(1000, 200), subscriber: true, payload: BATCH, readingsPerMessage: 100, sampleEvery: 1 }) },
  { name: 'http-batch', runs: RUNS, full: true, systems: ['streamgate' as const], run: (s) => httpRun(s, q(300_000, 50_000)) },
  { name: 'connections-10k', runs: 1, run: (s) => connectRun(s, q(10_000, 2000)) },
  ...(amqpUrl !== undefined ? [{ name: 'amqp-ingest', runs: RUNS, systems: ['rabbitmq' as const, 'streamgate' as const], run: (s: Sut) => amqpRun(s, q(100_000, 20_000)) }] : []),
  ...(soak ? [{ name: `soak-20k-${soakSeconds / 60}min`, runs: 1, systems: ['streamgate' as const], run: (s: Sut) => soakRun(s, soakSeconds) }] : [])
]
const workloads = allWorkloads.filter((w) => onlyWorkloads.size > 0 ? onlyWorkloads.has(w.name) : !(quick && w.full === true))

/**
 * 20k msg/s for `seconds`, sampling the gateway's RSS every 2 s. Flat means no growth: after a
 * two-minute warm-up, every minute's mean RSS stays within ±10% of the mean over all of them. (Single
 * samples also show the garbage collector's sawtooth, which is not growth: both are printed.)
 */
async function soakRun (sut: Sut, seconds: number): Promise<RunResult> {
  const samples: { at: number, rss: number }[] = []
  const start = Date.now()
  const timer = setInterval(() => samples.push({ at: Date.now() - start, rss: procStats(sut.pid).rssMiB }), 2000)
  // streamgate: where the memory is (main heap, sink thread heap, DuckDB), every 30 s.
  const api = sut.http?.()
  const where = setInterval(() => {
    if (api === undefined) return
    http<{ memory: { rss: number, heapUsed: number, external: number, arrayBuffers: number, sinkThread: { heapUsed: number, store: number | null } | null } }>(api, 'GET', '/v1/status').then((st) => {
      const m = st.memory
      const mib = (n: number | null | undefined): string => n === null || n === undefined ? '?' : (n / 2 ** 20).toFixed(0)
      process.stdout.write(`  rss ${mib(m.rss)} MiB: main heap ${mib(m.heapUsed)}, external ${mib(m.external)} (array buffers ${mib(m.arrayBuffers)}), sink thread heap ${mib(m.sinkThread?.heapUsed)}, duckdb ${mib(m.sinkThread?.store)}\n`)
    }, () => undefined)
  }, 30_000)
  try {
    const r = await pubRun(sut, { qos: 1, perPublisher: 2000 * seconds, ratePerSecond: 20_000, subscriber: true, payload: READING, readingsPerMessage: 1, sampleEvery: 100, sampleAfterMs: LATENCY_WARM_MS })
    const warmUpMs = Math.min(120_000, seconds * 1000 / 5)
    const minutes = new Map<number, number[]>()
    for (const s of samples) {
      if (s.at < warmUpMs) continue
      const m = Math.floor((s.at - warmUpMs) / 60_000)
      let list = minutes.get(m)
      if (list === undefined) minutes.set(m, list = [])
      list.push(s.rss)
    }
    const means = [...minutes.values()].filter((l) => l.length >= 10).map((l) => l.reduce((a, b) => a + b, 0) / l.length)
    const overall = means.reduce((a, b) => a + b, 0) / Math.max(1, means.length)
    const worst = Math.max(...means.map((m) => Math.abs(m - overall) / overall))
    const after = samples.filter((s) => s.at >= warmUpMs).map((s) => s.rss)
    process.stdout.write(`  soak RSS: per-minute means after ${warmUpMs / 1000} s warm-up (MiB) ${means.map((x) => x.toFixed(0)).join(' ')}, ` +
      `farthest ${(worst * 100).toFixed(1)}% from their mean ${overall.toFixed(0)}; single samples ${Math.min(...after).toFixed(0)}–${Math.max(...after).toFixed(0)}\n`)
    if (means.length === 0 || worst > 0.1) failures.push(`soak: a minute's mean RSS is ${(worst * 100).toFixed(1)}% from the mean (target ±10%)`)
    return r
  } finally {
    clearInterval(timer)
    clearInterval(where)
  }
}

interface Summary { median: number, min: number, max: number, runs: RunResult[] }

/** Two systems' runs of the same rounds (runs alternate between systems round by round). */
function sameRounds (a: Summary, b: Summary): [RunResult, RunResult][] {
  return a.runs.flatMap((x): [RunResult, RunResult][] => {
    const y = b.runs.find((r) => r.round === x.round)
    return y !== undefined ? [[x, y]] : []
  })
}

/** The median of round-by-round ratios of the rates, or of the medians when no round has both. */
function pairedRatio (a: Summary, b: Summary): number {
  const r = sameRounds(a, b).map(([x, y]) => x.rate / y.rate)
  return r.length > 0 ? median(r) : a.median / b.median
}

function summarize (runs: RunResult[]): Summary {
  const rates = runs.map((r) => r.rate).sort((a, b) => a - b)
  return { median: pct(rates, 0.5), min: rates[0]!, max: rates.at(-1)!, runs }
}

/** The median of each percentile over the runs that have one (each run's own), and the p99's range. */
function latencyOver (runs: RunResult[], of: (r: RunResult) => Latency | null): (Latency & { p99Min: number, p99Max: number }) | null {
  const all = runs.map(of).filter((l) => l !== null)
  if (all.length === 0) return null
  const p99s = all.map((l) => l.p99)
  return { p50: median(all.map((l) => l.p50)), p99: median(p99s), p999: median(all.map((l) => l.p999)), p99Min: Math.min(...p99s), p99Max: Math.max(...p99s) }
}

/** The median of round-by-round ratios of the pub→sub p99. */
function pairedP99Ratio (a: Summary, b: Summary): number | null {
  const r = sameRounds(a, b).flatMap(([x, y]) =>
    x.latencyMs !== null && y.latencyMs !== null && y.latencyMs.p99 > 0 ? [x.latencyMs.p99 / y.latencyMs.p99] : [])
  return r.length > 0 ? median(r) : null
}

const fmt = (l: ReturnType<typeof latencyOver>): string => l === null
  ? '–'
  : `${l.p50.toFixed(2)} / ${l.p99.toFixed(2)}${l.p99Min !== l.p99Max ? ` (${l.p99Min.toFixed(2)}–${l.p99Max.toFixed(2)})` : ''} / ${l.p999.toFixed(2)}`
/** A CPU or RSS figure; '–' for a system not on this machine. */
const num = (n: number): string => Number.isFinite(n) ? String(n) : '–'

async function main (): Promise<void> {
  buildIfStale()
  const machine = await checkMachine()
  process.stdout.write(describeMachine(machine) + '\n')
  const starters: [SystemName, () => Promise<Sut | null>][] = [['aedes', startAedes], ['streamgate', startStreamgate], ['mosquitto', startMosquitto], ['rabbitmq', startRabbitReference]]
  const results: Record<string, Record<string, Summary>> = {}
  // Every system runs for the whole benchmark and runs alternate between them (aedes, streamgate,
  // mosquitto, aedes, ...), so a machine whose speed drifts (shared VMs do) biases no system, and the
  // ratios can pair each run with its neighbours.
  const suts: Sut[] = []
  try {
    // The Node.js systems start together (their start-up is not measured; one after another it was a
    // third of --quick). Mosquitto after them: it binds a port found free beforehand, which their
    // listen(0) could take meanwhile; RabbitMQ's reference last: it asks rabbitmqctl, synchronously.
    // Runs alternate in the starters' order.
    const wanted = starters.filter(([name]) => only.size === 0 || only.has(name))
    const together = (name: SystemName): boolean => name === 'aedes' || name === 'streamgate'
    const settled = new Map<SystemName, PromiseSettledResult<Sut | null>>()
    const first = wanted.filter(([name]) => together(name))
    ;(await Promise.allSettled(first.map(([, start]) => start()))).forEach((r, i) => settled.set(first[i]![0], r))
    for (const [name, start] of wanted) if (!together(name)) settled.set(name, (await Promise.allSettled([start()]))[0]!)
    for (const [name] of wanted) {
      const r = settled.get(name)
      if (r?.status === 'fulfilled' && r.value !== null) suts.push(r.value)
    }
    const failed = [...settled].flatMap(([name, r]) => r.status === 'rejected' ? [`${name}: ${(r.reason as Error).message}`] : [])
    if (failed.length > 0) throw new Error(`could not start ${failed.join('; ')}`)
    for (const sut of suts) {
      // Warm-up (not measured): the JIT compiles the hot paths before the first measured run.
      if (sut.port !== 0) await pubRun(sut, { qos: 1, perPublisher: q(2000, 1000), subscriber: true, payload: READING, readingsPerMessage: 1, sampleEvery: 100, warmUp: true })
    }
    for (const w of workloads) {
      const runs = new Map<SystemName, RunResult[]>()
      for (let i = 0; i < w.runs; i++) {
        for (const sut of suts) {
          const name = sut.name
          if (!(w.systems ?? MQTT_SYSTEMS).includes(name)) continue
          const r = await w.run(sut)
          if (r === null) continue
          let list = runs.get(name)
          if (list === undefined) runs.set(name, list = [])
          list.push({ ...r, round: i })
          process.stdout.write(`${name.padEnd(10)} ${w.name.padEnd(15)} run ${i + 1}: ${r.rate} ${r.unit}` +
            (r.received > 0 ? `, received ${r.received}` : '') + `, acked ${r.acked}/${r.sent}` +
            (r.stored !== null ? `, stored ${r.stored} (${r.storedRate}/s)` : '') +
            (r.latencyMs !== null ? `, pub→sub p99 ${r.latencyMs.p99.toFixed(2)} ms` : '') +
            (r.ackLatencyMs !== null ? `, pub→PUBACK p99 ${r.ackLatencyMs.p99.toFixed(2)} ms` : '') +
            `, broker CPU ${r.brokerCpuPct}%, RSS ${r.brokerRssMiB} MiB, generators CPU ${r.generatorCpuPct}%\n`)
          const perMsg = w.name === 'batch-100' ? 100 : 1
          if (w.name === 'amqp-ingest' && r.acked !== r.sent) failures.push(`amqp-ingest run ${i + 1} (${name}): ${r.acked} of ${r.sent} published messages consumed`)
          if (name === 'streamgate' && r.stored !== null && w.name !== 'qos0-flood' && r.stored !== r.acked * perMsg) {
            failures.push(`${w.name} run ${i + 1}: stored ${r.stored} != acknowledged ${r.acked * perMsg}`)
          }
        }
      }
      for (const [name, list] of runs) (results[w.name] ??= {})[name] = summarize(list)
    }
  } finally {
    for (const sut of suts) await sut.stop()
  }

  const lines: string[] = []
  const date = new Date().toISOString()
  // The RabbitMQ a run used is part of its command (without the password).
  const given = process.env.BENCH_AMQP_URL !== undefined ? new URL(process.env.BENCH_AMQP_URL) : null
  const amqpVar = given !== null ? `BENCH_AMQP_URL=${given.protocol}//${amqpUser}@${given.host} ` : ''
  // So are the STREAMGATE_* settings it passed on to streamgate (not those it sets itself). A value
  // that could hold a secret (credentials in a URL or a QuestDB config string, keys) or would need
  // quoting is shown as <set>.
  const own = new Set(Object.keys(streamgateEnv()))
  const settings = Object.entries(process.env).filter(([k, v]) => k.startsWith('STREAMGATE_') && v !== undefined && !own.has(k))
    .map(([k, v]) => `${k}=${/KEY|PASSWORD|SECRET|TOKEN|QUESTDB|_URL$/.test(k) || !/^[\w.,:/-]*$/.test(v!) ? '<set>' : v} `).join('')
  const command = `${amqpVar}${settings}npm run bench${argv.length > 0 ? ' -- ' + argv.join(' ') : ''}`
  lines.push(`Command: \`${command}\` on ${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown'}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${date}.`)
  lines.push(`${describeMachine(machine).replace(/^m/, 'M')}.`)
  lines.push(`${PUBLISHERS} publishers in ${GENERATORS} generator processes (lean MQTT clients, bench/lean-client.ts), 1 subscriber on the dataset wildcard where the workload has one; ~100 B JSON readings; streamgate runs with its own Node.js options (bin/node-options.ts), the references with Node's defaults; ${RUNS} run(s) per workload (connections and the soak: 1), alternating between systems after an unmeasured warm-up; ratios are medians of run-by-run ratios, of rates or, for the fixed-rate latency runs, of pub→sub p99s (above 1: slower than the reference); the CPU, RSS and stored/s columns are the median-rate run's (any run's, at a fixed rate); latency columns are medians over the runs of each run's percentiles, with the range of the p99s; fixed-rate runs sample latency in steady state, from their ${LATENCY_WARM_MS / 1000} s on. Rates: floods and latency runs = messages received by the subscriber / time from the first publish to the last delivery; ingest = acknowledged / publishing time; batch = readings.`)
  if (amqpUrl !== undefined) {
    lines.push(`amqp-ingest (RabbitMQ at ${new URL(amqpUrl).host}): 2 AMQP producers, persistent messages with a message_id, 500 unconfirmed each; rate = messages the consumer took and acked (streamgate: once journaled) per second from the first publish; the PUBACK column is publish→RabbitMQ's confirm; "rabbitmq" is RabbitMQ alone (a plain consumer acking each message, prefetch ${AMQP_PREFETCH}), its CPU and RSS RabbitMQ's. streamgate's bridge is on in every workload of this run (every record is also published to its records exchange).`)
  }
  const refs: [SystemName, string][] = [['aedes', 'Aedes'], ['mosquitto', 'Mosquitto'], ...(amqpUrl !== undefined ? [['rabbitmq', 'RabbitMQ alone'] as [SystemName, string]] : [])]
  lines.push('')
  lines.push(`| workload | system | rate median (min–max) | stored/s | publish→subscriber ms p50 / p99 (min–max) / p99.9 | publish→PUBACK ms p50 / p99 (min–max) / p99.9 | broker CPU % | broker RSS MiB | generators CPU % | ${refs.map(([, label]) => `vs ${label}`).join(' | ')} |`)
  lines.push(`| --- | --- | --- | --- | --- | --- | --- | --- | --- | ${refs.map(() => '---').join(' | ')} |`)
  for (const [w, bySys] of Object.entries(results)) {
    const fixedRate = allWorkloads.find((x) => x.name === w)?.fixedRate === true
    for (const [sys, s] of Object.entries(bySys)) {
      const mid = s.runs.find((r) => r.rate === s.median) ?? s.runs[0]!
      const ratio = (other: string): string => {
        const o = bySys[other]
        if (o === undefined || sys === other) return '–'
        if (!fixedRate) return pairedRatio(s, o).toFixed(2) + '×'
        const p99 = pairedP99Ratio(s, o)
        return p99 === null ? '–' : `p99 ${p99.toFixed(2)}×`
      }
      lines.push(`| ${w} | ${sys} | ${s.median} ${mid.unit} (${s.min}–${s.max}) | ${mid.storedRate ?? '–'} | ${fmt(latencyOver(s.runs, (r) => r.latencyMs))} | ${fmt(latencyOver(s.runs, (r) => r.ackLatencyMs))} | ${num(mid.brokerCpuPct)} | ${num(mid.brokerRssMiB)} | ${mid.generatorCpuPct} | ${refs.map(([ref]) => ratio(ref)).join(' | ')} |`)
    }
  }
  const table = lines.join('\n')
  process.stdout.write('\n' + table + '\n')

  const resultsDir = path.join(root, 'bench/results')
  fs.mkdirSync(resultsDir, { recursive: true })
  const file = path.join(resultsDir, `${date.slice(0, 19).replaceAll(':', '-')}${quick ? '-quick' : ''}.json`)
  fs.writeFileSync(file, JSON.stringify({ date, command, quick, machine: { cores: os.cpus().length, model: os.cpus()[0]?.model, memGiB: os.totalmem() / 2 ** 30, node: process.version, check: machine }, results, failures }, null, 2))
  const md = path.join(root, 'BENCHMARKS.md')
  const current = fs.existsSync(md) ? fs.readFileSync(md, 'utf8') : '# Benchmarks\n\n<!-- bench:latest:start -->\n<!-- bench:latest:end -->\n'
  const section = `<!-- bench:latest:start -->\n## Latest run${quick ? ' (quick)' : ''}\n\n${table}\n<!-- bench:latest:end -->`
  fs.writeFileSync(md, current.replace(/<!-- bench:latest:start -->[\s\S]*<!-- bench:latest:end -->/, section))
  process.stdout.write(`\nwrote ${path.relative(root, file)} and BENCHMARKS.md\n`)
  if (failures.length > 0) {
    process.stderr.write('FAILED:\n  ' + failures.join('\n  ') + '\n')
    process.exitCode = 1
  }
}

if (argv.includes('--cluster')) {
  await import('./cluster.js') // one node against two (bench/cluster.ts)
} else if (argv.includes('--durability')) {
  await import('./durability.js') // the journal's cost against RabbitMQ queues (bench/durability.ts)
} else if (argv.includes('--sink')) {
  await import('./sink-drain.js') // the sink alone: journal to embedded store (bench/sink-drain.ts)
} else {
  runMain(main)
}
