// One node against two (`npm run bench -- --cluster`, `--quick` for a short run): streamgate nodes
// sharing the machine's Redis (sessions, fan-out, rates) and PostgreSQL (metadata), each its own
// process on loopback, driven by the same load generators as bench/run.ts. Workloads: authenticated
// connections spread over the nodes (connects/s), and fan-out (publishers spread over the nodes,
// subscribers spread over the nodes, every message to every subscriber: deliveries/s). Both
// configurations run in cluster mode, so the only difference is the number of nodes. Writes
// bench/results/<date>-cluster.json and the cluster table in BENCHMARKS.md.
import { type ChildProcess, spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Redis } from 'ioredis'
import pg from 'pg'
import { ADMIN_KEY, buildIfStale, failures, forkLoad, http, next, now, pct, procStats, root, runMain, stopProc, track, waitForLine } from './common.js'
import type { ClientSpec, LoadCommand } from './load.js'
import { NODE_OPTIONS } from '../bin/node-options.js'

const argv = process.argv.slice(2)
const quick = argv.includes('--quick')
const RUNS = quick ? 1 : 3
const REDIS = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379/10'
const PG = process.env.BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test'
const PUBLISHERS = 4
const SUBSCRIBERS = 4
const PER_PUBLISHER = quick ? 2500 : 10_000
const CONNECTIONS = quick ? 2000 : 6000
const CONN_PRINCIPALS = 100
const READING = '{"site":"site-0001","temp":21.53,"hum":48.27,"pressure":1013.25,"t":0}'

interface Node { readonly proc: ChildProcess, readonly mqtt: number, readonly api: string, readonly dataDir: string }

async function startNode (id: string, metadataUrl: string): Promise<Node> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `sg-bench-${id}-`))
  const proc = track(spawn(process.execPath, [...NODE_OPTIONS, path.join(root, 'dist/bin/streamgate.js')], {
    env: {
      ...process.env, STREAMGATE_BIND: '127.0.0.1', STREAMGATE_MQTT_PORT: '0', STREAMGATE_WS_PORT: '0', STREAMGATE_HTTP_PORT: '0',
      STREAMGATE_DATA_DIR: dataDir, STREAMGATE_ADMIN_KEY: ADMIN_KEY, STREAMGATE_LOG_LEVEL: 'warn', STREAMGATE_NODE_ID: id,
      STREAMGATE_REDIS_URL: REDIS, STREAMGATE_METADATA_URL: metadataUrl,
      // The benchmark measures the nodes, not the limits.
      STREAMGATE_MQTT_CONNECT_RATE_DEVICE: '0', STREAMGATE_MQTT_PUBLISH_RATE_DEVICE: '0', STREAMGATE_API_RATE: '0', STREAMGATE_API_RATE_PER_ADDRESS: '0'
    },
    stdio: ['ignore', 'pipe', 'pipe']
  }), `streamgate ${id}`)
  const m = await waitForLine(proc, /mqtt [^:]+:(\d+).*http http:\/\/[^:]+:(\d+)/, `streamgate ${id}`)
  return { proc, mqtt: Number(m[1]), api: `http://127.0.0.1:${m[2]}`, dataDir }
}

interface Result { rate: number, unit: string, detail: string, cpuPct: number, rssMiB: number }

const cpuOf = (nodes: readonly Node[]): number => nodes.reduce((a, n) => a + procStats(n.proc.pid!).cpuMs, 0)
const rssOf = (nodes: readonly Node[]): number => Math.round(nodes.reduce((a, n) => a + procStats(n.proc.pid!).rssMiB, 0))

async function connections (nodes: readonly Node[], keys: Record<string, string>): Promise<Result> {
  const gens: ChildProcess[] = []
  // Two generators either way; with two nodes each connects to its own node.
  for (let g = 0; g < 2; g++) {
    const p = forkLoad()
    gens.push(p)
    const clients = Array.from({ length: CONNECTIONS / 2 }, (_, i) => { const id = `conn${(g * CONNECTIONS / 2 + i) % CONN_PRINCIPALS}`; return { username: id, password: keys[id]! } })
    p.send({ kind: 'connect', port: nodes[g % nodes.length]!.mqtt, clients, concurrency: 100 } satisfies LoadCommand)
  }
  await Promise.all(gens.map((p) => next(p, 'ready')))
  const cpu0 = cpuOf(nodes)
  const t0 = now()
  const done = gens.map((p) => next(p, 'connected'))
  for (const p of gens) p.send('go')
  const rs = await Promise.all(done)
  const wall = now() - t0
  const cpu = cpuOf(nodes) - cpu0
  const rss = rssOf(nodes)
  const connected = rs.reduce((a, r) => a + r.connected, 0)
  const failed = rs.reduce((a, r) => a + r.failed, 0)
  const elapsed = Math.max(...rs.map((r) => r.endedAt)) - Math.min(...rs.map((r) => r.startedAt))
  for (const p of gens) p.send('stop')
  await Promise.all(gens.map((p) => new Promise((resolve) => p.once('exit', resolve))))
  if (failed > 0) failures.push(`connections on ${nodes.length} node(s): ${failed} failed`)
  return { rate: Math.round(connected / (elapsed / 1000)), unit: 'connects/s', detail: `${connected}/${CONNECTIONS} connected`, cpuPct: Math.round(cpu / wall * 100), rssMiB: rss }
}

let datasetNo = 0

async function fanout (nodes: readonly Node[], keys: Record<string, string>): Promise<Result> {
  const dataset = `cbench_${Date.now().toString(36)}_${++datasetNo}`
  const api = nodes[0]!.api
  await http(api, 'POST', '/v1/datasets', { id: dataset, schema: { tags: ['site'], fields: { temp: 'double', hum: 'double', pressure: 'double', t: 'double' } } })
  await http(api, 'PUT', `/v1/datasets/${dataset}/access`, {
    grants: [...Array.from({ length: PUBLISHERS }, (_, i) => ({ principal: `pub${i}`, actions: ['publish'] })), { principal: 'sub', actions: ['subscribe'], devices: ['+'] }]
  })
  await new Promise((resolve) => setTimeout(resolve, 500)) // the other node applies the change (LISTEN/NOTIFY)
  const total = PUBLISHERS * PER_PUBLISHER
  const subs: ChildProcess[] = []
  for (let i = 0; i < SUBSCRIBERS; i++) {
    const p = forkLoad()
    subs.push(p)
    p.send({ kind: 'subscribe', port: nodes[i % nodes.length]!.mqtt, username: 'sub', password: keys.sub!, filter: `datasets/${dataset}/#`, qos: 1, expect: total, timeoutMs: 180_000, sampleEvery: 10 } satisfies LoadCommand)
  }
  await Promise.all(subs.map((p) => next(p, 'subscribed')))
  const gens: ChildProcess[] = []
  for (let n = 0; n < nodes.length; n++) {
    const p = forkLoad()
    gens.push(p)
    const mine: ClientSpec[] = Array.from({ length: PUBLISHERS }, (_, i) => i).filter((i) => i % nodes.length === n)
      .map((i) => ({ username: `pub${i}`, password: keys[`pub${i}`]!, topic: `datasets/${dataset}/pub${i}` }))
    p.send({ kind: 'publish', port: nodes[n]!.mqtt, clients: mine, qos: 1, perClient: PER_PUBLISHER, inflight: 100, payload: READING } satisfies LoadCommand)
  }
  await Promise.all(gens.map((p) => next(p, 'ready')))
  const cpu0 = cpuOf(nodes)
  const t0 = now()
  const pubDone = gens.map((p) => next(p, 'publisher-done'))
  const subDone = subs.map((p) => next(p, 'subscriber-done'))
  for (const p of gens) p.send('go')
  const pubs = await Promise.all(pubDone)
  const got = await Promise.all(subDone)
  const wall = now() - t0
  const cpu = cpuOf(nodes) - cpu0
  const startedAt = Math.min(...pubs.map((p) => p.startedAt))
  const lastAt = Math.max(...got.map((s) => s.lastAt))
  const delivered = got.reduce((a, s) => a + s.received, 0)
  const lat = got.flatMap((s) => s.latenciesMs).sort((a, b) => a - b)
  if (delivered !== total * SUBSCRIBERS) failures.push(`fan-out on ${nodes.length} node(s): ${delivered} of ${total * SUBSCRIBERS} delivered`)
  return {
    rate: Math.round(delivered / ((lastAt - startedAt) / 1000)),
    unit: 'deliveries/s',
    detail: `${delivered}/${total * SUBSCRIBERS} delivered, pub→sub p50/p99 ${pct(lat, 0.5).toFixed(0)}/${pct(lat, 0.99).toFixed(0)} ms`,
    cpuPct: Math.round(cpu / wall * 100),
    rssMiB: rssOf(nodes)
  }
}

async function main (): Promise<void> {
  buildIfStale()
  const results: Record<string, Record<string, Result[]>> = {}
  for (const count of [1, 2]) {
    const redis = new Redis(REDIS)
    await redis.flushdb()
    await redis.quit()
    const schema = `sg_bench_${Date.now().toString(36)}`
    const admin = new pg.Client({ connectionString: PG })
    await admin.connect()
    await admin.query(`CREATE SCHEMA "${schema}"`)
    const metadataUrl = `${PG}?options=${encodeURIComponent(`-c search_path=${schema}`)}`
    const nodes: Node[] = []
    try {
      for (let i = 0; i < count; i++) nodes.push(await startNode(`bench-${i + 1}`, metadataUrl))
      const keys: Record<string, string> = {}
      const ids = [...Array.from({ length: PUBLISHERS }, (_, i) => `pub${i}`), 'sub', ...Array.from({ length: CONN_PRINCIPALS }, (_, i) => `conn${i}`)]
      for (const id of ids) {
        await http(nodes[0]!.api, 'POST', '/v1/principals', { id, kind: id === 'sub' ? 'service' : 'device' })
        keys[id] = (await http<{ key: string }>(nodes[0]!.api, 'POST', `/v1/principals/${id}/keys`, {})).key
      }
      await fanout(nodes, keys) // warm-up, not measured
      const label = `${count} node${count > 1 ? 's' : ''}`
      for (const [name, run] of [['connections', connections], ['fan-out', fanout]] as const) {
        for (let r = 0; r < RUNS; r++) {
          const res = await run(nodes, keys)
          ;((results[name] ??= {})[label] ??= []).push(res)
          process.stdout.write(`${label.padEnd(8)} ${name.padEnd(12)} run ${r + 1}: ${res.rate} ${res.unit} (${res.detail}), nodes' CPU ${res.cpuPct}%, RSS ${res.rssMiB} MiB\n`)
        }
      }
    } finally {
      for (const n of nodes) {
        await stopProc(n.proc)
        fs.rmSync(n.dataDir, { recursive: true, force: true })
      }
      await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined)
      await admin.end()
    }
  }

  const date = new Date().toISOString()
  const command = `npm run bench -- --cluster${quick ? ' --quick' : ''}`
  const lines = [
    `Command: \`${command}\` on ${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown'}), Node ${process.version}, ${date}. Both configurations in cluster mode (Redis ${REDIS.replace(/\/\/.*@/, '//')}, PostgreSQL metadata), nodes, Redis, PostgreSQL and the load generators all on this machine. Connections: ${CONNECTIONS} authenticated MQTT connects from 2 generators (one per node with two). Fan-out: ${PUBLISHERS} QoS 1 publishers × ${PER_PUBLISHER} messages, ${SUBSCRIBERS} QoS 1 subscribers on the dataset wildcard, spread over the nodes; every message to every subscriber. ${RUNS} run(s) each; median (min–max).`,
    '',
    '| workload | 1 node | 2 nodes | 2 nodes / 1 node | nodes\' CPU % (1 / 2) | nodes\' RSS MiB (1 / 2) |',
    '| --- | --- | --- | --- | --- | --- |'
  ]
  const med = (rs: Result[]): Result => [...rs].sort((a, b) => a.rate - b.rate)[Math.floor(rs.length / 2)]!
  for (const [name, byConf] of Object.entries(results)) {
    const one = byConf['1 node']!
    const two = byConf['2 nodes']!
    const range = (rs: Result[]): string => `${med(rs).rate} ${med(rs).unit} (${Math.min(...rs.map((r) => r.rate))}–${Math.max(...rs.map((r) => r.rate))})`
    lines.push(`| ${name} | ${range(one)} | ${range(two)} | ${(med(two).rate / med(one).rate).toFixed(2)}× | ${med(one).cpuPct} / ${med(two).cpuPct} | ${med(one).rssMiB} / ${med(two).rssMiB} |`)
  }
  const table = lines.join('\n')
  process.stdout.write('\n' + table + '\n')
  const file = path.join(root, 'bench/results', `${date.slice(0, 19).replaceAll(':', '-')}-cluster${quick ? '-quick' : ''}.json`)
  fs.mkdirSync(path.dirname(file), { recursive: true })
  fs.writeFileSync(file, JSON.stringify({ date, command, quick, results, failures }, null, 2))
  const md = path.join(root, 'BENCHMARKS.md')
  const current = fs.readFileSync(md, 'utf8')
  const section = `<!-- bench:cluster:start -->\n## One node against two (latest${quick ? ', quick' : ''})\n\n${table}\n<!-- bench:cluster:end -->`
  fs.writeFileSync(md, current.includes('<!-- bench:cluster:start -->')
    ? current.replace(/<!-- bench:cluster:start -->[\s\S]*<!-- bench:cluster:end -->/, section)
    : current.replace('<!-- bench:latest:end -->', `<!-- bench:latest:end -->\n\n${section}`))
  process.stdout.write(`\nwrote ${path.relative(root, file)} and BENCHMARKS.md\n`)
  if (failures.length > 0) {
    process.stderr.write('FAILED:\n  ' + failures.join('\n  ') + '\n')
    process.exitCode = 1
  }
}

runMain(main)
